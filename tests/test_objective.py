from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from contractive import Autoencoder, Objective, fit, jacobian_norm_sq
from contractive.objective import PRESETS

DT = torch.float64


def manual_terms(model, x, lam):
    recon = (model(x) - x).pow(2).sum(dim=1)  # summed over features
    jac = jacobian_norm_sq(model.encoder, x, "exact")
    return (recon + lam * jac).mean(), recon.mean(), jac.mean()


def test_reduction_is_sum_over_features_mean_over_batch():
    model = Autoencoder.dense(6, 4, dtype=DT)
    x = torch.rand(5, 6, dtype=DT)
    terms = Objective(contraction=0.3)(model, x)
    loss, recon, jac = manual_terms(model, x, 0.3)
    assert set(terms) == {"loss", "reconstruction", "contraction"}
    assert torch.allclose(terms["loss"], loss, rtol=1e-10)
    assert torch.allclose(terms["reconstruction"], recon, rtol=1e-10)
    assert torch.allclose(terms["contraction"], jac, rtol=1e-10)


def test_analytic_and_exact_paths_agree():
    model = Autoencoder.dense(6, 4, activation="softplus", decoder="tied", dtype=DT)
    x = torch.rand(5, 6, dtype=DT)
    kw = dict(contraction=0.2, reconstruction_contraction=0.5, higher_order=0.1)
    gen = torch.Generator().manual_seed(0)
    auto = Objective(**kw)(model, x, gen)
    gen = torch.Generator().manual_seed(0)
    exact = Objective(jacobian_method="exact", **kw)(model, x, gen)
    for name in auto:
        assert torch.allclose(auto[name], exact[name], rtol=1e-9), name


def test_bce_is_computed_from_logits():
    model = Autoencoder.dense(6, 4, decoder="sigmoid", dtype=DT)
    x = torch.rand(5, 6, dtype=DT)
    terms = Objective(loss="bce")(model, x)
    expected = F.binary_cross_entropy(model(x), x, reduction="none").sum(1).mean()
    assert torch.allclose(terms["reconstruction"], expected, rtol=1e-10)
    with pytest.raises(ValueError, match="sigmoid"):
        Objective(loss="bce")(Autoencoder.dense(6, 4, decoder="linear"), x.float())


def test_corruption_hits_the_input_not_the_target():
    model = Autoencoder.dense(6, 4, dtype=DT)
    x = torch.rand(5, 6, dtype=DT)
    objective = Objective(corruption="masking", corruption_level=0.5)
    gen = torch.Generator().manual_seed(1)
    terms = objective(model, x, gen)
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) >= 0.5
    x_tilde = x * keep
    expected = (model(x_tilde) - x).pow(2).sum(1).mean()
    assert torch.allclose(terms["reconstruction"], expected, rtol=1e-10)
    assert not torch.allclose(terms["reconstruction"], Objective()(model, x)["loss"])


def test_presets_and_validation():
    assert set(PRESETS) == {"ae", "dae", "cae", "cae-h", "rcae"}
    assert Objective.preset("cae", contraction=0.5).contraction == 0.5
    assert Objective.preset("dae").corruption == "gaussian"
    for bad, match in [
        (dict(loss="l1"), "'l1'"),
        (dict(contraction=-1.0), "contraction.*-1.0"),
        (dict(n_probes=0), "n_probes"),
        (dict(corruption="blur", corruption_level=0.1), "'blur'"),
        (dict(corruption="masking", corruption_level=1.5), "1.5"),
        (dict(corruption="gaussian"), "corruption_level"),
        (dict(jacobian_method="fd"), "'fd'"),
    ]:
        with pytest.raises(ValueError, match=match):
            Objective(**bad)
    with pytest.raises(ValueError, match="'vae'"):
        Objective.preset("vae")


def test_contraction_on_digits_shrinks_the_jacobian():
    """Training with lambda > 0 gives a clearly smaller mean ||J_f||_F^2."""
    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    norms = {}
    for lam in (0.0, 0.1):
        torch.manual_seed(0)
        model = Autoencoder.dense(64, 32)
        fit(model, Objective(contraction=lam), x, epochs=20, batch_size=64, lr=3e-3)
        norms[lam] = jacobian_norm_sq(model.encoder, x).mean().item()
    assert norms[0.1] < 0.5 * norms[0.0], norms
