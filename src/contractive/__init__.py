"""Contractive autoencoders and their relatives, in PyTorch.

The squared Frobenius norm of the encoder Jacobian, ``||J_f(x)||_F^2``, is the
contractive penalty of Rifai et al. (ICML 2011); ``jacobian_norm_sq`` computes it
for any encoder, in closed form where one exists.
"""

from contractive.estimator import ContractiveAutoencoder
from contractive.modules import (
    ACTIVATIONS,
    DECODERS,
    Autoencoder,
    ConvDecoder,
    ConvEncoder,
    DenseDecoder,
    DenseEncoder,
    DenseLayer,
    TiedConvTranspose,
    make_activation,
)
from contractive.objective import PRESETS, Objective
from contractive.penalties import (
    TiedLinear,
    batch_jacobian,
    corrupt,
    higher_order_penalty,
    jacobian_norm_sq,
    reconstruction_jacobian_norm_sq,
    resolve_method,
)
from contractive.runs import LoadedModel, load
from contractive.stacking import layer_autoencoders, pretrain_greedy
from contractive.training import (
    DivergenceError,
    History,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    evaluate,
    fit,
    train_epoch,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "DECODERS",
    "PRESETS",
    "Autoencoder",
    "ContractiveAutoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "DenseDecoder",
    "DenseEncoder",
    "DenseLayer",
    "DivergenceError",
    "History",
    "LoadedModel",
    "Objective",
    "TiedConvTranspose",
    "TiedLinear",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "__version__",
    "batch_jacobian",
    "corrupt",
    "evaluate",
    "fit",
    "higher_order_penalty",
    "jacobian_norm_sq",
    "layer_autoencoders",
    "load",
    "make_activation",
    "pretrain_greedy",
    "reconstruction_jacobian_norm_sq",
    "resolve_method",
    "train_epoch",
]
