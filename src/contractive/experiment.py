"""Whole runs: data -> splits -> scaler -> model -> Trainer -> run folder -> metrics.

What the CLI's ``train``, ``encode`` and ``evaluate`` do, as functions a script
can call. Every user mistake is found before a run folder is created and raised
as a ``ValueError`` with a one-line message (the CLI prints it, exit code 2).

Splits and the linear probe
---------------------------
The rows are split once, from ``seed``: a test split (``test_fraction``) that
training never sees, then a validation split (``validation_fraction`` of the
rest) used for early stopping; the remaining rows train the model and fit the
scaler. The linear probe fits a logistic regression on the codes of the
training rows and reports its accuracy on the codes of the test rows, next to
the same probe on the (scaled) inputs themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import math
import os
import platform
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contractive import analysis, distributed, runs
from contractive._validation import check_int
from contractive.data import (
    Dataset,
    Scaler,
    iter_batches,
    list_builtin_datasets,
    load_dataset,
    split_indices,
)
from contractive.modules import ACTIVATIONS, DECODERS, Autoencoder
from contractive.objective import LOSSES, PRESETS, Objective
from contractive.penalties import CORRUPTIONS, jacobian_norm_sq
from contractive.stacking import layer_objectives, pretrain_greedy
from contractive.training import (
    EVAL_BATCH_SIZE,
    OPTIMIZERS,
    PRECISIONS,
    DivergenceError,
    History,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    check_precision,
)

logger = logging.getLogger(__name__)

#: "auto" is "global-minmax" for images (pixels keep their relative scale), else
#: "minmax" (each feature to [0, 1] on the training rows).
SCALINGS = ("auto", "none", "minmax", "global-minmax", "standardize")
RUN_FORMAT = "contractive.run/1"
#: Training rows the probe's logistic regression is fitted on, at most.
PROBE_MAX_TRAIN = 5000
#: lambda when --contraction is not given, by reconstruction loss: 1.0 won the
#: sweep of benchmarks/paper.py with cross-entropy (tied sigmoid decoder) on
#: mnist5k; 0.1 halves ||J_f|| at a small reconstruction cost with squared error
#: on digits (tests/test_objective.py).
DEFAULT_CONTRACTION = {"bce": 1.0, "mse": 0.1}
#: Evaluation rows the analysis (exact Jacobians, contraction) uses, at most.
ANALYSIS_MAX_SAMPLES = 500
#: Probes of the stochastic ||J_f||_F^2 estimate in the reported metrics.
METRIC_PROBES = 64
#: Test rows the probe is scored on, at most (the rows are kept in memory).
PROBE_MAX_TEST = 20000


def resolve_scaling(scaling: str, dataset: Dataset) -> str:
    """The scaler kind "auto" stands for on ``dataset``; others pass through."""
    if scaling != "auto":
        return scaling
    return "global-minmax" if dataset.image_shape is not None else "minmax"


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``contractive train`` can be told; defaults are the CLI's.

    The defaults train a CAE (one layer of 64 sigmoid units, tied sigmoid
    decoder, cross-entropy, lambda 1.0) on the built-in digits scaled to [0, 1].
    They are the best setting of the lambda x decoder x loss sweep in
    ``benchmarks/paper.py`` on mnist5k (see docs/results.md).

    Parameters
    ----------
    data : built-in dataset name or path (see ``contractive.data.load_dataset``)
    model : one of ``PRESETS`` ("ae", "dae", "cae", "cae-h", "rcae")
    hidden : tuple of int, encoder layer sizes (several: a deep encoder, whose
        penalty is the whole encoder's, stochastic unless small)
    pretrain_epochs : greedy layer-wise pre-training epochs per layer of a deep
        encoder (stacked CAE) before the end-to-end epochs; 0: none. It loads the
        scaled training rows into memory and reruns if no checkpoint exists yet.
    conv_channels : a convolutional encoder with this many channels on image
        data (instead of ``hidden``), with ``kernel_size``, ``stride``, ``padding``
    loss : "auto" (cross-entropy for a decoder ending in a sigmoid, else squared
        error), "bce" or "mse"
    contraction : lambda; the weight of ``||J_f||_F^2`` (of ``||J_{g o f}||_F^2``
        for "rcae"); None: ``DEFAULT_CONTRACTION`` for the loss (lambda's scale
        follows the reconstruction term's)
    higher_order : gamma of CAE+H; None keeps the preset's
    corruption, corruption_level : input corruption (None keeps the preset's)
    threads : CPU threads torch may use while training; small dense models train
        fastest on one (and the count is kept for a bit-identical resume)
    device : "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or
        "mps"; under torchrun with several processes "auto" and "cuda" mean
        ``cuda:LOCAL_RANK``
    precision : "fp32", or "bf16"/"fp16" autocast on CUDA (penalties in float32)
    out : run folder; None makes ``runs/<data>-<model>-<timestamp>``
    overwrite : replace the contents of a non-empty ``out``
    """

    data: str = "digits"
    label_column: str | None = None
    model: str = "cae"
    hidden: tuple[int, ...] = (64,)
    pretrain_epochs: int = 0
    conv_channels: int | None = None
    kernel_size: int = 5
    stride: int = 1
    padding: int = 0
    activation: str = "sigmoid"
    decoder: str = "tied-sigmoid"
    loss: str = "auto"
    contraction: float | None = None
    higher_order: float | None = None
    corruption: str | None = None
    corruption_level: float | None = None
    scaling: str = "auto"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    seed: int = 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.2
    patience: int = 5
    checkpoint_every: int = 0
    device: str = "auto"
    precision: str = "fp32"
    threads: int = 1
    out: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "data", os.fspath(self.data))
        if self.out is not None:
            object.__setattr__(self, "out", os.fspath(self.out))
        if self.model not in PRESETS:
            raise ValueError(
                f"unknown model preset {self.model!r}; expected one of {tuple(PRESETS)}"
            )
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("decoder", self.decoder, DECODERS)
        _choice("loss", self.loss, ("auto", *LOSSES))
        _choice("scaling", self.scaling, SCALINGS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("precision", self.precision, PRECISIONS)
        if self.corruption is not None:
            _choice("corruption", self.corruption, CORRUPTIONS)
        if not self.hidden:
            raise ValueError("hidden needs at least one layer size")
        for size in self.hidden:
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"hidden sizes must be positive integers, got {size!r}"
                )
        for name, minimum in (
            ("pretrain_epochs", 0),
            ("kernel_size", 1),
            ("stride", 1),
            ("padding", 0),
        ):
            check_int(name, getattr(self, name), minimum)
        if self.conv_channels is not None:
            check_int("conv_channels", self.conv_channels, 1)
        check_int("threads", self.threads)
        for name in ("contraction", "higher_order", "corruption_level"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must be below 1")
        if self.resolved_loss == "bce" and self.scaling == "standardize":
            raise ValueError(
                "loss 'bce' needs inputs in [0, 1]; use --scaling minmax or "
                "global-minmax, or --loss mse"
            )
        if self.loss == "bce" and not self.decoder.endswith("sigmoid"):
            raise ValueError(
                "loss 'bce' needs a decoder ending in a sigmoid (sigmoid or "
                f"tied-sigmoid), got {self.decoder!r}"
            )
        if self.model == "ae" and self.contraction:
            raise ValueError(
                "model 'ae' has no contraction; use --model cae to set lambda"
            )
        self.objective()  # the objective's own checks
        self.train_config()

    @property
    def resolved_loss(self) -> str:
        """``loss`` with "auto" resolved by the decoder."""
        if self.loss != "auto":
            return self.loss
        return "bce" if self.decoder.endswith("sigmoid") else "mse"

    def objective(self) -> Objective:
        """The ``Objective`` of the preset with this run's overrides."""
        loss = self.resolved_loss
        overrides: dict[str, Any] = {"loss": loss}
        key = "reconstruction_contraction" if self.model == "rcae" else "contraction"
        if self.contraction is not None:
            overrides[key] = self.contraction
        elif getattr(PRESETS[self.model], key) > 0:
            overrides[key] = DEFAULT_CONTRACTION[loss]
        if self.higher_order is not None:
            overrides["higher_order"] = self.higher_order
        if self.corruption is not None:
            overrides["corruption"] = self.corruption
            overrides.setdefault("corruption_level", 0.25)
        if self.corruption_level is not None:
            overrides["corruption_level"] = self.corruption_level
        return Objective.preset(self.model, **overrides)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            seed=self.seed,
            patience=self.patience,
            checkpoint_every=self.checkpoint_every,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")


def resolve_device(name: str, *, local_rank: int | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; checks that the device exists.

    With ``local_rank`` (one of several processes on a machine), "auto" and
    "cuda" mean ``cuda:local_rank``: each process drives its own GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if local_rank is not None and device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"device {name!r}: with several processes each one uses "
                "cuda:LOCAL_RANK; pass --device cuda (or auto)"
            )
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}")
    return device


@dataclass
class Splits:
    """Row indices (sorted int64 arrays) of the three splits."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
        }


def make_splits(
    n_samples: int, validation_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Test rows first, then validation rows out of the rest; seeded."""

    rest, test = split_indices(n_samples, test_fraction, seed)
    train_pos, val_pos = split_indices(len(rest), validation_fraction, seed + 1)
    return Splits(rest[train_pos], rest[val_pos], test)


@dataclass
class RunResult:
    """What ``train_run`` produced."""

    run_dir: Path
    summary: dict[str, Any]
    history: History = field(default_factory=History)
    #: False on the ranks other than 0 of a multi-process run (they write nothing)
    is_main: bool = True


@dataclass
class EvaluationData:
    """The rows a trained run is measured on.

    ``rows`` are the test rows, else the validation rows, else the training rows
    (the rule of ``model_metrics``).
    """

    dataset: Any
    splits: Splits
    name: str

    @property
    def rows(self) -> np.ndarray:
        splits = self.splits
        return next(r for r in (splits.test, splits.val, splits.train) if len(r))

    def scaled_inputs(
        self, scaler: Any, *, max_rows: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """Scaled inputs of the evaluation rows, float32 (n_rows, n_features).

        With ``max_rows``, a random subset of at most that many rows drawn from
        ``seed``, kept in row order.
        """
        rows = self.rows
        if max_rows is not None and len(rows) > max_rows:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
        return np.concatenate(
            list(iter_batches(self.dataset.x, rows, EVAL_BATCH_SIZE, scaler))
        )


class DivergedRun(RuntimeError):
    """Training diverged; the run folder keeps its last good checkpoint."""


class InterruptedRun(KeyboardInterrupt):
    """Ctrl-C stopped a run after writing a checkpoint of its current step."""

    def __init__(self, run_dir: Path, epoch: int, step_in_epoch: int) -> None:
        super().__init__(f"{run_dir}: interrupted at epoch {epoch + 1}")
        self.run_dir, self.epoch, self.step_in_epoch = run_dir, epoch, step_in_epoch


def _load_data(source: str, label_column: str | None, path: str | None = None) -> Any:

    return load_dataset(path or source, label_column=label_column)


def _load_recorded_data(record: dict[str, Any], since: str, otherwise: str) -> Dataset:
    """The data a run was trained on, refused if its checksum changed since."""
    dataset = _load_data(
        record["source"], record.get("label_column"), record.get("path")
    )
    if dataset.checksum != record["checksum"]:
        raise ValueError(
            f"data {record['source']!r} changed since {since} (checksum "
            f"mismatch); {otherwise}"
        )
    return dataset


def _data_record(dataset: Any, options: TrainOptions) -> dict[str, Any]:

    builtin = options.data in list_builtin_datasets()
    return {
        "source": options.data,
        "path": None if builtin else str(Path(options.data).expanduser().resolve()),
        "name": dataset.name,
        "checksum": dataset.checksum,
        "n_samples": dataset.n_samples,
        "n_features": dataset.n_features,
        "has_labels": dataset.y is not None,
        "image_shape": None
        if dataset.image_shape is None
        else list(dataset.image_shape),
        "label_column": options.label_column,
    }


def _versions() -> dict[str, str]:
    import safetensors

    from contractive import __version__

    return {
        "contractive": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


def seeded_model(architecture: dict[str, Any], seed: int) -> Autoencoder:
    """``Autoencoder.from_architecture`` with its initial weights drawn from ``seed``.

    The global torch RNG is forked, so its state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return runs.build_model(architecture)


def default_run_dir(data_name: str, model: str) -> Path:
    """``runs/<data>-<model>-<YYYYmmdd-HHMMSS>``, with a suffix if taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{data_name}-{model}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _device_for_processes(name: str) -> torch.device:
    """``resolve_device`` for this process (``cuda:LOCAL_RANK`` under torchrun)."""
    if distributed.env_world_size() > 1:
        return resolve_device(name, local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return resolve_device(name)


@contextlib.contextmanager
def _processes(device: torch.device) -> Iterator[distributed.DistContext]:
    """The job this process is part of; joins (and leaves) torchrun's group.

    A single process outside torchrun. A process group created here is
    destroyed on the way out; one the caller created is left alone.
    """
    created = distributed.env_world_size() > 1 and not (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    ctx = distributed.init_from_env(device)
    try:
        yield ctx
        if created:  # leave together: rank 0 may still be writing the model
            ctx.barrier()
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _distributed_record(ctx: distributed.DistContext) -> dict[str, Any]:
    backend = distributed.backend_for(ctx.device)
    return {"world_size": ctx.world_size, "backend": backend}


def model_architecture(options: TrainOptions, dataset: Dataset) -> dict[str, Any]:
    """The ``Autoencoder.from_architecture`` dict for these options and data."""
    if options.conv_channels is None:
        return {
            "type": "dense",
            "n_features": dataset.n_features,
            "hidden_sizes": list(options.hidden),
            "activation": options.activation,
            "decoder": options.decoder,
        }
    if dataset.image_shape is None:
        raise ValueError(
            f"conv_channels needs image data; {dataset.name!r} has no image shape "
            "(digits, mnist5k, MNIST IDX files and 3-D .npy arrays have one)"
        )
    return Autoencoder.conv(
        (1, *dataset.image_shape),
        options.conv_channels,
        options.kernel_size,
        stride=options.stride,
        padding=options.padding,
        activation=options.activation,
        decoder=options.decoder,
    ).architecture


def train_run(options: TrainOptions, *, progress: bool | None = None) -> RunResult:
    """Train a new model as ``options`` say and write its run folder.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this: they join one
    process group and train with DistributedDataParallel, ``options.batch_size``
    rows per process and step; only rank 0 creates and writes the run folder.

    Raises
    ------
    ValueError
        A user error (bad data, flag, or path); no run folder is left behind.
    DivergedRun
        NaN/Inf loss; the folder keeps its last good checkpoint.
    InterruptedRun
        Ctrl-C; a checkpoint of the current step was written.
    """
    objective, train_config = options.objective(), options.train_config()
    device = _device_for_processes(options.device)
    check_precision(options.precision, device)
    dataset = _load_data(options.data, options.label_column)
    splits = make_splits(
        dataset.n_samples,
        options.validation_fraction,
        options.test_fraction,
        options.seed,
    )
    model = seeded_model(model_architecture(options, dataset), options.seed)
    with _processes(device) as ctx:

        def make_config(out: Path) -> dict[str, Any]:
            return {
                "format": RUN_FORMAT,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"
                ),
                "options": {**options.to_dict(), "out": str(out)},
                "architecture": model.architecture,
                "objective": objective.to_dict(),
                "train": train_config.to_dict(),
                "data": _data_record(dataset, options),
                "scaling": resolve_scaling(options.scaling, dataset),
                "splits": {
                    **splits.sizes(),
                    "validation_fraction": options.validation_fraction,
                    "test_fraction": options.test_fraction,
                    "seed": options.seed,
                },
                "device": str(device),
                "distributed": _distributed_record(ctx),
                "versions": _versions(),
            }

        def create() -> str:  # rank 0 alone: the folder and its config.json
            out = (
                Path(options.out)
                if options.out
                else default_run_dir(dataset.name, options.model)
            )
            runs.check_new_run_dir(out, overwrite=options.overwrite)
            run_dir = runs.create_run_dir(out, overwrite=options.overwrite)
            runs.write_config(run_dir, make_config(run_dir))
            return str(run_dir)

        run_dir = Path(ctx.on_main(create))
        config = make_config(run_dir)
        setup = _Setup(
            config, dataset, splits, model, objective, train_config, device, ctx,
            options.precision,
        )  # fmt: skip
        try:
            return _train_in(run_dir, setup, progress, fresh=True)
        except ValueError:
            if ctx.is_main and not runs.has_checkpoint(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def resume_run(
    out: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Continue the run in ``out`` from its last checkpoint, with its stored settings.

    A run killed at any moment (even SIGKILL) and resumed ends with the same
    weights as an uninterrupted run. ``epochs`` may raise the epoch budget;
    ``device`` overrides the stored one (None keeps it). A run trained by N
    processes resumes with N processes (every process reads the checkpoint, so
    the run folder must be on a filesystem they all see).
    """
    run_dir = runs.check_run_dir(out)
    config = runs.read_config(run_dir)
    try:
        stored = TrainOptions(
            **{**config["options"], "hidden": tuple(config["options"]["hidden"])}
        )
        objective = Objective(**config["objective"])
        train = {**config["train"]}
        if epochs is not None:
            train["epochs"] = epochs
        train_config = TrainConfig(**train)
    except (KeyError, TypeError, ValueError) as err:
        raise runs.RunError(f"{run_dir / runs.CONFIG} is not usable: {err}") from None
    trained_with = int((config.get("distributed") or {}).get("world_size", 1))
    world_size = distributed.env_world_size()
    if trained_with != world_size:
        raise ValueError(
            f"run {str(run_dir)!r} was trained with {trained_with} processes "
            f"and this is {world_size}; resume it with --nproc {trained_with}"
        )
    dev = _device_for_processes(device or stored.device)
    check_precision(stored.precision, dev)
    dataset = _load_recorded_data(config["data"], "the run started", "cannot resume")
    splits = make_splits(
        dataset.n_samples, stored.validation_fraction, stored.test_fraction, stored.seed
    )
    model = seeded_model(config["architecture"], stored.seed)
    with _processes(dev) as ctx:
        if train != config["train"] and ctx.is_main:
            config["train"] = train
            runs.write_config(run_dir, config)
        setup = _Setup(
            config, dataset, splits, model, objective, train_config, dev, ctx,
            stored.precision,
        )  # fmt: skip
        return _train_in(run_dir, setup, progress, fresh=False)


@dataclass
class _Setup:
    """What a run trains, checked and built before its folder is touched."""

    config: dict[str, Any]
    dataset: Any
    splits: Splits
    model: Autoencoder
    objective: Objective
    train_config: TrainConfig
    device: torch.device
    ctx: distributed.DistContext = field(default_factory=distributed.DistContext)
    precision: str = "fp32"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads inside the block, then restore the count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_in(
    run_dir: Path, setup: _Setup, progress: bool | None, *, fresh: bool
) -> RunResult:
    """Fit the scaler, train (resuming from a checkpoint unless ``fresh``), save.

    Every rank trains; rank 0 alone writes (checkpoints, metrics, model, summary).
    """

    dataset, splits, model, ctx = setup.dataset, setup.splits, setup.model, setup.ctx
    main = ctx.is_main
    with _torch_threads(int(setup.config["options"].get("threads", 1))):
        scaler = Scaler(setup.config["scaling"]).fit(dataset.x, splits.train)
        model.to(setup.device)
        trainer = Trainer(
            model,
            setup.objective,
            setup.train_config,
            device=setup.device,
            checkpoint=lambda state: runs.save_checkpoint(run_dir, state),
            on_epoch_end=lambda metrics: (
                runs.append_metrics(run_dir, metrics) if main else None
            ),
            progress=progress,
            dist=ctx,
            precision=setup.precision,
        )
        if not fresh:
            if main:
                runs.remove_stale_temp_files(run_dir)
            ctx.barrier()  # rank 0 wrote the checkpoint the others now read
            if runs.has_checkpoint(run_dir):
                trainer.load_state_dict(runs.load_checkpoint(run_dir))
                logger.info(
                    "resuming %s at epoch %d, step %d",
                    run_dir,
                    trainer.epoch + 1,
                    trainer.step_in_epoch,
                )
        if _pretrain_epochs(setup) and not runs.has_checkpoint(run_dir):
            _pretrain(setup, scaler)  # deterministic, so every rank does it alike
        if main:
            runs.truncate_metrics(run_dir, trainer.epoch)
        try:
            history = trainer.fit(dataset.x, splits.train, splits.val, scaler=scaler)
        except TrainingInterrupted as err:
            raise InterruptedRun(run_dir, err.epoch, err.step_in_epoch) from None
        except DivergenceError as err:
            where = (
                f"the last good checkpoint is in {run_dir / runs.CHECKPOINTS}"
                if runs.has_checkpoint(run_dir)
                else "no checkpoint was written"
            )
            raise DivergedRun(f"training diverged: {err}; {where}") from None
        if not main:
            return RunResult(run_dir, {}, history, is_main=False)
        sha = runs.save_model(run_dir, model, scaler)
        summary = {
            "epochs_trained": trainer.epoch,
            "stopped_early": trainer.stopped_early,
            "best_epoch": trainer.best_epoch or None,
            "best_val_loss": trainer.best_val,
            **model_metrics(model, dataset, splits, scaler, device=setup.device),
            "files": {runs.MODEL: sha},
        }
    runs.write_summary(run_dir, summary)
    return RunResult(run_dir, summary, history)


def _pretrain_epochs(setup: _Setup) -> int:
    """Pre-training epochs per layer; 0 unless the encoder has several layers."""
    arch = setup.config["architecture"]
    if arch["type"] != "dense" or len(arch["hidden_sizes"]) < 2:
        return 0
    return int(setup.config["options"].get("pretrain_epochs", 0))


def _pretrain(setup: _Setup, scaler: Scaler) -> None:
    """Greedy layer-wise pre-training (stacked CAE) on the scaled training rows."""
    rows = setup.splits.train
    x = np.concatenate(
        list(iter_batches(setup.dataset.x, rows, EVAL_BATCH_SIZE, scaler))
    )
    model, train = setup.model, setup.train_config
    histories = pretrain_greedy(
        model,
        torch.from_numpy(x).to(setup.device),
        layer_objectives(model, setup.objective),
        epochs=_pretrain_epochs(setup),
        batch_size=train.batch_size,
        lr=train.lr,
        seed=train.seed,
    )
    for k, history in enumerate(histories, start=1):
        logger.info("pre-trained layer %d: loss %.6g", k, history.series("loss")[-1])


# ------------------------------------------------------------------ metrics


def _encode_rows(
    model: Autoencoder, x: Any, rows: np.ndarray, scaler: Any, device: torch.device
) -> Iterator[tuple[np.ndarray, np.ndarray, float, float]]:
    """Per batch: scaled inputs, codes, sum of squared errors, sum of ||J||_F."""

    model.eval()
    for batch in iter_batches(x, rows, EVAL_BATCH_SIZE, scaler):
        xb = torch.from_numpy(batch).to(device)
        # Closed form where there is one; otherwise a 64-probe estimate, whose
        # square root is nearly unbiased (a 1-probe one would not be).
        norms = jacobian_norm_sq(model.encoder, xb, n_probes=METRIC_PROBES)
        norms = norms.detach().clamp_min(0).sqrt()
        with torch.no_grad():
            h = model.encode(xb)
            sq = (model.decode(h) - xb).pow(2).flatten(1).sum(1)
        yield batch, h.flatten(1).cpu().numpy(), float(sq.sum()), float(norms.sum())


def model_metrics(
    model: Autoencoder,
    dataset: Any,
    splits: Splits,
    scaler: Any,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Reconstruction error, mean ``||J_f(x)||_F`` and the linear probe.

    Measured on the test rows (the validation rows if there are none, else the
    training rows). ``reconstruction_error`` is the squared error summed over
    (scaled) features, averaged over samples. The probe (only with labels and test
    rows) fits ``LogisticRegression`` on standardized codes of up to
    ``PROBE_MAX_TRAIN`` training rows and scores it on the test rows (a seeded
    sample of ``PROBE_MAX_TEST`` when there are more); the same for
    the scaled inputs.
    """
    device = torch.device(device)
    rows = next(r for r in (splits.test, splits.val, splits.train) if len(r))
    n, sse, jac = 0, 0.0, 0.0
    inputs, codes = [], []
    probe = dataset.y is not None and len(splits.test) > 0 and rows is splits.test
    probe_rows = _at_most(rows, PROBE_MAX_TEST) if probe else rows[:0]
    keep = np.isin(rows, probe_rows)  # rows the probe scores: kept in memory
    for xb, hb, s, j in _encode_rows(model, dataset.x, rows, scaler, device):
        batch_keep, keep = keep[: len(xb)], keep[len(xb) :]
        n, sse, jac = n + len(xb), sse + s, jac + j
        if probe:
            inputs.append(xb[batch_keep])
            codes.append(hb[batch_keep])
    out: dict[str, Any] = {
        "eval_split": "test"
        if rows is splits.test
        else "val"
        if rows is splits.val
        else "train",
        "n_eval": n,
        "reconstruction_error": sse / n,
        "jacobian_norm": jac / n,
    }
    if probe:
        train_rows = _at_most(splits.train, PROBE_MAX_TRAIN)
        tr_in, tr_codes = [], []
        for xb, hb, _, _ in _encode_rows(model, dataset.x, train_rows, scaler, device):
            tr_in.append(xb)
            tr_codes.append(hb)
        y_train, y_test = dataset.y[train_rows], dataset.y[probe_rows]
        out["probe_accuracy_codes"] = linear_probe(
            np.concatenate(tr_codes), y_train, np.concatenate(codes), y_test
        )
        out["probe_accuracy_inputs"] = linear_probe(
            np.concatenate(tr_in), y_train, np.concatenate(inputs), y_test
        )
    return out


def _at_most(rows: np.ndarray, n: int) -> np.ndarray:
    """``rows``, or a seeded sorted sample of ``n`` of them when there are more."""
    if len(rows) <= n:
        return rows
    return np.sort(np.random.default_rng(0).choice(rows, n, replace=False))


def linear_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float | None:
    """Test accuracy of a standardized logistic regression; None with one class."""
    from sklearn.exceptions import ConvergenceWarning

    if len(np.unique(y_train)) < 2:
        return None
    with warnings.catch_warnings():  # a probe at max_iter is still a fair probe
        warnings.simplefilter("ignore", ConvergenceWarning)
        return analysis.linear_probe_accuracy(x_train, y_train, x_test, y_test)


def format_summary(summary: dict[str, Any]) -> str:
    """A short table of a run's (or an evaluation's) final metrics."""
    rows = [
        ("reconstruction error (sum sq., per sample)", summary["reconstruction_error"]),
        ("mean ||J_f(x)||_F", summary["jacobian_norm"]),
    ]
    if summary.get("probe_accuracy_codes") is not None:
        rows.append(("linear probe accuracy, codes", summary["probe_accuracy_codes"]))
        rows.append(("linear probe accuracy, inputs", summary["probe_accuracy_inputs"]))
    width = max(len(r[0]) for r in rows)
    split = summary.get("eval_split", "test")
    lines = [f"{'metric (' + split + ' split)':<{width}}  value", "-" * (width + 10)]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ encode / evaluate


def encode_file(
    run_dir: str | os.PathLike[str],
    source: str,
    output: str | os.PathLike[str],
    *,
    label_column: str | None = None,
    device: str = "cpu",
) -> tuple[int, int]:
    """Write the codes of ``source``'s rows to ``output`` (.npy or .csv).

    Returns (n_samples, n_components). Everything is checked before writing;
    the output is written atomically.
    """
    output = Path(output).expanduser()
    if output.suffix.lower() not in (".npy", ".csv"):
        raise ValueError(f"output {str(output)!r} must end in .npy or .csv")
    if output.is_dir():
        raise ValueError(f"output {str(output)!r} is a folder")
    if not output.parent.is_dir():
        raise ValueError(f"output folder {str(output.parent)!r} does not exist")
    if not os.access(output.parent, os.W_OK):
        raise ValueError(f"output folder {str(output.parent)!r} is not writable")
    loaded = runs.load(run_dir, device=str(resolve_device(device)))
    dataset = _load_data(source, label_column)
    codes = loaded.encode(dataset.x)
    if output.suffix.lower() == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, codes, allow_pickle=False)
        runs.atomic_write_bytes(output, buffer.getvalue())
    else:
        lines = [",".join(f"h{i}" for i in range(codes.shape[1]))]
        lines += [",".join(f"{v:.9g}" for v in row) for row in codes]
        runs.atomic_write_bytes(output, ("\n".join(lines) + "\n").encode())
    return codes.shape


def evaluation_data(
    loaded: runs.LoadedModel,
    source: str | None = None,
    *,
    label_column: str | None = None,
) -> EvaluationData:
    """The data and splits a run is evaluated on (by ``evaluate`` and ``report``).

    Without ``source``: the run's own data (checked against its checksum) and its
    splits, re-made from the stored seed and fractions. With ``source``: all its
    rows as the test split; with labels (and at least 10 rows) a seeded 80/20
    split instead, so the probe has training rows.
    """
    record = loaded.config["data"]
    if source is None:
        dataset = _load_recorded_data(
            record, "training", "pass --data to evaluate on it anyway"
        )
        opts = loaded.config["options"]
        splits = make_splits(
            dataset.n_samples,
            opts["validation_fraction"],
            opts["test_fraction"],
            opts["seed"],
        )
        return EvaluationData(dataset, splits, record["source"])
    from contractive.data import validate_features

    dataset = _load_data(source, label_column)
    validate_features(dataset.x, expected_n_features=loaded.n_features, name=source)
    if dataset.y is not None and dataset.n_samples >= 10:
        splits = make_splits(dataset.n_samples, 0.0, 0.2, 0)
    else:
        everything = np.arange(dataset.n_samples)
        splits = Splits(everything, everything[:0], everything)
        dataset.y = None
    return EvaluationData(dataset, splits, source)


def analysis_metrics(
    model: Autoencoder,
    data: EvaluationData,
    scaler: Any,
    *,
    max_samples: int | None = ANALYSIS_MAX_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """``contractive.analysis.summarize`` of the encoder on the evaluation rows.

    The inputs are scaled as in training; at most ``max_samples`` evaluation rows
    (a random subset drawn from ``seed``) enter the exact Jacobians, the spectrum
    and the contraction ratios. No probe: ``model_metrics`` has it, on the proper
    training/test split.
    """
    x = data.scaled_inputs(scaler, max_rows=max_samples, seed=seed)
    return analysis.summarize(model.encoder, x, max_samples=None, random_state=seed)


def evaluate_run(
    run_dir: str | os.PathLike[str],
    source: str | None = None,
    *,
    label_column: str | None = None,
    device: str = "cpu",
    analyse: bool = True,
    analysis_samples: int | None = ANALYSIS_MAX_SAMPLES,
) -> dict[str, Any]:
    """Metrics of a trained run, as ``model_metrics`` computes them, and its analysis.

    The rows are those of :func:`evaluation_data`. With ``analyse``, the key
    ``"analysis"`` holds :func:`analysis_metrics` (Jacobian spectrum decay, exact
    mean ``||J_f(x)||_F``, contraction ratios) on up to ``analysis_samples`` of
    the evaluation rows.
    """
    dev = resolve_device(device)
    loaded = runs.load(run_dir, device=str(dev))
    data = evaluation_data(loaded, source, label_column=label_column)
    metrics = model_metrics(
        loaded.model, data.dataset, data.splits, loaded.scaler, device=dev
    )
    out = {"run": str(loaded.run_dir), "data": data.name, **metrics}
    if analyse:
        out["analysis"] = analysis_metrics(
            loaded.model, data, loaded.scaler, max_samples=analysis_samples
        )
    return out
