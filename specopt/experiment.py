"""The run skeleton the two experiment packages share: files written whole, CSV rows, mean ± standard error over
seeds, the resume guard's comparison, the progress bar, TensorBoard logging and the command line generated from a
config dataclass — each written once.

It ships in the ``specopt`` distribution so that ``continual`` and ``rl`` can both import it while imports still run
one way (``continual`` → ``specopt``, ``rl`` → ``specopt``; neither experiment package imports the other). The
optimizer never imports it, and ``import specopt`` does not load it.

Checkpoints hold tensors and plain containers only (:func:`save_checkpoint`), and are read with
``torch.load(weights_only=True)`` (:func:`load_checkpoint`): resuming a run folder never runs code from it.

Every file a run writes goes through :func:`atomic_write` (a temporary file beside the target, then
``os.replace``), so a reader — a plot made while runs go on, a resumed run after a kill — never sees half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import inspect
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_TYPES", "PROVENANCE", "add_config_flags", "add_version", "append_csv", "atomic_write",
           "changed_settings", "check_device", "CheckpointError", "claim_folder", "code_version",
           "convert_checkpoint", "field_docs", "folder_kind", "FolderLock", "given_fields", "load_checkpoint",
           "log_scalars", "max_row_difference", "mean_se", "os_error_line", "stdout_closed", "progress_bar", "read_csv", "versions_text",
           "save_checkpoint", "save_figure", "saved_provenance", "tensorboard_writer", "write_csv", "write_json",
           "write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a hidden temporary file beside it, which is then
    renamed over ``path`` (atomic on POSIX and Windows within one file system)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind
        except OSError:  # a read-only or vanished folder: the write's own error is the one to report
            pass


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _write_if_changed(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically unless ``path`` already holds exactly it (so resuming a finished run in a read-only
    folder writes nothing)."""
    path, data = Path(path), text.encode()
    try:
        if path.is_file() and path.read_bytes() == data:
            return
    except OSError:  # unreadable: rewrite it
        pass
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (a config.json), written atomically (left alone when it already holds that)."""
    _write_if_changed(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """``rows`` as a CSV file with a header, written atomically (left alone when it already holds them); ``columns``
    default to the first row's keys (an empty file when there are no rows and no columns)."""
    fieldnames = list(columns) if columns is not None else list(rows[0]) if rows else []
    text = io.StringIO(newline="")
    if fieldnames:
        w = csv.DictWriter(text, fieldnames=fieldnames)
        w.writeheader()
        w.writerows(rows)
    _write_if_changed(path, text.getvalue())


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure written atomically, in the format of ``path``'s suffix (PNG without one); the folder
    is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"))


def append_csv(path: str | os.PathLike, row: Mapping[str, Any]) -> None:
    """Append one row (with the header first when the file is new or empty). Not atomic: a run that appends
    rewrites the file whole (:func:`write_csv`) when it resumes, dropping rows past its checkpoint."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings; ``[]`` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- provenance: which code and machine made the rows -------------------------------------------------------------
PROVENANCE = "provenance"
"""The key of config.json that lists the distinct code versions (:func:`code_version`) of the processes that trained
the run (its start, then every resume that had work left); not a setting, so no resume guard compares it."""

_CODE_DIRS = ("specopt", "continual", "rl")


def _git(root: Path, *args: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version(device: str = "cpu") -> dict[str, Any]:
    """Which code and machine ran (part of) a run, as plain values: the git ``commit`` of the installed tree (None
    outside a git checkout) and whether its code (``specopt/``, ``continual/``, ``rl/``) had uncommitted changes
    (``dirty``), the torch and Python versions, the CPU model and the GPU's name on a CUDA ``device``. Rows of two
    versions are not one study's."""
    import platform

    import torch

    root = Path(__file__).resolve().parents[1]
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *_CODE_DIRS) if commit else None
    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"commit": commit, "dirty": None if status is None else bool(status), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": _cpu_model(), "gpu": gpu}


def add_version(history: list[dict[str, Any]], device: str = "cpu") -> list[dict[str, Any]]:
    """``history`` with this process's :func:`code_version` added when it is not there yet: a run resumed by the
    same code on the same kind of machine keeps one entry (its config.json then equals an uninterrupted run's)."""
    version = code_version(device)
    return history if version in history else [*history, version]


def saved_provenance(config_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The :data:`PROVENANCE` list of an existing config.json (``[]`` if there is none or it is unreadable)."""
    try:
        saved = json.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return []
    entries = saved.get(PROVENANCE, []) if isinstance(saved, dict) else []
    return entries if isinstance(entries, list) else []


def versions_text(configs: Iterable[Mapping[str, Any]]) -> str:
    """Which code versions made a set of runs, from their config.json :data:`PROVENANCE`: each distinct history
    (short commits, ``+dirty`` for uncommitted changes, ``commit unknown`` for an entry recorded without one, ``then``
    between the versions of a resumed run) with its number of runs; ``not recorded`` for runs from before provenance
    was written. A report prints it under a table so a reader sees whether the table mixes versions."""
    counts: dict[str, int] = {}
    for config in configs:
        history = config.get(PROVENANCE) or []
        key = " then ".join(f"{str(v['commit'])[:7] if v.get('commit') else 'commit unknown'}"
                            f"{'+dirty' if v.get('dirty') else ''}" for v in history if isinstance(v, Mapping)
                            ) or "not recorded"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{key} ({n} run{'s' if n != 1 else ''})" for key, n in sorted(counts.items()))


def check_device(device: str) -> None:
    """Raise a one-line ``ValueError`` unless ``device`` is a device string torch parses (the ``--device`` flag of
    both command lines)."""
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device: use cpu, cuda, cuda:1, mps, ...") from None


def stdout_closed() -> int:
    """The exit status of a command whose reader went away (``... | head``): no message, and stdout pointed at
    /dev/null so that the interpreter's last flush does not raise again (the recipe of Python's signal docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def os_error_line(err: OSError) -> str:
    """A failed read or write (a read-only or full ``--out``, a folder removed under a run) as one line: the file and
    the reason, for the command lines' ``error:`` message."""
    where = f"{err.filename}: " if err.filename else ""
    return f"cannot read or write {where}{err.strerror or err}"


# --- run folders: one run (of one kind) per folder, one process at a time -----------------------------------------
def folder_kind(path: str | os.PathLike) -> str | None:
    """What made the folder ``path``, judged by its files: ``"rl run"`` (a config.json with ``replay_ratio``),
    ``"continual run"`` (a config.json with ``nonstationarity``), ``"rl sweep"`` / ``"continual sweep"`` (no
    config.json and a sub-folder holding such a run, or a packed sweep: :data:`specopt.results.PACKED_RUNS`); None
    for a missing or empty folder or one no run made."""
    from .results import PACKED_RUNS

    path = Path(path)
    if not path.is_dir():
        return None

    def kind_of_config_dict(saved: Any) -> str | None:
        if not isinstance(saved, dict):
            return None
        return "rl run" if "replay_ratio" in saved else "continual run" if "nonstationarity" in saved else None

    def kind_of_config(config: Path) -> str | None:
        try:
            return kind_of_config_dict(json.loads(config.read_text()))
        except (OSError, ValueError):
            return None

    if (path / "config.json").is_file():
        return kind_of_config(path / "config.json")
    for sub in path.iterdir():
        if sub.is_dir() and (sub / "config.json").is_file():
            found = kind_of_config(sub / "config.json")
            if found is not None:
                return found.replace(" run", " sweep")  # a folder of runs: a sweep of their kind
    if (path / PACKED_RUNS).is_file():  # a packed sweep: its first run's config says which package made it
        try:
            first = json.loads((path / PACKED_RUNS).read_text().splitlines()[0])["config"]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            return None
        found = kind_of_config_dict(first)
        return found.replace(" run", " sweep") if found else None
    return None


class FolderLock:
    """An exclusive, non-blocking ``flock`` on the run folder itself (no lock file: a folder refused is left as it
    was). The kernel releases it when the process ends, however it ends, so a crash leaves no stale lock; another
    process trying to write into the same folder gets a one-line ``ValueError``. Local file systems only (NFS may not
    honour flock); a no-op where ``fcntl`` is missing (Windows)."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ValueError(f"another process is writing into {self.path} (a run, resume or sweep): wait for it to "
                             "finish, or choose another --out") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


@contextlib.contextmanager
def claim_folder(path: str | os.PathLike, kind: str) -> Iterator[Path]:
    """Hold the run folder ``path`` for a ``kind`` run (see :func:`folder_kind`) while the ``with`` block reads and
    writes it: checked, created if missing, and locked (:class:`FolderLock`). A folder this call created and the
    block left empty (the run refused a setting) is removed again, so a refused run writes nothing. One-line
    ``ValueError`` errors: an empty path, a path that is a file, a folder another kind of run made, a folder that
    cannot be created, a folder in use by another process."""
    if str(path).strip() == "":
        raise ValueError("--out is empty: give the run's folder (it would otherwise write into the current directory)")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder: choose another --out")
    found = folder_kind(folder)
    if found is not None and found != kind:
        raise ValueError(f"{folder} holds another kind of run ({found}; this is a {kind}): a run folder belongs to "
                         "one run, choose another --out")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create --out {folder}: {err.strerror or err}") from None
    with FolderLock(folder):  # a folder another process holds is refused here, and left to that process
        try:
            yield folder
        finally:
            if created:  # removed while still locked, and only if still empty: no other run can be using it
                try:
                    folder.rmdir()
                except OSError:
                    pass


# --- checkpoints: tensors and plain containers only --------------------------------------------------------------
CHECKPOINT_TYPES = "tensors, bools, ints, floats, strings, None, and lists, tuples and dicts of them"
"""What a run checkpoint may hold: exactly what ``torch.load(..., weights_only=True)`` reads without running code
from the file (docs/security.md)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be saved or resumed from; the message is one line naming the file and the way out."""


def _unplain(obj: Any, where: str) -> str | None:
    """The path (``state['agent']['streams']``) and type of the first value of ``obj`` that is not a tensor or a plain
    value/container, else None."""
    import torch

    if isinstance(obj, (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.Size)):
        return None
    if isinstance(obj, (list, tuple)):
        items: Iterable[tuple[Any, Any]] = enumerate(obj)
    elif isinstance(obj, dict):
        bad_key = next((k for k in obj if not isinstance(k, (str, int))), None)
        if bad_key is not None:
            return f"{where} has a key of type {type(bad_key).__name__}"
        items = obj.items()
    else:
        return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"
    for key, value in items:
        found = _unplain(value, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically with ``torch.save``, after checking it holds only
    :data:`CHECKPOINT_TYPES`, so that :func:`load_checkpoint` reads it under ``weights_only=True``."""
    import torch

    found = _unplain(state, "state")
    if found is not None:  # a programming error in a state_dict, not a user mistake: say where
        raise TypeError(f"a checkpoint holds only {CHECKPOINT_TYPES}; {found}")
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: str | os.PathLike, convert_command: str, map_location: Any = None) -> dict[str, Any]:
    """The checkpoint at ``path``, read with ``torch.load(weights_only=True)`` (tensors onto ``map_location``, as
    ``torch.load`` has it; None: the devices they were saved from): no code from the file runs. A file that needs
    more than that (an object of another type, a hostile pickle, a checkpoint written before checkpoints were plain)
    is refused with a one-line :class:`CheckpointError` that names the file and ``convert_command`` (how to convert a
    file the user trusts); so is a corrupt, truncated or empty file."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower() or "unsupported operand" in str(err).lower():  # no pickle at all
            raise CheckpointError(f"{path} is not a readable checkpoint (its bytes are no pickle): it is corrupt or "
                                  "truncated; restore it from a copy, or delete the run folder to start over"
                                  ) from None
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path} holds objects other than {CHECKPOINT_TYPES}{what}: refused, since loading it would run code "
            f"from the file; if you trust the file, convert it once with: {convert_command}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        first = str(err).strip().splitlines()[0][:80] if str(err).strip() else ""
        detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({detail}): it is corrupt or truncated; restore it from a copy, or "
            f"delete the run folder to start over") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a run checkpoint (a dict)")
    return state


def _to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays turned into tensors (unsigned ints widened to int64, which holds them exactly)
    and numpy scalars into Python numbers; other values must already be plain."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "u":
            obj = obj.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(x) for x in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _to_plain(v)) for k, v in obj.items())
    return obj


def convert_checkpoint(path: str | os.PathLike, trust: bool, convert_command: str) -> str:
    """Rewrite a checkpoint written before checkpoints were plain (numpy arrays in it) as
    :data:`CHECKPOINT_TYPES`, keeping the original as ``<name>.untrusted``. This *unpickles the file* (it may run
    code from it), so it needs ``trust=True``: the user's statement that the file comes from a trusted source.
    ``path`` is a checkpoint file or a run folder holding ``checkpoint.pt``. Returns a one-line report."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not trust:
        raise CheckpointError(f"converting {path} unpickles it, which runs any code the file names: pass --trust "
                              "only for a file from a trusted source")
    try:
        load_checkpoint(path, convert_command)
        return f"{path} is already plain (it loads with weights_only=True): nothing to do"
    except CheckpointError:
        pass
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # trusted by the caller's --trust
    except Exception as err:  # noqa: BLE001 - whatever the file raises, one line
        raise CheckpointError(f"{path} could not be read even trusted ({type(err).__name__}: {err})") from None
    plain = _to_plain(state)
    found = _unplain(plain, "state")
    if found is not None:
        raise CheckpointError(f"{path} cannot be converted: {found}, which is not one of {CHECKPOINT_TYPES}")
    backup = path.with_name(path.name + ".untrusted")
    atomic_write(backup, lambda tmp: tmp.write_bytes(path.read_bytes()))
    save_checkpoint(path, plain)
    load_checkpoint(path, convert_command)  # the converted file reads under weights_only=True
    return f"converted {path} (the original is kept as {backup})"


MIN_SEEDS_FOR_SE = 3
"""A standard error is reported only from this many seeds or more: from two, ``s/√2`` is itself too uncertain to
argue from (tables then give the mean alone, with the seed count beside it)."""


def mean_pm(mean: float, se: float, seeds: int, digits: int = 3) -> str:
    """``"m ± se"`` with ``digits`` decimals from :data:`MIN_SEEDS_FOR_SE` seeds on, the mean alone below — the one
    rule every table of the project writes a mean by."""
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if seeds >= MIN_SEEDS_FOR_SE else f"{mean:.{digits}f}"


def ratio_pm(a: tuple[float, float, int], b: tuple[float, float, int], digits: int = 2) -> str:
    r"""``"r ± s×"``: the ratio r = a/b of two means (each ``(mean, s.e., seeds)``, independent seeds) with its
    first-order standard error :math:`r\sqrt{(s_a/a)^2 + (s_b/b)^2}`, when both have :data:`MIN_SEEDS_FOR_SE` seeds;
    the bare ``"r×"`` otherwise, and "–" when b is 0."""
    if b[0] == 0:
        return "–"
    r = a[0] / b[0]
    if min(a[2], b[2]) < MIN_SEEDS_FOR_SE or a[0] == 0:
        return f"{r:.{digits}f}×"
    return f"{r:.{digits}f} ± {abs(r) * ((a[1] / a[0]) ** 2 + (b[1] / b[0]) ** 2) ** 0.5:.{digits}f}×"


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    r"""(mean, standard error of the mean) over seeds: :math:`\bar x` and :math:`s/\sqrt n` with the sample standard
    deviation :math:`s` (ddof 1); the standard error of a single value is 0."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("mean_se of no values")
    n = len(v)
    mean = math.fsum(v) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (n - 1) / n)


def max_row_difference(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], key: str) -> float:
    """Largest ``|a[i][key] − b[i][key]|`` over paired rows of two runs (a NaN in both counts as equal): how far two
    ways of computing the same runs (vectorized and sequential seeds, say) drifted apart."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        va, vb = float(ra[key]), float(rb[key])
        if not (math.isnan(va) and math.isnan(vb)):
            worst = max(worst, abs(va - vb))
    return worst


def changed_settings(saved: Mapping[str, Any], given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                     ignore: Iterable[str] = ()) -> list[str]:
    """The resume guard's comparison: the keys of ``given`` (but ``ignore``) whose value differs from ``saved``'s,
    sorted. A key ``saved`` lacks — a run from before that setting existed — counts as its value in ``defaults``."""
    defaults = defaults or {}
    skip = set(ignore)
    return sorted(k for k in given if k not in skip and given[k] != saved.get(k, defaults.get(k)))


def progress_bar(total: int, initial: int = 0, unit: str = "it", enabled: bool = True, desc: str | None = None):
    """A tqdm bar for long work (disabled: a bar that prints nothing), resuming at ``initial`` of ``total``."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True, desc=desc)


def tensorboard_writer(log_dir: str | os.PathLike):
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``--tensorboard`` (needs the ``tensorboard`` extra; the CSV
    rows stay the record)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'specopt[tensorboard]'") from e
    return SummaryWriter(log_dir=str(log_dir))


def log_scalars(writer, row: Mapping[str, Any], step: int) -> None:
    """Every finite number of a metrics ``row`` as a scalar at ``step`` (strings, booleans and NaNs are skipped),
    then flushed, so a dashboard shows the row as soon as the CSV has it."""
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            writer.add_scalar(key, value, step)
    writer.flush()


# --- the command line, generated from a config dataclass --------------------------------------------------------------
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def field_docs(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the dataclass ``cls``'s source (``name: type = default  # doc``): a field is
    documented once, beside its default, and ``--help`` shows that text."""
    source = inspect.getsource(cls)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^=\n]+=[^#\n]+#\s*(.*)$", source, re.M)}


def _kind(f: dataclasses.Field) -> tuple[type, bool] | None:
    """(element type, several values?) of a field typed ``int``, ``float | None``, ``tuple[int, ...]``,
    ``list[str]``, ...; None for a type no flag can carry (a dict)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    text = re.sub(r"\|None$", "", text.replace(" ", ""))
    if text in _SCALARS:
        return _SCALARS[text], False
    many = re.fullmatch(r"(?:tuple|list)\[(\w+)(?:,\.\.\.)?\]", text)
    if many and many.group(1) in _SCALARS:
        return _SCALARS[many.group(1)], True
    return None


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _nested(cls: type) -> dict[str, type]:
    """The fields of the dataclass ``cls`` whose type is itself a dataclass, with that type."""
    import typing

    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints.get(f.name))}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, names: Mapping[str, Sequence[str]] | None = None,
                     types: Mapping[str, Callable[[str], Any]] | None = None,
                     choices: Mapping[str, Sequence[str]] | None = None, skip: Iterable[str] = (),
                     required: Iterable[str] = (), _prefix: str = "") -> None:
    """One flag per field of the dataclass ``cls``: ``--field-name`` (or the spellings ``names[field]``), parsed as
    the field's type (``types[field]`` instead, e.g. a check that the value is positive), one or more values for a
    tuple or list, ``--x`` / ``--no-x`` for a boolean, help from the field's comment (:func:`field_docs`) and its
    default. Fields in ``skip`` (and those of a type no flag carries) get none. A field that is itself a dataclass
    gets its fields' flags, named with a dot (``--spectral.k`` for ``options.spectral.k``), in a group of its own.

    No flag has a default of its own: a flag that is not given is absent from the parsed namespace, so the defaults
    stay written once, in the dataclass, and the caller knows exactly what was set (:func:`given_fields`) — for a
    preset to fill the rest, and for a resumed run to refuse a changed setting."""
    names, types, choices = names or {}, types or {}, choices or {}
    docs, skip, required, nested = field_docs(cls), set(skip), set(required), _nested(cls)
    for f in dataclasses.fields(cls):
        if f.name in nested:
            if f.name not in skip:  # a group per inner dataclass (``spectral's options``), titled by its comment
                group = parser.add_argument_group(docs.get(f.name) or f.name) if _prefix else parser
                add_config_flags(group, nested[f.name], _prefix=f"{_prefix}{f.name}.")
            continue
        kind = _kind(f)
        if f.name in skip or kind is None:
            continue
        element, many = kind
        dest = _prefix + f.name
        spelled = dest.split(".", 1)[1] if _prefix else dest  # the outermost name is not spelled: options.spectral.k
        flags = list(names.get(f.name, ["--" + spelled.replace("_", "-")]))  # → --spectral.k
        doc = docs.get(f.name, "")
        default = _default(f)
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_ = doc if f.name in required or shown in ("", None) else f"{doc} (default {shown})"
        if f.name in choices:
            help_ += f"; one of: {', '.join(choices[f.name])}"
        if element is bool and not many:
            parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_)
            continue
        parser.add_argument(*flags, dest=dest, type=types.get(f.name, element), nargs="+" if many else None,
                            choices=choices.get(f.name), metavar=f.name.upper(),
                            default=argparse.SUPPRESS, required=f.name in required, help=help_)


def given_fields(cls: type, namespace: argparse.Namespace | Mapping[str, Any], _prefix: str = "") -> dict[str, Any]:
    """The fields of ``cls`` set on the command line (flags from :func:`add_config_flags`), with several values as
    the field's container type (a tuple where the field is a tuple); for a dataclass field, a dict of what was set
    inside it (``{"options": {"spectral": {"k": 4.0}}}``), absent if nothing was."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    given: dict[str, Any] = {}
    nested = _nested(cls)
    for f in dataclasses.fields(cls):
        key = _prefix + f.name
        if f.name in nested:
            inner = given_fields(nested[f.name], values, key + ".")
            if inner:
                given[f.name] = inner
        elif key in values:
            value = values[key]
            kind = _kind(f)
            if kind is not None and kind[1]:
                value = tuple(value) if "tuple" in str(f.type) else list(value)
            given[f.name] = value
    return given
