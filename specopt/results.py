"""Runs as they are committed: a folder's finished run folders packed into one rows file (``python -m continual
pack``, ``python -m rl pack``), and the readers that see packed and unpacked runs alike.

A packed folder holds :data:`PACKED_ROWS` (every packed run's rows, a first column ``run`` naming the run folder
they came from) and :data:`PACKED_RUNS` (one JSON line per run: ``run``, the ``columns`` of its rows file, its
``config`` — config.json with its provenance) instead of one sub-folder per run. Every reader of run folders in
``continual``, ``rl`` and the report scripts goes through :func:`run_configs` and :func:`run_rows`, so a sweep's
resume, its summary, the plots and the generated tables read a packed run exactly as its folder. Like
:mod:`specopt.experiment`, outside the optimizer's import path.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .experiment import claim_folder, read_csv, write_csv, write_text

__all__ = ["PACKED_ROWS", "PACKED_RUNS", "RUN_ROWS", "pack_runs", "pack_tree", "packed_runs", "rename_packed",
           "run_configs", "run_name", "run_rows"]


RUN_ROWS = "results.csv"  # a run folder's rows, continual's and rl's alike: one row per task / evaluation
PACKED_ROWS = "rows.csv"
PACKED_RUNS = "runs.jsonl"

_PACK_FILES = ("config.json", "checkpoint.pt")  # besides the rows file: what a packed run folder may hold


def run_name(mitigator: str, strength: float | None, seed: int) -> str:
    """A run folder's name, in both packages: ``<mitigator>-s<strength>-seed<seed>`` (``s`` the strength, printed
    with ``:g``), or ``<mitigator>-seed<seed>`` where the name need not carry a strength (a mitigator without one;
    an rl run with no ``--strengths`` grid, whose config.json holds the strength)."""
    return f"{mitigator}-seed{seed}" if strength is None else f"{mitigator}-s{strength:g}-seed{seed}"


def _pack_entries(folder: Path) -> list[dict[str, Any]]:
    """The lines of ``folder``'s :data:`PACKED_RUNS` (``[]`` when there is none); a damaged one is a one-line
    ``ValueError``."""
    try:
        lines = (folder / PACKED_RUNS).read_text().splitlines()
    except FileNotFoundError:
        return []
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        raise ValueError(f"{folder / PACKED_RUNS} is damaged (not the lines pack writes): restore it from "
                         "git") from None


def _write_pack(folder: Path, rows: list[dict[str, Any]], header: list[str], entries: list[dict[str, Any]]) -> None:
    """Write ``folder``'s :data:`PACKED_ROWS` and :data:`PACKED_RUNS` (each atomically)."""
    write_csv(folder / PACKED_ROWS, rows, header)
    write_text(folder / PACKED_RUNS, "".join(json.dumps(e, sort_keys=False) + "\n" for e in entries))


def packed_runs(folder: str | os.PathLike) -> dict[str, tuple[dict[str, Any], list[dict[str, str]]]]:
    """The runs packed into ``folder`` (:func:`pack_runs`) as {run folder name: (its config.json, its rows as
    strings, as :func:`read_csv` reads its rows file)}; ``{}`` when nothing is packed there."""
    folder = Path(folder)
    entries = _pack_entries(folder)
    if not entries:
        return {}
    rows: dict[str, list[dict[str, str]]] = {}
    for row in read_csv(folder / PACKED_ROWS):
        rows.setdefault(row["run"], []).append(row)
    return {e["run"]: (e["config"], [{c: r[c] for c in e["columns"]} for r in rows.get(e["run"], [])])
            for e in entries}


def pack_runs(folder: str | os.PathLike, rows_file: str,
              finished: Callable[[dict[str, Any], list[dict[str, str]]], bool]) -> list[str]:
    """Pack every finished run folder directly below ``folder`` — a sub-folder with a config.json and a ``rows_file``
    for which ``finished(config, rows)`` holds — into ``folder``'s :data:`PACKED_ROWS` and :data:`PACKED_RUNS`
    (added to what is packed there already), then remove those run folders' files (config.json, the rows file, the
    checkpoint; a folder holding anything else keeps it). Unfinished runs are left as they are, so a packed sweep
    still resumes. The pack is written (atomically) before any run folder is removed. Returns the names packed;
    a run already packed under the same name is a one-line ``ValueError``."""
    folder = Path(folder)
    packed = packed_runs(folder)
    new: dict[str, tuple[dict[str, Any], list[dict[str, str]], list[str]]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not ((sub / "config.json").is_file() and (sub / rows_file).is_file()):
            continue
        try:
            config, rows = json.loads((sub / "config.json").read_text()), read_csv(sub / rows_file)
        except ValueError:
            raise ValueError(f"{sub / 'config.json'} is not valid JSON: fix or remove that run folder, then pack "
                             "again") from None
        if not finished(config, rows):
            continue
        if sub.name in packed:
            raise ValueError(f"{sub} is packed in {folder / PACKED_RUNS} already: remove one of the two")
        with open(sub / rows_file, newline="") as f:
            columns = next(csv.reader(f))
        new[sub.name] = (config, rows, columns)
    if not new:
        return []
    entries = _pack_entries(folder)
    all_rows = [{"run": name, **r} for name, (_, rows) in packed.items() for r in rows]
    entries += [{"run": name, "columns": columns, "config": config} for name, (config, _, columns) in new.items()]
    all_rows += [{"run": name, **r} for name, (_, rows, _) in new.items() for r in rows]
    header = ["run", *dict.fromkeys(c for e in entries for c in e["columns"])]
    _write_pack(folder, all_rows, header, entries)
    for name in new:
        for file in (*_PACK_FILES, rows_file):
            (folder / name / file).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (folder / name).rmdir()  # only if nothing else is left in it
    return list(new)


def rename_packed(folder: str | os.PathLike, names: dict[str, str]) -> None:
    """Rename runs packed in ``folder`` (old name → new name), in its :data:`PACKED_ROWS` ``run`` column and its
    :data:`PACKED_RUNS` entries alike; rows, columns and configs stay as they are."""
    folder = Path(folder)
    packed = packed_runs(folder)  # read whole before anything is rewritten
    with open(folder / PACKED_ROWS, newline="") as f:
        header = next(csv.reader(f))
    entries = [{**e, "run": names.get(e["run"], e["run"])} for e in _pack_entries(folder)]
    rows = [{"run": names.get(name, name), **r} for name, (_, rs) in packed.items() for r in rs]
    _write_pack(folder, rows, header, entries)


def pack_tree(root: str | os.PathLike, rows_file: str,
              finished: Callable[[dict[str, Any], list[dict[str, str]]], bool], kind: str) -> list[str]:
    """:func:`pack_runs` on every folder at or below ``root`` that holds run folders (a sub-folder with a config.json
    and a ``rows_file``), each claimed as a ``kind`` folder first (:func:`claim_folder`: one another process is
    writing is refused in one line). Returns the packed runs' paths. The ``pack`` command of both packages."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: give a sweep's or run's --out, or a folder of them")
    holders = sorted({p.parent.parent for p in root.rglob(rows_file) if (p.parent / "config.json").is_file()
                      and p.parent != root})
    packed: list[str] = []
    for folder in holders:
        with claim_folder(folder, kind):
            packed += [str(folder / name) for name in pack_runs(folder, rows_file, finished)]
    return packed


def run_rows(folder: str | os.PathLike, rows_file: str) -> list[dict[str, str]]:
    """The rows of the run in ``folder``: its ``rows_file``, or where it is packed (:func:`pack_runs`: the parent's
    pack, under the folder's name); ``[]`` when there are none."""
    folder = Path(folder)
    if (folder / rows_file).is_file():
        return read_csv(folder / rows_file)
    packed = packed_runs(folder.parent).get(folder.name)
    return packed[1] if packed else []


def run_configs(root: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(run folder, its config.json) of every run under ``root``, in sorted order: the run folders' config.json
    files and every pack's entries (:func:`pack_runs`; a packed run's folder need not exist). A run present both
    ways is taken from its folder."""
    root = Path(root)
    found: dict[Path, dict[str, Any]] = {}
    for path in root.rglob("config.json"):
        found[path.parent] = json.loads(path.read_text())
    for pack in root.rglob(PACKED_RUNS):
        for name, (config, _) in packed_runs(pack.parent).items():
            found.setdefault(pack.parent / name, config)
    if not found and root.name:  # ``root`` itself a run packed in its parent
        packed = packed_runs(root.parent).get(root.name)
        if packed is not None:
            found[root] = packed[0]
    yield from sorted(found.items(), key=lambda kv: str(kv[0]))
