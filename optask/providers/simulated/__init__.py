"""A realistic simulated NSE/BSE option market: the embedded default and every test's venue.

A full peer of the Kite provider: the market (`market`), its wire payload and pure parser (`parse`), and
the provider (`provider`).
"""

from optask.providers.simulated.market import SPECS, IndexSpec, index_of_token, sim_token
from optask.providers.simulated.parse import parse_payload
from optask.providers.simulated.provider import SimFaults, SimulatedProvider

__all__ = ["SPECS", "IndexSpec", "SimFaults", "SimulatedProvider", "index_of_token", "parse_payload", "sim_token"]
