"""The recipes of docs/integrations.md run as written: each section's code block is executed on a tiny model."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import specopt

PAGE = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


def recipe(title: str) -> str:
    """The first ```python block under the page's ``## title`` heading."""
    sections = re.split(r"^## ", PAGE.read_text(), flags=re.M)
    section = next(s for s in sections if s.startswith(title))
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.mul_(4.0)  # σ1 well above 1: the spectral step visibly pulls it
    return model


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def roles_of(optimizer) -> dict[torch.Tensor, str]:
    """The role the optimizer's spectral step applies to each parameter (as :func:`specopt.roles.group_roles` reads
    a group)."""
    return {p: r for g in optimizer.param_groups for p, r in zip(g["params"], specopt.roles.group_roles(g))}


def sigma(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().float(), ord=2).item()


def test_hf_trainer_recipe_trains_with_the_roles_param_groups_gave(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (8, 12), generator=g)
    train_dataset = [{"input_ids": x, "labels": x} for x in ids]
    ln = model.transformer.ln_f.weight
    with torch.no_grad():
        ln.fill_(3.0)  # a LayerNorm scale away from 1: role "scale" pulls it toward 1
    namespace = {"model": model, "train_dataset": train_dataset, "output_dir": str(tmp_path), "max_steps": 3}
    exec(recipe("HuggingFace `Trainer`"), namespace)
    optimizer, trainer = namespace["optimizer"], namespace["trainer"]
    assert trainer.state.global_step == 3
    roles = roles_of(optimizer)
    assert roles[ln] == "scale" and roles[model.transformer.ln_f.bias] == "bias"
    assert optimizer.state[ln]["step"].item() == 3 and trainer.optimizer.optimizer is optimizer  # accelerate wraps it
    assert optimizer.param_groups[0]["lr"] < 5e-4  # the Trainer's cosine schedule drove our optimizer
    assert "spectral_sigma" in optimizer.state[model.transformer.h[0].mlp.c_fc.weight]  # a matrix took the step

    # what the page says of optimizer_cls_and_kwargs: the Trainer's own two groups, without roles, so every 1-D
    # tensor (LayerNorm scales, biases) is left alone and every >= 2-D one is a plain matrix
    other = transformers.Trainer(model=model, args=namespace["args"], train_dataset=train_dataset,
                                 optimizer_cls_and_kwargs=(specopt.SpectralAdamW, {"lr": 5e-4}))
    other_optimizer = other.create_optimizer()
    assert len(other_optimizer.param_groups) == 2
    assert {p.dim() >= 2: r for p, r in roles_of(other_optimizer).items()} == {True: "matrix", False: "none"}
    assert len(set(roles_of(other_optimizer).values())) == 2


def test_lightning_recipe_takes_the_spectral_step_through_lightnings_closure():
    pytest.importorskip("lightning")
    model = tiny_classifier()
    before = sigma(model[0].weight)
    loader = torch.utils.data.DataLoader(list(zip(*map(torch.cat, zip(*batches(6))))), batch_size=4)
    namespace = {"model": model, "loader": loader, "max_steps": 6, "torch": torch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on num_workers and the like
        exec(recipe("PyTorch Lightning"), namespace)
    assert namespace["trainer"].global_step == 6
    optimizer = namespace["trainer"].optimizers[0]
    assert isinstance(optimizer, specopt.SpectralAdam)
    assert optimizer.state[model[0].weight]["step"].item() == 6 and "spectral_sigma" in optimizer.state[model[0].weight]
    assert sigma(model[0].weight) < before


def test_compiled_model_and_compile_step_recipe_equals_the_eager_loop_and_warns_nothing(monkeypatch):
    torch._dynamo.reset()
    steps = 6
    eager_model, model = tiny_classifier(), tiny_classifier()
    eager = specopt.SpectralAdam(specopt.param_groups(eager_model), lr=1e-2)
    eager_scheduler = torch.optim.lr_scheduler.OneCycleLR(eager, max_lr=1e-2, total_steps=steps)
    for x, y in batches(steps):
        torch.nn.functional.cross_entropy(eager_model(x), y).backward()
        eager.step()
        eager.zero_grad()
        eager_scheduler.step()
    # Dynamo's graphs without Inductor's code generation (tests/specopt/test_compile.py has it): seconds, not minutes
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    namespace = {"model": model, "loader": batches(steps), "max_steps": steps, "torch": torch}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(recipe("`torch.compile(model)` and a compiled step"), namespace)
    assert [str(w.message) for w in caught] == []
    for p, q in zip(eager_model.parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)
    assert sigma(model[0].weight) < sigma(tiny_classifier()[0].weight)


def test_timm_and_torchvision_recipe_gives_each_tensor_the_rule_its_module_declares(capsys):
    timm = pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    namespace = {"pretrained": False}
    exec(recipe("timm and torchvision models"), namespace)
    vit, resnet = namespace["vit"], namespace["resnet"]
    assert isinstance(vit, timm.models.vision_transformer.VisionTransformer)
    printed = capsys.readouterr().out
    e = vit.embed_dim  # timm's Attention: qkv = nn.Linear(dim, 3 * dim), rows [q; k; v]
    groups = specopt.param_groups(vit)
    roles = {n: r for g in groups for n, r in zip(g["param_names"], g["roles"])}
    blocks = {n: b for g in groups for n, b in zip(g["param_names"], g["blocks"])}
    assert roles["blocks.0.attn.qkv.weight"] == "qkv" and tuple(blocks["blocks.0.attn.qkv.weight"]["sizes"]) == (e,) * 3
    assert roles["blocks.0.ls1.gamma"] == roles["blocks.0.ls2.gamma"] == "none"  # LayerScale keeps its 1e-5 start
    assert roles["cls_token"] == roles["pos_embed"] == "bias" and roles["blocks.0.norm1.weight"] == "scale"
    r = {n: role for g in specopt.param_groups(resnet) for n, role in zip(g["param_names"], g["roles"])}
    assert r["conv1.weight"] == "matrix" and r["bn1.weight"] == "scale" and r["bn1.bias"] == "bias"
    for name in ("blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma", "layer1.0.conv1.weight", "bn1.weight"):
        assert name in printed  # describe(optimizer, net) names the model's tensors


def test_ddp_and_fsdp2_recipe_runs_on_one_process(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model, sharded = tiny_classifier(), tiny_classifier()
        namespace = {"model": model, "sharded": sharded}
        exec(recipe("DDP and FSDP2"), namespace)
        for net, optimizer in ((namespace["ddp"], namespace["optimizer"]), (sharded, namespace["sharded_optimizer"])):
            roles = roles_of(optimizer)
            before = sigma(model[0].weight if net is namespace["ddp"] else sharded[0].weight.full_tensor())
            for x, y in batches(5):
                torch.nn.functional.cross_entropy(net(x), y).backward()
                optimizer.step()
                optimizer.zero_grad()
            first = model[0].weight if net is namespace["ddp"] else sharded[0].weight.full_tensor()
            assert sigma(first) < before  # the first layer (σ1 ≫ 1) is pulled down
        assert roles_of(namespace["optimizer"])[model[0].bias] == "none"  # the override, written for the bare module
        assert roles_of(namespace["optimizer"])[model[3].bias] == "bias"
        assert roles[sharded[1].weight] == "scale"
    finally:
        dist.destroy_process_group()
