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

import argparse
import statistics
import time

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from distill.losses import distillation_loss
from distill.models import build_model

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
    teacher forward (one per step)."""
    torch.manual_seed(1)
    x = torch.randn(batch, *SHAPE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    student = build_model("resnet20", SHAPE, 10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    models = teachers()
    forward: dict[str, list[float]] = {k: [] for k in models}

    def step(name: str) -> None:
        start = time.perf_counter()
        with torch.no_grad():
            t = models[name](x)
        forward[name].append(time.perf_counter() - start)
        if distil:
            loss = distillation_loss(student(x), t, y, T=4.0, alpha=0.9)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

    for name in models:
        for _ in range(3):  # warm-up: oneDNN builds its kernels on first use
            step(name)
    forward = {k: [] for k in models}
    rates: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name in models:
            start = time.perf_counter()
            for _ in range(steps):
                step(name)
            rates[name].append(batch * steps / (time.perf_counter() - start))
    return rates, forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of "
          f"{args.rounds} interleaved rounds (min-max), images/s; teacher forward: median "
          f"seconds per batch\n")
    print("| pass | teacher as trained | BatchNorm folded | folded / as trained "
          "| teacher forward, as trained -> folded |")
    print("|---|---|---|---|---|")
    for label, distil, steps in [("ResNet-56 teacher inference", False, 12),
                                 ("distilled ResNet-20 step", True, 6)]:
        rates, forward = measure(distil, steps, args.rounds, args.batch)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cells = [f"{med[k]:.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in rates.items()]
        ratio = med["BatchNorm folded"] / med["as trained"]
        seconds = " -> ".join(f"{statistics.median(v):.3f} s" for v in forward.values())
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio:.2f}x | {seconds} |")


if __name__ == "__main__":
    main()
