"""The one YAML reader behind the campaign file, the initial policy and the cluster profiles.

Every file a person writes is parsed here, so each problem becomes one `ConfigError` line that
names the file, the key path and what was expected, never a traceback.
"""

from __future__ import annotations

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


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("<root>", f"a readable file ({exc.strerror or exc})", source=str(path)) from None


def parse_mapping(raw: bytes, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("<root>", f"UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<root>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(where, f"valid YAML ({problem})", source=source) from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", "a mapping at the top level", data, source)
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file whose top level must be a mapping; errors are one-line ConfigErrors."""
    path = Path(path)
    return parse_mapping(read_bytes(path), str(path))
