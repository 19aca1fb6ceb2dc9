"""Tests for contractive.analysis: the math against independent float64 computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from contractive import analysis
from contractive.analysis import (
    Tangents,
    contraction_ratio_curve,
    default_radii,
    encode_batched,
    jacobian_singular_values,
    linear_probe,
    linear_probe_accuracy,
    mean_jacobian_norm,
    mean_singular_spectrum,
    spectrum_decay,
    summarize,
    tangent_directions,
)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sigmoid_layer(n_in: int, n_out: int, dtype: torch.dtype, seed: int = 0):
    torch.manual_seed(seed)
    layer = nn.Linear(n_in, n_out).to(dtype)
    return nn.Sequential(layer, nn.Sigmoid()), layer


def _inputs(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 1):
    return torch.randn(n, d, generator=_generator(seed), dtype=dtype)


def _sigmoid_jacobians(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """J_i = diag(h_i (1 - h_i)) W by hand, shape (n, n_out, n_in)."""
    w = layer.weight.detach()
    h = torch.sigmoid(x @ w.T + layer.bias.detach())
    return (h * (1 - h)).unsqueeze(2) * w.unsqueeze(0)


# -- singular values -------------------------------------------------------------------


@pytest.mark.parametrize(("n_in", "n_out"), [(12, 5), (5, 9)])
def test_singular_values_of_linear_encoder_are_those_of_its_weight(n_in, n_out):
    torch.manual_seed(0)
    encoder = nn.Linear(n_in, n_out).double()
    x = _inputs(7, n_in)
    values = jacobian_singular_values(encoder, x)
    expected = torch.linalg.svdvals(encoder.weight.detach())
    assert values.shape == (7, min(n_in, n_out))
    torch.testing.assert_close(values, expected.expand(7, -1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("n_in", "n_out"), [(10, 4), (4, 10)])
def test_singular_values_of_sigmoid_layer_match_hand_jacobian(n_in, n_out):
    encoder, layer = _sigmoid_layer(n_in, n_out, torch.float64)
    x = _inputs(9, n_in)
    values = jacobian_singular_values(encoder, x)
    expected = torch.linalg.svdvals(_sigmoid_jacobians(layer, x))
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-12)
    assert (values[:, :-1] >= values[:, 1:]).all()
    assert not values.requires_grad


def test_singular_values_float32_agree_with_float64_and_accept_numpy():
    encoder64, _ = _sigmoid_layer(8, 6, torch.float64)
    encoder32, _ = _sigmoid_layer(8, 6, torch.float32)
    x = _inputs(5, 8).numpy()
    values64 = jacobian_singular_values(encoder64, x)
    values32 = jacobian_singular_values(encoder32, x)
    assert values64.dtype == torch.float64 and values32.dtype == torch.float32
    torch.testing.assert_close(values32.double(), values64, rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    encoder, _ = _sigmoid_layer(6, 4, torch.float64)
    x = _inputs(11, 6)
    whole = jacobian_singular_values(encoder, x)
    monkeypatch.setattr(analysis, "_MAX_JACOBIAN_ENTRIES", 2 * 6 * 4 + 1)  # 2 samples
    torch.testing.assert_close(jacobian_singular_values(encoder, x), whole)
    tangents = tangent_directions(encoder, x, 2)
    torch.testing.assert_close(tangents.singular_values, whole[:, :2])


def test_mean_singular_spectrum_is_mean_over_samples():
    encoder, layer = _sigmoid_layer(10, 4, torch.float64)
    x = _inputs(9, 10)
    spectrum = mean_singular_spectrum(encoder, x)
    expected = torch.linalg.svdvals(_sigmoid_jacobians(layer, x)).mean(0).numpy()
    assert isinstance(spectrum, np.ndarray) and spectrum.shape == (4,)
    np.testing.assert_allclose(spectrum, expected, rtol=1e-12)


def test_mean_jacobian_norm_matches_hand_frobenius_norms():
    torch.manual_seed(0)
    linear = nn.Linear(7, 3).double()
    assert mean_jacobian_norm(linear, _inputs(4, 7)) == pytest.approx(
        torch.linalg.matrix_norm(linear.weight.detach()).item(), rel=1e-12
    )
    encoder, layer = _sigmoid_layer(7, 5, torch.float64)
    x = _inputs(6, 7)
    expected = torch.linalg.matrix_norm(_sigmoid_jacobians(layer, x)).mean().item()
    assert mean_jacobian_norm(encoder, x) == pytest.approx(expected, rel=1e-12)


# -- spectrum decay --------------------------------------------------------------------


def test_spectrum_decay_hand_computed_numbers():
    # p = (1/2, 1/4, 1/8, 1/8): entropy = 1.75 ln 2, so effective rank = 2 ** 1.75.
    decay = spectrum_decay(np.array([1.0, 4.0, 1.0, 2.0]))  # unsorted on purpose
    assert decay["largest"] == 4.0
    assert decay["effective_rank"] == pytest.approx(2**1.75, rel=1e-12)
    assert decay["stable_rank"] == pytest.approx((16 + 4 + 1 + 1) / 16, rel=1e-12)
    assert decay["n_above_1pct"] == 4
    assert decay["ratio_10"] == 0.0  # fewer than 10 values: s_10 = 0


def test_spectrum_decay_threshold_and_ratio_10():
    spectrum = [10.0, 5.0, 1.0, 0.2, 0.05, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0]
    decay = spectrum_decay(torch.tensor(spectrum))
    assert decay["n_above_1pct"] == 4  # above 0.1: 10, 5, 1, 0.2
    assert decay["ratio_10"] == pytest.approx(0.0 / 10.0)  # sorted: s_10 = 0
    decay = spectrum_decay(np.geomspace(1.0, 1e-3, 12))
    assert decay["ratio_10"] == pytest.approx(10 ** (-3 * 9 / 11), rel=1e-12)
    assert decay["n_above_1pct"] == 8  # 10^(-3 i / 11) > 10^-2  <=>  i <= 7


def test_spectrum_decay_flat_spectrum_has_full_ranks():
    decay = spectrum_decay(np.full(6, 3.0))
    assert decay["effective_rank"] == pytest.approx(6.0)
    assert decay["stable_rank"] == pytest.approx(6.0)
    assert spectrum_decay([2.0])["effective_rank"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("spectrum", "message"),
    [
        ([], "non-empty"),
        ([[1.0, 0.5]], "1-D"),
        ([1.0, -0.5], "non-negative"),
        ([1.0, float("nan")], "finite"),
        ([0.0, 0.0], "all zeros"),
    ],
)
def test_spectrum_decay_rejects_bad_spectra(spectrum, message):
    with pytest.raises(ValueError, match=message):
        spectrum_decay(spectrum)


# -- tangents --------------------------------------------------------------------------


def test_tangents_are_orthonormal_and_stretched_by_their_singular_values():
    encoder, layer = _sigmoid_layer(10, 6, torch.float64)
    x = _inputs(8, 10)
    tangents = tangent_directions(encoder, x, 3)
    directions, values = tangents  # a NamedTuple unpacks
    assert isinstance(tangents, Tangents)
    assert directions.shape == (8, 3, 10) and values.shape == (8, 3)
    gram = directions @ directions.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64).expand(8, 3, 3))
    jac = _sigmoid_jacobians(layer, x)
    stretched = (jac @ directions.transpose(1, 2)).norm(dim=1)  # ||J v_j||
    torch.testing.assert_close(stretched, values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(values, torch.linalg.svdvals(jac)[:, :3])
    peak = directions.abs().argmax(dim=2, keepdim=True)
    assert (directions.gather(2, peak) > 0).all()  # sign convention


@pytest.mark.parametrize("k", [0, -1, 7, 2.0, True])
def test_tangents_reject_bad_k(k):
    encoder, _ = _sigmoid_layer(10, 6, torch.float64)
    with pytest.raises(ValueError, match="k"):
        tangent_directions(encoder, _inputs(2, 10), k)


def test_tangents_of_image_shaped_conv_encoder():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten())
    x = torch.randn(3, 1, 5, 5, generator=_generator())
    tangents = tangent_directions(encoder, x, 4)
    assert tangents.directions.shape == (3, 4, 25)
    assert jacobian_singular_values(encoder, x).shape == (3, 18)
    curve = contraction_ratio_curve(encoder, x, [0.1, 1.0], generator=_generator())
    assert curve.shape == (2,) and np.isfinite(curve).all()


# -- contraction -----------------------------------------------------------------------


@pytest.mark.parametrize("a", [-2.5, 0.3])
def test_contraction_ratio_of_scaling_is_its_factor_at_every_radius(a):
    x = _inputs(6, 5)
    radii = np.geomspace(1e-4, 1e3, 8)
    curve = contraction_ratio_curve(
        lambda t: a * t, x, radii, n_directions=3, generator=_generator()
    )
    assert curve.dtype == np.float64 and curve.shape == (8,)
    np.testing.assert_allclose(curve, abs(a), rtol=1e-10)


def test_contraction_ratio_of_sigmoid_layer_small_and_large_radii():
    encoder, layer = _sigmoid_layer(8, 5, torch.float64)
    x = _inputs(40, 8)
    curve = contraction_ratio_curve(
        encoder, x, [1e-6, 1e3], n_directions=32, generator=_generator(1)
    )
    # Independent Monte-Carlo estimate of E ||J u||, u uniform on the sphere.
    jac = _sigmoid_jacobians(layer, x)
    u = torch.randn(40, 8, 2000, generator=_generator(2), dtype=torch.float64)
    stretch = (jac @ (u / u.norm(dim=1, keepdim=True))).norm(dim=1)
    expected = stretch.mean().item()
    # Sampling error of the 40 * 32 draws inside the curve dominates.
    tolerance = 4 * stretch.std().item() / math.sqrt(40 * 32)
    assert curve[0] == pytest.approx(expected, abs=tolerance)
    # Far away the sigmoid saturates: ||f(x + r u) - f(x)|| <= sqrt(5), so ratio << 1.
    assert curve[1] < math.sqrt(5) / 1e3 + 1e-12
    assert curve[1] < 0.1 * curve[0]


def test_contraction_ratio_is_reproducible_with_a_generator():
    encoder, _ = _sigmoid_layer(8, 5, torch.float32)
    x = _inputs(10, 8, torch.float32)
    radii = default_radii(x, 5)
    first = contraction_ratio_curve(encoder, x, radii, generator=_generator(3))
    second = contraction_ratio_curve(encoder, x, radii, generator=_generator(3))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("radii", "kwargs", "message"),
    [
        ([0.1, 0.0], {}, "radii"),
        ([-1.0], {}, "radii"),
        ([], {}, "radii"),
        ([float("inf")], {}, "radii"),
        ([0.1], {"n_directions": 0}, "n_directions"),
    ],
)
def test_contraction_ratio_rejects_bad_arguments(radii, kwargs, message):
    with pytest.raises(ValueError, match=message):
        contraction_ratio_curve(lambda t: t, _inputs(3, 4), radii, **kwargs)


def test_default_radii_are_log_spaced_and_scaled_to_the_data():
    x = _inputs(50, 6).numpy() * 7.0
    radii = default_radii(x, 4)
    scale = np.median(np.linalg.norm(x - x.mean(0), axis=1))
    np.testing.assert_allclose(radii, scale * np.array([1e-3, 1e-2, 1e-1, 1.0]))
    np.testing.assert_allclose(default_radii(np.zeros((3, 2)), 2), [1e-3, 1.0])
    np.testing.assert_allclose(default_radii(np.ones((1, 4)), 2), [2e-3, 2.0])
    with pytest.raises(ValueError, match="n_radii"):
        default_radii(x, 0)
    with pytest.raises(ValueError, match="low"):
        default_radii(x, low=0.0)


# -- input handling --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((0, 4)), "empty"),
        (np.zeros(4), "shape"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_inputs_raise_value_errors(x, message):
    encoder = nn.Linear(2, 2)
    for function in (jacobian_singular_values, mean_jacobian_norm):
        with pytest.raises(ValueError, match=message):
            function(encoder, x)


def test_inputs_and_module_state_are_left_untouched():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.Sigmoid())
    encoder.train()
    encoder[2].eval()  # mixed flags must be restored as they were
    x = _inputs(8, 6, torch.float32)
    x_before = x.clone()
    first = jacobian_singular_values(encoder, x)
    second = jacobian_singular_values(encoder, x)
    torch.testing.assert_close(first, second)  # dropout off while analysing
    summarize(encoder, x, n_directions=1)
    assert encoder[0].training and encoder[1].training and not encoder[2].training
    assert all(p.grad is None for p in encoder.parameters())
    torch.testing.assert_close(x, x_before, rtol=0, atol=0)


def test_bound_method_encoder_uses_its_module_dtype():
    class TinyAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(5, 3), nn.Sigmoid())

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return self.encoder(x)

    model = TinyAutoencoder().double()
    values = jacobian_singular_values(model.encode, np.ones((2, 5), dtype=np.float32))
    assert values.dtype == torch.float64


# -- linear probe ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return data.data / 16.0, data.target


def test_linear_probe_on_raw_digits_beats_090(digits):
    x, y = digits
    assert linear_probe(lambda t: t, x, y) > 0.9


def test_linear_probe_on_shuffled_labels_is_near_chance(digits):
    x, y = digits
    shuffled = np.random.default_rng(0).permutation(y)
    assert linear_probe(nn.Identity(), torch.as_tensor(x), shuffled) < 0.3


def test_linear_probe_accuracy_matches_explicit_pipeline(digits):
    x, y = digits
    accuracy = linear_probe_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], C=0.5)
    assert 0.85 < accuracy <= 1.0
    with pytest.raises(ValueError, match="999"):
        linear_probe_accuracy(x[:999], y[:1000], x[1000:], y[1000:])
    with pytest.raises(ValueError, match="columns"):
        linear_probe_accuracy(x[:100], y[:100], x[100:200, :10], y[100:200])
    with pytest.raises(ValueError, match="test_fraction"):
        linear_probe(nn.Identity(), x, y, test_fraction=1.0)


def test_encode_batched_matches_one_batch_and_returns_numpy():
    encoder, _ = _sigmoid_layer(6, 3, torch.float32)
    x = _inputs(10, 6).numpy()
    codes = encode_batched(encoder, x, batch_size=3)
    assert isinstance(codes, np.ndarray) and codes.shape == (10, 3)
    assert codes.dtype == np.float32
    with torch.no_grad():
        expected = encoder(torch.as_tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        encode_batched(encoder, x, batch_size=0)


# -- summary ---------------------------------------------------------------------------


def test_summarize_is_json_friendly_reproducible_and_consistent(digits):
    x, y = digits
    encoder, _ = _sigmoid_layer(64, 16, torch.float32)
    summary = summarize(encoder, x, y, max_samples=200, n_directions=2)
    assert json.loads(json.dumps(summary)) == summary
    assert summary == summarize(encoder, x, y, max_samples=200, n_directions=2)
    expected_keys = {
        "n_samples",
        "mean_jacobian_norm",
        "largest",
        "effective_rank",
        "stable_rank",
        "n_above_1pct",
        "ratio_10",
        "data_scale",
        "contraction_ratio_0.01",
        "contraction_ratio_0.1",
        "contraction_ratio_1",
        "probe_accuracy",
    }
    assert set(summary) == expected_keys
    assert all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in summary.values()
    )
    assert summary["n_samples"] == 200
    assert 0.0 <= summary["probe_accuracy"] <= 1.0
    assert 1.0 <= summary["effective_rank"] <= 16.0
    small = summarize(encoder, x[:50], max_samples=None, n_directions=1)
    assert "probe_accuracy" not in small
    assert small["mean_jacobian_norm"] == pytest.approx(
        mean_jacobian_norm(encoder, x[:50]), rel=1e-6
    )
