"""The score (0-100) and status of an index-day from its findings (formula: `optask.quality.verify`)."""

from __future__ import annotations

from optask.quality.model import CORRUPTION, FILE_KINDS, KINDS, MIN_PENALTY, ROW_KINDS, WEIGHTS, Finding
from optask.quality.results import Completeness


def score_index(findings: list[Finding], denominators: dict[str, float]) -> tuple[float, dict[str, float]]:
    """100 minus the weighted category penalties (see the module docstring)."""
    penalties: dict[str, float] = {}
    by_cat: dict[str, list[Finding]] = {}
    for f in findings:
        by_cat.setdefault(KINDS[f.kind][0], []).append(f)
    for cat, fs in by_cat.items():
        if cat == "completeness":
            p = 10 * len(fs) / max(denominators["cells"], 1)
        elif cat == "legs":
            p = 20 * len(fs) / max(denominators["legs_expected"], 1)
        elif cat == "integrity":
            rows = sum(1 for f in fs if f.kind in ROW_KINDS)
            files = sum(1 for f in fs if f.kind in FILE_KINDS)
            p = 50 * rows / max(denominators["rows"], 1) + 0.5 * files
        elif cat == "values":
            p = 50 * len(fs) / max(denominators["legs"], 1)
        elif cat == "arbitrage":
            p = 50 * len(fs) / max(denominators["relations"], 1)
        else:
            p = 10 * len(fs) / max(denominators["compared"], 1)
        penalties[cat] = round(min(1.0, max(MIN_PENALTY[cat], p)), 6)
    score = 100.0 - sum(WEIGHTS[c] * p for c, p in penalties.items())
    return round(max(0.0, score), 2), penalties


def status_of(score: float, findings: list[Finding], completeness: dict[str, Completeness]) -> str:
    worst_missing = max((c.expected - c.present) / max(c.expected, 1) for c in completeness.values()) \
        if completeness else 0.0
    if any(f.kind in CORRUPTION for f in findings) or worst_missing > 0.01 or score < 90:
        return "FAIL"
    if any(f.severity == "error" for f in findings) or any(f.kind == "missing_legs" for f in findings) or score < 99:
        return "WARN"
    return "PASS"
