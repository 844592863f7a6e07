"""The house's rules that import-linter does not check: small product modules and functions, and the package
tree the docs' Layout page shows is the one on disk."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def product_files() -> list[Path]:
    """Every module of the product: optask without its test kit, the Celery app, the beat schedule."""
    files = [p for p in (ROOT / "optask").rglob("*.py") if "testkit" not in p.parts]
    return sorted(files + list((ROOT / "tasks").rglob("*.py")) + [ROOT / "beat_schedule.py"])


def test_no_product_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in product_files() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (over {MAX_MODULE_LINES} lines): {long}"


def test_no_product_function_over_80_lines():
    long = {}
    for p in product_files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"


def test_the_layout_page_matches_the_packages():
    """Every package under optask/ is in the Layout page's tree (docs/layout.md), and every package the tree names
    exists."""
    page = (ROOT / "docs" / "layout.md").read_text()
    tree = page.split("```", 2)[1]
    named = set(re.findall(r"\b(\w+)/", tree))
    on_disk = {p.parent.name for p in (ROOT / "optask").rglob("__init__.py") if p.parent != ROOT / "optask"}
    assert on_disk <= named, f"packages missing from docs/layout.md: {sorted(on_disk - named)}"
    assert named - {"optask", "tasks", "tests", "bench", "deploy", "docs", "data"} <= on_disk, \
        f"docs/layout.md names packages that do not exist: {sorted(named - on_disk)}"


def _product_lines(pattern: str) -> dict[str, int]:
    rx = re.compile(pattern)
    return {f"{p.relative_to(ROOT)}:{i}": 1 for p in product_files()
            for i, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line) and not line.lstrip().startswith("#")}


def test_redis_clients_come_from_one_factory_with_timeouts():
    """Every Redis client of the product is made by `optask.infra.redis_client.connect` (timeouts always), or
    by its asyncio twin `connect_async` (the API server)."""
    made = _product_lines(r"redis\.Redis\(|asyncio\.Redis\(|Redis\.from_url\(|StrictRedis|ConnectionPool")
    assert set(made) == {"optask/infra/redis_client.py:14", "optask/infra/redis_client.py:23",
                         "optask/infra/redis_client.py:26"}, made


def test_now_is_read_by_the_clock():
    """"Now" is the clock's business: the wall clock, plus two stamps that say when something happened here
    (an archive file's received_at, the seed's now_csv_format)."""
    now = _product_lines(r"datetime\.now\(|date\.today\(")
    allowed = {"optask/core/clock.py", "optask/core/timeutils.py", "optask/storage/archive.py"}
    assert {k.split(":")[0] for k in now} <= allowed, now


def test_the_paths_users_import_keep_working():
    """The seed's entry points and the paths earlier releases documented, re-exported where they moved."""
    import subprocess
    import sys

    code = """
from optask.testing import MockDataGenerator, run_performance_test
from optask.storage.csv import get_consolidated_writer
from optask.verify import EODDataVerificationSystem
from optask.health import get_enhanced_monitor, main
from optask.timeutils import now_csv_format, standardize_timestamp_column
from optask.config import get_settings
from optask.coordination import get_redis_coordinator
from optask.pricing import implied_vol
from optask.calendar import MarketCalendar, get_calendar
from optask.providers.kite_ticker import decode, parse_ticker_payload, split_packets
from optask.providers import get_provider
from optask.cli import main as cli_main
from tasks.celeryconfig import celery_config, route_task
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    help_ = subprocess.run([sys.executable, "-m", "optask.health", "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "--status" in help_.stdout, help_.stderr


def test_the_seeds_names_are_aliases_in_the_seeds_paths_not_the_classes_names():
    """`EODDataVerificationSystem` and `EnhancedHealthMonitor` (and `get_enhanced_monitor`) are kept where the seed
    had them, as other names for classes whose own names say what they are; no product module but those two
    paths defines or names them."""
    from optask.health import EnhancedHealthMonitor, get_enhanced_monitor
    from optask.ops.health import HealthMonitor
    from optask.quality.verify import DayVerifier
    from optask.verify import EODDataVerificationSystem

    assert EODDataVerificationSystem is DayVerifier and DayVerifier.__name__ == "DayVerifier"
    assert EnhancedHealthMonitor is HealthMonitor and HealthMonitor.__name__ == "HealthMonitor"
    assert type(get_enhanced_monitor()) is HealthMonitor
    seed = r"(EODDataVerificationSystem|EnhancedHealthMonitor|get_enhanced_monitor)\b"
    named = _product_lines(rf"^\s*(class|def) {seed}|^\s*{seed}\s*=|^\s*from .* import .*{seed}")
    assert sorted(k.split(":")[0] for k in named) == ["optask/health.py"] * 2 + ["optask/verify.py"], named
