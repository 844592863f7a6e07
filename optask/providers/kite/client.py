"""Kite Connect's transport, through the official `kiteconnect` client: pacing, tokens, one retry policy.

- Every call is paced account-wide through Redis (`RedisPacer`): every worker on every machine shares
  Kite's rate limit.
- Retries live in one layer: Celery's `autoretry_for` owns every temporary fault (5xx, timeouts, network).
  Here only a 429 ("Too many requests": our pace met someone else's) is retried, briefly, and never past
  the budget of the task that fetches (`budget`), so one task attempt always ends inside its time limit.
- An expired token (TokenException) is permanent: an operator must act; a token set at run time with
  `optask kite set-token` is picked up before every call.
- Every response body is kept exactly as received, for the raw archive.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from optask.infra import counters
from optask.infra.coordination import PREFIX
from optask.infra.ratelimit import RedisPacer
from optask.providers.base import PermanentProviderError, TemporaryProviderError

#: A 429 is retried this many times here (with backoff and jitter); every other fault goes to Celery at once.
RATE_LIMIT_RETRIES = 2
TOKEN_EXPIRED = ("KITE_ACCESS_TOKEN expired or invalid (Kite's die every morning around 06:00 IST): run "
                 "`optask kite login` (or `optask kite set-token <token>`); every worker picks it up, no restart")


def token_key(api_key: str) -> str:
    """Where `optask kite set-token` keeps the access token every worker reads."""
    return f"{PREFIX}:kite:access_token:{api_key}"


def rate_limited(exc: Exception) -> bool:
    code = getattr(exc, "code", 0) or 0
    return code == 429 or "too many requests" in str(exc).lower()


def temporary(exc: Exception) -> bool:
    """5xx and network faults: worth another try later (Celery's retry), not now."""
    import requests
    from kiteconnect import exceptions as kex

    if isinstance(exc, requests.RequestException):
        return True
    code = getattr(exc, "code", 0) or 0
    return isinstance(exc, kex.NetworkException | kex.GeneralException | kex.DataException) and code >= 500


@dataclass
class KiteClient:
    api_key: str
    access_token: str
    root_url: str
    redis_client: object | None = None
    timeout_s: float = 7.0
    quote_rate_per_s: float = 1.0
    historical_rate_per_s: float = 3.0
    backoff_s: float = 1.0
    name: str = "kite"
    deadline: float | None = None  # epoch seconds by which the current fetch must be done (see `budget`)
    sent_at: float = 0.0  # when the attempt that answered was sent (its quotes' age)
    _kite: object | None = field(default=None, repr=False)
    _bodies: list[bytes] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        return f"KiteClient(root_url={self.root_url!r}, api_key={self.api_key!r}, access_token='***')"

    def kite(self):
        if self._kite is None:
            from kiteconnect import KiteConnect

            kite = KiteConnect(self.api_key, access_token=self.access_token, root=self.root_url,
                               timeout=self.timeout_s)
            # keep every response body exactly as received, for the raw archive
            kite.reqsession.hooks["response"].append(lambda r, *a, **k: self._bodies.append(r.content))
            self._kite = kite
        return self._kite

    @contextlib.contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Calls inside the block must be done within `seconds`: an attempt that could not finish by then
        (its timeout counted) is not started, so the task's time limit is never what stops a fetch."""
        outer = self.deadline
        self.deadline = time.time() + seconds if outer is None else min(outer, time.time() + seconds)
        try:
            yield
        finally:
            self.deadline = outer

    def fresh_token(self) -> str:
        """The access token to use now: one set at run time with `optask kite set-token` wins (Kite tokens
        expire every day), else the configured one."""
        if self.redis_client is not None:
            try:
                raw = self.redis_client.get(token_key(self.api_key))
            except Exception:  # noqa: BLE001 - no Redis for a moment: keep the token we have
                raw = None
            if raw and raw.decode() != self.access_token:
                self.access_token = raw.decode()
                if self._kite is not None:
                    self._kite.set_access_token(self.access_token)
        return self.access_token

    def _pace(self, kind: str) -> None:
        if self.redis_client is None:
            return
        rate = self.quote_rate_per_s if kind == "quote" else self.historical_rate_per_s
        RedisPacer(self.redis_client, f"kite:{kind}:{self.api_key}", rate).wait()

    def _note(self, exc: BaseException | None, permanent: bool = False) -> None:
        """Every call's outcome for health's provider check, even an error a retry then hid."""
        if self.redis_client is None:
            return
        try:
            if exc is None:
                counters.record_provider_ok(self.redis_client, self.name)
            else:
                counters.record_provider_error(self.redis_client, self.name, exc, permanent)
        except Exception:  # noqa: BLE001 - telling health must never fail a fetch
            pass

    def _room(self, kind: str) -> None:
        """Refuse an attempt that could not finish within the budget."""
        if self.deadline is not None and time.time() + self.timeout_s > self.deadline:
            raise TemporaryProviderError(f"Kite {kind}: no time left in this task's budget for another call "
                                         f"(timeout {self.timeout_s:g} s); the task is retried")

    def call(self, kind: str, fn, *args, **kwargs):
        """One paced API call: (result, raw body). A 429 is retried briefly; anything else is raised at once,
        sorted into temporary (Celery retries) or permanent (an operator acts)."""
        from kiteconnect import exceptions as kex

        self.fresh_token()
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            self._pace(kind)
            self._room(kind)
            self._bodies.clear()
            self.sent_at = time.time()  # the attempt that answers is the one whose quotes are kept
            try:
                result = fn(*args, **kwargs)
                self._note(None)
                return result, (self._bodies[-1] if self._bodies else b"")
            except kex.TokenException as exc:
                error = PermanentProviderError(f"{TOKEN_EXPIRED} (Kite said: {exc})")
                self._note(error, permanent=True)
                raise error from None
            except Exception as exc:  # noqa: BLE001 - sorted into retryable or not right here
                self._note(exc)
                if isinstance(exc, kex.DataException) and self._bodies and b"<html" not in self._bodies[-1][:200].lower():
                    return None, self._bodies[-1]  # an unparseable body: keep it raw, the parser counts it
                if rate_limited(exc) and attempt < RATE_LIMIT_RETRIES:
                    delay = self.backoff_s * 2 ** attempt
                    time.sleep(delay / 2 + random.random() * delay / 2)  # exponential backoff with jitter
                    continue
                if rate_limited(exc) or temporary(exc):
                    raise TemporaryProviderError(f"Kite {kind} failed ({type(exc).__name__}: {exc}); "
                                                 "the task is retried") from None
                raise PermanentProviderError(f"Kite {kind} refused: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    def quote(self, keys: list[str]) -> tuple[bytes, list[float]]:
        """One quote call: its raw body and [sent, answered] epoch seconds of the attempt that answered (time
        lost to failed attempts and backoff before it does not age the quotes)."""
        _, raw = self.call("quote", self.kite().quote, keys)
        return raw, [self.sent_at, time.time()]
