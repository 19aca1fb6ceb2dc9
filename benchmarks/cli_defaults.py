"""Linear-probe accuracy of `contractive train`'s defaults on real MNIST digits.

Trains `contractive train --data mnist5k --hidden 1000` (CAE, the defaults) and
the same with `--model ae`, then a BernoulliRBM of 1,000 units on the same
training rows (pixels / 255), and prints the probe accuracy of each on the run's
held-out test split (seed 0: 3,600 train, 400 validation, 1,000 test digits),
with raw pixels for reference.

    python benchmarks/cli_defaults.py [--out DIR]     # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.neural_network import BernoulliRBM

from contractive.analysis import linear_probe_accuracy
from contractive.data import load_dataset
from contractive.experiment import TrainOptions, make_splits, train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folders here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="cli-defaults-"))

    rows: list[tuple[str, float, float]] = []
    for model in ("cae", "ae"):
        start = time.perf_counter()
        options = TrainOptions(
            data="mnist5k", hidden=(1000,), model=model, out=str(root / model)
        )
        summary = train_run(options, progress=False).summary
        seconds = time.perf_counter() - start
        rows.append(
            (f"{model.upper()}, CLI defaults", summary["probe_accuracy_codes"], seconds)
        )
    raw_accuracy = summary["probe_accuracy_inputs"]

    dataset = load_dataset("mnist5k")
    defaults = TrainOptions()
    splits = make_splits(
        dataset.n_samples, defaults.validation_fraction, defaults.test_fraction, 0
    )
    x = np.asarray(dataset.x, dtype=np.float64) / 255.0
    start = time.perf_counter()
    rbm = BernoulliRBM(
        n_components=1000, learning_rate=0.05, batch_size=20, n_iter=10, random_state=0
    ).fit(x[splits.train])
    accuracy = linear_probe_accuracy(
        rbm.transform(x[splits.train]),
        dataset.y[splits.train],
        rbm.transform(x[splits.test]),
        dataset.y[splits.test],
    )
    rows.append(
        (
            "BernoulliRBM (lr 0.05, batch 20, 10 epochs)",
            accuracy,
            time.perf_counter() - start,
        )
    )
    rows.append(("raw pixels (784)", raw_accuracy, 0.0))

    n_train, n_val, n_test = len(splits.train), len(splits.val), len(splits.test)
    print(
        f"mnist5k, seed 0 ({n_train} train, {n_val} validation, {n_test} test); "
        "1,000 units; probe on the test split\n"
    )
    print("| codes | probe accuracy | seconds |")
    print("|---|---:|---:|")
    for name, acc, seconds in rows:
        print(f"| {name} | {acc:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
