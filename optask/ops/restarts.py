"""Restarting the supervisor's children: systemd's StartLimitBurst semantics, with backoff and alerts."""

from __future__ import annotations

from dataclasses import dataclass, field

from optask.ops.stack import ChildFailed, Stack, describe_exit

#: A restarted child that has run this long is "running again": its alert resolves.
STABLE_AFTER_S = 20.0


@dataclass
class RestartPolicy:
    """systemd's StartLimitBurst/StartLimitIntervalSec: at most `attempts` restarts per `window_s`, with backoff."""

    enabled: bool
    attempts: int
    window_s: float
    history: dict[str, list[float]] = field(default_factory=dict)

    def next_delay(self, name: str, now: float) -> float | None:
        """Seconds to wait before restarting `name`, or None when it must not be restarted."""
        recent = [t for t in self.history.get(name, []) if now - t < self.window_s]
        if not self.enabled or len(recent) >= self.attempts:
            return None
        self.history[name] = [*recent, now]
        return min(30.0, 2.0 ** len(recent))

    def used(self, name: str, now: float) -> int:
        return len([t for t in self.history.get(name, []) if now - t < self.window_s])


@dataclass
class ChildWatch:
    """Children that exit are restarted with backoff within the policy's limits, alerted and resolved."""

    stack: Stack
    policy: RestartPolicy
    alerter: object
    console: object
    due: dict[str, float] = field(default_factory=dict)  # child -> when to restart it
    restarted: dict[str, float] = field(default_factory=dict)  # child -> when it was restarted

    def step(self, now: float) -> None:
        mon = self.stack.settings.monitoring
        for name, code in self.stack.exited().items():
            if name in self.due:
                continue
            delay = self.policy.next_delay(name, now)
            reason = describe_exit(self.stack, name, code)
            self.restarted.pop(name, None)
            if delay is None:
                tried = self.policy.used(name, now)
                message = f"{reason}; not restarted" + (
                    f" (restarted {tried} times within {mon.restart_window_s} s, MAX_RESTART_ATTEMPTS="
                    f"{mon.max_restart_attempts})" if self.policy.enabled else " (AUTO_RESTART_ENABLED=false)")
                self.alerter.fire(f"supervisor.{name}.down", "CRIT", f"optask up stopped: {message}")
                raise ChildFailed(message)
            self.console.print(f"[yellow]{reason}; restarting in {delay:.0f} s (restart {self.policy.used(name, now)} "
                               f"of {mon.max_restart_attempts} within {mon.restart_window_s} s)[/yellow]", highlight=False)
            self.alerter.fire(f"supervisor.{name}", "WARN", f"{reason}; restarting it", code)
            self.due[name] = now + delay
        for name, at in list(self.due.items()):
            if now >= at:
                self.stack.restart(name)
                del self.due[name]
                self.restarted[name] = now
                self.console.print(f"{name} restarted", highlight=False)
        for name, at in list(self.restarted.items()):
            if now - at >= STABLE_AFTER_S and (name == "up" or self.stack.procs[name].poll() is None):
                del self.restarted[name]
                self.alerter.resolve(f"supervisor.{name}", f"{name} running again for {STABLE_AFTER_S:.0f} s")
