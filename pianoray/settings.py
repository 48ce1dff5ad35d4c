"""Process-wide settings read from the environment, in one place.

``PIANORAY_SHARED_DATA`` locates the real datasets (PercePiano subset, ASAP, competition, PSyllabus).
It defaults to ``../shared/data`` relative to the project root, the layout of the development machines.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The folder that holds the real datasets (it may not exist on a user's machine)."""
    env = os.environ.get("PIANORAY_SHARED_DATA")
    return Path(env).expanduser().resolve() if env else (PROJECT_ROOT / ".." / "shared" / "data").resolve()


def require_real_data() -> bool:
    """CI sets PIANORAY_REQUIRE_DATA=1 so that real-data tests fail instead of skipping."""
    return os.environ.get("PIANORAY_REQUIRE_DATA", "") not in ("", "0", "false", "no")
