"""What every settings group shares: the error an operator reads, how a group reads the environment, and the
two address rules (loopback, masked URLs) that groups and displays apply."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic_settings import SettingsConfigDict

ENV_FILE = ".env"


class SettingsError(ValueError):
    """A setting has a value that is not allowed; the message is meant for an operator."""


def group_config(prefix: str = "") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=ENV_FILE, env_file_encoding="utf-8", extra="ignore",
        case_sensitive=False, validate_default=True,
    )


def split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def is_loopback(host: str | None) -> bool:
    """True for a name or address that only this machine reaches."""
    try:
        return not host or host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_url(url: str) -> str:
    """A URL with its password replaced by ***, for logs and displays."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
