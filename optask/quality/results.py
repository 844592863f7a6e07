"""What end-of-day verification found, as types: a day (`DayVerification`), each index's verdict
(`IndexVerification`), each store-table's completeness (`Completeness`), the day's summary, and the verdict before a
repair that the report keeps beside the one after.

The report file (reports/eod/{day}/verification.json) and `optask verify --json` are these types' `as_dict()`, keys
in this order; `from_dict` reads a report back (health, coverage, raw retention, the chaos drill).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optask.quality.model import Finding


@dataclass
class Completeness:
    """The session's minutes one store-table holds (store "parquet", "csv" or "influx"; table "legs", "merged" or
    "summary")."""

    store: str
    table: str
    expected: int
    present: int
    missing: list[str]  # ISO UTC minutes
    gaps: list[tuple[str, str]]  # the missing minutes as [first, last] runs

    @property
    def key(self) -> str:
        """How the report names it: "parquet.legs"."""
        return f"{self.store}.{self.table}"

    def as_dict(self) -> dict:
        return {"expected": self.expected, "present": self.present, "missing": self.missing, "gaps": self.gaps}

    @classmethod
    def from_dict(cls, key: str, doc: dict) -> Completeness:
        store, table = key.split(".", 1)
        return cls(store, table, doc["expected"], doc["present"], doc["missing"], [tuple(g) for g in doc["gaps"]])


@dataclass
class IndexVerification:
    """One index's verdict on the day: score, status, the penalties behind the score, and what each store holds."""

    index: str
    score: float
    status: str
    penalties: dict[str, float]
    completeness: dict[str, Completeness]  # by key ("parquet.legs"), in the order verified
    findings_by_kind: dict[str, int]
    legs_missing: int
    legs_per_minute: dict[str, int]

    def missing_minutes(self, store: str | None = None) -> list[str]:
        """ISO UTC minutes that any store-table (of `store`, if given) lacks, sorted: the repair's work list."""
        return sorted({m for c in self.completeness.values() if store in (None, c.store) for m in c.missing})

    @property
    def expected(self) -> int:
        return max((c.expected for c in self.completeness.values()), default=0)

    @property
    def stored(self) -> int:
        """The minutes the emptiest store-table holds."""
        return min((c.present for c in self.completeness.values()), default=0)

    @property
    def fully_stored(self) -> bool:
        """Every store-table holds every minute of the session."""
        return all(not c.missing for c in self.completeness.values())

    def as_dict(self) -> dict:
        return {"score": self.score, "status": self.status, "penalties": self.penalties,
                "completeness": {k: c.as_dict() for k, c in self.completeness.items()},
                "findings_by_kind": self.findings_by_kind, "legs_missing": self.legs_missing,
                "legs_per_minute": self.legs_per_minute}

    @classmethod
    def from_dict(cls, index: str, doc: dict) -> IndexVerification:
        return cls(index, doc["score"], doc["status"], doc["penalties"],
                   {k: Completeness.from_dict(k, c) for k, c in doc["completeness"].items()},
                   doc["findings_by_kind"], doc["legs_missing"], doc["legs_per_minute"])


@dataclass
class VerificationSummary:
    data_quality_score: float  # the mean of the indices' scores
    indices: int
    findings: int
    findings_by_kind: dict[str, int]
    examples: dict[str, list[Finding]]  # the first few findings of each kind
    missing_minutes: dict[str, dict[str, int]]  # index -> store-table -> minutes missing
    seconds: float

    def as_dict(self) -> dict:
        return {"data_quality_score": self.data_quality_score, "indices": self.indices, "findings": self.findings,
                "findings_by_kind": self.findings_by_kind,
                "examples": {k: [f.as_dict() for f in v] for k, v in self.examples.items()},
                "missing_minutes": self.missing_minutes, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, doc: dict) -> VerificationSummary:
        return cls(doc["data_quality_score"], doc["indices"], doc["findings"], doc["findings_by_kind"],
                   {k: [Finding.from_dict(f) for f in v] for k, v in doc["examples"].items()},
                   doc["missing_minutes"], doc["seconds"])


@dataclass(frozen=True)
class Verdict:
    score: float
    status: str


@dataclass
class BeforeRepair:
    """The day's verdict before end of day repaired it, as the report keeps it beside the verdict after."""

    summary: VerificationSummary
    overall_status: str
    indices: dict[str, Verdict]

    @classmethod
    def of(cls, before: DayVerification) -> BeforeRepair:
        return cls(before.summary, before.overall_status,
                   {i: Verdict(r.score, r.status) for i, r in before.indices.items()})

    def as_dict(self) -> dict:
        return {"summary": self.summary.as_dict(), "overall_status": self.overall_status,
                "indices": {i: {"score": v.score, "status": v.status} for i, v in self.indices.items()}}

    @classmethod
    def from_dict(cls, doc: dict) -> BeforeRepair:
        return cls(VerificationSummary.from_dict(doc["summary"]), doc["overall_status"],
                   {i: Verdict(v["score"], v["status"]) for i, v in doc["indices"].items()})


@dataclass
class DayVerification:
    """A day's verification: every index's verdict, every finding, the day's status (the worst) and summary."""

    day: str  # YYYY-MM-DD
    generated_at: float  # epoch s
    weights: dict[str, float]
    thresholds: dict[str, float]
    indices: dict[str, IndexVerification]
    findings: list[Finding]
    overall_status: str
    summary: VerificationSummary
    before_repair: BeforeRepair | None = field(default=None)  # in a report written after a repair

    @property
    def score(self) -> float:
        return self.summary.data_quality_score

    def missing_minutes(self, index: str) -> list[str]:
        """ISO UTC minutes that any store or table of the index lacks (none for an index not verified)."""
        r = self.indices.get(index)
        return [] if r is None else r.missing_minutes()

    def as_dict(self) -> dict:
        doc = {"day": self.day, "generated_at": self.generated_at, "weights": self.weights,
               "thresholds": self.thresholds, "indices": {i: r.as_dict() for i, r in self.indices.items()},
               "findings": [f.as_dict() for f in self.findings], "overall_status": self.overall_status,
               "summary": self.summary.as_dict()}
        if self.before_repair is not None:
            doc["before_repair"] = self.before_repair.as_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> DayVerification:
        before = doc.get("before_repair")
        return cls(doc["day"], doc["generated_at"], doc["weights"], doc["thresholds"],
                   {i: IndexVerification.from_dict(i, r) for i, r in doc["indices"].items()},
                   [Finding.from_dict(f) for f in doc["findings"]], doc["overall_status"],
                   VerificationSummary.from_dict(doc["summary"]),
                   BeforeRepair.from_dict(before) if before is not None else None)
