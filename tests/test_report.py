"""contractive report and the analysis in contractive evaluate, end to end."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from contractive import Autoencoder
from contractive.cli import main
from contractive.report import (
    FIGURES,
    _comparison_dir,
    _filters,
    _image_shape,
    _labels,
    analyse_run,
    write_report,
)

SRC = Path(__file__).resolve().parents[1] / "src"
RUN_FIGURES = (
    "training_curves",
    "filters",
    "reconstructions",
    "spectrum",
    "contraction",
    "tangents",
)
ANALYSIS_KEYS = (
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
)
TINY = ["--epochs", "2", "--hidden", "8", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two tiny digits runs, ``ae`` and ``cae``, side by side in one folder."""
    root = tmp_path_factory.mktemp("runs")
    for model in ("ae", "cae"):
        assert main(["train", "--model", model, "--out", str(root / model), *TINY]) == 0
    return root


def _read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 50
    return image


def _embedded(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_report_of_one_run(trained, capsys):
    run = trained / "cae"
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.md")
    for name in RUN_FIGURES:
        _read_png(run / FIGURES / f"{name}.png")
    text = (run / "report.md").read_text()
    assert _embedded(text) == [f"{FIGURES}/{name}.png" for name in RUN_FIGURES]
    summary = json.loads((run / "summary.json").read_text())
    for needle in (
        "| data | digits: 1797 samples x 64 features, images 8x8 |",
        "| model | cae |",
        "| encoder | dense 64 -> 8, sigmoid; decoder tied-sigmoid |",
        "| lambda | 1 |",
        "| epochs | 2 of 2",
        f"{summary['reconstruction_error']:.4g}",
        f"{summary['probe_accuracy_codes']:.4g}",
        "exact mean ‖J_f(x)‖_F",
        "contraction ratio at r = 0.1 x scale",
    ):
        assert needle in text


def test_report_numbers_are_those_of_evaluate(trained, capsys):
    run = trained / "ae"
    assert main(["evaluate", str(run)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval_split"] == "test" and "probe_accuracy_codes" in metrics
    numbers = metrics["analysis"]
    assert tuple(numbers) == ANALYSIS_KEYS
    assert all(math.isfinite(v) for v in numbers.values())
    assert numbers["n_samples"] == metrics["n_eval"] == 360
    # The exact norm agrees with the closed form of model_metrics.
    assert numbers["mean_jacobian_norm"] == pytest.approx(
        metrics["jacobian_norm"], rel=1e-4
    )
    assert 1 <= numbers["effective_rank"] <= 8 and numbers["largest"] > 0
    assert analyse_run(run).numbers == numbers


def test_evaluate_options(trained, capsys):
    run = str(trained / "cae")
    assert main(["evaluate", run, "--no-analysis"]) == 0
    assert "analysis" not in json.loads(capsys.readouterr().out)
    assert main(["evaluate", run, "--analysis-samples", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["analysis"]["n_samples"] == 50


def test_report_compares_runs(trained, capsys):
    runs = [str(trained / "ae"), str(trained / "cae")]
    out = trained / "compare"
    assert main(["report", *runs, "--out", str(out), "--analysis-samples", "100"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    for name in ("training_curves", "spectrum", "contraction"):
        _read_png(out / FIGURES / f"{name}.png")
    text = (out / "report.md").read_text()
    assert _embedded(text) == [
        f"{FIGURES}/{n}.png" for n in ("training_curves", "spectrum", "contraction")
    ]
    assert "[ae](../ae/report.md) | digits | ae |" in text
    assert "[cae](../cae/report.md) | digits | cae |" in text
    for run in runs:  # each run gets its own report too
        assert (Path(run) / "report.md").is_file()
        _read_png(Path(run) / FIGURES / "tangents.png")


def test_report_as_subprocess_without_display(trained):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    run = trained / "ae"
    proc = subprocess.run(
        [sys.executable, "-m", "contractive", "report", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run / "report.md")
    _read_png(run / FIGURES / "spectrum.png")


def test_report_of_non_image_data_draws_strips(tmp_path, capsys):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((60, 6)).astype(np.float32))
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--out", str(run), "--epochs", "1"]
    assert main([*args, "--hidden", "4", "-q"]) == 0
    assert main(["report", str(run)]) == 0
    assert not (run / FIGURES / "filters.png").exists()
    for name in ("reconstructions", "tangents", "spectrum"):
        _read_png(run / FIGURES / f"{name}.png")
    text = (run / "report.md").read_text()
    assert "1 x 6 strips" in text and "No filters figure" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "{root}/nowhere"], "no such run folder"),
        (["report", "{root}"], "not a run folder"),
        (["report", "{root}/ae", "{root}/ae"], "given twice"),
        (["report", "{root}/ae", "--out", "{root}/x"], "several runs"),
        (["report", "{root}/ae", "{root}/cae", "--out", "{root}/cae"], "run folder"),
        (["report"], "required"),
        (["evaluate", "{root}/ae", "--analysis-samples", "0"], "positive integer"),
    ],
)
def test_errors_exit_2_with_one_line(trained, capsys, args, message):
    argv = [a.format(root=trained) for a in args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert captured.out == ""


def test_report_of_unfinished_run_is_an_error(trained, tmp_path, capsys):
    run = tmp_path / "unfinished"
    run.mkdir()
    (run / "config.json").write_text((trained / "ae" / "config.json").read_text())
    assert main(["report", str(run)]) == 2
    assert "did not finish" in capsys.readouterr().err


def test_default_comparison_folder_is_beside_the_first_run(tmp_path):
    paths = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]
    labels = _labels(paths)  # names repeat: parent/name
    assert labels == ["a/run", "b/run", f"{tmp_path.name}/c"]
    target = _comparison_dir(paths, labels, None)
    assert target == tmp_path.resolve() / "a" / f"report-a_run-b_run-{tmp_path.name}_c"
    many = [tmp_path / f"{'x' * 30}{i}" for i in range(4)]
    target = _comparison_dir(many, _labels(many), None)
    assert target.name == f"report-{'x' * 30}0-and-3-more"
    assert _comparison_dir(paths, labels, tmp_path / "out") == tmp_path / "out"


def test_conv_filters_and_image_shapes():
    model = Autoencoder.conv((1, 8, 8), channels=3, kernel_size=3)
    filters, shape = _filters(model.encoder, (8, 8))
    assert shape == (3, 3) and filters.shape == (3, 9)
    np.testing.assert_array_equal(
        filters, model.encoder[1].weight.detach().reshape(3, 9).numpy()
    )
    dense = Autoencoder.dense(64, 5)
    weight, shape = _filters(dense.encoder, (8, 8))
    assert shape == (8, 8) and weight.shape == (5, 64)
    assert _filters(dense.encoder, None) is None
    assert _image_shape({"data": {"image_shape": [28, 28, 1]}}, 784) == (28, 28)
    assert _image_shape({"architecture": {"input_shape": [1, 8, 8]}}, 64) == (8, 8)
    assert _image_shape({"data": {"image_shape": [3, 8, 8]}}, 192) is None
    assert _image_shape({"data": {"image_shape": None}}, 64) is None


def test_report_of_conv_run_shows_kernels(trained, tmp_path):
    """A run folder holding a conv autoencoder (built by hand: train is dense-only)."""
    from contractive import runs

    run = tmp_path / "conv"
    run.mkdir()
    model = Autoencoder.conv((1, 8, 8), 4, 3, padding=1)
    config = runs.read_config(trained / "ae")
    runs.write_config(run, {**config, "architecture": model.architecture})
    runs.save_model(run, model, runs.load(trained / "ae").scaler)
    (run / "metrics.jsonl").write_text((trained / "ae" / "metrics.jsonl").read_text())
    path = write_report([run], max_samples=30)
    for name in RUN_FIGURES:
        _read_png(run / FIGURES / f"{name}.png")
    assert "| encoder | conv 1x8x8, 4 channels, kernel 3" in path.read_text()
