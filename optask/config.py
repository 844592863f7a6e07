"""Settings: moved to `optask.core.config`; this path (the seed's `get_settings`) keeps working."""

from optask.core.config import *  # noqa: F403
from optask.core.config import SettingsError, get_settings, load_settings, mask_url

__all__ = ["SettingsError", "get_settings", "load_settings", "mask_url"]
