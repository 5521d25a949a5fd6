r"""Optimizers with the decoupled spectral-regularization step.

:class:`SpectralAdam` is ``torch.optim.Adam`` (same moment update, same foreach/fused/capturable kernels) followed by
the decoupled spectral step; :class:`Spectral` adds the same step to any ``torch.optim.Optimizer``.

.. math::
    \theta_{t+1} = \mathrm{base}(\theta_t, g_t) - \eta\,\lambda\,\nabla R(\theta_t),\qquad
    R = \sum_{W}(\sigma_1(W)^k - 1)^2 + \sum_b \lVert b\rVert_2^{2k} + \sum_\gamma\sum_i(\gamma_i - 1)^2

with η the group's learning rate and λ its ``spectral_strength``. See :mod:`specopt.functional` for ∇R.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Adam, Optimizer

from . import functional as F

DEFAULT_STRENGTH = 1.0
"""Decoupled strength λ (per unit learning rate). Chosen by the sweep in docs/strength.md: on Fashion-MNIST with
random labels, λ=1 with Adam at lr 1e-3 sustains trainability; the paper's coupled λ=1e-4 is on another scale."""

DEFAULT_INIT_ITERATIONS = 16
"""Power iterations on a tensor's first step (later steps use ``power_iterations``, warm-started)."""


def _spectral_defaults(strength: float, k: float, power_iterations: int) -> dict[str, Any]:
    F.check_hyperparameters(strength, k, power_iterations)
    return {"role": "auto", "spectral_strength": strength, "k": k, "power_iterations": power_iterations}


class SpectralAdam(Adam):
    r"""Adam with decoupled spectral regularization (Lewandowski et al., ICLR 2025).

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        \theta_{t+1} &= \theta_t - \eta\,\hat m_t/(\sqrt{\hat v_t}+\epsilon) - \eta\,\lambda\,\nabla R(\theta_t)

    The Adam part *is* ``torch.optim.Adam`` (with ``decoupled_weight_decay=True`` by default, i.e. AdamW's weight
    decay when ``weight_decay > 0``); with ``spectral_strength=0`` the two are identical.

    Args:
        params: parameters or groups; :func:`specopt.param_groups` tags roles (matrix/bias/scale/none). A group
            without a ``role`` uses ``"auto"``: tensors with ≥ 2 dims are matrices, others are not regularized.
        spectral_strength: λ, decoupled and multiplied by the group's lr (default :data:`DEFAULT_STRENGTH`).
        k: exponent of the regularizer (the paper uses 2).
        power_iterations: power iterations per step, warm-started from the previous step's vectors.
        init_iterations: iterations on a tensor's first step.
        Other arguments are ``torch.optim.Adam``'s. Per-group keys ``role``, ``spectral_strength``, ``k`` and
        ``power_iterations`` override the defaults.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        spectral_strength: float = DEFAULT_STRENGTH,
        k: float = 2,
        power_iterations: int = 1,
        *,
        init_iterations: int = DEFAULT_INIT_ITERATIONS,
        decoupled_weight_decay: bool = True,
        amsgrad: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        spectral = _spectral_defaults(spectral_strength, k, power_iterations)
        self._init_iterations = init_iterations
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self.defaults.update(spectral)
        for group in self.param_groups:
            F.fill_group_defaults(group, self.defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if "spectral_strength" in self.defaults:  # not during Adam.__init__
            F.fill_group_defaults(self.param_groups[-1], self.defaults)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Adam's step, then the decoupled spectral step. Returns the closure's loss, if any."""
        pending = F.prepare(self.param_groups, self.state, self.defaults, closure is None, self._init_iterations)
        loss = _unhooked(Adam.step)(self, closure)
        F.apply(pending, self.state, getattr(self, "found_inf", None))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load Adam's state and the float32 power-iteration vectors."""
        rest, spectral = F.split_spectral_state(state_dict)
        super().load_state_dict(rest)
        F.restore_spectral_state(state_dict["param_groups"], self.param_groups, self.state, spectral)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_init_iterations", DEFAULT_INIT_ITERATIONS)


def _unhooked(step: Callable) -> Callable:
    """``Optimizer.step`` without torch's profiling/hook wrapper, so user hooks run once, on the outer step."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


class Spectral(Optimizer):
    r"""Adds the decoupled spectral step to any ``torch.optim.Optimizer``.

    .. math:: \theta_{t+1} = \mathrm{base}(\theta_t, g_t) - \eta\,\lambda\,\nabla R(\theta_t)

    ``Spectral(torch.optim.SGD(params, lr))`` takes exactly one SGD step on :math:`J + \lambda R`.
    The wrapper shares ``param_groups`` and ``state`` with the wrapped optimizer (so LR schedulers, GradScaler and
    checkpointing see one optimizer); the power-iteration vectors live in that per-parameter state.

    Args:
        optimizer: the base optimizer instance (SGD, AdamW, RMSprop, Adagrad, ...).
        strength: λ, decoupled and multiplied by each group's lr (default :data:`DEFAULT_STRENGTH`).
        k, power_iterations, init_iterations: as in :class:`SpectralAdam`.
    """

    _step_supports_amp_scaling = False  # GradScaler unscales and checks for infs before calling step

    def __init__(
        self,
        optimizer: Optimizer,
        strength: float = DEFAULT_STRENGTH,
        k: float = 2,
        power_iterations: int = 1,
        *,
        init_iterations: int = DEFAULT_INIT_ITERATIONS,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Spectral wraps a torch.optim.Optimizer instance, got {type(optimizer).__name__}")
        if isinstance(optimizer, (Spectral, SpectralAdam)):
            raise TypeError(f"{type(optimizer).__name__} already takes the spectral step; do not wrap it again")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError(
                "LBFGS cannot take a decoupled step (it invalidates its curvature pairs); add "
                "strength * specopt.spectral_penalty(model) to the loss instead"
            )
        self.optimizer = optimizer
        self._spectral_defaults = _spectral_defaults(strength, k, power_iterations)
        self._init_iterations = init_iterations
        for group in optimizer.param_groups:
            F.fill_group_defaults(group, self._spectral_defaults)
        self._init_hooks()

    def _init_hooks(self) -> None:
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    # The wrapped optimizer owns groups, state and defaults; properties keep them shared even after it
    # replaces its lists (load_state_dict does).
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return {**self.optimizer.defaults, **self._spectral_defaults}

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """The wrapped optimizer's step, then the decoupled spectral step. Returns the closure's loss, if any."""
        pending = F.prepare(
            self.param_groups, self.state, self._spectral_defaults, closure is None, self._init_iterations
        )
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        F.apply(pending, self.state, getattr(self, "found_inf", None))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        F.fill_group_defaults(param_group, self._spectral_defaults)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict`` (its state holds the power-iteration vectors)."""
        sd = self.optimizer.state_dict()
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, sd)
            sd = out if out is not None else sd
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = hook(self, state_dict)
            state_dict = out if out is not None else state_dict
        rest, spectral = F.split_spectral_state(state_dict)
        self.optimizer.load_state_dict(rest)
        F.restore_spectral_state(state_dict["param_groups"], self.param_groups, self.state, spectral)
        for group in self.param_groups:
            F.fill_group_defaults(group, self._spectral_defaults)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "_spectral_defaults": self._spectral_defaults,
            "_init_iterations": self._init_iterations,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_hooks()

    def __repr__(self) -> str:
        s = self._spectral_defaults
        return (
            f"Spectral(strength={s['spectral_strength']}, k={s['k']}, power_iterations={s['power_iterations']})"
            f" over {self.optimizer!r}"
        )
