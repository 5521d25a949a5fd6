r"""Optimizers with the decoupled spectral-regularization step.

:class:`SpectralAdam` is ``torch.optim.Adam`` and :class:`SpectralAdamW` is ``torch.optim.AdamW`` (same arguments,
same moment update, same foreach/fused/capturable kernels), each followed by the decoupled spectral step;
:class:`Spectral` adds the same step to any ``torch.optim.Optimizer``.

.. math::
    \theta_{t+1} = \mathrm{base}(\theta_t, g_t) - \eta\,\lambda\,\nabla R(\theta_t),\qquad
    R = \sum_{W}(\sigma_1(W)^k - 1)^2 + \sum_b \lVert b\rVert_2^{2k} + \sum_\gamma\sum_i(\gamma_i - 1)^2

with η the group's learning rate and λ the ``strength`` (per group: the key ``spectral_strength``). See
:mod:`specopt.functional` for ∇R.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Adam, Optimizer
from torch.optim.adam import adam

from . import functional as F

DEFAULT_STRENGTH = 0.001
"""The drop-in strength: decoupled λ (per unit learning rate) of ``SpectralAdam`` and ``Spectral`` unless told
otherwise. The strongest λ measured that does ordinary training no measurable harm (docs/strength.md: SAC as
people run it and a supervised task, against plain Adam), while still keeping part of the plasticity plain Adam
loses. Continual learning that must stay trainable over many tasks wants :data:`CONTINUAL_STRENGTH`."""

CONTINUAL_STRENGTH = 1.0
"""The continual-learning strength: λ that keeps plasticity on the paper's hardest small benchmark (Fashion-MNIST
with a new random labelling every task: the last of 30 tasks fit better than the first, on every seed, with and
without LayerNorm), at a measured cost to ordinary training (0.8 points of supervised test accuracy; SAC without
LayerNorm 0.5–0.6× Adam's return) — docs/strength.md. The ``continual`` benchmarks use it for ``spectral``. The
paper's coupled λ = 1e-4 under Adam is on another scale (≈ this λ, docs/strength.md)."""

DEFAULT_INIT_ITERATIONS = 16
"""Power iterations on a tensor's first step (later steps use ``power_iterations``, warm-started)."""


_WARNED_ALIASES: set[str] = set()


def resolve_strength(owner: str, strength: Any, spectral_strength: Any) -> Any:
    """``strength``, or the deprecated ``spectral_strength=`` keyword (a ``FutureWarning``, once per class)."""
    if spectral_strength is None:
        return strength
    if strength is not DEFAULT_STRENGTH:  # the default object itself unless the caller passed strength= too
        raise ValueError(f"{owner} got both strength= and its deprecated alias spectral_strength=; pass strength= only")
    if owner not in _WARNED_ALIASES:
        _WARNED_ALIASES.add(owner)
        warnings.warn(f"{owner}(spectral_strength=...) is deprecated; use strength=... (the same λ)", FutureWarning,
                      stacklevel=3)
    return spectral_strength


def _spectral_defaults(strength: float, k: float, power_iterations: int, init_iterations: int,
                       fused_spectral: bool = False, pull: str = "two-sided",
                       precondition: bool = False) -> dict[str, Any]:
    F.check_hyperparameters(strength, k, power_iterations, init_iterations)
    F.check_form(pull, precondition)
    if not isinstance(fused_spectral, bool):
        raise ValueError(f"fused_spectral must be True or False, got {fused_spectral!r}")
    return {"role": "auto", "spectral_strength": strength, "k": k, "power_iterations": power_iterations,
            "init_iterations": init_iterations, "fused_spectral": fused_spectral, "spectral_pull": pull,
            "spectral_precondition": precondition}


class _SpectralStep:
    """The decoupled spectral step attached to an optimizer through torch.optim's public hooks.

    A step pre-hook computes ∇R at the pre-step weights (:func:`specopt.functional.prepare`), a step post-hook
    applies it after the base update (:func:`specopt.functional.apply`); a ``load_state_dict`` pre/post-hook pair
    keeps the power-iteration vectors float32 (``Optimizer.load_state_dict`` casts state to the parameter dtype) and
    gives the groups of another optimizer's state (``torch.optim.Adam``, SGD) the current roles and spectral
    settings (:func:`specopt.functional.carry_group_settings`; its state has no vectors, so they start fresh).
    Hooks registered first run first, so user pre-hooks run after ``prepare`` and user post-hooks see the final
    weights.
    """

    def __init__(self, optimizer: Optimizer, defaults: dict[str, Any], step_hooks: bool = True) -> None:
        self.defaults = defaults
        self.pending: F.Pending | None = None
        self.loading: tuple[list[dict], dict] | None = None
        if step_hooks:  # SpectralAdam takes the step in its own step(); Spectral(optimizer) through these hooks
            optimizer.register_step_pre_hook(self.prepare)
            optimizer.register_step_post_hook(self.apply)
        optimizer.register_load_state_dict_pre_hook(self.split)
        optimizer.register_load_state_dict_post_hook(self.restore)
        optimizer._specopt = self  # marks the optimizer as taking the spectral step

    def prepare(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer itself
        self.pending = F.prepare(optimizer.param_groups, optimizer.state, self.defaults, closure is None)

    def apply(self, optimizer: Optimizer, args: tuple, kwargs: dict) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            F.apply(pending, optimizer.state, getattr(optimizer, "found_inf", None))

    def split(self, optimizer: Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        rest, spectral = F.split_spectral_state(state_dict)
        self.loading = (state_dict["param_groups"], spectral)
        # another optimizer's state (torch.optim.Adam, SGD) keeps the current roles and spectral settings
        rest["param_groups"] = F.carry_group_settings(rest["param_groups"], optimizer.param_groups)
        return rest

    def restore(self, optimizer: Optimizer) -> None:
        if self.loading is not None:
            saved_groups, spectral = self.loading
            self.loading = None
            F.restore_spectral_state(saved_groups, optimizer.param_groups, optimizer.state, spectral)
        for group in optimizer.param_groups:
            F.fill_group_defaults(group, self.defaults)


class SpectralAdam(Adam):
    r"""Adam with decoupled spectral regularization (Lewandowski et al., ICLR 2025).

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2\\
        \theta_{t+1} &= \theta_t - \eta\,\hat m_t/(\sqrt{\hat v_t}+\epsilon) - \eta\,\lambda\,\nabla R(\theta_t)

    The Adam part *is* ``torch.optim.Adam``, argument for argument (``weight_decay`` is Adam's L2 term
    :math:`g_t \leftarrow g_t + w\theta_t` unless ``decoupled_weight_decay=True``, as in torch): with ``strength=0``
    ``SpectralAdam(**kw)`` and ``torch.optim.Adam(**kw)`` take bit-identical steps. :class:`SpectralAdamW` is the
    AdamW form. The spectral step is the gradient step on R truncated at its target, so it never overshoots (σ1 ends
    between its previous value and 1, a bias norm between its previous value and 0, a scale between its previous
    value and 1), whatever the learning rate, strength or σ1 — see :mod:`specopt.functional`.

    Args:
        params: parameters or groups; :func:`specopt.param_groups` tags roles (matrix/qkv/bias/scale/none). A group
            without a ``role`` uses ``"auto"``: tensors with ≥ 2 dims are matrices, others are not regularized.
        lr: ``torch.optim.Adam``'s (``lr``, ``betas``, ``eps``, ``weight_decay`` and ``amsgrad`` come in Adam's
            positional order).
        betas: Adam's.
        eps: Adam's.
        weight_decay: Adam's L2 term added to the gradient (AdamW's decoupled decay with
            ``decoupled_weight_decay=True``, or :class:`SpectralAdamW`).
        amsgrad: Adam's.
        strength: λ, decoupled and multiplied by the group's lr (default :data:`DEFAULT_STRENGTH`); stored per
            group as ``spectral_strength``.
        k: exponent of the regularizer (the paper uses 2).
        power_iterations: power iterations per step, warm-started from the previous step's vectors.
        init_iterations: iterations on a tensor's first step.
        fused_spectral: take the matrices' mat-vecs in the fused order (:mod:`specopt.kernel`): both from the
            previous step's vectors, on the weights just written, so that a compiled step
            (:func:`compile_step`) reads W once for the update and both mat-vecs; applies to plain matrices of
            groups with ``power_iterations=1`` (qkv blocks and DTensors keep the plain order). Default False.
        pull: ``"two-sided"`` (default, the paper's R: σ1 toward 1 from either side) or ``"one-sided"``
            (:math:`R^+`: only σ1 > 1 and scales > 1 are pulled down; biases as before). Per group:
            ``spectral_pull``.
        precondition: divide the step by Adam's :math:`\sqrt{\hat v_t}+\epsilon`, as the paper's coupled form is
            under Adam, without entering Adam's moments: matrices step by
            :math:`\eta\lambda c(\hat\sigma)\rho` along :math:`u v^\top`, :math:`\rho = \sum_{ij}u_i^2v_j^2/D_{ij}`
            (:func:`specopt.kernel.adam_weight`), biases and scales element by element; λ then reads on the coupled
            scale (the paper's 1e-4). Default False; per group: ``spectral_precondition``.
        one_pass: write Adam's update and the spectral step of each float32 tensor in one pass over it (the same
            numbers up to float32 rounding): eagerly on a CPU, one C++ loop per tensor (:mod:`specopt.native`;
            with ``fused_spectral=True`` it also takes the next step's mat-vecs while writing W, and the steady
            state is one call per group — the fastest step on a CPU); inside a compiled step
            (:func:`compile_step`), one Inductor expression (:func:`specopt.functional.one_pass`). Plain Adam/AdamW
            groups only (others, bf16 tensors, qkv blocks, DTensors and the preconditioned form keep the two
            halves, as does an eager step where the loop cannot be built). Default False; measured in
            docs/benchmarks.md.
        spectral_strength: deprecated alias of ``strength`` (a ``FutureWarning``).

    Other keyword arguments are ``torch.optim.Adam``'s (``foreach``, ``maximize``, ``capturable``,
    ``differentiable``, ``fused``, ``decoupled_weight_decay``). Per-group keys ``role``, ``spectral_strength``,
    ``k``, ``power_iterations``, ``init_iterations``, ``spectral_pull`` and ``spectral_precondition`` override the
    defaults (so strengths and forms can differ per role or layer: :func:`specopt.param_groups` with
    ``split_roles=True`` or ``head=``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        strength: float = DEFAULT_STRENGTH,
        k: float = 2,
        power_iterations: int = 1,
        init_iterations: int = DEFAULT_INIT_ITERATIONS,
        fused_spectral: bool = False,
        pull: str = "two-sided",
        precondition: bool = False,
        one_pass: bool = False,
        spectral_strength: float | None = None,
    ) -> None:
        strength = resolve_strength(type(self).__name__, strength, spectral_strength)
        spectral = _spectral_defaults(strength, k, power_iterations, init_iterations, fused_spectral, pull,
                                      precondition)
        if not isinstance(one_pass, bool):
            raise ValueError(f"one_pass must be True or False, got {one_pass!r}")
        spectral["one_pass"] = one_pass
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        self.defaults.update(spectral)
        for group in self.param_groups:
            F.fill_group_defaults(group, self.defaults)
        _SpectralStep(self, self.defaults, step_hooks=False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if "spectral_strength" in self.defaults:  # not during Adam.__init__
            F.fill_group_defaults(self.param_groups[-1], self.defaults)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Adam's update, then the decoupled spectral step. Returns the closure's loss, if any.

        The Adam update is ``torch.optim.adam.adam``, the kernel ``torch.optim.Adam.step`` calls, on the state
        ``Adam._init_group`` prepares; unlike ``Adam.step`` this method makes no graph break, so
        ``torch.compile(opt.step, fullgraph=True)`` captures the Adam and spectral updates in one graph.
        """
        loss = None
        eager_one_pass = (self.defaults.get("one_pass") and not torch.compiler.is_compiling()
                          and getattr(self, "found_inf", None) is None and getattr(self, "grad_scale", None) is None)
        if eager_one_pass and closure is None:  # the steady state: one C++ call per group (specopt.native)
            steady = getattr(self, "_steady", None)
            if steady is not None and steady.valid(self):
                with torch.no_grad():
                    steady.step()
                return None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            groups = []  # Adam's state first: under torch.compile, state read before _init_group would go stale
            for group in self.param_groups:
                lists: tuple[list[Tensor], ...] = ([], [], [], [], [], [])
                groups.append((group, lists, self._init_group(group, *lists)))
            pending = F.prepare(self.param_groups, self.state, self.defaults)  # ∇R at the pre-step weights
            whole = False  # whether the loop took every regularized tensor (then a steady state may exist)
            if eager_one_pass:  # on a CPU: one C++ loop per tensor (what it can; specopt.native)
                F.native_pass(pending, groups, self.state)
                whole = not (pending.matrices or pending.vectors or pending.blocked or pending.fused)
            elif (self.defaults.get("one_pass") and torch.compiler.is_compiling()
                  and getattr(self, "found_inf", None) is None and getattr(self, "grad_scale", None) is None):
                F.one_pass(pending, groups, self.state)  # one Inductor expression per tensor (what it can)
            for group, lists, has_complex in groups:
                beta1, beta2 = group["betas"]
                adam(
                    *lists, amsgrad=group["amsgrad"], has_complex=has_complex, beta1=beta1, beta2=beta2,
                    lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                    foreach=group["foreach"], capturable=group["capturable"], differentiable=group["differentiable"],
                    fused=group["fused"], grad_scale=getattr(self, "grad_scale", None),
                    found_inf=getattr(self, "found_inf", None),
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                )
            F.apply(pending, self.state, getattr(self, "found_inf", None))
        if eager_one_pass and closure is None:
            from . import native

            self._steady = native.plan(self, F._WRITTEN) if whole and native.extension() is not None else None
        return loss

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # also called by load_state_dict, with the hooks in place
        if getattr(self, "_specopt", None) is None:  # unpickled: pickling drops hooks (torch.optim does)
            for key, value in _spectral_defaults(DEFAULT_STRENGTH, 2, 1, DEFAULT_INIT_ITERATIONS).items():
                self.defaults.setdefault(key, value)
            self.defaults.setdefault("one_pass", False)
            _SpectralStep(self, self.defaults, step_hooks=False)


class SpectralAdamW(SpectralAdam):
    r"""AdamW with decoupled spectral regularization: :class:`SpectralAdam` with ``decoupled_weight_decay=True``.

    .. math::
        \theta_{t+1} = \theta_t - \eta\,w\,\theta_t - \eta\,\hat m_t/(\sqrt{\hat v_t}+\epsilon)
                       - \eta\,\lambda\,\nabla R(\theta_t)

    With ``strength=0`` it is ``torch.optim.AdamW`` (same arguments, same default ``weight_decay=1e-2``), bit for
    bit. Arguments as :class:`SpectralAdam`, without ``decoupled_weight_decay``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        strength: float = DEFAULT_STRENGTH,
        k: float = 2,
        power_iterations: int = 1,
        init_iterations: int = DEFAULT_INIT_ITERATIONS,
        fused_spectral: bool = False,
        pull: str = "two-sided",
        precondition: bool = False,
        one_pass: bool = False,
        spectral_strength: float | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True, strength=strength, k=k,
            power_iterations=power_iterations, init_iterations=init_iterations, fused_spectral=fused_spectral,
            pull=pull, precondition=precondition, one_pass=one_pass, spectral_strength=spectral_strength,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # as torch.optim.AdamW: always the decoupled form
            group["decoupled_weight_decay"] = True


class Spectral(Optimizer):
    r"""Adds the decoupled spectral step to any ``torch.optim.Optimizer``.

    .. math:: \theta_{t+1} = \mathrm{base}(\theta_t, g_t) - \eta\,\lambda\,\nabla R(\theta_t)

    ``Spectral(torch.optim.SGD(params, lr))`` takes exactly one SGD step on :math:`J + \lambda R` (where that step
    does not cross the regularizer's target; see :mod:`specopt.functional` for the truncation).

    The step is attached to the wrapped optimizer with torch.optim's public hooks (a step pre-hook and post-hook,
    a ``load_state_dict`` pre/post-hook pair), so the wrapped optimizer itself takes the spectral step however it
    is called. The wrapper shares ``param_groups``, ``state`` and ``defaults`` with it (LR schedulers, GradScaler
    and checkpointing see one optimizer); hooks registered on the wrapper are registered on the wrapped optimizer
    and receive the wrapper. The power-iteration vectors live in the per-parameter state.

    Args:
        optimizer: the base optimizer instance (SGD, AdamW, RMSprop, Adagrad, ...).
        strength: λ, decoupled and multiplied by each group's lr (default :data:`DEFAULT_STRENGTH`); stored per
            group as ``spectral_strength``.
        k: as in :class:`SpectralAdam`.
        power_iterations: as in :class:`SpectralAdam`.
        init_iterations: as in :class:`SpectralAdam`.
        fused_spectral: as in :class:`SpectralAdam` (the mat-vecs then run after the wrapped optimizer's step).
        pull: as in :class:`SpectralAdam`.
        precondition: as in :class:`SpectralAdam`; needs an Adam-family wrapped optimizer (its ``exp_avg_sq``).
        spectral_strength: deprecated alias of ``strength`` (a ``FutureWarning``).
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
        fused_spectral: bool = False,
        pull: str = "two-sided",
        precondition: bool = False,
        spectral_strength: float | None = None,
    ) -> None:
        strength = resolve_strength("Spectral", strength, spectral_strength)
        if isinstance(optimizer, Spectral) or getattr(optimizer, "_specopt", None) is not None:
            raise TypeError(f"{type(optimizer).__name__} already takes the spectral step; do not wrap it again")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"Spectral wraps a torch.optim.Optimizer instance, got {type(optimizer).__name__}")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError(
                "LBFGS cannot take a decoupled step (it invalidates its curvature pairs); add "
                "strength * specopt.spectral_penalty(model) to the loss instead"
            )
        if precondition and "betas" not in optimizer.defaults:
            raise ValueError(F.NOT_ADAM + f", not {type(optimizer).__name__}")
        self.optimizer = optimizer
        self._spectral_defaults = _spectral_defaults(strength, k, power_iterations, init_iterations, fused_spectral,
                                                     pull, precondition)
        for group in optimizer.param_groups:
            F.fill_group_defaults(group, self._spectral_defaults)
        _SpectralStep(optimizer, self._spectral_defaults)

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
        """The wrapped optimizer's step, with the spectral step around it. Returns the closure's loss, if any."""
        return self.optimizer.step() if closure is None else self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        F.fill_group_defaults(param_group, self._spectral_defaults)
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict`` (its state holds the power-iteration vectors)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def _forward(self, register: Callable, hook: Callable) -> Any:
        return register(lambda _optimizer, *args: hook(self, *args))

    def register_step_pre_hook(self, hook: Callable) -> Any:
        return self._forward(self.optimizer.register_step_pre_hook, hook)

    def register_step_post_hook(self, hook: Callable) -> Any:
        return self._forward(self.optimizer.register_step_post_hook, hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> Any:
        return self.optimizer.register_state_dict_pre_hook(lambda _optimizer: hook(self), prepend=prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> Any:
        return self._forward(lambda h: self.optimizer.register_state_dict_post_hook(h, prepend=prepend), hook)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> Any:
        return self._forward(lambda h: self.optimizer.register_load_state_dict_pre_hook(h, prepend=prepend), hook)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> Any:
        return self.optimizer.register_load_state_dict_post_hook(lambda _optimizer: hook(self), prepend=prepend)

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "_spectral_defaults": self._spectral_defaults}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if getattr(self.optimizer, "_specopt", None) is None:  # pickling drops hooks (torch.optim does): attach again
            for key, value in _spectral_defaults(DEFAULT_STRENGTH, 2, 1, DEFAULT_INIT_ITERATIONS).items():
                self._spectral_defaults.setdefault(key, value)
            _SpectralStep(self.optimizer, self._spectral_defaults)

    def __repr__(self) -> str:
        s = self._spectral_defaults
        return (
            f"Spectral(strength={s['spectral_strength']}, k={s['k']}, power_iterations={s['power_iterations']}, "
            f"pull={s.get('spectral_pull', 'two-sided')!r}, precondition={s.get('spectral_precondition', False)})"
            f" over {self.optimizer!r}"
        )


COMPILE_OPTIONS: dict[str, Any] = {"realize_opcount_threshold": 4}
"""The Inductor options :func:`compile_step` adds. Left to its defaults, Inductor inlines small scalar computations
(each matrix's step size α from σ̂, Adam's bias corrections) into the loop over every element of W, where the C++
compiler cannot hoist them (``std::pow`` may set errno; outputs may alias inputs), so they are recomputed for every
vector of 16 floats. With ``realize_opcount_threshold=4`` such values are computed once into small buffers
(measured on a CPU in docs/benchmarks.md: the MLP 4×256 step at 0.59× an eager Adam step, 1.36× without)."""


def compile_step(optimizer: Optimizer, *, mode: str | None = None, eager_first_step: bool = True,
                 native: bool = True, **compile_kwargs: Any) -> Callable[..., Any]:
    """``torch.compile`` of the optimizer's step with the options that make the spectral step fast: the documented
    fast path. Use the returned function in place of ``optimizer.step``::

        step = specopt.compile_step(opt)
        loss.backward(); step(); opt.zero_grad(); scheduler.step()

    ``fullgraph`` defaults to True for :class:`SpectralAdam` (Adam's and the spectral update in one graph) and to
    False otherwise (``torch.optim`` steps graph-break on purpose). With the Inductor backend (the default) ``mode``
    (``"reduce-overhead"``, ...) and ``options`` are merged with :data:`COMPILE_OPTIONS` (``options`` wins); another
    ``backend`` gets ``options`` only if given. Other keywords go to ``torch.compile``. Works for any optimizer.

    What is compiled is the class's step (``type(optimizer).step``, with torch.optim's step hooks), not the bound
    ``optimizer.step``: an LR scheduler replaces the latter with a wrapper in ``lr_scheduler.py``, a file Dynamo
    refuses to trace (``Unsupported: Attempted to call function marked as skipped`` under ``fullgraph=True``). So
    a scheduler may be created before or after ``compile_step``; the returned function records the call the way that
    wrapper does (``optimizer._opt_called``), so the scheduler's "``lr_scheduler.step()`` before
    ``optimizer.step()``" check stays quiet. A learning rate changed by a scheduler does not recompile.

    Compiling takes seconds to minutes once. With ``eager_first_step`` (the default) the first call runs the step
    eagerly — it creates the state (Adam's moments, the first power iteration's ``init_iterations``) — and only the
    warm step is compiled: one graph for ``SpectralAdam`` instead of two (fresh state, then warm), one per
    graph-break segment for ``Spectral(optimizer)``, which halves the time before training runs at full speed
    (docs/benchmarks.md). ``eager_first_step=False`` compiles the first step too. All ``torch.optim`` steps share
    one code object, on which Dynamo keeps at most ``torch._dynamo.config.recompile_limit`` (8) graphs: compiling
    more than four optimizers' steps in one process needs a larger limit.

    With ``native`` (the default), a step that ``SpectralAdam(one_pass=True, fused_spectral=True)`` can
    take as its C++ steady state (:mod:`specopt.native`: on a CPU, every tensor in the loop; the state is planned by
    the eager first step) runs eagerly: that loop is faster than anything Inductor makes of the step
    (docs/benchmarks.md: 0.8–0.9× of compiled Adam on the MLP set against 1.3–1.5× compiled, 1.2–1.4× on
    ResNet-18's against 1.7–1.9×), and nothing is compiled while it holds. Where it does not (a GPU, bf16, qkv
    blocks, after a step the loop could not take whole) the compiled step runs. ``native=False`` compiles every step
    after the first (so does ``eager_first_step=False``: no eager step plans the steady state).
    """
    if not isinstance(native, bool):
        raise ValueError(f"native must be True or False, got {native!r}")
    compile_kwargs.setdefault("fullgraph", isinstance(optimizer, SpectralAdam))
    options = compile_kwargs.pop("options", None) or {}
    if compile_kwargs.get("backend", "inductor") == "inductor":
        defaults = dict(COMPILE_OPTIONS)
        if mode not in (None, "default"):
            from torch._inductor import list_mode_options  # what torch.compile(mode=...) expands a mode into

            defaults = {**list_mode_options(mode), **defaults}
        options = {**defaults, **options}
    elif mode is not None:
        compile_kwargs["mode"] = mode
    if options:
        compile_kwargs["options"] = options
    compiled = torch.compile(type(optimizer).step, **compile_kwargs)
    called = [optimizer] + ([optimizer.optimizer] if isinstance(optimizer, Spectral) else [])
    eager_calls = [type(optimizer).step] if eager_first_step else []
    fused = bool(optimizer.defaults.get("fused_spectral", False))
    steady = native and fused and isinstance(optimizer, SpectralAdam) and bool(optimizer.defaults.get("one_pass"))

    @functools.wraps(type(optimizer).step)
    def step(closure: Callable[[], float] | None = None) -> float | None:
        for opt in called:  # what an LR scheduler's wrapper of opt.step records (torch/optim/lr_scheduler.py)
            opt._opt_called = True  # type: ignore[attr-defined]
        if eager_calls:
            run = eager_calls.pop()
        elif steady and closure is None and getattr(optimizer, "_steady", None) is not None:
            run = type(optimizer).step  # specopt.native's steady state: one C++ call per group
        else:
            run = compiled
        host = fused and run is compiled  # (an eager step makes the fused order's checks itself: F.prepare)
        if host:  # host-side, outside the graph: the fused order's check for weights changed in place
            F.forget_stale_matvecs(optimizer.param_groups, optimizer.state)
        loss = run(optimizer) if closure is None else run(optimizer, closure)
        if host:
            F.record_matvecs(optimizer.param_groups, optimizer.state)
        return loss

    return step
