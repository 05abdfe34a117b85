"""Benchmark: what ``torch.compile`` (inductor) buys a CIFAR ResNet training step on the CPU.

The same model and batch, channels-last (the pipeline's CPU default for conv nets), trained
eagerly and through ``torch.compile``, timed interleaved (see ``interleaved.py``); the
compiled step's one-off compile time is reported apart.

    python benchmarks/compile_cpu.py --threads 1 --rounds 5
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from distill.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import cell, images_per_second, parse_args, sgd_step  # noqa: E402


def _step(name: str, batch: int, compiled: bool):
    """One SGD training step of ``name`` on one fixed channels-last batch."""
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10).to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    return sgd_step(model, x, torch.randint(0, 10, (batch,)), forward)


def main() -> None:
    args = parse_args(__doc__)
    print("| model, training step | eager | torch.compile | compiled / eager | compile time |")
    print("|---|---|---|---|---|")
    for name, per_round in [("resnet20", 6), ("resnet56", 3)]:
        eager, compiled = _step(name, args.batch, False), _step(name, args.batch, True)
        start = time.perf_counter()
        compiled()  # the first call compiles forward and backward
        compile_s = time.perf_counter() - start
        rates = images_per_second({"eager": eager, "compiled": compiled}, per_round,
                                  args.rounds, args.batch)
        ratio = statistics.median(rates["compiled"]) / statistics.median(rates["eager"])
        print(f"| {name} | {cell(rates['eager'])} | {cell(rates['compiled'])} | "
              f"{ratio:.2f}x | {compile_s:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
