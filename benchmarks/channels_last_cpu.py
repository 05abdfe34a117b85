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

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from distill.models import build_model

LAYOUTS = {"NCHW weights / NCHW input": (False, False),
           "NCHW weights / channels-last input": (False, True),
           "channels-last weights and input": (True, True)}


def _setup(name: str, weights_cl: bool, input_cl: bool, batch: int):
    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10)
    if weights_cl:
        model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if input_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    return model, x, y, opt


def _step(model, x, y, opt, train: bool) -> None:
    if not train:
        with torch.no_grad():
            model(x)
        return
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def measure(name: str, train: bool, steps: int, rounds: int, batch: int) -> dict[str, list[float]]:
    """Images per second of each layout, one figure per round."""
    runs = {k: _setup(name, *v, batch) for k, v in LAYOUTS.items()}
    for run in runs.values():
        run[0].train(train)
        for _ in range(3):  # warm-up: oneDNN builds its kernels on first use
            _step(*run, train)
    rates: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    for _ in range(rounds):
        for k, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                _step(*run, train)
            rates[k].append(batch * steps / (time.perf_counter() - start))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of "
          f"{args.rounds} interleaved rounds (min-max), images/s\n")
    print("| model, pass | " + " | ".join(LAYOUTS) + " | all channels-last / NCHW |")
    print("|---" * (len(LAYOUTS) + 2) + "|")
    for name, train, steps in [("resnet20", True, 12), ("resnet56", True, 6),
                               ("resnet56", False, 12)]:
        rates = measure(name, train, steps, args.rounds, args.batch)
        med = {k: statistics.median(v) for k, v in rates.items()}
        cells = [f"{med[k]:.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in rates.items()]
        ratio = med["channels-last weights and input"] / med["NCHW weights / NCHW input"]
        print(f"| {name}, {'training' if train else 'inference'} | " + " | ".join(cells)
              + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
