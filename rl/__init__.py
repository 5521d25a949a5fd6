"""High-replay-ratio SAC on the DeepMind Control Suite with loss-of-plasticity mitigators (Lewandowski et al.,
ICLR 2025, Section 5.4): ``none`` (SAC + LayerNorm), ``resets``, ``spectral`` (specopt.SpectralAdam), ``l2``,
``l2-init``.

    python -m rl train --env cheetah-run --mitigator spectral --steps 100000 --seed 0 --out runs/NAME
    python -m rl plot runs/A runs/B -o fig.png

See docs/rl.md.
"""

from .config import MITIGATORS, PAPER7_ENVS, Config

__all__ = ["Config", "MITIGATORS", "PAPER7_ENVS"]
