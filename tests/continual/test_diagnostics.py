"""Diagnostics checked against independent computations (numpy SVD, python loops of autograd, hand-built nets)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from continual.diagnostics import (
    DIAGNOSTICS,
    condition_number,
    dormant_fraction,
    effective_rank,
    last_layers,
    per_example_gradients,
    representation_change,
    singular_values,
    spectral_summary,
    stable_rank,
    task_end_diagnostics,
    weight_matrices,
)

from tests.continual.toy_models import MLP

torch.set_num_threads(1)


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> np.ndarray:
    named = dict(model.named_parameters())
    names = list(named) if names is None else names
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([named[n].grad.flatten() for n in names]).double().numpy())
    model.zero_grad()
    return np.stack(rows)


def np_erank(s: np.ndarray) -> float:
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def test_per_example_gradients_match_a_loop_of_autograd():
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    g = per_example_gradients(model, x, y).double().numpy()
    np.testing.assert_allclose(g, loop_gradients(model, x, y), rtol=1e-4, atol=1e-6)


def test_per_example_gradients_restricted_to_named_parameters():
    torch.manual_seed(1)
    model = MLP()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    names = ["head.weight", "head.bias"]
    g = per_example_gradients(model, x, y, names).double().numpy()
    assert g.shape == (5, 3 * 8 + 3)
    np.testing.assert_allclose(g, loop_gradients(model, x, y, names), rtol=1e-4, atol=1e-6)


def test_erank_and_condition_number_match_numpy_svd_of_explicit_G():
    torch.manual_seed(2)
    model = MLP()
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    out, _ = task_end_diagnostics(model, {n: p.detach().clone() for n, p in model.named_parameters()},
                                  x, y, None, grad_examples=12)
    s = np.linalg.svd(loop_gradients(model, x, y), compute_uv=False)
    assert out["grad_erank"] == pytest.approx(np_erank(s), rel=1e-4)
    assert out["grad_condition"] == pytest.approx(s[0] / s[-1], rel=1e-3)


def test_singular_values_gram_path_matches_svd_for_wide_matrices():
    g = torch.randn(6, 200, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(singular_values(g).numpy(), np.linalg.svd(g.double().numpy(), compute_uv=False),
                               rtol=1e-8)
    tall = torch.randn(6, 10, dtype=torch.float64)
    np.testing.assert_allclose(singular_values(tall).numpy(), np.linalg.svd(tall.numpy(), compute_uv=False))


def test_effective_rank_and_condition_number_edge_cases():
    assert effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    assert condition_number(torch.tensor([4.0, 2.0])) == pytest.approx(2.0)
    assert condition_number(torch.tensor([4.0, 0.0])) == math.inf


def test_stable_rank_matches_formula_and_conv_is_reshaped():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(4))
    a = w.double().numpy()
    assert stable_rank(w) == pytest.approx((a**2).sum() / np.linalg.norm(a, 2) ** 2, rel=1e-10)
    k = torch.randn(4, 2, 3, 3)
    assert stable_rank(k) == pytest.approx(stable_rank(k.reshape(4, 18)))


def test_spectral_summary_over_weight_matrices_only():
    torch.manual_seed(5)
    model = ConvBN()
    mats = [model.body[0].weight.detach().reshape(4, -1).double().numpy(), model.head.weight.detach().double().numpy()]
    sig = [np.linalg.norm(m, 2) for m in mats]
    out = spectral_summary(model)
    assert out["sigma_max"] == pytest.approx(max(sig))
    assert out["sigma_mean"] == pytest.approx(np.mean(sig))
    assert out["stable_rank"] == pytest.approx(np.mean([(m**2).sum() / s**2 for m, s in zip(mats, sig)]))


def test_spectral_summary_reports_fused_qkv_projections_per_block():
    torch.manual_seed(6)
    model = nn.TransformerEncoderLayer(6, 2, 12)
    with torch.no_grad():
        model.self_attn.in_proj_weight[6:12].mul_(5.0)  # W_k: the largest σ1 of the model
    mats = {name: model.get_parameter(name).detach().double().numpy()
            for name in ("self_attn.out_proj.weight", "linear1.weight", "linear2.weight")}
    in_proj = model.self_attn.in_proj_weight.detach().double().numpy()
    mats |= {f"self_attn.in_proj_weight[{b}]": in_proj[6 * j:6 * (j + 1)] for j, b in enumerate("qkv")}
    assert set(weight_matrices(model)) == set(mats)
    sig = {n: np.linalg.norm(m, 2) for n, m in mats.items()}
    out = spectral_summary(model)
    assert out["sigma_max"] == pytest.approx(sig["self_attn.in_proj_weight[k]"])
    assert out["sigma_mean"] == pytest.approx(np.mean(list(sig.values())))
    assert out["stable_rank"] == pytest.approx(np.mean([(m**2).sum() / sig[n] ** 2 for n, m in mats.items()]))


def test_dormant_fraction_on_a_hand_built_network():
    lin = nn.Linear(2, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, -100.0, -1.0]))  # units 2 and 3 never fire on x in [0, 1]^2
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(4, 2))
    x = torch.rand(32, 2)
    assert dormant_fraction(model, x) == pytest.approx(2 / 4)
    # scores s_i = a_i / mean_k a_k are (≈2, ≈2, 0, 0): τ = 1 keeps the live ones, τ = 4 ≥ max s counts all
    assert dormant_fraction(model, x, tau=1.0) == pytest.approx(2 / 4)
    assert dormant_fraction(model, x, tau=4.0) == pytest.approx(1.0)


def test_dormant_fraction_crelu_counts_units_not_halves():
    torch.manual_seed(6)
    model = MLP("crelu", layer_norm=False)
    with torch.no_grad():
        model.body[1].weight[0] = 0.0
        model.body[1].bias[0] = 0.0  # pre-activation exactly 0: both halves silent → one dormant unit of 8
    x = torch.randn(16, 6)
    assert dormant_fraction(model, x) == pytest.approx(1 / 16)


def test_representation_change_nan_first_then_mean_distance():
    cur = torch.zeros(4, 3)
    assert math.isnan(representation_change(cur, None))
    prev = torch.zeros(4, 3)
    prev[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert representation_change(cur, prev) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        representation_change(cur, torch.zeros(4, 2))


def test_task_end_diagnostics_keys_and_chaining():
    torch.manual_seed(7)
    model = MLP()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    out, rep = task_end_diagnostics(model, init, x, y, None)
    assert tuple(out) == DIAGNOSTICS and all(isinstance(v, float) for v in out.values())
    assert out["distance_from_init"] == 0.0 and math.isnan(out["representation_change"])
    norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))
    assert out["weight_norm"] == pytest.approx(norm)
    with torch.no_grad():
        model.head.bias.add_(1.0)
        model.body[1].bias.add_(0.5)
    out2, rep2 = task_end_diagnostics(model, init, x, y, rep)
    assert out2["distance_from_init"] == pytest.approx(math.sqrt(3 * 1.0 + 8 * 0.25))
    assert out2["representation_change"] == pytest.approx(float((rep2 - rep).norm(dim=1).mean()))
    assert out2["representation_change"] > 0


def test_batchnorm_model_is_measured_in_eval_mode_and_left_untouched():
    torch.manual_seed(8)
    model = ConvBN().train()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = model.body[1].running_mean.clone()
    x, y = torch.randn(10, 2, 5, 5), torch.randint(0, 3, (10,))
    out, rep = task_end_diagnostics(model, init, x, y, None)
    assert model.training and model.body[1].training
    assert torch.equal(model.body[1].running_mean, stats)
    assert rep.shape == (10, 4) and math.isfinite(out["grad_erank"])
    model.eval()
    s = np.linalg.svd(loop_gradients(model, x, y), compute_uv=False)
    assert out["grad_erank"] == pytest.approx(np_erank(s), rel=1e-4)


def test_last_layers_takes_whole_modules_from_the_end_within_budget():
    model = MLP(width=8)  # head: 8*3+3 = 27; body.5 LayerNorm: 16; body.4 Linear: 72
    assert last_layers(model, 27) == ["head.weight", "head.bias"]
    assert last_layers(model, 50) == ["body.5.weight", "body.5.bias", "head.weight", "head.bias"]
    assert last_layers(model, 1) == ["head.weight", "head.bias"]  # always at least one module
    assert last_layers(model, 10**9) == [n for n, _ in model.named_parameters()]
