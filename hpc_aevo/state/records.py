"""Typed, versioned JSON records on the shared filesystem.

Every file the toolkit writes into a state tree is a `Record` subclass: a dataclass with a
schema name and version, written atomically (temp file, fsync, rename) so that a reader or a
daemon killed mid-write never sees half a file. Writers that may race take the file's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

import filelock

from hpc_aevo.state.typed import SchemaError, from_data, to_data

R = TypeVar("R", bound="Record")


class RecordError(RuntimeError):
    """A record file is unreadable or does not match its schema."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old or the new file, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; records are read by the whole team on the shared filesystem
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def lock_for(path: Path, timeout: float = 60.0) -> filelock.FileLock:
    """The lock that guards `path` against concurrent writers (a sibling `.lock` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path.with_name(path.name + ".lock")), timeout=timeout)


@dataclasses.dataclass
class Record:
    """Base of every on-disk record: subclasses set SCHEMA and VERSION."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    OLDER_VERSIONS: ClassVar[tuple[int, ...]] = ()  # also read: their files lack only fields that have defaults
    # Whether to_json checks the whole record against its types; a record rewritten on most polls and grown
    # by typed parts (the compute ledger) checks each part as it is added instead.
    CHECK_ON_SAVE: ClassVar[bool] = True

    def to_json(self) -> str:
        """The record's file text; a value of the wrong type (or not finite) is refused, so that no record
        is written that cannot be loaded again."""
        data = to_data(self)
        try:
            if self.CHECK_ON_SAVE:
                from_data(type(self), data)
            return json.dumps({"schema": self.SCHEMA, "version": self.VERSION, **data}, indent=2, allow_nan=False) + "\n"
        except ValueError as exc:  # a SchemaError, or json's refusal of NaN and the infinities
            raise RecordError(f"refusing to write {self.SCHEMA}: {exc}") from None

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str = "") -> R:
        if not isinstance(data, dict):
            raise SchemaError("", f"a JSON object ({cls.SCHEMA})", data, source)
        data = dict(data)
        schema, version = data.pop("schema", None), data.pop("version", None)
        if schema != cls.SCHEMA:
            raise SchemaError("schema", repr(cls.SCHEMA), schema, source)
        if version != cls.VERSION and version not in cls.OLDER_VERSIONS:
            readable = ", ".join(str(v) for v in (*cls.OLDER_VERSIONS, cls.VERSION))
            raise SchemaError("version", f"{readable} (this hpc_aevo reads only that)", version, source)
        try:
            return from_data(cls, data)
        except SchemaError as exc:
            raise exc.with_source(source) from None

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls: type[R], path: Path) -> R:
        path = Path(path)
        try:
            data = json.loads(_read_regular(path).decode("utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON or UTF-8
            raise RecordError(f"{path}: not a readable JSON record ({' '.join(str(exc).split())})") from None
        try:
            return cls.from_dict(data, str(path))
        except SchemaError as exc:
            raise RecordError(str(exc)) from None

    @classmethod
    def load_or_none(cls: type[R], path: Path) -> R | None:
        try:
            return cls.load(path)
        except FileNotFoundError:
            return None

    @classmethod
    @contextlib.contextmanager
    def locked_update(cls: type[R], path: Path, default: R) -> Iterator[R]:
        """Load (or start from `default`), let the caller mutate, save atomically, all under the lock.

        The record this process saved last is reused, not reparsed, while the file is the one it wrote
        (same inode, size and mtime; another writer's atomic rename brings a new inode): the daemon
        charges the campaign's ledger on most polls, and parsing it whole grows with every charge.
        So the caller must not keep the record past the block."""
        path = Path(path)
        with lock_for(path):
            key = (cls, path)
            written, record = _last_saved.pop(key, (None, None))
            if written is None or written != _file_identity(path):
                record = cls.load_or_none(path) or default
            yield record
            record.save(path)
            _last_saved[key] = (_file_identity(path), record)


def _read_regular(path: Path) -> bytes:
    """A record's bytes; a FIFO or a device in its place is refused at once instead of blocking the daemon."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"not a regular file: {path}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


# (record class, path) -> (the file's identity right after this process saved it, the record saved)
_last_saved: dict[tuple[type, Path], tuple[tuple[int, int, int, int], Record]] = {}


def _file_identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def append_jsonl(path: Path, entry: dict) -> None:
    """Append one line to an append-only JSONL log under its lock, fsynced, so lines never interleave."""
    path = Path(path)
    line = json.dumps(entry, sort_keys=True) + "\n"
    with lock_for(path):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Read an append-only log, ignoring a torn last line left by a writer killed mid-append."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RecordError(f"{path}:{number}: corrupt JSONL line") from None
    return entries


def now_iso(timespec: str = "seconds") -> str:
    return datetime.now(timezone.utc).isoformat(timespec=timespec)


def seconds_since(iso: str) -> float:
    """Seconds from an ISO 8601 time with its offset (as now_iso writes) to now."""
    return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()
