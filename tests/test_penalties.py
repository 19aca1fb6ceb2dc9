"""The penalties against independent computations, in float64.

References: exact Jacobians from ``torch.autograd.functional.jacobian`` (one
sample at a time, a different code path from the library's ``torch.func`` one),
brute-force CAE+H and RCAE terms built on them, and ``gradcheck``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian as autograd_jacobian
from torch.func import functional_call

from contractive import Autoencoder, Objective, TiedLinear, jacobian_norm_sq
from contractive.penalties import (
    ACTIVATION_DERIVATIVES,
    higher_order_penalty,
    reconstruction_jacobian_norm_sq,
    resolve_method,
)

DT = torch.float64

ACTIVATIONS = [
    nn.Sigmoid(),
    nn.Tanh(),
    nn.ReLU(),
    nn.LeakyReLU(0.2),
    nn.Softplus(beta=1.5, threshold=2.0),
    nn.ELU(alpha=0.7),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.Identity(),
]


def act_id(act: nn.Module) -> str:
    return f"{type(act).__name__}-{act.extra_repr()}"


def reference_jacobians(fn, x: torch.Tensor) -> torch.Tensor:
    """(n_samples, n_out, n_in) by autograd, sample by sample."""
    rows = []
    for xi in x:
        jac = autograd_jacobian(
            lambda v: fn(v.unsqueeze(0)).squeeze(0), xi, create_graph=True
        )
        rows.append(jac.reshape(-1, xi.numel()))
    return torch.stack(rows)


def reference_norm_sq(fn, x: torch.Tensor) -> torch.Tensor:
    return reference_jacobians(fn, x).pow(2).sum(dim=(1, 2))


def dense(d: int, h: int, act: nn.Module) -> nn.Sequential:
    layer = nn.Sequential(nn.Linear(d, h), act).to(DT)
    with torch.no_grad():  # spread pre-activations over the interesting range
        layer[0].weight.mul_(2.0)
        layer[0].bias.uniform_(-1.0, 1.0)
    return layer


def test_every_supported_activation_is_tested():
    assert {type(a) for a in ACTIVATIONS} == set(ACTIVATION_DERIVATIVES)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=act_id)
def test_analytic_equals_exact_for_dense_layer(act):
    enc = dense(7, 5, act)
    x = torch.randn(11, 7, dtype=DT)
    analytic = jacobian_norm_sq(enc, x, method="analytic")
    reference = reference_norm_sq(enc, x)
    assert analytic.shape == (11,)
    assert torch.allclose(analytic, reference, rtol=1e-8, atol=1e-12)
    assert torch.allclose(
        jacobian_norm_sq(enc, x, method="exact"), reference, rtol=1e-8
    )


@pytest.mark.parametrize("act", ACTIVATIONS, ids=act_id)
def test_analytic_equals_exact_for_tied_layer(act):
    source = nn.Linear(5, 7).to(DT)  # tied: uses source.weight.T, shape (5, 7)
    enc = nn.Sequential(TiedLinear(source), act)
    with torch.no_grad():
        enc[0].bias.uniform_(-1.0, 1.0)
    x = torch.randn(9, 7, dtype=DT)
    analytic = jacobian_norm_sq(enc, x, method="analytic")
    assert torch.allclose(analytic, reference_norm_sq(enc, x), rtol=1e-8, atol=1e-12)


def test_library_dense_encoder_uses_closed_form():
    model = Autoencoder.dense(6, 4, activation="tanh", dtype=DT)
    x = torch.randn(5, 6, dtype=DT)
    assert resolve_method(model.encoder, x) == "analytic"
    assert torch.allclose(
        jacobian_norm_sq(model.encoder, x),
        reference_norm_sq(model.encoder, x),
        rtol=1e-8,
    )


@pytest.mark.parametrize(
    "conv",
    [
        lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1),
        lambda: nn.Conv2d(
            4, 6, (3, 2), stride=(1, 2), padding=(2, 0), dilation=2, groups=2
        ),
        lambda: nn.Conv2d(1, 2, 3, padding="same", bias=False),
        lambda: nn.Conv1d(2, 4, 5, stride=3, padding=2),
    ],
)
def test_analytic_equals_exact_for_conv(conv):
    layer = conv().to(DT)
    enc = nn.Sequential(layer, nn.Softplus(), nn.Flatten())
    shape = (3, layer.in_channels, 9, 8) if layer.weight.dim() == 4 else (3, 2, 13)
    x = torch.randn(shape, dtype=DT)
    assert resolve_method(enc, x) == "analytic"
    assert torch.allclose(
        jacobian_norm_sq(enc, x, "analytic"), reference_norm_sq(enc, x), rtol=1e-8
    )


def test_flat_input_unflattened_into_conv_is_recognised():
    enc = nn.Sequential(
        nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten()
    ).to(DT)
    x = torch.randn(4, 36, dtype=DT)
    assert torch.allclose(
        jacobian_norm_sq(enc, x, "analytic"), reference_norm_sq(enc, x), rtol=1e-8
    )


def deep_encoder() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid()).to(
        DT
    )


def test_auto_resolution_rules():
    x = torch.randn(3, 6, dtype=DT)
    assert resolve_method(dense(6, 4, nn.ReLU()), x) == "analytic"
    assert resolve_method(deep_encoder(), x) == "exact"  # min(6, 4) <= 16
    wide = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 20), nn.Tanh())
    assert resolve_method(wide, torch.randn(2, 40)) == "stochastic"
    with pytest.raises(ValueError, match="analytic"):
        resolve_method(deep_encoder(), x, "analytic")


def test_exact_method_on_deep_encoder():
    enc, x = deep_encoder(), torch.randn(7, 6, dtype=DT)
    assert torch.allclose(jacobian_norm_sq(enc, x, "exact"), reference_norm_sq(enc, x))


def test_stochastic_estimate_is_unbiased_and_variance_falls_as_one_over_probes():
    enc, x = deep_encoder(), torch.randn(3, 6, dtype=DT)
    exact = reference_norm_sq(enc, x)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        single = torch.stack(
            [jacobian_norm_sq(enc, x, "stochastic", 1, gen) for _ in range(3000)]
        )
        eight = torch.stack(
            [jacobian_norm_sq(enc, x, "stochastic", 8, gen) for _ in range(3000)]
        )
    for draws in (single, eight):
        stderr = draws.std(dim=0) / draws.shape[0] ** 0.5
        assert torch.all((draws.mean(dim=0) - exact).abs() < 4 * stderr)
    ratio = single.var(dim=0) / eight.var(dim=0)
    assert torch.all((ratio > 8 / 1.4) & (ratio < 8 * 1.4)), ratio


def test_stochastic_is_reproducible_with_a_generator():
    enc, x = deep_encoder(), torch.randn(3, 6, dtype=DT)
    a = jacobian_norm_sq(enc, x, "stochastic", 2, torch.Generator().manual_seed(5))
    b = jacobian_norm_sq(enc, x, "stochastic", 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# --- gradients with respect to the weights ---------------------------------------


def linear_with(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An nn.Linear whose weight and bias are the given (differentiable) tensors."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], dtype=DT)
    del lin.weight, lin.bias
    lin.weight, lin.bias = weight, bias
    return lin


def leaf_params(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(
        p.detach().clone().requires_grad_(True) for p in (layer.weight, layer.bias)
    )


X5 = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(3))
X6 = torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("act", ACTIVATIONS, ids=act_id)
def test_gradcheck_analytic_penalty(act):
    def penalty(w, b):
        return jacobian_norm_sq(nn.Sequential(linear_with(w, b), act), X5, "analytic")

    params = leaf_params(dense(5, 3, act)[0])
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_gradcheck_general_methods(method):
    enc = deep_encoder()
    names = [n for n, _ in enc.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in enc.parameters())

    def penalty(*values):
        def f(x):
            return functional_call(enc, dict(zip(names, values, strict=True)), (x,))

        return jacobian_norm_sq(f, X6, method, 2, torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6)


def test_gradcheck_higher_order_closed_form():
    def penalty(w, b):
        enc = nn.Sequential(linear_with(w, b), nn.Tanh())
        gen = torch.Generator().manual_seed(0)
        return higher_order_penalty(enc, X5, sigma=0.3, n_corruptions=2, generator=gen)

    params = leaf_params(dense(5, 3, nn.Tanh())[0])
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_gradcheck_rcae_closed_form(tied):
    decoder_layer = nn.Linear(3, 5).to(DT)

    def penalty(w, b):
        encoder = nn.Sequential(linear_with(w, b), nn.Sigmoid())
        affine = TiedLinear(encoder[0]) if tied else decoder_layer
        model = Autoencoder(encoder, nn.Sequential(affine))
        return reconstruction_jacobian_norm_sq(model, X5, "analytic")

    params = leaf_params(dense(5, 3, nn.Sigmoid())[0])
    assert torch.autograd.gradcheck(penalty, params, eps=1e-6, atol=1e-6)


def test_penalty_gradient_reaches_the_live_weights():
    """The seed's Keras code read a frozen copy of W, so W never felt the penalty.

    Here the gradient of the objective's penalty part must equal the gradient of
    the exact mean ||J||^2 with respect to the live parameters."""
    model = Autoencoder.dense(6, 4, activation="sigmoid", dtype=DT)
    x = torch.randn(8, 6, dtype=DT)
    lam = 0.7

    def grads(objective):
        model.zero_grad()
        objective(model, x)["loss"].backward()
        return [p.grad.clone() for p in model.encoder.parameters()]

    with_penalty = grads(Objective(contraction=lam))
    without = grads(Objective(contraction=0.0))
    model.zero_grad()
    (lam * reference_norm_sq(model.encoder, x).mean()).backward()
    expected = [p.grad for p in model.encoder.parameters()]
    for g1, g0, ref in zip(with_penalty, without, expected, strict=True):
        assert ref.abs().max() > 1e-3
        assert torch.allclose(g1 - g0, ref, rtol=1e-8, atol=1e-12)


def test_frobenius_norm_is_not_the_gradient_of_the_code_sum():
    """grad_x sum_j h_j is J^T 1, not ||J||_F. With mirrored tanh units
    (W' = [W; -W], b' = [b; -b]) the codes cancel, J^T 1 = 0, but ||J||_F^2 is
    twice that of the unmirrored layer."""
    half = dense(5, 3, nn.Tanh())
    mirrored = nn.Sequential(nn.Linear(5, 6), nn.Tanh()).to(DT)
    with torch.no_grad():
        mirrored[0].weight.copy_(torch.cat([half[0].weight, -half[0].weight]))
        mirrored[0].bias.copy_(torch.cat([half[0].bias, -half[0].bias]))
    x = torch.randn(4, 5, dtype=DT, requires_grad=True)
    (jt1,) = torch.autograd.grad(mirrored(x).sum(), x)
    assert jt1.pow(2).sum(dim=1).max() < 1e-20  # the common mistake reads zero
    expected = 2 * reference_norm_sq(half, x.detach())
    for method in ("analytic", "exact"):
        got = jacobian_norm_sq(mirrored, x.detach(), method)
        assert torch.allclose(got, expected, rtol=1e-8)
        assert got.min() > 1e-3  # while the mistaken quantity is below 1e-20


# --- CAE+H and RCAE against brute force -------------------------------------------


def brute_force_higher_order(enc, x, sigma, n, seed):
    eps = torch.randn(
        (n, *x.shape), generator=torch.Generator().manual_seed(seed), dtype=DT
    )
    jac = reference_jacobians(enc, x)
    diffs = [
        (jac - reference_jacobians(enc, x + sigma * eps[k])).pow(2).sum(dim=(1, 2))
        for k in range(n)
    ]
    return torch.stack(diffs).mean(dim=0)


@pytest.mark.parametrize(
    "act", [nn.Sigmoid(), nn.Tanh(), nn.Softplus(), nn.GELU()], ids=act_id
)
def test_higher_order_closed_form_matches_brute_force(act):
    enc, x = dense(5, 4, act), torch.randn(6, 5, dtype=DT)
    expected = brute_force_higher_order(enc, x, 0.3, 3, seed=7)
    for method in ("analytic", "exact"):
        got = higher_order_penalty(
            enc,
            x,
            sigma=0.3,
            n_corruptions=3,
            method=method,
            generator=torch.Generator().manual_seed(7),
        )
        assert torch.allclose(got, expected, rtol=1e-8), method


def test_higher_order_stochastic_is_unbiased():
    """Over both eps and the probes, E[stochastic] = E_eps[exact]."""
    enc, x = deep_encoder(), torch.randn(2, 6, dtype=DT)
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    with torch.no_grad():
        stochastic = torch.stack(
            [
                higher_order_penalty(
                    enc, x, sigma=0.5, method="stochastic", generator=gen_a
                )
                for _ in range(3000)
            ]
        )
    exact = torch.stack(
        [
            higher_order_penalty(enc, x, sigma=0.5, method="exact", generator=gen_b)
            for _ in range(500)
        ]
    ).detach()
    se = (stochastic.var(0) / len(stochastic) + exact.var(0) / len(exact)).sqrt()
    assert torch.all((stochastic.mean(0) - exact.mean(0)).abs() < 4 * se)


@pytest.mark.parametrize("decoder", ["linear", "tied"])
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "softplus", "elu"])
def test_rcae_closed_form_matches_brute_force(decoder, act):
    model = Autoencoder.dense(6, 4, activation=act, decoder=decoder, dtype=DT)
    x = torch.randn(5, 6, dtype=DT)
    expected = reference_norm_sq(model, x)
    got = reconstruction_jacobian_norm_sq(model, x, "analytic")
    assert torch.allclose(got, expected, rtol=1e-8)


def test_rcae_without_closed_form_uses_exact():
    model = Autoencoder.dense(6, 4, decoder="sigmoid", dtype=DT)
    x = torch.randn(5, 6, dtype=DT)
    with pytest.raises(ValueError, match="analytic"):
        reconstruction_jacobian_norm_sq(model, x, "analytic")
    got = reconstruction_jacobian_norm_sq(model, x)
    assert torch.allclose(got, reference_norm_sq(model, x), rtol=1e-8)


# --- errors ------------------------------------------------------------------------


def test_errors_name_the_bad_value():
    enc, x = dense(3, 2, nn.Sigmoid()), torch.randn(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="'fast'"):
        jacobian_norm_sq(enc, x, "fast")
    with pytest.raises(ValueError, match="n_probes.*0"):
        jacobian_norm_sq(enc, x, "stochastic", 0)
    with pytest.raises(TypeError, match="ndarray"):
        jacobian_norm_sq(enc, x.numpy())
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        jacobian_norm_sq(enc, x[:0])
    with pytest.raises(ValueError, match="analytic"):
        jacobian_norm_sq(
            nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1)), x, "analytic"
        )
    with pytest.raises(ValueError, match="sigma"):
        higher_order_penalty(enc, x, sigma=0.0)
    with pytest.raises(TypeError, match="encoder"):
        reconstruction_jacobian_norm_sq(enc, x)
