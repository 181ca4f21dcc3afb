"""The documentation: the README's links and result files exist, and the docs site builds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_links_point_to_existing_files():
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))]
    assert len(local) >= 10  # the README links to its docs pages
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_results_name_committed_outputs():
    rows = [line for line in README.splitlines() if line.startswith("|") and ".json`" in line]
    assert rows, "the README's results table names no output file"
    for row in rows:
        for pattern in re.findall(r"`([\w*.-]+\.json)`", row):
            assert list((ROOT / "benchmarks" / "results").glob(pattern)), (
                f"README row {row.split('|')[1].strip()!r} names {pattern}, which is not in "
                "benchmarks/results")


def test_docs_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "evaluation" / "index.html").is_file()
    # a page missing from the navigation is reported, not silently dropped
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    nav = (ROOT / "mkdocs.yml").read_text()
    assert {p for p in pages if p not in nav} == set()
