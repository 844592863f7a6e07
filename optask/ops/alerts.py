"""Alerts that never storm: Alertmanager's semantics, state in Redis, delivered by log, e-mail and webhook.

- A check that is not OK opens an alert as *pending*; it notifies (*firing*) only once it has
  held for ALERT_FOR_S, so a single slow minute does not page anyone.
- While it holds: reminders at a growing interval, ALERT_REPEAT_S, then twice that, and so on.
- When it clears: one *resolved* notice, for an alert that fired (a pending one just goes away).
- State lives in Redis; an alert is opened with HSETNX and every notification (firing, n-th
  reminder, resolved) is claimed once with SET NX, so several monitors never double-send. With
  Redis down, a process keeps the state in memory so that it alone still never storms.
- Delivery never blocks the checks: every channel has a timeout; what a channel could not take
  waits in an outbox in Redis and is retried at the next run; the last delivery error of each
  channel shows in `optask health --status`. Log delivery always happens.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import socket
import ssl
import time
import urllib.request
from dataclasses import asdict, dataclass
from email.message import EmailMessage

import redis

from optask.core.timeutils import IST
from optask.infra.coordination import PREFIX, claim_once

log = logging.getLogger("optask.alerts")

STATE = f"{PREFIX}:alerts:state"
OUTBOX = f"{PREFIX}:alerts:outbox"
HISTORY = f"{PREFIX}:alerts:history"
DELIVERY = f"{PREFIX}:alerts:delivery"
OUTBOX_KEPT = 200
#: A notification a channel keeps refusing is dropped (with a log line) after this many tries.
MAX_DELIVERY_ATTEMPTS = 20
_LOCAL_STATE: dict[str, dict] = {}  # used only while Redis is unreachable
_LOCAL_HISTORY: list[str] = []  # notifications sent while Redis was down, recorded once it is back


@dataclass
class Notification:
    kind: str  # firing | reminder | resolved
    name: str
    severity: str
    reason: str
    value: object
    since: float
    at: float
    seq: int

    @property
    def key(self) -> str:
        return f"{self.name}:{self.since:.3f}:{self.seq if self.kind != 'resolved' else 'resolved'}"

    def subject(self) -> str:
        word = {"firing": self.severity, "reminder": f"{self.severity} (still)", "resolved": "RESOLVED"}[self.kind]
        return f"[optask] {word} {self.name}: {self.reason}"[:200]

    def body(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        since_ist = _ist(self.since)
        held = self.at - self.since
        what = {"firing": "started", "reminder": "still holds", "resolved": "has cleared"}[self.kind]
        return (f"optask alert {self.name} {what}.\n\n"
                f"What:     {self.reason}\n"
                f"Severity: {self.severity}\n"
                f"Since:    {since_ist} ({since} server time), {held / 60:.1f} minutes\n"
                f"Value:    {self.value}\n\n"
                f"More:     optask health --status   (and optask health --alerts)\n")


def _ist(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, IST).strftime("%Y-%m-%d %H:%M:%S IST")


class Alerter:
    def __init__(self, settings, client: redis.Redis | None):
        self.settings = settings
        self.client = client

    # --- state ---------------------------------------------------------------------------------

    def _redis_ok(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def _states(self, use_redis: bool) -> dict[str, dict]:
        if not use_redis:
            return dict(_LOCAL_STATE)
        return {k.decode(): json.loads(v) for k, v in self.client.hgetall(STATE).items()}

    def _open(self, name: str, state: dict, use_redis: bool) -> dict:
        """The alert's state, created once across monitors (HSETNX): everyone agrees on `since`."""
        if not use_redis:
            return _LOCAL_STATE.setdefault(name, state)
        self.client.hsetnx(STATE, name, json.dumps(state))
        return json.loads(self.client.hget(STATE, name))

    def _save(self, name: str, state: dict, use_redis: bool) -> None:
        if use_redis:
            self.client.hset(STATE, name, json.dumps(state))
        else:
            _LOCAL_STATE[name] = state

    def _drop(self, name: str, use_redis: bool) -> None:
        if use_redis:
            self.client.hdel(STATE, name)
        _LOCAL_STATE.pop(name, None)

    def _claim(self, note: Notification, use_redis: bool) -> bool:
        return claim_once(self.client, "alert", note.key, ttl_s=7 * 24 * 3600) if use_redis else True

    # --- evaluation ----------------------------------------------------------------------------

    def _either(self, work):
        """Run `work(use_redis)` with Redis when it answers; if Redis goes away midway, again without it."""
        use_redis = self._redis_ok()
        try:
            return work(use_redis)
        except (redis.RedisError, OSError):
            if not use_redis:
                raise
            return work(False)

    def process(self, checks, now: float | None = None) -> list[Notification]:
        """Turn one run's check results into the notifications now due, and deliver them."""
        return self._either(lambda use_redis: self._process(checks, now or time.time(), use_redis))

    def _process(self, checks, now: float, use_redis: bool) -> list[Notification]:
        alerts = self.settings.alerts
        due: list[Notification] = []
        bad = {c.name: c for c in checks if c.status != "OK"}
        for name, c in bad.items():
            st = self._open(name, {"since": now, "status": "pending", "severity": c.status, "sent": 0,
                                   "last_sent": None, "reason": c.reason, "value": c.value}, use_redis)
            st.update(reason=c.reason, value=c.value, severity=max(st["severity"], c.status, key=_rank))
            note = None
            if st["status"] == "pending" and now - st["since"] >= alerts.alert_for_s:
                st["status"] = "firing"
                note = self._note("firing", name, st, now, 0)
            elif st["status"] == "firing" and now - st["last_sent"] >= alerts.alert_repeat_s * 2 ** (st["sent"] - 1):
                note = self._note("reminder", name, st, now, st["sent"])
            if note is not None:
                due.append(note)
                st["sent"], st["last_sent"] = st["sent"] + 1, now
            self._save(name, st, use_redis)
        for name, st in self._states(use_redis).items():
            if name in bad or name.startswith("supervisor."):
                continue
            if st["status"] == "firing":
                due.append(self._note("resolved", name, st, now, st["sent"], reason="cleared"))
            self._drop(name, use_redis)
        return self.deliver(due, use_redis)

    def fire(self, name: str, severity: str, reason: str, value: object = None) -> list[Notification]:
        """An event that pages at once (a supervisor's child died): firing now, no `for` period."""
        return self._either(lambda use_redis: self._fire(name, severity, reason, value, use_redis))

    def _fire(self, name: str, severity: str, reason: str, value: object, use_redis: bool) -> list[Notification]:
        now = time.time()
        st = self._open(name, {"since": now, "status": "firing", "severity": severity, "sent": 0, "last_sent": now,
                               "reason": reason, "value": value}, use_redis)
        if st["sent"]:
            return []  # already told
        st.update(sent=1, last_sent=now, status="firing")
        self._save(name, st, use_redis)
        return self.deliver([self._note("firing", name, st, now, 0)], use_redis)

    def resolve(self, name: str, reason: str) -> list[Notification]:
        return self._either(lambda use_redis: self._resolve(name, reason, use_redis))

    def _resolve(self, name: str, reason: str, use_redis: bool) -> list[Notification]:
        st = self._states(use_redis).get(name) or _LOCAL_STATE.get(name)
        if st is None:
            return []
        self._drop(name, use_redis)
        if st["status"] != "firing":
            return []
        return self.deliver([self._note("resolved", name, st, time.time(), st["sent"], reason=reason)], use_redis)

    @staticmethod
    def _note(kind: str, name: str, st: dict, now: float, seq: int, reason: str | None = None) -> Notification:
        return Notification(kind, name, st["severity"], reason or st["reason"], st["value"], st["since"], now, seq)

    # --- delivery ------------------------------------------------------------------------------

    def channels(self) -> list[str]:
        a = self.settings.alerts
        out = []
        if a.smtp_server and a.alert_recipients:
            out.append("email")
        if a.alert_webhook_url:
            out.append("webhook")
        return out

    def deliver(self, notes: list[Notification], use_redis: bool | None = None) -> list[Notification]:
        """Log each claimed notification, then send it on every channel; a refusal goes to the outbox."""
        use_redis = self._redis_ok() if use_redis is None else use_redis
        sent = []
        for note in notes:
            if not self._claim(note, use_redis):
                continue  # another monitor has it
            sent.append(note)
            level = logging.INFO if note.kind == "resolved" else logging.WARNING
            log.log(level, "alert %s: %s", note.kind, note.subject())
            _LOCAL_HISTORY.append(json.dumps(asdict(note), default=str))
            if use_redis:
                self.client.lpush(HISTORY, *_LOCAL_HISTORY)
                self.client.ltrim(HISTORY, 0, 499)
                _LOCAL_HISTORY.clear()
            for channel in self.channels():
                self._send(channel, note, attempts=0, use_redis=use_redis)
        if use_redis:
            self.retry_outbox()
        return sent

    def _send(self, channel: str, note: Notification, attempts: int, use_redis: bool) -> bool:
        try:
            (self._email if channel == "email" else self._webhook)(note)
            ok, error = True, None
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
            log.warning("alert %s not delivered by %s (%s); kept for a retry", note.name, channel, error)
        if use_redis:
            self.client.hset(DELIVERY, channel, json.dumps({"ok": ok, "at": time.time(), "error": error}))
            if not ok:
                if attempts + 1 < MAX_DELIVERY_ATTEMPTS:
                    self.client.rpush(OUTBOX, json.dumps({"channel": channel, "attempts": attempts + 1,
                                                          "note": asdict(note)}, default=str))
                    self.client.ltrim(OUTBOX, -OUTBOX_KEPT, -1)  # a channel down for weeks keeps the newest
                else:
                    log.error("alert %s dropped for %s after %d attempts", note.name, channel, MAX_DELIVERY_ATTEMPTS)
        return ok

    def retry_outbox(self) -> int:
        """Try once more what a channel refused before; returns how many went out."""
        delivered = 0
        for _ in range(self.client.llen(OUTBOX)):
            raw = self.client.lpop(OUTBOX)
            if raw is None:
                break
            item = json.loads(raw)
            note = Notification(**item["note"])
            if self._send(item["channel"], note, item["attempts"], use_redis=True):
                delivered += 1
            else:
                break  # the channel is still down: the rest wait too
        return delivered

    def _email(self, note: Notification) -> None:
        a = self.settings.alerts
        msg = EmailMessage()
        msg["Subject"] = note.subject()
        msg["From"] = a.smtp_from or a.smtp_user or f"optask@{socket.gethostname()}"
        msg["To"] = ", ".join(a.alert_recipients)
        msg.set_content(note.body())
        context = ssl.create_default_context(cafile=a.smtp_ca_file or None)
        implicit = a.smtp_ssl or a.smtp_port == 465
        smtp = (smtplib.SMTP_SSL(a.smtp_server, a.smtp_port, timeout=a.smtp_timeout_s, context=context) if implicit
                else smtplib.SMTP(a.smtp_server, a.smtp_port, timeout=a.smtp_timeout_s))
        with smtp:
            smtp.ehlo()
            encrypted = implicit
            if not implicit and smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
                encrypted = True
            if a.smtp_user:
                if not encrypted and not a.smtp_allow_plaintext:
                    raise smtplib.SMTPNotSupportedError(
                        f"{a.smtp_server}:{a.smtp_port} offers no STARTTLS: refusing to send SMTP_USER's password in "
                        "clear; use SMTP_SSL=true (port 465) or a server with STARTTLS, or set SMTP_ALLOW_PLAINTEXT=true")
                smtp.login(a.smtp_user, a.smtp_password.get_secret_value())
            smtp.send_message(msg)

    def _webhook(self, note: Notification) -> None:
        body = json.dumps({**asdict(note), "subject": note.subject(), "text": note.body()}, default=str).encode()
        req = urllib.request.Request(self.settings.alerts.alert_webhook_url, data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=self.settings.alerts.smtp_timeout_s) as resp:
            if resp.status >= 300:
                raise OSError(f"webhook answered {resp.status}")

    # --- reading -------------------------------------------------------------------------------

    def active(self) -> list[dict]:
        """Open alerts (pending or firing) with since when, newest first."""
        states = self._states(self._redis_ok())
        return sorted(({"name": k, **v} for k, v in states.items()), key=lambda s: -s["since"])

    def history(self, n: int = 20) -> list[dict]:
        if not self._redis_ok():
            return []
        return [json.loads(x) for x in self.client.lrange(HISTORY, 0, n - 1)]

    def delivery_state(self) -> dict[str, dict]:
        if not self._redis_ok():
            return {}
        state = {k.decode(): json.loads(v) for k, v in self.client.hgetall(DELIVERY).items()}
        state["outbox"] = {"waiting": self.client.llen(OUTBOX)}
        return state


def _rank(status: str) -> int:
    return {"OK": 0, "WARN": 1, "CRIT": 2}.get(status, 2)
