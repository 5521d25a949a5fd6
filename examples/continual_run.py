"""A continual supervised run through the Python API: scikit-learn's 8×8 digits with random labels, a new labelling
every task, Adam against Adam + spectral regularization, trainability at each task's end.

    python examples/continual_run.py            # 10 tasks × 10 epochs, about a minute on one core
    python examples/continual_run.py --tiny     # 2 tasks × 1 epoch (what CI runs)
"""

import sys
import tempfile

import continual

tiny = "--tiny" in sys.argv
with tempfile.TemporaryDirectory() as out:
    cfg = continual.RunConfig(dataset="digits", nonstationarity="random-labels", model="mlp", mitigators=["none", "spectral"],
                    seeds=[0], tasks=2 if tiny else 10, epochs=1 if tiny else 10, out=out)
    rows = continual.run(cfg, progress=not tiny)  # one row per (mitigator, seed, task), as results.csv holds

for mitigator in cfg.mitigators:
    accuracy = [r["train_accuracy"] for r in rows if r["mitigator"] == mitigator]
    print(f"{mitigator:>9}: train accuracy at each task's end " + " ".join(f"{a:.2f}" for a in accuracy))
