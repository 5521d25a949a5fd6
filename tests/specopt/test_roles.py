"""Parameter roles, describe(), and spectral_norms()."""

import warnings

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


def small_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768,
                             num_classes=10)


def test_torchvision_vit_roles():
    roles = roles_by_name(specopt.param_groups(small_vit()))
    expected = {
        "class_token": "bias",  # 1×1×192, added to the sequence: toward 0, not to norm 1
        "conv_proj.weight": "matrix", "conv_proj.bias": "bias",
        "encoder.pos_embedding": "bias",  # 1×65×192
        "encoder.ln.weight": "scale", "encoder.ln.bias": "bias",
        "heads.head.weight": "matrix", "heads.head.bias": "bias",
    }
    for i in range(2):
        layer = f"encoder.layers.encoder_layer_{i}"
        expected |= {
            f"{layer}.ln_1.weight": "scale", f"{layer}.ln_1.bias": "bias",
            f"{layer}.self_attention.in_proj_weight": "qkv", f"{layer}.self_attention.in_proj_bias": "bias",
            f"{layer}.self_attention.out_proj.weight": "matrix", f"{layer}.self_attention.out_proj.bias": "bias",
            f"{layer}.ln_2.weight": "scale", f"{layer}.ln_2.bias": "bias",
            f"{layer}.mlp.0.weight": "matrix", f"{layer}.mlp.0.bias": "bias",
            f"{layer}.mlp.3.weight": "matrix", f"{layer}.mlp.3.bias": "bias",
        }
    assert roles == expected
    split = specopt.param_groups(small_vit(), split_roles=True)
    assert [g["role"] for g in split] == ["matrix", "qkv", "bias", "scale"]


class FusedAttention(nn.Module):
    """timm's ViT attention: one Linear named ``qkv`` whose rows are [W_q; W_k; W_v]."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_tokens = nn.Parameter(torch.zeros(1, 4, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.attn = FusedAttention(dim)
        self.gqa = nn.Module()  # grouped-query fused projection: q 8 rows, k and v 4 rows each (16, not 3 blocks)
        self.gqa.qkv = nn.Linear(dim, 16)
        self.other = nn.Module()
        self.other.QKV = nn.Linear(dim, 3 * dim)  # names are case-sensitive
        self.other.Wqkv = nn.Linear(dim, 3 * dim)
        self.other.query_key_value = nn.Linear(dim, 3 * dim)  # GPT-NeoX/BLOOM: q, k, v interleaved per head
        self.other.qkv_proj = nn.Linear(dim, 3 * dim)
        self.other.in_proj = nn.Linear(dim, 3 * dim)  # Mamba: [x; z], not q/k/v


def test_fused_qkv_linear_by_local_module_name():
    with pytest.warns(UserWarning) as caught:  # the two layouts it cannot tell are reported, one warning each
        roles = roles_by_name(specopt.param_groups(TinyViT()))
    reported = sorted(str(w.message).split("'")[1] for w in caught if "specopt: cannot tell" in str(w.message))
    assert reported == ["gqa.qkv.weight", "other.query_key_value.weight"]
    assert roles == {
        "cls_token": "bias", "reg_tokens": "bias", "pos_embed": "bias",
        "attn.qkv.weight": "qkv", "attn.qkv.bias": "bias",
        "attn.proj.weight": "matrix", "attn.proj.bias": "bias",
        "gqa.qkv.weight": "matrix", "gqa.qkv.bias": "bias",
        "other.QKV.weight": "matrix", "other.QKV.bias": "bias",
        "other.Wqkv.weight": "qkv", "other.Wqkv.bias": "bias",
        "other.query_key_value.weight": "matrix", "other.query_key_value.bias": "bias",
        "other.qkv_proj.weight": "qkv", "other.qkv_proj.bias": "bias",
        "other.in_proj.weight": "matrix", "other.in_proj.bias": "bias",
    }
    # torchvision's Swin attention is laid out as timm's (reshape to 3 × heads × head_dim)
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    swin = roles_by_name(specopt.param_groups(ShiftedWindowAttention(8, [2, 2], [0, 0], 2)))
    assert swin == {"relative_position_bias_table": "bias", "qkv.weight": "qkv", "qkv.bias": "bias",
                    "proj.weight": "matrix", "proj.bias": "bias"}


def test_interleaved_or_non_attention_fused_layers_are_plain_matrices_unless_overridden():
    """GPT-NeoX/BLOOM's ``query_key_value`` interleaves q, k, v per head and Mamba's ``in_proj`` is [x; z]: their
    row thirds are not W_q, W_k, W_v, so the name alone does not give them the qkv role; an override still does."""
    assert specopt.roles.QKV_MODULE_NAMES == ("qkv", "qkv_proj", "Wqkv")
    for local in ("query_key_value", "in_proj"):
        layer = nn.Linear(8, 24)
        assert specopt.infer_role(layer, "weight", layer.weight, module_name=f"layers.0.attention.{local}") == "matrix"
        model = nn.Module()
        setattr(model, local, layer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert roles_by_name(specopt.param_groups(model)) == {f"{local}.weight": "matrix", f"{local}.bias": "bias"}
        reported = [str(w.message) for w in caught if "specopt: cannot tell" in str(w.message)]
        assert len(reported) == (local == "query_key_value")  # reported: a q/k/v layout it cannot tell; Mamba's not
        forced = specopt.param_groups(model, roles={f"*{local}.weight": "qkv"})
        assert roles_by_name(forced) == {f"{local}.weight": "qkv", f"{local}.bias": "bias"}
        assert set(specopt.spectral_norms(model)) == {f"{local}.weight"}  # one matrix, reported once
    mha = nn.MultiheadAttention(8, 2)  # its in_proj_weight is [W_q; W_k; W_v] whatever the module is called
    holder = nn.Module()
    holder.in_proj = mha
    assert roles_by_name(specopt.param_groups(holder))["in_proj.in_proj_weight"] == "qkv"


class LogitScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(3, 1, 1)))  # Swin V2: heads × 1 × 1
        self.head_Logit_Scale = nn.Parameter(torch.zeros(1))  # matched lowercased, any ≥ 1-D shape (SigLIP: (1,))
        self.clip = nn.Parameter(torch.tensor(2.6592))  # CLIP's logit_scale is 0-dim: none already
        self.proj = nn.Linear(4, 3)


def test_logit_scale_is_left_alone():
    roles = roles_by_name(specopt.param_groups(LogitScale()))
    assert roles == {"logit_scale": "none", "head_Logit_Scale": "none", "clip": "none",
                     "proj.weight": "matrix", "proj.bias": "bias"}
    model = LogitScale()
    assert set(specopt.spectral_norms(model)) == {"proj.weight"}
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=0.1, strength=1.0)
    before = model.logit_scale.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(model.logit_scale.detach(), before)


def test_torchvision_swin_v2_roles():
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    model = SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1], num_heads=[3, 3], window_size=[2, 2],
                            block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2, num_classes=5)
    roles = roles_by_name(specopt.param_groups(model))
    for stage in ("features.1.0", "features.3.0"):
        attn = f"{stage}.attn"
        assert model.get_parameter(f"{attn}.logit_scale").shape == (3, 1, 1)
        assert {n: r for n, r in roles.items() if n.startswith(attn)} == {
            f"{attn}.logit_scale": "none",  # a log temperature, not a 3 × 1 matrix pulled to norm 1
            f"{attn}.qkv.weight": "qkv", f"{attn}.qkv.bias": "bias",
            f"{attn}.proj.weight": "matrix", f"{attn}.proj.bias": "bias",
            f"{attn}.cpb_mlp.0.weight": "matrix", f"{attn}.cpb_mlp.0.bias": "bias",
            f"{attn}.cpb_mlp.2.weight": "matrix",
        }
    assert roles["features.2.reduction.weight"] == "matrix" and roles["features.2.norm.weight"] == "scale"
    assert "none" not in {r for n, r in roles.items() if "logit_scale" not in n}


def test_infer_role_keeps_its_three_argument_form():
    attn = FusedAttention()
    assert specopt.infer_role(attn.qkv, "weight", attn.qkv.weight) == "matrix"  # no module name: plain matrix
    assert specopt.infer_role(attn.qkv, "weight", attn.qkv.weight, module_name="blocks.0.attn.qkv") == "qkv"
    assert specopt.infer_role(attn.qkv, "weight", attn.qkv.weight, module_name="qkv") == "qkv"
    mha = nn.MultiheadAttention(6, 2)
    assert specopt.infer_role(mha, "in_proj_weight", mha.in_proj_weight) == "qkv"


def test_multihead_attention_roles():
    same = roles_by_name(specopt.param_groups(nn.MultiheadAttention(6, 2, add_bias_kv=True)))
    assert same == {"in_proj_weight": "qkv", "in_proj_bias": "bias", "bias_k": "bias", "bias_v": "bias",
                    "out_proj.weight": "matrix", "out_proj.bias": "bias"}
    # kdim ≠ embed_dim: three separate projections (6×6, 6×4, 6×5), each a plain matrix
    separate = roles_by_name(specopt.param_groups(nn.MultiheadAttention(6, 2, kdim=4, vdim=5)))
    assert separate == {"q_proj_weight": "matrix", "k_proj_weight": "matrix", "v_proj_weight": "matrix",
                        "in_proj_bias": "bias", "out_proj.weight": "matrix", "out_proj.bias": "bias"}


class Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(10, 4)
        self.token_embedding = nn.Embedding(10, 4)  # BERT/CLIP style: a table, whatever the module is called
        self.position_embeddings = nn.Embedding(7, 4)
        self.bag = nn.EmbeddingBag(10, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(7, 4))  # CLIP: a raw parameter, added


def test_embedding_tables_are_matrices_and_raw_positional_parameters_are_biases():
    roles = roles_by_name(specopt.param_groups(Embeddings()))
    assert roles == {"tokens.weight": "matrix", "token_embedding.weight": "matrix",
                     "position_embeddings.weight": "matrix", "bag.weight": "matrix", "positional_embedding": "bias"}
    text = specopt.describe(Embeddings())
    assert next(l for l in text.splitlines() if l.startswith("tokens.weight")).split()[1:3] == ["10×4", "matrix"]


def test_invalid_qkv_role_is_a_one_line_error_naming_the_parameter():
    model = nn.Sequential(nn.Linear(4, 5), nn.Conv2d(3, 6, 3))
    with pytest.raises(ValueError, match=r"role 'qkv' needs a 2-D weight .*'0\.weight' has shape 5×4") as err:
        specopt.param_groups(model, roles={"0.weight": "qkv"})
    assert "\n" not in str(err.value) and "'matrix'" in str(err.value)
    with pytest.raises(ValueError, match=r"'1\.weight' has shape 6×3×3×3"):  # 4-D, even though 6 % 3 == 0
        specopt.param_groups(model, roles={"1.weight": "qkv"})
    group = {"params": [model[0].weight], "param_names": ["fc.weight"], "role": "qkv"}
    with pytest.raises(ValueError, match=r"'fc\.weight' has shape 5×4") as err:
        specopt.roles.group_roles(group)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"parameter 1 of its group has shape 6×3×3×3"):
        specopt.roles.group_roles({"params": [torch.zeros(6, 4), model[1].weight], "roles": ["qkv", "qkv"]})
    with pytest.raises(ValueError, match="role 'qkv'"):
        specopt.describe([{"params": [model[0].weight], "role": "qkv"}])
    assert specopt.roles.group_roles({"params": [torch.zeros(6, 4)], "role": "qkv"}) == ["qkv"]


def test_auto_override_is_resolved_and_kept_with_split_roles():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    split = specopt.param_groups(model, roles={"1.*": "auto"}, split_roles=True)
    assert roles_by_name(split) == {"0.weight": "matrix", "0.bias": "bias", "1.weight": "none", "1.bias": "none"}


def describe_table(text: str) -> dict[str, dict[str, str]]:
    """describe()'s table as {name: {column: cell}}, cut at the column boundaries of its dashed line."""
    header, dashes, *body = text.splitlines()
    spans, start = [], 0
    for dash in dashes.split("  "):
        spans.append((start, start + len(dash)))
        start += len(dash) + 2
    spans[-1] = (spans[-1][0], None)
    columns = [header[a:b].strip() for a, b in spans]
    rows = [{c: line[a:b].strip() for c, (a, b) in zip(columns, spans)} for line in body]
    return {row["name"]: row for row in rows}


def test_describe_shows_qkv_blocks():
    text = specopt.describe(small_vit())
    lines = {l.split()[0]: l for l in text.splitlines()[2:]}
    table = describe_table(text)
    qkv = table["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]
    assert qkv["shape"] == "576×192 (as 3×192×192)" and qkv["role"] == "qkv"
    assert qkv["rule"] == "MultiheadAttention in_proj: [q; k; v] rows"
    assert lines["class_token"].split()[1:3] == ["1×1×192", "bias"]
    assert lines["conv_proj.weight"].split()[1:5] == ["192×3×4×4", "(as", "192×48)", "matrix"]
    assert len(text.splitlines()) == 2 + len(list(small_vit().parameters()))


def test_describe_lists_every_tensor_with_its_rule():
    model = Block()
    text = specopt.describe(specopt.SpectralAdam(specopt.param_groups(model, strength=0.3)))
    assert text.splitlines()[0].split() == ["name", "shape", "role", "strength", "k", "form", "rule"]
    line = next(l for l in text.splitlines() if l.startswith("conv.weight"))
    assert "8×3×3×3 (as 8×27)" in line and "matrix" in line and "0.3" in line and "two-sided" in line
    line = next(l for l in text.splitlines() if l.startswith("temperature"))
    assert line.split()[2:] == ["none", "-", "-", "-"]
    forms = describe_table(specopt.describe(specopt.SpectralAdam(specopt.param_groups(model), pull="one-sided",
                                                                 precondition=True)))
    assert forms["conv.weight"]["form"] == "one-sided+precondition" and forms["temperature"]["form"] == "-"
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
