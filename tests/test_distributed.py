"""Several processes (torch.distributed, gloo on the CPU), devices and precision.

The equality test spawns 2 gloo processes; the CLI tests launch ``contractive
train --nproc 2`` (torchrun) as a subprocess. GPU tests run only with CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contractive.cli import main
from contractive.distributed import DistContext, rank_batches, shard_rows
from contractive.modules import Autoencoder
from contractive.objective import Objective
from contractive.training import TrainConfig, Trainer, fit

SRC = Path(__file__).resolve().parents[1] / "src"
N_FEATURES, N_HIDDEN = 6, 4
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none present)"
)


def _data(n: int = 40) -> np.ndarray:
    return np.random.default_rng(1).random((n, N_FEATURES), dtype=np.float32)


def _model() -> Autoencoder:
    torch.manual_seed(3)
    return Autoencoder.from_architecture(
        {
            "type": "dense",
            "n_features": N_FEATURES,
            "hidden_sizes": [N_HIDDEN],
            "activation": "sigmoid",
            "decoder": "linear",
        }
    )


def _train(
    n_train: int, batch_size: int, ctx: DistContext | None = None
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """Two epochs of a deterministic CAE (closed-form penalty, no corruption)."""
    x = _data()
    config = TrainConfig(epochs=2, batch_size=batch_size, lr=0.05, seed=7)
    trainer = Trainer(
        _model(), Objective.preset("cae"), config, progress=False, dist=ctx
    )
    trainer.fit(x, np.arange(n_train), np.arange(n_train, 40))
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return state, trainer.history.epochs


def _resume_mid_epoch(ctx: DistContext, folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a run resumed from a checkpoint rank 0 wrote inside epoch 2,
    minus those of the same run uninterrupted (all zeros when exact)."""
    from contractive import runs

    x, train, val = _data(), np.arange(37), np.arange(37, 40)
    config = TrainConfig(epochs=3, batch_size=4, lr=0.05, seed=7, checkpoint_every=3)

    def save(state: dict) -> None:  # only rank 0 is ever called
        if state["counters"]["global_step"] <= 6:  # last: epoch 2, step 1 of 5
            runs.save_checkpoint(folder, state)

    kwargs = {"progress": False, "dist": ctx}
    full = Trainer(_model(), Objective.preset("cae"), config, checkpoint=save, **kwargs)
    full.fit(x, train, val)
    ctx.barrier()  # rank 0 wrote the checkpoint; every rank reads it
    resumed = Trainer(_model(), Objective.preset("cae"), config, **kwargs)
    state = runs.load_checkpoint(folder)
    assert state["counters"]["step_in_epoch"] == 1
    resumed.load_state_dict(state)
    resumed.fit(x, train, val)
    theirs = resumed.model.state_dict()
    return {k: v - theirs[k] for k, v in full.model.state_dict().items()}


def _gloo_worker(rank: int, world_size: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size
    )
    try:
        ctx = DistContext(rank, world_size, rank)
        results = {}
        # 37 rows, 2 x 4 per step: the last global batch has 5 rows (4 + 1);
        # 33 rows: the last has 1 row, rank 1 gets none.
        for n_train in (37, 33):
            state, history = _train(n_train, 4, ctx)
            results[n_train] = {"state": state, "history": history}
        results["resume_diff"] = _resume_mid_epoch(ctx, Path(store).parent)
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("gloo")
    out = str(folder / "result")
    mp.spawn(_gloo_worker, args=(2, str(folder / "store"), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("n_train", [37, 33])
def test_two_processes_equal_one_process_with_twice_the_batch(
    two_process_results: list[dict], n_train: int
) -> None:
    single_state, single_history = _train(n_train, 8)
    for result in two_process_results:  # both ranks hold the same weights
        state = result[n_train]["state"]
        for name, value in single_state.items():
            torch.testing.assert_close(state[name], value, atol=1e-6, rtol=1e-5)
        history = result[n_train]["history"]
        assert len(history) == len(single_history)
        for got, want in zip(history, single_history, strict=True):
            assert got.keys() == want.keys()
            for key in want:  # epoch and validation metrics are global means
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7)


def test_two_processes_resume_inside_an_epoch_exactly(
    two_process_results: list[dict],
) -> None:
    for result in two_process_results:
        for name, diff in result["resume_diff"].items():
            assert torch.count_nonzero(diff) == 0, name


def test_rank_batches_cut_global_batches_into_rank_slices() -> None:
    order = np.arange(11)
    r0 = [(list(r), n) for r, n in rank_batches(order, 2, 0, 3)]
    r1 = [(list(r), n) for r, n in rank_batches(order, 2, 1, 3)]
    r2 = [(list(r), n) for r, n in rank_batches(order, 2, 2, 3)]
    assert r0 == [([0, 1], 6), ([6, 7], 5)]
    assert r1 == [([2, 3], 6), ([8, 9], 5)]
    assert r2 == [([4, 5], 6), ([10], 5)]
    assert [list(r) for r, _ in rank_batches(order, 2, 2, 3, start=1)] == [[10]]
    assert [len(shard_rows(np.arange(5), r, 3)) for r in range(3)] == [2, 2, 1]


def test_single_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    assert ctx.is_main and not ctx.enabled
    assert ctx.on_main(lambda: "x") == "x"
    t = torch.ones(2)
    assert ctx.all_reduce_sum(t) is t and ctx.broadcast(t) is t
    with pytest.raises(ValueError, match="rank 2 out of range"):
        DistContext(rank=2, world_size=2)


# ------------------------------------------------------------------ CLI, torchrun


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "OMP_NUM_THREADS": "1",
        "TORCHELASTIC_ERROR_FILE": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "contractive", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


_TRAIN = (
    "train",
    "--nproc",
    "2",
    "--hidden",
    "8",
    "--batch-size",
    "64",
    "--no-progress",
    "-q",
)


def test_nproc_2_run_folder_is_written_by_rank_0_only_and_resumes(
    tmp_path: Path,
) -> None:
    straight = _cli(*_TRAIN, "--epochs", "3", "--out", "full", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    run = tmp_path / "full"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert files == [
        "checkpoints",
        "checkpoints/checkpoint.json",
        "checkpoints/ckpt-000003.safetensors",
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "run folder:" in straight.stdout and straight.stdout.count("run folder") == 1

    part = _cli(*_TRAIN, "--epochs", "2", "--out", "part", cwd=tmp_path)
    assert part.returncode == 0, part.stderr
    resumed = _cli(
        "train", "--nproc", "2", "--out", "part", "--resume", "--epochs", "3", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 3
    want, got = _weights(run), _weights(tmp_path / "part")
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)

    wrong = _cli("train", "--out", "part", "--resume", "--epochs", "4", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "2 processes" in wrong.stderr and "--nproc 2" in wrong.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "x"],
         "device"),
        (["--device", "tpu"], "device"),
        (["--device", "cuda:x"], "device"),
        (["--precision", "fp16", "--device", "cpu"], "needs a CUDA device"),
        (["--precision", "bf16", "--device", "cpu"], "needs a CUDA device"),
        (["--precision", "fp8"], "precision"),
        (["--nproc", "0"], "nproc"),
        (["--nproc", "2", "--data", "missing.npy"], "no such file"),
        (["--nproc", "2", "--precision", "fp16", "--device", "cpu"], "CUDA"),
    ],
)  # fmt: skip
def test_device_precision_and_nproc_errors_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", *flags, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_mps_requested_without_mps_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["train", "--device", "mps", "--out", str(tmp_path / "r")]) == 2
    assert "MPS is not available" in capsys.readouterr().err


def test_fit_draws_the_batch_order_on_the_cpu(monkeypatch) -> None:
    """fit() gives iterate_minibatches a CPU generator (it permutes on the CPU)."""
    import contractive.training as training

    devices = []
    original = training.iterate_minibatches

    def spy(x, batch_size, *, shuffle=True, generator=None):
        devices.append(generator.device.type)
        return original(x, batch_size, shuffle=shuffle, generator=generator)

    monkeypatch.setattr(training, "iterate_minibatches", spy)
    x = torch.from_numpy(_data())
    a, b = _model(), _model()
    fit(a, Objective.preset("dae"), x, epochs=2, batch_size=8, seed=5)
    fit(b, Objective.preset("dae"), x, epochs=2, batch_size=8, seed=5)
    assert devices == ["cpu"] * 4
    for name, p in a.state_dict().items():
        torch.testing.assert_close(p, b.state_dict()[name], rtol=0, atol=0)


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@CUDA
def test_fit_on_cuda_uses_a_cpu_order_generator() -> None:
    x = torch.from_numpy(_data()).cuda()
    model = _model().cuda()
    history = fit(model, Objective.preset("dae"), x, epochs=1, batch_size=8)
    assert np.isfinite(history.epochs[0]["loss"])


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trainer_on_cuda_with_pinned_batches_and_autocast(precision: str) -> None:
    x = _data(200)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.01)
    trainer = Trainer(
        _model().cuda(),
        Objective.preset("cae-h"),
        config,
        device="cuda",
        precision=precision,
        progress=False,
    )
    trainer.fit(x, np.arange(180), np.arange(180, 200))
    assert all(np.isfinite(v) for e in trainer.history.epochs for v in e.values())
    if precision == "fp16":
        assert "grad_scaler" in trainer.state_dict()


@pytest.mark.gpu
@CUDA
def test_penalty_stays_float32_under_autocast() -> None:
    model = _model().cuda()
    x = torch.from_numpy(_data()).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        terms = Objective.preset("cae")(model, x)
    assert terms["contraction"].dtype == torch.float32
    reference = Objective.preset("cae")(model, x)["contraction"]
    torch.testing.assert_close(terms["contraction"], reference, rtol=1e-2, atol=0)
