"""continual — the paper's continual supervised benchmarks, baselines and plasticity diagnostics.

``python -m continual run|sweep|study|report|plot|demo``; see docs/continual.md. From Python::

    rows = continual.run(continual.RunConfig(mitigators=["none", "spectral"], tasks=10, out="runs/x"))
    summary = continual.run_sweep(continual.RunConfig(mitigators=["l2"], seeds=[0, 1], out="runs/sw"),
                                  strengths=[1e-4, 1e-3])

Imports run one way: continual → specopt.
"""

from .config import RunConfig
from .data import DATASETS, Dataset, load_dataset
from .models import MODELS, build_model
from .runner import COLUMNS, run, run_experiment
from .streams import NONSTATIONARITIES, make_task
from .sweep import sweep as run_sweep

__all__ = ["COLUMNS", "DATASETS", "Dataset", "MODELS", "NONSTATIONARITIES", "RunConfig", "build_model",
           "load_dataset", "make_task", "run", "run_experiment", "run_sweep"]
