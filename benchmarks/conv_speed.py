"""The closed-form conv penalty against the exact conv Jacobian, and its cost per
training step.

Encoder: one ``Conv2d(1, 32, 5, padding=2)`` (stride 1 and 2) + sigmoid on
28x28 input (``ConvEncoder``). First table: the per-sample penalty
``||J_f(x)||_F^2`` of a batch, in closed form (``sum_u act'(z_u)^2 ||A_u||^2``
with the row norms from one ``conv(ones, W**2)``; standalone, so it runs the
convolution again) and exact (the full per-sample Jacobian, 784 x 25088 at
stride 1, from ``torch.func.jacfwd`` under ``vmap``); the target is a ratio of at
least 50x. Second table: one training step (forward, loss, backward, Adam) of
the conv CAE (closed-form penalty inside the objective) against the conv AE.
Steps are timed in interleaved rounds (the host is shared); medians over rounds,
warm-up rounds excluded, torch's default thread count unless ``--threads`` is
given (see ``deep_speed.py``).

    python benchmarks/conv_speed.py [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from contractive import Autoencoder, ConvEncoder, Objective, jacobian_norm_sq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deep_speed import interleaved_ms, print_table, training_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-batch-size", type=int, default=64)
    parser.add_argument("--step-repeats", type=int, default=20)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(
        f"28x28 input, {args.channels} channels, 5x5 kernel, padding 2, sigmoid; "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    for stride in (1, 2):
        torch.manual_seed(0)
        encoder = ConvEncoder((1, 28, 28), args.channels, 5, stride=stride, padding=2)
        x = torch.rand(args.batch_size, 784, generator=gen)
        closed = jacobian_norm_sq(encoder, x, method="analytic")
        exact = jacobian_norm_sq(encoder, x, method="exact")
        err = float(((closed - exact).abs() / exact).max().detach())
        times = interleaved_ms(
            {
                "closed form": lambda e=encoder, x=x: jacobian_norm_sq(
                    e, x, method="analytic"
                ),
                "exact (torch.func)": lambda e=encoder, x=x: jacobian_norm_sq(
                    e, x, method="exact"
                ),
            },
            warmup=1,
            repeats=args.repeats,
        )
        print(
            f"penalty of a batch of {args.batch_size}, stride {stride} (codes "
            f"{tuple(encoder.output_shape)}), max relative difference {err:.1e}; "
            f"{args.repeats} rounds\n"
        )
        print_table(times, base="closed form", unit="penalty")
        print()
    x = torch.rand(args.step_batch_size, 784, generator=gen)
    for stride in (1, 2):
        steps = {}
        for name, objective in (
            ("conv AE", Objective()),
            ("conv CAE (closed form)", Objective(contraction=0.1)),
        ):
            torch.manual_seed(0)
            model = Autoencoder.conv(
                (1, 28, 28), args.channels, 5, stride=stride, padding=2
            )
            steps[name] = training_step(model, objective, x)
        times = interleaved_ms(steps, warmup=3, repeats=args.step_repeats)
        print(
            f"training step, batch {args.step_batch_size}, stride {stride}; "
            f"{args.step_repeats} rounds\n"
        )
        print_table(times, base="conv AE")
        print()


if __name__ == "__main__":
    main()
