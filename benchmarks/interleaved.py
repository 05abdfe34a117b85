"""Shared by the CPU micro-benchmarks: their flags, and timing variants interleaved.

Each round times every variant once, so drift on a noisy machine (other processes, clock
changes) hits all variants alike; each variant is warmed up first (oneDNN builds its kernels
on first use). Report the median over rounds with the range.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F


def parse_args(doc: str) -> argparse.Namespace:
    """``--threads``, ``--rounds``, ``--batch``; sets torch's threads and prints the header."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of "
          f"{args.rounds} interleaved rounds (min-max), images/s\n")
    return args


def images_per_second(steps: dict[str, Callable[[], None]], per_round: int, rounds: int,
                      batch: int, warm_up: int = 3) -> dict[str, list[float]]:
    """Each variant's images/s (one figure per round): ``per_round`` calls of its step, each
    on one batch of ``batch`` images."""
    for step in steps.values():
        for _ in range(warm_up):
            step()
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            rates[name].append(batch * per_round / (time.perf_counter() - start))
    return rates


def cell(rates: list[float]) -> str:
    """``median (min-max)`` of one variant's figures."""
    return f"{statistics.median(rates):.0f} ({min(rates):.0f}-{max(rates):.0f})"


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[], None]:
    """One SGD (Nesterov, lr 0.1) training step of ``model`` on the fixed batch ``x`` [B, C,
    H, W], ``y`` [B]; ``forward`` computes the logits (default: the model; e.g. a compiled
    copy of it)."""
    forward = forward if forward is not None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def step() -> None:
        loss = F.cross_entropy(forward(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step
