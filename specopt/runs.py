"""The sweep engine both experiment packages share: many runs, each in its own folder, in local processes or as Ray
tasks, each resumable (outside the optimizer's import path: ``import specopt`` does not load it).

A *job* is one run: a folder and the plain-dict config of a package's run, executed by a module-level function
``execute(config, threads)`` that runs or resumes the run in ``config["out"]`` (``continual.sweep.execute``,
``rl.sweep.execute``). Locally, jobs go to a pool of spawned processes (or this process, for one worker) that end
within a second of their driver's death. On Ray, a task runs the job in a temporary folder on its worker, seeded with
the run folder's files, and returns the folder's files as bytes, which the driver writes back atomically: results
come back from other machines, and a run begun on one machine resumes on another. A task whose worker dies is run
again :data:`RAY_RETRIES` times, each time from the files the driver holds.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .experiment import atomic_write

RAY_RETRIES = 3
"""How many times a Ray task whose worker process died (killed, out of memory, its machine lost) is run again; each
retry resumes the run from the files the driver holds (its last checkpoint that came back). An exception raised
by the run itself (a refused setting) is not retried."""
RAY_MISSING = 'the ray backend needs Ray: pip install "specopt[sweep]" (or pip install ray)'


@dataclass(frozen=True)
class Job:
    """One run of a sweep: its name (for messages), its config as a plain dict (``config["out"]`` is its folder),
    the ``"module:function"`` that executes it, and the file written last (the rows: a run is complete once it is)."""

    name: str
    config: dict[str, Any]
    execute: str
    rows_file: str


class RunFailed(RuntimeError):
    """A run of the sweep that failed where it ran (a crashed worker, retries exhausted); one line naming it."""


def call(execute: str, config: dict[str, Any], threads: int) -> Any:
    """``execute`` ("module:function") on ``config`` with ``threads`` torch threads."""
    import torch

    module, _, name = execute.partition(":")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return getattr(importlib.import_module(module), name)(config, threads)
    finally:
        torch.set_num_threads(previous)


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (not hidden), by its path relative to it."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def in_temp_folder(execute: str, config: dict[str, Any], files: dict[str, bytes], threads: int = 1
                   ) -> dict[str, bytes]:
    """A Ray task's body: write ``files`` (the run folder's, possibly none) into a temporary folder on this machine,
    run or resume the run there, and return the folder's files as bytes."""
    with tempfile.TemporaryDirectory(prefix="specopt-run-") as tmp:
        folder = Path(tmp) / "run"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        call(execute, dict(config, out=str(folder)), threads)
        return folder_files(folder)


def write_back(folder: Path, files: dict[str, bytes], rows_file: str) -> None:
    """Write a run's returned files into ``folder`` atomically (temporary file + rename), the rows files last, and
    every config.json with ``out`` pointing at ``folder`` (as the run writes it: an rl agent's config.json too names
    its run's folder) rather than the worker's temporary one."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: (Path(n).name == rows_file, n)):
        data = files[name]
        if Path(name).name == "config.json":
            config = json.loads(data)
            if "out" in config:  # the run's folder (an rl agent's config.json names its run's folder too)
                config["out"] = str(folder)
                data = json.dumps(config, indent=2).encode()
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / name, lambda tmp, data=data: tmp.write_bytes(data))


def _die_with_driver(driver: int) -> None:
    """A local pool worker's initializer: a daemon thread that ends the worker (``os._exit``) within a second of
    its driver's death, however the driver died (``kill -9`` included, when no clean-up of the driver runs), so that
    no orphan goes on with the queue. The run it was in keeps its last checkpoint (files are written whole)."""
    import threading

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-driver", daemon=True).start()


def run_local(jobs: Sequence[Job], workers: int, threads: int, done: Callable[[Job], None]) -> None:
    """Every job in a pool of ``workers`` spawned processes (one: in this process), ``done(job)`` as each ends. A
    failed run or Ctrl-C (or ``kill``) stops the others; what they finished is checkpointed."""
    if workers == 1:  # in this process: no start-up cost
        for job in jobs:
            call(job.execute, job.config, threads)
            done(job)
        return
    import multiprocessing
    import signal
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    def interrupt(signum, frame):  # `kill` the sweep → its workers stop too, as with Ctrl-C (no orphans)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # spawn, not fork: a forked child of a process that has used torch's thread pools (or CUDA) can hang.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_driver, initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(call, job.execute, job.config, threads): job for job in jobs}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = pending.pop(future)
                    future.result()
                    done(job)
        except BaseException:  # a failed run or Ctrl-C: stop now (every finished task is checkpointed)
            for future in pending:
                future.cancel()
            for process in (getattr(pool, "_processes", None) or {}).values():
                process.terminate()  # a worker would otherwise go on with the runs already handed to it
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def import_ray():
    """The ``ray`` module, or a one-line ``ValueError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    return ray


def run_ray(jobs: Sequence[Job], workers: int | None, threads: int, address: str | None,
            done: Callable[[Job], None], body: Callable[[dict, dict, int], dict[str, bytes]],
            refused: tuple[type[BaseException], ...] = (ValueError,), retries: int | None = None) -> None:
    """Every job as a Ray task (at most ``workers`` at once; a local Ray unless ``address``), ``done(job)`` as each
    one's files are written back. ``body(config, files, threads)`` is the task: the package's module-level call of
    :func:`in_temp_folder` with its ``execute``; an exception of a ``refused`` type raised by the run is a one-line
    ``ValueError`` naming it; a worker that dies ``retries`` (:data:`RAY_RETRIES`) + 1 times is a :class:`RunFailed`."""
    ray = import_ray()
    retries = RAY_RETRIES if retries is None else retries
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        started = True
    pending: dict[Any, Job] = {}
    try:
        remote = ray.remote(body)
        queue = list(jobs)
        while queue or pending:
            while queue and (workers is None or len(pending) < workers):
                job = queue.pop(0)
                gpus = 1 if str(job.config.get("device", "cpu")).startswith("cuda") else 0
                task = remote.options(num_cpus=1, num_gpus=gpus, max_retries=retries, retry_exceptions=False)
                ref = task.remote(job.config, folder_files(Path(job.config["out"])), threads)
                pending[ref] = job
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    files = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None) or err
                    message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
                    if isinstance(cause, refused):  # a setting the worker refused (e.g. no dataset)
                        raise ValueError(f"{job.name} on its Ray worker: {message}") from None
                    raise RunFailed(f"{job.name} failed on its Ray worker ({type(cause).__name__}: {message})"
                                    ) from None
                except ray.exceptions.RayError as err:  # its worker died retries + 1 times, or Ray lost it
                    raise RunFailed(f"{job.name}: its Ray worker died {retries + 1} times "
                                    f"({type(err).__name__}); its finished tasks are in {job.config['out']}: run "
                                    "the same sweep again to resume it") from None
                write_back(Path(job.config["out"]), files, job.rows_file)
                done(job)
    except BaseException:  # a failed run or Ctrl-C: cancel the others (their finished tasks come back next time)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


__all__ = ["Job", "RAY_RETRIES", "RunFailed", "folder_files", "import_ray", "in_temp_folder", "run_local", "run_ray",
           "write_back"]
