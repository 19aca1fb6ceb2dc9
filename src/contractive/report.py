"""Reports of trained runs: PNG figures and a markdown index, for one run or several.

One run::

    <run>/figures/training_curves.png   per-epoch metrics from metrics.jsonl
    <run>/figures/filters.png           first-layer filters (image data or conv)
    <run>/figures/reconstructions.png   evaluation inputs above their reconstructions
    <run>/figures/spectrum.png          mean singular values of J_f(x), log scale
    <run>/figures/contraction.png       contraction ratio against input distance
    <run>/figures/tangents.png          leading Jacobian tangents of a few samples
    <run>/report.md                     configuration, final metrics, analysis, figures

Several runs: each gets its own report as above, and a comparison folder gets
``training_curves.png``, ``spectrum.png`` and ``contraction.png`` with the runs
overlaid, and a ``report.md`` with one row per run.

Every figure is drawn from the run's evaluation rows (its held-out test split,
re-made from the stored seed, as ``contractive evaluate`` does), scaled as in
training and capped to ``max_samples`` rows drawn from a fixed seed, so the
numbers in the report are those ``contractive evaluate`` prints under
``"analysis"``. Figures render headless (``contractive.plots`` draws on Agg).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contractive import analysis, plots, runs
from contractive.experiment import (
    ANALYSIS_MAX_SAMPLES,
    analysis_metrics,
    evaluation_data,
    resolve_device,
)

__all__ = [
    "FIGURES",
    "REPORT",
    "RunAnalysis",
    "analyse_run",
    "write_comparison",
    "write_report",
    "write_run_report",
]

FIGURES = "figures"
REPORT = "report.md"
#: Radii of the contraction curves, log-spaced from 1e-3 to 1 times the data scale.
N_RADII = 12
#: Random directions per sample for the contraction curves.
N_DIRECTIONS = 4
N_RECONSTRUCTIONS = 10
N_TANGENT_SAMPLES = 4
N_TANGENTS = 5
SEED = 0

#: What each figure shows, in the order of the report.
FIGURE_CAPTIONS = {
    "training_curves": "Training curves: each logged term per epoch, training "
    "(solid) and validation (dashed).",
    "filters": "Encoder filters: the first layer's weights (rows of W, or the "
    "convolution kernels) as images, each scaled to its own range.",
    "reconstructions": "Evaluation inputs (top) above their reconstructions "
    "(bottom), in the model's scaled input units.",
    "spectrum": "Mean singular values of the encoder Jacobian J_f(x), sorted, "
    "log scale: a contractive encoder keeps a few large values (directions along "
    "the data) and a fast-falling tail.",
    "contraction": "Contraction ratio ‖f(x + r u) − f(x)‖ / r against the input "
    "distance r (random unit directions u): below 1 the encoder contracts.",
    "tangents": "Tangent directions: each row is a sample and the leading right "
    "singular vectors of J_f(x) (red positive, blue negative), titled by their "
    "singular values.",
}

_ANALYSIS_LABELS = {
    "mean_jacobian_norm": "exact mean ‖J_f(x)‖_F",
    "largest": "largest singular value s_1",
    "effective_rank": "effective rank of the spectrum",
    "stable_rank": "stable rank ‖J‖_F² / ‖J‖_2²",
    "n_above_1pct": "singular values above 1% of s_1",
    "ratio_10": "s_10 / s_1",
    "data_scale": "data scale (median distance to the mean)",
}

_SUMMARY_LABELS = {
    "reconstruction_error": "reconstruction error (sum sq., per sample)",
    "jacobian_norm": "mean ‖J_f(x)‖_F",
    "probe_accuracy_codes": "linear probe accuracy, codes",
    "probe_accuracy_inputs": "linear probe accuracy, inputs",
    "best_val_loss": "best validation loss",
}


@dataclass
class RunAnalysis:
    """A trained run and what its report shows.

    Attributes
    ----------
    run_dir : Path
    label : str, the run's name in figures and tables
    loaded : contractive.runs.LoadedModel
    summary : dict, summary.json (empty when missing)
    history : list of dict, metrics.jsonl
    x : ndarray of shape (n_samples, n_features), scaled evaluation inputs
    image_shape : (height, width), or None when the inputs are not 2-D images
    numbers : dict, ``contractive.experiment.analysis_metrics``
    spectrum : ndarray of shape (k,), mean Jacobian singular values, descending
    radii, ratios : ndarrays of shape (N_RADII,), the contraction curve
    """

    run_dir: Path
    label: str
    loaded: runs.LoadedModel
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    x: np.ndarray
    image_shape: tuple[int, int] | None
    numbers: dict[str, float]
    spectrum: np.ndarray
    radii: np.ndarray
    ratios: np.ndarray

    @property
    def config(self) -> dict[str, Any]:
        return self.loaded.config


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def write_report(
    run_dirs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
    max_samples: int | None = ANALYSIS_MAX_SAMPLES,
) -> Path:
    """Write the report of one run, or of several runs and their comparison.

    Parameters
    ----------
    run_dirs : sequence of paths
        Run folders (each with config.json and model.safetensors).
    out : path, optional
        Only with several runs: the comparison folder. Default:
        ``<parent of the first run>/report-<run names>``.
    device : str
        Where the models run for the analysis.
    max_samples : int or None
        Evaluation rows used for Jacobians, contraction and figures.

    Returns
    -------
    Path
        The report.md written: ``<run>/report.md`` for one run, else
        ``<out>/report.md``.

    Raises
    ------
    ValueError
        No run given, a run given twice, a folder that is not a finished run,
        ``out`` with one run, or ``out`` naming a file or a run folder.
    """
    paths = [runs.check_run_dir(path) for path in run_dirs]
    if not paths:
        raise ValueError("report needs at least one run folder")
    resolved = [path.resolve() for path in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError("a run folder is given twice")
    if len(paths) == 1 and out is not None:
        raise ValueError(
            "--out is for comparing several runs; one run's report goes "
            "into its own folder"
        )
    for path in paths:  # fail before any work, not after the first run's report
        if not (path / runs.MODEL).is_file():
            raise runs.RunError(
                f"run {str(path)!r} has no {runs.MODEL}; it did not finish"
            )
    labels = _labels(paths)
    target = None if len(paths) == 1 else _comparison_dir(paths, labels, out)
    analyses = [
        analyse_run(path, label=label, device=device, max_samples=max_samples)
        for path, label in zip(paths, labels, strict=True)
    ]
    reports = [write_run_report(a) for a in analyses]
    if target is None:
        return reports[0]
    return write_comparison(analyses, reports, target)


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names; parent/name where names repeat, then a counter if needed."""
    names = [path.name or str(path) for path in paths]
    if len(set(names)) == len(names):
        return names
    names = [f"{path.resolve().parent.name}/{path.name}" for path in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{name} ({i})" for i, name in enumerate(names, start=1)]


def _comparison_dir(
    paths: Sequence[Path], labels: Sequence[str], out: str | os.PathLike[str] | None
) -> Path:
    if out is None:
        safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", label) for label in labels]
        name = "report-" + "-".join(safe)
        if len(name) > 80:
            name = f"report-{safe[0][:40]}-and-{len(safe) - 1}-more"
        target = paths[0].resolve().parent / name
    else:
        target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {str(target)!r} is a file, not a folder")
    if (target / runs.CONFIG).exists():
        raise ValueError(f"--out {str(target)!r} is a run folder; pick another folder")
    return target


# --------------------------------------------------------------------------------------
# Analysis of one run
# --------------------------------------------------------------------------------------


def analyse_run(
    run_dir: str | os.PathLike[str],
    *,
    label: str | None = None,
    device: str = "cpu",
    max_samples: int | None = ANALYSIS_MAX_SAMPLES,
) -> RunAnalysis:
    """Load a run, re-make its evaluation rows and compute what its report shows.

    Parameters
    ----------
    run_dir : path of a finished run folder
    label : str, optional, defaults to the folder name
    device : str
    max_samples : int or None, evaluation rows used (a seeded subset)

    Returns
    -------
    RunAnalysis
    """
    loaded = runs.load(run_dir, device=str(resolve_device(device)))
    data = evaluation_data(loaded)
    x = data.scaled_inputs(loaded.scaler, max_rows=max_samples, seed=SEED)
    encoder = loaded.model.encoder
    radii = analysis.default_radii(x, N_RADII)
    ratios = analysis.contraction_ratio_curve(
        encoder,
        x,
        radii,
        n_directions=N_DIRECTIONS,
        generator=torch.Generator().manual_seed(SEED),
    )
    summary_path = loaded.run_dir / runs.SUMMARY
    return RunAnalysis(
        run_dir=loaded.run_dir,
        label=label or loaded.run_dir.name,
        loaded=loaded,
        summary=runs.read_json(summary_path, "run summary")
        if summary_path.exists()
        else {},
        history=runs.read_metrics(loaded.run_dir),
        x=x,
        image_shape=_image_shape(loaded.config, x.shape[1]),
        numbers=analysis_metrics(
            loaded.model, data, loaded.scaler, max_samples=max_samples, seed=SEED
        ),
        spectrum=analysis.mean_singular_spectrum(encoder, x),
        radii=radii,
        ratios=ratios,
    )


def _image_shape(config: dict[str, Any], n_features: int) -> tuple[int, int] | None:
    """(height, width) of the inputs, from the data record or a conv architecture.

    Size-1 axes (a single channel) are dropped; anything not 2-D is None.
    """
    candidates = [
        (config.get("data") or {}).get("image_shape"),
        (config.get("architecture") or {}).get("input_shape"),
    ]
    for shape in candidates:
        if not shape:
            continue
        dims = tuple(int(d) for d in shape if int(d) != 1)
        if len(dims) == 2 and math.prod(dims) == n_features:
            return dims[0], dims[1]
    return None


def _first_layer(encoder: nn.Module) -> nn.Module | None:
    """The first ``nn.Linear`` or convolution inside the encoder."""
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            return module
    return None


def _filters(
    encoder: nn.Module, image_shape: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """First-layer filters as flat images and their shape, when they are images.

    Dense: the rows of W (n_units, height * width) on image data. Conv (1-D or
    2-D): each kernel slice (out_channel, in_channel) as a (kh, kw) image.
    """
    layer = _first_layer(encoder)
    if layer is None:
        return None
    weight = layer.weight.detach().cpu().numpy()
    if isinstance(layer, nn.Linear):
        if image_shape is None or weight.shape[1] != math.prod(image_shape):
            return None
        return weight, image_shape
    kernel = weight.shape[2:]
    if len(kernel) == 1:
        kernel = (1, kernel[0])
    if len(kernel) != 2:
        return None
    return weight.reshape(-1, kernel[0] * kernel[1]), (kernel[0], kernel[1])


# --------------------------------------------------------------------------------------
# Figures and markdown of one run
# --------------------------------------------------------------------------------------


def write_run_report(result: RunAnalysis) -> Path:
    """Write ``<run>/figures/*.png`` and ``<run>/report.md``; returns the latter."""
    figures = _run_figures(result, result.run_dir / FIGURES)
    text = _run_markdown(result, figures)
    path = result.run_dir / REPORT
    path.write_text(text, encoding="utf-8")
    return path


def _run_figures(result: RunAnalysis, folder: Path) -> dict[str, Path]:
    """Draw every figure that applies; name -> path."""
    label, encoder, x = result.label, result.loaded.model.encoder, result.x
    # Without a 2-D image shape, samples are drawn as 1 x n_features strips.
    shape = result.image_shape or (1, x.shape[1])
    written: dict[str, Path] = {}
    if result.history:
        written["training_curves"] = plots.plot_training_curves(
            {label: result.history}, folder / "training_curves.png"
        )
    filters = _filters(encoder, result.image_shape)
    if filters is not None:
        written["filters"] = plots.plot_filters(
            filters[0], filters[1], folder / "filters.png"
        )
    x_shown = x[:N_RECONSTRUCTIONS]
    written["reconstructions"] = plots.plot_reconstructions(
        x_shown, _reconstruct(result, x_shown), shape, folder / "reconstructions.png"
    )
    written["spectrum"] = plots.plot_spectra(
        {label: result.spectrum}, folder / "spectrum.png"
    )
    written["contraction"] = plots.plot_contraction_curves(
        {label: (result.radii, result.ratios)}, folder / "contraction.png"
    )
    x_tangent = x[:N_TANGENT_SAMPLES]
    k = min(N_TANGENTS, result.spectrum.size)
    written["tangents"] = plots.plot_tangents(
        x_tangent,
        analysis.tangent_directions(encoder, x_tangent, k),
        shape,
        folder / "tangents.png",
    )
    return written


def _reconstruct(result: RunAnalysis, x: np.ndarray) -> np.ndarray:
    model = result.loaded.model
    with torch.no_grad():
        x_hat = model(torch.from_numpy(x).to(result.loaded.device))
    return x_hat.reshape(x.shape[0], -1).cpu().numpy()


def _run_markdown(result: RunAnalysis, figures: dict[str, Path]) -> str:
    config, summary = result.config, result.summary
    lines = [
        f"# Report: {result.label}",
        "",
        f"Run folder `{result.run_dir}`, created {config.get('created', '?')}, "
        f"contractive {(config.get('versions') or {}).get('contractive', '?')}.",
        "",
        "## Configuration",
        "",
        *_table(("setting", "value"), _config_rows(config, summary)),
        "",
        f"## Final metrics ({summary.get('eval_split', 'test')} split, summary.json)",
        "",
    ]
    if summary:
        lines += _table(("metric", "value"), _summary_rows(summary))
    else:
        lines.append("No summary.json: the run did not finish.")
    lines += [
        "",
        f"## Analysis ({result.numbers['n_samples']} evaluation samples)",
        "",
        "As `contractive evaluate` reports under `analysis`; exact Jacobians, "
        "inputs scaled as in training.",
        "",
        *_table(("quantity", "value"), _analysis_rows(result.numbers)),
        "",
        "## Figures",
        "",
    ]
    for name, path in figures.items():
        relative = path.relative_to(result.run_dir).as_posix()
        lines += [f"![{name}]({relative})", "", FIGURE_CAPTIONS[name], ""]
    if "filters" not in figures:
        lines += ["No filters figure: the first layer's weights are not images.", ""]
    if result.image_shape is None:
        lines += [
            "The inputs are not 2-D images: samples, reconstructions and tangents "
            f"are drawn as 1 x {result.x.shape[1]} strips.",
            "",
        ]
    return "\n".join(lines)


def _config_rows(config: dict[str, Any], summary: dict[str, Any]) -> list[tuple]:
    options = config.get("options") or {}
    data = config.get("data") or {}
    splits = config.get("splits") or {}
    train = config.get("train") or {}
    image = data.get("image_shape")
    rows = [
        (
            "data",
            f"{data.get('source', '?')}: {data.get('n_samples', '?')} samples x "
            f"{data.get('n_features', '?')} features"
            + (f", images {'x'.join(map(str, image))}" if image else ""),
        ),
        ("scaling", config.get("scaling", "?")),
        (
            "splits",
            f"train {splits.get('n_train', '?')}, val {splits.get('n_val', '?')}, "
            f"test {splits.get('n_test', '?')} (seed {splits.get('seed', '?')})",
        ),
        ("model", options.get("model", "?")),
        ("encoder", _describe_architecture(config.get("architecture") or {})),
        ("lambda", _fmt(_contraction_weight(config))),
    ]
    objective = config.get("objective") or {}
    if objective.get("higher_order"):
        rows.append(("gamma (CAE+H)", _fmt(objective["higher_order"])))
    if objective.get("corruption"):
        rows.append(
            (
                "corruption",
                f"{objective['corruption']} {_fmt(objective.get('corruption_level'))}",
            )
        )
    rows += [
        (
            "epochs",
            f"{_fmt(summary.get('epochs_trained'))} of {train.get('epochs', '?')}"
            f" (best {_fmt(summary.get('best_epoch'))}, stopped early: "
            f"{_fmt(summary.get('stopped_early'))})",
        ),
        (
            "optimisation",
            f"{train.get('optimizer', '?')}, lr {_fmt(train.get('lr'))}, batch "
            f"{train.get('batch_size', '?')}",
        ),
    ]
    return rows


def _describe_architecture(arch: dict[str, Any]) -> str:
    kind = arch.get("type", "?")
    if kind == "dense":
        sizes = " -> ".join(str(s) for s in arch.get("hidden_sizes", []))
        return (
            f"dense {arch.get('n_features', '?')} -> {sizes}, "
            f"{arch.get('activation', '?')}; decoder {arch.get('decoder', '?')}"
        )
    if kind == "conv":
        shape = "x".join(str(s) for s in arch.get("input_shape", []))
        return (
            f"conv {shape}, {arch.get('channels', '?')} channels, kernel "
            f"{arch.get('kernel_size', '?')}, stride {arch.get('stride', '?')}, "
            f"{arch.get('activation', '?')}; decoder {arch.get('decoder', '?')}"
        )
    return str(kind)


def _contraction_weight(config: dict[str, Any]) -> float | None:
    """lambda: of ||J_f||^2, or of ||J_{g o f}||^2 for rcae."""
    objective = config.get("objective") or {}
    if (config.get("options") or {}).get("model") == "rcae":
        return objective.get("reconstruction_contraction")
    return objective.get("contraction")


def _summary_rows(summary: dict[str, Any]) -> list[tuple]:
    rows = [("evaluation samples", _fmt(summary.get("n_eval")))]
    rows += [
        (label, _fmt(summary[key]))
        for key, label in _SUMMARY_LABELS.items()
        if summary.get(key) is not None
    ]
    return rows


def _analysis_rows(numbers: dict[str, float]) -> list[tuple]:
    rows = [(label, _fmt(numbers[key])) for key, label in _ANALYSIS_LABELS.items()]
    for key, value in numbers.items():
        if key.startswith("contraction_ratio_"):
            radius = key.removeprefix("contraction_ratio_")
            rows.append((f"contraction ratio at r = {radius} x scale", _fmt(value)))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table; '|' in cells is escaped."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


# --------------------------------------------------------------------------------------
# Comparison of several runs
# --------------------------------------------------------------------------------------


def write_comparison(
    results: Sequence[RunAnalysis], reports: Sequence[Path], out: Path
) -> Path:
    """Overlaid figures and a comparison table in ``out``; returns out/report.md."""
    folder = out / FIGURES
    figures: dict[str, Path] = {}
    histories = {r.label: r.history for r in results if r.history}
    if histories:
        figures["training_curves"] = plots.plot_training_curves(
            histories, folder / "training_curves.png"
        )
    figures["spectrum"] = plots.plot_spectra(
        {r.label: r.spectrum for r in results}, folder / "spectrum.png"
    )
    figures["contraction"] = plots.plot_contraction_curves(
        {r.label: (r.radii, r.ratios) for r in results}, folder / "contraction.png"
    )
    text = _comparison_markdown(results, reports, figures, out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    path.write_text(text, encoding="utf-8")
    return path


def _comparison_markdown(
    results: Sequence[RunAnalysis],
    reports: Sequence[Path],
    figures: dict[str, Path],
    out: Path,
) -> str:
    header = (
        "run",
        "data",
        "model",
        "encoder",
        "lambda",
        "epochs",
        "recon. error",
        "‖J_f‖_F",
        "probe (codes)",
        "s_1",
        "eff. rank",
        *(
            f"ratio @ {k.removeprefix('contraction_ratio_')}"
            for k in results[0].numbers
            if k.startswith("contraction_ratio_")
        ),
    )
    rows = []
    for result, report in zip(results, reports, strict=True):
        link = Path(os.path.relpath(report, out)).as_posix()
        numbers, summary, config = result.numbers, result.summary, result.config
        rows.append(
            (
                f"[{result.label}]({link})",
                (config.get("data") or {}).get("source", "?"),
                (config.get("options") or {}).get("model", "?"),
                _describe_architecture(config.get("architecture") or {}),
                _fmt(_contraction_weight(config)),
                _fmt(summary.get("epochs_trained")),
                _fmt(summary.get("reconstruction_error")),
                _fmt(numbers["mean_jacobian_norm"]),
                _fmt(summary.get("probe_accuracy_codes")),
                _fmt(numbers["largest"]),
                _fmt(numbers["effective_rank"]),
                *(
                    _fmt(v)
                    for k, v in numbers.items()
                    if k.startswith("contraction_ratio_")
                ),
            )
        )
    lines = [
        f"# Comparison of {len(results)} runs",
        "",
        "Reconstruction error and probe from each run's summary.json (test split); "
        "‖J_f‖_F, the spectrum and the contraction ratios from exact Jacobians on "
        "each run's evaluation rows. Each run's name links to its own report.",
        "",
        *_table(header, rows),
        "",
        "## Figures",
        "",
    ]
    for name, path in figures.items():
        relative = path.relative_to(out).as_posix()
        lines += [f"![{name}]({relative})", "", FIGURE_CAPTIONS[name], ""]
    return "\n".join(lines)
