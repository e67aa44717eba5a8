"""The run's temporary folder for export files, and the sweep of those killed runs left.

Each run holds an exclusive lock on a file inside its folder for as long as it lives; the
kernel drops the lock when the process dies, however it dies. A folder of ours (its name
and its lock file say so) whose lock can be taken belongs to no live run and is removed;
nothing else in the temp folder is ever touched.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO

from tap_marketo_activities.text import plural

logger = logging.getLogger(__name__)

PREFIX = "tap-marketo-activities-run-"
LOCK_NAME = "tap-marketo-activities.lock"


class RunFolder:
    """A temp folder owned by this process until `close()`."""

    def __init__(self) -> None:
        removed = sweep_stale(Path(tempfile.gettempdir()))
        if removed:
            logger.info("Removed %s left by earlier killed runs.",
                        plural(removed, "temp folder"))
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX))
        # Locked before it takes its name: a sweep never sees our lock file unlocked.
        locking = self.path / f"{LOCK_NAME}.new"
        self._lock: IO[bytes] | None = locking.open("wb")
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locking.rename(self.path / LOCK_NAME)

    def close(self) -> None:
        # The lock file goes last: a folder left half removed is still one a sweep knows.
        for child in self.path.iterdir():
            if child.name != LOCK_NAME:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def sweep_stale(parent: Path) -> int:
    """Remove this tap's temp folders that no live run holds; their count."""
    removed = 0
    for folder in parent.glob(f"{PREFIX}*"):
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def _abandoned(folder: Path) -> bool:
    lock = folder / LOCK_NAME
    if not lock.is_file():
        lock = folder / f"{LOCK_NAME}.new"  # killed before it renamed its lock file
    if not lock.is_file():
        return False  # not ours, or a run that has not locked it yet
    try:
        with lock.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live run holds it
    except OSError:
        return False
    return os.access(folder, os.W_OK)
