"""Verification results are types (`optask.quality.results`) whose JSON is the report's and `optask verify --json`'s,
keys in their order; a report reads back into the same types; the seed's dict entry points still give and take the
JSON. No server: a recorded day's results (tests/data/verify_many_faults.json) and a day with nothing stored."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pytest

from optask.core.config import get_settings
from optask.quality.model import Finding
from optask.quality.report import load_verification, report_json
from optask.quality.results import BeforeRepair, Completeness, DayVerification, IndexVerification, Verdict
from optask.quality.verify import DayVerifier

RECORDED = Path(__file__).parent / "data" / "verify_many_faults.json"
DAY_KEYS = ["day", "generated_at", "weights", "thresholds", "indices", "findings", "overall_status", "summary"]
INDEX_KEYS = ["score", "status", "penalties", "completeness", "findings_by_kind", "legs_missing", "legs_per_minute"]
SUMMARY_KEYS = ["data_quality_score", "indices", "findings", "findings_by_kind", "examples", "missing_minutes",
                "seconds"]
FINDING_KEYS = ["index", "kind", "store", "table", "minute", "expiry", "strike", "side", "reason", "severity",
                "category"]


@pytest.fixture(scope="module")
def recorded() -> dict:
    """A day with every planted fault, as its report held it (the two times that change per run put back)."""
    doc = json.loads(RECORDED.read_text())
    doc["generated_at"] = 1764570000.5
    doc["summary"]["seconds"] = 0.25
    return doc


def as_json(doc: dict) -> object:
    return json.loads(json.dumps(doc, default=str))


def test_a_report_reads_back_into_the_types_and_writes_out_the_same(recorded):
    results = DayVerification.from_dict(copy.deepcopy(recorded))
    assert as_json(results.as_dict()) == recorded
    assert len(results.findings) == len(recorded["findings"]) > 100 and isinstance(results.findings[0], Finding)
    nifty = results.indices["NIFTY"]
    assert isinstance(nifty, IndexVerification) and nifty.index == "NIFTY"
    assert all(isinstance(c, Completeness) and c.key == k for k, c in nifty.completeness.items())
    assert results.score == recorded["summary"]["data_quality_score"]


def test_the_json_keeps_its_keys_in_their_order(recorded):
    doc = DayVerification.from_dict(copy.deepcopy(recorded)).as_dict()
    assert list(doc) == DAY_KEYS
    assert all(list(r) == INDEX_KEYS for r in doc["indices"].values())
    assert all(list(c) == ["expected", "present", "missing", "gaps"] for r in doc["indices"].values()
               for c in r["completeness"].values())
    assert list(doc["summary"]) == SUMMARY_KEYS
    assert all(list(f) == FINDING_KEYS for f in doc["findings"])
    assert all(list(f) == FINDING_KEYS for fs in doc["summary"]["examples"].values() for f in fs)


def test_what_a_repair_and_its_readers_ask_of_an_index(recorded):
    results = DayVerification.from_dict(copy.deepcopy(recorded))
    nifty = results.indices["NIFTY"]
    raw = recorded["indices"]["NIFTY"]["completeness"]
    assert nifty.missing_minutes() == sorted({m for c in raw.values() for m in c["missing"]}) != []
    assert results.missing_minutes("NIFTY") == nifty.missing_minutes() and results.missing_minutes("BANKEX") == []
    assert nifty.missing_minutes("csv") == sorted({m for k, c in raw.items() if k.startswith("csv.")
                                                   for m in c["missing"]})
    assert nifty.missing_minutes("influx") == []  # no InfluxDB that day
    assert nifty.expected == max(c["expected"] for c in raw.values())
    assert nifty.stored == min(c["present"] for c in raw.values())
    assert not nifty.fully_stored and results.indices["SENSEX"].fully_stored


def test_the_verdict_before_a_repair_is_kept_beside_the_one_after(recorded):
    before = DayVerification.from_dict(copy.deepcopy(recorded))
    after = DayVerification.from_dict(copy.deepcopy(recorded))
    after.before_repair = BeforeRepair.of(before)
    doc = after.as_dict()
    assert list(doc) == [*DAY_KEYS, "before_repair"]
    assert doc["before_repair"]["summary"] == doc["summary"] and doc["before_repair"]["overall_status"] == "FAIL"
    assert doc["before_repair"]["indices"]["NIFTY"] == {"score": recorded["indices"]["NIFTY"]["score"],
                                                        "status": recorded["indices"]["NIFTY"]["status"]}
    back = DayVerification.from_dict(as_json(doc))
    sensex = recorded["indices"]["SENSEX"]
    assert back.before_repair.indices["SENSEX"] == Verdict(sensex["score"], sensex["status"])
    assert as_json(back.as_dict()) == as_json(doc)


def test_a_report_that_is_not_there_or_not_whole_reads_as_none(recorded):
    settings = get_settings()
    day = dt.date.fromisoformat(recorded["day"])
    assert load_verification(settings, day) is None
    path = report_json(settings, day)
    path.parent.mkdir(parents=True)
    for broken in ("{not json", json.dumps({**recorded, "indices": {"NIFTY": {"score": 1}}}), "[]"):
        path.write_text(broken)
        assert load_verification(settings, day) is None, broken
    path.write_text(json.dumps(recorded))
    assert load_verification(settings, recorded["day"]).indices["SENSEX"].fully_stored


def test_the_seeds_entry_points_give_and_take_the_json(recorded):
    """`run_eod_verification` is the JSON of `verify`; `save_verification_report` of that JSON writes the report
    `save` writes of the types."""
    from optask.verify import EODDataVerificationSystem

    system = EODDataVerificationSystem(get_settings())
    typed = system.verify("2026-11-23", ["NIFTY"])  # nothing stored: every minute missing
    seed = system.run_eod_verification(dt.date(2026, 11, 23), ["NIFTY"])
    assert isinstance(seed, dict) and seed["overall_status"] == typed.overall_status == "FAIL"
    typed_doc = typed.as_dict()
    for doc in (seed, typed_doc):
        doc.pop("generated_at")
        doc["summary"].pop("seconds")
    assert as_json(seed) == as_json(typed_doc)
    results = DayVerification.from_dict(copy.deepcopy(recorded))
    page = system.save_verification_report(copy.deepcopy(recorded), before=copy.deepcopy(recorded))
    seed_bytes = Path(page).with_name("verification.json").read_bytes()
    results.before_repair = None
    assert Path(DayVerifier(get_settings()).save(results, before=results)).name == "report.html"
    assert Path(page).with_name("verification.json").read_bytes() == seed_bytes
    assert json.loads(seed_bytes)["before_repair"]["indices"]["NIFTY"]["status"] == "FAIL"
