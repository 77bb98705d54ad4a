"""Named crash points for the kill -9 recovery tests.

The daemon calls `crashpoint(name)` at the moments where a crash is most delicate (between two
writes that belong together). With HPC_AEVO_CRASH_AT set to that name the daemon kills itself with
SIGKILL right there, exactly as `kill -9` would; unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "HPC_AEVO_CRASH_AT"


def crashpoint(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
