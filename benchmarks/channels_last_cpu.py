"""Benchmark: the memory layout of conv nets on the CPU (what ``channels_last`` buys there).

Three layouts of the same model and batch, timed interleaved (each round times every layout
once, so drift on a noisy machine hits all three alike), median over the rounds:

- NCHW weights, NCHW input: torch's default;
- NCHW weights, channels-last input: what a run with ``channels_last: false`` gets when its
  batches are augmented (the on-device crop and flip return channels-last-strided batches,
  and a convolution follows either operand's channels-last layout);
- channels-last weights and input: the pipeline's CPU default for conv nets.

    python benchmarks/channels_last_cpu.py --threads 2 --rounds 5
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from distill.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from interleaved import cell, images_per_second, parse_args, sgd_step  # noqa: E402

LAYOUTS = {"NCHW weights / NCHW input": (False, False),
           "NCHW weights / channels-last input": (False, True),
           "channels-last weights and input": (True, True)}


def _step(name: str, weights_cl: bool, input_cl: bool, batch: int, train: bool):
    """One training step (or inference pass) of ``name`` on one fixed batch, in a layout."""
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10).train(train)
    if weights_cl:
        model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if train:
        return sgd_step(model, x, y)

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


def main() -> None:
    args = parse_args(__doc__)
    print("| model, pass | " + " | ".join(LAYOUTS) + " | all channels-last / NCHW |")
    print("|---" * (len(LAYOUTS) + 2) + "|")
    for name, train, steps in [("resnet20", True, 12), ("resnet56", True, 6),
                               ("resnet56", False, 12)]:
        rates = images_per_second({k: _step(name, *v, args.batch, train)
                                   for k, v in LAYOUTS.items()}, steps, args.rounds, args.batch)
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratio = med["channels-last weights and input"] / med["NCHW weights / NCHW input"]
        print(f"| {name}, {'training' if train else 'inference'} | "
              + " | ".join(cell(v) for v in rates.values()) + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
