"""scikit-learn front end: ``ContractiveAutoencoder``, an unsupervised transformer.

The estimator stores its constructor arguments verbatim; ``fit`` and
``partial_fit`` build the torch model (``module_``), the objective
(``objective_``) and the optimiser (``optimizer_``), and both train through one
epoch function (``_run_epoch``) that calls ``contractive.training.train_epoch``.

Conventions follow ``sklearn.neural_network.BernoulliRBM`` (``n_components``,
``learning_rate``, ``batch_size``, ``transform``) and ``MLPRegressor``
(``max_iter``, ``tol``, ``n_iter_no_change``, ``early_stopping``,
``validation_fraction``, ``loss_curve_``, ``n_iter_``, ``t_``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import Tensor

from contractive.modules import ACTIVATIONS, DECODERS, Autoencoder
from contractive.objective import PRESETS, Objective
from contractive.penalties import (
    CORRUPTIONS,
    METHODS,
    as_affine_activation,
    jacobian_norm_sq,
)
from contractive.stacking import layer_objectives, pretrain_greedy
from contractive.training import evaluate, iterate_minibatches, train_epoch

#: Values of ``penalty``: which Jacobian ``contraction`` weighs (None: no penalty).
PENALTIES = ("contractive", "higher_order", "reconstruction")

#: scikit-learn's loss names -> the core objective's.
_LOSSES = {"squared_error": "mse", "log_loss": "bce"}

#: Rows per forward pass in transform, inverse_transform, score and jacobian_norm.
_CHUNK = 4096

_SEED_MAX = np.iinfo(np.int32).max


class ContractiveAutoencoder(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Contractive autoencoder (CAE) and its family as a scikit-learn transformer.

    An autoencoder ``r = g(f(x))`` with encoder ``f(x) = activation(W x + b)``
    (``n_components`` units; by default one hidden layer) is trained with Adam on
    the mean over mini-batches of the per-sample objective (Rifai et al., ICML
    2011)::

        L(x) = sum_i loss(g(f(x~))_i, x_i) + penalty terms

    where ``x~`` is ``x`` after the optional ``corruption`` (the target stays
    the clean ``x``) and ``penalty`` picks the terms:

    ================  =====================================================
    ``penalty``       terms added to ``L(x)``
    ================  =====================================================
    None              none (plain AE; denoising AE with ``corruption``)
    "contractive"     ``contraction * ||J_f(x~)||_F^2`` (CAE)
    "higher_order"    ``contraction * ||J_f(x~)||_F^2 + higher_order *
                      E_eps ||J_f(x~) - J_f(x~ + eps)||_F^2``, eps ~
                      N(0, higher_order_sigma^2 I) (CAE+H)
    "reconstruction"  ``contraction * ||J_{g o f}(x~)||_F^2`` (RCAE)
    ================  =====================================================

    ``transform`` returns the codes ``f(x)``, the learned features.

    Deep (stacked) CAE: ``hidden_layer_sizes`` adds dense layers before the code
    layer, and the penalty is on the Jacobian of the whole encoder, computed as
    ``jacobian_method`` says ("auto": exact when min(n_features, n_components)
    <= 16, else the unbiased stochastic estimate with ``n_probes`` probes).
    ``pretrain_epochs > 0`` first trains the layers greedily, each as a one-layer
    CAE on the codes of the layers below with its own closed-form penalty
    (stacked CAE), then ``fit`` fine-tunes end to end. Convolutional CAE:
    ``input_shape`` makes the encoder one convolution with ``n_components``
    channels over flat images.
    ``ContractiveAutoencoder.from_preset`` builds the named families ("ae",
    "dae", "cae", "cae-h", "rcae") with the library's preset weights.

    Computation is in float32 (on ``device``); outputs are numpy arrays on the
    CPU in the input's floating dtype (float32 stays float32, anything else
    becomes float64).

    Parameters
    ----------
    n_components : int, default=256
        Number of hidden units: the size of the code ``f(x)``. With
        ``input_shape``, the number of channels of the convolution (the code
        then has ``n_components * prod(spatial output)`` features).
    hidden_layer_sizes : int, array-like of int or None, default=None
        Sizes of the dense layers before the code layer: the encoder's layers
        are ``[*hidden_layer_sizes, n_components]``, all with ``activation``,
        and the decoder mirrors them. None (or empty) is the one-layer CAE; an
        int is one hidden layer.
    input_shape : array-like of int or None, default=None
        ``(channels, *spatial)`` of the images whose flattened pixels (channels
        first, as ``x.reshape(n, -1)``) are the ``prod(input_shape)`` columns of
        ``X``, e.g. ``(1, 28, 28)`` for MNIST. Set, the encoder is one
        convolution (``Conv1d/2d/3d`` by the number of spatial dims) with
        ``n_components`` channels + ``activation`` (closed-form penalty), the
        decoder the mirrored transposed convolution
        (``contractive.Autoencoder.conv``); it excludes ``hidden_layer_sizes``.
    kernel_size : int or array-like of int, default=5
        Convolution kernel size (one per spatial dim); used with ``input_shape``.
    stride : int or array-like of int, default=1
        Convolution stride; used with ``input_shape``.
    padding : int, array-like of int, "same" or "valid", default=0
        Zero padding of the convolution ("same" needs stride 1); used with
        ``input_shape``.
    activation : str, default="sigmoid"
        Elementwise activation of the hidden layer, one of
        ``contractive.ACTIVATIONS``.
    decoder : {"linear", "sigmoid", "tied", "tied-sigmoid"}, default="linear"
        Decoder ``g``: affine (``V h + c``), affine then sigmoid (outputs in
        (0, 1)), or the same with tied weights ``V = W^T``.
    penalty : {"contractive", "higher_order", "reconstruction"} or None, \
            default="contractive"
        Jacobian penalty weighted by ``contraction`` (see the table above).
    contraction : float, default=0.1
        Weight lambda >= 0 of the penalty. Its scale depends on the input's
        (scaling x by c scales the squared error by c^2 and ``||J||^2`` by
        1 / c^2); scale the data first (MinMaxScaler or StandardScaler).
    higher_order : float, default=0.1
        Weight gamma >= 0 of the CAE+H term; used when
        ``penalty="higher_order"``.
    higher_order_sigma : float, default=0.1
        Standard deviation of the CAE+H perturbation eps, in input units.
    corruption : {"gaussian", "masking", "salt_and_pepper"} or None, \
            default=None
        Denoising: encode a corrupted input, reconstruct the clean one.
    corruption_level : float, default=0.25
        Standard deviation ("gaussian") or fraction of entries (the others) of
        the corruption; ignored when ``corruption`` is None.
    loss : {"squared_error", "log_loss"}, default="squared_error"
        Reconstruction loss per feature, summed over features. "log_loss" is the
        binary cross-entropy: it needs ``X`` in [0, 1] and a decoder ending in a
        sigmoid ("sigmoid" or "tied-sigmoid").
    jacobian_method : {"auto", "analytic", "exact", "stochastic"}, \
            default="auto"
        How the penalties get ``||J||_F^2`` during training. "auto": the closed
        form for a one-layer (dense or conv) encoder, else "exact"
        (``torch.func``, per-sample Jacobians) when min(input size, code size)
        <= 16, else "stochastic". "stochastic": ``E_v ||J v||^2`` with
        Rademacher probes ``v``, one forward-mode JVP per probe; unbiased, and so
        is its gradient. "analytic" needs a one-layer encoder.
    n_probes : int, default=1
        Probes per sample of the stochastic estimate (variance ~ 1 / n_probes).
    batch_size : int, default=64
        Mini-batch size (clipped to the number of samples).
    learning_rate : float, default=1e-3
        Step size of the Adam optimiser.
    max_iter : int, default=200
        Maximum number of epochs of ``fit`` (end to end, after any
        pre-training). ``partial_fit`` runs one epoch.
    pretrain_epochs : int, default=0
        Epochs of greedy layer-wise pre-training per encoder layer at the start
        of ``fit`` (``contractive.pretrain_greedy``), when the encoder has
        several layers (``hidden_layer_sizes``); 0 skips it, and it is ignored
        for a one-layer encoder (where it would be ordinary training). Layer
        ``k`` is a one-layer autoencoder on the codes of layers ``< k`` (its
        decoder the mirrored decoder layer), trained with the same objective,
        ``batch_size`` and ``learning_rate`` and its own Adam; its penalty is
        its own closed form. With ``loss="log_loss"``, layers above the first
        keep the cross-entropy only for ``activation="sigmoid"`` (codes in
        (0, 1)) and use the squared error otherwise. ``partial_fit`` never
        pre-trains: it is end to end only.
    tol : float, default=1e-4
        Training stops when the training loss (or, with ``early_stopping``, the
        validation score) has not improved by at least ``tol`` for
        ``n_iter_no_change`` consecutive epochs.
    n_iter_no_change : int, default=10
        Epochs without improvement by ``tol`` before stopping.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data, stop when its
        ``score`` stops improving, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
        Held-out fraction for ``early_stopping``, in (0, 1).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the batch order, the corruptions, the CAE+H
        draws and the validation split. Pass an int for reproducible results.
        The global torch and numpy random states are left unchanged.
    device : str or torch.device, default="auto"
        Where to train and compute: "auto" is "cuda" when available, else "cpu".
    verbose : int, default=0
        Print the loss (and validation score) after each epoch.

    Attributes
    ----------
    module_ : contractive.Autoencoder
        The trained torch model (on ``device_``).
    objective_ : contractive.Objective
        The training objective built from the parameters.
    optimizer_ : torch.optim.Adam
    device_ : torch.device
    loss_curve_ : list of float
        Mean training objective of each (end-to-end) epoch.
    pretrain_loss_curves_ : list of list of float
        Per encoder layer, the mean objective of each pre-training epoch
        (empty when ``fit`` did not pre-train).
    validation_scores_ : list of float or None
        ``score`` on the held-out data after each epoch (``early_stopping``).
    best_loss_ : float or None
        Lowest training loss (None with ``early_stopping``).
    best_validation_score_ : float or None
        Highest validation score (``early_stopping`` only).
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Defined only when ``X`` has string feature names.

    See Also
    --------
    sklearn.neural_network.BernoulliRBM : features from a restricted Boltzmann
        machine.
    sklearn.decomposition.PCA : linear features.

    Notes
    -----
    Pickling stores the weights and the optimiser state as numpy arrays plus the
    architecture (``module_.architecture``: dense of any depth, or conv); an
    unpickled estimator lives on the CPU (``device_`` is "cpu") whatever device
    it was trained on.

    References
    ----------
    Rifai, Vincent, Muller, Glorot, Bengio. Contractive Auto-Encoders: Explicit
    Invariance During Feature Extraction. ICML 2011.
    Rifai, Mesnil, Vincent, Muller, Bengio, Dauphin, Glorot. Higher Order
    Contractive Auto-Encoder. ECML PKDD 2011.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.preprocessing import MinMaxScaler
    >>> from contractive import ContractiveAutoencoder
    >>> X = MinMaxScaler().fit_transform(load_digits().data)
    >>> cae = ContractiveAutoencoder(n_components=32, max_iter=5, random_state=0)
    >>> cae.fit_transform(X).shape
    (1797, 32)
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [
            "array-like",
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "input_shape": ["array-like", None],
        "kernel_size": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "stride": [Interval(Integral, 1, None, closed="left"), "array-like"],
        "padding": [
            Interval(Integral, 0, None, closed="left"),
            StrOptions({"same", "valid"}),
            "array-like",
        ],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "decoder": [StrOptions(set(DECODERS))],
        "penalty": [StrOptions(set(PENALTIES)), None],
        "contraction": [Interval(Real, 0, None, closed="left")],
        "higher_order": [Interval(Real, 0, None, closed="left")],
        "higher_order_sigma": [Interval(Real, 0, None, closed="neither")],
        "corruption": [StrOptions(set(CORRUPTIONS)), None],
        "corruption_level": [Interval(Real, 0, None, closed="neither")],
        "loss": [StrOptions(set(_LOSSES))],
        "jacobian_method": [StrOptions(set(METHODS))],
        "n_probes": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "pretrain_epochs": [Interval(Integral, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_components: int = 256,
        *,
        hidden_layer_sizes: tuple[int, ...] | None = None,
        input_shape: tuple[int, ...] | None = None,
        kernel_size: int | tuple[int, ...] = 5,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        activation: str = "sigmoid",
        decoder: str = "linear",
        penalty: str | None = "contractive",
        contraction: float = 0.1,
        higher_order: float = 0.1,
        higher_order_sigma: float = 0.1,
        corruption: str | None = None,
        corruption_level: float = 0.25,
        loss: str = "squared_error",
        jacobian_method: str = "auto",
        n_probes: int = 1,
        batch_size: int = 64,
        learning_rate: float = 1e-3,
        max_iter: int = 200,
        pretrain_epochs: int = 0,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        random_state: int | np.random.RandomState | None = None,
        device: str | torch.device = "auto",
        verbose: int = 0,
    ) -> None:
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.input_shape = input_shape
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.activation = activation
        self.decoder = decoder
        self.penalty = penalty
        self.contraction = contraction
        self.higher_order = higher_order
        self.higher_order_sigma = higher_order_sigma
        self.corruption = corruption
        self.corruption_level = corruption_level
        self.loss = loss
        self.jacobian_method = jacobian_method
        self.n_probes = n_probes
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.pretrain_epochs = pretrain_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    @classmethod
    def from_preset(cls, name: str, **params: Any) -> ContractiveAutoencoder:
        """An estimator for a model family, with the library's preset weights.

        Parameters
        ----------
        name : {"ae", "dae", "cae", "cae-h", "rcae"}
            Plain, denoising (Gaussian corruption), contractive, higher-order
            contractive and reconstruction-contractive autoencoder; the weights
            are those of ``contractive.PRESETS[name]``.
        **params
            Any constructor parameter; overrides the preset's.

        Returns
        -------
        ContractiveAutoencoder
        """
        if name not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; expected one of {tuple(PRESETS)}"
            )
        p = PRESETS[name]
        preset: dict[str, Any] = {"penalty": None, "corruption": p.corruption}
        if p.corruption is not None:
            preset["corruption_level"] = p.corruption_level
        if p.higher_order > 0:
            preset.update(
                penalty="higher_order",
                contraction=p.contraction,
                higher_order=p.higher_order,
                higher_order_sigma=p.higher_order_sigma,
            )
        elif p.reconstruction_contraction > 0:
            preset.update(
                penalty="reconstruction", contraction=p.reconstruction_contraction
            )
        elif p.contraction > 0:
            preset.update(penalty="contractive", contraction=p.contraction)
        return cls(**{**preset, **params})

    # ------------------------------------------------------------------ fitting

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: None = None) -> ContractiveAutoencoder:
        """Train the autoencoder on ``X`` for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : ContractiveAutoencoder
        """
        X = validate_data(self, X, dtype=(np.float64, np.float32))
        self._initialize(X)
        X_val = None
        if self.early_stopping:
            X, X_val = train_test_split(
                X, test_size=self.validation_fraction, random_state=self._rng
            )
        x = self._to_tensor(X)
        x_val = None if X_val is None else self._to_tensor(X_val)
        if self.pretrain_epochs > 0 and len(self._layer_sizes()) > 1:
            self._pretrain(x)
        best_state: dict[str, Tensor] | None = None
        for _ in range(self.max_iter):
            self._run_epoch(x)
            if x_val is not None:
                self.validation_scores_.append(self._score_tensor(x_val))
                if self.verbose:
                    print(f"Validation score: {self.validation_scores_[-1]:.8f}")
                if self.validation_scores_[-1] > self.best_validation_score_:
                    best_state = _clone_state(self.module_)
            if self._update_no_improvement_count():
                if self.verbose:
                    what = "Validation score" if x_val is not None else "Training loss"
                    print(
                        f"{what} did not improve more than tol={self.tol} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                break
        else:
            warnings.warn(
                f"Maximum iterations ({self.max_iter}) reached and the optimization "
                "hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: None = None) -> ContractiveAutoencoder:
        """Train for one epoch over ``X``, building the model on the first call.

        The parameters are read at the first call; later calls continue with
        the same model, optimiser state and random stream.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        self : ContractiveAutoencoder
        """
        first = not hasattr(self, "module_")
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=first)
        if first:
            self._initialize(X)
        else:
            self._check_range(X)
        self._run_epoch(self._to_tensor(X))
        return self

    def _build_objective(self) -> Objective:
        """The core ``Objective`` the parameters describe."""
        weights = {
            "contraction": 0.0,
            "higher_order": 0.0,
            "reconstruction_contraction": 0.0,
        }
        if self.penalty == "contractive":
            weights["contraction"] = float(self.contraction)
        elif self.penalty == "higher_order":
            weights["contraction"] = float(self.contraction)
            weights["higher_order"] = float(self.higher_order)
        elif self.penalty == "reconstruction":
            weights["reconstruction_contraction"] = float(self.contraction)
        if self.loss == "log_loss" and not self.decoder.endswith("sigmoid"):
            raise ValueError(
                f"loss='log_loss' needs a decoder ending in a sigmoid ('sigmoid' or "
                f"'tied-sigmoid'), got decoder={self.decoder!r}"
            )
        return Objective(
            loss=_LOSSES[self.loss],
            higher_order_sigma=float(self.higher_order_sigma),
            corruption=self.corruption,
            corruption_level=(
                float(self.corruption_level) if self.corruption is not None else 0.0
            ),
            jacobian_method=self.jacobian_method,
            n_probes=int(self.n_probes),
            **weights,
        )

    def _layer_sizes(self) -> list[int]:
        """The encoder's layer sizes, ``[*hidden_layer_sizes, n_components]``."""
        hidden = self.hidden_layer_sizes
        if hidden is None:
            hidden = []
        elif isinstance(hidden, Integral):
            hidden = [hidden]
        hidden = list(hidden)
        if not all(
            isinstance(h, Integral) and not isinstance(h, bool) and h >= 1
            for h in hidden
        ):
            raise ValueError(
                "hidden_layer_sizes must be a sequence of positive integers, got "
                f"{self.hidden_layer_sizes!r}"
            )
        return [*(int(h) for h in hidden), int(self.n_components)]

    def _check_conv(self, sizes: list[int], n_features: int) -> None:
        """A convolutional encoder is one layer over flat images of input_shape."""
        if len(sizes) > 1:
            raise ValueError(
                "input_shape (a convolutional encoder) takes no hidden_layer_sizes, "
                f"got hidden_layer_sizes={self.hidden_layer_sizes!r}"
            )
        shape = list(self.input_shape)
        if not all(
            isinstance(s, Integral) and not isinstance(s, bool) and s >= 1
            for s in shape
        ):
            raise ValueError(
                "input_shape must be a sequence of positive integers (channels, "
                f"*spatial), got {self.input_shape!r}"
            )
        if int(np.prod(shape)) != n_features:
            raise ValueError(
                f"X has {n_features} features, but input_shape={self.input_shape!r} "
                f"needs {int(np.prod(shape))} (flat images, channels first)"
            )

    def _check_range(self, X: np.ndarray) -> None:
        """The binary cross-entropy is unbounded below for targets outside [0, 1]."""
        if self.objective_.loss == "bce" and (X.min() < 0 or X.max() > 1):
            raise ValueError(
                "loss='log_loss' needs X in [0, 1], got values in "
                f"[{X.min():.4g}, {X.max():.4g}]; scale it first (MinMaxScaler)"
            )

    def _initialize(self, X: np.ndarray) -> None:
        """Build the model, objective and optimiser; reset the learned state."""
        sizes = self._layer_sizes()
        if self.input_shape is not None:
            self._check_conv(sizes, X.shape[1])
        self.objective_ = self._build_objective()
        if self.jacobian_method == "analytic" and len(sizes) > 1:
            raise ValueError(
                "jacobian_method='analytic' needs a one-layer encoder (a closed "
                f"form), got hidden_layer_sizes={self.hidden_layer_sizes!r}; use "
                "'auto', 'exact' or 'stochastic'"
            )
        self._check_range(X)
        self._rng = check_random_state(self.random_state)
        self.device_ = _resolve_device(self.device)
        seed = int(self._rng.randint(_SEED_MAX))
        # Initialise on the CPU from our own seed, then restore the global state.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            if self.input_shape is None:
                module = Autoencoder.dense(
                    X.shape[1],
                    sizes,
                    activation=self.activation,
                    decoder=self.decoder,
                )
            else:
                module = Autoencoder.conv(
                    tuple(int(s) for s in self.input_shape),
                    int(self.n_components),
                    _int_or_ints(self.kernel_size),
                    stride=_int_or_ints(self.stride),
                    padding=(
                        self.padding
                        if isinstance(self.padding, str)
                        else _int_or_ints(self.padding)
                    ),
                    activation=self.activation,
                    decoder=self.decoder,
                )
        self.module_ = module.to(self.device_)
        self.optimizer_ = torch.optim.Adam(
            self.module_.parameters(), lr=float(self.learning_rate)
        )
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_: list[float] = []
        self.pretrain_loss_curves_: list[list[float]] = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _pretrain(self, x: Tensor) -> None:
        """Greedy layer-wise pre-training (stacked CAE) of ``module_`` on ``x``.

        Layer ``k`` is trained as a one-layer autoencoder on the codes of the
        layers below it for ``pretrain_epochs`` epochs (``stacking.pretrain_greedy``,
        its own Adam with ``learning_rate``), under the estimator's objective,
        whose penalty is then the layer's own closed form. Layers above the first
        reconstruct codes through a hidden decoder layer with ``activation``: with
        ``loss="log_loss"`` they keep the cross-entropy only for sigmoid units
        (codes in (0, 1)) and use the squared error otherwise.
        """
        n_layers = len(self.module_.encoder)
        histories = pretrain_greedy(
            self.module_,
            x,
            layer_objectives(self.module_, self.objective_),
            epochs=int(self.pretrain_epochs),
            batch_size=int(self.batch_size),
            lr=float(self.learning_rate),
            seed=int(self._rng.randint(_SEED_MAX - n_layers)),
        )
        self.pretrain_loss_curves_ = [h.series("loss") for h in histories]
        if self.verbose:
            for k, curve in enumerate(self.pretrain_loss_curves_, start=1):
                print(f"Pre-training layer {k}/{n_layers}, loss = {curve[-1]:.8f}")

    def _run_epoch(self, x: Tensor) -> float:
        """One epoch of ``train_epoch`` over ``x``: the only training path.

        Each epoch draws fresh seeds from ``self._rng`` for the batch order (a
        CPU generator, as ``iterate_minibatches`` permutes on the CPU) and for
        the corruptions and CAE+H draws (a generator on ``device_``).
        """
        order_seed, noise_seed = (int(s) for s in self._rng.randint(_SEED_MAX, size=2))
        order = torch.Generator().manual_seed(order_seed)
        noise = torch.Generator(device=self.device_).manual_seed(noise_seed)
        start = time.perf_counter()
        terms = train_epoch(
            self.module_,
            self.objective_,
            iterate_minibatches(x, int(self.batch_size), generator=order),
            self.optimizer_,
            generator=noise,
        )
        self.n_iter_ += 1
        self.t_ += x.shape[0]
        self.loss_curve_.append(terms["loss"])
        if self.verbose:
            elapsed = time.perf_counter() - start
            print(
                f"Iteration {self.n_iter_}, loss = {terms['loss']:.8f}, "
                f"time = {elapsed:.2f}s"
            )
        return terms["loss"]

    def _update_no_improvement_count(self) -> bool:
        """Track the best loss or validation score; True when training should stop.

        Same rule as ``MLPRegressor``: an epoch counts as no improvement unless it
        beats the best so far by ``tol``.
        """
        if self.early_stopping:
            last = self.validation_scores_[-1]
            improved = last >= self.best_validation_score_ + self.tol
            self.best_validation_score_ = max(self.best_validation_score_, last)
        else:
            last = self.loss_curve_[-1]
            improved = last <= self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, last)
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
        return self._no_improvement_count > self.n_iter_no_change

    # --------------------------------------------------------------- inference

    def transform(self, X: Any) -> np.ndarray:
        """Codes ``f(x)``: the hidden-layer activations.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_components)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self._map(self.module_.encode, X)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Reconstructions ``g(h)`` of codes ``h``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)

        Returns
        -------
        ndarray of shape (n_samples, n_features_in_)
        """
        check_is_fitted(self)
        X = check_array(X, dtype=(np.float64, np.float32))
        if X.shape[1] != self._n_features_out:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is "
                f"expecting {self._n_features_out} features (codes) as input."
            )
        return self._map(self.module_.decode, X)

    def score(self, X: Any, y: None = None) -> float:
        """Negative mean reconstruction error (higher is better).

        ``-mean_n sum_i loss(g(f(x_n))_i, x_ni)`` with ``loss`` the estimator's
        reconstruction loss, on the clean input (no corruption) and without the
        penalty, so scores of different ``contraction`` values compare.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        return self._score_tensor(self._to_tensor(X))

    def jacobian_norm(self, X: Any) -> np.ndarray:
        """Frobenius norm of the encoder Jacobian, ``||J_f(x)||_F``, per sample.

        ``J_f(x) = d f(x) / d x`` has shape (code size, n_features); the norm is
        always exact, whatever ``jacobian_method`` training used: in closed form
        for a one-layer dense or conv encoder (about one forward pass), else with
        ``torch.func`` per-sample Jacobians (deep encoders), which costs about
        min(n_features, code size) encoder passes per sample and forms
        (code size x n_features) floats per sample, in bounded chunks. For a
        cheaper estimate on a large deep encoder, use
        ``contractive.jacobian_norm_sq(est.module_.encoder, x,
        method="stochastic", n_probes=...)``. Smaller means a more contractive
        mapping around ``x``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        encoder = self.module_.encoder
        method = "analytic" if as_affine_activation(encoder) is not None else "exact"

        def norm(x: Tensor) -> Tensor:
            return jacobian_norm_sq(encoder, x, method=method).sqrt()

        return self._map(norm, X)

    def _map(self, fn: Callable[[Tensor], Tensor], X: np.ndarray) -> np.ndarray:
        """``fn`` over row chunks of ``X`` in float32 on ``device_``; numpy out in
        X's dtype."""
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], _CHUNK):
                x = self._to_tensor(X[start : start + _CHUNK])
                out.append(fn(x).detach().cpu().numpy())
        return np.concatenate(out).astype(X.dtype, copy=False)

    def _score_tensor(self, x: Tensor) -> float:
        recon = Objective(loss=self.objective_.loss)
        with torch.no_grad():
            terms = evaluate(
                self.module_, recon, iterate_minibatches(x, _CHUNK, shuffle=False)
            )
        return -terms["reconstruction"]

    def _to_tensor(self, X: np.ndarray) -> Tensor:
        # torch.tensor copies: the caller's array (possibly read-only) is untouched.
        return torch.tensor(X, dtype=torch.float32, device=self.device_)

    @property
    def _n_features_out(self) -> int:
        """Code size, read from the fitted model (AttributeError before fit)."""
        if self.module_.architecture["type"] == "conv":
            return int(np.prod(self.module_.encoder.output_shape))
        return int(self.module_.architecture["hidden_sizes"][-1])

    def __sklearn_tags__(self):  # noqa: ANN204 - sklearn.utils.Tags
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # ---------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        """The estimator's state with torch objects replaced by numpy arrays."""
        state = dict(super().__getstate__())
        if "module_" in state:
            module = state.pop("module_")
            state["module_"] = {
                "architecture": module.architecture,
                "state_dict": _to_numpy(module.state_dict()),
            }
            state["optimizer_"] = _to_numpy(state["optimizer_"].state_dict())
            state["device_"] = "cpu"
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild the model and optimiser on the CPU from ``__getstate__``'s
        arrays."""
        state = dict(state)
        if "module_" in state:
            saved = state["module_"]
            with torch.random.fork_rng(devices=[]):  # construction draws weights
                module = Autoencoder.from_architecture(saved["architecture"])
            module.load_state_dict(_to_torch(saved["state_dict"]))
            optimizer = torch.optim.Adam(module.parameters())
            optimizer.load_state_dict(_to_torch(state["optimizer_"]))
            state.update(
                module_=module, optimizer_=optimizer, device_=torch.device("cpu")
            )
        super().__setstate__(state)


def _resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; "auto" is CUDA when available."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto' or a torch device, got {device!r}"
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return resolved


def _int_or_ints(value: Any) -> int | tuple[int, ...]:
    """An int parameter as int, a sequence of ints as a tuple (one per dim)."""
    if isinstance(value, Integral):
        return int(value)
    return tuple(int(v) for v in value)


def _clone_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _to_numpy(obj: Any) -> Any:
    """Tensors -> numpy arrays (on the CPU), recursively through dicts and lists."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu().numpy().copy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


def _to_torch(obj: Any) -> Any:
    """Inverse of ``_to_numpy``."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_torch(v) for v in obj]
    return obj
