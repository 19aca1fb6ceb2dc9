"""Cost of one training step: plain AE vs CAE (closed form) vs CAE (exact Jacobian).

One step = forward, objective, backward, Adam update, for a 784-1000-784 sigmoid
autoencoder on a batch of 256 (random inputs in [0, 1]), on the CPU. Timings of
the AE and the closed-form CAE are interleaved so that load changes on a shared
machine hit both alike; medians are reported.

    python benchmarks/step_speed.py [--repeats 30] [--exact-repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from contractive import Autoencoder, Objective


def make_step(objective: Objective, x: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    model = Autoencoder.dense(x.shape[1], 1000, activation="sigmoid")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        start = time.perf_counter()
        loss = objective(model, x)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--exact-repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.rand(args.batch_size, 784, generator=torch.Generator().manual_seed(0))
    steps = {
        "AE": make_step(Objective(), x),
        "CAE, closed form": make_step(Objective(contraction=0.1), x),
        "CAE, exact (torch.func)": make_step(
            Objective(contraction=0.1, jacobian_method="exact"), x
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.repeats):
        for name in ("AE", "CAE, closed form"):
            times[name].append(steps[name]())
    for _ in range(args.exact_repeats):
        times["CAE, exact (torch.func)"].append(steps["CAE, exact (torch.func)"]())

    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    base = median["AE"]
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(
        f"784-1000-784 sigmoid, batch {args.batch_size}, CPU ({threads} threads, "
        f"torch {torch.__version__}, {cpu})"
    )
    print()
    print("| step | median ms | runs | vs AE | vs CAE closed form |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in median.items():
        vs_cf = ms / median["CAE, closed form"]
        runs = len(times[name])
        print(f"| {name} | {ms:.2f} | {runs} | {ms / base:.3f}x | {vs_cf:.1f}x |")


if __name__ == "__main__":
    main()
