"""Reading what a candidate or its jobs wrote, without trusting any of it.

A worker controls its sandbox, and through its own `train.py` what its jobs write: any file there
may be a link to the held-out split, a FIFO that never answers, `/dev/zero`, a hard link to a file
of the daemon's, or JSON/YAML that parses into the wrong types (1e400, a string where a number
goes, a billion-laughs alias tree). The daemon reads such files only through this module: a regular
file, opened without following a link, whose real path lies inside the expected directory, at most
`limit` bytes, strict UTF-8, finite numbers, no YAML aliases, and a record checked against its
schema. Anything else is one `UntrustedFile` line naming the file and what was wrong: the caller
fails that candidate, never the campaign.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hpc_aevo.state.records import Record
from hpc_aevo.state.typed import SchemaError, from_data

R = TypeVar("R", bound=Record)
T = TypeVar("T")

KIB, MIB = 1024, 1024 * 1024


class UntrustedFile(ValueError):
    """A file written by a candidate or its jobs is not what the daemon may read; str() is one line."""


def read_bytes(path: Path, within: Path, limit: int) -> bytes:
    """The bytes of regular file `path`, which must lie inside directory `within` (itself not a link)."""
    fd, info = _open_checked(Path(path), Path(within))
    try:
        if info.st_size > limit:
            raise UntrustedFile(f"{path}: {info.st_size} bytes, more than the {limit} allowed")
        data = os.read(fd, limit + 1)
        if len(data) > limit:  # it grew while we read
            raise UntrustedFile(f"{path}: more than the {limit} bytes allowed")
        return data
    finally:
        os.close(fd)


def read_tail(path: Path, within: Path, limit: int) -> bytes:
    """The last `limit` bytes (at most) of regular file `path` inside `within`, checked as `read_bytes` does:
    for a log that grows while its job runs, whose newest lines are what a reader wants."""
    fd, info = _open_checked(Path(path), Path(within))
    try:
        return os.pread(fd, limit, max(0, info.st_size - limit))
    finally:
        os.close(fd)


def _open_checked(path: Path, within: Path) -> tuple[int, os.stat_result]:
    """An fd on `path`, opened without following a link, checked to be a regular, singly linked file
    inside `within`; the caller closes it."""
    try:
        root = os.lstat(within)
    except OSError as exc:
        raise UntrustedFile(f"{path}: its directory {within} is not readable ({exc.strerror})") from None
    if not stat.S_ISDIR(root.st_mode):
        raise UntrustedFile(f"{path}: {within} is not a plain directory (a link or another kind of file)")
    try:  # O_NONBLOCK: a FIFO opens at once (and is refused below) instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFile(f"{path}: a symbolic link, not a regular file") from None
        raise UntrustedFile(f"{path}: not readable ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile(f"{path}: not a regular file ({_kind(info.st_mode)})")
        if info.st_nlink > 1:
            raise UntrustedFile(f"{path}: a hard link shared with {info.st_nlink - 1} other name(s)")
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not real.is_relative_to(os.path.realpath(within)):
            raise UntrustedFile(f"{path}: resolves to {real}, outside {within}")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _one_line(exc: BaseException) -> str:
    """An error's text on one line (a parser's message may span several)."""
    return " ".join(str(exc).split())


def _text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UntrustedFile(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is not finite")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: Path, within: Path, limit: int = MIB) -> Any:
    """Parsed JSON of an untrusted file: strict UTF-8, finite numbers only (no NaN, Infinity, 1e400)."""
    text = _text(path, read_bytes(path, within, limit))
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise UntrustedFile(f"{path}: not valid JSON ({_one_line(exc)})") from None


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: an alias tree costs nothing to parse and exponential time
    to walk (a recipe diff flattens every branch)."""

    def compose_node(self, parent, index):  # noqa: ANN001
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed here", event.start_mark)
        return super().compose_node(parent, index)


def read_yaml_mapping(path: Path, within: Path, limit: int = MIB) -> dict[str, Any]:
    """An untrusted YAML file whose top level is a mapping with string keys."""
    text = _text(path, read_bytes(path, within, limit))
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise UntrustedFile(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UntrustedFile(f"{path}: expected a mapping at the top level (got {type(data).__name__})")
    _check_plain(data, path)
    return data


def _check_plain(value: Any, path: Path, where: str = "") -> None:
    """Only what JSON can hold: string keys, finite numbers (YAML also parses dates, sets and .inf)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UntrustedFile(f"{path}: {where or '<root>'}: key {key!r} is not a string")
            _check_plain(item, path, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, path, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UntrustedFile(f"{path}: {where}: {value} is not a finite number")
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise UntrustedFile(f"{path}: {where}: a {type(value).__name__} is not plain data")


def load_record(cls: type[R], path: Path, within: Path, limit: int = MIB) -> R:
    """A `Record` written by a job, checked against its schema like every record."""
    data = read_json(path, within, limit)
    try:
        return cls.from_dict(data, str(path))
    except SchemaError as exc:
        raise UntrustedFile(_one_line(exc)) from None


def typed_fields(tp: type[T], data: dict[str, Any], path: Path) -> T:
    """The fields of dataclass `tp` taken from `data` (other keys ignored), each checked against its type."""
    names = {f.name for f in dataclasses.fields(tp)}
    try:
        return from_data(tp, {k: v for k, v in data.items() if k in names})
    except SchemaError as exc:
        raise UntrustedFile(_one_line(exc.with_source(str(path)))) from None
