"""The seed's test helpers: moved to `optask.testkit.mock`; `from optask.testing import MockDataGenerator,
run_performance_test` keeps working."""

from optask.testkit.mock import MockDataGenerator, OptionLeg, run_performance_test

__all__ = ["MockDataGenerator", "OptionLeg", "run_performance_test"]
