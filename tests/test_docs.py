"""The docs: the reference pages are what the code makes now, the site builds strict (no broken link, anchor or
missing page), and the README stays a front door whose links resolve."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from optask.cli import app
from optask.cli.docs import PAGES, stale_pages

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


def test_the_reference_pages_are_what_the_code_makes(tmp_path):
    assert stale_pages(tmp_path, write=True) == [str(tmp_path / name) for name in PAGES]  # an empty folder: all
    for name in PAGES:
        assert (REFERENCE / name).read_text() == (tmp_path / name).read_text(), \
            f"docs/reference/{name} is stale: run `make docs` and commit it"


def test_optask_docs_check_names_a_stale_page_and_writing_mends_it(tmp_path):
    shutil.copytree(REFERENCE, tmp_path, dirs_exist_ok=True)
    (tmp_path / "settings.md").write_text("an old page\n")
    checked = CliRunner().invoke(app, ["docs", "--out", str(tmp_path), "--check"])
    assert checked.exit_code == 1 and "settings.md" in checked.output and "cli.md" not in checked.output, \
        checked.output
    assert (tmp_path / "settings.md").read_text() == "an old page\n"  # --check writes nothing
    assert CliRunner().invoke(app, ["docs", "--out", str(tmp_path)]).exit_code == 0
    assert CliRunner().invoke(app, ["docs", "--out", str(tmp_path), "--check"]).exit_code == 0


def test_the_reference_names_every_verb_setting_and_key_family():
    from optask.core.config_text import documented_settings
    from optask.infra.retention import FAMILIES

    cli = (REFERENCE / "cli.md").read_text()
    for verb in ("up", "serve", "kite login", "api token create", "docs", "bench"):
        assert f"\n## optask {verb}\n" in cli, verb
    settings = (REFERENCE / "settings.md").read_text()
    assert all(f"| `{s.variable}` |" in settings for s in documented_settings())
    keys = (REFERENCE / "redis-keys.md").read_text()
    assert all(f"`{f.pattern}`" in keys for f in FAMILIES)


def test_the_site_builds_strict(tmp_path):
    """mkdocs.yml turns every link, anchor, nav and snippet problem into a warning; --strict makes it fatal."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "site" / "reference" / "settings" / "index.html").exists()
    systemd = (tmp_path / "site" / "operations" / "index.html").read_text()
    assert "KillMode=mixed" in systemd  # the unit is shown from deploy/systemd/, not copied


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) < 150, len(lines)
    first_block = readme.split("```", 2)[1].splitlines()
    assert [ln.split()[:2] for ln in first_block[1:3]] == [["make", "run"], ["make", "test"]], first_block
    assert lines[0] == "# optask" and lines[2].startswith("```"), lines[:3]
    for needed in (".venv/bin/activate", ".venv/bin/optask", "optask kite login", "optask up", "apt-get",
                   "chromium", "prometheus", "victoria-metrics", "optask.client", "curl "):
        assert needed in readme, needed


def test_the_readmes_links_and_picture_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://|mailto:|#", t)]
    assert "docs/img/page.png" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_the_systemd_unit_stops_up_alone_and_restarts_it_only_after_a_failure(tmp_path):
    path = ROOT / "deploy" / "systemd" / "optask.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(path)
    service = unit["Service"]
    assert service["ExecStart"].endswith("/.venv/bin/optask up")
    assert (service["KillMode"], service["Restart"], service["Type"]) == ("mixed", "on-failure", "exec")
    if shutil.which("systemd-analyze"):  # systemd's own parser: it prints what it cannot read
        copy = tmp_path / "optask.service"
        copy.write_text(path.read_text().replace(service["ExecStart"], "/bin/true up"))
        out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
