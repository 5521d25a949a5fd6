"""The documentation site builds with `mkdocs build --strict`: every page in the nav, every internal link and anchor
resolves, and the API reference renders from the docstrings without a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "specopt" / "index.html").read_text()
    assert "StackedSpectralAdam" in api and "spectral_strength" in api  # rendered from the docstrings


def test_readme_demo_table_is_the_table_of_its_committed_rows():
    """The README's demo table is what `python -m continual plot results/readme-demo` prints from the committed rows."""
    from continual.plot import read_rows, table

    readme = (ROOT / "README.md").read_text()
    generated = table(read_rows([ROOT / "results" / "readme-demo"]))
    assert generated.strip() in readme
