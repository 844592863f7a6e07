"""Atomic, durable file writes, once: temp file, fsync, rename, fsync of the folder, so a crash or a power loss
leaves the old file or the new one, and a committed file stays committed.

Temp files are named `.{name}.{pid}.{random}.tmp` (a PID alone repeats across containers and hosts sharing a
data root); a writer killed between creating one and renaming it leaves it behind, and `sweep_temp_files`
removes those older than an hour (`optask up` at start, end of day).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: A temp file this old has no live writer: every write renames or removes its temp file within seconds.
STALE_TEMP_S = 3600.0


class StorageError(OSError):
    """A store could not write; the message says which file and why (disk full, permissions)."""


def temp_path(path: Path, tag: str = "") -> Path:
    """A hidden temp name beside `path`, unique across processes, containers and hosts (no reader globs it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}{tag}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make the names in `directory` durable: a rename, link, create or unlink in it survives a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> None:
    """`mkdir -p`, each folder it creates made durable in its parent (a new day's folder, say)."""
    created = []
    d = Path(directory)
    while not d.exists():
        created.append(d)
        d = d.parent
    Path(directory).mkdir(parents=True, exist_ok=True)
    for d in reversed(created):
        fsync_dir(d.parent)


def commit(tmp: Path, path: Path) -> None:
    """Rename a written and fsync'd temp file into place, durably."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, before_commit: Callable[[], None] | None = None) -> None:
    """Temp file, fsync, rename, folder fsync: a crash leaves the old file or the new one, never half of one.

    `before_commit` runs between the fsync and the rename (a writer's fence: it raises when the writer
    lost its lock, and the temp file goes, leaving the file as the lock's new holder made it)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        make_dirs(path.parent)
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_commit is not None:
            before_commit()
        commit(tmp, path)
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


def sweep_temp_files(root: Path, older_than_s: float = STALE_TEMP_S) -> int:
    """Remove temp files (`.*.tmp`) under `root` left by writers killed mid-write, once older than `older_than_s`;
    returns how many. A younger one may belong to a live writer and is left alone."""
    cutoff = time.time() - older_than_s
    swept = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(folder) / name
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
                    swept += 1
            except FileNotFoundError:
                continue  # its writer renamed or removed it meanwhile
    if swept:
        log.warning("removed %d temp file(s) older than %.0f min under %s, left by writers killed mid-write",
                    swept, older_than_s / 60, root)
    return swept
