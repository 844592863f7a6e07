"""What a worker process keeps between minutes: one provider per name (instrument caches, HTTP sessions)."""

from __future__ import annotations

import functools

from optask.providers import get_provider


@functools.lru_cache(maxsize=4)
def provider_for(name: str):
    """One provider per worker process: instrument caches and HTTP sessions are reused across minutes."""
    return get_provider(name)
