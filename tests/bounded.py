"""Calls that must return promptly: a FIFO or another hostile file must never block what reads it."""

from __future__ import annotations

import threading
from typing import Any, Callable


def within(seconds: float, call: Callable[[], Any], what: str = "") -> Any:
    """`call()` run in a daemon thread: its result, or the exception it raised raised here; the test fails
    if it has not returned after `seconds` (the thread is left behind, blocked)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 (raised again in the test's thread)
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"blocked for {seconds} s: {what or call}"
    returned, value = outcome[0]
    if not returned:
        raise value
    return value
