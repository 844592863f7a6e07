"""End-of-day verification: moved to `optask.quality`; this path (the seed's `EODDataVerificationSystem`, the name
it gave `optask.quality.verify.DayVerifier`) keeps working."""

from optask.quality.verify import DayVerifier, verify_day

EODDataVerificationSystem = DayVerifier

__all__ = ["EODDataVerificationSystem", "verify_day"]
