"""Cost of the stochastic end-to-end penalty of a deep CAE, per training step.

One step = forward, loss, backward, Adam update of a 784-1000-500 dense
autoencoder (sigmoid hidden layers, linear decoder), batch 256, random data in
[0, 1]. The CAE's penalty is ``||J_f(x)||_F^2`` of the whole encoder, estimated
with Rademacher probes and forward-mode JVPs (``jacobian_method="stochastic"``);
the target is at most 2x the plain AE step with one probe. The steps are timed
in interleaved rounds (the host is shared); medians over rounds, warm-up rounds
excluded, torch's default thread count unless ``--threads`` is given (on a
small host shared with other jobs, OpenMP threads that wait on busy cores can
slow small operations by orders of magnitude; ``--threads 1`` avoids that).

    python benchmarks/deep_speed.py [--repeats 30] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from contractive import Autoencoder, Objective


def interleaved_ms(
    steps: dict[str, Callable[[], None]], *, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Wall times in ms of each step, measured in interleaved rounds.

    Each round times every step once, so that all of them see the same machine
    load (the benchmark host is shared); warm-up rounds are discarded.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            elapsed = 1000 * (time.perf_counter() - start)
            if i >= warmup:
                times[name].append(elapsed)
    return times


def training_step(
    model: Autoencoder, objective: Objective, x: torch.Tensor
) -> Callable[[], None]:
    """One forward, loss, backward and Adam update of ``model`` on batch ``x``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        terms = objective(model, x, generator)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    return step


def print_table(times: dict[str, list[float]], base: str, unit: str = "step") -> None:
    """Markdown table: median ms, and the median over rounds of the ratio to
    ``base`` (robust to load that changes between rounds)."""
    print(f"| {unit} | median ms | ratio to {base} (median of rounds) |")
    print("|---|---:|---:|")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, times[base], strict=True)]
        print(
            f"| {name} | {statistics.median(values):.1f} | "
            f"{statistics.median(ratios):.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", default="1000,500")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    x = torch.rand(args.batch_size, 784, generator=torch.Generator().manual_seed(0))
    rows = [
        ("deep AE", Objective()),
        *(
            (
                f"deep CAE, stochastic, {n} probe{'s' if n > 1 else ''}",
                Objective(contraction=0.1, jacobian_method="stochastic", n_probes=n),
            )
            for n in (1, 2, 4)
        ),
    ]
    steps = {}
    for name, objective in rows:
        torch.manual_seed(0)
        model = Autoencoder.dense(784, hidden)
        steps[name] = training_step(model, objective, x)
    times = interleaved_ms(steps, warmup=args.warmup, repeats=args.repeats)
    print(
        f"784-{'-'.join(map(str, hidden))} dense autoencoder, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up rounds\n"
    )
    print_table(times, base=rows[0][0])


if __name__ == "__main__":
    main()
