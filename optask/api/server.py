"""`optask serve`: the API on uvicorn, bound to API_HOST:API_PORT (127.0.0.1:8008 unless configured)."""

from __future__ import annotations

import errno
import os
import signal
import socket

import uvicorn

from optask.api.app import create_app
from optask.core.config import Settings

GRACE_S = 5  # after SIGTERM, what is still being answered is cut after this long
WS_MAX_BYTES = 64 * 1024  # the largest WebSocket message a client may send


class PortInUse(RuntimeError):
    """The API's address is taken; the message says which setting to change."""


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"the API cannot listen on {host}:{port}: the port is in use; set API_PORT to a "
                                "free port") from None
            raise PortInUse(f"the API cannot listen on {host}:{port}: {exc.strerror}; check API_HOST") from None


def serve(settings: Settings, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Run until SIGINT or SIGTERM: open streams are told the server is stopping and end (app.py), the requests in
    flight get GRACE_S to finish, then the process exits 0. WebSocket messages go uncompressed (each event is the
    same bytes for every subscriber, and deflate would compress it once each) and small (a subscribe message is a
    few hundred bytes). Behind a TLS proxy, its X-Forwarded-Proto and -For are believed from API_FORWARDED_ALLOW_IPS
    only: the page's cookie is then Secure, and failed logins are counted per real client address."""
    host, port = host or settings.api.host, port or settings.api.port
    check_port(host, port)
    # uvicorn stops gracefully on SIGTERM, then raises it again to the handler it found: this one makes that an exit
    # with status 0 through every `finally` (the bundled Redis a one-shot command started is stopped and forgotten).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if settings.api.nice:  # readers yield the CPU to the workers storing minutes on the same machine
        os.nice(settings.api.nice)
    options = {"host": host, "port": port, "access_log": False, "log_level": "warning", "server_header": False,
               "ws_per_message_deflate": False, "ws_max_size": WS_MAX_BYTES, "timeout_graceful_shutdown": GRACE_S,
               "proxy_headers": True, "forwarded_allow_ips": settings.api.forwarded_allow_ips}
    if workers > 1:  # several processes: each builds its app from the same environment
        uvicorn.run("optask.api.app:app_from_env", factory=True, workers=workers, **options)
        return
    uvicorn.run(create_app(settings), **options)


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)
