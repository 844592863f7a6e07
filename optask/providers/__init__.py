"""Where chains come from: one interface (`base.Provider`), one module per source, and the registry.

`get_provider` maps OPTASK_PROVIDER to its class and imports lazily, so `kiteconnect` loads only for Kite.
"""

from optask.providers.base import (
    PermanentProviderError,
    Provider,
    ProviderError,
    Snapshot,
    TemporaryProviderError,
    Universe,
)

PROVIDERS = ("simulated", "kite", "replay")


def get_provider(name: str | None = None, settings=None) -> Provider:
    """The provider named (or OPTASK_PROVIDER's), built from settings."""
    from optask.core.config import get_settings

    settings = settings or get_settings()
    name = name or settings.market.provider
    if name == "simulated":
        from optask.providers.simulated import SimulatedProvider

        return SimulatedProvider.from_settings(settings)
    if name == "kite":
        from optask.providers.kite import KiteProvider

        return KiteProvider.from_settings(settings)
    if name == "replay":
        from optask.providers.replay import ReplayProvider

        return ReplayProvider.from_settings(settings)
    raise PermanentProviderError(f"unknown provider {name!r}; allowed: {', '.join(PROVIDERS)}")


__all__ = [
    "PROVIDERS", "PermanentProviderError", "Provider", "ProviderError", "Snapshot", "TemporaryProviderError",
    "Universe", "get_provider",
]
