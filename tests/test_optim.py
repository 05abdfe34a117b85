"""Optimizers by name, Lookahead against the paper's update, and the schedules."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from distill.errors import RecipeError
from distill.optim import Lookahead, build_optimizer, build_scheduler, lr_factor
from distill.recipe import OptimConfig


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def paper_lookahead(model: nn.Module, inner: torch.optim.Optimizer, batches, k: int,
                    la_alpha: float) -> list[list[torch.Tensor]]:
    """Zhang et al. 2019, Algorithm 1, written independently: phi_0 = theta_0; each outer
    step runs k inner steps from theta = phi, then phi <- phi + alpha (theta_k - phi).
    Returns the fast weights after every step."""
    params = list(model.parameters())
    phi = [p.detach().clone() for p in params]
    trace = []
    for step, (x, y) in enumerate(batches, start=1):
        inner.zero_grad()
        _loss(model, x, y).backward()
        inner.step()
        if step % k == 0:
            with torch.no_grad():
                for p, slow in zip(params, phi):
                    slow += la_alpha * (p - slow)
                    p.copy_(slow)
        trace.append([p.detach().clone() for p in params])
    return trace


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> list[list[torch.Tensor]]:
    trace = []
    for x, y in batches:
        optimizer.zero_grad()
        _loss(model, x, y).backward()
        optimizer.step()
        trace.append([p.detach().clone() for p in model.parameters()])
    return trace


@pytest.mark.parametrize("inner,la_alpha", [("adam", 0.8), ("momentum", 0.8), ("adam", 0.3)])
def test_lookahead_follows_the_paper_from_the_first_outer_step(inner: str, la_alpha: float
                                                               ) -> None:
    """alpha != 0.5, where a step of alpha and one of 1 - alpha differ."""
    k, lr = 3, 0.05
    batches = _batches(3 * k + 1)  # three outer steps, the first included, and one more
    ours = _model()
    cfg = OptimConfig(name=f"lookahead_{inner}", lr=lr, la_k=k, la_alpha=la_alpha)
    got = _run(ours, build_optimizer(ours, cfg), batches)

    ref = _model()
    ref_inner = (torch.optim.Adam(ref.parameters(), lr=lr) if inner == "adam"
                 else torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9))
    want = paper_lookahead(ref, ref_inner, batches, k, la_alpha)
    for step, (g, w) in enumerate(zip(got, want), start=1):
        for a, b in zip(g, w):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"step {step}")


def test_timm_lookahead_differs_at_the_first_outer_step() -> None:
    """The control: timm's lazily-initialised slow weights give phi_1 = theta_k, which the
    comparison above must tell apart from the paper."""
    from timm.optim import Lookahead as TimmLookahead

    k, batches = 3, _batches(3)
    timm_model = _model()
    timm_opt = TimmLookahead(torch.optim.Adam(timm_model.parameters(), lr=0.05), alpha=0.5, k=k)
    got = _run(timm_model, timm_opt, batches)
    ref = _model()
    want = paper_lookahead(ref, torch.optim.Adam(ref.parameters(), lr=0.05), batches, k, 0.5)
    assert not torch.allclose(got[-1][0], want[-1][0], atol=1e-6)


def test_lookahead_state_dict_round_trip_continues_identically() -> None:
    batches = _batches(8)
    cfg = OptimConfig(name="lookahead_adam", lr=0.05, la_k=3)
    a = _model()
    opt_a = build_optimizer(a, cfg)
    _run(a, opt_a, batches[:4])
    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b, cfg)
    # through bytes, as a checkpoint would (torch shares state tensors between live optimizers)
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    end_a = _run(a, opt_a, batches[4:])[-1]
    end_b = _run(b, opt_b, batches[4:])[-1]
    for x, y in zip(end_a, end_b):
        assert torch.equal(x, y)
    assert isinstance(opt_b, Lookahead)


def test_optimizer_names_mean_what_they_say() -> None:
    model = _model()
    sgd = build_optimizer(model, OptimConfig(name="sgd", lr=0.1))
    momentum = build_optimizer(model, OptimConfig(name="momentum", lr=0.1, momentum=0.8))
    nesterov = build_optimizer(model, OptimConfig(name="nesterov", lr=0.1, momentum=0.7))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.0
    assert momentum.defaults["momentum"] == 0.8 and not momentum.defaults["nesterov"]
    assert nesterov.defaults["nesterov"] and nesterov.defaults["momentum"] == 0.7
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        adam = build_optimizer(model, OptimConfig(name=name, betas=(0.8, 0.95)))
        assert isinstance(adam, cls)
        assert adam.defaults["betas"] == (0.8, 0.95)
    la = build_optimizer(model, OptimConfig(name="lookahead_sgd", la_k=7, la_alpha=0.8))
    assert la.param_groups[0]["lookahead_k"] == 7
    assert la.param_groups[0]["lookahead_alpha"] == 0.8


def test_plain_sgd_step_is_lr_times_gradient() -> None:
    model = _model()
    opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1))
    x, y = _batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # a second step would differ from lr * grad if momentum were on
        opt.zero_grad()
        _loss(model, x, y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
    for p, b, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), b - 0.1 * g)


@pytest.mark.parametrize(("name", "shrink"), [
    ("sgd", 1 - 0.1 * 0.05),  # coupled: the gradient gets wd * w, the step lr * (wd * w)
    ("adamw", 1 - 0.1 * 0.05),  # decoupled: w <- w (1 - lr wd), then the Adam step (0 here)
    ("lookahead_sgd", 1 - 0.1 * 0.05),  # slow weights start at the fast ones: step 1 is SGD's
])
def test_weight_decay_shrinks_weights_by_the_recipe_value_and_leaves_the_rest(
        name: str, shrink: float) -> None:
    """With a zero gradient, one step multiplies each decayed weight by 1 - lr * wd and
    leaves biases and norm parameters exactly where they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.1, weight_decay=0.05))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (0 * model(torch.randn(5, 4)).sum()).backward()  # every gradient present and zero
    opt.step()
    for n, p in model.named_parameters():
        want = before[n] * shrink if n in ("0.weight", "2.weight") else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=n)


def test_unknown_optimizer_lists_the_known_ones() -> None:
    with pytest.raises(RecipeError) as exc:
        build_optimizer(_model(), OptimConfig(name="adamm"))
    assert str(exc.value) == (
        "optim.name: unknown optimizer 'adamm'; known: sgd, momentum, nesterov, adam, adamw, "
        "lookahead_sgd, lookahead_momentum, lookahead_nesterov, lookahead_adam, "
        "lookahead_adamw, or any timm.optim.list_optimizers() name")


@pytest.mark.parametrize(("name", "message"), [
    ("lookahead", "name the optimizer Lookahead wraps, e.g. lookahead_adam or lookahead_sgd"),
    ("lookahead_lookahead_adam", "Lookahead cannot wrap Lookahead"),
])
def test_lookahead_needs_one_inner_optimizer(name: str, message: str) -> None:
    with pytest.raises(RecipeError) as exc:
        build_optimizer(_model(), OptimConfig(name=name))
    assert str(exc.value) == f"optim.name: '{name}': {message}"


def test_schedules() -> None:
    cosine = OptimConfig(schedule="cosine", warmup_epochs=1)
    assert lr_factor(0, 100, 10, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, cosine) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, cosine) == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, cosine) < 0.001
    step = OptimConfig(schedule="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(s, 60, 10, step) for s in (0, 19, 20, 40)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(37, 60, 10, OptimConfig()) == 1.0


def test_scheduler_drives_the_learning_rate_per_step() -> None:
    model = _model()
    cfg = OptimConfig(name="lookahead_adam", lr=0.01, schedule="cosine")
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=5, epochs=2)
    lrs = []
    for x, y in _batches(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[5] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs == sorted(lrs, reverse=True)


def test_max_norm_caps_every_units_incoming_weights(tmp_path) -> None:
    """With optim.max_norm every Linear row ends at norm <= the cap; without it, the same
    run has rows above it (so the check can fail)."""
    import distill.api as api

    def row_norms(run) -> torch.Tensor:
        from safetensors.torch import load_file

        weights = load_file(str(run.run_dir / "model.safetensors"))
        return torch.cat([w.norm(dim=1) for k, w in weights.items()
                          if k.endswith("weight") and w.ndim == 2])

    common = {"teacher.epochs": 2, "teacher.model.dropout": 0.0, "output_dir": str(tmp_path)}
    capped = api.teach(overrides={**common, "teacher.optim.max_norm": 0.8}, quiet=True,
                       wandb="disabled")
    free = api.teach(overrides=common, quiet=True, wandb="disabled")
    assert row_norms(capped).max() <= 0.8 + 1e-5
    assert row_norms(free).max() > 0.8
    assert capped.summary["test"]["accuracy"] > 0.8
