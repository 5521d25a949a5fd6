"""continual — the paper's continual supervised benchmarks, baselines and plasticity diagnostics.

``python -m continual run|plot|demo``; see docs/continual.md. Imports run one way: continual → specopt.
"""

from .data import DATASETS, Dataset, load_dataset
from .models import MODELS, build_model
from .runner import COLUMNS, RunConfig, run_experiment
from .streams import NONSTATIONARITIES, make_task

__all__ = ["COLUMNS", "DATASETS", "Dataset", "MODELS", "NONSTATIONARITIES", "RunConfig", "build_model",
           "load_dataset", "make_task", "run_experiment"]
