"""specopt.experiment: the run skeleton continual and rl share (files written whole, CSV rows, mean ± s.e., the
resume guard's comparison)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specopt import experiment
from specopt.experiment import (append_csv, atomic_write, changed_settings, mean_se, read_csv, write_csv,
                                write_json)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_mean_se_is_the_sample_standard_error(values):
    mean, se = mean_se(values)
    assert mean == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-6)
    expected = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    assert se == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_mean_se_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        mean_se([])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_csv_round_trip_append_and_rewrite(tmp_path):
    path = tmp_path / "metrics.csv"
    assert read_csv(path) == []
    append_csv(path, {"step": 1, "x": 0.5})
    append_csv(path, {"step": 2, "x": 0.25})
    assert read_csv(path) == [{"step": "1", "x": "0.5"}, {"step": "2", "x": "0.25"}]
    write_csv(path, [r for r in read_csv(path) if int(r["step"]) <= 1])  # a resume drops rows past its checkpoint
    assert read_csv(path) == [{"step": "1", "x": "0.5"}]
    write_csv(path, [{"b": 2, "a": 1}], columns=["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "1,2"]
    write_csv(path, [])
    assert path.read_text() == ""
    write_json(tmp_path / "config.json", {"k": 2})
    assert (tmp_path / "config.json").read_text() == '{\n  "k": 2\n}\n'


def test_changed_settings_ignores_locations_and_fills_missing_keys_with_defaults():
    saved = {"lr": 1e-3, "out": "a"}  # a run from before "k" existed
    assert changed_settings(saved, {"lr": 1e-3, "out": "b", "k": 2}, {"k": 2}, ignore={"out"}) == []
    assert changed_settings(saved, {"lr": 1e-2, "out": "b", "k": 4}, {"k": 2}, ignore={"out"}) == ["k", "lr"]


def test_import_specopt_does_not_load_the_experiment_layer():
    code = "import sys, specopt; print('specopt.experiment' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


@dataclasses.dataclass(frozen=True)
class _Inner:
    k: float = 2  # the exponent
    decoupled: bool = False  # a decoupled step


@dataclasses.dataclass(frozen=True)
class _Group:
    first_one: _Inner = dataclasses.field(default_factory=_Inner)  # the first one's options
    other: _Inner = dataclasses.field(default_factory=_Inner)  # the other's options


@dataclasses.dataclass
class _Config:
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])  # seeds
    options: _Group = dataclasses.field(default_factory=_Group)  # options per name


def test_config_flags_nest_one_group_per_inner_dataclass_and_report_only_what_was_given():
    parser = argparse.ArgumentParser()
    experiment.add_config_flags(parser, _Config)
    spellings = {a.dest: a.option_strings for a in parser._actions}
    assert spellings["options.first_one.k"] == ["--first-one.k"]
    assert spellings["options.other.decoupled"] == ["--other.decoupled", "--no-other.decoupled"]
    titles = {g.title for g in parser._action_groups}
    assert {"the first one's options", "the other's options"} <= titles
    args = parser.parse_args(["--first-one.k", "4", "--no-other.decoupled", "--seeds", "1", "2"])
    assert experiment.given_fields(_Config, args) == {"seeds": [1, 2], "options": {"first_one": {"k": 4.0},
                                                                                   "other": {"decoupled": False}}}
    assert experiment.given_fields(_Config, parser.parse_args([])) == {}
    help_text = parser.format_help()
    assert "the exponent (default 2)" in help_text and "a decoupled step (default False)" in help_text


def test_mean_pm_gives_a_standard_error_only_from_three_seeds():
    from specopt.experiment import mean_pm

    assert mean_pm(0.5, 0.01, 2) == "0.500"
    assert mean_pm(0.5, 0.01, 3) == "0.500 ± 0.010"
    assert mean_pm(91.64, 9.81, 5, 1) == "91.6 ± 9.8"


def test_ratio_pm_carries_the_first_order_error_of_a_ratio_of_means():
    from specopt.experiment import ratio_pm

    # 101.3 ± 19.3 over 91.6 ± 9.8: r = 1.106, s = r·sqrt((19.3/101.3)² + (9.8/91.6)²) = 0.2416
    assert ratio_pm((101.3, 19.3, 5), (91.6, 9.8, 5)) == "1.11 ± 0.24×"
    assert ratio_pm((101.3, 19.3, 2), (91.6, 9.8, 5)) == "1.11×"  # fewer than 3 seeds: no error
    assert ratio_pm((1.0, 0.1, 3), (0.0, 0.1, 3)) == "–"


def test_pack_runs_refuses_what_it_cannot_pack_whole_and_keeps_foreign_files(tmp_path):
    """specopt.results.pack_runs: a finished run folder becomes pack lines; a file pack does not know stays in
    its folder; a run packed twice, a damaged config.json or a damaged pack is a one-line error naming the file."""
    import json as _json

    from specopt.experiment import write_csv
    from specopt.results import pack_runs, packed_runs

    def make(name: str, rows: int, extra: bool = False) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(_json.dumps({"tasks": 2, "name": name}))
        write_csv(tmp_path / name / "results.csv", [{"task": t, "acc": 0.5 + t} for t in range(1, rows + 1)])
        if extra:
            (tmp_path / name / "notes.txt").write_text("mine")

    def finished(config, rows):
        return len(rows) >= config["tasks"]

    make("a", 2, extra=True)
    make("b", 1)
    assert pack_runs(tmp_path, "results.csv", finished) == ["a"]
    assert packed_runs(tmp_path) == {"a": ({"tasks": 2, "name": "a"}, [{"task": "1", "acc": "1.5"},
                                                                        {"task": "2", "acc": "2.5"}])}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["notes.txt"]  # not pack's: left in place
    assert (tmp_path / "b" / "results.csv").exists()  # unfinished: left to resume
    (tmp_path / "a" / "config.json").write_text(_json.dumps({"tasks": 2, "name": "a"}))
    (tmp_path / "a" / "results.csv").write_text("task,acc\n1,0.1\n2,0.2\n")
    with pytest.raises(ValueError, match="is packed in .*runs.jsonl already"):
        pack_runs(tmp_path, "results.csv", finished)
    (tmp_path / "a" / "config.json").write_text("{damaged")
    with pytest.raises(ValueError, match=r"a/config.json is not valid JSON"):
        pack_runs(tmp_path, "results.csv", finished)
    (tmp_path / "runs.jsonl").write_text("{damaged\n")
    with pytest.raises(ValueError, match="runs.jsonl is damaged"):
        packed_runs(tmp_path)


def test_versions_text_counts_each_code_history_so_a_table_shows_what_it_mixes():
    from specopt.experiment import PROVENANCE, versions_text

    a = {"commit": "a" * 40, "dirty": False, "torch": "2.14.1"}
    b = {"commit": "b" * 40, "dirty": True, "torch": "2.14.1"}
    configs = [{PROVENANCE: [a]}, {PROVENANCE: [a]}, {PROVENANCE: [a, b]}, {}, {PROVENANCE: []},
               {PROVENANCE: [{"commit": None, "gpu": "H100", "recorded": "afterwards"}]}]
    assert versions_text(configs) == ("aaaaaaa (2 runs); aaaaaaa then bbbbbbb+dirty (1 run); "
                                      "commit unknown (1 run); not recorded (2 runs)")
