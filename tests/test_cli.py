"""The command line: each subcommand, user errors, and real SIGKILL / SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import contractive
from contractive.cli import main
from contractive.experiment import TrainOptions, encode_file, evaluate_run, train_run

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--epochs", "2", "--no-progress", "--hidden", "4"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "contractive", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    np.save(d / "x6.npy", rng.random((60, 6)).astype(np.float32))
    np.save(d / "x5.npy", rng.random((20, 5)).astype(np.float32))
    x = rng.random((10, 6))
    x[3, 2] = np.nan
    np.save(d / "nan.npy", x)
    x[3, 2] = np.inf
    np.save(d / "inf.npy", x)
    np.save(d / "empty.npy", np.zeros((0, 6), np.float32))
    np.save(d / "flat.npy", np.arange(10.0))
    (d / "words.csv").write_text("a,b,c\n1,2,3\n4,five,6\n")
    (d / "afile").write_text("not a folder")
    return d


@pytest.fixture(scope="module")
def run_dir(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    options = TrainOptions(
        data=str(files / "x6.npy"), epochs=2, hidden=(3,), out=str(out)
    )
    return train_run(options, progress=False).run_dir


# ------------------------------------------------------------------ subcommands


def test_train_encode_evaluate(tmp_path, files, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(files / "x6.npy"), "--out", str(out), *FAST]) == 0
    )
    stdout = capsys.readouterr().out
    assert "mean ||J_f(x)||_F" in stdout and f"run folder: {out}" in stdout
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file()

    assert (
        main(["encode", str(out), str(files / "x6.npy"), str(tmp_path / "h.npy")]) == 0
    )
    codes = np.load(tmp_path / "h.npy")
    assert codes.shape == (60, 4) and codes.dtype == np.float32
    assert (
        main(["encode", str(out), str(files / "x6.npy"), str(tmp_path / "h.csv")]) == 0
    )
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert rows[0] == "h0,h1,h2,h3" and len(rows) == 61
    from_csv = np.loadtxt(tmp_path / "h.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(from_csv, codes, rtol=1e-6)

    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval_split"] == "test" and metrics["n_eval"] == 12
    assert metrics["jacobian_norm"] > 0 and "probe_accuracy_codes" not in metrics
    assert main(["evaluate", str(out), "--data", str(files / "x6.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["n_eval"] == 60


def test_train_on_digits_with_probe(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--epochs", "1", "--hidden", "16", "-q"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["probe_accuracy_codes"] > 0.5
    assert summary["probe_accuracy_inputs"] > 0.9
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert metrics["probe_accuracy_codes"] == pytest.approx(
        summary["probe_accuracy_codes"]
    )


@pytest.mark.parametrize("model", ["ae", "dae", "cae-h", "rcae"])
def test_presets_and_deep_encoder(tmp_path, files, model):
    out = tmp_path / model
    args = ["train", "--data", str(files / "x6.npy"), "--out", str(out), "-q"]
    args += ["--model", model, "--epochs", "1", "--hidden", "5,3", "--optimizer", "sgd"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["model"] == model
    assert config["architecture"]["hidden_sizes"] == [5, 3]


@pytest.mark.parametrize("command", ["train", "encode", "evaluate"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_subprocess_train_without_data_argument(tmp_path):
    proc = _cli("train", "--epochs", "2", "--no-progress", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-cae-")
    assert (run / "model.safetensors").is_file() and "run folder" in stdout


@pytest.mark.slow
def test_true_default_under_a_minute(tmp_path):
    start = time.perf_counter()
    proc = _cli("train", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=300)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, stderr
    assert elapsed < 60, f"default training took {elapsed:.1f} s"
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["probe_accuracy_codes"] > 0.9


# ------------------------------------------------------------------ user errors


def _bad(files: Path, run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    f, out = files, str(tmp / "out")
    x6 = str(f / "x6.npy")
    return [
        (["train", "--data", str(f / "nan.npy"), "--out", out], "NaN"),
        (["train", "--data", str(f / "inf.npy"), "--out", out], "infinite"),
        (["train", "--data", str(f / "empty.npy"), "--out", out], "empty"),
        (["train", "--data", str(f / "flat.npy"), "--out", out], "2-D"),
        (["train", "--data", str(f / "words.csv"), "--out", out], "words.csv"),
        (["train", "--data", "no-such-set", "--out", out], "unknown dataset"),
        (["train", "--data", str(f / "missing.npy"), "--out", out], "no such file"),
        (["train", "--model", "vae", "--out", out], "invalid choice"),
        (["train", "--data", x6, "--out", str(f / "afile" / "sub")], "not writable"),
        (["train", "--data", x6, "--out", str(run)], "not empty"),
        (["train", "--data", x6, "--out", str(f), "--overwrite"], "not a run folder"),
        (["train", "--hidden", "0", "--out", out], "positive integers"),
        (["train", "--hidden", "8,-2", "--out", out], "positive integers"),
        (["train", "--epochs", "0", "--out", out], "positive integer"),
        (["train", "--batch-size", "-4", "--out", out], "positive integer"),
        (["train", "--lr", "0", "--out", out], "positive number"),
        (["train", "--lr", "-0.1", "--out", out], "positive number"),
        (["train", "--lr", "nan", "--out", out], "positive number"),
        (["train", "--contraction", "-1", "--out", out], "number >= 0"),
        (["train", "--validation-fraction", "1.5", "--out", out], "fraction"),
        (["train", "--model", "ae", "--contraction", "0.5", "--out", out], "cae"),
        (["train", "--loss", "bce", "--decoder", "linear", "--out", out], "sigmoid"),
        (["train", "--scaling", "standardize", "--out", out], "needs inputs in"),
        (["train", "--hidden", "8", "--conv-channels", "2", "--out", out], "exclude"),
        (["train", "--stride", "2", "--out", out], "--conv-channels"),
        (["train", "--data", x6, "--conv-channels", "2", "--out", out], "image"),
        (["train", "--conv-channels", "2", "--kernel-size", "9", "--out", out], "9"),
        (["train", "--resume", "--out", str(tmp / "nothing")], "no such run folder"),
        (["train", "--resume", "--out", str(run), "--lr", "1"], "drop --lr"),
        (["encode", str(run), str(f / "x5.npy"), str(tmp / "h.npy")], "expects 6"),
        (["encode", str(run), x6, str(tmp / "h.txt")], ".npy or .csv"),
        (["encode", str(run), x6, str(tmp / "none" / "h.npy")], "does not exist"),
        (["encode", str(tmp / "norun"), x6, str(tmp / "h.npy")], "no such run"),
        (["evaluate", str(run), "--data", str(f / "x5.npy")], "expects 6"),
        (["evaluate", str(f)], "not a run folder"),
        (["frobnicate"], "invalid choice"),
    ]


def test_user_errors_exit_2_one_line_no_folder(files, run_dir, tmp_path, capsys):
    before = {p.name for p in run_dir.rglob("*")}
    for args, message in _bad(files, run_dir, tmp_path):
        code = main([*args, "--no-progress"] if args[0] == "train" else args)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (args, captured.err)
        assert len(lines) == 1 and "Traceback" not in captured.err, (args, lines)
        assert lines[0].startswith("contractive") and message in lines[0], (args, lines)
        assert not (tmp_path / "out").exists(), args
        assert not (tmp_path / "h.npy").exists(), args
    assert {p.name for p in run_dir.rglob("*")} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_missing_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_subprocess_error_has_no_traceback(files, tmp_path):
    proc = _cli("train", "--data", str(files / "nan.npy"), "--out", str(tmp_path / "o"))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert stderr.count("\n") == 1 and "NaN" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data": "nan.npy"}, "NaN"),
        ({"data": "empty.npy"}, "empty"),
        ({"data": "no-such-set"}, "unknown dataset"),
        ({"model": "vae"}, "unknown model preset"),
        ({"hidden": (0,)}, "positive integers"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_api_raises_value_error_with_the_cli_message(files, tmp_path, options, message):
    if "data" in options and options["data"].endswith(".npy"):
        options = {**options, "data": str(files / options["data"])}
    with pytest.raises(ValueError, match=message):
        train_run(TrainOptions(out=str(tmp_path / "o"), **options), progress=False)
    assert not (tmp_path / "o").exists()


def test_api_encode_and_evaluate_errors(files, run_dir, tmp_path):
    with pytest.raises(ValueError, match="expects 6"):
        encode_file(run_dir, str(files / "x5.npy"), tmp_path / "h.npy")
    with pytest.raises(ValueError, match="expects 6"):
        evaluate_run(run_dir, str(files / "x5.npy"))


# ------------------------------------------------------------------ kill and resume

KILL_ARGS = ["--epochs", "6", "--batch-size", "4", "--hidden", "5", "--lr", "0.01"]
KILL_ARGS += ["--checkpoint-every", "5", "--no-progress", "--model", "dae"]


def _checkpoint_seq(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "checkpoint.json").read_text())["seq"]
    except (OSError, ValueError, KeyError):
        return 0


def _final(run: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    tensors = load_file(run / "model.safetensors")
    return tensors, (run / "metrics.jsonl").read_text().splitlines()


def test_sigkill_at_several_points_then_resume_is_bit_identical(files, tmp_path):
    """Kill -9 after 1, 4 and 8 checkpoints (wherever the process then is), resume
    each time, and compare with an uninterrupted run made in this process."""
    data = ["--data", str(files / "x6.npy")]
    killed = tmp_path / "killed"
    proc = _cli("train", *data, "--out", str(killed), *KILL_ARGS)
    reference = tmp_path / "reference"
    assert main(["train", *data, "--out", str(reference), *KILL_ARGS, "-q"]) == 0
    kills = 0
    for target in (1, 4, 8):  # kill once this many checkpoints were written
        deadline = time.monotonic() + 60
        while _checkpoint_seq(killed) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
        assert not (killed / "model.safetensors").exists()
        proc = _cli("train", "--out", str(killed), "--resume", "--no-progress")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert kills >= 2, "training finished before it could be killed"
    (a, metrics_a), (b, metrics_b) = _final(reference), _final(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics_a == metrics_b  # no epoch lost or logged twice
    assert not list(killed.rglob("*.tmp"))


def test_sigint_writes_checkpoint_and_exits_130(files, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(files / "x6.npy"), "--out", str(run), "--batch-size", "1"]
    proc = _cli("train", *args, "--epochs", "500", "--no-progress")
    deadline = time.monotonic() + 60
    while _checkpoint_seq(run) < 1:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    # the latest checkpoint is the state at the step where training stopped
    match = re.search(r"interrupted at epoch (\d+), step (\d+)", stderr)
    pointer = json.loads((run / "checkpoints" / "checkpoint.json").read_text())
    assert match, stderr
    assert pointer["epoch"] + 1 == int(match[1])
    assert pointer["step_in_epoch"] == int(match[2])
    assert pointer["global_step"] > 0


def test_divergence_exits_1_and_keeps_last_good_checkpoint(tmp_path, capsys):
    from contractive import runs

    x = np.random.default_rng(1).random((40, 6)).astype(np.float32)
    x[17] = 1e20  # finite, but its squared error overflows float32
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "x.npy"), "--out", str(out), "-q"]
    args += ["--scaling", "none", "--checkpoint-every", "1", "--batch-size", "2"]
    args += ["--loss", "mse", "--decoder", "linear"]
    args += ["--test-fraction", "0", "--validation-fraction", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged" in err[0] and "last good checkpoint" in err[0]
    state = runs.load_checkpoint(out)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (out / "model.safetensors").exists()


def test_evaluate_refuses_changed_data(tmp_path, capsys):
    x = np.random.default_rng(2).random((30, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "x.npy"), "--out", str(out), *FAST]
    assert main(args) == 0
    np.save(tmp_path / "x.npy", x + 1)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    assert "changed since training" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "changed since the run started" in capsys.readouterr().err


def test_conv_run_round_trips_through_load(tmp_path, capsys):
    out = tmp_path / "conv"
    args = ["train", "--conv-channels", "3", "--kernel-size", "3", "--stride", "2"]
    assert main([*args, "--padding", "1", "--epochs", "2", "--out", str(out)]) == 0
    loaded = contractive.load(out)
    assert loaded.config["architecture"]["type"] == "conv"
    x = load_digits().data[:5]
    assert loaded.encode(x).shape == (5, 3 * 4 * 4)
    assert loaded.reconstruct(x).shape == (5, 64)


def test_pretraining_changes_the_deep_model_deterministically(tmp_path):
    def weights(name: str, pretrain: int) -> torch.Tensor:
        out = tmp_path / name
        args = ["train", "--hidden", "16,8", "--epochs", "1", "--no-progress"]
        args += ["--pretrain-epochs", str(pretrain), "--out", str(out)]
        assert main(args) == 0
        return contractive.load(out).model.encoder[1].linear.weight.detach()

    plain, pre_a, pre_b = weights("p", 0), weights("a", 2), weights("b", 2)
    assert torch.equal(pre_a, pre_b)
    assert not torch.allclose(plain, pre_a)
