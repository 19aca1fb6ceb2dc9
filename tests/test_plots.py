"""Tests for contractive.plots: each figure is written, readable, headless."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.image import imread  # noqa: E402
from torch import nn  # noqa: E402

from contractive.analysis import tangent_directions  # noqa: E402
from contractive.plots import (  # noqa: E402
    plot_contraction_curves,
    plot_filters,
    plot_reconstructions,
    plot_spectra,
    plot_tangents,
    plot_training_curves,
)


def _read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    return image


def _history(n_epochs: int, scale: float) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "loss": scale / epoch,
            "reconstruction": 0.8 * scale / epoch,
            "contraction": 0.2 * scale / epoch,
            "val_loss": 1.1 * scale / epoch,
            "time": "12:00",  # not numeric: ignored
        }
        for epoch in range(1, n_epochs + 1)
    ]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("n_runs", [1, 2])
def test_plot_training_curves(tmp_path, n_runs):
    histories = {f"run{i}": _history(5 + i, 1.0 + i) for i in range(n_runs)}
    path = plot_training_curves(histories, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    image = _read_png(path)
    assert image.shape[1] > image.shape[0]  # three panels side by side


def test_plot_training_curves_without_epoch_or_with_missing_metrics(tmp_path):
    records = [{"loss": 1.0}, {"loss": 0.5, "val_loss": 0.7}, {"val_only": 2.0}]
    _read_png(plot_training_curves({"a": records}, tmp_path / "c.png"))
    with pytest.raises(ValueError, match="numeric metric"):
        plot_training_curves({"a": [{"epoch": 1}]}, tmp_path / "d.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_training_curves({}, tmp_path / "e.png")


def test_plot_filters(tmp_path, rng):
    weight = torch.as_tensor(rng.normal(size=(30, 64)))
    image = _read_png(plot_filters(weight, (8, 8), tmp_path / "f.png"))
    few = _read_png(plot_filters(weight, (8, 8), tmp_path / "g.png", max_filters=4))
    assert image.shape[0] >= few.shape[0]
    plot_filters(np.zeros((1, 6)), (2, 3), tmp_path / "flat.png")  # constant filter
    with pytest.raises(ValueError, match="image_shape"):
        plot_filters(weight, (7, 8), tmp_path / "h.png")
    with pytest.raises(ValueError, match="max_filters"):
        plot_filters(weight, (8, 8), tmp_path / "h.png", max_filters=0)


def test_plot_reconstructions(tmp_path, rng):
    x = rng.random((12, 64))
    x_hat = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
    image = _read_png(plot_reconstructions(x, x_hat, (8, 8), tmp_path / "r.png"))
    assert image.shape[1] > 2 * image.shape[0]  # 2 rows of 10
    _read_png(plot_reconstructions(x[:1], x_hat[:1], (8, 8), tmp_path / "one.png"))
    with pytest.raises(ValueError, match="x_hat"):
        plot_reconstructions(x, x_hat[:5], (8, 8), tmp_path / "s.png")


@pytest.mark.parametrize("n_runs", [1, 2])
def test_plot_spectra(tmp_path, n_runs):
    spectra = {
        f"run{i}": np.geomspace(1.0, 1e-4 * (i + 1), 16 + i) for i in range(n_runs)
    }
    spectra["run0"][-1] = 0.0  # a zero is masked on the log scale, not an error
    _read_png(plot_spectra(spectra, tmp_path / "spectra.png"))
    with pytest.raises(ValueError, match="1-D"):
        plot_spectra({"bad": np.ones((2, 2))}, tmp_path / "bad.png")


@pytest.mark.parametrize("n_runs", [1, 2])
def test_plot_contraction_curves(tmp_path, n_runs):
    radii = np.geomspace(1e-3, 1.0, 8)
    curves = {f"run{i}": (radii, 1.0 / (1.0 + (i + 1) * radii)) for i in range(n_runs)}
    _read_png(plot_contraction_curves(curves, tmp_path / "contraction.png"))
    with pytest.raises(ValueError, match="equal"):
        plot_contraction_curves({"bad": (radii, radii[:3])}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="positive"):
        plot_contraction_curves({"bad": (radii - 1, radii)}, tmp_path / "bad.png")


def test_plot_tangents_from_analysis(tmp_path):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(64, 16), nn.Sigmoid())
    x = torch.rand(3, 64)
    tangents = tangent_directions(encoder, x, 4)
    image = _read_png(plot_tangents(x, tangents, (8, 8), tmp_path / "t.png"))
    assert image.shape[1] > image.shape[0]  # 3 rows of 5
    plain = plot_tangents(
        x.numpy(), tangents.directions.numpy(), (8, 8), tmp_path / "sub" / "t.png"
    )
    _read_png(plain)  # the parent folder is created
    with pytest.raises(ValueError, match="tangents"):
        plot_tangents(x, tangents.directions[:2], (8, 8), tmp_path / "bad.png")


def test_plots_are_headless_and_leave_pyplot_alone(tmp_path):
    backend = matplotlib.get_backend()
    plot_spectra({"a": np.ones(3)}, tmp_path / "a.png")
    assert matplotlib.get_backend() == backend
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_suffix_chooses_the_format(tmp_path):
    path = plot_spectra({"a": np.ones(3)}, tmp_path / "a.svg")
    assert path.read_text().lstrip().startswith("<?xml")
    path = plot_spectra({"a": np.ones(3)}, tmp_path / "no_suffix")
    assert path.read_bytes()[:4] == b"\x89PNG"
