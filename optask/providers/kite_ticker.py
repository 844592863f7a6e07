"""Kite's streaming protocol: moved to `optask.providers.kite.stream`; this path keeps working."""

from optask.providers.kite.stream import (
    FULL,
    INDEX_FULL,
    PRICE_DIVISOR,
    SEGMENT,
    decode,
    envelope,
    frame,
    parse_ticker_payload,
    sampling,
    split_packets,
    token_of,
)

__all__ = ["FULL", "INDEX_FULL", "PRICE_DIVISOR", "SEGMENT", "decode", "envelope", "frame", "parse_ticker_payload",
           "sampling", "split_packets", "token_of"]
