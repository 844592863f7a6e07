"""Settings: moved to `optask.core.config`; this path (the seed's `get_settings`) keeps working."""

from optask.core.config import *  # noqa: F403
from optask.core.config import _GROUPS, SettingsError, env_name, get_settings, load_settings, mask_url
from optask.core.config_text import env_example_text, ignored_settings

__all__ = ["_GROUPS", "SettingsError", "env_example_text", "env_name", "get_settings", "ignored_settings",
           "load_settings", "mask_url"]
