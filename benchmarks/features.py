"""Linear-probe quality of learned features on scikit-learn's digits.

Fixed stratified split (1,347 train / 450 test, seed 0). Each method maps the
pixels to k features, then ``StandardScaler`` + ``LogisticRegression`` is
trained on the training codes and scored on the test codes:

- raw pixels (64 features, no k): StandardScaler;
- PCA(k): StandardScaler, then PCA;
- BernoulliRBM(k): MinMaxScaler, then the RBM (learning_rate=0.06, n_iter=20,
  batch_size=10, as in scikit-learn's RBM example);
- AE(k): MinMaxScaler, then ``ContractiveAutoencoder(k, penalty=None)``;
- CAE(k): MinMaxScaler, then ``ContractiveAutoencoder(k)`` with the default
  contraction, and with the contraction chosen by 3-fold cross-validation of the
  whole pipeline on the training set (the sweep is printed in full; the test set
  plays no part in the choice).

Stochastic methods are run with several seeds (mean +- standard deviation).
Prints markdown tables. ``--quick`` runs k=32, one seed, 50 epochs, no sweep.

Run: ``python benchmarks/features.py`` (or ``--quick``).
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import sklearn
import torch
from sklearn.base import BaseEstimator
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.neural_network import BernoulliRBM
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from contractive import ContractiveAutoencoder

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_split() -> Split:
    """Digits, stratified 1,347 / 450 split with seed 0."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=450, stratify=y, random_state=0
    )
    return X_train, X_test, y_train, y_test


def probe(*features: BaseEstimator) -> Pipeline:
    """Feature steps, then the same linear probe for every method."""
    return make_pipeline(*features, StandardScaler(), LogisticRegression(max_iter=5000))


def evaluate(make: Callable[[int], Pipeline], data: Split, seeds: Sequence[int]):
    """Test accuracies and fit times (pipeline fit, seconds) over ``seeds``."""
    X_train, X_test, y_train, y_test = data
    accs, times = [], []
    for seed in seeds:
        pipe = make(seed)
        start = time.perf_counter()
        pipe.fit(X_train, y_train)
        times.append(time.perf_counter() - start)
        accs.append(pipe.score(X_test, y_test))
    return np.array(accs), np.array(times)


def fmt(values: np.ndarray, digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f}"


def autoencoder(k: int, seed: int, epochs: int, **params: object) -> Pipeline:
    return probe(
        MinMaxScaler(),
        ContractiveAutoencoder(k, max_iter=epochs, random_state=seed, **params),
    )


def sweep(
    k: int, contractions: Sequence[float], data: Split, epochs: int
) -> tuple[float, list[tuple[float, float, float, float]]]:
    """3-fold CV accuracy on the training set (seed 0) and test accuracy for
    each contraction; returns the CV choice and the rows."""
    X_train, X_test, y_train, y_test = data
    rows = []
    for lam in contractions:
        pipe = autoencoder(k, 0, epochs, contraction=lam)
        cv = cross_val_score(pipe, X_train, y_train, cv=3).mean()
        pipe.fit(X_train, y_train)
        cae = pipe[1]
        scaled_test = pipe[0].transform(X_test)  # MinMaxScaler output
        rows.append(
            (
                lam,
                cv,
                pipe.score(X_test, y_test),
                float(cae.jacobian_norm(scaled_test).mean()),
            )
        )
    best = max(rows, key=lambda r: r[1])[0]
    return best, rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k=32, 1 seed, short")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)

    ks = (32,) if args.quick else (32, 64)
    seeds = (0,) if args.quick else (0, 1, 2)
    epochs = 50 if args.quick else 200
    contractions = () if args.quick else (0.01, 0.03, 0.1, 0.3, 1.0)
    default_lam = ContractiveAutoencoder().contraction
    data = load_split()

    print(
        f"digits 1,347 train / 450 test; seeds {list(seeds)}; AE/CAE {epochs} "
        f"epochs; torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}\n"
    )
    table = ["| features | k | test accuracy | fit time (s) |", "|---|---|---|---|"]

    def row(name: str, k: object, make: Callable[[int], Pipeline], n: int) -> None:
        accs, times = evaluate(make, data, seeds[:n])
        table.append(f"| {name} | {k} | {fmt(accs)} | {times.mean():.1f} |")
        print(table[-1], flush=True)

    row("raw pixels", 64, lambda s: probe(), 1)
    sweeps = {}
    for k in ks:
        row("PCA", k, lambda s, k=k: probe(StandardScaler(), PCA(k)), 1)
        row(
            "BernoulliRBM",
            k,
            lambda s, k=k: probe(
                MinMaxScaler(),
                BernoulliRBM(
                    k, learning_rate=0.06, n_iter=20, batch_size=10, random_state=s
                ),
            ),
            len(seeds),
        )
        row(
            "AE",
            k,
            lambda s, k=k: autoencoder(k, s, epochs, penalty=None),
            len(seeds),
        )
        row(
            f"CAE (contraction={default_lam}, default)",
            k,
            lambda s, k=k: autoencoder(k, s, epochs),
            len(seeds),
        )
        if contractions:
            best, sweeps[k] = sweep(k, contractions, data, epochs)
            row(
                f"CAE (contraction={best}, chosen by 3-fold CV)",
                k,
                lambda s, k=k, best=best: autoencoder(k, s, epochs, contraction=best),
                len(seeds),
            )
    print("\n" + "\n".join(table))
    for k, rows in sweeps.items():
        print(
            f"\nContraction sweep, k={k}, seed 0 (choice by CV accuracy only)\n\n"
            "| contraction | 3-fold CV accuracy (train) | test accuracy | "
            "mean ‖J_f(x)‖_F (test) |\n|---|---|---|---|"
        )
        for lam, cv, test, jac in rows:
            print(f"| {lam} | {cv:.3f} | {test:.3f} | {jac:.3f} |")


if __name__ == "__main__":
    main()
