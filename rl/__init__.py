"""High-replay-ratio SAC on the DeepMind Control Suite with loss-of-plasticity mitigators (Lewandowski et al.,
ICLR 2025, Section 5.4): ``none`` (SAC + LayerNorm), ``resets``, ``spectral`` (specopt.SpectralAdam), ``l2``,
``l2-init``.

    python -m rl train --env cheetah-run --mitigator spectral --steps 100000 --seed 0 --out runs/NAME
    python -m rl report runs/A runs/B --out runs/report   # the table, report.md/.json, returns.png

From Python: ``rows = rl.run(rl.Config(env="cheetah-run", mitigators=("none", "spectral"), out="runs/x"))``.
See docs/rl.md.
"""

from __future__ import annotations

from .config import MITIGATORS, PAPER7_ENVS, Config


def run(cfg: Config, resume: bool = False) -> list[dict[str, str]]:
    """Train (with ``resume``, continue) every agent of the finished ``cfg`` in ``cfg.out``, as ``python -m rl
    train`` does; returns every agent's metrics rows, as their results.csv files hold them
    (:func:`rl.train.train`)."""
    from .train import train  # dm_control loads here, not on ``import rl``

    return train(cfg, resume=resume)


__all__ = ["Config", "MITIGATORS", "PAPER7_ENVS", "run"]
