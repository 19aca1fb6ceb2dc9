from __future__ import annotations

import pytest
import torch
from torch import nn

from contractive import ACTIVATIONS, Autoencoder, DenseLayer, TiedLinear
from contractive.modules import split_sigmoid_output


@pytest.mark.parametrize("decoder", ["linear", "sigmoid", "tied", "tied-sigmoid"])
def test_dense_autoencoder_shapes(decoder):
    model = Autoencoder.dense(10, [6, 3], decoder=decoder, activation="tanh")
    x = torch.randn(4, 10)
    assert model.encode(x).shape == (4, 3)
    assert model.decode(model.encode(x)).shape == (4, 10)
    assert torch.equal(model(x), model.decode(model.encode(x)))
    outputs = model(x)
    if decoder.endswith("sigmoid"):
        assert model.outputs_probabilities
        assert torch.all((outputs > 0) & (outputs < 1))
    else:
        assert not model.outputs_probabilities


def test_tied_decoder_shares_the_encoder_weight():
    model = Autoencoder.dense(5, 3, decoder="tied")
    tied = model.decoder[0][0]
    assert isinstance(tied, TiedLinear)
    assert torch.equal(tied.weight, model.encoder[0].linear.weight.t())
    names = [n for n, _ in model.named_parameters()]
    assert names == ["encoder.0.0.weight", "encoder.0.0.bias", "decoder.0.0.bias"]
    model(torch.randn(2, 5)).pow(2).sum().backward()
    assert model.encoder[0].linear.weight.grad is not None


def test_from_architecture_rebuilds_the_same_shapes():
    model = Autoencoder.dense(7, [5, 2], activation="elu", decoder="tied-sigmoid")
    rebuilt = Autoencoder.from_architecture(model.architecture)
    assert rebuilt.architecture == model.architecture
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(3, 7)
    assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_builds(name):
    layer = DenseLayer(4, 3, name)
    assert layer(torch.randn(2, 4)).shape == (2, 3)


def test_split_sigmoid_output_returns_logits_module():
    model = Autoencoder.dense(4, 3, decoder="sigmoid")
    logits_of, found = split_sigmoid_output(model.decoder)
    h = torch.randn(2, 3)
    assert found
    assert torch.allclose(torch.sigmoid(logits_of(h)), model.decode(h))
    assert split_sigmoid_output(nn.Linear(3, 4))[1] is False


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'swish'"):
        Autoencoder.dense(4, 3, activation="swish")
    with pytest.raises(ValueError, match="'conv'"):
        Autoencoder.dense(4, 3, decoder="conv")
    with pytest.raises(ValueError, match="-2"):
        Autoencoder.dense(4, -2)
    with pytest.raises(ValueError, match="n_features"):
        Autoencoder.dense(0, 3)
    with pytest.raises(ValueError, match="'mystery'"):
        Autoencoder.from_architecture({"type": "mystery"})


def test_slices_of_encoder_and_decoder_are_plain_sequentials():
    model = Autoencoder.dense(10, [6, 3], decoder="tied")
    x = torch.randn(2, 10)
    first = model.encoder[:1]
    assert type(first) is nn.Sequential
    assert torch.equal(first(x), model.encoder[0](x))
    assert torch.equal(model.encoder[1:](first(x)), model.encode(x))
    assert len(model.decoder[:1]) == 1
