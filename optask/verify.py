"""End-of-day verification: moved to `optask.quality`; this path (the seed's `EODDataVerificationSystem`)
keeps working."""

from optask.quality.verify import EODDataVerificationSystem, missing_minutes, verify_day

__all__ = ["EODDataVerificationSystem", "missing_minutes", "verify_day"]
