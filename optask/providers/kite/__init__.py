"""Zerodha Kite Connect, through the official `kiteconnect` client: REST (`provider`) and streaming (`stream`)."""

from optask.providers.kite.client import TOKEN_EXPIRED, KiteClient, token_key
from optask.providers.kite.parse import parse_quote_payload, sampling
from optask.providers.kite.provider import BATCH, KiteProvider, pack_batches
from optask.providers.kite.universe import SPOT_KEYS, SPOT_TOKENS, KiteUniverse

__all__ = [
    "BATCH", "SPOT_KEYS", "SPOT_TOKENS", "TOKEN_EXPIRED", "KiteClient", "KiteProvider", "KiteUniverse",
    "pack_batches", "parse_quote_payload", "sampling", "token_key",
]
