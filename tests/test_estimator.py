"""Tests of the scikit-learn front end, ``contractive.ContractiveAutoencoder``."""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from contractive import (
    PRESETS,
    ContractiveAutoencoder,
    Objective,
    jacobian_norm_sq,
    layer_autoencoders,
)

# Small, fast configurations for scikit-learn's own checks: the default CAE, each
# other family, a tied decoder with masking noise, and early stopping.
_FAST = {"n_components": 8, "max_iter": 5, "batch_size": 16}
CHECKED = [
    ContractiveAutoencoder(**_FAST),
    ContractiveAutoencoder.from_preset("dae", **_FAST),
    ContractiveAutoencoder.from_preset("cae-h", **_FAST),
    ContractiveAutoencoder.from_preset("rcae", **_FAST),
    ContractiveAutoencoder(decoder="tied", corruption="masking", **_FAST),
    ContractiveAutoencoder(early_stopping=True, n_iter_no_change=2, **_FAST),
    # Deep: the whole-encoder penalty (exact, as min(n_features, 8) <= 16), and
    # greedy pre-training with the stochastic end-to-end estimate.
    ContractiveAutoencoder(hidden_layer_sizes=(8,), **_FAST),
    ContractiveAutoencoder(
        hidden_layer_sizes=(8,),
        pretrain_epochs=1,
        jacobian_method="stochastic",
        n_probes=2,
        **_FAST,
    ),
]
# Not checked: loss="log_loss", which rejects X outside [0, 1] by design while the
# checks draw X from wider ranges (scikit-learn has no tag for bounded input);
# it is tested on scaled digits below. Nor input_shape (conv), which by design
# accepts only prod(input_shape) features while the checks vary n_features.


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: one thread is faster, and robust on a shared box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1]: X_train, X_test, y_train, y_test (1,347 / 450)."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16.0, y, test_size=450, stratify=y, random_state=0
    )
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def small(digits: tuple[np.ndarray, ...]) -> np.ndarray:
    """300 digits in [0, 1], float64."""
    return digits[0][:300]


def _fit(X: np.ndarray, **params: object) -> ContractiveAutoencoder:
    defaults = {"n_components": 16, "max_iter": 5, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ContractiveAutoencoder(**{**defaults, **params}).fit(X)


@parametrize_with_checks(CHECKED)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_compatible(estimator, check) -> None:
    check(estimator)


def test_pipeline_on_digits(digits) -> None:
    X_train, X_test, y_train, y_test = digits
    pipe = make_pipeline(
        MinMaxScaler(),
        ContractiveAutoencoder(n_components=64, max_iter=30, random_state=0),
        LogisticRegression(max_iter=1000),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X_train, y_train)
    assert pipe.score(X_test, y_test) > 0.9


def test_pipeline_with_standard_scaler(small, digits) -> None:
    y = digits[2][: small.shape[0]]
    pipe = make_pipeline(
        StandardScaler(),
        ContractiveAutoencoder(n_components=16, max_iter=5, random_state=0),
        LogisticRegression(max_iter=500),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(small, y)
    assert pipe.predict(small).shape == y.shape


def test_grid_search_over_contraction_and_n_components(small, digits) -> None:
    y = digits[2][: small.shape[0]]
    pipe = make_pipeline(
        ContractiveAutoencoder(max_iter=3, random_state=0),
        LogisticRegression(max_iter=300),
    )
    grid = {
        "contractiveautoencoder__contraction": [0.0, 0.1],
        "contractiveautoencoder__n_components": [8, 16],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(pipe, grid, cv=2).fit(small, y)
        # Unsupervised: the estimator's own score (negative reconstruction error).
        alone = GridSearchCV(
            ContractiveAutoencoder(max_iter=3, random_state=0),
            {"n_components": [4, 16]},
            cv=2,
        ).fit(small)
    assert set(search.best_params_) == set(grid)
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert alone.best_params_ == {"n_components": 16}  # more units, less error


def test_clone_is_unfitted_with_equal_params(small) -> None:
    est = _fit(small, contraction=0.3)
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    assert not hasattr(copy, "module_")
    with pytest.raises(NotFittedError):
        copy.transform(small)


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_pickle_round_trip(small, tmp_path, dump) -> None:
    est = _fit(small, corruption="gaussian")
    if dump == "pickle":
        restored = pickle.loads(pickle.dumps(est))
    else:
        joblib.dump(est, tmp_path / "cae.joblib")
        restored = joblib.load(tmp_path / "cae.joblib")
    assert restored.device_ == torch.device("cpu")
    np.testing.assert_array_equal(restored.transform(small), est.transform(small))
    np.testing.assert_array_equal(
        restored.jacobian_norm(small), est.jacobian_norm(small)
    )
    codes = est.transform(small[:5])
    np.testing.assert_array_equal(
        restored.inverse_transform(codes), est.inverse_transform(codes)
    )
    assert restored.score(small) == est.score(small)
    assert restored.loss_curve_ == est.loss_curve_
    # The optimiser state and the random stream travel too: training continues
    # exactly as it would have.
    est.partial_fit(small)
    restored.partial_fit(small)
    np.testing.assert_array_equal(restored.transform(small), est.transform(small))


def test_pickle_holds_no_torch_objects(small) -> None:
    state = _fit(small).__getstate__()
    assert isinstance(state["module_"]["state_dict"]["encoder.0.0.weight"], np.ndarray)

    def walk(obj: object) -> None:
        assert not isinstance(obj, (torch.Tensor, torch.nn.Module))
        if isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk({k: v for k, v in state.items() if k != "objective_"})


def test_random_state_reproducible_and_global_state_untouched(small) -> None:
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002
    a = _fit(small, corruption="masking", random_state=3)
    b = _fit(small, corruption="masking", random_state=3)
    c = _fit(small, corruption="masking", random_state=4)
    np.testing.assert_array_equal(a.transform(small), b.transform(small))
    assert not np.allclose(a.transform(small), c.transform(small))
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002


def test_fit_equals_repeated_partial_fit(small) -> None:
    """fit and partial_fit run the same epoch function on the same random stream."""
    fitted = _fit(small, max_iter=3, tol=0.0)
    stepped = ContractiveAutoencoder(n_components=16, random_state=0)
    for _ in range(3):
        stepped.partial_fit(small)
    assert stepped.n_iter_ == fitted.n_iter_ == 3
    assert stepped.loss_curve_ == fitted.loss_curve_
    np.testing.assert_array_equal(stepped.transform(small), fitted.transform(small))


def test_partial_fit_reduces_the_loss(small) -> None:
    est = ContractiveAutoencoder(n_components=16, random_state=0)
    for _ in range(8):
        est.partial_fit(small)
    assert est.n_iter_ == 8
    assert est.t_ == 8 * small.shape[0]
    assert est.loss_curve_[-1] < 0.8 * est.loss_curve_[0]


def test_input_not_modified(small) -> None:
    X = small.copy()
    est = _fit(X, corruption="masking")
    est.partial_fit(X)
    est.transform(X)
    est.score(X)
    est.jacobian_norm(X)
    codes = est.transform(X)
    codes_copy = codes.copy()
    est.inverse_transform(codes)
    np.testing.assert_array_equal(X, small)
    np.testing.assert_array_equal(codes, codes_copy)


def test_float32_and_float64_agree_and_keep_their_dtype(small) -> None:
    est64 = _fit(small)
    est32 = _fit(small.astype(np.float32))
    codes64, codes32 = est64.transform(small), est32.transform(small.astype(np.float32))
    assert codes64.dtype == np.float64 and codes32.dtype == np.float32
    np.testing.assert_allclose(codes32, codes64, atol=1e-5)
    assert est64.inverse_transform(codes64).dtype == np.float64
    assert est32.jacobian_norm(small.astype(np.float32)).dtype == np.float32


def test_transform_and_inverse_transform_shapes(small) -> None:
    est = _fit(small, n_components=7)
    codes = est.transform(small)
    assert codes.shape == (small.shape[0], 7)
    assert np.all((codes > 0) & (codes < 1))  # sigmoid units
    assert est.inverse_transform(codes).shape == small.shape
    with pytest.raises(ValueError, match="expecting 7 features"):
        est.inverse_transform(small)


def test_score_is_negative_mean_summed_squared_error(small) -> None:
    est = _fit(small)
    x_hat = est.inverse_transform(est.transform(small))
    expected = -np.mean(np.sum((x_hat - small) ** 2, axis=1))
    assert est.score(small) == pytest.approx(expected, rel=1e-5)
    better = _fit(small, max_iter=40)
    assert better.score(small) > est.score(small)


def test_jacobian_norm_matches_torch_func(small) -> None:
    est = _fit(small, activation="tanh")
    x = torch.tensor(small[:20], dtype=torch.float64)
    encoder = est.module_.encoder.double()
    jac = torch.func.vmap(torch.func.jacrev(encoder))(x)  # (20, H, D)
    expected = jac.pow(2).sum(dim=(1, 2)).sqrt().detach().numpy()
    est.module_.float()
    np.testing.assert_allclose(est.jacobian_norm(small[:20]), expected, rtol=1e-5)


def test_contraction_shrinks_the_jacobian(digits) -> None:
    X = digits[0]
    plain = _fit(X, n_components=32, max_iter=15, contraction=0.0)
    contracted = _fit(X, n_components=32, max_iter=15, contraction=0.5)
    assert contracted.jacobian_norm(X).mean() < 0.7 * plain.jacobian_norm(X).mean()


def test_set_output_pandas(small) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(small[:, :10], columns=[f"pixel{i}" for i in range(10)])
    est = ContractiveAutoencoder(n_components=4, max_iter=2, random_state=0)
    est.set_output(transform="pandas")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = est.fit_transform(frame)
    names = [f"contractiveautoencoder{i}" for i in range(4)]
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == names
    assert list(est.get_feature_names_out()) == names
    assert list(est.feature_names_in_) == list(frame.columns)
    assert est.n_features_in_ == 10
    assert isinstance(est.transform(frame), pd.DataFrame)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"contraction": -1.0},
            r"The 'contraction' parameter of ContractiveAutoencoder must be a float in "
            r"the range \[0.0, inf\). Got -1.0 instead.",
        ),
        ({"n_components": 0}, "The 'n_components' parameter"),
        ({"penalty": "l2"}, "The 'penalty' parameter"),
        ({"decoder": "deep"}, "The 'decoder' parameter"),
        ({"loss": "mse"}, "The 'loss' parameter"),
        ({"validation_fraction": 1.0}, "The 'validation_fraction' parameter"),
        ({"hidden_layer_sizes": "8"}, "The 'hidden_layer_sizes' parameter"),
        ({"hidden_layer_sizes": 0}, "The 'hidden_layer_sizes' parameter"),
        ({"pretrain_epochs": -1}, "The 'pretrain_epochs' parameter"),
        ({"jacobian_method": "hutchinson"}, "The 'jacobian_method' parameter"),
        ({"n_probes": 0}, "The 'n_probes' parameter"),
        ({"input_shape": 64}, "The 'input_shape' parameter"),
        ({"kernel_size": 0}, "The 'kernel_size' parameter"),
        ({"padding": "full"}, "The 'padding' parameter"),
    ],
)
def test_invalid_parameters_raise_sklearn_errors(small, params, message) -> None:
    est = ContractiveAutoencoder(**params)
    with pytest.raises(InvalidParameterError, match=message):
        est.fit(small)
    with pytest.raises(InvalidParameterError, match=message):
        clone(est).partial_fit(small)


def test_inconsistent_parameters_raise_value_errors(small) -> None:
    with pytest.raises(ValueError, match="needs a decoder ending in a sigmoid"):
        ContractiveAutoencoder(loss="log_loss").fit(small)
    with pytest.raises(ValueError, match=r"needs X in \[0, 1\]"):
        ContractiveAutoencoder(loss="log_loss", decoder="sigmoid").fit(small * 2 - 1)
    with pytest.raises(ValueError, match="fraction of entries"):
        ContractiveAutoencoder(corruption="masking", corruption_level=1.5).fit(small)
    with pytest.raises(ValueError, match="device"):
        ContractiveAutoencoder(device="not-a-device").fit(small)
    with pytest.raises(ValueError, match="sequence of positive integers"):
        ContractiveAutoencoder(hidden_layer_sizes=(8, 0)).fit(small)
    with pytest.raises(ValueError, match="'analytic' needs a one-layer encoder"):
        ContractiveAutoencoder(hidden_layer_sizes=(8,), jacobian_method="analytic").fit(
            small
        )
    with pytest.raises(ValueError, match=r"input_shape=\(1, 9, 9\) needs 81"):
        ContractiveAutoencoder(input_shape=(1, 9, 9)).fit(small)
    with pytest.raises(ValueError, match="takes no hidden_layer_sizes"):
        ContractiveAutoencoder(input_shape=(1, 8, 8), hidden_layer_sizes=(4,)).fit(
            small
        )
    with pytest.raises(ValueError, match="does not fit input_shape"):
        ContractiveAutoencoder(input_shape=(1, 8, 8), kernel_size=9).fit(small)


def test_sparse_input_is_rejected_with_sklearn_message(small) -> None:
    with pytest.raises(TypeError, match="Sparse data was passed"):
        ContractiveAutoencoder(max_iter=1).fit(sp.csr_matrix(small))


def test_log_loss_with_sigmoid_decoder(small) -> None:
    est = _fit(small, loss="log_loss", decoder="tied-sigmoid", max_iter=10)
    x_hat = est.inverse_transform(est.transform(small))
    assert np.all((x_hat > 0) & (x_hat < 1))
    assert est.objective_.loss == "bce"
    assert est.score(small) < 0  # a cross-entropy is positive


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_the_core_objective(small, name) -> None:
    est = ContractiveAutoencoder.from_preset(name, n_components=4, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(small)
    assert est.objective_ == Objective.preset(name)


def test_from_preset_overrides_and_rejects_unknown_names() -> None:
    est = ContractiveAutoencoder.from_preset("cae", contraction=0.5, n_components=3)
    assert (est.penalty, est.contraction, est.n_components) == ("contractive", 0.5, 3)
    with pytest.raises(ValueError, match="unknown model preset"):
        ContractiveAutoencoder.from_preset("vae")


def test_convergence_and_max_iter_warning(small) -> None:
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        ContractiveAutoencoder(n_components=4, max_iter=2).fit(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = ContractiveAutoencoder(
            n_components=4, max_iter=100, tol=1e3, n_iter_no_change=2
        ).fit(small)
    # As MLPRegressor: stop once more than n_iter_no_change epochs after the
    # first failed to improve by tol.
    assert est.n_iter_ == 4
    assert est.best_loss_ == min(est.loss_curve_)


def test_early_stopping_keeps_the_best_epoch(small) -> None:
    est = _fit(small, early_stopping=True, max_iter=30, n_iter_no_change=3, tol=0.05)
    assert est.best_loss_ is None
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.t_ == est.n_iter_ * 270  # 10% of 300 held out


def test_verbose_prints_the_loss(small) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        _fit(small, n_components=4, max_iter=2, verbose=1)
    assert "Iteration 1, loss = " in out.getvalue()


def test_device_auto_resolves_to_an_available_device(small) -> None:
    est = _fit(small, n_components=4, max_iter=1)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert est.device_.type == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_returns_numpy_and_unpickles_on_cpu(small) -> None:
    est = _fit(small, device="cuda", corruption="gaussian")
    codes = est.transform(small)
    assert isinstance(codes, np.ndarray) and codes.dtype == np.float64
    restored = pickle.loads(pickle.dumps(est))
    assert restored.device_ == torch.device("cpu")
    np.testing.assert_allclose(restored.transform(small), codes, atol=1e-5)


# ------------------------------------------------------- deep, stacked and conv


def test_deep_encoder_layers_and_exact_jacobian_norm(small) -> None:
    est = _fit(small, hidden_layer_sizes=(12, 10), n_components=6, activation="tanh")
    assert [layer.linear.out_features for layer in est.module_.encoder] == [12, 10, 6]
    assert est.module_.architecture["hidden_sizes"] == [12, 10, 6]
    assert est.transform(small).shape == (small.shape[0], 6)
    assert est.inverse_transform(est.transform(small[:3])).shape == (3, 64)
    assert len(est.get_feature_names_out()) == 6
    x = torch.tensor(small[:20], dtype=torch.float64)
    encoder = est.module_.encoder.double()
    jac = torch.func.vmap(torch.func.jacrev(encoder))(x)  # (20, 6, 64)
    expected = jac.pow(2).sum(dim=(1, 2)).sqrt().detach().numpy()
    est.module_.float()
    np.testing.assert_allclose(est.jacobian_norm(small[:20]), expected, rtol=1e-5)
    # An int is one hidden layer, as in MLPRegressor.
    assert _fit(small, hidden_layer_sizes=5, max_iter=1).module_.architecture[
        "hidden_sizes"
    ] == [5, 16]


def test_jacobian_method_and_n_probes_reach_the_objective(small) -> None:
    est = _fit(
        small, hidden_layer_sizes=(24,), jacobian_method="stochastic", n_probes=3
    )
    assert est.objective_ == Objective(
        contraction=0.1, jacobian_method="stochastic", n_probes=3
    )
    assert ContractiveAutoencoder().get_params()["jacobian_method"] == "auto"
    # Defaults keep the one-layer estimator's objective exactly.
    assert _fit(small, max_iter=1).objective_ == Objective(contraction=0.1)


def test_deep_contraction_shrinks_the_whole_encoder_jacobian(small) -> None:
    """Default "auto" is stochastic here (min(64, 24) > 16)."""
    params = {
        "hidden_layer_sizes": (32,),
        "n_components": 24,
        "activation": "tanh",
        "max_iter": 10,
    }
    plain = _fit(small, contraction=0.0, **params)
    contracted = _fit(small, contraction=1.0, **params)
    assert (
        contracted.jacobian_norm(small).mean() < 0.7 * plain.jacobian_norm(small).mean()
    )


def _layer_jacobian_norms(est: ContractiveAutoencoder, X: np.ndarray) -> list[float]:
    """Mean ||J||_F of each encoder layer on the codes of the layers below."""
    x = torch.tensor(X, dtype=torch.float32)
    norms = []
    with torch.no_grad():
        for layer in layer_autoencoders(est.module_):
            norms.append(jacobian_norm_sq(layer.encoder, x).sqrt().mean().item())
            x = layer.encoder(x)
    return norms


def test_pretraining_contracts_each_layer_and_is_deterministic(small) -> None:
    params = {
        "hidden_layer_sizes": (24,),
        "n_components": 12,
        "pretrain_epochs": 8,
        "max_iter": 1,
        "random_state": 5,
    }
    plain = _fit(small, contraction=0.0, **params)
    contracted = _fit(small, contraction=1.0, **params)
    assert [len(c) for c in contracted.pretrain_loss_curves_] == [8, 8]
    for curve in contracted.pretrain_loss_curves_:
        assert curve[-1] < curve[0]
    for c, p in zip(
        _layer_jacobian_norms(contracted, small),
        _layer_jacobian_norms(plain, small),
        strict=True,
    ):
        assert c < 0.9 * p  # measured: 0.83 (layer 1), 0.74 (layer 2)
    again = _fit(small, contraction=1.0, **params)
    assert again.pretrain_loss_curves_ == contracted.pretrain_loss_curves_
    np.testing.assert_array_equal(again.transform(small), contracted.transform(small))
    unpretrained = _fit(small, contraction=1.0, **{**params, "pretrain_epochs": 0})
    assert unpretrained.pretrain_loss_curves_ == []
    assert not np.allclose(unpretrained.transform(small), contracted.transform(small))


def test_pretraining_skipped_for_one_layer_and_in_partial_fit(small) -> None:
    one = _fit(small, pretrain_epochs=3, max_iter=2)
    base = _fit(small, max_iter=2)
    assert one.pretrain_loss_curves_ == []
    np.testing.assert_array_equal(one.transform(small), base.transform(small))
    deep = {"hidden_layer_sizes": (8,), "n_components": 4, "random_state": 0}
    stepped = ContractiveAutoencoder(pretrain_epochs=3, **deep).partial_fit(small)
    plain = ContractiveAutoencoder(**deep).partial_fit(small)
    assert stepped.pretrain_loss_curves_ == []
    np.testing.assert_array_equal(stepped.transform(small), plain.transform(small))


def test_pretraining_log_loss_uses_squared_error_above_non_sigmoid_units(small) -> None:
    est = _fit(
        small,
        hidden_layer_sizes=(16,),
        n_components=8,
        activation="relu",
        loss="log_loss",
        decoder="sigmoid",
        pretrain_epochs=1,
        max_iter=1,
    )
    assert len(est.pretrain_loss_curves_) == 2
    assert np.isfinite(est.pretrain_loss_curves_[1]).all()


def test_deep_random_state_reproducible(small) -> None:
    params = {
        "hidden_layer_sizes": (24,),
        "n_components": 20,  # "auto" -> stochastic probes
        "corruption": "gaussian",
        "pretrain_epochs": 1,
        "max_iter": 2,
    }
    a = _fit(small, random_state=3, **params)
    b = _fit(small, random_state=3, **params)
    c = _fit(small, random_state=4, **params)
    assert a.loss_curve_ == b.loss_curve_
    np.testing.assert_array_equal(a.transform(small), b.transform(small))
    assert not np.allclose(a.transform(small), c.transform(small))


@pytest.mark.parametrize(
    "params",
    [
        {"hidden_layer_sizes": (16, 12), "decoder": "tied", "pretrain_epochs": 1},
        {"input_shape": (1, 8, 8), "n_components": 3, "kernel_size": 3, "stride": 2},
    ],
    ids=["deep-tied", "conv"],
)
def test_pickle_round_trip_deep_and_conv(small, params) -> None:
    est = _fit(small, max_iter=2, **params)
    restored = pickle.loads(pickle.dumps(est))
    assert restored.module_.architecture == est.module_.architecture
    np.testing.assert_array_equal(restored.transform(small), est.transform(small))
    np.testing.assert_array_equal(
        restored.jacobian_norm(small[:10]), est.jacobian_norm(small[:10])
    )
    codes = est.transform(small[:5])
    np.testing.assert_array_equal(
        restored.inverse_transform(codes), est.inverse_transform(codes)
    )
    assert restored.pretrain_loss_curves_ == est.pretrain_loss_curves_
    est.partial_fit(small)
    restored.partial_fit(small)
    np.testing.assert_array_equal(restored.transform(small), est.transform(small))


def test_conv_encoder_on_digit_images(small) -> None:
    est = _fit(small, input_shape=(1, 8, 8), n_components=4, kernel_size=3, padding=1)
    assert est.module_.architecture["type"] == "conv"
    codes = est.transform(small)
    assert codes.shape == (small.shape[0], 4 * 8 * 8)  # channels x 8 x 8
    assert len(est.get_feature_names_out()) == 4 * 8 * 8
    assert est.inverse_transform(codes).shape == small.shape
    # The closed form that jacobian_norm uses equals torch.func's exact Jacobian.
    x = torch.tensor(small[:5], dtype=torch.float64)
    encoder = est.module_.encoder.double()
    with torch.no_grad():
        expected = jacobian_norm_sq(encoder, x, method="exact").sqrt().numpy()
    est.module_.float()
    np.testing.assert_allclose(est.jacobian_norm(small[:5]), expected, rtol=1e-5)


def test_conv_on_mnist_shaped_input() -> None:
    X = np.random.default_rng(0).random((32, 784))
    est = _fit(
        X,
        input_shape=(1, 28, 28),
        n_components=8,
        kernel_size=5,
        stride=2,
        padding=2,
        decoder="sigmoid",
        loss="log_loss",
        max_iter=2,
    )
    assert est.transform(X).shape == (32, 8 * 14 * 14)
    assert est.jacobian_norm(X[:4]).shape == (4,)
    assert est.inverse_transform(est.transform(X[:2])).shape == (2, 784)
