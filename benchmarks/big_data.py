"""Training on data larger than memory: one epoch over a memory-mapped .npy.

Creates (unless it exists) a float32 ``.npy`` of ``--rows`` x ``--features``
(default 1,000,000 x 1024 = 4.1 GB), then, each in a fresh subprocess so that
making the file does not count, trains one epoch of a small CAE
(``--features``-``--hidden``, sigmoid, linear decoder, lambda 0.1):

* memmap: the file opened by ``contractive.data.load_dataset`` (memory-mapped,
  sha256 and finiteness checked in chunks), the scaler fitted by streaming, and
  ``Trainer`` reading it batch by batch, as ``contractive train --data FILE`` does;
* in memory: the first ``--memory-rows`` rows (default 200,000) loaded into RAM;
* with ``--no-release`` also the memory-mapped case with
  ``contractive.batching.release_pages`` disabled, to show what it saves.

It reports the peak resident memory of the training process (``VmHWM``, which
counts the file pages mapped into it) and the training throughput, as a Markdown
table. The big file is deleted at the end unless ``--keep``.

Usage::

    python benchmarks/big_data.py [--dir DIR] [--keep] [--no-release]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"


def make_file(path: Path, n_rows: int, n_features: int, seed: int = 0) -> None:
    """Write a float32 .npy of uniform [0, 1) values in chunks of 32 MiB."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_rows, n_features)
    )
    step = max(1, 2**25 // (4 * n_features))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        out[start:stop] = rng.random((stop - start, n_features), dtype=np.float32)
    out.flush()
    del out


def peak_rss_mib() -> float:
    """Peak resident set of this process, MiB (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that over from the parent through fork and
    exec, so a child of a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_child(args: argparse.Namespace) -> dict[str, float]:
    """One epoch as ``contractive train`` runs it; the measurements as a dict."""
    import torch

    from contractive.data import Scaler, load_dataset
    from contractive.experiment import make_splits, seeded_model
    from contractive.objective import Objective
    from contractive.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    if args.mode == "memmap-no-release":
        import contractive.batching

        contractive.batching.release_pages = lambda x: None
    t0 = time.perf_counter()
    if args.mode.startswith("memmap"):
        x = load_dataset(args.path).x  # np.memmap: checksum + validation stream
    else:
        x = np.ascontiguousarray(np.load(args.path, mmap_mode="r")[: args.memory_rows])
    splits = make_splits(len(x), 0.0, 0.0, 0)  # every row trains
    scaler = Scaler("minmax").fit(x, splits.train)
    t_load = time.perf_counter() - t0
    model = seeded_model(
        {
            "type": "dense",
            "n_features": int(x.shape[1]),
            "hidden_sizes": [args.hidden],
            "activation": "sigmoid",
            "decoder": "linear",
        },
        0,
    )
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3)
    trainer = Trainer(model, Objective.preset("cae"), config, progress=False)
    t0 = time.perf_counter()
    history = trainer.fit(x, splits.train, scaler=scaler)
    t_train = time.perf_counter() - t0
    return {
        "rows": len(splits.train),
        "gb": len(x) * x.shape[1] * x.dtype.itemsize / 1e9,
        "load_s": t_load,
        "train_s": t_train,
        "samples_per_s": len(splits.train) / t_train,
        "peak_rss_mib": peak_rss_mib(),
        "loss": history.epochs[-1]["loss"],
    }


def run_child(args: argparse.Namespace, mode: str, path: Path) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--path",
        str(path),
        "--memory-rows",
        str(args.memory_rows),
        "--batch-size",
        str(args.batch_size),
        "--hidden",
        str(args.hidden),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="folder for the big file (default: a temp dir)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--memory-rows", type=int, default=200_000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the big file")
    parser.add_argument(
        "--no-release",
        action="store_true",
        help="also run the memory map without unmapping read pages",
    )
    parser.add_argument(
        "--child",
        choices=("memmap", "memmap-no-release", "memory"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        print(json.dumps(train_child(args)))
        return

    folder = Path(args.dir or tempfile.mkdtemp(prefix="contractive-big-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"big-{args.rows}x{args.features}.npy"
    try:
        if not path.exists():
            t0 = time.perf_counter()
            make_file(path, args.rows, args.features)
            print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        results = {
            "memory-mapped .npy": run_child(args, "memmap", path),
            "in memory": run_child(args, "memory", path),
        }
        if args.no_release:
            results["memory-mapped, pages not released"] = run_child(
                args, "memmap-no-release", path
            )
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
    print(
        f"\none epoch, CAE {args.features}-{args.hidden} sigmoid/linear, batch "
        f"{args.batch_size}, {args.threads} thread(s)\n"
    )
    print(
        "| data | rows | size (GB) | load + checks + scaler (s) | epoch (s) "
        "| samples/s | peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['rows']:,} | {r['gb']:.2f} | {r['load_s']:.1f} | "
            f"{r['train_s']:.1f} | {r['samples_per_s']:,.0f} | "
            f"{r['peak_rss_mib']:,.0f} |"
        )


if __name__ == "__main__":
    main()
