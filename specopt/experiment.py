"""The run skeleton the two experiment packages share: files written whole, CSV rows, mean ± standard error over
seeds, the resume guard's comparison and the progress bar — each written once.

It ships in the ``specopt`` distribution so that ``continual`` and ``rl`` can both import it while imports still run
one way (``continual`` → ``specopt``, ``rl`` → ``specopt``; neither experiment package imports the other). The
optimizer never imports it, and ``import specopt`` does not load it.

Every file a run writes goes through :func:`atomic_write` (a temporary file beside the target, then
``os.replace``), so a reader — a plot made while runs go on, a resumed run after a kill — never sees half a file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["append_csv", "atomic_write", "changed_settings", "log_scalars", "mean_se", "progress_bar", "read_csv",
           "save_figure", "tensorboard_writer", "write_csv", "write_json", "write_text"]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a hidden temporary file beside it, which is then
    renamed over ``path`` (atomic on POSIX and Windows within one file system)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no temporary file behind


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON (a config.json), written atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    """``rows`` as a CSV file with a header, written atomically; ``columns`` default to the first row's keys (an
    empty file when there are no rows and no columns)."""
    fieldnames = list(columns) if columns is not None else list(rows[0]) if rows else []

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            if fieldnames:
                w = csv.DictWriter(f, fieldnames=fieldnames)
                w.writeheader()
                w.writerows(rows)

    atomic_write(path, write)


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
