"""Where chains come from: one interface (`base.Provider`), one module per source."""

from optask.providers.base import (
    PermanentProviderError,
    Provider,
    ProviderError,
    Snapshot,
    TemporaryProviderError,
    Universe,
    get_provider,
)

__all__ = [
    "PermanentProviderError", "Provider", "ProviderError", "Snapshot", "TemporaryProviderError",
    "Universe", "get_provider",
]
