"""The pure core: schema, time, the market calendar, pricing, settings and clocks. No Redis, no files written."""
