"""Benchmark: would folding a frozen teacher's BatchNorm into its convolutions pay on the CPU?

A frozen teacher's BatchNorm only rescales and shifts with fixed statistics, so it can be
folded into the convolution before it (``torch.fx.experimental.optimization.fuse``: the same
function up to float rounding, one pass over the activations less per pair). This measures
what that would buy a CIFAR distillation on this CPU, before the pipeline adopts it. Timed
interleaved (each round times both teachers once, so drift on a noisy machine hits both
alike), median over the rounds, channels-last weights and input throughout:

- ResNet-56 teacher inference alone, batch after batch;
- one distilled ResNet-20 student step (the teacher's forward, the student's forward and
  backward with the distillation loss, an SGD step), with the time of the teacher's forward
  inside it reported apart: what a CIFAR distilled epoch is made of.

    python benchmarks/teacher_fold_cpu.py --threads 2 --rounds 5
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from distill.losses import distillation_loss
from distill.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import cell, images_per_second, parse_args  # noqa: E402

SHAPE = (3, 32, 32)


def teachers() -> dict[str, nn.Module]:
    """A ResNet-56 in eval mode as trained, and its copy with BatchNorm folded."""
    torch.manual_seed(0)
    model = build_model("resnet56", SHAPE, 10)
    with torch.no_grad():  # statistics away from their defaults (speed does not depend on them)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
    model = model.eval().to(memory_format=torch.channels_last)
    folded = fuse(model).eval().to(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), rtol=1e-3, atol=1e-3)
    return {"as trained": model, "BatchNorm folded": folded}


def measure(distil: bool, steps: int, rounds: int, batch: int
            ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Images per second with each teacher (one figure per round), and the seconds of each
    teacher forward after the warm-up (one per step)."""
    torch.manual_seed(1)
    x = torch.randn(batch, *SHAPE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    student = build_model("resnet20", SHAPE, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    forward: dict[str, list[float]] = {}

    def step_with(name: str, teacher: nn.Module):
        def step() -> None:
            start = time.perf_counter()
            with torch.no_grad():
                t = teacher(x)
            forward.setdefault(name, []).append(time.perf_counter() - start)
            if distil:
                loss = distillation_loss(student(x), t, y, T=4.0, alpha=0.9)["loss"]
                opt.zero_grad()
                loss.backward()
                opt.step()
        return step

    rates = images_per_second({k: step_with(k, m) for k, m in teachers().items()}, steps,
                              rounds, batch)
    return rates, {k: v[3:] for k, v in forward.items()}  # without the 3 warm-up steps


def main() -> None:
    args = parse_args(__doc__)
    print("teacher forward: median seconds per batch\n")
    print("| pass | teacher as trained | BatchNorm folded | folded / as trained "
          "| teacher forward, as trained -> folded |")
    print("|---|---|---|---|---|")
    for label, distil, steps in [("ResNet-56 teacher inference", False, 12),
                                 ("distilled ResNet-20 step", True, 6)]:
        rates, forward = measure(distil, steps, args.rounds, args.batch)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["BatchNorm folded"] / med["as trained"]
        seconds = " -> ".join(f"{statistics.median(v):.3f} s" for v in forward.values())
        print(f"| {label} | " + " | ".join(cell(v) for v in rates.values())
              + f" | {ratio:.2f}x | {seconds} |")


if __name__ == "__main__":
    main()
