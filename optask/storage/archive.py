"""Raw snapshot archive: every provider payload as received, one gzip file per index and minute.

Written first, before any processing, so any later failure can be replayed from here.
Layout: `{raw root}/{INDEX}/{YYYY-MM-DD}/{HHMM}.json.gz` (IST date and time). Each file is
a gzip'd JSON envelope whose `payload` is the received text, byte for byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import logging
import os
import secrets
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from optask.core.timeutils import IST, UTC, format_ts, parse_ts
from optask.infra.fsutil import (
    StorageError,
    atomic_write_bytes,
    commit,
    fsync_dir,
    fsync_path,
    make_dirs,
    temp_path,
)

log = logging.getLogger(__name__)

__all__ = ["RawRecord", "StorageError", "archived_minutes", "atomic_write_bytes", "maintain", "raw_path",
           "read_raw", "set_aside", "write_raw", "write_raw_once"]


@dataclass(frozen=True)
class RawRecord:
    index: str
    ts: dt.datetime  # UTC minute
    provider: str
    payload: bytes
    received_at: str


def raw_path(root: Path, index: str, ts: dt.datetime) -> Path:
    ist = ts.astimezone(IST)
    return Path(root) / index / ist.strftime("%Y-%m-%d") / f"{ist.strftime('%H%M')}.json.gz"


def write_raw(root: Path, index: str, ts: dt.datetime, provider: str, payload: bytes) -> Path:
    """Archive one payload, replacing what the minute held (a test's or a tool's; the pipeline's own writes are
    `write_raw_once`: the first payload of a minute wins). The same payload again leaves the file untouched."""
    path = raw_path(root, index, ts)
    if path.exists():
        try:
            if read_raw(path).payload == payload:
                return path
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable: replace it
    atomic_write_bytes(path, _archive_file(index, ts, provider, payload))
    return path


def _archive_file(index: str, ts: dt.datetime, provider: str, payload: bytes) -> bytes:
    """One archive file's bytes: the payload in its envelope, gzipped."""
    envelope = {
        "index": index, "ts": format_ts(ts), "provider": provider,
        "received_at": format_ts(dt.datetime.now(UTC).replace(microsecond=0)),
        "payload": payload.decode("utf-8", errors="surrogateescape"),
    }
    try:
        body = orjson.dumps(envelope)
    except TypeError:  # a payload that is not valid UTF-8 keeps its bytes via surrogate escapes
        body = json.dumps(envelope).encode("utf-8", "surrogateescape")
    return gzip.compress(body, 3, mtime=0)


def write_raw_once(root: Path, index: str, ts: dt.datetime, provider: str, payload: bytes) -> bool:
    """Archive a payload unless the minute is archived already: the first payload of a minute wins, atomically
    (two sources racing for one minute, the ticker's cut and a REST fallback; a redelivered task fetching again:
    the stores then hold what was first received). Returns whether this one was written."""
    path = raw_path(root, index, ts)
    if path.exists():
        return False
    tmp = temp_path(path, ".once")
    try:
        make_dirs(path.parent)
        with open(tmp, "xb") as fh:
            fh.write(_archive_file(index, ts, provider, payload))
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails if the file exists: create-if-absent, atomic
        fsync_dir(path.parent)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions") from exc
    finally:
        tmp.unlink(missing_ok=True)


def set_aside(path: Path) -> Path:
    """Move an archive file that cannot be read out of the minute's way, kept beside it for a person to look at
    (no reader globs the new name); the minute can then be archived anew."""
    target = path.with_name(f"{path.name}.unreadable-{secrets.token_hex(4)}")
    os.replace(path, target)
    fsync_dir(path.parent)
    log.error("raw archive %s cannot be read: moved to %s, the minute is fetched again", path, target.name)
    return target


def read_raw(path: Path) -> RawRecord:
    raw = gzip.decompress(Path(path).read_bytes())
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = json.loads(raw.decode("utf-8", "surrogateescape"))
    return RawRecord(
        index=doc["index"], ts=parse_ts(doc["ts"]), provider=doc["provider"],
        payload=doc["payload"].encode("utf-8", "surrogateescape"), received_at=doc["received_at"],
    )


def archived_minutes(root: Path, index: str, day: dt.date) -> list[dt.datetime]:
    """UTC minutes archived for an index and IST day, sorted."""
    folder = Path(root) / index / day.isoformat()
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("*.json.gz"):
        hhmm = p.name.split(".")[0]
        if len(hhmm) == 4 and hhmm.isdigit():
            local = dt.datetime.combine(day, dt.time(int(hhmm[:2]), int(hhmm[2:])), IST)
            out.append(local.astimezone(UTC))
    return sorted(out)


def maintain(root: Path, today: dt.date, retention_days: int, compress: bool, verified,
             lock=contextlib.nullcontext) -> dict[str, list[str]]:
    """Retire raw days older than `retention_days` that passed verification; never touch one that did not.

    With `compress`, a retired day becomes one `{INDEX}/{YYYY-MM-DD}.tar` of its gzip files (kept);
    without, the day is deleted. `verified(index, day) -> bool` says whether a day passed. Each day is
    retired under `lock(name)` (end of day passes a Redis writer lock: two end-of-days of one day on two
    nodes must not race), from a temp tar of its own, and the day's files are deleted only once the tar in
    place holds every one of them. Returns what was packed, deleted, kept back (unverified) and refused.
    """
    out: dict[str, list[str]] = {"packed": [], "deleted": [], "kept_unverified": [], "refused": []}
    cutoff = today - dt.timedelta(days=retention_days)
    for index_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        for day_dir in sorted(p for p in index_dir.iterdir() if p.is_dir()):
            try:
                day = dt.date.fromisoformat(day_dir.name)
            except ValueError:
                continue
            if day >= cutoff:
                continue
            label = f"{index_dir.name}/{day_dir.name}"
            if not verified(index_dir.name, day):
                out["kept_unverified"].append(label)
                continue
            with lock(f"raw-retire:{label}"):
                if not day_dir.is_dir():
                    continue  # another end of day retired it while we waited
                if compress and not _pack(day_dir, index_dir / f"{day_dir.name}.tar"):
                    out["refused"].append(label)
                    continue
                out["packed" if compress else "deleted"].append(label)
                shutil.rmtree(day_dir)
    return out


def _pack(day_dir: Path, target: Path) -> bool:
    """`day_dir` as one tar at `target`, unless a complete one is there already. True when the tar in place
    holds every file of the day (only then may the day be deleted)."""
    files = sorted(str(p.relative_to(day_dir.parent)) for p in day_dir.rglob("*") if p.is_file())
    if target.exists() and _tar_files(target) == files:
        return True
    tmp = temp_path(target)
    try:
        with tarfile.open(tmp, "x") as tar:
            tar.add(day_dir, arcname=day_dir.name)
        fsync_path(tmp)
        if _tar_files(tmp) != files:
            log.error("raw day %s changed while it was packed: kept as it is, packed again at the next end of day",
                      day_dir)
            return False
        commit(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _tar_files(path: Path) -> list[str]:
    try:
        with tarfile.open(path) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())
    except (tarfile.TarError, OSError):
        return []
