"""See what an autoencoder learned: Jacobian spectra, contraction, tangents, probes.

Every function takes any encoder ``f``: a torch module or a callable mapping a
Tensor of shape (n_samples, n_features) to codes of shape (n_samples, n_codes),
e.g. ``model.encoder``, ``model.encode`` or ``nn.Sequential(nn.Linear(64, 32),
nn.Sigmoid())``. Inputs with more than two dimensions, (n_samples, *in_shape), are
accepted too (convolutional encoders); features and codes are then flattened.

The quantities follow Rifai et al., "Contractive Auto-Encoders: Explicit Invariance
During Feature Extraction", ICML 2011 (contraction curves, fig. 2; singular value
spectra of the Jacobian, fig. 3; classification with the codes), and Rifai et al.,
"The Manifold Tangent Classifier", NeurIPS 2011 (tangents = leading right singular
vectors of the Jacobian).

Encoders run in eval mode under ``torch.no_grad()``; the training flags of the
module are restored afterwards and no gradients reach its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from contractive._validation import check_int
from contractive.penalties import batch_jacobian

Encoder = Callable[[Tensor], Tensor]
ArrayLike = np.ndarray | Tensor

#: Upper bound on the Jacobian entries held at once (n_samples * n_codes * n_in).
_MAX_JACOBIAN_ENTRIES = 1 << 23

__all__ = [
    "Tangents",
    "contraction_ratio_curve",
    "default_radii",
    "encode_batched",
    "jacobian_singular_values",
    "linear_probe",
    "linear_probe_accuracy",
    "mean_jacobian_norm",
    "mean_singular_spectrum",
    "spectrum_decay",
    "summarize",
    "tangent_directions",
]


class Tangents(NamedTuple):
    """Leading right singular vectors of the encoder Jacobian and their values.

    Attributes
    ----------
    directions : Tensor of shape (n_samples, k, n_features)
        ``directions[i, j]`` is the unit right singular vector v_j of J_f(x_i).
    singular_values : Tensor of shape (n_samples, k)
        ``singular_values[i, j] = ||J_f(x_i) v_j||``, descending in j.
    """

    directions: Tensor
    singular_values: Tensor


# --------------------------------------------------------------------------------------
# Plumbing: inputs, eval mode, chunked Jacobians
# --------------------------------------------------------------------------------------


def _module_of(encoder: Any) -> nn.Module | None:
    """The module behind ``encoder``: itself, or the owner of a bound method."""
    if isinstance(encoder, nn.Module):
        return encoder
    owner = getattr(encoder, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _dtype_device(encoder: Any) -> tuple[torch.dtype | None, torch.device | None]:
    """Floating dtype and device of the encoder's first parameter or buffer, if any."""
    module = _module_of(encoder)
    if module is None:
        return None, None
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return None, None


def _as_input(x: ArrayLike, encoder: Any, name: str = "x") -> Tensor:
    """``x`` as a floating tensor on the encoder's device, checked.

    Numpy arrays and integer tensors take the encoder's dtype (the default torch
    dtype when the encoder has no parameters); floating tensors keep theirs.
    """
    dtype, device = _dtype_device(encoder)
    if isinstance(x, Tensor):
        tensor = x.detach()
        if not tensor.is_floating_point():
            tensor = tensor.to(dtype or torch.get_default_dtype())
    else:
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
        tensor = torch.as_tensor(array, dtype=dtype or torch.get_default_dtype())
    if tensor.ndim < 2:
        raise ValueError(
            f"{name} must have shape (n_samples, n_features), "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor[0].numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)})")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return tensor if device is None else tensor.to(device)


@contextmanager
def _inference(encoder: Any) -> Iterator[None]:
    """Eval mode and no_grad for the duration; every submodule's flag is restored."""
    module = _module_of(encoder)
    flags = [] if module is None else [(m, m.training) for m in module.modules()]
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for submodule, training in flags:
            submodule.training = training


def _codes(encoder: Encoder, x: Tensor) -> Tensor:
    """Encoder output flattened to shape (n_samples, n_codes)."""
    h = encoder(x)
    if not isinstance(h, Tensor) or h.ndim < 1 or h.shape[0] != x.shape[0]:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(
            f"encoder must map {x.shape[0]} samples to a tensor with "
            f"{x.shape[0]} rows, got {shape}"
        )
    return h.reshape(x.shape[0], -1)


def _jacobian_chunks(encoder: Encoder, x: Tensor) -> Iterator[Tensor]:
    """Exact Jacobians in chunks of samples, each of shape (chunk, n_codes, n_in).

    Must run inside :func:`_inference`.
    """
    n_codes = _codes(encoder, x[:1]).shape[1]
    per_sample = n_codes * x[0].numel()
    chunk = max(1, _MAX_JACOBIAN_ENTRIES // max(1, per_sample))
    for batch in x.split(chunk):
        yield batch_jacobian(encoder, batch)


def _to_numpy(values: ArrayLike | Sequence[float], name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


# --------------------------------------------------------------------------------------
# Jacobian spectra and tangents
# --------------------------------------------------------------------------------------


def jacobian_singular_values(encoder: Encoder, x: ArrayLike) -> Tensor:
    """Singular values of the encoder Jacobian at each sample, descending.

    s_1(x) >= ... >= s_k(x) >= 0 are the singular values of J_f(x) = d f(x) / d x,
    k = min(n_codes, n_features). A contractive encoder has a few large values
    (directions along the data manifold) and a fast-falling tail (Rifai et al.,
    ICML 2011, fig. 3).

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)

    Returns
    -------
    Tensor of shape (n_samples, min(n_codes, n_features))
        Computed under ``no_grad`` from exact Jacobians, in chunks of samples.
    """
    x = _as_input(x, encoder)
    with _inference(encoder):
        return torch.cat(
            [torch.linalg.svdvals(jac) for jac in _jacobian_chunks(encoder, x)]
        )


def mean_singular_spectrum(encoder: Encoder, x: ArrayLike) -> np.ndarray:
    """Average over samples of the sorted Jacobian singular values.

    spectrum_j = (1 / n) sum_i s_j(x_i), the j-th largest singular value of
    J_f(x_i) averaged over the samples.

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)

    Returns
    -------
    ndarray of shape (min(n_codes, n_features),), descending.
    """
    return jacobian_singular_values(encoder, x).mean(dim=0).cpu().numpy()


def spectrum_decay(spectrum: ArrayLike | Sequence[float]) -> dict[str, float]:
    """Scalar summaries of how fast a singular value spectrum falls.

    With s_1 >= s_2 >= ... >= s_k >= 0 the spectrum sorted descending (it is sorted
    here) and s_j = 0 for j > k (a Jacobian has at most k non-zero singular values):

    - ``largest``: s_1.
    - ``effective_rank``: exp(-sum_j p_j log p_j) with p_j = s_j / sum_i s_i and
      0 log 0 = 0 (Roy & Vetterli, 2007). Between 1 (one direction) and k (flat).
    - ``stable_rank``: sum_j s_j^2 / s_1^2 = ||J||_F^2 / ||J||_2^2, between 1 and k.
    - ``n_above_1pct``: the number of j with s_j > 0.01 s_1.
    - ``ratio_10``: s_10 / s_1 (0 when k < 10).

    Parameters
    ----------
    spectrum : array-like of shape (k,)
        Non-negative singular values, e.g. from :func:`mean_singular_spectrum`.

    Returns
    -------
    dict mapping the names above to Python numbers.
    """
    s = _to_numpy(spectrum, "spectrum").astype(np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"spectrum must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"spectrum must be finite and non-negative, got {s}")
    s = np.sort(s)[::-1]
    if s[0] == 0:
        raise ValueError("spectrum is all zeros; its decay is undefined")
    p = s / s.sum()
    nonzero = p[p > 0]
    return {
        "largest": float(s[0]),
        "effective_rank": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "stable_rank": float(np.sum(s**2) / s[0] ** 2),
        "n_above_1pct": int(np.count_nonzero(s > 0.01 * s[0])),
        "ratio_10": float(s[9] / s[0]) if s.size >= 10 else 0.0,
    }


def tangent_directions(encoder: Encoder, x: ArrayLike, k: int) -> Tangents:
    """Leading k right singular vectors of the encoder Jacobian at each sample.

    With J_f(x) = U S V^T, the tangents at x are the first k columns v_1..v_k of V:
    the input directions the code is most sensitive to, read as tangents of the data
    manifold (Rifai et al., "The Manifold Tangent Classifier", NeurIPS 2011). Each
    v_j is unit norm, the v_j are orthonormal and ||J_f(x) v_j|| = s_j. The sign of
    a singular vector is arbitrary; it is fixed here so that the entry of largest
    magnitude is positive.

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)
    k : int
        Number of tangents, 1 <= k <= min(n_codes, n_features).

    Returns
    -------
    Tangents
        ``directions`` of shape (n_samples, k, n_features) and ``singular_values``
        of shape (n_samples, k).
    """
    x = _as_input(x, encoder)
    check_int("k", k)
    directions, values = [], []
    with _inference(encoder):
        n_codes, n_features = _codes(encoder, x[:1]).shape[1], x[0].numel()
        if k > min(n_codes, n_features):
            raise ValueError(
                f"k={k} is larger than the rank bound min(n_codes, n_features) = "
                f"min({n_codes}, {n_features}) = {min(n_codes, n_features)}"
            )
        for jac in _jacobian_chunks(encoder, x):
            _, s, vh = torch.linalg.svd(jac, full_matrices=False)
            directions.append(_fix_sign(vh[:, :k]))
            values.append(s[:, :k])
    return Tangents(torch.cat(directions), torch.cat(values))


def _fix_sign(vectors: Tensor) -> Tensor:
    """Flip each vector (last dim) so that its largest-magnitude entry is positive."""
    peak = vectors.abs().argmax(dim=-1, keepdim=True)
    signs = torch.sign(vectors.gather(-1, peak))
    return vectors * torch.where(signs == 0, torch.ones_like(signs), signs)


def mean_jacobian_norm(encoder: Encoder, x: ArrayLike) -> float:
    """Mean Frobenius norm of the encoder Jacobian, from exact Jacobians.

    (1 / n) sum_i ||J_f(x_i)||_F, not squared: the reference value for reports. The
    trainer's penalty is ||J_f||_F^2 from the library's fast closed forms.

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)

    Returns
    -------
    float
    """
    x = _as_input(x, encoder)
    total = 0.0
    with _inference(encoder):
        for jac in _jacobian_chunks(encoder, x):
            total += torch.linalg.matrix_norm(jac).sum().item()
    return total / x.shape[0]


# --------------------------------------------------------------------------------------
# Contraction curves
# --------------------------------------------------------------------------------------


def default_radii(
    x: ArrayLike, n_radii: int = 10, *, low: float = 1e-3, high: float = 1.0
) -> np.ndarray:
    """Log-spaced radii scaled to the data.

    scale = median_i ||x_i - mean(x)|| (falling back to the median norm, then 1,
    when the data has no spread); the radii run from ``low * scale`` to
    ``high * scale``.

    Parameters
    ----------
    x : array or Tensor of shape (n_samples, n_features)
    n_radii : int
    low, high : float
        Smallest and largest radius relative to the scale, 0 < low <= high.

    Returns
    -------
    ndarray of shape (n_radii,), float64, increasing.
    """
    array = _to_numpy(x, "x").astype(np.float64)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(
            f"x must have shape (n_samples, n_features), got shape {array.shape}"
        )
    check_int("n_radii", n_radii)
    if not 0 < low <= high or not math.isfinite(high):
        raise ValueError(f"need 0 < low <= high < inf, got low={low}, high={high}")
    return _data_scale(array) * np.geomspace(low, high, n_radii)


def _data_scale(x: np.ndarray) -> float:
    """median ||x_i - mean||, else median ||x_i||, else 1."""
    flat = x.reshape(x.shape[0], -1)
    for scale in (
        np.median(np.linalg.norm(flat - flat.mean(axis=0), axis=1)),
        np.median(np.linalg.norm(flat, axis=1)),
    ):
        if scale > 0:
            return float(scale)
    return 1.0


def contraction_ratio_curve(
    encoder: Encoder,
    x: ArrayLike,
    radii: ArrayLike | Sequence[float],
    *,
    n_directions: int = 8,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Mean ratio of code distance to input distance, as a function of the distance.

    ratio(r) = mean over samples x_i and directions u of ||f(x_i + r u) - f(x_i)|| / r,
    u uniform on the unit sphere (a normalised Gaussian), drawn independently per
    sample and shared by all radii. Rifai et al. (ICML 2011, fig. 2) plot the ratio of
    feature-space to input-space distance for pairs of points at input distance r;
    here the second point of each pair is an isotropic perturbation of a test point.
    As r -> 0 the ratio tends to the mean of ||J_f(x) u||; a contractive encoder
    keeps it small, and a saturating one makes it fall with r.

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)
    radii : array-like of shape (n_radii,)
        Positive input-space distances, e.g. :func:`default_radii`.
    n_directions : int
        Random directions per sample.
    generator : torch.Generator, optional
        Source of the directions (the global torch RNG when None); its device may
        differ from ``x``'s.

    Returns
    -------
    ndarray of shape (n_radii,), float64.
    """
    x = _as_input(x, encoder)
    r = _to_numpy(radii, "radii").astype(np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"radii must be a non-empty 1-D array, got shape {r.shape}")
    if not np.isfinite(r).all() or (r <= 0).any():
        raise ValueError(f"radii must be positive and finite, got {r}")
    check_int("n_directions", n_directions)
    totals = np.zeros(r.size)
    with _inference(encoder):
        h = _codes(encoder, x)
        for _ in range(n_directions):
            u = _unit_directions(x, generator)
            for j, radius in enumerate(r.tolist()):
                moved = _codes(encoder, x + radius * u)
                totals[j] += (moved - h).norm(dim=1).sum().item() / radius
    return totals / (n_directions * x.shape[0])


def _unit_directions(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One direction per sample, uniform on the unit sphere, shaped like ``x``."""
    device = generator.device if generator is not None else x.device
    u = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    u = u.to(x.device)
    norms = u.reshape(x.shape[0], -1).norm(dim=1)
    return u / norms.reshape(-1, *([1] * (x.ndim - 1)))


# --------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------


def linear_probe_accuracy(
    codes_train: ArrayLike,
    y_train: ArrayLike,
    codes_test: ArrayLike,
    y_test: ArrayLike,
    *,
    max_iter: int = 1000,
    C: float = 1.0,
) -> float:
    """Test accuracy of a logistic regression on standardised codes.

    ``make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))``
    is fitted on the training codes and scored on the test codes: how linearly
    separable the classes are in code space (Rifai et al., ICML 2011, table 1 uses
    the codes as features of a classifier; this is the cheap linear version).

    Parameters
    ----------
    codes_train : array or Tensor of shape (n_train, n_codes)
    y_train : array or Tensor of shape (n_train,)
    codes_test : array or Tensor of shape (n_test, n_codes)
    y_test : array or Tensor of shape (n_test,)
    max_iter : int
    C : float
        Inverse L2 regularisation strength.

    Returns
    -------
    float in [0, 1].
    """
    train = _to_numpy(codes_train, "codes_train")
    test = _to_numpy(codes_test, "codes_test")
    targets_train = _to_numpy(y_train, "y_train").ravel()
    targets_test = _to_numpy(y_test, "y_test").ravel()
    for name, codes, targets in (
        ("train", train, targets_train),
        ("test", test, targets_test),
    ):
        if codes.ndim < 1 or codes.shape[0] == 0:
            raise ValueError(f"codes_{name} holds no samples (shape {codes.shape})")
        if codes.shape[0] != targets.shape[0]:
            raise ValueError(
                f"codes_{name} has {codes.shape[0]} rows but y_{name} has "
                f"{targets.shape[0]} labels"
            )
    train = train.reshape(train.shape[0], -1)
    test = test.reshape(test.shape[0], -1)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"codes_train has {train.shape[1]} columns, codes_test {test.shape[1]}"
        )
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    probe.fit(train, targets_train)
    return float(probe.score(test, targets_test))


def linear_probe(
    encode: Encoder,
    x: ArrayLike,
    y: ArrayLike,
    *,
    test_fraction: float = 0.2,
    random_state: int = 0,
    batch_size: int = 1024,
    max_iter: int = 1000,
    C: float = 1.0,
) -> float:
    """Encode, split stratified, and report :func:`linear_probe_accuracy`.

    Parameters
    ----------
    encode : module or callable, Tensor (n_samples, n_features) -> codes
        Pass ``model.encode`` or ``model.encoder``, not the autoencoder itself
        (its forward returns reconstructions). Called on tensors (numpy input is
        converted to the encoder's dtype, float32 by default) in batches under
        ``no_grad``; may return a Tensor or an array.
    x : array or Tensor of shape (n_samples, n_features)
    y : array or Tensor of shape (n_samples,)
        Class labels; each class needs at least two samples for the stratified split.
    test_fraction : float
        Fraction of samples held out for testing, in (0, 1).
    random_state : int
        Seed of the split.
    batch_size : int
        Samples encoded at once.
    max_iter, C
        Passed to :func:`linear_probe_accuracy`.

    Returns
    -------
    float, test accuracy in [0, 1].
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    codes = encode_batched(encode, x, batch_size=batch_size)
    labels = _to_numpy(y, "y").ravel()
    if labels.shape[0] != codes.shape[0]:
        raise ValueError(f"x has {codes.shape[0]} samples but y has {labels.shape[0]}")
    train, test, y_train, y_test = train_test_split(
        codes,
        labels,
        test_size=test_fraction,
        random_state=random_state,
        stratify=labels,
    )
    return linear_probe_accuracy(train, y_train, test, y_test, max_iter=max_iter, C=C)


def encode_batched(
    encode: Encoder, x: ArrayLike, *, batch_size: int = 1024
) -> np.ndarray:
    """Codes of ``x`` as a numpy array, encoded in batches in eval mode, no_grad.

    Parameters
    ----------
    encode : module or callable, Tensor (n_samples, n_features) -> codes
    x : array or Tensor of shape (n_samples, n_features)
    batch_size : int

    Returns
    -------
    ndarray of shape (n_samples, n_codes)
    """
    check_int("batch_size", batch_size)
    x = _as_input(x, encode)
    with _inference(encode):
        parts = []
        for batch in x.split(batch_size):
            h = encode(batch)
            if isinstance(h, Tensor):
                h = h.detach().cpu().numpy()
            parts.append(np.asarray(h).reshape(batch.shape[0], -1))
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------
# Everything at once, for `contractive evaluate`
# --------------------------------------------------------------------------------------


def summarize(
    encoder: Encoder,
    x: ArrayLike,
    y: ArrayLike | None = None,
    *,
    relative_radii: Sequence[float] = (0.01, 0.1, 1.0),
    n_directions: int = 4,
    max_samples: int | None = 1000,
    test_fraction: float = 0.2,
    random_state: int = 0,
) -> dict[str, float]:
    """JSON-friendly numbers describing what the encoder learned on ``x``.

    Keys:

    - ``n_samples``: samples used for the Jacobian quantities (at most
      ``max_samples``, a random subset drawn with ``random_state``).
    - ``mean_jacobian_norm``: :func:`mean_jacobian_norm`.
    - ``largest``, ``effective_rank``, ``stable_rank``, ``n_above_1pct``,
      ``ratio_10``: :func:`spectrum_decay` of :func:`mean_singular_spectrum`.
    - ``data_scale``: the radius scale of :func:`default_radii`.
    - ``contraction_ratio_<c>`` for each c in ``relative_radii``: the
      :func:`contraction_ratio_curve` at radius c * data_scale.
    - ``probe_accuracy`` (when ``y`` is given): :func:`linear_probe` on all of ``x``.

    Parameters
    ----------
    encoder : module or callable, Tensor (n_samples, n_features) -> (n_samples, n_codes)
    x : array or Tensor of shape (n_samples, n_features)
    y : array or Tensor of shape (n_samples,), optional
    relative_radii : sequence of float
        Radii of the contraction ratios, relative to the data scale.
    n_directions : int
        Directions per sample for the contraction ratios.
    max_samples : int or None
        Cap on the samples used for Jacobians and contraction (None: all).
    test_fraction : float
        Held-out fraction of the probe.
    random_state : int
        Seeds the subset, the directions (a local ``torch.Generator``) and the probe
        split, so the numbers are reproducible.

    Returns
    -------
    dict[str, float]
    """
    x = _as_input(x, encoder)
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be positive or None, got {max_samples}")
    subset = x
    if max_samples is not None and x.shape[0] > max_samples:
        rng = np.random.default_rng(random_state)
        index = np.sort(rng.choice(x.shape[0], size=max_samples, replace=False))
        subset = x[torch.as_tensor(index, device=x.device)]
    x_numpy = subset.detach().cpu().numpy()
    scale = _data_scale(x_numpy.astype(np.float64))
    relative = [float(c) for c in relative_radii]
    generator = torch.Generator().manual_seed(random_state)
    ratios = contraction_ratio_curve(
        encoder,
        subset,
        np.asarray(relative) * scale,
        n_directions=n_directions,
        generator=generator,
    )
    # One pass of Jacobians serves both: ||J||_F = sqrt(sum_j s_j^2).
    singular_values = jacobian_singular_values(encoder, subset).double()
    summary: dict[str, float] = {
        "n_samples": int(subset.shape[0]),
        "mean_jacobian_norm": singular_values.square().sum(dim=1).sqrt().mean().item(),
        **spectrum_decay(singular_values.mean(dim=0)),
        "data_scale": scale,
    }
    for c, ratio in zip(relative, ratios.tolist(), strict=True):
        summary[f"contraction_ratio_{c:g}"] = float(ratio)
    if y is not None:
        summary["probe_accuracy"] = linear_probe(
            encoder, x, y, test_fraction=test_fraction, random_state=random_state
        )
    return summary
