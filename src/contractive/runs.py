"""Run folders: config, weights, metrics, checkpoints and summary on disk.

Layout of a run folder::

    config.json          every hyperparameter, the data source and its sha256,
                         library versions (written before training starts)
    metrics.jsonl        one JSON object per epoch, appended as training goes
    checkpoints/
      checkpoint.json    pointer to the latest checkpoint, with its sha256
      ckpt-000012.safetensors
    model.safetensors    final weights and the input scaler (tensors + metadata)
    summary.json         final metrics and the sha256 of model.safetensors

Safety: nothing here unpickles. Tensors go through safetensors, everything else
through JSON; a file whose bytes do not match the sha256 recorded for it, or that
safetensors cannot parse, raises ``RunError`` (a ``ValueError``) with one line.
Every write is atomic: a temporary file in the same folder, flushed and fsynced,
then ``os.replace`` and an fsync of the folder. A checkpoint file is written in
full before the pointer that names it, so a crash at any moment leaves the
previous pointer, and the checkpoint it names, valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from contractive.modules import Autoencoder

CONFIG = "config.json"
MODEL = "model.safetensors"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
POINTER = "checkpoint.json"
MODEL_FORMAT = "contractive.model/1"
CHECKPOINT_FORMAT = "contractive.checkpoint/1"


class RunError(ValueError):
    """A run folder or one of its files is missing, unreadable or tampered with."""


# ------------------------------------------------------------------ atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one.

    Temporary file in the same folder, flush + fsync, ``os.replace``, fsync of
    the folder (so the rename itself survives a power cut).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``atomic_write_bytes`` of ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())


def _fsync_dir(folder: Path) -> None:
    if sys.platform.startswith("win"):
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, or raise ``RunError`` naming ``what`` and ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {what} {path}: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunError(f"{what} {path} is not valid JSON ({err})") from None


def _read_bytes(path: Path, what: str, sha256: str | None = None) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RunError(f"{what} not found: {path}") from None
    except OSError as err:
        raise RunError(f"cannot read {what} {path}: {err.strerror}") from None
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise RunError(
            f"{what} {path} is corrupt or was modified: its sha256 does not match "
            "the one recorded when it was written"
        )
    return data


def _parse_safetensors(data: bytes, path: Path, what: str) -> tuple[dict, dict]:
    """Tensors and metadata of a safetensors blob; RunError if malformed."""
    try:
        tensors = safetensors.torch.load(data)
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except (SafetensorError, struct.error, ValueError) as err:
        raise RunError(f"{what} {path} is truncated or corrupt ({err})") from None
    metadata = header.get("__metadata__") or {}
    return tensors, metadata


# ------------------------------------------------------------------ run folder


def check_new_run_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check that a new run can be written to ``path`` without creating anything.

    Raises ``RunError`` when ``path`` is a file, a non-empty folder that is not a
    run folder, a run folder (unless ``overwrite``: only a run folder is ever
    emptied), or when its nearest existing parent is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunError(f"output path {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not (path / CONFIG).is_file():
            raise RunError(
                f"output folder {str(path)!r} is not empty and not a run folder; "
                "choose another --out"
            )
        if not overwrite:
            raise RunError(
                f"output folder {str(path)!r} is not empty; pass --resume to "
                "continue that run or --overwrite to replace it"
            )
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"output folder {str(path)!r} is not writable")
    return path


def create_run_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Create (or, with ``overwrite``, empty) a run folder; returns its path."""
    path = check_new_run_dir(path, overwrite=overwrite)
    if path.is_dir() and overwrite:
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / CHECKPOINTS).mkdir(exist_ok=True)
    return path


def check_run_dir(path: str | os.PathLike[str]) -> Path:
    """The path of an existing run folder (one with a config.json), else RunError."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise RunError(f"no such run folder: {str(path)!r}")
    if not (path / CONFIG).is_file():
        raise RunError(f"{str(path)!r} is not a run folder (no {CONFIG})")
    return path


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_json(run_dir / CONFIG, config)


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    run_dir = check_run_dir(run_dir)
    config = read_json(run_dir / CONFIG, "run config")
    if not isinstance(config, dict) or "architecture" not in config:
        raise RunError(f"run config {run_dir / CONFIG} lacks an 'architecture'")
    return config


def append_metrics(run_dir: Path, metrics: dict[str, float]) -> None:
    """Append one epoch's metrics as a JSON line (flushed and fsynced)."""
    with open(run_dir / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(metrics, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The complete lines of metrics.jsonl (a torn last line is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash; nothing after it is trusted
    return rows


def truncate_metrics(run_dir: Path, n_epochs: int) -> None:
    """Keep the metrics of epochs 1..n_epochs only (before resuming)."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= n_epochs]
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_bytes(Path(run_dir) / METRICS, text.encode())


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_json(run_dir / SUMMARY, summary)


# ------------------------------------------------------------------ model


def save_model(run_dir: Path, model: Autoencoder, scaler: Any) -> str:
    """Write model.safetensors (weights + scaler); returns its sha256.

    Tensors ``model.<state_dict key>``, ``scaler.offset`` and ``scaler.scale``;
    metadata: the format, the architecture (JSON) and the scaler kind.
    """
    tensors = {f"model.{k}": _cpu(v) for k, v in model.state_dict().items()}
    tensors.update(
        {
            f"scaler.{k}": torch.from_numpy(np.ascontiguousarray(v))
            for k, v in scaler.state_dict().items()
        }
    )
    metadata = {
        "format": MODEL_FORMAT,
        "architecture": json.dumps(model.architecture, sort_keys=True),
        "scaler_kind": scaler.kind,
    }
    data = safetensors.torch.save(tensors, metadata=metadata)
    atomic_write_bytes(run_dir / MODEL, data)
    return sha256_bytes(data)


@dataclass
class LoadedModel:
    """A trained model with the input scaling it was trained with.

    Attributes
    ----------
    model : Autoencoder in eval mode
    scaler : contractive.data.Scaler, maps raw features to the model's inputs
    config : dict, the run's config.json
    run_dir : Path
    """

    model: Autoencoder
    scaler: Any
    config: dict[str, Any]
    run_dir: Path

    @property
    def n_features(self) -> int:
        return self.model.n_features

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _batches(self, x: Any, batch_size: int) -> Iterator[Tensor]:
        from contractive.data import iter_batches, validate_features

        validate_features(x, expected_n_features=self.n_features, name="input")
        rows = np.arange(x.shape[0])
        for batch in iter_batches(x, rows, batch_size, self.scaler):
            yield torch.from_numpy(batch).to(self.device)

    @torch.no_grad()
    def encode(self, x: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Codes of raw inputs: array (n_samples, n_features) -> (n_samples, H)."""
        codes = [
            self.model.encode(b).cpu().numpy() for b in self._batches(x, batch_size)
        ]
        return np.concatenate(codes)

    @torch.no_grad()
    def reconstruct(self, x: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Reconstructions in raw units, array of shape (n_samples, n_features)."""
        out = [
            self.scaler.inverse_transform(self.model(b).cpu().numpy())
            for b in self._batches(x, batch_size)
        ]
        return np.concatenate(out)


def load(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> LoadedModel:
    """Load the trained model of a run folder, with its scaler, in eval mode.

    Reads config.json and model.safetensors only (no pickle); checks the model
    file's sha256 against summary.json when that exists.

    Raises
    ------
    RunError (a ValueError)
        Missing folder or files, truncated or modified files, or weights that do
        not fit the recorded architecture.
    """
    from contractive.data import Scaler

    run_dir = check_run_dir(run_dir)
    config = read_config(run_dir)
    expected_sha = None
    if (run_dir / SUMMARY).exists():
        summary = read_json(run_dir / SUMMARY, "run summary")
        expected_sha = (summary.get("files") or {}).get(MODEL)
    elif not (run_dir / MODEL).exists():
        raise RunError(
            f"run {str(run_dir)!r} has no {MODEL}; it did not finish (resume it with "
            f"contractive train --out {run_dir} --resume)"
        )
    path = run_dir / MODEL
    tensors, metadata = _parse_safetensors(
        _read_bytes(path, "model file", expected_sha), path, "model file"
    )
    if metadata.get("format") != MODEL_FORMAT:
        raise RunError(f"{path} is not a contractive model file")
    try:
        arch = json.loads(metadata["architecture"])
    except (KeyError, json.JSONDecodeError):
        raise RunError(f"{path} has no readable architecture") from None
    if arch != config["architecture"]:
        raise RunError(f"{path} does not match the architecture in {CONFIG}")
    model = build_model(arch, device=device)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    load_weights(model, state, path)
    scaler_state = {
        k[7:]: v.numpy() for k, v in tensors.items() if k.startswith("scaler.")
    }
    try:
        scaler = Scaler.from_state_dict(metadata.get("scaler_kind", ""), scaler_state)
    except ValueError as err:
        raise RunError(f"{path}: bad scaler ({err})") from None
    model.eval()
    return LoadedModel(model, scaler, config, run_dir)


def build_model(
    architecture: Any, *, device: str | torch.device = "cpu"
) -> Autoencoder:
    """``Autoencoder.from_architecture`` with its errors as ``RunError``."""
    try:
        return Autoencoder.from_architecture(architecture, device=device)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise RunError(f"unusable architecture {architecture!r}: {err}") from None


def load_weights(model: Autoencoder, state: dict[str, Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise RunError(
            f"weights in {path} do not fit the model: {' '.join(first[:2])}"
        ) from None
    for name, p in model.state_dict().items():
        if not torch.isfinite(p).all():
            raise RunError(f"weights in {path} hold NaN or Inf values ({name})")


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", copy=True).contiguous()


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write a trainer ``state_dict()`` as a new checkpoint, then point to it.

    The tensors go in ``checkpoints/ckpt-<seq>.safetensors``; the rest of the
    structure (counters, history, optimizer hyperparameters) is JSON in that
    file's metadata. ``checkpoint.json`` is replaced last and names the file with
    its sha256; older checkpoint files are then removed.
    """
    folder = run_dir / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    pointer = folder / POINTER
    seq = 1
    if pointer.exists():
        seq = int(read_json(pointer, "checkpoint pointer").get("seq", 0)) + 1
    tensors: dict[str, Tensor] = {}
    structure = _split_tensors(state, tensors, "")
    metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(structure)}
    data = safetensors.torch.save(tensors, metadata=metadata)
    name = f"ckpt-{seq:06d}.safetensors"
    atomic_write_bytes(folder / name, data)
    counters = state.get("counters", {})
    atomic_write_json(
        pointer,
        {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "file": name,
            "sha256": sha256_bytes(data),
            "epoch": counters.get("epoch"),
            "step_in_epoch": counters.get("step_in_epoch"),
            "global_step": counters.get("global_step"),
        },
    )
    for old in folder.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return folder / name


def remove_stale_temp_files(run_dir: Path) -> None:
    """Delete temporary files a killed writer left behind (before resuming)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINTS / POINTER).is_file()


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The trainer state of the latest checkpoint (tensors on the CPU).

    Raises ``RunError`` when the pointer or the file it names is missing,
    truncated or modified.
    """
    folder = Path(run_dir) / CHECKPOINTS
    pointer = read_json(folder / POINTER, "checkpoint pointer")
    if not isinstance(pointer, dict) or pointer.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{folder / POINTER} is not a contractive checkpoint pointer")
    name = str(pointer.get("file", ""))
    if Path(name).name != name or not name.endswith(".safetensors"):
        raise RunError(f"{folder / POINTER} names an invalid file {name!r}")
    path = folder / name
    data = _read_bytes(path, "checkpoint", str(pointer.get("sha256")))
    tensors, metadata = _parse_safetensors(data, path, "checkpoint")
    try:
        structure = json.loads(metadata["state"])
        return _join_tensors(structure, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"checkpoint {path} is malformed ({err})") from None


def _split_tensors(obj: Any, tensors: dict[str, Tensor], path: str) -> Any:
    """JSON-able structure of ``obj`` with tensors moved into ``tensors``.

    Tensors become ``{"__tensor__": key}``; dicts with non-string keys (optimizer
    state is keyed by int) become ``{"__items__": [[key, value], ...]}``; tuples
    ``{"__tuple__": [...]}``.
    """
    if isinstance(obj, Tensor):
        key = path or "tensor"
        tensors[key] = _cpu(obj)
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {
                k: _split_tensors(v, tensors, f"{path}/{k}") for k, v in obj.items()
            }
        return {
            "__items__": [
                [k, _split_tensors(v, tensors, f"{path}/{k}")] for k, v in obj.items()
            ]
        }
    if isinstance(obj, tuple):
        return {
            "__tuple__": [
                _split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)
            ]
        }
    if isinstance(obj, list):
        return [_split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint ({path})")


def _join_tensors(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of ``_split_tensors``."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: _join_tensors(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        return {k: _join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj
