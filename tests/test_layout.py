"""The house's rules that import-linter does not check: small product modules and functions, and the package
tree the README's "Layout" section shows is the one on disk."""

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


def test_readme_layout_matches_the_packages():
    """Every package under optask/ is in the README's Layout tree, and every package the tree names exists."""
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named = set(re.findall(r"\b(\w+)/", tree))
    on_disk = {p.parent.name for p in (ROOT / "optask").rglob("__init__.py") if p.parent != ROOT / "optask"}
    assert on_disk <= named, f"packages missing from the README's Layout: {sorted(on_disk - named)}"
    assert named - {"optask", "tasks", "tests", "bench", "deploy", "data"} <= on_disk, \
        f"the README's Layout names packages that do not exist: {sorted(named - on_disk)}"
