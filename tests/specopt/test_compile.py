"""torch.compile of the optimizer step: one graph for SpectralAdam, the eager result, no recompiles per step."""

import pytest
import torch
from torch import nn

import specopt


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.LayerNorm(24), nn.ReLU(), nn.Linear(24, 4))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # σ1 ≈ 3: a visible pull (not truncated: a truncated landing on σ = 1 makes the
        # next top direction a choice between near-equal values that rounding decides)
    return model


def train(model, step, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        step()


COMPILERS = {
    "torch.compile": lambda opt: torch.compile(opt.step, fullgraph=isinstance(opt, specopt.SpectralAdam)),
    "specopt.compile_step": specopt.compile_step,  # the same, with Inductor options (specopt.COMPILE_OPTIONS)
}


@pytest.mark.parametrize("how", sorted(COMPILERS))
def test_compiled_spectral_adam_step_is_one_graph_and_equals_the_eager_step(how):
    torch._dynamo.reset()
    eager, compiled = make_model(), make_model()
    opt_e = specopt.SpectralAdam(specopt.param_groups(eager), lr=1e-2)
    opt_c = specopt.SpectralAdam(specopt.param_groups(compiled), lr=1e-2)
    train(eager, opt_e.step, 6)
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    train(compiled, COMPILERS[how](opt_c), 6)
    # the first step (fresh state) and the second (warm state) compile; later steps reuse the second graph
    assert torch._dynamo.utils.counters["frames"]["ok"] - frames <= 2
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    for p in eager.parameters():
        for key in ("spectral_u", "spectral_v", "spectral_sigma"):
            if key in opt_e.state[p]:
                torch.testing.assert_close(opt_c.state[dict(zip(eager.parameters(), compiled.parameters()))[p]][key],
                                           opt_e.state[p][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", sorted(COMPILERS))
def test_compiled_wrapper_step_equals_the_eager_step_and_breaks_only_where_torch_optim_does(how):
    """``Spectral(SGD)``: SGD.step itself graph-breaks (torch.optim's ``_use_grad_for_differentiable``, twice, on
    purpose), so fullgraph=True is impossible for any wrapped torch.optim optimizer; specopt adds no break."""
    torch._dynamo.reset()
    eager, compiled = make_model(), make_model()
    opt_e = specopt.Spectral(torch.optim.SGD(specopt.param_groups(eager), lr=1e-2, momentum=0.9))
    opt_c = specopt.Spectral(torch.optim.SGD(specopt.param_groups(compiled), lr=1e-2, momentum=0.9))
    train(eager, opt_e.step, 5)
    train(compiled, COMPILERS[how](opt_c), 5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    explanation = torch._dynamo.explain(opt_c.step)()
    sources = {frame.filename.replace("\\", "/").rsplit("/", 2)[-2:][0] + "/" + frame.filename.rsplit("/", 1)[-1]
               for reason in explanation.break_reasons for frame in reason.user_stack[-1:]}
    assert sources <= {"optim/optimizer.py"}, sources


def test_compile_step_takes_a_mode_with_its_options():
    """torch.compile refuses ``mode`` and ``options`` together; compile_step expands the mode into options."""
    opt = specopt.SpectralAdam(specopt.param_groups(make_model()), lr=1e-2)
    for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
        assert callable(specopt.compile_step(opt, mode=mode, options={"realize_opcount_threshold": 8}))
