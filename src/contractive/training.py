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


def _accumulate(
    totals: dict[str, float], terms: dict[str, Tensor], weight: int
) -> None:
    for name, value in terms.items():
        totals[name] = totals.get(name, 0.0) + float(value.detach()) * weight


def train_epoch(
    model: Autoencoder,
    objective: Objective,
    batches: Iterable[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator | None = None,
    on_step: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: forward, objective, backward, optimizer step.

    Returns the sample-weighted mean of each loss term over the epoch. Raises
    ``DivergenceError`` (before stepping) when the loss is NaN or infinite, so
    the weights stay at their last finite values.
    """
    model.train()
    totals: dict[str, float] = {}
    seen = 0
    for batch in batches:
        terms = objective(model, batch, generator)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"loss is {float(loss.detach())} after {seen} samples of this epoch; "
                "lower the learning rate or the penalty weights"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _accumulate(totals, terms, batch.shape[0])
        seen += batch.shape[0]
        if on_step is not None:
            on_step({k: float(v.detach()) for k, v in terms.items()})
    return {k: v / max(seen, 1) for k, v in totals.items()}


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

    Deterministic given ``seed`` on the CPU: one ``torch.Generator`` drives the
    batch order, corruptions and probes.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    # iterate_minibatches permutes on the CPU: off the CPU it needs its own
    # CPU generator (on the CPU one generator drives everything, as before).
    order = generator if x.device.type == "cpu" else torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    for epoch in range(1, epochs + 1):
        batches = iterate_minibatches(x, batch_size, generator=order)
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
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("patience", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
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


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


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
    ) -> None:
        self.model = model
        self.objective = objective
        self.config = config
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.on_epoch_end = on_epoch_end
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.optimizer = make_optimizer(model, config)
        self.order_generator = torch.Generator().manual_seed(config.seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(
            config.seed + 1
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
        }

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
            row-indexable array (read through ``contractive.data.iter_batches``)
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
        with _deferred_sigint(stop):
            while self.epoch < self.config.epochs and not self.stopped_early:
                self._run_epoch(x, train_indices, scaler, stop)
                metrics = self._finish_epoch(
                    x, val_indices if has_val else None, scaler
                )
                if self.on_epoch_end is not None:
                    self.on_epoch_end(metrics)
                self._save_checkpoint()
                if stop[0]:
                    raise TrainingInterrupted(self.epoch, self.step_in_epoch)
        if self.config.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

    def _run_epoch(
        self, x: Any, train_indices: np.ndarray, scaler: Any, stop: list[bool]
    ) -> None:
        from contractive.data import iter_batches  # front-end helper, no cycle

        bs = self.config.batch_size
        if self.order is None:  # a fresh epoch (else resuming inside one)
            self.order = torch.randperm(
                len(train_indices), generator=self.order_generator
            )
            self.step_in_epoch, self.epoch_seen, self.epoch_sums = 0, 0, {}
        rows = train_indices[self.order.numpy()][self.step_in_epoch * bs :]
        n_steps = math.ceil(len(train_indices) / bs)
        sizes = iter(
            [len(rows[i : i + bs]) for i in range(0, len(rows), bs)]
        )  # batch sizes, to weight the epoch sums as train_epoch does

        bar = tqdm(
            total=n_steps,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
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
            every = self.config.checkpoint_every
            if stop[0] or (every and self.global_step % every == 0):
                self._save_checkpoint()
            if stop[0]:
                raise _StopRequested

        batches = (
            torch.from_numpy(b).to(self.device)
            for b in iter_batches(x, rows, bs, scaler)
        )
        try:
            train_epoch(
                self.model,
                self.objective,
                batches,
                self.optimizer,
                generator=self.noise_generator,
                on_step=on_step,
            )
        except _StopRequested:
            raise TrainingInterrupted(self.epoch, self.step_in_epoch) from None
        finally:
            bar.close()

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
        """
        from contractive.data import iter_batches

        batches = (
            torch.from_numpy(b).to(self.device)
            for b in iter_batches(x, np.asarray(indices), EVAL_BATCH_SIZE, scaler)
        )
        generator = torch.Generator(device=self.device).manual_seed(
            self.config.seed + 2
        )
        return evaluate(self.model, self.objective, batches, generator=generator)

    def _save_checkpoint(self) -> None:
        if self.checkpoint is not None:
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
