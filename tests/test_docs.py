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


def test_generated_tables_are_the_tables_of_their_committed_rows():
    """Every table between `<!-- generated: ... -->` markers under docs/ is what its script makes of the committed
    rows now (scripts/docs_tables.py; `python scripts/docs_tables.py` rewrites them)."""
    done = subprocess.run([sys.executable, "scripts/docs_tables.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generated: python scripts/strength_tradeoff.py" in (ROOT / "docs" / "strength.md").read_text()


def test_a_stale_generated_table_is_found(tmp_path):
    """The check can fail: a hand edit inside a generated block is reported."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (ROOT / "docs" / "strength.md").read_text()
    fresh, changed = module.regenerate(page, "strength.md")
    assert changed == [] and fresh == page
    edited = page.replace("| Adam (none) | 91.6 ± 9.8 (5)", "| Adam (none) | 95.0 ± 9.8 (5)", 1)
    assert edited != page
    assert module.regenerate(edited, "strength.md")[1] == [
        "python scripts/strength_tradeoff.py (from the committed rows; tests/test_docs.py checks it)"]


def test_a_new_empty_block_is_filled_and_leaves_the_next_block_alone():
    """A block written with no body yet (marker, then end) gets its table; the block after it is not swallowed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "scripts" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    command = "python scripts/strength_tradeoff.py (forms table)"
    page = (ROOT / "docs" / "strength.md").read_text()
    start = page.index(f"<!-- generated: {command} -->")
    end = page.index("<!-- end generated -->", start)
    emptied = page[:start] + f"<!-- generated: {command} -->\n" + page[end:]
    prose = "\nText between two blocks stays.\n\n"
    filled, changed = module.regenerate(emptied + prose + page[start:end] + "<!-- end generated -->\n", "x.md")
    assert changed == [command]
    assert filled == page + prose + page[start:end] + "<!-- end generated -->\n"


def test_the_forms_table_names_options_that_exist():
    """strength.md's table of the forms of the pull is API, not results: every option it names is one the code takes
    (SpectralAdam's and param_groups' keyword arguments, continual's and rl's flags, each with its value)."""
    import inspect
    import re

    import torch

    import specopt
    from continual.cli import parser as continual_parser
    from rl.cli import _parser as rl_parser

    page = (ROOT / "docs" / "strength.md").read_text()
    table = page[page.index("| form | ask for it |"):].split("\n\n")[0].splitlines()[2:]
    asked = [cell for line in table for cell in re.findall(r"`([^`]+)`", line.split("|")[2])]
    assert len(table) == 5 and len(asked) >= 10, asked
    kwargs = set(inspect.signature(specopt.SpectralAdam).parameters)
    for option in asked:
        tokens = option.removeprefix("continual ").removeprefix("rl ").split()
        if option.startswith("specopt.param_groups("):
            names = re.findall(r"(\w+)=", option)
            assert set(names) <= set(inspect.signature(specopt.param_groups).parameters), option
        elif "=" in option and not option.startswith("-"):
            assert option.split("=")[0] in kwargs, option
        elif tokens[0].startswith(("--spectral.", "--no-spectral.")):  # accepted, and it changes the settings
            parse = continual_parser().parse_args
            assert vars(parse(["run", "--out", "x", *tokens])) != vars(parse(["run", "--out", "x"])), option
        elif tokens[0].startswith(("--spectral-", "--no-spectral-")):
            parse = rl_parser().parse_args
            assert vars(parse(["train", *tokens])) != vars(parse(["train"])), option
        else:  # a key of SpectralAdam's parameter groups (one it fills in itself, not only stores)
            assert option in specopt.SpectralAdam([torch.nn.Parameter(torch.ones(2, 2))]).param_groups[0], option
