"""Process plumbing: children that die with their parent, a free local port, freed memory given back, and the
platforms a supervisor of Celery processes can run on."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
_prctl = _libc.prctl if _libc is not None else None


def trim_malloc() -> None:
    """Hand glibc's freed arenas back to the OS: a long-lived worker's RSS would otherwise stay at its largest
    day. Milliseconds; a no-op off glibc."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies, even by SIGKILL.

    Linux's PR_SET_PDEATHSIG, chosen over a watchdog in each child because the kernel delivers it
    with no polling and no code of ours inside Celery, Flower or redis-server; SIGTERM lets each
    of them stop in its own clean way. It fires when the forking *thread* exits, so spawn from the
    main thread. Elsewhere than Linux it is a no-op (the parent's own signal handling still applies).
    """
    if _prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unsupported_platform(platform: str = "") -> str | None:
    """Why `optask up` cannot run on this platform (`sys.platform` unless given), or None when it can.

    Celery has had no native Windows support since 4.0 (its prefork pool and warm shutdown need POSIX signals
    and fork), so the supervisor of its processes stops at once there, with the two ways that work."""
    if (platform or sys.platform) == "win32":
        return ("optask up does not run on native Windows (Celery has no Windows support since 4.0): "
                "run it in WSL2 or with Docker Desktop (docker compose up), see docs/platforms.md")
    return None
