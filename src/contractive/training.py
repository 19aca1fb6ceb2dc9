"""The training loop: epochs over mini-batches, evaluation, and ``fit``.

Knows nothing about the CLI, files or scikit-learn: batches in, metrics out.
``fit`` and the scikit-learn estimator's ``partial_fit`` both run
``train_epoch``, so there is one training path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

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
                f"loss is {float(loss)} after {seen} samples of this epoch; "
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
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    for epoch in range(1, epochs + 1):
        batches = iterate_minibatches(x, batch_size, generator=generator)
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
