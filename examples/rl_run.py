"""An RL run through the Python API: SAC + LayerNorm (`none`) and spectral regularization on cheetah-run, two seeds
each, all four agents trained together in one process; then the per-agent rows and a figure. Spectral runs at
the package's drop-in strength (`specopt.DEFAULT_STRENGTH`); pass `spectral_strength=specopt.CONTINUAL_STRENGTH` to
`Config` for the paper's setting (docs/strength.md).

    python examples/rl_run.py             # 20k env steps at replay ratio 1 (tens of minutes on one core)
    python examples/rl_run.py --tiny      # 250 env steps on 125-step episodes (what CI runs)
"""

import sys
import tempfile
from pathlib import Path

import rl
from rl.plot import plot

tiny = "--tiny" in sys.argv
size = (dict(steps=250, action_repeat=8, warmup_steps=50, eval_interval=125, eval_episodes=1, hidden=32,
             batch_size=32, buffer_size=1000, env_workers=0) if tiny
        else dict(steps=20_000, warmup_steps=5_000, eval_interval=5_000, eval_episodes=5))
with tempfile.TemporaryDirectory() as out:
    cfg = rl.Config(env="cheetah-run", mitigators=("none", "spectral"), seeds=(0, 1), replay_ratio=1, out=out,
                    progress=not tiny, **size)
    rows = rl.run(cfg)  # every agent's metrics rows, as <out>/<mitigator>-seed<seed>/results.csv holds them
    for agent in cfg.agents:
        last = [r for r in rows if r["mitigator"] == agent.mitigator and int(r["seed"]) == agent.seed][-1]
        print(f"{agent.mitigator:>9} seed {agent.seed}: eval return {float(last['eval_return_mean']):.1f} at step {last['step']}, "
              f"critic σ1 mean {float(last['sigma1_critic_mean']):.2f}")
    print(plot([out], str(Path(out) / "fig.png")))  # the markdown table; the figure lives in the run directory
