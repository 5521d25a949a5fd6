"""Fused layouts (block sizes and axis) through every path, explicit layout overrides, overrides that cannot miss,
wrapper prefixes, and describe() names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import specopt
from specopt import StackedSpectralAdam

from .test_roles import describe_table

LAYOUTS = [((32, 8, 8), 0), ((16, 16, 16), 1), ((10, 22), 1), ((12, 12, 12), 0)]


def fused_and_separate(layout, seed=0):
    """One fused 2-D weight with ``layout`` (scaled so σ1 > 1) and its blocks as separate matrices — column blocks
    W_j transposed, as specopt iterates them (σ1(W_jᵀ) = σ1(W_j); the same start vectors then)."""
    sizes, axis = layout
    g = torch.Generator().manual_seed(seed)
    shape = (sum(sizes), 32) if axis == 0 else (32, sum(sizes))
    w = torch.randn(shape, generator=g) * 0.4
    fused = nn.Parameter(w.clone())
    separate = [nn.Parameter(b.clone()) for b in (w.t() if axis else w).split(sizes, dim=0)]
    return fused, separate


def joined(blocks, layout):
    """The fused tensor that ``blocks`` (as made by :func:`fused_and_separate`) are cut from."""
    w = torch.cat([b.detach() if isinstance(b, nn.Parameter) else b for b in blocks], dim=0)
    return w.t() if layout[1] else w


def spec(layout):
    return {"sizes": layout[0], "axis": layout[1]}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("which", ["adam", "sgd"])
def test_the_step_on_a_fused_tensor_is_the_matrix_step_on_each_of_its_blocks(layout, which):
    fused, separate = fused_and_separate(layout)
    group = {"params": [fused], "roles": ["qkv"], "blocks": [spec(layout)], "spectral_strength": 2.0}
    groups = [{"params": separate, "role": "matrix", "spectral_strength": 2.0}]
    if which == "adam":
        a, b = specopt.SpectralAdam([group], lr=0.05), specopt.SpectralAdam(groups, lr=0.05)
    else:
        a = specopt.Spectral(torch.optim.SGD([group], lr=0.05))
        b = specopt.Spectral(torch.optim.SGD(groups, lr=0.05))
    for step in range(12):
        g = torch.Generator().manual_seed(step)
        grad = torch.randn(fused.shape, generator=g)
        fused.grad = grad.clone()
        for p, gb in zip(separate, (grad.t() if layout[1] else grad).split(layout[0], dim=0)):
            p.grad = gb.clone()
        a.step()
        b.step()
    torch.testing.assert_close(fused.detach(), joined(separate, layout),
                               rtol=1e-4, atol=5e-5)  # rounding (Adam divides by √v̂); a wrong block: ≫ 1e-3
    sigmas = torch.stack([torch.linalg.matrix_norm(p.detach(), ord=2) for p in separate])
    assert not torch.allclose(sigmas, torch.ones_like(sigmas), atol=1e-3)  # the steps had work left: a real test
    state = a.state[fused]
    assert state["spectral_sigma"].shape == (len(layout[0]),)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_penalty_and_spectral_norms_use_the_blocks(layout):
    fused, separate = fused_and_separate(layout)
    group = {"params": [fused], "param_names": ["attn.w"], "roles": ["qkv"], "blocks": [spec(layout)]}
    penalty = specopt.SpectralPenalty([group], k=2, init_iterations=200)()
    reference = specopt.SpectralPenalty([{"params": separate, "role": "matrix"}], k=2, init_iterations=200)()
    torch.testing.assert_close(penalty, reference, rtol=1e-5, atol=1e-6)
    penalty.backward()
    reference.backward()
    torch.testing.assert_close(fused.grad, joined([p.grad for p in separate], layout), rtol=1e-4, atol=1e-6)
    norms = specopt.spectral_norms([group])
    names = (["attn.w[q]", "attn.w[k]", "attn.w[v]"] if len(layout[0]) == 3
             else [f"attn.w[{j}]" for j in range(len(layout[0]))])
    assert list(norms) == names
    for value, block in zip(norms.values(), separate):
        assert value.item() == pytest.approx(torch.linalg.matrix_norm(block.detach(), ord=2).item(), rel=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS[:3])
def test_stacked_optimizer_equals_spectral_adam_on_each_slice_with_a_layout(layout):
    slices = [fused_and_separate(layout, seed=s)[0] for s in range(3)]
    strengths = (0.0, 0.5, 3.0)
    refs = [specopt.SpectralAdam([{"params": [p], "roles": ["qkv"], "blocks": [spec(layout)]}], lr=1e-2,
                                 strength=lam, foreach=True) for p, lam in zip(slices, strengths)]
    stacked = nn.Parameter(torch.stack([p.detach() for p in slices]))
    opt = StackedSpectralAdam([stacked], ["qkv"], lr=1e-2, strength=strengths, blocks=[spec(layout)])
    for step in range(6):
        grad = torch.randn(stacked.shape, generator=torch.Generator().manual_seed(step))
        for s, (p, ref) in enumerate(zip(slices, refs)):
            p.grad = grad[s].clone()
            ref.step()
        stacked.grad = grad
        opt.step()
    for s, p in enumerate(slices):
        torch.testing.assert_close(stacked[s].detach(), p.detach(), rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="add up to"):
        StackedSpectralAdam([stacked], ["qkv"], blocks=[{"sizes": (1, 2), "axis": 0}])


class Attn(nn.Module):
    """Phi-3-like: a fused qkv_proj whose module declares grouped-query attention."""

    def __init__(self, heads=4, kv_heads=1, head_dim=8) -> None:
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv_proj = nn.Linear(heads * head_dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, heads * head_dim, bias=False)


def roles(model, **kw):
    (group,) = specopt.param_groups(model, **kw)
    blocks = group.get("blocks") or [None] * len(group["params"])
    return {n: (r, b) for n, r, b in zip(group["param_names"], group["roles"], blocks)}


def test_an_override_states_block_sizes_and_axis_and_is_validated_in_one_line():
    model = nn.Sequential(Attn())
    assert roles(model)["0.qkv_proj.weight"] == ("qkv", {"sizes": (32, 8, 8), "axis": 0})  # from the module
    stated = roles(model, roles={"*.qkv_proj.weight": ("qkv", {"sizes": (16, 16, 8, 8)})})
    assert stated["0.qkv_proj.weight"] == ("qkv", {"sizes": (16, 16, 8, 8), "axis": 0})
    cols = roles(model, roles={"*.o_proj.weight": ("qkv", {"sizes": (8, 24), "axis": 1})})
    assert cols["0.o_proj.weight"] == ("qkv", {"sizes": (8, 24), "axis": 1})
    bad = {
        "add up to 40, but it has 48 rows": ("qkv", {"sizes": (16, 16, 8)}),
        "axis of '0.qkv_proj.weight' must be 0": ("qkv", {"sizes": (32, 8, 8), "axis": 2}),
        "keys 'sizes' and/or 'axis'": ("qkv", {"size": (32, 8, 8)}),
        "two or more positive integers": ("qkv", {"sizes": (48,)}),
        "only role 'qkv' takes blocks": ("matrix", {"sizes": (32, 8, 8)}),
        "must be a role or": ("qkv",),
    }
    for message, override in bad.items():
        with pytest.raises(ValueError, match=message) as err:
            specopt.param_groups(model, roles={"*.qkv_proj.weight": override})
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"role 'qkv' needs a 2-D weight whose rows split into three") as err:
        specopt.param_groups(model, roles={"*.o_proj.weight": "qkv"})  # 32 rows, no declared layout
    assert "\n" not in str(err.value)


def test_a_pattern_that_matches_nothing_raises_naming_the_closest_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"roles pattern '2\.weigth' matches no parameter; closest names: "
                                         r"'2\.weight'") as err:
        specopt.param_groups(model, roles={"0.*": "none", "2.weigth": "none"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"'head\.\*' matches no parameter"):
        specopt.named_roles(model, roles={"head.*": "none"})


class Holder(nn.Module):
    def __init__(self, inner: nn.Module, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, inner)


@pytest.mark.parametrize("wrap", ["compile", "module", "fsdp1"])
def test_patterns_written_for_the_bare_module_apply_through_wrapper_prefixes(wrap):
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    if wrap == "compile":
        wrapped = torch.compile(model)  # names carry _orig_mod.
    elif wrap == "module":
        wrapped = Holder(model, "module")  # DDP's and FSDP's module. prefix
    else:
        wrapped = Holder(Holder(model, "_fsdp_wrapped_module"), "module")
    got = roles(wrapped, roles={"2.*": "none", "1.weight": "matrix"})
    prefix = {"compile": "_orig_mod.", "module": "module.", "fsdp1": "module._fsdp_wrapped_module."}[wrap]
    assert set(got) == {prefix + n for n, _ in model.named_parameters()}  # the real names are kept
    assert got[prefix + "2.weight"][0] == "none" and got[prefix + "2.bias"][0] == "none"
    assert got[prefix + "1.weight"][0] == "matrix" and got[prefix + "0.weight"][0] == "matrix"
    assert got[prefix + "0.bias"][0] == "bias"


def test_describe_names_plain_parameter_groups_and_tells_unset_strength_from_not_regularized():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), Attn())
    opt = specopt.Spectral(torch.optim.SGD(model.parameters(), lr=0.1))  # as HF Trainer builds groups
    rows = describe_table(specopt.describe(opt, model))
    assert set(rows) == {n for n, _ in model.named_parameters()}  # real names, no group0.param0
    assert rows["0.weight"]["role"] == "matrix" and rows["0.weight"]["strength"] == str(specopt.DEFAULT_STRENGTH)
    assert rows["0.bias"]["role"] == "none" and rows["0.bias"]["strength"] == "-"  # role auto: 1-D left alone
    assert rows["0.bias"]["rule"] == "group role 'auto' (inferred: bias)"  # param_groups would make it a bias
    assert rows["2.qkv_proj.weight"]["rule"] == "group role 'auto' (inferred: qkv)"
    assert rows["2.qkv_proj.weight"]["shape"] == "48×32"  # auto: one matrix
    plain = describe_table(specopt.describe(model))
    assert plain["0.weight"]["strength"] == "unset" and plain["1.weight"]["strength"] == "unset"
    assert plain["2.qkv_proj.weight"]["shape"] == "48×32 (as 32+8+8 rows)"
    assert plain["2.qkv_proj.weight"]["rule"].startswith("[q; k; v] rows, 4 q / 1 kv heads")
    assert plain["1.weight"]["rule"] == "normalization scale"
    groups = specopt.param_groups(model, strength=0.3, roles={"2.o_proj.weight": "none"})
    shown = describe_table(specopt.describe(specopt.Spectral(torch.optim.SGD(groups, lr=0.1)), model))
    assert shown["2.o_proj.weight"]["strength"] == "-" and shown["0.weight"]["strength"] == "0.3"
    assert shown["2.o_proj.weight"]["rule"] == "its group's roles (inferred: matrix)"


def test_a_checkpoint_with_blocks_loads_with_weights_only_and_resumes_bit_for_bit():
    import io

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(Attn(), nn.Linear(32, 4))
        with torch.no_grad():
            model[0].qkv_proj.weight.mul_(5.0)
        return model, specopt.SpectralAdam(specopt.param_groups(model, strength=0.5), lr=1e-2)

    def steps(model, opt, start, n):
        for t in range(start, start + n):
            g = torch.Generator().manual_seed(t)
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    model, opt = build()
    steps(model, opt, 0, 6)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    model, opt = build()
    steps(model, opt, 0, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # the blocks entries are plain ints and tuples
    assert saved["optim"]["param_groups"][0]["blocks"][0] == {"sizes": (32, 8, 8), "axis": 0}
    model, opt = build()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optim"])
    assert opt.state[model[0].qkv_proj.weight]["spectral_u"].dtype == torch.float32
    steps(model, opt, 3, 3)
    for got, want in zip(model.parameters(), uninterrupted):
        assert torch.equal(got.detach(), want)
