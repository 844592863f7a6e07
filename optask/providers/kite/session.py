"""The daily Kite login: the login URL, the request token exchanged for an access token (the official
client's `generate_session`), and where the token is kept so that every worker uses it.

A Kite access token dies every morning (around 06:00 IST). `optask kite login` exchanges the day's request
token with KITE_API_SECRET and stores the access token in Redis with when it dies; the health check warns
from the evening before when it will die before the next session.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from optask.core.clock import WallClock
from optask.core.timeutils import IST
from optask.infra.coordination import PREFIX
from optask.providers.kite.client import token_key

#: Kite's access tokens expire at this IST time the morning after they were made.
TOKEN_DIES_AT = dt.time(6, 0)
#: Kept a little longer than a token lives, so a late look still finds when it died.
TOKEN_KEPT_S = 36 * 3600


class LoginRefused(ValueError):
    """Kite refused the exchange (wrong secret, a used or stale request token) or could not be reached."""


@dataclass
class Session:
    access_token: str
    user_id: str
    login_time: dt.datetime


def login_url(api_key: str) -> str:
    from kiteconnect import KiteConnect

    return KiteConnect(api_key).login_url()


def request_token_of(answer: str) -> str:
    """The request token from what the user pasted: the redirect URL Kite sent them to, or the bare token."""
    answer = answer.strip()
    if "request_token=" in answer:
        query = parse_qs(urlsplit(answer).query)
        if query.get("status", ["success"])[0] != "success":
            raise LoginRefused("the redirect URL says the login did not succeed (status is not success): log in again")
        answer = (query.get("request_token") or [""])[0]
    if not answer.isalnum() or not 8 <= len(answer) <= 64:
        raise LoginRefused("that is neither a redirect URL with a request_token nor a request token "
                           "(an alphanumeric string from the URL Kite redirects to after login)")
    return answer


def exchange(api_key: str, api_secret: str, request_token: str, root_url: str, timeout_s: float = 7.0) -> Session:
    """POST /session/token with the checksum (the official client computes it): the day's access token."""
    from kiteconnect import KiteConnect
    from kiteconnect import exceptions as kex

    kite = KiteConnect(api_key, root=root_url, timeout=timeout_s)
    try:
        data = kite.generate_session(request_token, api_secret=api_secret)
    except kex.TokenException as exc:
        raise LoginRefused(f"Kite refused the login ({exc}): a request token works once, for a few minutes, "
                           "and only with this API key's KITE_API_SECRET; log in again for a fresh one") from None
    except kex.KiteException as exc:
        raise LoginRefused(f"Kite refused the login ({type(exc).__name__}: {exc})") from None
    except OSError as exc:  # requests' connection errors are OSErrors
        raise LoginRefused(f"Kite at {root_url} could not be reached ({type(exc).__name__}); try again") from None
    login = data.get("login_time")
    login_time = login.replace(tzinfo=IST) if isinstance(login, dt.datetime) and login.tzinfo is None else (
        login if isinstance(login, dt.datetime) else WallClock().now().astimezone(IST))
    return Session(data["access_token"], str(data.get("user_id", "")), login_time)


def token_dies(made_at: dt.datetime) -> dt.datetime:
    """The next 06:00 IST after a token was made."""
    local = made_at.astimezone(IST)
    dies = dt.datetime.combine(local.date(), TOKEN_DIES_AT, IST)
    return dies if dies > local else dies + dt.timedelta(days=1)


def meta_key(api_key: str) -> str:
    return f"{PREFIX}:kite:token_meta:{api_key}"


def store_token(client, api_key: str, token: str, made_at: dt.datetime | None = None, how: str = "login") -> dict:
    """Keep the day's token where every worker reads it (`KiteClient.fresh_token`), and when it dies."""
    made_at = made_at or WallClock().now().astimezone(IST)
    meta = {"stored_at": time.time(), "made_at": made_at.isoformat(), "dies_at": token_dies(made_at).isoformat(),
            "how": how}
    with client.pipeline() as pipe:
        pipe.set(token_key(api_key), token, ex=TOKEN_KEPT_S)
        pipe.set(meta_key(api_key), json.dumps(meta), ex=TOKEN_KEPT_S)
        pipe.execute()
    return meta


def stored_token(client, api_key: str) -> str | None:
    raw = client.get(token_key(api_key))
    return raw.decode() if raw else None


def token_meta(client, api_key: str) -> dict | None:
    raw = client.get(meta_key(api_key))
    return json.loads(raw) if raw else None
