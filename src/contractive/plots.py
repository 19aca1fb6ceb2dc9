"""Figures for runs and analyses, written as image files (PNG unless the suffix says).

matplotlib is imported lazily, inside the functions. Figures are built with
``matplotlib.figure.Figure`` rather than pyplot, so they render with the Agg
backend whatever backend the session uses, need no display, never touch pyplot's
global state (no backend switch, no figure registry) and are freed once saved.

Every function takes plain arrays (numpy, or tensors which are moved to the CPU),
writes one file to ``path`` (creating its parent folder) and returns that path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contractive._validation import check_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PathLike = str | os.PathLike[str]

__all__ = [
    "plot_contraction_curves",
    "plot_filters",
    "plot_reconstructions",
    "plot_spectra",
    "plot_tangents",
    "plot_training_curves",
]


# --------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------


def _figure(n_rows: int, n_cols: int, panel: tuple[float, float]) -> tuple[Figure, Any]:
    """A detached Figure and its (n_rows, n_cols) array of axes."""
    from matplotlib.figure import Figure

    figure = Figure(
        figsize=(panel[0] * n_cols, panel[1] * n_rows), layout="constrained"
    )
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    return figure, axes


def _save(figure: Figure, path: PathLike) -> Path:
    """Write ``figure`` (format from the suffix, PNG without one) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format=path.suffix.lstrip(".").lower() or "png", dpi=100)
    figure.clear()
    return path


def _array(values: Any, name: str) -> np.ndarray:
    """``values`` as a float64 numpy array (tensors are detached and moved to CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array.astype(np.float64)


def _images(values: Any, image_shape: Sequence[int], name: str) -> np.ndarray:
    """Rows of ``values`` reshaped to images: (n, n_features) -> (n, height, width)."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (height, width), got {image_shape!r}")
    array = _array(values, name)
    if array.ndim < 1 or array.shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {array.shape})")
    flat = array.reshape(array.shape[0], -1)
    if flat.shape[1] != shape[0] * shape[1]:
        raise ValueError(
            f"{name} has {flat.shape[1]} features per row, but image_shape "
            f"{shape} holds {shape[0] * shape[1]}"
        )
    return flat.reshape(-1, *shape)


def _check_runs(runs: Mapping[str, Any], name: str) -> None:
    if not isinstance(runs, Mapping) or len(runs) == 0:
        raise ValueError(f"{name} must be a non-empty mapping of label -> data")


def _grid_shape(n_panels: int, max_cols: int) -> tuple[int, int]:
    n_cols = min(max_cols, n_panels)
    return math.ceil(n_panels / n_cols), n_cols


def _image_axes(axes: Axes) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], path: PathLike
) -> Path:
    """Per-epoch metrics, one panel per metric, runs overlaid.

    Every numeric key except ``epoch`` is a metric. A validation metric ``val_m``
    shares the panel of ``m`` (dashed, same colour) when ``m`` is logged too.
    The x axis is ``epoch`` when a record has it, its position (from 1) otherwise;
    records lacking a metric are skipped for that metric.

    Parameters
    ----------
    histories : mapping of str to list of dict
        Run label -> per-epoch records such as ``{"epoch": 3, "loss": 0.5,
        "reconstruction": 0.4, "contraction": 0.1, "val_loss": 0.6}``.
    path : str or PathLike

    Returns
    -------
    Path
    """
    _check_runs(histories, "histories")
    metrics = _metric_names(histories)
    if not metrics:
        raise ValueError("histories hold no numeric metric besides 'epoch'")
    panels = [m for m in metrics if not (m.startswith("val_") and m[4:] in metrics)]
    n_rows, n_cols = _grid_shape(len(panels), 3)
    figure, axes = _figure(n_rows, n_cols, (4.0, 3.0))
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for ax, metric in zip(axes.flat, panels, strict=False):
        for colour, (label, records) in zip(colours, histories.items(), strict=True):
            for key, style, tag in (
                (metric, "-", label),
                (f"val_{metric}", "--", f"{label} (val)"),
            ):
                epochs, values = _series(records, key)
                if values:
                    ax.plot(epochs, values, style, color=colour, label=tag)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    return _save(figure, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _metric_names(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Numeric keys other than 'epoch', in first-seen order."""
    names: dict[str, None] = {}
    for records in histories.values():
        for record in records:
            for key, value in record.items():
                if key != "epoch" and _is_number(value):
                    names.setdefault(key, None)
    return list(names)


def _series(
    records: Sequence[Mapping[str, Any]], key: str
) -> tuple[list[float], list[float]]:
    epochs, values = [], []
    for position, record in enumerate(records, start=1):
        value = record.get(key)
        if _is_number(value):
            epoch = record.get("epoch", position)
            epochs.append(float(epoch if _is_number(epoch) else position))
            values.append(float(value))
    return epochs, values


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def plot_filters(
    weight: Any,
    image_shape: Sequence[int],
    path: PathLike,
    *,
    max_filters: int = 100,
) -> Path:
    """Encoder filters (rows of the weight matrix) as a grid of images.

    Each filter is scaled to its own range, grey scale; at most ``max_filters``
    (the first ones) are shown, in a near-square grid separated by a 1-pixel gap.

    Parameters
    ----------
    weight : array or Tensor of shape (n_units, n_features)
        E.g. ``model.encoder[0].weight``; n_features = height * width.
    image_shape : (height, width)
    path : str or PathLike
    max_filters : int

    Returns
    -------
    Path
    """
    check_int("max_filters", max_filters)
    filters = _images(weight, image_shape, "weight")[:max_filters]
    low = filters.min(axis=(1, 2), keepdims=True)
    span = filters.max(axis=(1, 2), keepdims=True) - low
    scaled = (filters - low) / np.where(span > 0, span, 1.0)
    n_cols = math.ceil(math.sqrt(len(scaled)))
    tiles = _tile(scaled, n_cols)
    height, width = tiles.shape
    figure, axes = _figure(1, 1, (max(2.0, width / 12), max(2.0, height / 12)))
    axes[0, 0].imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0, 0].set_title(f"{len(scaled)} of {len(_array(weight, 'weight'))} filters")
    _image_axes(axes[0, 0])
    return _save(figure, path)


def _tile(images: np.ndarray, n_cols: int, gap: int = 1) -> np.ndarray:
    """(n, h, w) images in ``n_cols`` columns, gaps filled with NaN (shown blank)."""
    n, h, w = images.shape
    n_rows = math.ceil(n / n_cols)
    tiles = np.full((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap), np.nan)
    for index, image in enumerate(images):
        row, col = divmod(index, n_cols)
        top, left = row * (h + gap), col * (w + gap)
        tiles[top : top + h, left : left + w] = image
    return tiles


def plot_reconstructions(
    x: Any,
    x_hat: Any,
    image_shape: Sequence[int],
    path: PathLike,
    *,
    n: int = 10,
) -> Path:
    """The first ``n`` inputs (top row) above their reconstructions (bottom row).

    Both rows share one grey scale (the joint range), so intensities compare.

    Parameters
    ----------
    x : array or Tensor of shape (n_samples, n_features)
    x_hat : array or Tensor of shape (n_samples, n_features)
    image_shape : (height, width)
    path : str or PathLike
    n : int
        Number of pairs shown (at most n_samples).

    Returns
    -------
    Path
    """
    check_int("n", n)
    inputs = _images(x, image_shape, "x")
    outputs = _images(x_hat, image_shape, "x_hat")
    if inputs.shape != outputs.shape:
        raise ValueError(
            f"x and x_hat differ in shape: {inputs.shape[0]} vs {outputs.shape[0]} "
            "images"
        )
    inputs, outputs = inputs[:n], outputs[:n]
    low = min(inputs.min(), outputs.min())
    high = max(inputs.max(), outputs.max())
    figure, axes = _figure(2, len(inputs), (1.2, 1.3))
    for row, (images, title) in enumerate(((inputs, "input"), (outputs, "recon."))):
        for ax, image in zip(axes[row], images, strict=True):
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            _image_axes(ax)
        axes[row, 0].set_ylabel(title)
    return _save(figure, path)


def plot_tangents(
    x: Any,
    tangents: Any,
    image_shape: Sequence[int],
    path: PathLike,
    *,
    singular_values: Any = None,
) -> Path:
    """Each row: a sample followed by its k tangent images.

    Tangents are signed, so they use a diverging colour map symmetric about zero
    (each tangent scaled to its own largest magnitude).

    Parameters
    ----------
    x : array or Tensor of shape (n_samples, n_features)
    tangents : array or Tensor of shape (n_samples, k, n_features), or the
        ``Tangents`` returned by ``contractive.analysis.tangent_directions`` (whose
        singular values then title the panels).
    image_shape : (height, width)
    path : str or PathLike
    singular_values : array or Tensor of shape (n_samples, k), optional
        Shown as panel titles.

    Returns
    -------
    Path
    """
    if hasattr(tangents, "directions") and hasattr(tangents, "singular_values"):
        if singular_values is None:
            singular_values = tangents.singular_values
        tangents = tangents.directions
    samples = _images(x, image_shape, "x")
    directions = _array(tangents, "tangents")
    if directions.ndim != 3 or directions.shape[0] != samples.shape[0]:
        raise ValueError(
            f"tangents must have shape (n_samples={samples.shape[0]}, k, n_features), "
            f"got {directions.shape}"
        )
    n, k = directions.shape[:2]
    if k == 0:
        raise ValueError("tangents hold no directions (k = 0)")
    images = _images(directions.reshape(n * k, -1), image_shape, "tangents")
    images = images.reshape(n, k, *images.shape[1:])
    values = None if singular_values is None else _array(singular_values, "s")
    if values is not None and values.shape != (n, k):
        raise ValueError(
            f"singular_values must have shape {(n, k)}, got {values.shape}"
        )
    figure, axes = _figure(n, k + 1, (1.2, 1.3))
    for i in range(n):
        axes[i, 0].imshow(samples[i], cmap="gray", interpolation="nearest")
        _image_axes(axes[i, 0])
        for j in range(k):
            ax, image = axes[i, j + 1], images[i, j]
            bound = float(np.abs(image).max()) or 1.0
            ax.imshow(image, cmap="RdBu_r", vmin=-bound, vmax=bound)
            _image_axes(ax)
            if values is not None:
                ax.set_title(f"s={values[i, j]:.3g}", fontsize="small")
    axes[0, 0].set_title("sample", fontsize="small")
    return _save(figure, path)


# --------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------


def plot_spectra(spectra: Mapping[str, Any], path: PathLike) -> Path:
    """Mean Jacobian singular value spectra, log scale, runs overlaid.

    Parameters
    ----------
    spectra : mapping of str to array of shape (k,)
        Run label -> descending spectrum, e.g. from
        ``contractive.analysis.mean_singular_spectrum``. Lengths may differ.
    path : str or PathLike

    Returns
    -------
    Path
    """
    _check_runs(spectra, "spectra")
    figure, axes = _figure(1, 1, (5.0, 3.5))
    ax = axes[0, 0]
    for label, spectrum in spectra.items():
        values = _array(spectrum, f"spectra[{label!r}]")
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                f"spectra[{label!r}] must be a non-empty 1-D array, "
                f"got shape {values.shape}"
            )
        ax.plot(np.arange(1, values.size + 1), values, marker=".", label=label)
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("index j")
    ax.set_ylabel("mean singular value s_j of J_f(x)")
    ax.legend(fontsize="small")
    return _save(figure, path)


def plot_contraction_curves(
    curves: Mapping[str, tuple[Any, Any]], path: PathLike
) -> Path:
    """Contraction ratio against radius (log x), runs overlaid.

    Parameters
    ----------
    curves : mapping of str to (radii, ratios)
        Run label -> two arrays of shape (n_radii,), e.g. ``(radii,
        contractive.analysis.contraction_ratio_curve(encoder, x, radii))``.
    path : str or PathLike

    Returns
    -------
    Path
    """
    _check_runs(curves, "curves")
    figure, axes = _figure(1, 1, (5.0, 3.5))
    ax = axes[0, 0]
    for label, pair in curves.items():
        if len(pair) != 2:
            raise ValueError(f"curves[{label!r}] must be a (radii, ratios) pair")
        radii = _array(pair[0], f"radii of {label!r}")
        ratios = _array(pair[1], f"ratios of {label!r}")
        if radii.ndim != 1 or radii.shape != ratios.shape or radii.size == 0:
            raise ValueError(
                f"curves[{label!r}]: radii and ratios must be 1-D of equal, non-zero "
                f"length, got shapes {radii.shape} and {ratios.shape}"
            )
        if (radii <= 0).any():
            raise ValueError(f"curves[{label!r}]: radii must be positive, got {radii}")
        ax.plot(radii, ratios, marker=".", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("input distance r")
    ax.set_ylabel("mean ||f(x + r u) - f(x)|| / r")
    ax.legend(fontsize="small")
    return _save(figure, path)
