"""Parameter roles, describe(), and spectral_norms()."""

import pytest
import torch
from torch import nn

import specopt


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 4)
        self.ln = nn.LayerNorm(4)
        self.emb = nn.Embedding(5, 4)
        self.temperature = nn.Parameter(torch.tensor(1.0))


def roles_by_name(groups):
    out = {}
    for g in groups:
        roles = g.get("roles") or [g["role"]] * len(g["params"])
        out.update(zip(g["param_names"], roles))
    return out


def test_param_groups_tags_every_parameter_by_module():
    roles = roles_by_name(specopt.param_groups(Block()))
    assert roles == {
        "conv.weight": "matrix", "conv.bias": "bias", "bn.weight": "scale", "bn.bias": "bias",
        "gn.weight": "scale", "gn.bias": "bias", "fc.weight": "matrix", "fc.bias": "bias",
        "ln.weight": "scale", "ln.bias": "bias", "emb.weight": "matrix", "temperature": "none",
    }


def test_default_is_one_group_and_split_roles_gives_one_group_per_role():
    model = Block()
    (single,) = specopt.param_groups(model)
    assert len(single["params"]) == len(single["roles"]) == len(list(model.parameters()))
    split = specopt.param_groups(model, split_roles=True)
    assert [g["role"] for g in split] == ["matrix", "bias", "scale", "none"]
    assert roles_by_name(split) == roles_by_name([single])


def test_overrides_strength_k_and_extra_group_options():
    groups = specopt.param_groups(
        Block(), strength=0.5, k=4, roles={"fc.*": "none", "emb.weight": "none"}, split_roles=True, lr=0.1
    )
    roles = roles_by_name(groups)
    assert roles["fc.weight"] == "none" and roles["fc.bias"] == "none" and roles["emb.weight"] == "none"
    assert all(g["spectral_strength"] == 0.5 and g["k"] == 4 and g["lr"] == 0.1 for g in groups)
    with pytest.raises(ValueError, match="unknown role"):
        specopt.param_groups(Block(), roles={"fc.*": "weights"})


def test_plain_parameters_default_regularizes_matrices_only():
    norm = nn.LayerNorm(4)
    lin = nn.Linear(4, 4)
    opt = specopt.SpectralAdam(list(lin.parameters()) + list(norm.parameters()), lr=0.1)
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    gamma = norm.weight.detach().clone()
    bias = lin.bias.detach().clone()
    opt.step()
    assert torch.equal(norm.weight, gamma) and torch.equal(lin.bias, bias)  # 1-D tensors untouched
    assert "spectral_u" in opt.state[lin.weight]


def test_describe_lists_every_tensor_with_its_rule():
    model = Block()
    text = specopt.describe(specopt.SpectralAdam(specopt.param_groups(model, strength=0.3)))
    assert text.splitlines()[0].split() == ["name", "shape", "role", "strength", "k"]
    line = next(l for l in text.splitlines() if l.startswith("conv.weight"))
    assert "8×3×3×3 (as 8×27)" in line and "matrix" in line and "0.3" in line
    line = next(l for l in text.splitlines() if l.startswith("temperature"))
    assert line.split()[2:] == ["none", "-", "-"]
    assert len(text.splitlines()) == 2 + len(list(model.parameters()))
    plain = specopt.describe(specopt.Spectral(torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)))
    assert "group0.param1" in plain and "none" in plain


def test_spectral_norms_exact_and_cheap_agree_after_steps_on_fixed_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))
    exact = specopt.spectral_norms(model)
    assert set(exact) == {"0.weight", "2.weight"}
    for name, module in (("0.weight", model[0]), ("2.weight", model[2])):
        w = module.weight.detach().reshape(module.weight.shape[0], -1)
        assert exact[name].item() == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-5)
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=0.0)  # lr 0: weights fixed, vectors converge
    for _ in range(30):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    cheap = specopt.spectral_norms(opt)
    for name in exact:
        assert cheap[name].item() <= exact[name].item() * (1 + 1e-6)
        assert cheap[name].item() == pytest.approx(exact[name].item(), rel=1e-3)
