"""The training loop: epochs over mini-batches, evaluation, and ``fit``.

Knows nothing about the CLI, files or scikit-learn: batches in, metrics out.
``fit`` and the scikit-learn estimator's ``partial_fit`` both run
``train_epoch``, so there is one training path.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from contractive._validation import check_int
from contractive.batching import iter_batches
from contractive.distributed import DistContext, rank_batches, shard_rows
from contractive.modules import Autoencoder
from contractive.objective import Objective

logger = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite."""


def iterate_minibatches(
    x: Tensor,
    batch_size: int,
    *,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Mini-batches of the rows of ``x`` (Tensor of shape (n_samples, ...)).

    The order is a random permutation drawn from ``generator`` when ``shuffle``;
    the last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = x.shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator, device="cpu").to(x.device)
        for start in range(0, n, batch_size):
            yield x[order[start : start + batch_size]]
    else:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size]


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ValueError unless ``precision`` is one of ``PRECISIONS`` and usable.

    bf16 and fp16 are autocast on CUDA only: CPU autocast would be slower than
    float32 for these small dense layers, and MPS autocast is not wired up.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {PRECISIONS}"
        )
    if precision != "fp32" and torch.device(device).type != "cuda":
        raise ValueError(
            f"precision {precision!r} needs a CUDA device, got {str(device)!r}; "
            "use fp32"
        )


class _ObjectiveModule(torch.nn.Module):
    """``model`` and ``objective`` as one module whose ``forward`` is the loss.

    DistributedDataParallel synchronises the gradients of the parameters used in
    its wrapped module's ``forward``; the objective calls ``model.encoder`` and
    ``model.decoder`` directly, so the whole objective is that ``forward``.
    """

    def __init__(self, model: Autoencoder, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        return self.objective(self.model, x, generator)


class Stepper:
    """One optimizer step on a batch: forward, agreement, backward, update.

    With several processes (``dist.world_size > 1``) the objective runs inside
    ``DistributedDataParallel``, each rank's loss is weighted by its share of the
    global batch (see ``contractive.distributed``), and the logged terms are the
    means over the global batch (one small all-reduce per step, which also tells
    every rank about a non-finite loss or a stop request on any rank).

    With ``precision`` "bf16" or "fp16" the forward pass runs under CUDA
    autocast; the objective keeps its penalties in float32 (see ``Objective``);
    fp16 scales the loss with a ``GradScaler``.

    Parameters
    ----------
    model, objective, optimizer : what to train and how
    dist : DistContext, optional (single process when None)
    precision : one of ``PRECISIONS``
    """

    def __init__(
        self,
        model: Autoencoder,
        objective: Objective,
        optimizer: torch.optim.Optimizer,
        *,
        dist: DistContext | None = None,
        precision: str = "fp32",
    ) -> None:
        self.dist = dist or DistContext()
        self.optimizer = optimizer
        self.precision = precision
        #: the caller's stop request (e.g. Ctrl-C), read at each step ...
        self.stop_flag: list[bool] = [False]
        #: ... and whether any rank had requested it at the last step
        self.agreed_stop = False
        module: torch.nn.Module = _ObjectiveModule(model, objective)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device = self.dist.device
            ids = [device.index] if device.type == "cuda" else None
            module = DistributedDataParallel(
                module, device_ids=ids, output_device=device.index if ids else None
            )
        self.module = module
        self.grad_scaler = _grad_scaler() if precision == "fp16" else None

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def step(
        self,
        batch: Tensor,
        generator: torch.Generator | None = None,
        *,
        n_global: int | None = None,
    ) -> tuple[dict[str, float], int]:
        """Train on ``batch`` (Tensor of shape (n_rows, ...)), this rank's rows.

        Parameters
        ----------
        batch : may have 0 rows (a rank left without rows by a short last batch)
        generator : for corruptions and probes
        n_global : rows of the global batch; default ``n_rows * world_size``

        Returns
        -------
        terms : mean of each loss term over the global batch
        n_global : rows of the global batch

        Raises
        ------
        DivergenceError
            On every rank, before any update, when the global loss is not finite.
        """
        n_local, world = int(batch.shape[0]), self.dist.world_size
        n_global = n_local * world if n_global is None else int(n_global)
        x = batch if n_local else batch.new_zeros((1, *batch.shape[1:]))
        with self._autocast(x.device):
            terms = self.module(x, generator)
        if world == 1:
            values = {k: float(v.detach()) for k, v in terms.items()}
            self.agreed_stop = self.stop_flag[0]
        else:
            values = self._reduce(terms, n_local)
        if not math.isfinite(values["loss"]):
            raise DivergenceError(f"loss is {values['loss']}")
        # DDP averages the ranks' gradients: weight = share of the global batch
        loss = terms["loss"].float() * (n_local * world / n_global)
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        return values, n_global

    def _reduce(self, terms: dict[str, Tensor], n_local: int) -> dict[str, float]:
        """Global means of ``terms``; sets ``agreed_stop`` (any rank's request)."""
        stats = torch.stack([v.detach().double() * n_local for v in terms.values()])
        extra = [float(n_local), float(self.stop_flag[0])]
        stats = torch.cat([stats, stats.new_tensor(extra)])
        stats = self.dist.all_reduce_sum(stats).tolist()
        n, stop = stats[-2], stats[-1]
        self.agreed_stop = stop > 0
        return {k: v / n for k, v in zip(terms, stats[:-2], strict=True)}


def _grad_scaler() -> Any:
    """A CUDA ``GradScaler`` (``torch.amp`` from torch 2.3, else ``torch.cuda.amp``)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()  # torch < 2.3


def train_epoch(
    model: Autoencoder,
    objective: Objective,
    batches: Iterable[Tensor | tuple[Tensor, int]],
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
    stepper: Stepper | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: forward, objective, backward, optimizer step.

    ``batches`` yields Tensors, or ``(Tensor, n_global)`` pairs when several
    processes share each step (see ``Stepper``). Returns the sample-weighted
    mean of each loss term over the epoch. Raises ``DivergenceError`` (before
    stepping) when the loss is NaN or infinite, so the weights stay at their
    last finite values.
    """
    stepper = stepper or Stepper(model, objective, optimizer)
    model.train()
    totals: dict[str, float] = {}
    seen = 0
    for item in batches:
        batch, n_global = item if isinstance(item, tuple) else (item, None)
        try:
            terms, n = stepper.step(batch, generator, n_global=n_global)
        except DivergenceError as err:
            raise DivergenceError(
                f"{err} after {seen} samples of this epoch; "
                "lower the learning rate or the penalty weights"
            ) from None
        for name, value in terms.items():
            totals[name] = totals.get(name, 0.0) + value * n
        seen += n
        if on_step is not None:
            on_step(terms)
    return {k: v / max(seen, 1) for k, v in totals.items()}


def _accumulate(
    totals: dict[str, float], terms: dict[str, Tensor], weight: int
) -> None:
    for name, value in terms.items():
        totals[name] = totals.get(name, 0.0) + float(value.detach()) * weight


def evaluate(
    model: Autoencoder,
    objective: Objective,
    batches: Iterable[Tensor],
    *,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Sample-weighted mean of each loss term over ``batches``, no parameter update.

    Gradients stay enabled where a penalty needs them (they are Jacobians of the
    encoder) but no parameter is changed.
    """
    model.eval()
    totals: dict[str, float] = {}
    seen = 0
    for batch in batches:
        terms = objective(model, batch, generator)
        _accumulate(totals, terms, batch.shape[0])
        seen += batch.shape[0]
    return {k: v / max(seen, 1) for k, v in totals.items()}


@dataclass
class History:
    """Per-epoch metrics: ``epochs[i]`` maps names ("loss", "val_loss") to floats."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def series(self, name: str) -> list[float]:
        return [e[name] for e in self.epochs if name in e]


def fit(
    model: Autoencoder,
    objective: Objective,
    x: Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    x_val: Tensor | None = None,
) -> History:
    """Train ``model`` on ``x`` (Tensor of shape (n_samples, ...)) with Adam.

    Deterministic given ``seed``. The batch order is drawn from a CPU
    ``torch.Generator`` (the permutation is made on the CPU whatever the
    device); corruptions and probes from a generator on ``x``'s device, which on
    the CPU is that same generator.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    order_generator = torch.Generator().manual_seed(seed)
    generator = (
        order_generator
        if x.device.type == "cpu"
        else torch.Generator(device=x.device).manual_seed(seed + 1)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    for epoch in range(1, epochs + 1):
        batches = iterate_minibatches(x, batch_size, generator=order_generator)
        metrics = {
            "epoch": float(epoch),
            **train_epoch(model, objective, batches, optimizer, generator=generator),
        }
        if x_val is not None:
            val = evaluate(
                model,
                objective,
                iterate_minibatches(x_val, 1024, shuffle=False),
                generator=generator,
            )
            metrics.update({f"val_{k}": v for k, v in val.items()})
        history.epochs.append(metrics)
        logger.info("epoch %d: %s", epoch, metrics)
    return history


# ------------------------------------------------------------------ the full loop

OPTIMIZERS = ("adam", "sgd")

#: Rows per batch when evaluating (no gradient step, so larger is fine).
EVAL_BATCH_SIZE = 1024


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of ``Trainer``; cheap checks only, no I/O.

    Parameters
    ----------
    epochs : int >= 1, passes over the training rows
    batch_size : int >= 1
    lr : float > 0, learning rate
    optimizer : {"adam", "sgd"}
    momentum : float in [0, 1), SGD only
    seed : int, drives the batch order, corruptions and stochastic probes
    patience : int >= 0, stop after this many epochs without a lower validation
        loss; 0 never stops early
    restore_best : bool, with validation data, end on the weights of the epoch
        with the lowest validation loss (else keep the last epoch's weights)
    checkpoint_every : int >= 0, also checkpoint every this many optimizer steps
        (0: only at the end of each epoch)
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.0
    seed: int = 0
    patience: int = 0
    restore_best: bool = True
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("patience", "checkpoint_every", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        if not _is_number(self.lr) or not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}"
            )
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def to_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig
) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over all of ``model``'s parameters."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr)


class _StopRequested(Exception):
    """Raised from a step callback to leave ``train_epoch`` after a full step."""


@contextlib.contextmanager
def _deferred_sigint(flag: list[bool]) -> Iterator[None]:
    """Turn a first SIGINT into ``flag[0] = True`` (acted on at a step boundary).

    A second SIGINT raises ``KeyboardInterrupt`` at once. Only in the main thread;
    elsewhere signals cannot be handled and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``Trainer.fit``; a checkpoint was offered to the callback.

    Attributes
    ----------
    epoch : int, epochs completed
    step_in_epoch : int, optimizer steps done in the current epoch
    """

    def __init__(self, epoch: int, step_in_epoch: int) -> None:
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step_in_epoch}")
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch


Checkpoint = Callable[[dict[str, Any]], None]


class Trainer:
    """Epochs over the rows of an indexable array, with validation, early
    stopping, progress, checkpoints and exact resume.

    The rows are read batch by batch (``x`` may be a read-only ``np.memmap``), in
    an order that is a permutation drawn each epoch from a CPU ``torch.Generator``
    seeded with ``config.seed``; a second generator (on the model's device) drives
    corruptions and stochastic probes. ``state_dict()`` holds everything needed to
    continue bit for bit: model, optimizer, both generator states, the epoch's
    permutation and the position in it, the partial epoch sums, the history and
    the early-stopping bookkeeping (including the best weights).

    Early stopping: with validation rows the validation loss is tracked; after
    ``patience`` epochs without improvement training stops, and with
    ``restore_best`` (the default) the model ends on the best epoch's weights.
    Without validation rows the last weights are kept.

    Several processes: with ``dist`` (a ``DistContext`` of world size N), each
    step trains on ``N * config.batch_size`` rows, ``config.batch_size`` per
    rank, as ``contractive.distributed.rank_batches`` assigns them; the model is
    wrapped in DistributedDataParallel; validation rows are split between the
    ranks and their sums all-reduced, and rank 0's early-stopping decision is
    broadcast. Every rank keeps the same state (the logged metrics are global),
    but only rank 0 calls ``checkpoint``, ``on_epoch_end`` and shows progress.
    With a deterministic objective the weights equal (within float rounding)
    those of one process with batch size ``N * config.batch_size``; corruptions
    and stochastic probes draw from per-rank streams (seeded from the seed and
    the rank), so those terms differ from a single-process run.

    Parameters
    ----------
    model : Autoencoder, already on ``device``
    objective : Objective
    config : TrainConfig
    device : torch.device or str, where batches are sent
    checkpoint : callable taking ``state_dict()``, optional; called at the end of
        every epoch, every ``config.checkpoint_every`` steps, and on Ctrl-C
    on_epoch_end : callable taking the epoch's metrics dict, optional; called
        before that epoch's checkpoint
    progress : bool or None, show a tqdm bar; None shows it when stderr is a tty
    dist : DistContext, optional; None is a single process
    precision : {"fp32", "bf16", "fp16"}, autocast on CUDA for the latter two
    """

    def __init__(
        self,
        model: Autoencoder,
        objective: Objective,
        config: TrainConfig,
        *,
        device: torch.device | str = "cpu",
        checkpoint: Checkpoint | None = None,
        on_epoch_end: Callable[[dict[str, float]], None] | None = None,
        progress: bool | None = None,
        dist: DistContext | None = None,
        precision: str = "fp32",
    ) -> None:
        check_precision(precision, device)
        self.model = model
        self.objective = objective
        self.config = config
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.on_epoch_end = on_epoch_end
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.dist = dist or DistContext(device=self.device)
        self.optimizer = make_optimizer(model, config)
        self.stepper = Stepper(
            model, objective, self.optimizer, dist=self.dist, precision=precision
        )
        self.order_generator = torch.Generator().manual_seed(config.seed)
        # rank 0 keeps the single-process stream; other ranks draw their own
        noise_seed = config.seed + 1 + 1_000_003 * self.dist.rank
        self.noise_generator = torch.Generator(device=self.device).manual_seed(
            noise_seed
        )
        self.history = History()
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # optimizer steps done in the current epoch
        self.global_step = 0
        self.order: Tensor | None = None  # permutation of the current epoch
        self.epoch_sums: dict[str, float] = {}
        self.epoch_seen = 0
        self.best_val: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.best_state: dict[str, Tensor] | None = None

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` needs to continue exactly from here.

        Tensors (model, optimizer, generator states, order, best weights), copied
        so later steps do not change them, and plain JSON-friendly values; no
        objects that need pickle.
        """
        return {
            "model": _clone(self.model.state_dict()),
            "optimizer": _clone(self.optimizer.state_dict()),
            "order_generator": self.order_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "order": self.order,
            "best_model": self.best_state,
            "counters": {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "epoch_seen": self.epoch_seen,
                "best_val": self.best_val,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "stopped_early": self.stopped_early,
            },
            "epoch_sums": dict(self.epoch_sums),
            "history": [dict(e) for e in self.history.epochs],
            **self._grad_scaler_state(),
        }

    def _grad_scaler_state(self) -> dict[str, Any]:
        scaler = self.stepper.grad_scaler
        return {} if scaler is None else {"grad_scaler": dict(scaler.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; raises ValueError when it does not fit."""
        try:
            self.model.load_state_dict(state["model"], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.order_generator.set_state(state["order_generator"])
            self.noise_generator.set_state(state["noise_generator"])
            c = state["counters"]
            self.epoch = int(c["epoch"])
            self.step_in_epoch = int(c["step_in_epoch"])
            self.global_step = int(c["global_step"])
            self.epoch_seen = int(c["epoch_seen"])
            self.best_val = None if c["best_val"] is None else float(c["best_val"])
            self.best_epoch = int(c["best_epoch"])
            self.bad_epochs = int(c["bad_epochs"])
            self.stopped_early = bool(c["stopped_early"])
            self.order = state["order"]
            self.best_state = state["best_model"]
            self.epoch_sums = {k: float(v) for k, v in state["epoch_sums"].items()}
            self.history = History([dict(e) for e in state["history"]])
            scaler_state = state.get("grad_scaler")
            if self.stepper.grad_scaler is not None and scaler_state:
                self.stepper.grad_scaler.load_state_dict(scaler_state)
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(
                f"checkpoint does not match this model and config: {_first_line(err)}"
            ) from None

    # -------------------------------------------------------------- loop
    def fit(
        self,
        x: Any,
        train_indices: np.ndarray,
        val_indices: np.ndarray | None = None,
        *,
        scaler: Any = None,
    ) -> History:
        """Train until ``config.epochs`` are done or early stopping triggers.

        Parameters
        ----------
        x : array of shape (n_samples, n_features), np.ndarray, np.memmap or any
            row-indexable array (read through ``contractive.batching.iter_batches``)
        train_indices : int array of shape (n_train,), rows to train on
        val_indices : int array of shape (n_val,), optional, rows to validate on
        scaler : fitted ``contractive.data.Scaler``, optional, applied per batch

        Returns
        -------
        History, one dict per epoch ("epoch", "loss", "reconstruction", penalty
        terms, and "val_*" with validation rows).

        Raises
        ------
        DivergenceError
            The loss became NaN or infinite; the last checkpoint is the last good
            state (nothing is written for the diverged step).
        TrainingInterrupted
            On Ctrl-C, after offering a checkpoint of the current step.
        """
        train_indices = np.asarray(train_indices, dtype=np.int64)
        if len(train_indices) == 0:
            raise ValueError("no training rows")
        has_val = val_indices is not None and len(val_indices) > 0
        stop = [False]
        self.stepper.stop_flag, self.stepper.agreed_stop = stop, False
        with _deferred_sigint(stop):
            while self.epoch < self.config.epochs and not self.stopped_early:
                self._run_epoch(x, train_indices, scaler, stop)
                metrics = self._finish_epoch(
                    x, val_indices if has_val else None, scaler
                )
                if self.on_epoch_end is not None:
                    self.on_epoch_end(metrics)
                self._save_checkpoint()
                if self.stepper.agreed_stop or (stop[0] and not self.dist.enabled):
                    raise TrainingInterrupted(self.epoch, self.step_in_epoch)
        if self.config.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

    def _run_epoch(
        self, x: Any, train_indices: np.ndarray, scaler: Any, stop: list[bool]
    ) -> None:

        bs, world = self.config.batch_size, self.dist.world_size
        if self.order is None:  # a fresh epoch (else resuming inside one)
            self.order = torch.randperm(
                len(train_indices), generator=self.order_generator
            )
            self.step_in_epoch, self.epoch_seen, self.epoch_sums = 0, 0, {}
        steps = list(
            rank_batches(
                train_indices[self.order.numpy()],
                bs,
                self.dist.rank,
                world,
                start=self.step_in_epoch,
            )
        )
        rows = np.concatenate([r for r, _ in steps]) if steps else train_indices[:0]
        n_steps = math.ceil(len(train_indices) / (bs * world))
        sizes = iter([n for _, n in steps])  # global rows per step

        bar = tqdm(
            total=n_steps,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not (self.progress and self.dist.is_main),
            leave=False,
            dynamic_ncols=True,
        )

        def on_step(terms: dict[str, float]) -> None:
            n = next(sizes)
            for name, value in terms.items():
                self.epoch_sums[name] = self.epoch_sums.get(name, 0.0) + value * n
            self.epoch_seen += n
            self.step_in_epoch += 1
            self.global_step += 1
            bar.set_postfix(_postfix(terms), refresh=False)
            bar.update(1)
            if self.step_in_epoch == n_steps:
                bar.refresh()  # show the epoch's last terms, however fast it ran
                return  # the end-of-epoch checkpoint follows validation
            # several processes: the flag all ranks agreed on at this step
            stopping = self.stepper.agreed_stop if self.dist.enabled else stop[0]
            every = self.config.checkpoint_every
            if stopping or (every and self.global_step % every == 0):
                self._save_checkpoint()
            if stopping:
                raise _StopRequested

        local_sizes = [len(r) for r, _ in steps]
        batches = zip(
            (self._to_device(b) for b in iter_batches(x, rows, local_sizes, scaler)),
            [n for _, n in steps],
            strict=True,
        )
        try:
            train_epoch(
                self.model,
                self.objective,
                batches,
                self.optimizer,
                generator=self.noise_generator,
                on_step=on_step,
                stepper=self.stepper,
            )
        except _StopRequested:
            raise TrainingInterrupted(self.epoch, self.step_in_epoch) from None
        finally:
            bar.close()

    def _to_device(self, batch: np.ndarray) -> Tensor:
        """A numpy batch on the training device (through pinned memory to CUDA)."""
        tensor = torch.from_numpy(batch)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _finish_epoch(
        self, x: Any, val_indices: np.ndarray | None, scaler: Any
    ) -> dict[str, float]:
        self.epoch += 1
        metrics = {"epoch": float(self.epoch)}
        metrics.update(
            {k: v / max(self.epoch_seen, 1) for k, v in self.epoch_sums.items()}
        )
        if val_indices is not None:
            val = self.validate(x, val_indices, scaler=scaler)
            metrics.update({f"val_{k}": v for k, v in val.items()})
            if self.dist.enabled:  # rank 0's value everywhere: the same decisions
                loss = torch.tensor([val["loss"]], dtype=torch.float64)
                val["loss"] = float(self.dist.broadcast(loss.to(self.device)))
            if self.best_val is None or val["loss"] < self.best_val:
                self.best_val, self.best_epoch, self.bad_epochs = (
                    val["loss"],
                    self.epoch,
                    0,
                )
                if self.config.restore_best:
                    self.best_state = {
                        k: v.detach().clone()
                        for k, v in self.model.state_dict().items()
                    }
            else:
                self.bad_epochs += 1
                patience = self.config.patience
                if patience and self.bad_epochs >= patience:
                    self.stopped_early = True
                    logger.info(
                        "early stopping after epoch %d: best validation loss %.6g "
                        "at epoch %d",
                        self.epoch,
                        self.best_val,
                        self.best_epoch,
                    )
        self.order, self.step_in_epoch, self.epoch_seen, self.epoch_sums = (
            None,
            0,
            0,
            {},
        )
        self.history.epochs.append(metrics)
        logger.info("epoch %d: %s", self.epoch, _postfix(metrics))
        return metrics

    def validate(
        self, x: Any, indices: np.ndarray, *, scaler: Any = None
    ) -> dict[str, float]:
        """Mean loss terms over rows ``indices`` of ``x``, no update.

        Uses its own generator seeded from ``config.seed`` (the same corruption
        every epoch), so validation never shifts the training random stream.
        With several processes each rank evaluates its share of the rows and the
        sums are all-reduced: every rank returns the same global means.
        """
        rows = shard_rows(indices, self.dist.rank, self.dist.world_size)
        n_local = len(rows)
        if n_local == 0:  # fewer rows than ranks: take part with zero weight
            rows = np.asarray(indices)[:1]
        batches = (
            self._to_device(b)
            for b in iter_batches(x, np.asarray(rows), EVAL_BATCH_SIZE, scaler)
        )
        seed = self.config.seed + 2 + 1_000_003 * self.dist.rank
        generator = torch.Generator(device=self.device).manual_seed(seed)
        means = evaluate(self.model, self.objective, batches, generator=generator)
        if not self.dist.enabled:
            return means
        stats = torch.tensor(
            [v * n_local for v in means.values()] + [float(n_local)],
            dtype=torch.float64,
            device=self.device,
        )
        totals = self.dist.all_reduce_sum(stats).tolist()
        return {k: v / totals[-1] for k, v in zip(means, totals[:-1], strict=True)}

    def _save_checkpoint(self) -> None:
        if self.checkpoint is not None and self.dist.is_main:
            self.checkpoint(self.state_dict())


def _clone(tree: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples, cloning tensors."""
    if isinstance(tree, Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


def _postfix(terms: dict[str, float]) -> dict[str, str]:
    short = {
        "loss": "loss",
        "reconstruction": "rec",
        "contraction": "jac",
        "higher_order": "hess",
        "reconstruction_contraction": "rjac",
        "val_loss": "val",
    }
    return {short[k]: f"{v:.4g}" for k, v in terms.items() if k in short}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
