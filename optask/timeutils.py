"""Time: moved to `optask.core.timeutils`; this path (the seed's `now_csv_format`,
`standardize_timestamp_column`) keeps working."""

from optask.core.timeutils import *  # noqa: F403
from optask.core.timeutils import (
    IST,
    UTC,
    TimestampParseError,
    floor_minute,
    format_ts,
    now_csv_format,
    parse_minute,
    parse_ts,
    standardize_timestamp_column,
    standardize_to_datetime,
)

__all__ = ["IST", "UTC", "TimestampParseError", "floor_minute", "format_ts", "now_csv_format", "parse_minute",
           "parse_ts", "standardize_timestamp_column", "standardize_to_datetime"]
