"""`optask bench`: measures recorded by the scripts become one table with spreads, ratios and verdicts."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from optask.testkit.bench_report import BENCH_DIR, Measure, fmt, run_all


def test_verdict_says_straddles_when_repeats_fall_on_both_sides_of_the_goal():
    def m(ours, baseline, goal, ratio="baseline/ours"):
        return Measure("x", "s", ours, goal=dict(zip(("on", "op", "value"), goal, strict=True)), baseline=baseline,
                       ratio=ratio)

    assert m([1.0, 1.1, 0.9], [5.0, 5.0, 5.0], ("ratio", ">=", 4.0)).verdict() == "meets"
    assert m([1.0, 1.3, 0.9], [5.0, 5.0, 5.0], ("ratio", ">=", 4.0)).verdict() == "straddles"  # 5/1.3 < 4
    assert m([2.0, 2.0, 2.0], [5.0, 5.0, 5.0], ("ratio", ">=", 4.0)).verdict() == "misses"
    assert m([2.9, 3.1, 2.0], None, ("ours", "<", 3.0)).verdict() == "straddles"
    paired = m([10.0, 20.0], [1.0, 4.0], ("ratio", "<=", 6.0), ratio="ours/baseline")
    assert paired.ratios() == [10.0, 5.0] and paired.verdict() == "straddles"
    assert Measure("x", "s", [1.0]).verdict() == "no goal"
    assert fmt([1.0, 3.0, 2.0], "s") == "2.00 (1.00-3.00, n=3) s"


def test_run_all_collects_what_each_script_records_and_names_a_failed_script(tmp_path):
    shutil.copy(BENCH_DIR / "_common.py", tmp_path / "_common.py")
    (tmp_path / "bench_ok.py").write_text(textwrap.dedent('''
        from _common import REPEATS, record
        print("measuring")
        record("thing", "s", [1.0] * REPEATS, goal=("ours", "<", 2.0), baseline=[4.0] * REPEATS, baseline_name="naive")
    '''))
    (tmp_path / "bench_bad.py").write_text("raise SystemExit('broken bench')\n")
    lines: list[str] = []
    measures, failed = run_all(["bench_ok.py", "bench_bad.py"], repeats=4, echo=lines.append, bench_dir=Path(tmp_path))
    assert failed == ["bench_bad.py"]
    assert [m.measure for m in measures] == ["thing"] and measures[0].ours == [1.0] * 4
    assert measures[0].ratios() == [4.0] * 4 and measures[0].verdict() == "meets"
    assert any("measuring" in line for line in lines) and any("broken bench" in line for line in lines)
