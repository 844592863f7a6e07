"""End-of-day verification: checks of the stores and of the data, a score, and the report a person reads."""
