"""Black-Scholes pricing: moved to `optask.core.pricing`; this path (`optask.pricing.implied_vol`) keeps working."""

from optask.core.pricing import bs_price, greeks, implied_vol, year_fraction

__all__ = ["bs_price", "greeks", "implied_vol", "year_fraction"]
