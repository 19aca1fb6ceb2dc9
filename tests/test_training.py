"""The training loop: determinism, early stopping, divergence, exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contractive import Autoencoder, Objective, TrainConfig, Trainer
from contractive.training import DivergenceError, fit, iterate_minibatches


def _data(n: int = 120, d: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, d)).astype(np.float32)


def _model(d: int = 6, seed: int = 0, hidden=(4,)) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder.dense(d, list(hidden))


def _trainer(model=None, objective=None, **config) -> Trainer:
    config = {"epochs": 3, "batch_size": 16, "lr": 1e-2, **config}
    return Trainer(
        model or _model(),
        objective or Objective.preset("cae"),
        TrainConfig(**config),
        progress=False,
    )


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


TRAIN, VAL = np.arange(100), np.arange(100, 120)


@pytest.mark.parametrize("preset", ["cae", "dae", "cae-h"])
def test_same_seed_same_weights(preset):
    x = _data()
    runs = []
    for _ in range(2):
        trainer = _trainer(objective=Objective.preset(preset), seed=3)
        history = trainer.fit(x, TRAIN, VAL)
        runs.append((_weights(trainer.model), history.epochs))
    _assert_identical(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert len(runs[0][1]) == 3 and "val_loss" in runs[0][1][0]


def test_different_seed_different_batches():
    x = _data()
    a, b = _trainer(seed=1), _trainer(seed=2)
    a.fit(x, TRAIN)
    b.fit(x, TRAIN)
    assert not torch.equal(
        a.model.state_dict()["encoder.0.0.weight"],
        b.model.state_dict()["encoder.0.0.weight"],
    )


def test_loss_decreases_and_history_has_terms():
    x = _data(400, 8)
    trainer = _trainer(model=_model(8), epochs=5, lr=3e-2)
    history = trainer.fit(x, np.arange(400))
    losses = history.series("loss")
    assert losses[-1] < losses[0]
    assert {"loss", "reconstruction", "contraction", "epoch"} <= history.epochs[
        0
    ].keys()


def test_early_stopping_restores_best(monkeypatch):
    x = _data()
    trainer = _trainer(epochs=10, patience=2)
    val_losses = iter([1.0, 0.5, 0.7, 0.9, 0.1])
    saved = {}

    def fake_validate(self, x, indices, *, scaler=None):
        loss = next(val_losses)
        if loss == 0.5:
            saved.update(_weights(self.model))
        return {"loss": loss}

    monkeypatch.setattr(Trainer, "validate", fake_validate)
    history = trainer.fit(x, TRAIN, VAL)
    assert len(history.epochs) == 4  # best at 2, then 2 epochs without improvement
    assert trainer.stopped_early and trainer.best_epoch == 2
    _assert_identical(_weights(trainer.model), saved)


def test_keep_last_without_restore_best(monkeypatch):
    monkeypatch.setattr(
        Trainer, "validate", lambda self, x, i, scaler=None: {"loss": 1.0}
    )
    trainer = _trainer(epochs=5, patience=1, restore_best=False)
    trainer.fit(_data(), TRAIN, VAL)
    assert trainer.epoch == 2 and trainer.best_state is None


def test_divergence_raises_and_keeps_finite_weights():
    x = _data()
    x[57] = 1e30  # squared error overflows float32 on the batch holding row 57
    checkpoints = []
    trainer = _trainer(epochs=2, batch_size=8)
    trainer.checkpoint = checkpoints.append
    with pytest.raises(DivergenceError, match="loss is inf"):
        trainer.fit(x, np.arange(120))
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()
    assert checkpoints == []  # no checkpoint of a diverged state


def _run_with_checkpoints(x, **config):
    states = []
    trainer = _trainer(**config)
    trainer.checkpoint = states.append
    trainer.fit(x, TRAIN, VAL)
    return trainer, states


@pytest.mark.parametrize("preset", ["cae", "dae"])
def test_resume_mid_epoch_equals_uninterrupted(preset, tmp_path):
    from contractive import runs

    x = _data()
    objective = Objective.preset(preset)
    full, states = _run_with_checkpoints(
        x, objective=objective, checkpoint_every=3, epochs=3
    )
    # 7 steps per epoch: checkpoints after steps 3, 6, epoch 1, 9, 12, epoch 2, ...
    assert len(states) == 3 * 2 + 3
    mid = [s for s in states if s["counters"]["step_in_epoch"] > 0]
    assert mid, "expected mid-epoch checkpoints"
    for state in mid[:: max(1, len(mid) // 3)]:
        runs.save_checkpoint(tmp_path, state)  # through the real file format
        restored = runs.load_checkpoint(tmp_path)
        resumed = _trainer(
            model=_model(seed=99), objective=objective, checkpoint_every=3, epochs=3
        )
        resumed.load_state_dict(restored)
        resumed.fit(x, TRAIN, VAL)
        _assert_identical(_weights(resumed.model), _weights(full.model))
        assert resumed.history.epochs == full.history.epochs


def test_resume_can_extend_epochs():
    x = _data()
    full, _ = _run_with_checkpoints(x, epochs=4)
    short, states = _run_with_checkpoints(x, epochs=2)
    longer = _trainer(model=_model(seed=5), epochs=4)
    longer.load_state_dict(states[-1])
    longer.fit(x, TRAIN, VAL)
    _assert_identical(_weights(longer.model), _weights(full.model))


def test_load_state_dict_rejects_other_model():
    _, states = _run_with_checkpoints(_data(), epochs=1)
    other = _trainer(model=_model(hidden=(5,)))
    with pytest.raises(ValueError, match="checkpoint does not match"):
        other.load_state_dict(states[-1])


def test_sgd_optimizer_and_momentum_state_round_trip(tmp_path):
    from contractive import runs

    x = _data()
    full, states = _run_with_checkpoints(
        x, optimizer="sgd", momentum=0.9, checkpoint_every=4
    )
    runs.save_checkpoint(tmp_path, states[1])
    resumed = _trainer(optimizer="sgd", momentum=0.9, checkpoint_every=4)
    resumed.load_state_dict(runs.load_checkpoint(tmp_path))
    resumed.fit(x, TRAIN, VAL)
    _assert_identical(_weights(resumed.model), _weights(full.model))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("batch_size", -1),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("optimizer", "rmsprop"),
        ("momentum", 1.0),
        ("patience", -1),
        ("checkpoint_every", -2),
        ("epochs", True),
    ],
)
def test_train_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_train_config_is_frozen():
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.epochs = 3  # type: ignore[misc]


def test_memmap_input(tmp_path):
    x = _data()
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b = _trainer(), _trainer()
    a.fit(x, TRAIN, VAL)
    b.fit(mm, TRAIN, VAL)
    _assert_identical(_weights(a.model), _weights(b.model))


def test_legacy_fit_still_works():
    x = torch.from_numpy(_data())
    model = _model()
    history = fit(model, Objective.preset("cae"), x, epochs=2, x_val=x[:10])
    assert len(history.epochs) == 2 and "val_loss" in history.epochs[0]
    assert sum(b.shape[0] for b in iterate_minibatches(x, 7)) == 120


def test_progress_bar_shows_loss_terms(capsys):
    trainer = Trainer(
        _model(), Objective.preset("cae"), TrainConfig(epochs=1), progress=True
    )
    trainer.fit(_data(), TRAIN)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "rec=" in err and "jac=" in err
