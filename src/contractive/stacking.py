"""Greedy layer-wise pre-training of a deep autoencoder (the stacked CAE, CAE-2).

Rifai et al. (ICML 2011) obtain their best results by stacking: a second CAE
trained on the codes of the first (Bengio et al., NIPS 2006, for the greedy
scheme). Layer ``k`` of a deep ``Autoencoder`` is trained as a one-layer
autoencoder on the codes of layers ``< k``, with its own closed-form penalty;
the modules are shared, so this trains the deep model's own layers (encoder and
mirrored decoder), which an ordinary ``fit`` of the whole model can then
fine-tune end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from contractive.modules import Autoencoder, split_sigmoid_output
from contractive.objective import Objective
from contractive.training import History, fit

logger = logging.getLogger(__name__)


def layer_autoencoders(model: Autoencoder) -> list[Autoencoder]:
    """The one-layer autoencoders that greedy pre-training trains, in order.

    Autoencoder ``k`` has the deep model's encoder layer ``k`` as its encoder and
    the mirrored decoder layer (``n_layers - 1 - k``) as its decoder; both are
    the very same modules, not copies. The first one keeps the model's output
    layer (linear, sigmoid or tied); the others reconstruct codes through a
    hidden decoder layer.

    Parameters
    ----------
    model : Autoencoder whose ``encoder`` and ``decoder`` are ``nn.Sequential``
        of the same length, decoder layer ``n - 1 - k`` mapping the codes of
        encoder layer ``k`` back to its input (``Autoencoder.dense`` builds these)

    Returns
    -------
    list of Autoencoder, one per encoder layer
    """
    encoder, decoder = model.encoder, model.decoder
    if not isinstance(encoder, nn.Sequential) or not isinstance(decoder, nn.Sequential):
        raise TypeError(
            "greedy pre-training needs nn.Sequential encoder and decoder layers, got "
            f"{type(encoder).__name__} and {type(decoder).__name__}"
        )
    if len(encoder) != len(decoder):
        raise ValueError(
            f"encoder has {len(encoder)} layers but decoder has {len(decoder)}; "
            "greedy pre-training pairs encoder layer k with decoder layer n - 1 - k"
        )
    n = len(encoder)
    for k in range(n):
        for part, module in (("encoder", encoder[k]), ("decoder", decoder[n - 1 - k])):
            if next(module.parameters(), None) is None:
                raise ValueError(
                    f"{part} layer {type(module).__name__} has no parameters; greedy "
                    "pre-training needs one trainable layer per element of the "
                    "encoder and decoder (e.g. DenseLayer, or a one-layer "
                    "ConvEncoder per element), not a bare activation or reshape"
                )
    return [Autoencoder(encoder[k], decoder[n - 1 - k]) for k in range(n)]


def layer_objectives(model: Autoencoder, objective: Objective) -> list[Objective]:
    """One objective per layer of ``model`` for :func:`pretrain_greedy`.

    Each is ``objective``, except that the cross-entropy becomes the squared
    error for a layer whose decoder does not end in a sigmoid: its targets are
    the codes below it, which are only in (0, 1) for sigmoid units.
    """
    objectives = []
    for layer in layer_autoencoders(model):
        keeps_bce = split_sigmoid_output(layer.decoder)[1]
        same = objective.loss != "bce" or keeps_bce
        objectives.append(objective if same else replace(objective, loss="mse"))
    return objectives


@torch.no_grad()
def _codes(layers: Sequence[nn.Module], x: Tensor, chunk: int = 4096) -> Tensor:
    """``layers`` applied in order to ``x``, in eval mode, chunked, no gradients."""
    if not layers:
        return x
    stack = nn.Sequential(*layers)
    was_training = [m.training for m in layers]
    stack.eval()
    out = torch.cat([stack(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    for m, mode in zip(layers, was_training, strict=True):
        m.train(mode)
    return out


def pretrain_greedy(
    model: Autoencoder,
    x: Tensor,
    objective_per_layer: Objective | Sequence[Objective],
    *,
    epochs: int | Sequence[int] = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    x_val: Tensor | None = None,
    **fit_kwargs: Any,
) -> list[History]:
    """Greedy layer-wise pre-training of ``model`` in place (stacked CAE).

    For ``k = 0, 1, ...``: compute the codes ``c_k`` of encoder layers ``< k``
    (``c_0 = x``) without gradients, then ``fit`` the one-layer autoencoder
    ``layer_autoencoders(model)[k]`` to reconstruct ``c_k`` under objective
    ``k``. A one-layer dense or conv encoder gets its closed-form penalty, so
    each layer's contraction is exact. Fine-tuning afterwards is an ordinary
    ``contractive.training.fit(model, objective, x)`` of the whole model.

    Parameters
    ----------
    model : Autoencoder, see :func:`layer_autoencoders`; trained in place
    x : Tensor of shape (n_samples, n_features), the training inputs
    objective_per_layer : Objective, or one per layer
        One objective is used for every layer. Note ``loss="bce"`` needs a
        decoder layer ending in a sigmoid, which the hidden decoder layers only
        have with the sigmoid activation.
    epochs : int, or one per layer
    batch_size, lr, x_val, **fit_kwargs
        Passed to ``fit`` for every layer (``x_val`` is encoded like ``x``).
    seed : int, layer ``k`` trains with seed ``seed + k``

    Returns
    -------
    list of History, one per layer, in order
    """
    layers = layer_autoencoders(model)
    n = len(layers)
    objectives = _per_layer("objective_per_layer", objective_per_layer, n, Objective)
    epochs_per_layer = _per_layer("epochs", epochs, n, int)
    histories = []
    for k, (layer_model, objective, n_epochs) in enumerate(
        zip(layers, objectives, epochs_per_layer, strict=True)
    ):
        below = [model.encoder[i] for i in range(k)]
        codes = _codes(below, x)
        codes_val = None if x_val is None else _codes(below, x_val)
        logger.info("greedy pre-training layer %d/%d on %s", k + 1, n, codes.shape)
        histories.append(
            fit(
                layer_model,
                objective,
                codes,
                epochs=n_epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed + k,
                x_val=codes_val,
                **fit_kwargs,
            )
        )
    return histories


def _per_layer(name: str, value: Any, n: int, kind: type) -> list[Any]:
    if isinstance(value, kind) and not isinstance(value, bool):
        return [value] * n
    values = list(value) if isinstance(value, Sequence) else []
    if len(values) != n or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(
            f"{name} must be one {kind.__name__} or a sequence of {n} "
            f"(one per layer), got {value!r}"
        )
    return values
