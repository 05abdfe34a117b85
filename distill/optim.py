"""Optimizers and learning-rate schedules by name, built on ``timm.optim``.

Names and what they mean here (timm's own names differ, hence the table):

============  =========================================================================
``sgd``       plain SGD, no momentum (timm's ``sgd`` means Nesterov momentum!)
``momentum``  SGD with heavy-ball momentum (``momentum``, default 0.9)
``nesterov``  SGD with Nesterov momentum
``adam``      Adam (``betas``); weight decay as L2 in the gradient
``adamw``     AdamW (decoupled weight decay)
``lookahead_<inner>``  Lookahead (Zhang et al. 2019) over any inner name above, with
              ``la_k`` inner steps per outer step and slow step size ``la_alpha``
other         any other ``timm.optim.list_optimizers()`` name, passed to timm as is
============  =========================================================================

Weight decay is never applied to biases and normalisation parameters (timm's
``filter_bias_and_bn``). Schedules are per optimizer step: linear warmup over
``warmup_epochs``, then constant, cosine to zero, or a step decay.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.optim import Lookahead as TimmLookahead
from timm.optim import create_optimizer_v2, list_optimizers
from torch import nn

from distill.errors import RecipeError
from distill.recipe import OptimConfig

OUR_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")


class Lookahead(TimmLookahead):
    """Lookahead that follows the paper from the first outer step.

    timm's wrapper creates its slow weights lazily at the first sync, from the fast weights
    of that moment, so its first outer step sets ``phi_1 = theta_k``. Here the slow weights
    are copies of the initial weights, taken at construction, so every outer step is
    ``phi <- phi + la_alpha * (theta_k - phi); theta <- phi``. The slow weights live beside
    the inner optimizer's state (not inside it, where they would hide the inner optimizer's
    own lazy initialisation) and travel in ``state_dict``.
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, la_k: int = 5,
                 la_alpha: float = 0.5) -> None:
        super().__init__(base_optimizer, alpha=la_alpha, k=la_k)
        self.slow: list[list[torch.Tensor]] = [
            [p.detach().clone() for p in group["params"]] for group in self.param_groups]

    @torch.no_grad()
    def _sync_group(self, index: int) -> None:
        group = self.param_groups[index]
        for fast, slow in zip(group["params"], self.slow[index]):
            slow.add_(fast - slow, alpha=group["lookahead_alpha"])
            fast.copy_(slow)

    def sync_lookahead(self) -> None:
        """An outer step for every group now (timm's API, e.g. before evaluating)."""
        for index in range(len(self.param_groups)):
            self._sync_group(index)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = self._base_optimizer.step(closure)
        for index, group in enumerate(self.param_groups):
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self._sync_group(index)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"base": self._base_optimizer.state_dict(),
                "slow": [[t.clone() for t in group] for group in self.slow]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict["base"])
        with torch.no_grad():
            for mine, saved in zip(self.slow, state_dict["slow"]):
                for dst, src in zip(mine, saved):
                    dst.copy_(src)


def _inner_kwargs(name: str, cfg: OptimConfig) -> tuple[str, dict[str, Any]]:
    """Our name -> (timm's name, extra keyword arguments)."""
    if name == "sgd":
        return "momentum", {"momentum": 0.0}
    if name in ("momentum", "nesterov"):
        return name, {"momentum": cfg.momentum}
    if name in ("adam", "adamw"):
        return name, {"betas": tuple(cfg.betas)}
    if name in list_optimizers():
        return name, {"momentum": cfg.momentum}
    known = ", ".join(OUR_NAMES + tuple(f"lookahead_{n}" for n in OUR_NAMES))
    raise RecipeError(f"optim.name: unknown optimizer '{name}'; known: {known}, or any "
                      f"timm.optim.list_optimizers() name")


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's parameter groups (no decay on biases, norms and ``no_weight_decay()`` names),
    with parameter names instead of parameters: ``[{"names": [...], "weight_decay": wd}]``."""
    from timm.optim import param_groups_weight_decay

    names = {id(p): n for n, p in model.named_parameters()}
    skip = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    return [{"names": [names[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]}
            for g in groups]


def build_optimizer(model: nn.Module | list[dict[str, Any]], cfg: OptimConfig
                    ) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable parameters (or over
    given parameter groups, e.g. stacked parameters of a batched sweep)."""
    name = cfg.name.lower()
    lookahead = name.startswith("lookahead_")
    inner = name.removeprefix("lookahead_")
    if not lookahead and inner == "lookahead":
        raise RecipeError(f"optim.name: '{cfg.name}': name the optimizer Lookahead wraps, "
                          f"e.g. lookahead_adam or lookahead_sgd")
    if inner.startswith("lookahead"):
        raise RecipeError(f"optim.name: '{cfg.name}': Lookahead cannot wrap Lookahead")
    timm_name, kwargs = _inner_kwargs(inner, cfg)
    optimizer = create_optimizer_v2(model, opt=timm_name, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, **kwargs)
    if lookahead:
        optimizer = Lookahead(optimizer, la_k=cfg.la_k, la_alpha=cfg.la_alpha)
    return optimizer


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: OptimConfig) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler applying :func:`lr_factor` (stepped after each optimizer step)."""
    total = steps_per_epoch * epochs

    def factor(step: int) -> float:
        return lr_factor(step, total, steps_per_epoch, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
