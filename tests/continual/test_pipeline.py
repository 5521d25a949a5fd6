"""The continual pipeline end to end: data, task streams, models, runner, resume, CLI and plots."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from continual import data as data_mod
from continual import learner as learner_mod  # the learners make their tasks (continual.learner.Run.train)
from continual.cli import main
from continual.data import DataError, load_dataset, read_idx
from continual.diagnostics import unit_activity
from continual.models import build_model
from continual.runner import COLUMNS, RunConfig, run_experiment
from continual.streams import make_task

REPO = Path(__file__).resolve().parents[2]


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_folder(folder: Path, n: int = 60, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 28, 28))
    y = rng.integers(0, 10, n)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", x, compress)
    write_idx(folder / "train-labels-idx1-ubyte", y, compress)
    write_idx(folder / "t10k-images-idx3-ubyte", x[:20], compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", y[:20], compress)
    return x, y


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_exactly_gz_or_raw(tmp_path, compress):
    x, y = make_idx_folder(tmp_path, compress=compress)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, train_size=50)
    assert ds.x_train.shape == (50, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert torch.allclose(ds.x_train[:, 0] * 255, torch.tensor(x[:50], dtype=torch.float32))
    assert torch.equal(ds.y_train, torch.tensor(y[:50]))


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "bad")


def test_failed_download_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECOPT_CACHE", str(tmp_path / "cache"))

    def fake_split(name, root, train, download):
        if download:
            Path(root, "partial.bin").write_bytes(b"half")  # a download that breaks midway
            raise ConnectionError("no route to host")
        raise RuntimeError("Dataset not found")

    monkeypatch.setattr(data_mod, "_torchvision_split", fake_split)
    with pytest.raises(DataError, match="dataset 'cifar10' not found.*download failed: no route to host"):
        load_dataset("cifar10")
    leftovers = list((tmp_path / "cache").rglob("*"))
    assert leftovers == []


def test_missing_dataset_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "continual", "run", "--dataset", "mnist", "--data-dir",
                           str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "dataset 'mnist' not found" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_bad_flag_lists_valid_values_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "continual", "run", "--mitigator", "dropout", "--out", "x"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "invalid choice: 'dropout'" in proc.stderr and "spectral-coupled" in proc.stderr


def test_task_streams_are_seeded_and_have_their_properties():
    ds = load_dataset("digits")
    a, b = make_task(ds, "random-labels", 0, 3), make_task(ds, "random-labels", 0, 3)
    assert torch.equal(a.y_train, b.y_train) and not torch.equal(a.y_train, make_task(ds, "random-labels", 0, 4).y_train)
    assert not torch.equal(a.y_train, make_task(ds, "random-labels", 1, 3).y_train)
    p = make_task(ds, "pixel-permutation", 0, 1)
    assert torch.equal(p.y_train, ds.y_train)
    assert torch.equal(p.x_train.flatten(1).sort(1).values, ds.x_train.flatten(1).sort(1).values)
    assert not torch.equal(p.x_train, ds.x_train)
    f = make_task(ds, "label-flip", 0, 1)
    mapping = {}
    for old, new in zip(ds.y_train.tolist(), f.y_train.tolist()):
        assert mapping.setdefault(old, new) == new  # one consistent permutation of the class ids
    assert sorted(mapping.values()) == list(range(10))
    counts = [int(make_task(ds, "class-incremental", 0, t).y_train.max()) + 1 for t in range(3)]
    assert counts == [5, 10, 10]


MODEL_SHAPES = [("mlp", (1, 8, 8)), ("resnet18", (3, 16, 16)), ("vit-tiny", (1, 8, 8))]


@pytest.mark.parametrize("activation", ["relu", "crelu"])
@pytest.mark.parametrize("name, shape", MODEL_SHAPES)
def test_models_expose_features_and_head(name, shape, activation):
    model = build_model(name, shape, 7, activation=activation)
    x = torch.randn(3, *shape)
    assert model(x).shape == (3, 7)
    assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-5)


@pytest.mark.parametrize("name, shape", [("mlp", (1, 28, 28)), ("resnet18", (3, 32, 32)), ("vit-tiny", (3, 32, 32))])
def test_crelu_models_match_the_parameter_count(name, shape):
    relu_model, crelu_model = build_model(name, shape, 10), build_model(name, shape, 10, activation="crelu")
    relu, crelu = (sum(p.numel() for p in m.parameters()) for m in (relu_model, crelu_model))
    assert abs(crelu - relu) / relu < 0.02
    assert not any(type(m).__name__ == "CReLU" for m in relu_model.modules())
    acts = [m for m in crelu_model.modules() if type(m).__name__ == "CReLU"]
    assert len(acts) == {"mlp": 4, "resnet18": 9, "vit-tiny": 12}[name]  # resnet18: the stem and 8 blocks


def test_crelu_resnet_concatenates_channels_and_dormant_units_are_channels():
    model = build_model("resnet18", (3, 16, 16), 5, activation="crelu").eval()
    block = model.body.layer1[0]
    z = block.bn1(block.conv1(torch.randn(2, 64, 4, 4)))
    assert torch.equal(block.act(z), torch.cat([z.clamp(min=0), (-z).clamp(min=0)], dim=1))
    with torch.no_grad():  # kill channel 3 of the block's first convolution: both CReLU halves are then zero
        block.bn1.weight[3], block.bn1.bias[3] = 0.0, 0.0
    seen = []
    handle = block.act.register_forward_hook(lambda m, i, out: seen.append(out))
    model(torch.randn(4, 3, 16, 16))
    handle.remove()
    activity = unit_activity(seen[0], crelu=True)  # what dormant_fraction and ReDo score: one entry per channel
    assert seen[0].shape[1] == 2 * block.conv1.out_channels and activity.shape == (block.conv1.out_channels,)
    assert activity[3] == 0 and (activity[torch.arange(activity.numel()) != 3] > 0).all()


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="valid names are relu, crelu"):
        build_model("mlp", (1, 8, 8), 3, activation="gelu")


def tiny_config(out: Path, **kw) -> RunConfig:
    settings = dict(dataset="digits", nonstationarity="random-labels", model="mlp", mitigators=["spectral",
                    "shrink-perturb"], seeds=[0], tasks=3, epochs=1, batch_size=64, train_size=256, width=32,
                    probe_size=64, out=str(out))
    settings.update(kw)
    return RunConfig(**settings)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_after_a_kill_reproduces_the_uninterrupted_rows(tmp_path, monkeypatch):
    run_experiment(tiny_config(tmp_path / "full"), progress=False)
    calls = {"n": 0}
    real = learner_mod.make_task

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # killed during the second mitigator's second task
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(learner_mod, "make_task", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_config(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(learner_mod, "make_task", real)
    assert len(read_csv(tmp_path / "resumed" / "results.csv")) == 4
    run_experiment(tiny_config(tmp_path / "resumed"), resume=True, progress=False)
    full, resumed = read_csv(tmp_path / "full" / "results.csv"), read_csv(tmp_path / "resumed" / "results.csv")
    assert len(full) == 6 and full == resumed


def test_a_moved_run_folder_resumes_to_the_uninterrupted_rows(tmp_path, monkeypatch):
    settings = dict(mitigators=["spectral"], tasks=2)
    run_experiment(tiny_config(tmp_path / "full", **settings), progress=False)
    real = learner_mod.make_task

    def dying(ds, nonstationarity, seed, t):
        if t == 1:  # killed before the second task
            raise KeyboardInterrupt
        return real(ds, nonstationarity, seed, t)

    monkeypatch.setattr(learner_mod, "make_task", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_config(tmp_path / "here", **settings), progress=False)
    monkeypatch.setattr(learner_mod, "make_task", real)
    (tmp_path / "here").rename(tmp_path / "there")  # e.g. copied to another machine: only out differs
    run_experiment(tiny_config(tmp_path / "there", **settings), resume=True, progress=False)
    assert read_csv(tmp_path / "there" / "results.csv") == read_csv(tmp_path / "full" / "results.csv")
    assert json.loads((tmp_path / "there" / "config.json").read_text())["out"] == str(tmp_path / "there")


def test_run_refuses_to_overwrite_and_to_resume_with_other_settings(tmp_path):
    run_experiment(tiny_config(tmp_path, mitigators=["none"], tasks=1), progress=False)
    with pytest.raises(ValueError, match="already holds results"):
        run_experiment(tiny_config(tmp_path, mitigators=["none"], tasks=1), progress=False)
    with pytest.raises(ValueError, match="different settings.*epochs"):
        run_experiment(tiny_config(tmp_path, mitigators=["none"], tasks=1, epochs=2), resume=True, progress=False)


def test_cli_run_writes_results_config_and_plot_prints_a_table(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--dataset", "digits", "--nonstationarity", "label-flip", "--model", "mlp", "--layernorm",
                 "--width", "32", "--mitigator", "none", "spectral", "--tasks", "2", "--epochs", "1",
                 "--batch-size", "64", "--train-size", "200", "--seeds", "0", "1", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 2 * 2 * 2
    assert {r["mitigator"] for r in rows} == {"none", "spectral"} and all(r["layernorm"] == "1" for r in rows)
    assert all(0 <= float(r["test_accuracy"]) <= 1 and float(r["sigma_max"]) > 0 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["nonstationarity"] == "label-flip" and config["seeds"] == [0, 1]
    capsys.readouterr()
    assert main(["plot", str(out), "-o", str(tmp_path / "fig.png")]) == 0
    table = capsys.readouterr().out
    assert "| spectral (1) +LN | 2 | 2 |" in table and "| none +LN | 2 | 2 |" in table
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(out), "-o", str(tmp_path / "sigma.png"), "--metric", "sigma_max", "--per-seed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    last = {(r["mitigator"], r["seed"]): r for r in rows if r["task"] == "2"}
    first = {(r["mitigator"], r["seed"]): r for r in rows if r["task"] == "1"}
    for (mitigator, seed), r in last.items():  # the per-seed lines carry each run's own first/last values
        name = "spectral (1) +LN" if mitigator == "spectral" else "none +LN"
        cells = [f"{float(first[mitigator, seed]['sigma_max']):.3g}", f"{float(r['sigma_max']):.3g}",
                 f"{float(r['sigma_max']):.3g}", f"{float(r['dormant_fraction']):.3g}", f"{float(r['grad_erank']):.3g}"]
        assert f"| {name} | {seed} | 2 | " + " | ".join(cells) + " |" in lines


def test_demo_runs_compares_adam_and_spectral_and_writes_a_png(tmp_path, capsys):
    assert main(["demo", "--tasks", "2", "--epochs", "1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "| none | 1 | 2 |" in out and "| spectral (1) | 1 | 2 |" in out
    assert (tmp_path / "demo" / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_table_says_how_many_seeds_reached_the_last_task():
    from continual.plot import table

    def row(seed: int, task: int, acc: float) -> dict[str, str]:
        return {"mitigator": "none", "strength": "0", "layernorm": "0", "seed": str(seed), "task": str(task),
                "train_accuracy": str(acc)}

    rows = [row(0, 1, 0.4), row(0, 2, 0.2), row(1, 1, 0.6)]  # seed 1 stopped after task 1
    assert "| none | 1 of 2 | 2 | 0.500 | 0.200 | 0.350 |" in table(rows)  # no standard error from < 3 seeds
    assert "| none | 2 | 2 | 0.500 | 0.300 |" in table(rows + [row(1, 2, 0.4)])
    three = rows + [row(1, 2, 0.4), row(2, 1, 0.5), row(2, 2, 0.6)]  # last task 0.2, 0.4, 0.6: s.e. 0.2/√3
    assert f"| none | 3 | 2 | 0.500 | 0.400 ± {0.2 / 3 ** 0.5:.3f} |" in table(three)


def test_plot_table_names_curves_by_the_settings_that_differ_and_counts_a_seed_run_twice_twice():
    """Runs that differ in epochs or width (a study that varies them) or in model are separate curves named by those
    settings;
    settings shared by every row stay out of the names; one seed from two runs of one setting is two samples."""
    from continual.plot import table

    def row(seed: int, task: int, acc: float, epochs: int = 40, width: int = 256) -> dict[str, str]:
        return {"mitigator": "crelu", "strength": "", "layernorm": "0", "seed": str(seed), "task": str(task),
                "train_accuracy": str(acc), "epochs": str(epochs), "width": str(width)}

    rows = [row(0, 1, 0.9), row(0, 1, 0.5, epochs=120), row(0, 1, 0.3, width=334)]
    out = table(rows)
    assert "| crelu epochs=40 width=256 | 1 | 1 | 0.900 |" in out and "| crelu epochs=120 width=256 | 1 | 1 | 0.500 |" in out
    assert "| crelu epochs=40 width=334 | 1 | 1 | 0.300 |" in out
    assert "| crelu | 1 | 1 | 0.900 |" in table(rows[:1])
    assert "| crelu | 2 | 1 | 0.700 |" in table([row(0, 1, 0.9), row(0, 1, 0.5)])  # seed 0 twice: mean of both
    old = {k: v for k, v in row(1, 1, 0.5).items() if k != "epochs"}  # a run from before the column existed
    assert "| crelu | 2 | 1 | 0.700 |" in table([row(0, 1, 0.9), old])  # does not make epochs vary
    mixed = table([{**row(0, 1, 0.9), "model": "resnet18"}, {**row(0, 1, 0.2), "model": "vit-tiny"}])  # GPU runs
    assert "| crelu model=resnet18 | 1 | 1 | 0.900 |" in mixed and "| crelu model=vit-tiny | 1 | 1 | 0.200 |" in mixed


def test_plot_legend_counts_seeds_like_the_table(tmp_path, monkeypatch):
    import matplotlib.figure

    from continual.plot import plot

    fields = ["mitigator", "strength", "layernorm", "seed", "task", "train_accuracy", "dataset", "nonstationarity",
              "model"]
    rows = [("none", 0, 1, 0.4), ("none", 0, 2, 0.2), ("none", 1, 1, 0.6),  # seed 1 of none stopped after task 1
            ("spectral", 0, 1, 0.4), ("spectral", 0, 2, 0.5)]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for m, seed, task, acc in rows:
            w.writerow([m, 1, 0, seed, task, acc, "digits", "random-labels", "mlp"])
    labels = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        labels.extend(fig.axes[0].get_legend_handles_labels()[1])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    text = plot([tmp_path], tmp_path / "fig.png")
    assert labels == ["none, 1 of 2 seeds", "spectral (1), 1 seed"]
    assert "| none | 1 of 2 |" in text and "| spectral (1) | 1 |" in text


def test_plot_reads_a_folder_of_run_folders_and_names_mitigators_without_a_strength_alone(tmp_path, capsys):
    fields = ["mitigator", "strength", "layernorm", "seed", "task", "train_accuracy", "dataset", "nonstationarity",
              "model"]
    for name, mitigator, acc in [("crelu-seed0", "crelu", 0.8), ("deeper/none-seed0", "none", 0.2)]:
        (tmp_path / "sweep" / name).mkdir(parents=True)
        with open(tmp_path / "sweep" / name / "results.csv", "w", newline="") as f:
            csv.writer(f).writerows([fields, [mitigator, 0, 0, 0, 1, acc, "digits", "random-labels", "mlp"]])
    (tmp_path / "sweep" / "report.md").write_text("not rows")
    assert main(["plot", str(tmp_path / "sweep"), "-o", str(tmp_path / "fig.png")]) == 0
    table = capsys.readouterr().out
    assert "| crelu | 1 | 1 | 0.800 |" in table and "| none | 1 | 1 | 0.200 |" in table
    assert main(["plot", str(tmp_path / "sweep" / "report.md"), "-o", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "report.md is not a run folder" in err, err


def test_mitigator_options_reach_the_mitigator_the_rows_and_the_resume_guard(tmp_path):
    from continual.cli import main

    out = tmp_path / "k4"
    argv = ["run", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--mitigator", "spectral", "none",
            "--spectral.k", "4", "--no-diagnostics", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["mitigator"]: r["options"] for r in rows} == {"spectral": "k=4", "none": ""}
    assert all(r["epochs"] == "1" and r["width"] == "256" and r["train_size"] == "1497" for r in rows)
    options = json.loads((out / "config.json").read_text())["options"]  # every option of every mitigator
    assert options["spectral"] == {"k": 4, "pull": "two-sided", "precondition": False, "heads": True,
                                   "fused_order": False}
    assert options["spectral_coupled"] == {"k": 2}
    assert options["redo"] == {"frequency": 1000} and options["l2_init"] == {"decoupled": False}
    from continual.runner import Run

    cfg = RunConfig(dataset="digits", tasks=1, epochs=1, mitigators=["spectral"], options={"spectral": {"k": 4}})
    from continual.data import load_dataset

    assert Run(cfg, load_dataset("digits"), "spectral", 0).mit.optimizer.param_groups[0]["k"] == 4
    assert main(argv[:-2] + ["--spectral.k", "8", "--resume", "--out", str(out)]) == 2  # the guard sees it
    assert main(argv[:-2] + ["--redo.frequency", "5", "--resume", "--out", str(out)]) == 2  # any mitigator's option
    assert main(argv[:-2] + ["--resume", "--out", str(out)]) == 0


def test_the_fused_order_reaches_spectraladam_and_is_refused_with_vectorized_seeds(tmp_path, capsys):
    """--spectral.fused-order: SpectralAdam(fused_spectral=True, one_pass=True), in the rows' options; with
    --vectorize-seeds (StackedSpectralAdam, no fused order) a one-line error before anything is written."""
    from continual.cli import main
    from continual.data import load_dataset
    from continual.runner import Run

    cfg = RunConfig(dataset="digits", tasks=1, epochs=1, mitigators=["spectral"],
                    options={"spectral": {"fused_order": True}})
    opt = Run(cfg, load_dataset("digits"), "spectral", 0).mit.optimizer
    assert opt.defaults["fused_spectral"] and opt.defaults["one_pass"]
    argv = ["run", "--dataset", "digits", "--tasks", "1", "--epochs", "1", "--train-size", "64", "--width", "16",
            "--mitigator", "spectral", "--spectral.fused-order", "--no-diagnostics", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert {r["options"] for r in rows} == {"fused_order=True"}
    capsys.readouterr()
    assert main([*argv, "--seeds", "0", "1", "--vectorize-seeds", "--out", str(tmp_path / "vec")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--spectral.fused-order is not available with --vectorize-seeds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "vec").exists()


def test_bad_mitigator_options_are_one_line_errors(tmp_path, capsys):
    from continual.cli import main

    for flags, message in ((["--spectral.q", "1"], "unrecognized arguments: --spectral.q"),
                           (["--spectral.k", "two"], "argument --spectral.k: invalid float value: 'two'")):
        with pytest.raises(SystemExit, match="2"):  # argparse: exit status 2 and one line
            main(["run", "--dataset", "digits", *flags, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--dataset", "digits", "--mitigator", "redo", "--redo.frequency", "0",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "redo: frequency must be >= 1" in err and len(err.strip().splitlines()) == 1
    for options, message in (({"spectral": {"q": 1}}, "spectral has no option 'q'; valid: k"),
                             ({"magic": {"k": 1}}, "unknown mitigator 'magic'"),
                             ({"crelu": {"k": 1}}, "mitigator 'crelu' has no options")):
        with pytest.raises(ValueError, match=message):
            RunConfig(options=options)  # from Python, or a hand-edited config.json


def test_run_flags_are_generated_from_runconfig_and_a_preset_fills_what_is_not_given():
    """Every RunConfig field is a flag whose help is the field's comment (``options``: one flag per option of each
    mitigator, ``--spectral.k``); the config is RunConfig's defaults, then the preset's settings, then the flags
    given — each default written once."""
    import dataclasses

    from continual.cli import PRESETS, config_from, parser
    from specopt.experiment import field_docs

    run = next(a for a in parser()._actions if a.dest == "command").choices["run"]
    flags = {a.dest: a for a in run._actions}
    docs = field_docs(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name != "options":
            assert f.name in flags and docs.get(f.name) and docs[f.name] in flags[f.name].help, f.name
    from continual.mitigators.options import MitigatorOptions

    for group in dataclasses.fields(MitigatorOptions):
        for option in dataclasses.fields(group.default_factory):
            dest = f"options.{group.name}.{option.name}"
            assert dest in flags and field_docs(group.default_factory)[option.name] in flags[dest].help, dest
            assert flags[dest].option_strings[0] == f"--{group.name}.{option.name}".replace("_", "-")
    args = parser().parse_args(["run", "--preset", "fmnist-random-labels", "--epochs", "3", "--no-diagnostics",
                                "--spectral.k", "4", "--l2-init.decoupled", "--out", "x"])
    assert config_from(args) == RunConfig(**{**PRESETS["fmnist-random-labels"], "epochs": 3, "diagnostics": False,
                                             "options": {"spectral": {"k": 4}, "l2-init": {"decoupled": True}},
                                             "out": "x"})
    assert config_from(parser().parse_args(["run", "--out", "x"])) == RunConfig(out="x")


def test_gradient_rms_script_runs_on_idx_files(tmp_path):
    """scripts/gradient_rms.py (docs/strength.md tells users to run it) runs end to end on small IDX files."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), True)
    root = Path(__file__).resolve().parents[2]
    script = [sys.executable, str(root / "scripts" / "gradient_rms.py")]
    done = subprocess.run([*script, "--tasks", "2", "--epochs", "1", "--data-dir", str(tmp_path), "--train-size", "64",
                           "--out", str(tmp_path / "rms.csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["task 1", "task 2"] and "head.weight median" in lines[-1]
    with open(tmp_path / "rms.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["layer"]) for r in rows][-1] == ("2", "head.weight") and len(rows) == 10
    assert f"head.weight median {float(rows[-1]['median_rms']):.2e}" in lines[-1]  # the rows hold what was printed
    table = subprocess.run([*script, "--report", str(tmp_path / "rms.csv")], capture_output=True, text=True,
                           timeout=300).stdout
    assert f"| 2 | head.weight | 256×10 | {float(rows[-1]['median_rms']):.1e} |" in table


def test_penalty_ratio_script_measures_the_coupled_gradients(tmp_path, monkeypatch):
    """scripts/penalty_ratio.py (docs/results.md: where each coupled baseline acts): on a one-step task its ρ equals
    ‖2λθ‖ / ‖∇CE‖ computed here by autograd from the model before that step, and the rows file resumes."""
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("penalty_ratio", root / "scripts" / "penalty_ratio.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    strength = 0.01
    captured = {}
    real_run = script.Run

    def run_and_capture(cfg, ds, mitigator, seed):
        r = real_run(cfg, ds, mitigator, seed)
        captured["theta"] = [p.detach().clone() for p in r.model.parameters()]
        captured["model"], captured["ds"] = r.model, ds
        return r

    monkeypatch.setattr(script, "Run", run_and_capture)
    out = tmp_path / "rows.csv"
    argv = ["--dataset", "digits", "--train-size", "512", "--epochs", "1", "--tasks", "1", "--mitigators", "l2",
            "--strengths", str(strength), "--out", str(out)]
    assert script.main(argv) == 0
    (row,) = list(csv.DictReader(out.open()))
    assert int(row["steps"]) == 1 and row["commit"]
    # the same model before its one step, the same batch (the whole task: one batch of 512)
    model = captured["model"]
    with torch.no_grad():
        for p, t in zip(model.parameters(), captured["theta"]):
            p.copy_(t)
    task = make_task(captured["ds"], "random-labels", 0, 0)
    model.train()
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(task.x_train), task.y_train),
                                list(model.parameters()))
    data = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    penalty = 2 * strength * torch.sqrt(sum((t.double() ** 2).sum() for t in captured["theta"]))
    assert float(row["ratio_median"]) == pytest.approx(float(penalty / data), rel=1e-4)
    assert float(row["data_grad_norm"]) == pytest.approx(float(data), rel=1e-4)
    before = out.read_text()
    assert script.main(argv) == 0 and out.read_text() == before  # finished pairs are skipped
    assert "| l2 | 0.01 | no | 1 |" in script.report(out)


def test_report_writes_the_sweep_table_its_json_and_figures_with_the_code_version(tmp_path, capsys):
    """``python -m continual report``: the sweep table (the best strength in bold) with the commit its runs were made
    by, and --out writes report.md, report.json (the numbers, checked against the rows by hand) and the figures."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--train-size", "64",
                 "--batch-size", "32", "--width", "16", "--no-diagnostics", "--mitigator", "none", "l2",
                 "--strengths", "1e-3", "1e-2", "--seeds", "0", "--workers", "1", "--no-progress", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "| l2 | 0.001 | 1 | 2 |" in printed and "| none | – | 1 | 2 |" in printed
    commit = json.loads((out / "none-seed0" / "config.json").read_text())["provenance"][0]["commit"]
    assert f"Code versions (commit, from config.json): {str(commit)[:7]}" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    for e in report["entries"]:  # last-5-task mean of 2 tasks = the mean of both rows' train accuracy
        name = "none-seed0" if e["mitigator"] == "none" else f"l2-s{e['strength']:g}-seed0"
        with open(out / name / "results.csv", newline="") as f:
            accs = [float(r["train_accuracy"]) for r in csv.DictReader(f)]
        assert e["last5"] == pytest.approx(np.mean(accs)) and e["last"] == pytest.approx(accs[-1])
    best = max((e for e in report["entries"] if e["strength"] is not None), key=lambda e: (e["last5"], -e["strength"]))
    assert report["best"] == {"l2": best["strength"]} and f"| l2 | {best['strength']:g} | 1 | 2 | **" in printed
    assert (tmp_path / "report" / "report.md").read_text().startswith("| mitigator | strength |")
    assert all((tmp_path / "report" / f).stat().st_size > 0 for f in ("curves.png", "sensitivity.png"))
    assert main(["report", str(out), "--train-test"]) == 0
    assert "| mitigator | seeds | train: first |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("package, folder", [("continual", "results/studies/heldout/noln"),
                                             ("rl", "results/rl/short-cheetah")])
def test_a_reader_that_goes_away_is_no_error(package, folder):
    """`python -m continual report ... | head`: the reader closes the pipe; the command stops without an error
    message or a traceback (exit status 1, as Python's own on a broken pipe)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", package, "report", folder], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=root)
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == "", err
