"""The one YAML reader behind the campaign file, the initial policy and the cluster profiles.

Every file a person writes is parsed here, so each problem becomes one `ConfigError` line that
names the file, the key path and what was expected, never a traceback.
"""

from __future__ import annotations

import collections.abc
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from hpc_aevo.state.typed import SchemaError


class ConfigError(SchemaError):
    """A campaign or policy file is invalid; str() is one line: file, key path, what was expected."""

    def _render(self) -> str:
        return " ".join(super()._render().splitlines())

    @classmethod
    def of(cls, exc: SchemaError, source: Path | str) -> "ConfigError":
        return cls(exc.key_path, exc.expected, exc.got, str(source))


MAX_FILE_BYTES = 1 << 20  # a campaign, policy, profile or recipe is a few kilobytes


def read_bytes(path: Path) -> bytes:
    """A person's file: a regular file (a link to one is fine), at most MAX_FILE_BYTES; a FIFO or a device
    is refused at once instead of blocking the reader."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("<root>", f"a readable file ({exc.strerror or exc})", source=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("<root>", "a regular file (this is a directory, FIFO, socket or device)", source=str(path))
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError("<root>", f"a file of at most {MAX_FILE_BYTES} bytes (it has {info.st_size})",
                              source=str(path))
        return os.read(fd, MAX_FILE_BYTES)
    finally:
        os.close(fd)


class _PersonLoader(yaml.SafeLoader):
    """Safe YAML as a person means it: a key given twice is an error (YAML keeps the last one silently),
    and only `true`/`false` are booleans (YAML 1.1 also reads on/off/yes/no, so `confine_jobs: off` would
    arrive as False)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, collections.abc.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line})", key_node.start_mark)
            if isinstance(key, collections.abc.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


_PersonLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_PersonLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def parse_mapping(raw: bytes, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_PersonLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError("<root>", f"UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<root>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, f"valid YAML ({problem})", source=source) from None
    except RecursionError:
        raise ConfigError("<root>", "YAML nested less deeply", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", "a mapping at the top level", data, source)
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping; errors are one-line ConfigErrors."""
    path = Path(path)
    return parse_mapping(read_bytes(path), str(path))
