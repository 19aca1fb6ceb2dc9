"""Run folders: round trips, atomic writes, tampering, and no pickle on load."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import contractive
from contractive import runs
from contractive.data import Scaler
from contractive.experiment import TrainOptions, train_run


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(path, rng.random((80, 6)).astype(np.float32) * 5 - 1)
    return path


def _train(tmp_path, data_file, **options):
    options = {"data": str(data_file), "epochs": 2, "hidden": (3,), **options}
    return train_run(TrainOptions(out=str(tmp_path / "run"), **options), progress=False)


@pytest.mark.parametrize("decoder", ["linear", "tied", "tied-sigmoid"])
def test_round_trip_every_tensor_and_scaler(tmp_path, data_file, decoder):
    result = _train(
        tmp_path, data_file, decoder=decoder, loss="mse", scaling="standardize"
    )
    loaded = contractive.load(result.run_dir)
    stored = load_file(result.run_dir / runs.MODEL)
    state = loaded.model.state_dict()
    assert {f"model.{k}" for k in state} | {"scaler.offset", "scaler.scale"} == set(
        stored
    )
    for k, v in state.items():
        assert torch.equal(v, stored[f"model.{k}"]), k
    x = np.load(data_file)
    scaler = Scaler("standardize").fit(x, np.sort(_train_rows(result)))
    np.testing.assert_array_equal(loaded.scaler.offset_, scaler.offset_)
    np.testing.assert_array_equal(loaded.scaler.scale_, scaler.scale_)
    assert not loaded.model.training
    codes = loaded.encode(x)
    with torch.no_grad():
        expected = loaded.model.encode(torch.from_numpy(scaler.transform(x)))
    np.testing.assert_array_equal(codes, expected.numpy())
    assert loaded.reconstruct(x).shape == x.shape


def _train_rows(result):
    from contractive.experiment import make_splits

    config = runs.read_config(result.run_dir)
    o = config["options"]
    return make_splits(
        80, o["validation_fraction"], o["test_fraction"], o["seed"]
    ).train


def test_run_folder_contents(tmp_path, data_file):
    result = _train(tmp_path, data_file)
    names = {p.name for p in result.run_dir.iterdir()}
    assert names == {"config.json", "model.safetensors", "metrics.jsonl",
                     "summary.json", "checkpoints"}  # fmt: skip
    config = json.loads((result.run_dir / "config.json").read_text())
    assert (
        config["data"]["checksum"] and config["versions"]["torch"] == torch.__version__
    )
    # default lambda follows the loss: cross-entropy with the default decoder
    assert config["objective"]["loss"] == "bce"
    assert config["objective"]["contraction"] == 1.0
    assert config["train"]["epochs"] == 2 and config["architecture"]["type"] == "dense"
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1.0, 2.0]
    assert not list(result.run_dir.rglob("*.tmp"))
    assert len(list((result.run_dir / "checkpoints").glob("ckpt-*"))) == 1


def test_load_never_unpickles(tmp_path, data_file, monkeypatch):
    result = _train(tmp_path, data_file)

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used on the load path")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    loaded = contractive.load(result.run_dir)
    assert loaded.n_features == 6
    state = runs.load_checkpoint(result.run_dir)
    assert state["counters"]["epoch"] == 2


def test_checkpoint_round_trip_nested_values(tmp_path):
    state = {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "buf": None}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}],
        },
        "order": None,
        "gen": torch.Generator().manual_seed(1).get_state(),
        "counters": {"epoch": 1, "best_val": float("inf")},
        "history": [{"loss": 1.5}],
    }
    runs.save_checkpoint(tmp_path, state)
    back = runs.load_checkpoint(tmp_path)
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["optimizer"]["state"][0]["buf"] is None
    assert torch.equal(back["optimizer"]["state"][0]["step"], torch.tensor(3.0))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(back["gen"], state["gen"])
    assert back["counters"] == {"epoch": 1, "best_val": float("inf")}
    assert back["history"] == state["history"] and back["order"] is None
    runs.save_checkpoint(tmp_path, state)  # a second one replaces the first
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["checkpoint.json", "ckpt-000002.safetensors"]


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_last_byte, "corrupt or was modified"),
        (_truncate, "corrupt or was modified"),
    ],
)
def test_damaged_model_file(tmp_path, data_file, damage, message):
    result = _train(tmp_path, data_file)
    damage(result.run_dir / runs.MODEL)
    with pytest.raises(ValueError, match=message):
        contractive.load(result.run_dir)


def test_truncated_model_without_summary(tmp_path, data_file):
    result = _train(tmp_path, data_file)
    (result.run_dir / runs.SUMMARY).unlink()  # no recorded sha256 to compare
    _truncate(result.run_dir / runs.MODEL)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        contractive.load(result.run_dir)


def test_tampered_architecture(tmp_path, data_file):
    result = _train(tmp_path, data_file)
    path = result.run_dir / runs.CONFIG
    config = json.loads(path.read_text())
    config["architecture"]["hidden_sizes"] = [4]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match the architecture"):
        contractive.load(result.run_dir)


def test_tampered_weights_with_matching_checksum(tmp_path, data_file):
    """A file rewritten with other shapes (and its checksum updated) still fails."""
    import safetensors.torch

    result = _train(tmp_path, data_file)
    path = result.run_dir / runs.MODEL
    tensors = load_file(path)
    tensors["model.encoder.0.0.weight"] = torch.zeros(2, 2)
    arch = json.dumps(runs.read_config(result.run_dir)["architecture"], sort_keys=True)
    data = safetensors.torch.save(
        tensors,
        metadata={
            "format": runs.MODEL_FORMAT,
            "architecture": arch,
            "scaler_kind": "minmax",
        },  # fmt: skip
    )
    path.write_bytes(data)
    summary = json.loads((result.run_dir / runs.SUMMARY).read_text())
    summary["files"][runs.MODEL] = runs.sha256_bytes(data)
    (result.run_dir / runs.SUMMARY).write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="do not fit the model"):
        contractive.load(result.run_dir)


def test_damaged_checkpoint_and_pointer(tmp_path, data_file):
    result = _train(tmp_path, data_file)
    folder = result.run_dir / runs.CHECKPOINTS
    (ckpt,) = folder.glob("ckpt-*.safetensors")
    _flip_last_byte(ckpt)
    with pytest.raises(ValueError, match="corrupt or was modified"):
        runs.load_checkpoint(result.run_dir)
    (folder / runs.POINTER).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        runs.load_checkpoint(result.run_dir)
    (folder / runs.POINTER).write_text(
        json.dumps({"format": runs.CHECKPOINT_FORMAT, "file": "../config.json"})
    )
    with pytest.raises(ValueError, match="invalid file"):
        runs.load_checkpoint(result.run_dir)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "no such run folder"),
        (lambda p: p.mkdir(), "not a run folder"),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text("[1,")),
            "not valid JSON",
        ),
    ],
)
def test_bad_run_folders(tmp_path, setup, message):
    path = tmp_path / "run"
    setup(path)
    with pytest.raises(ValueError, match=message):
        contractive.load(path)


def test_unfinished_run_says_how_to_resume(tmp_path):
    (tmp_path / "run").mkdir()
    runs.write_config(tmp_path / "run", {"architecture": {"type": "dense"}})
    with pytest.raises(ValueError, match="--resume"):
        contractive.load(tmp_path / "run")


def test_check_new_run_dir(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a run folder"):
        runs.check_new_run_dir(tmp_path / "full", overwrite=True)  # never emptied
    (tmp_path / "full" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        runs.check_new_run_dir(tmp_path / "full")
    runs.check_new_run_dir(tmp_path / "full", overwrite=True)
    with pytest.raises(ValueError, match="not a folder"):
        runs.check_new_run_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="not writable"):
        runs.check_new_run_dir(tmp_path / "file" / "sub")
    runs.check_new_run_dir(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    runs.atomic_write_json(path, {"a": 1})

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", boom)
    with pytest.raises(OSError):
        runs.atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_metrics_torn_line_and_truncate(tmp_path):
    for epoch in (1, 2, 3):
        runs.append_metrics(tmp_path, {"epoch": float(epoch)})
    with open(tmp_path / runs.METRICS, "a") as f:
        f.write('{"epoch": 4.0, "lo')  # killed mid-write
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1, 2, 3]
    runs.truncate_metrics(tmp_path, 2)
    assert [r["epoch"] for r in runs.read_metrics(tmp_path)] == [1, 2]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    target = tmp_path / "f.json"
    runs.atomic_write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert json.loads(target.read_text()) == {"a": 1}
