"""A candidate's append-only execution trace: one JSON line per thing that happened to it.

Workers, the daemon and (later) agent tools all write here, so a reader can replay what was done
to a candidate, in order, with who did it. Lines are only ever appended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_aevo.state.records import append_jsonl, now_iso, read_jsonl


class Trace:
    def __init__(self, path: Path):
        self.path = Path(path)

    def log(self, actor: str, event: str, **detail: Any) -> None:
        append_jsonl(self.path, {"ts": now_iso(), "actor": actor, "event": event, **detail})

    def events(self) -> list[dict]:
        return read_jsonl(self.path)
