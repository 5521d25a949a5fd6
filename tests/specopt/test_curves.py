"""specopt.curves: the mean ± standard error over seeds every report draws, checked against numpy; the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specopt.curves import REPORT_FILES, curve_entries, draw, over_seeds, seed_count, write_report

seeds = st.lists(st.tuples(st.integers(1, 6), st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6)),
                 min_size=1, max_size=5)


@settings(max_examples=50, deadline=None)
@given(seeds)
def test_over_seeds_is_numpys_mean_and_standard_error_over_the_seeds_that_reached_each_x(given_seeds):
    """Each seed reached x = 1…length; at every x the mean and s/√n (ddof 1; 0 for one seed) over those seeds."""
    per_seed = [(list(range(1, length + 1)), values[:length]) for length, values in given_seeds]
    c = over_seeds(per_seed)
    assert c.x.tolist() == list(range(1, max(length for length, _ in given_seeds) + 1))
    for i, x in enumerate(c.x):
        y = np.array([values[int(x) - 1] for length, values in given_seeds if length >= x])
        assert c.n[i] == len(y)
        assert c.mean[i] == pytest.approx(y.mean(), rel=1e-9, abs=1e-9)
        se = y.std(ddof=1) / np.sqrt(len(y)) if len(y) > 1 else 0.0
        assert c.se[i] == pytest.approx(se, rel=1e-6, abs=1e-9)
    assert c.seeds == len(given_seeds) and c.at_last == int(c.n[-1])


def test_over_seeds_takes_uneven_steps_and_refuses_no_seeds():
    c = over_seeds([([10, 20, 30], [1.0, 3.0, 7.0]), ([10, 20], [3.0, 5.0])])  # the second seed stopped early
    assert c.x.tolist() == [10, 20, 30] and c.mean.tolist() == [2.0, 4.0, 7.0] and c.n.tolist() == [2, 2, 1]
    assert c.se.tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert seed_count(c.seeds, c.at_last) == "1 of 2" and seed_count(3, 3) == "3"
    with pytest.raises(ValueError, match="no seeds"):
        over_seeds([])


def test_draw_writes_one_panel_per_title(tmp_path):
    c = over_seeds([([1, 2], [0.5, 0.6]), ([1, 2], [0.7, 0.8])])
    many = {f"curve {i}": c for i in range(12)}  # beyond ten colours: dashed, legend beside the axes
    draw({"a": {"none": c}, "b": many}, tmp_path / "f.png", xlabel="task", ylabel="accuracy", integer_x=True,
         emphasize=("none",))
    draw({"one": {"x": c}}, tmp_path / "g.png", xlabel="env steps", ylabel="return", thousands_x=True)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "g.png").stat().st_size > 0


def test_write_report_writes_both_files_and_a_nan_as_null(tmp_path):
    c = over_seeds([([1, 2], [0.5, float("nan")]), ([1, 2], [0.7, 0.9])])
    written = write_report(tmp_path / "r", "| a |", {"curves": curve_entries({"p": {"x": c}}), "se": float("nan")})
    assert written == [str(tmp_path / "r" / name) for name in REPORT_FILES]
    assert (tmp_path / "r" / "report.md").read_text() == "| a |\n"
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    (curve,) = data["curves"]
    assert data["se"] is None and curve["x"] == [1, 2] and curve["label"] == "x" and curve["panel"] == "p"
    assert curve["mean"][0] == pytest.approx(0.6) and curve["mean"][1] is None  # seed 0's NaN at x = 2: no mean
