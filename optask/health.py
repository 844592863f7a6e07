"""Health: moved to `optask.ops.health`; this path (the seed's `get_enhanced_monitor`, and its
`EnhancedHealthMonitor`, the name it gave `optask.ops.health.HealthMonitor`) keeps working, and so does
`python -m optask.health --status|--check|--alerts|--start`, the same as `optask health`."""

from optask.core.config import Settings
from optask.ops.health import HealthMonitor

EnhancedHealthMonitor = HealthMonitor

__all__ = ["EnhancedHealthMonitor", "get_enhanced_monitor", "main"]


def get_enhanced_monitor(settings: Settings | None = None) -> HealthMonitor:
    """The seed's: `get_enhanced_monitor().start_monitoring()`."""
    return HealthMonitor(settings)


def main(argv: list[str] | None = None) -> int:
    """`python -m optask.health --status|--check|--alerts|--start`."""
    import argparse

    from optask.cli import run_health

    parser = argparse.ArgumentParser(prog="python -m optask.health", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    for flag in ("--status", "--check", "--alerts", "--start"):
        group.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    mode = next(f for f in ("status", "check", "alerts", "start") if getattr(args, f))
    return run_health(mode)


if __name__ == "__main__":
    raise SystemExit(main())
