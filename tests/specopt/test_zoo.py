"""The model zoo: roles and block layouts on the architectures people train, and the spectral step on them.

Every model is built from a tiny config with random weights (no downloads). The expected role and block layout of
every tensor is written here from the model's own definition — its config (n_embd, num_attention_heads,
num_key_value_heads, head_dim, ...) and the modules' documented storage (HF ``Conv1D`` weights are in × out) — never
by calling ``specopt.infer_role``. Then 300 pure spectral steps (zero gradients, ``Spectral(SGD)`` at η·λ = 1, 4
power iterations a step) must move every block's σ1, measured independently with ``torch.linalg.matrix_norm(ord=2)``,
to 1 ± 0.02, scales to 1, and leave every ``none`` tensor bit for bit as it was.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import specopt


M, B, S, N = "matrix", "bias", "scale", "none"


def qkv(sizes, axis=0):
    return ("qkv", {"sizes": tuple(sizes), "axis": axis})


def tagged(model: nn.Module) -> dict[str, object]:
    """{name: role, or ("qkv", blocks)} from ``specopt.param_groups(model)`` (one group)."""
    (group,) = specopt.param_groups(model)
    blocks = group.get("blocks") or [None] * len(group["params"])
    return {n: (r, b) if r == "qkv" else r for n, r, b in zip(group["param_names"], group["roles"], blocks)}


def layer_norm(prefix: str) -> dict[str, str]:
    return {f"{prefix}.weight": S, f"{prefix}.bias": B}


def linear(prefix: str, bias: bool = True) -> dict[str, str]:
    return {f"{prefix}.weight": M, **({f"{prefix}.bias": B} if bias else {})}


# --- the models and what their definitions say -----------------------------------------------------------------

def resnet():
    from torchvision.models import resnet18

    model = resnet18(num_classes=5)
    expected = {**{"conv1.weight": M}, **layer_norm("bn1"), **linear("fc")}
    for name, module in model.named_modules():  # the definition: BasicBlock = conv-bn-relu-conv-bn (+ downsample)
        if name.startswith("layer") and isinstance(module, nn.Conv2d):
            expected[f"{name}.weight"] = M  # bias=False in every torchvision ResNet conv
        if name.startswith("layer") and isinstance(module, nn.BatchNorm2d):
            expected |= layer_norm(name)
    return model, expected


def torchvision_vit():
    from torchvision.models import VisionTransformer

    hidden, layers = 32, 2
    model = VisionTransformer(image_size=16, patch_size=8, num_layers=layers, num_heads=2, hidden_dim=hidden,
                              mlp_dim=64, num_classes=5)
    expected = {"class_token": B, "encoder.pos_embedding": B, **linear("conv_proj"), **layer_norm("encoder.ln"),
                **linear("heads.head")}
    for i in range(layers):
        layer = f"encoder.layers.encoder_layer_{i}"
        expected |= {**layer_norm(f"{layer}.ln_1"), **layer_norm(f"{layer}.ln_2"),
                     f"{layer}.self_attention.in_proj_weight": qkv((hidden,) * 3),  # [W_q; W_k; W_v], E rows each
                     f"{layer}.self_attention.in_proj_bias": B, **linear(f"{layer}.self_attention.out_proj"),
                     **linear(f"{layer}.mlp.0"), **linear(f"{layer}.mlp.3")}
    return model, expected


def convnext():
    from torchvision.models import ConvNeXt
    from torchvision.models.convnext import CNBlockConfig

    model = ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=3)
    expected = {**linear("features.0.0"), **layer_norm("features.0.1"), **layer_norm("features.2.0"),
                **linear("features.2.1"), **layer_norm("classifier.0"), **linear("classifier.2")}
    for stage in ("features.1.0", "features.3.0"):  # CNBlock: dwconv, LayerNorm, Linear, GELU, Linear, layer_scale
        expected |= {f"{stage}.layer_scale": N, **linear(f"{stage}.block.0"), **layer_norm(f"{stage}.block.2"),
                     **linear(f"{stage}.block.3"), **linear(f"{stage}.block.5")}
    return model, expected


def timm_vit():
    import timm  # the test extra: a missing install fails here, it is not skipped

    dim, heads, depth = 32, 2, 2
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=dim,
                              depth=depth, num_heads=heads, init_values=1e-5, num_classes=5)
    expected = {"cls_token": B, "pos_embed": B, **linear("patch_embed.proj"), **layer_norm("norm"), **linear("head")}
    for i in range(depth):
        blk = f"blocks.{i}"
        expected |= {**layer_norm(f"{blk}.norm1"), **layer_norm(f"{blk}.norm2"),
                     f"{blk}.attn.qkv.weight": qkv((dim,) * 3), f"{blk}.attn.qkv.bias": B,  # heads × head_dim each
                     **linear(f"{blk}.attn.proj"), f"{blk}.ls1.gamma": N, f"{blk}.ls2.gamma": N,
                     **linear(f"{blk}.mlp.fc1"), **linear(f"{blk}.mlp.fc2")}
    return model, expected


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16)
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: listed once, under the embedding's name
    e = config.n_embd
    expected = {"transformer.wte.weight": M, "transformer.wpe.weight": M, **layer_norm("transformer.ln_f")}
    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        expected |= {**layer_norm(f"{h}.ln_1"), **layer_norm(f"{h}.ln_2"),
                     f"{h}.attn.c_attn.weight": qkv((e, e, e), axis=1),  # Conv1D: in × 3E, q|k|v columns
                     f"{h}.attn.c_attn.bias": B, **linear(f"{h}.attn.c_proj"), **linear(f"{h}.mlp.c_fc"),
                     **linear(f"{h}.mlp.c_proj")}
    return model, expected


def gpt2_cross_attention():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16, add_cross_attention=True)
    model = GPT2LMHeadModel(config)
    e = config.n_embd
    expected = {"transformer.wte.weight": M, "transformer.wpe.weight": M, **layer_norm("transformer.ln_f")}
    h = "transformer.h.0"
    expected |= {**layer_norm(f"{h}.ln_1"), **layer_norm(f"{h}.ln_2"), **layer_norm(f"{h}.ln_cross_attn"),
                 f"{h}.attn.c_attn.weight": qkv((e, e, e), axis=1), f"{h}.attn.c_attn.bias": B,
                 **linear(f"{h}.attn.c_proj"),
                 f"{h}.crossattention.c_attn.weight": qkv((e, e), axis=1),  # cross-attention: [k | v] columns
                 f"{h}.crossattention.c_attn.bias": B, **linear(f"{h}.crossattention.q_attn"),
                 **linear(f"{h}.crossattention.c_proj"), **linear(f"{h}.mlp.c_fc"), **linear(f"{h}.mlp.c_proj")}
    return model, expected


def bert():
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                        vocab_size=50, max_position_embeddings=16)
    model = BertModel(config)
    expected = {"embeddings.word_embeddings.weight": M, "embeddings.position_embeddings.weight": M,
                "embeddings.token_type_embeddings.weight": M, **layer_norm("embeddings.LayerNorm"),
                **linear("pooler.dense")}
    for i in range(config.num_hidden_layers):
        layer = f"encoder.layer.{i}"
        expected |= {**linear(f"{layer}.attention.self.query"), **linear(f"{layer}.attention.self.key"),
                     **linear(f"{layer}.attention.self.value"), **linear(f"{layer}.attention.output.dense"),
                     **layer_norm(f"{layer}.attention.output.LayerNorm"), **linear(f"{layer}.intermediate.dense"),
                     **linear(f"{layer}.output.dense"), **layer_norm(f"{layer}.output.LayerNorm")}
    return model, expected


def mistral():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=64, vocab_size=50, max_position_embeddings=16, tie_word_embeddings=True)
    model = MistralForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    expected = {"model.embed_tokens.weight": M, "model.norm.weight": S}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}"
        expected |= {f"{layer}.{p}.weight": M for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                         "mlp.down_proj")}
        expected |= {f"{layer}.input_layernorm.weight": S, f"{layer}.post_attention_layernorm.weight": S}
    return model, expected


def phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=1, vocab_size=50, max_position_embeddings=16, pad_token_id=0,
                        eos_token_id=2, bos_token_id=1)
    model = Phi3ForCausalLM(config)
    head_dim = config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim  # 32, 8
    expected = {"model.embed_tokens.weight": M, "model.norm.weight": S, "lm_head.weight": M}
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}"
        expected |= {f"{layer}.self_attn.qkv_proj.weight": qkv((q, kv, kv)),  # grouped-query rows q | k | v
                     f"{layer}.self_attn.o_proj.weight": M, f"{layer}.mlp.gate_up_proj.weight": M,
                     f"{layer}.mlp.down_proj.weight": M, f"{layer}.input_layernorm.weight": S,
                     f"{layer}.post_attention_layernorm.weight": S}
    return model, expected


def parametrized():
    from torch.nn.utils import parametrizations

    model = nn.Module()
    model.wn = parametrizations.weight_norm(nn.Linear(6, 8))  # W = g · v/‖v‖ row by row; g is 8 × 1
    model.legacy = nn.Linear(6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        torch.nn.utils.weight_norm(model.legacy)
    model.sn = parametrizations.spectral_norm(nn.Linear(6, 8))  # effective weight: original / σ1(original)
    model.legacy_sn = torch.nn.utils.spectral_norm(nn.Linear(6, 8))  # weight_orig, with weight_u/v buffers
    model.orth = parametrizations.orthogonal(nn.Linear(8, 8, bias=False))  # effective weight orthogonal: σ1 = 1
    model.emb = nn.Embedding(20, 8)
    with torch.no_grad():
        model.wn.parametrizations.weight.original0.mul_(3.0)  # rows of norm ≠ 1, so the scale rule has work
        model.legacy.weight_g.mul_(0.25)
    expected = {"wn.bias": B, "wn.parametrizations.weight.original0": S, "wn.parametrizations.weight.original1": N,
                "legacy.bias": B, "legacy.weight_g": S, "legacy.weight_v": N,
                "sn.bias": B, "sn.parametrizations.weight.original": N, "legacy_sn.bias": B,
                "legacy_sn.weight_orig": N, "orth.parametrizations.weight.original": N, "emb.weight": M}
    return model, expected


ZOO = {"resnet18": resnet, "torchvision_vit": torchvision_vit, "convnext": convnext, "timm_vit": timm_vit,
       "gpt2": gpt2, "gpt2_cross_attention": gpt2_cross_attention, "bert": bert, "mistral": mistral, "phi3": phi3, "parametrized": parametrized}


def blocks_of(param: torch.Tensor, expected: object) -> list[torch.Tensor]:
    """The matrices the paper's rule applies to, cut from the expected layout (not from specopt)."""
    w = param.detach().float()
    if isinstance(expected, tuple):
        return list(w.split(expected[1]["sizes"], dim=expected[1]["axis"]))
    return [w.reshape(w.shape[0], -1)]


def sigma(block: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(block, ord=2).item()


@pytest.mark.parametrize("name", list(ZOO))
def test_every_tensor_of_the_zoo_gets_the_role_and_blocks_of_its_definition(name):
    torch.manual_seed(0)
    model, expected = ZOO[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layout here is declared by the model: nothing to report
        got = tagged(model)
    assert got == expected
    assert len(got) == len({id(p) for p in model.parameters()})  # every tensor once (tied lm_head included)


STEPS = {"resnet18": 40}  # its kaiming-initialized 512 × 4608 kernels have up to 498 singular values above 1


@pytest.mark.parametrize("name", list(ZOO))
def test_pure_spectral_steps_drive_every_block_to_sigma_one_and_leave_none_tensors_alone(name):
    torch.manual_seed(0)
    model, expected = ZOO[name]()
    params = dict(model.named_parameters(remove_duplicate=True))
    before = {n: p.detach().clone() for n, p in params.items()}
    opt = specopt.Spectral(torch.optim.SGD(specopt.param_groups(model, strength=1.0, power_iterations=4), lr=1.0))
    steps = STEPS.get(name, 300)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.zeros_like(p)
        opt.step()
    assert set(params) == set(expected)
    for n, p in params.items():
        role = expected[n][0] if isinstance(expected[n], tuple) else expected[n]
        if role == N:
            assert torch.equal(p.detach(), before[n]), n
        elif role == S:
            assert torch.allclose(p.detach(), torch.ones_like(p), atol=1e-6), n
        elif role == B:
            assert p.detach().norm() <= before[n].norm() * (1 + 1e-6), n
        else:
            for j, (old, new) in enumerate(zip(blocks_of(before[n], expected[n]), blocks_of(p, expected[n]))):
                s0, s1 = sigma(old), sigma(new)
                if s0 == 0.0:  # a zero-initialized head (torchvision ViT): σ = 0 is a stationary point, it stays 0
                    assert s1 == 0.0, n
                elif name in STEPS:  # too few steps to reach 1: every one moved toward it, none past it
                    assert abs(s1 - 1) <= abs(s0 - 1) + 1e-4 and (s1 - 1) * (s0 - 1) >= -1e-4, (n, j, s0, s1)
                else:
                    assert s1 == pytest.approx(1.0, abs=2e-2), (n, j, s0, s1)


def test_specopt_reports_each_fused_layout_it_cannot_determine_once_with_the_override_that_settles_it():
    from transformers import CodeGenConfig, CodeGenForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

    codegen = CodeGenForCausalLM(CodeGenConfig(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16,
                                               rotary_dim=4, bos_token_id=1, eos_token_id=2))
    with pytest.warns(UserWarning) as caught:
        roles = tagged(codegen)
    messages = [str(w.message) for w in caught if "specopt" in str(w.message)]
    assert len(messages) == 1  # one warning for both layers
    assert "'transformer.h.0.attn.qkv_proj.weight'" in messages[0] and "1 more like it" in messages[0]
    assert "roles={'*.qkv_proj.weight': 'matrix'}" in messages[0]
    assert roles["transformer.h.0.attn.qkv_proj.weight"] == M  # mp_num chunks of [q; v; k]: not guessed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tagged(codegen)  # reported once per tensor
        settled = CodeGenForCausalLM(codegen.config)
        specopt.param_groups(settled, roles={"*.qkv_proj.weight": "matrix"})  # the override silences it
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    for multi_query in (True, False):  # [q; k; v] rows (E, head_dim, head_dim) vs q, k, v interleaved per head
        config = GPTBigCodeConfig(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16,
                                  multi_query=multi_query, bos_token_id=1, eos_token_id=2)
        bigcode = GPTBigCodeForCausalLM(config)
        name = "transformer.h.0.attn.c_attn.weight"
        if multi_query:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert tagged(bigcode)[name] == qkv((config.n_embd, config.n_embd // config.n_head,
                                                     config.n_embd // config.n_head))
        else:
            with pytest.warns(UserWarning, match=r"'transformer\.h\.0\.attn\.c_attn\.weight'.*interleaves"):
                assert tagged(bigcode)[name] == M
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=50))
    with pytest.warns(UserWarning, match=r"'gpt_neox\.layers\.0\.attention\.query_key_value\.weight'.*interleave"):
        assert tagged(neox)["gpt_neox.layers.0.attention.query_key_value.weight"] == M


def test_gpt2_overrides_keep_the_declared_column_blocks_or_state_others():
    model, expected = gpt2()
    e = model.config.n_embd
    name = "transformer.h.0.attn.c_attn.weight"
    assert tagged(model)[name] == qkv((e, e, e), axis=1)
    (plain,) = specopt.param_groups(model, roles={"*.c_attn.weight": "qkv"})  # plain "qkv": the declared columns
    assert plain["blocks"][plain["param_names"].index(name)] == {"sizes": (e, e, e), "axis": 1}
    groups = specopt.param_groups(model, roles={"*.c_attn.weight": ("qkv", {"sizes": (2 * e, e), "axis": 1})})
    (group,) = groups
    assert group["blocks"][group["param_names"].index(name)] == {"sizes": (2 * e, e), "axis": 1}
    text = specopt.describe(model)
    line = next(l for l in text.splitlines() if l.startswith(name))
    assert f"{e}×{3 * e} (as 3×{e}×{e}, by columns)" in line and "HF Conv1D c_attn" in line
    norms = specopt.spectral_norms(model)
    w = model.get_parameter(name).detach()
    for j, block in enumerate("qkv"):
        assert norms[f"{name}[{block}]"].item() == pytest.approx(sigma(w[:, j * e:(j + 1) * e]), rel=1e-5)
