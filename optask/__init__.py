"""optask: collect, enrich, store and verify Indian index-option chains every market minute."""

__version__ = "0.1.0"
