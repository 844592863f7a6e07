"""Atomic file writes, once: temp file, fsync, rename, so a crash leaves the old file or the new one."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


class StorageError(OSError):
    """A store could not write; the message says which file and why (disk full, permissions)."""


def atomic_write_bytes(path: Path, data: bytes, before_commit: Callable[[], None] | None = None) -> None:
    """Temp file, fsync, rename: a crash leaves the old file or the new one, never half of one.

    `before_commit` runs between the fsync and the rename (a writer's fence: it raises when the writer
    lost its lock, and the temp file goes, leaving the file as the lock's new holder made it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_commit is not None:
            before_commit()
        os.replace(tmp, path)
    except StorageError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions") from exc


def fsync_path(path: Path) -> None:
    """Flush a file written by a library (pyarrow, tarfile) to disk before it is renamed into place."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
