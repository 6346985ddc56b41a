"""The documentation builds strictly (no broken link, no page left out of the navigation), and the
README stays a front door whose links lead somewhere and whose two commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_docs_build_strictly(tmp_path):
    """mkdocs.yml sets ``strict`` and turns missing link targets, anchors and pages outside the
    navigation into warnings, so any of them fails the build."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(ROOT, "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index", "install", "data", "training", "evaluation", "tune", "cluster", "benchmarks", "results",
                 "reference"):
        built = tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")
        assert built.stat().st_size > 0, page
    results = (tmp_path / "site" / "results" / "index.html").read_text()
    # the places the experiments' tables go (issues 21 and 24)
    assert "The paper's ladder at reduced scale" in results and "Return vs labeled trajectories" in results


def test_readme_is_a_front_door():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert len(text.splitlines()) <= 200
    lines = text.splitlines()
    ci_tests = '.venv/bin/python -m pytest -q -m "not claim"'
    assert ci_tests in lines  # what .ci/run runs, word for word
    assert "bash .ci/setup && .venv/bin/raylam pipeline --config configs/quickstart.yaml" in lines
    assert ci_tests in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert os.path.exists(os.path.join(ROOT, target)), f"README links to {target}, which does not exist"


def test_shipped_notebook_is_valid_nbformat():
    """A cell without an id is a warning in nbformat today and, it says, a hard error in a later
    release: the shipped notebook must open in the Jupyter a user installs next year too."""
    import warnings

    import nbformat

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notebook = nbformat.read(os.path.join(ROOT, "notebooks", "analysis.ipynb"), as_version=4)
        nbformat.validate(notebook)
    assert all(cell.get("id") for cell in notebook.cells)
