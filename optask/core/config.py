"""Typed settings from the environment and `.env` (DESIGN section 6).

Every variable keeps the seed platform's name; groups only organise them in code:
`get_settings().service.processing_batch_size`, `get_settings().data.enable_incremental`.
A bad value raises `SettingsError` whose one-line message names the variable, the value
and what is allowed, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode

from optask.core.schema import EXPIRY_KINDS, INDICES
from optask.core.settings_base import ENV_FILE, SettingsError, group_config, is_loopback, mask_url, split_csv

__all__ = ["ENV_FILE", "Settings", "SettingsError", "get_settings", "is_loopback", "load_settings", "mask_url"]

class RedisSettings(BaseSettings):
    """Broker, result backend and coordination store. `REDIS_URL` wins over host/port."""

    model_config = group_config("REDIS_")
    url: str = Field("", description="Full Redis URL (redis:// or rediss:// for TLS); wins over host/port.")
    host: str = Field("", description="Redis host; empty with an empty REDIS_URL starts the bundled server.")
    port: int = Field(6379, ge=1, le=65535, description="Redis port (1-65535).")
    password: SecretStr = Field(SecretStr(""), description="Redis password.")
    db: int = Field(0, ge=0, le=15, description="Redis database number (0-15).")
    allow_no_auth: bool = Field(
        False, description="Accept a configured Redis without a password that listens beyond 127.0.0.1 (not advised).")

    @model_validator(mode="after")
    def _password_beyond_loopback(self) -> RedisSettings:
        url = self.effective_url()
        if not url or self.allow_no_auth or urlsplit(url).scheme == "unix":
            return self
        parts = urlsplit(url)
        if not parts.password and not is_loopback(parts.hostname):
            raise ValueError(f"Redis {mask_url(url)} is reached over the network without a password: anyone who "
                             "reaches it reads the Kite token and can enqueue tasks. Put its password in REDIS_URL "
                             "(redis://:PASSWORD@host:port/0) or REDIS_PASSWORD, or set REDIS_ALLOW_NO_AUTH=true")
        return self

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if v and urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @property
    def configured(self) -> bool:
        """True when the operator named a server; False means: use the bundled one."""
        return bool(self.url or self.host)

    def effective_url(self) -> str | None:
        """The configured server as a URL, or None when nothing is configured."""
        if self.url:
            return self.url
        if self.host:
            pw = self.password.get_secret_value()
            auth = f":{pw}@" if pw else ""
            return f"redis://{auth}{self.host}:{self.port}/{self.db}"
        return None


class InfluxSettings(BaseSettings):
    """InfluxDB 2 sink; disabled when `INFLUXDB_URL` is empty."""

    model_config = group_config("INFLUXDB_")
    url: str = Field("", description="InfluxDB URL, e.g. http://127.0.0.1:8086; empty disables the sink.")
    org: str = Field("optask", description="InfluxDB organisation.")
    bucket: str = Field("options", description="InfluxDB bucket.")
    token: SecretStr = Field(SecretStr(""), description="InfluxDB API token.")
    timeout_ms: int = Field(10_000, ge=100, description="Write timeout in milliseconds.")
    admin_password: SecretStr = Field(
        SecretStr(""), description="Password of the admin user docker-compose creates in InfluxDB (8+ characters)."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class KiteSettings(BaseSettings):
    """Zerodha Kite Connect credentials and endpoint."""

    model_config = group_config("KITE_")
    api_key: str = Field("", description="Kite Connect API key.")
    api_secret: SecretStr = Field(SecretStr(""), description="Kite Connect API secret: `optask kite login` exchanges "
                                  "the day's request token with it.")
    access_token: SecretStr = Field(SecretStr(""), description="Daily Kite access token; empty uses the one "
                                    "`optask kite login` stored.")
    root_url: str = Field("https://api.kite.trade", description="Kite REST API root.")
    timeout_s: float = Field(7.0, gt=0, description="HTTP timeout per Kite request, seconds.")
    quote_rate_per_s: float = Field(1.0, gt=0, description="Quote requests per second, account-wide.")
    historical_rate_per_s: float = Field(3.0, gt=0, description="Historical requests per second, account-wide.")
    fetch: Literal["minute", "index", "ticker"] = Field(
        "minute", description="minute: all indices of a minute in the fewest quote calls (500 instruments each, "
        "each spot with its options); index: each index fetched on its own by its processing task; ticker: "
        "streamed by `optask ticker` (KiteTicker, full mode) and cut at each minute, REST when it is down.")
    ticker_url: str = Field("wss://ws.kite.trade", description="KiteTicker websocket root.")
    ticker_stale_s: float = Field(
        10.0, gt=0, description="A socket silent this long (seconds) is reconnected, and its minutes fetched over REST.")
    ticker_wait_s: float = Field(
        3.0, ge=0, description="How long collect_minute waits for the ticker's cut of a minute before fetching it "
        "over REST, seconds (only while the ticker reports itself healthy).")
    ticker_cut_delay_ms: float = Field(
        200.0, ge=0, description="The cut waits this long after the minute boundary for packets still in flight, ms.")


class DataSettings(BaseSettings):
    """Where data lives and how it is written and read."""

    model_config = group_config()
    base_data_dir: Path = Field(Path("./data"), description="Data root (DESIGN section 4).")
    csv_data_root: str = Field("", description="CSV root; empty means BASE_DATA_DIR/csv_data.")
    json_snapshots_root: str = Field("", description="Raw snapshot archive; empty means BASE_DATA_DIR/raw_snapshots.")
    enable_incremental: bool = Field(True, description="Readers resume from their Redis cursor.")
    use_memory_mapping: bool = Field(True, description="Memory-map Parquet files when reading them.")
    compression_enabled: bool = Field(True, description="Compress old raw days into one archive at maintenance.")
    raw_retention_days: int = Field(30, ge=1, description="Days of raw snapshots kept after verification.")
    ledger_retention_days: int = Field(30, ge=1, description="Days of per-day Redis keys (ledger, cursors, claims) "
                                       "kept; older days are answered from the stores.")
    max_sample_span_ms: float = Field(
        10_000.0, ge=0, description="Verification flags a minute whose quotes were taken further apart than this, "
        "ms (0: no check).")

    @property
    def root(self) -> Path:
        return self.base_data_dir.expanduser().resolve()

    @property
    def csv_root(self) -> Path:
        return Path(self.csv_data_root).expanduser().resolve() if self.csv_data_root else self.root / "csv_data"

    @property
    def raw_root(self) -> Path:
        return (
            Path(self.json_snapshots_root).expanduser().resolve()
            if self.json_snapshots_root else self.root / "raw_snapshots"
        )

    @property
    def parquet_root(self) -> Path:
        return self.root / "parquet"

    @property
    def reports_root(self) -> Path:
        return self.root / "reports"

    @property
    def calendar_overrides(self) -> Path:
        return self.root / "calendar_overrides.json"


class MarketSettings(BaseSettings):
    """What to collect and from where."""

    model_config = group_config("OPTASK_")
    provider: Literal["simulated", "kite", "replay"] = Field("simulated", description="simulated | kite | replay.")
    indices: Annotated[tuple[str, ...], NoDecode] = Field(INDICES, description="Comma-separated indices to collect.")
    expiry_kinds: Annotated[tuple[str, ...], NoDecode] = Field(
        EXPIRY_KINDS, description="Comma-separated expiry kinds to collect."
    )
    strikes_around_atm: int = Field(20, ge=1, le=200, description="Strikes collected each side of ATM (1-200).")
    sim_seed: int = Field(7, description="Seed of the simulated market.")
    sim_slow_s: float = Field(0.0, ge=0.0, le=60.0, description="Simulated venue: seconds each snapshot takes (tests).")
    sim_outage_file: str = Field("", description="Simulated venue: down while this file exists (outage drills).")
    risk_free_rate: float = Field(0.065, ge=-0.05, le=0.5, description="Annual risk-free rate for IV and greeks.")
    dividend_yield: float = Field(0.0, ge=0.0, le=0.5, description="Annual dividend yield of the indices.")
    simulated_session_day: dt.date | None = Field(
        None, description="Play this day's session from its open (demo outside market hours); empty = live clock."
    )
    simulated_session_speed: float = Field(
        1.0, ge=1.0, le=3600.0, description="Clock speed of the simulated session, x real time (1-3600)."
    )
    simulated_session_days: int = Field(1, ge=1, le=366, description="Calendar days the simulated clock plays from "
                                        "that day: each session, an hour after its close, ten minutes of a day off.")

    @field_validator("indices", "expiry_kinds", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_csv(v)

    @field_validator("simulated_session_day", mode="before")
    @classmethod
    def _empty_is_live(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("indices")
    @classmethod
    def _known_indices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(s.upper() for s in v)
        bad = [s for s in v if s not in INDICES]
        if bad or not v:
            raise ValueError(f"unknown index {','.join(bad) or '(none)'}; allowed: {','.join(INDICES)}")
        return v

    @field_validator("expiry_kinds")
    @classmethod
    def _known_kinds(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [s for s in v if s not in EXPIRY_KINDS]
        if bad or not v:
            raise ValueError(f"unknown expiry kind {','.join(bad) or '(none)'}; allowed: {','.join(EXPIRY_KINDS)}")
        return v


class ServiceSettings(BaseSettings):
    """Worker sizing and batching."""

    model_config = group_config()
    processing_batch_size: int = Field(1000, ge=1, description="Accepted for the seed's .env and ignored (optask "
                                       "batches by minutes); `optask config` says so when it is set.")
    processing_max_workers: int = Field(2, ge=1, le=256, description="Worker processes (1-256).")
    max_memory_usage_mb: int = Field(2048, ge=64, description="Memory per worker child before it is replaced, MB.")
    debug: bool = Field(False, description="Debug logging in the CLI and every process `optask up` starts.")
    log_max_mb: float = Field(50.0, gt=0, description="A child's log in data/logs/ is rotated past this size, MB.")
    log_backups: int = Field(5, ge=1, le=100, description="Rotated logs kept per child (name.log.1 the newest).")
    celery_visibility_timeout_s: int = Field(
        1260, ge=5, description="Seconds before Redis redelivers an unacknowledged task; keep above the longest task."
    )
    worker_indices: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Indices whose queues the worker of this node's `optask up` consumes (empty = all); "
        "with several nodes, each takes some and all share the fallback queue process.any."
    )

    @field_validator("worker_indices", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_csv(v)

    @field_validator("worker_indices")
    @classmethod
    def _known_indices(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = tuple(s.upper() for s in v)
        bad = [s for s in v if s not in INDICES]
        if bad:
            raise ValueError(f"unknown index {','.join(bad)}; allowed: {','.join(INDICES)}")
        return v


class MonitoringSettings(BaseSettings):
    """Health checks and self-healing."""

    model_config = group_config()
    health_check_interval: int = Field(60, ge=5, description="Seconds between health checks (>= 5).")
    health_in_beat: bool = Field(
        True, description="Run the health checks as a beat task too (optask up runs its own monitor and turns this off).")
    auto_restart_enabled: bool = Field(True, description="Restart failed components automatically.")
    max_restart_attempts: int = Field(
        3, ge=0, description="Restarts of a dead child within RESTART_WINDOW_S before it is given up and an operator alerted.")
    restart_window_s: int = Field(600, ge=10, description="Window for MAX_RESTART_ATTEMPTS, seconds (>= 10).")
    metrics_port: int = Field(9108, ge=1, le=65535, description="Port of optask's Prometheus /metrics endpoint.")
    metrics_address: str = Field("127.0.0.1", description="Address the /metrics endpoint binds to.")
    cpu_warn_pct: float = Field(85.0, gt=0, le=100, description="CPU use (%) over 5 minutes that is WARN while the work suffers too (a queue waiting, minutes stored late).")
    cpu_crit_pct: float = Field(97.0, gt=0, le=100, description="CPU use (%) over 5 minutes that is CRIT while the work suffers too.")
    memory_warn_pct: float = Field(85.0, gt=0, le=100, description="Memory use (%) that is WARN.")
    memory_crit_pct: float = Field(95.0, gt=0, le=100, description="Memory use (%) that is CRIT.")
    disk_warn_free_gb: float = Field(5.0, ge=0, description="Free disk under the data root (GB) below which it is WARN.")
    disk_crit_free_gb: float = Field(1.0, ge=0, description="Free disk under the data root (GB) below which it is CRIT.")
    freshness_warn_minutes: int = Field(2, ge=1, description="In session: minutes without a stored minute of an index that are WARN.")
    freshness_crit_minutes: int = Field(5, ge=1, description="In session: minutes without a stored minute of an index that are CRIT.")
    queue_age_warn_s: int = Field(120, ge=1, description="Age (s) of the oldest waiting task that is WARN.")
    queue_age_crit_s: int = Field(600, ge=1, description="Age (s) of the oldest waiting task that is CRIT.")
    flower_basic_auth: SecretStr = Field(SecretStr(""), description="Flower user:password; empty generates one.")
    flower_address: str = Field("127.0.0.1", description="Address Flower binds to.")
    flower_port: int = Field(5555, ge=1, le=65535, description="Flower port.")


class AlertSettings(BaseSettings):
    """Who is told when a person is needed."""

    model_config = group_config()
    smtp_server: str = Field("", description="SMTP server; empty disables e-mail alerts.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_user: str = Field("", description="SMTP user.")
    smtp_password: SecretStr = Field(SecretStr(""), description="SMTP password.")
    alert_recipients: Annotated[tuple[str, ...], NoDecode] = Field((), description="Comma-separated e-mail addresses.")
    smtp_from: str = Field("", description="Sender address of alert e-mails; empty uses SMTP_USER or optask@<host>.")
    smtp_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of each SMTP connection, seconds.")
    smtp_ssl: bool = Field(False, description="Implicit TLS from the first byte (usually port 465; port 465 implies it).")
    smtp_allow_plaintext: bool = Field(
        False, description="Send SMTP_USER's password over a server that offers no STARTTLS (in clear): only on a trusted link.")
    smtp_ca_file: str = Field("", description="CA bundle that signs the SMTP server's certificate; empty uses the system's.")
    alert_webhook_url: str = Field("", description="Optional webhook: every notification is POSTed there as JSON.")
    alert_for_s: int = Field(
        120, ge=0, description="A condition must hold this long (s) before it notifies: one slow minute does not page.")
    alert_repeat_s: int = Field(
        3600, ge=60, description="First reminder while a condition holds (s); each later one waits twice as long.")

    @field_validator("alert_recipients", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_csv(v)


class ApiSettings(BaseSettings):
    """The HTTP read side, `optask serve`."""

    model_config = group_config("API_")
    enabled: bool = Field(True, description="`optask up` starts the API server too.")
    host: str = Field("127.0.0.1", description="Address the API binds to; anything but loopback is reached by others.")
    port: int = Field(8008, ge=1, le=65535, description="API port.")
    row_limit: int = Field(200_000, ge=1, description="Most rows one response holds; larger answers are paged (cursor=).")
    rate_limit: int = Field(6000, ge=1, description="Requests per token per API_RATE_WINDOW_S, shared by every API process.")
    rate_window_s: int = Field(60, ge=1, le=3600, description="The rate limit's window, seconds.")
    workers: int = Field(1, ge=1, le=64, description="API processes; they share tokens and the rate limit through Redis.")
    nice: int = Field(10, ge=0, le=19, description="CPU priority the API gives up (nice): the collectors come first.")
    push_queue: int = Field(64, ge=1, le=100_000, description="Events a push subscriber may fall behind before it is dropped.")
    session_hours: int = Field(12, ge=1, le=24 * 30, description="How long the page's login lasts (its session cookie).")
    sessions_per_token: int = Field(20, ge=1, le=10_000, description="Page logins a token keeps; a new one ends the oldest.")
    replay_max: int = Field(2000, ge=1, le=1_000_000, description="Most events a resuming push subscriber is replayed.")
    streams_per_token: int = Field(100, ge=1, le=10**6, description="Open push streams per token per API process (429).")
    streams_max: int = Field(1000, ge=1, le=10**6, description="Open push streams per API process (past it, 503).")
    heavy_concurrency: int = Field(2, ge=1, le=64, description="Heavy row answers built at once per API process.")
    forwarded_allow_ips: str = Field("127.0.0.1,::1", description="Proxies whose X-Forwarded-Proto/-For are believed (or *).")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field((), description="Comma-separated origins allowed by CORS (empty: off).")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return split_csv(v)


class Settings(BaseModel):
    """All settings, grouped."""

    redis: RedisSettings
    influx: InfluxSettings
    kite: KiteSettings
    data: DataSettings
    market: MarketSettings
    service: ServiceSettings
    monitoring: MonitoringSettings
    alerts: AlertSettings
    api: ApiSettings

    def display(self) -> dict[str, dict[str, str]]:
        """Every effective setting by group and variable name, secrets as `***`."""
        out: dict[str, dict[str, str]] = {}
        for group_name in type(self).model_fields:
            group = getattr(self, group_name)
            rows: dict[str, str] = {}
            for field_name in type(group).model_fields:
                rows[env_name(type(group), field_name)] = _mask(getattr(group, field_name))
            out[group_name] = rows
        return out


_GROUPS: dict[str, type[BaseSettings]] = {
    "redis": RedisSettings, "influx": InfluxSettings, "kite": KiteSettings, "data": DataSettings,
    "market": MarketSettings, "service": ServiceSettings, "monitoring": MonitoringSettings,
    "alerts": AlertSettings, "api": ApiSettings,
}


def env_name(group: type[BaseSettings], field_name: str) -> str:
    return f"{group.model_config.get('env_prefix', '')}{field_name}".upper()


def _mask(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return "***" if value.get_secret_value() else ""
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return str(value)


def load_settings(**overrides: Any) -> Settings:
    """Read every group from the environment and `.env`; raise SettingsError on the first bad value."""
    groups: dict[str, BaseSettings] = {}
    for name, cls in _GROUPS.items():
        try:
            groups[name] = cls(**overrides.get(name, {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            reason = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across the group's settings: its message names them
                raise SettingsError(reason) from None
            var = env_name(cls, str(err["loc"][0]))
            raw = os.environ.get(var, err.get("input"))
            raise SettingsError(f"{var}={raw!s}: {reason}") from None
    return Settings(**groups)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once. Tests call `get_settings.cache_clear()` after changing the env."""
    return load_settings()
