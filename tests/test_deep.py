"""Deep, stacked and convolutional contractive autoencoders.

Every penalty is checked in float64 against the exact per-sample Jacobian from
``torch.func`` (``batch_jacobian``); the stochastic estimate by the mean of many
independent single-probe draws, within a few standard errors.
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from contractive import (
    Autoencoder,
    ConvDecoder,
    ConvEncoder,
    Objective,
    batch_jacobian,
    fit,
    jacobian_norm_sq,
    layer_autoencoders,
    pretrain_greedy,
    resolve_method,
)
from contractive.modules import TiedConvTranspose, conv_output_shape

F64 = torch.float64


def exact_norm_sq(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return batch_jacobian(encoder, x).pow(2).sum(dim=(1, 2))


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    x = load_digits().data / 16.0
    return torch.as_tensor(x, dtype=torch.float32)


# --- deep dense: the end-to-end penalty of the whole encoder ------------------------


def test_auto_method_by_shape():
    x = torch.rand(2, 784)
    assert resolve_method(Autoencoder.dense(784, 100).encoder, x) == "analytic"
    deep = Autoencoder.dense(784, [1000, 500]).encoder
    assert resolve_method(deep, x) == "stochastic"
    small = Autoencoder.dense(20, [8, 4]).encoder
    assert resolve_method(small, torch.rand(2, 20)) == "exact"


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "softplus"])
def test_two_layer_stochastic_is_unbiased(activation):
    model = Autoencoder.dense(12, [10, 9], activation=activation, dtype=F64)
    x = torch.randn(3, 12, dtype=F64)
    exact = exact_norm_sq(model.encoder, x)
    assert torch.allclose(
        jacobian_norm_sq(model.encoder, x, method="exact"), exact, rtol=1e-12
    )
    # Each row of the repeated batch gets its own single-probe draw.
    n_draws = 4000
    g = torch.Generator().manual_seed(1)
    draws = jacobian_norm_sq(
        model.encoder, x.repeat(n_draws, 1), method="stochastic", generator=g
    ).reshape(n_draws, 3)
    mean, se = draws.mean(0), draws.std(0) / n_draws**0.5
    assert torch.all((mean - exact).abs() < 4 * se), (mean, exact, se)
    assert torch.all(se > 0)


def test_two_layer_exact_matches_chain_rule():
    model = Autoencoder.dense(7, [5, 4], activation="tanh", dtype=F64)
    x = torch.randn(6, 7, dtype=F64)
    (w1, b1), (w2, b2) = [(layer[0].weight, layer[0].bias) for layer in model.encoder]
    h1 = torch.tanh(x @ w1.T + b1)
    h2 = torch.tanh(h1 @ w2.T + b2)
    s1, s2 = 1 - h1**2, 1 - h2**2
    # J = diag(s2) W2 diag(s1) W1, per sample.
    jac = s2[:, :, None] * (w2[None] * s1[:, None, :]) @ w1
    got = jacobian_norm_sq(model.encoder, x, method="exact")
    assert torch.allclose(got, jac.pow(2).sum(dim=(1, 2)), rtol=1e-12)


def test_deep_objective_gradients_reach_every_layer():
    model = Autoencoder.dense(30, [20, 10], dtype=F64)
    x = torch.rand(8, 30, dtype=F64)
    terms = Objective(contraction=1.0, jacobian_method="stochastic")(
        model, x, torch.Generator().manual_seed(0)
    )
    # Penalty alone: the decoder gets no gradient from it, the encoder does.
    terms["contraction"].backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_stochastic_penalty_gradient_is_unbiased():
    model = Autoencoder.dense(8, [6, 5], activation="tanh", dtype=F64)
    x = torch.randn(2, 8, dtype=F64)
    params = list(model.encoder.parameters())
    exact = torch.autograd.grad(exact_norm_sq(model.encoder, x).sum(), params)
    n_draws = 20000
    g = torch.Generator().manual_seed(2)
    est = jacobian_norm_sq(
        model.encoder, x.repeat(n_draws, 1), method="stochastic", generator=g
    )
    stoch = torch.autograd.grad(est.sum() / n_draws, params)
    flat_exact = torch.cat([t.flatten() for t in exact])
    flat_stoch = torch.cat([t.flatten() for t in stoch])
    rel = (flat_stoch - flat_exact).norm() / flat_exact.norm()
    assert rel < 0.05, rel


def test_deep_objective_exact_matches_reference():
    model = Autoencoder.dense(10, [6, 3], dtype=F64)
    x = torch.rand(5, 10, dtype=F64)
    terms = Objective(contraction=0.5)(model, x)  # auto -> exact here
    assert torch.allclose(
        terms["contraction"], exact_norm_sq(model.encoder, x).mean(), rtol=1e-12
    )


# --- stacked CAE: greedy layer-wise pre-training -------------------------------------


def test_layer_autoencoders_share_modules():
    model = Autoencoder.dense(64, [32, 16, 8], decoder="sigmoid")
    layers = layer_autoencoders(model)
    assert len(layers) == 3
    for k, layer in enumerate(layers):
        assert layer.encoder is model.encoder[k]
        assert layer.decoder is model.decoder[2 - k]
    assert layers[0].outputs_probabilities  # keeps the model's output layer
    assert isinstance(layers[2].decoder[1], nn.Sigmoid)  # a hidden decoder layer
    x = torch.rand(4, 64)
    codes = model.encoder[0](x)
    assert layers[1](codes).shape == codes.shape


def test_layer_autoencoders_rejects_other_shapes():
    model = Autoencoder.dense(10, [5, 3])
    with pytest.raises(ValueError, match="pairs encoder layer"):
        layer_autoencoders(Autoencoder(model.encoder, nn.Sequential(model.decoder[0])))
    with pytest.raises(TypeError, match="nn.Sequential"):
        layer_autoencoders(Autoencoder(nn.Linear(10, 3), nn.Linear(3, 10)))
    conv = Autoencoder.conv((1, 8, 8), 2, 3)  # Sequential, but not of layers
    with pytest.raises(ValueError, match="no parameters"):
        layer_autoencoders(conv)
    with pytest.raises(ValueError, match="one per layer"):
        pretrain_greedy(model, torch.rand(8, 10), [Objective()], epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        pretrain_greedy(model, torch.rand(8, 10), Objective(), epochs=[1, 2, 3])


def _layer_norms(model: Autoencoder, x: torch.Tensor) -> list[float]:
    """Mean closed-form ||J||^2 of each encoder layer on its own input."""
    norms = []
    with torch.no_grad():
        h = x
        for layer in model.encoder:
            assert resolve_method(layer, h) == "analytic"
            norms.append(float(jacobian_norm_sq(layer, h).mean()))
            h = layer(h)
    return norms


@pytest.mark.parametrize("decoder", ["linear", "tied"])
def test_greedy_pretraining_contracts_each_layer(digits, decoder):
    x = digits[:400]
    norms = {}
    for lam in (0.0, 0.5):
        torch.manual_seed(0)
        model = Autoencoder.dense(64, [32, 16], decoder=decoder)
        before = [p.detach().clone() for p in model.parameters()]
        histories = pretrain_greedy(
            model, x, Objective(contraction=lam), epochs=[6, 6], batch_size=50, lr=5e-3
        )
        assert len(histories) == 2 and all(len(h.epochs) == 6 for h in histories)
        # The deep model's own encoder and decoder parameters were trained.
        after = list(model.parameters())
        assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
        norms[lam] = _layer_norms(model, x)
        loss = histories[-1].series("reconstruction")
        assert loss[-1] < loss[0]
    assert all(c < p for c, p in zip(norms[0.5], norms[0.0], strict=True)), norms


def test_greedy_pretraining_of_stacked_conv_layers(digits):
    first = ConvEncoder((1, 8, 8), 4, 3, stride=2, padding=1)  # -> (4, 4, 4)
    second = ConvEncoder(first.output_shape, 6, 3, padding=1, groups=2)
    model = Autoencoder(
        nn.Sequential(first, second),
        nn.Sequential(ConvDecoder(second, "sigmoid"), ConvDecoder(first, "sigmoid")),
    )
    x = digits[:200]
    histories = pretrain_greedy(
        model, x, Objective(loss="bce", contraction=0.1), epochs=2, batch_size=50
    )
    assert [len(h.epochs) for h in histories] == [2, 2]
    assert model(x).shape == x.shape


def test_greedy_then_finetune(digits):
    x, x_val = digits[:400], digits[400:500]
    model = Autoencoder.dense(64, [24, 12])
    objective = Objective(contraction=0.1)
    histories = pretrain_greedy(
        model, x, objective, epochs=2, batch_size=64, x_val=x_val, seed=3
    )
    assert "val_loss" in histories[1].epochs[-1]
    fine = fit(model, objective, x, epochs=2, batch_size=64)  # deep objective
    assert "contraction" in fine.epochs[-1]


# --- convolutional encoder: closed form against the exact Jacobian -------------------

CONV_CASES = [
    # input_shape, channels, kernel, stride, padding, dilation, groups, bias, act
    ((1, 9, 9), 3, 3, 1, 0, 1, 1, True, "sigmoid"),
    ((1, 9, 9), 3, 3, 2, 1, 1, 1, True, "tanh"),
    ((2, 8, 7), 4, (3, 2), (2, 1), (1, 0), 1, 2, False, "softplus"),
    ((2, 8, 8), 4, 3, 1, "same", 2, 1, True, "relu"),
    ((1, 8, 8), 2, 4, 1, "same", 1, 1, True, "sigmoid"),  # even kernel, asymmetric
    ((3, 7, 9), 3, 3, 3, 2, 1, 3, True, "elu"),  # depthwise, stride > kernel - 1
    ((2, 10, 10), 2, 3, 2, 2, 2, 1, True, "gelu"),
    ((1, 6, 6), 2, 2, 1, "valid", 1, 1, True, "silu"),
    ((2, 11), 4, 3, 2, 1, 1, 2, True, "tanh"),  # Conv1d
    ((1, 20), 3, 5, 1, "same", 2, 1, False, "sigmoid"),  # Conv1d
    ((1, 4, 5, 4), 2, 3, (1, 2, 1), 1, 1, 1, True, "sigmoid"),  # Conv3d
    ((2, 5, 4, 4), 2, (2, 3, 1), 2, (1, 0, 0), 1, 2, False, "leaky_relu"),  # Conv3d
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c))
def test_conv_closed_form_matches_exact_jacobian(case):
    shape, channels, k, s, p, d, g, bias, act = case
    encoder = ConvEncoder(
        shape,
        channels,
        k,
        stride=s,
        padding=p,
        dilation=d,
        groups=g,
        bias=bias,
        activation=act,
        dtype=F64,
    )
    n_in = torch.tensor(shape).prod().item()
    x = torch.randn(4, n_in, dtype=F64)
    assert resolve_method(encoder, x) == "analytic"
    analytic = jacobian_norm_sq(encoder, x, method="analytic")
    assert torch.allclose(analytic, exact_norm_sq(encoder, x), rtol=1e-10)
    assert encoder(x).shape == (4, torch.tensor(encoder.output_shape).prod().item())
    # The same layer on image-shaped input, as a plain torch Sequential.
    plain = nn.Sequential(encoder.conv, encoder.activation)
    images = x.reshape(4, *shape)
    assert torch.allclose(
        jacobian_norm_sq(plain, images, method="analytic"), analytic, rtol=1e-10
    )
    # ...and its decoder reconstructs the input's shape, where it can mirror it.
    if p == "same" and k % 2 == 0:
        with pytest.raises(ValueError, match="odd kernel_size"):
            ConvDecoder(encoder)
        return
    model = Autoencoder(encoder, ConvDecoder(encoder, "sigmoid", dtype=F64))
    assert model(x).shape == x.shape


def test_conv_objective_uses_closed_form_and_matches_exact():
    model = Autoencoder.conv((1, 8, 8), 4, 3, stride=2, padding=1, dtype=F64)
    x = torch.rand(5, 64, dtype=F64)
    terms = Objective(contraction=1.0)(model, x)
    assert torch.allclose(
        terms["contraction"], exact_norm_sq(model.encoder, x).mean(), rtol=1e-10
    )
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_conv_closed_form_gradcheck():
    encoder = ConvEncoder((1, 5, 5), 2, 3, stride=2, padding=1, dtype=F64)
    x = torch.randn(2, 25, dtype=F64)
    w = encoder.conv.weight
    # Through the module: compare parameter gradients with the exact Jacobian's.
    g_closed = torch.autograd.grad(jacobian_norm_sq(encoder, x).sum(), w)[0]
    g_exact = torch.autograd.grad(exact_norm_sq(encoder, x).sum(), w)[0]
    assert torch.allclose(g_closed, g_exact, rtol=1e-10)
    assert torch.autograd.gradcheck(
        lambda inp: jacobian_norm_sq(encoder, inp), (x.clone().requires_grad_(),)
    )


def test_multi_layer_conv_falls_back_to_jacobian_methods():
    encoder = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 3, 3, padding=1, dtype=F64),
        nn.Tanh(),
        nn.Conv2d(3, 2, 3, stride=2, dtype=F64),
        nn.Sigmoid(),
        nn.Flatten(),
    )
    x = torch.randn(2, 64, dtype=F64)
    assert resolve_method(encoder, x) == "stochastic"
    exact = exact_norm_sq(encoder, x)
    assert torch.allclose(jacobian_norm_sq(encoder, x, method="exact"), exact)
    n_draws = 3000
    g = torch.Generator().manual_seed(3)
    draws = jacobian_norm_sq(
        encoder, x.repeat(n_draws, 1), method="stochastic", generator=g
    ).reshape(n_draws, 2)
    mean, se = draws.mean(0), draws.std(0) / n_draws**0.5
    assert torch.all((mean - exact).abs() < 4 * se)


def test_reflect_padding_has_no_closed_form():
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect", dtype=F64)
    encoder = nn.Sequential(conv, nn.Sigmoid())
    x = torch.randn(2, 1, 6, 6, dtype=F64)
    assert resolve_method(encoder, x) != "analytic"


# --- convolutional autoencoder: shapes, decoders, architecture -----------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(5, 1, 0, 1), (5, 2, 2, 1), (3, 2, 1, 1), (4, 3, 0, 1), (3, 1, "same", 2),
     (5, 2, 0, 2), (7, 3, 3, 1), ((5, 3), (2, 1), (2, 0), 1)],
)  # fmt: skip
@pytest.mark.parametrize("image", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("decoder", ["linear", "tied-sigmoid"])
def test_conv_autoencoder_reconstructs_input_shape(
    kernel, stride, padding, dilation, image, decoder
):
    shape = conv_output_shape(
        image, 6, kernel, stride=stride, padding=padding, dilation=dilation
    )
    if min(shape[1:]) < 1:
        pytest.skip("kernel larger than the padded image")
    model = Autoencoder.conv(
        image,
        6,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        decoder=decoder,
    )
    x = torch.rand(3, image[1] * image[2])
    h = model.encode(x)
    assert h.shape == (3, torch.tensor(model.encoder.output_shape).prod().item())
    assert model(x).shape == x.shape
    assert model.outputs_probabilities == decoder.endswith("sigmoid")


def test_tied_conv_decoder_is_the_adjoint():
    encoder = ConvEncoder(
        (2, 9, 8), 4, 3, stride=2, padding=1, groups=2, flatten_input=False, dtype=F64
    )
    decoder = ConvDecoder(encoder, "tied", dtype=F64)
    assert isinstance(decoder[1], TiedConvTranspose)
    conv = encoder.conv
    x = torch.randn(3, 2, 9, 8, dtype=F64)
    h = torch.randn(3, *encoder.output_shape, dtype=F64)
    lhs = ((conv(x) - conv.bias[:, None, None]) * h).sum()
    rhs = (x * (decoder[1](h) - decoder[1].bias[:, None, None])).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)
    # The decoder shares the kernel: it is counted once among the parameters.
    model = Autoencoder(encoder, decoder)
    assert sum(p.numel() for p in model.parameters()) == conv.weight.numel() + 4 + 2


def test_conv_architecture_round_trip():
    model = Autoencoder.conv(
        (1, 28, 28), 8, (5, 3), stride=2, padding=(2, 1), decoder="tied-sigmoid"
    )
    arch = json.loads(json.dumps(model.architecture))
    rebuilt = Autoencoder.from_architecture(arch)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 784)
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt.architecture == model.architecture


def test_conv_output_shape_matches_torch():
    for shape, k, s, p, d in [((1, 28, 28), 5, 2, 2, 1), ((3, 9, 13), (3, 2), 3, 1, 2)]:
        conv = nn.Conv2d(shape[0], 5, k, stride=s, padding=p, dilation=d)
        expected = conv(torch.zeros(1, *shape)).shape[1:]
        got = conv_output_shape(shape, 5, k, stride=s, padding=p, dilation=d)
        assert got == tuple(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (28,)}, "spatial"),
        ({"input_shape": (1, 8, 8), "padding": "same", "stride": 2}, "stride 1"),
        ({"input_shape": (3, 8, 8), "groups": 2}, "groups"),
        ({"input_shape": (1, 4, 4), "kernel_size": 7}, "does not fit"),
        ({"input_shape": (1, 8, 8), "padding": "full"}, "padding"),
        ({"input_shape": (1, 8, 8), "kernel_size": (3, 3, 3)}, "kernel_size"),
        ({"input_shape": (1, 8, 8), "channels": 0}, "channels"),
    ],
)
def test_conv_encoder_rejects_bad_arguments(kwargs, match):
    args = {"channels": 2, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        ConvEncoder(args.pop("input_shape"), args.pop("channels"), **args)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv_decoder_rejects_unmirrorable_same_padding():
    encoder = ConvEncoder((1, 8, 8), 2, 4, padding="same")
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvDecoder(encoder)
    with pytest.raises(ValueError, match="unknown decoder"):
        ConvDecoder(ConvEncoder((1, 8, 8), 2, 3), "cubic")


def test_conv_cae_training_contracts(digits):
    x = digits[:500]
    norms = {}
    for lam in (0.0, 0.3):
        torch.manual_seed(0)
        model = Autoencoder.conv(
            (1, 8, 8), 8, 3, stride=1, padding=1, decoder="sigmoid"
        )
        history = fit(
            model,
            Objective(loss="bce", contraction=lam),
            x,
            epochs=4,
            batch_size=50,
            lr=3e-3,
        )
        assert history.series("loss")[-1] < history.series("loss")[0]
        with torch.no_grad():
            norms[lam] = float(jacobian_norm_sq(model.encoder, x).mean())
    assert norms[0.3] < norms[0.0], norms


def test_layer_objectives_keep_bce_only_where_the_decoder_ends_in_a_sigmoid():
    from contractive.stacking import layer_objectives

    bce = Objective(loss="bce", contraction=0.5)
    for activation, losses in (("sigmoid", ["bce", "bce"]), ("relu", ["bce", "mse"])):
        model = Autoencoder.dense(10, [6, 4], activation=activation, decoder="sigmoid")
        objectives = layer_objectives(model, bce)
        assert [o.loss for o in objectives] == losses
        assert all(o.contraction == 0.5 for o in objectives)
