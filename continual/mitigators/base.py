r"""The :class:`Mitigator` interface and the shared shape of parameter regularizers.

A mitigator owns the optimizer and hooks into the task-agnostic training loop at two points::

    opt = mit.optimizer
    opt.zero_grad()
    loss = CE(model(x), y)
    pen = mit.penalty(model)            # coupled loss term, or None
    if pen is not None:
        loss = loss + pen
    loss.backward()
    opt.step()
    mit.after_step(step, x)             # decoupled / periodic operations (grads still present)

``mit.state_dict()`` holds the mitigator's *own* state (anchors, running statistics, its random generator); the
optimizer's state is checkpointed separately with ``mit.optimizer.state_dict()``. Both are needed for exact resume.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .options import Decoupled


def default_seed() -> int:
    """A seed for the mitigator's own generator derived from torch's seed, without consuming global randomness.

    After ``torch.manual_seed(s)`` this is a fixed function of ``s``, so runs are reproducible while the
    mitigator's draws (noise, re-initialisations) never shift the data order or model init of the run.
    """
    return (torch.initial_seed() * 1_000_003 + 0x5EED) % (2**63 - 1)


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class Mitigator:
    """No mitigation: ``torch.optim.Adam(model.parameters(), lr)``, no penalty, nothing after the step.

    Subclasses override :meth:`build_optimizer`, :meth:`penalty`, :meth:`after_step` and the extra-state pair
    :meth:`_extra_state` / :meth:`_load_extra_state`.

    Attributes:
        name: the registry name (see :data:`continual.mitigators.MITIGATORS`).
        strength: the mitigator's strength (its meaning is per mitigator; 0 where unused).
        optimizer: the optimizer the runner steps.
        generator: ``torch.Generator`` on the parameters' device, the only source of the mitigator's randomness.
    """

    name = "none"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, seed: int | None = None) -> None:
        if not (isinstance(strength, (int, float)) and strength >= 0.0 and strength < float("inf")):
            raise ValueError(f"{self.name}: strength must be a finite number >= 0, got {strength!r}")
        self.model = model
        self.lr = float(lr)
        self.strength = float(strength)
        self.named_params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self.generator = torch.Generator(device=_device(model))
        self.generator.manual_seed(default_seed() if seed is None else int(seed))
        self.optimizer: torch.optim.Optimizer = self.build_optimizer(model, lr)

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=lr)

    def penalty(self, model: nn.Module) -> Tensor | None:
        """The coupled term added to the loss before ``backward`` (None: nothing to add)."""
        return None

    def after_step(self, step: int, x: Tensor) -> None:
        """Called after ``optimizer.step()`` with the global step index and the batch inputs."""

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The mitigator's own state (not the optimizer's): name, strength, generator state, extras."""
        return {
            "name": self.name,
            "strength": self.strength,
            "generator": self.generator.get_state(),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state_dict is for mitigator {state.get('name')!r}, not {self.name!r}")
        self.strength = float(state["strength"])
        self.generator.set_state(state["generator"].cpu())
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, strength={self.strength:g})"


def clone_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {n: t.detach().clone() for n, t in tensors.items()}


def load_tensors(dst: dict[str, Tensor], src: dict[str, Tensor]) -> None:
    """Copy ``src`` into the (same-named, same-shaped) tensors of ``dst`` in place."""
    if set(dst) != set(src):
        raise ValueError(f"state tensors do not match the model's parameters: {sorted(set(dst) ^ set(src))[:5]}")
    for n, t in src.items():
        dst[n].copy_(t.to(dst[n].device, dst[n].dtype))


class ParameterRegularizer(Mitigator):
    r"""A data-independent regularizer :math:`R(\theta) = \sum_p r_p(\theta_p)` in one of two forms.

    * coupled (default, as in the paper): ``penalty`` returns :math:`\lambda R(\theta)`, added to the loss;
    * decoupled (``decoupled=True``): ``penalty`` returns None and after Adam's step
      :math:`\theta_p \leftarrow \theta_p - \eta\,\lambda\,\nabla r_p(\theta_p)` — the same shape as
      :class:`specopt.SpectralAdam`'s spectral step (η the learning rate; ∇r evaluated at the post-step weights).

    Subclasses define :meth:`term` (differentiable :math:`r_p`) and :meth:`direction` (:math:`\nabla r_p`).
    """

    def __init__(self, model: nn.Module, lr: float, strength: float, *, decoupled: bool = Decoupled.decoupled,
                 seed: int | None = None) -> None:
        self.decoupled = bool(decoupled)
        super().__init__(model, lr, strength, seed=seed)

    def term(self, name: str, p: Tensor) -> Tensor:
        raise NotImplementedError

    def direction(self, name: str, p: Tensor) -> Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self.decoupled or self.strength == 0.0:
            return None
        return self.strength * torch.stack([self.term(n, p) for n, p in self.named_params.items()]).sum()

    @torch.no_grad()
    def after_step(self, step: int, x: Tensor) -> None:
        if not self.decoupled or self.strength == 0.0:
            return
        scale = self.lr * self.strength
        for n, p in self.named_params.items():
            p.sub_(self.direction(n, p), alpha=scale)

    def __repr__(self) -> str:
        form = "decoupled" if self.decoupled else "coupled"
        return f"{type(self).__name__}(name={self.name!r}, strength={self.strength:g}, {form})"
