"""The seed platform's migration guide, run as it is written: users paste these lines."""

from __future__ import annotations

import asyncio
import dataclasses

import pandas as pd
import pyarrow as pa
import pytest

from optask.core.config import get_settings
from optask.core.timeutils import IST
from optask.pipeline import ChainError
from optask.storage.csv import CsvStore, get_consolidated_writer
from optask.testkit.mock import MockDataGenerator, run_performance_test


def test_guide_imports_run_performance_test_as_a_function():
    generator = MockDataGenerator()
    result = run_performance_test(lambda: generator.generate_option_leg(), iterations=50)
    assert result["iterations"] == 50 and result["iterations_per_second"] > 0
    assert result["p99_ms"] >= result["p50_ms"] > 0
    with pytest.raises(ValueError, match="iterations"):
        run_performance_test(lambda: None, iterations=0)


def test_guide_awaits_process_and_write_with_generated_legs(redis_url):
    async def guide() -> dict:
        generator = MockDataGenerator()
        legs = generator.generate_option_chain("NIFTY", "this_week")
        writer = get_consolidated_writer()
        result = await writer.process_and_write(legs, write_legs=True, write_merged=True, write_json=False)
        return legs, result

    legs, result = asyncio.run(guide())
    assert result["legs_written"] == len(legs) > 0
    assert result["merged_written"] == len(legs) // 2
    day = legs[0].ts.astimezone(IST).date()
    stored = CsvStore(get_settings().data.csv_root).read_day("legs", "NIFTY", day)
    assert stored.num_rows == len(legs)
    # the synchronous call is unchanged: a dict, at once, and a repeat writes nothing
    again = get_consolidated_writer().process_and_write(legs)
    assert isinstance(again, dict) and again["legs_written"] == 0


@pytest.mark.parametrize("shape", ["dicts", "dataframe", "arrow"])
def test_process_and_write_takes_legs_as_users_hold_them(redis_url, shape):
    legs = MockDataGenerator().generate_option_chain("BANKNIFTY", "this_month", minute=3)
    rows = [dataclasses.asdict(leg) for leg in legs]
    given = {"dicts": rows, "dataframe": pd.DataFrame(rows),
             "arrow": pa.Table.from_pylist(rows)}[shape]
    result = get_consolidated_writer().process_and_write(given)
    assert result["legs_written"] == len(legs) and result["summary_written"] == 1


@pytest.mark.parametrize("bad", ["a string", 42, [1, 2, 3], {"ltp": 1.0}])
def test_process_and_write_refuses_anything_else_clearly(redis_url, bad):
    with pytest.raises(ChainError, match="list of dicts or leg objects"):
        get_consolidated_writer().process_and_write(bad)
