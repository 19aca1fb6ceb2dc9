"""Reading rows of (possibly memory-mapped) arrays batch by batch.

The training loop and the front ends read data through ``iter_batches``: it
takes any row-indexable array (an in-memory array, an ``np.memmap``, or
``contractive.data.ShardedArray``) and keeps the resident memory of a pass over
a memory-mapped file bounded with ``release_pages``.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: Bytes of rows read from a memory map between two `release_pages` calls while
#: streaming. Pages of a mapping that were touched count in the resident set
#: (RSS) until unmapped; the kernel maps up to 16 neighbouring pages per fault,
#: so this bounds the mapped part of a file at about 16 x this many bytes.
_RELEASE_BYTES = 16 * 2**20


def iter_batches(
    x: Any,
    indices: np.ndarray,
    batch_size: int | Sequence[int],
    scaler: Any = None,
) -> Iterator[np.ndarray]:
    """Yield float32 batches ``x[indices[i:i + batch_size]]``, scaled, in order.

    Each batch's rows are read in sorted order (sequential on a memory map) and put
    back in the order of ``indices``. Batches are fresh arrays, safe to modify.

    Parameters
    ----------
    x : array of shape (n_samples, n_features), np.memmap or ShardedArray
    indices : int array of shape (n_rows,)
    batch_size : rows per batch (the last batch may be smaller), or the size of
        each batch in turn (sizes >= 0 summing to ``len(indices)``)

    Yields
    ------
    batch : float32 array of shape (<= batch_size, n_features)
    """
    indices = np.asarray(indices, dtype=np.int64)
    if isinstance(batch_size, (int, np.integer)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, len(indices), int(batch_size))
        stops = [min(s + int(batch_size), len(indices)) for s in starts]
    else:
        stops = np.cumsum(np.asarray(batch_size, dtype=np.int64)).tolist()
        if stops and (stops[-1] != len(indices) or min(batch_size) < 0):
            raise ValueError("batch sizes must be >= 0 and sum to len(indices)")
        starts = [0, *stops[:-1]]
    row_bytes = int(x.shape[1]) * np.dtype(x.dtype).itemsize
    unreleased = 0  # bytes read from a memory map since the last release
    for start, stop in zip(starts, stops, strict=True):
        idx = indices[start:stop]
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), x.shape[1]), x.dtype)
        rows[order] = x[idx[order]]
        unreleased += len(idx) * row_bytes
        if unreleased >= _RELEASE_BYTES:
            release_pages(x)
            unreleased = 0
        yield scaler.transform(rows) if scaler else rows.astype(np.float32, copy=False)
    release_pages(x)


def release_pages(x: object) -> None:
    """Unmap the pages of a memory-mapped array from this process (keep the file).

    Reading rows of an ``np.memmap`` maps the pages it touches into the process,
    where they count in its resident memory (RSS) until unmapped, so one pass over
    a file larger than memory would make the process as large as the file. This
    drops those mappings (``madvise(MADV_DONTNEED)`` on the read-only mapping);
    the data stays valid and later reads fault the pages in again, from the page
    cache when they are still there. Does nothing for in-memory arrays or where
    the platform lacks ``madvise``.

    Parameters
    ----------
    x : np.memmap (or a view of one), ShardedArray, or any array
    """
    if hasattr(x, "release_pages"):  # e.g. contractive.data.ShardedArray
        x.release_pages()
        return
    mapping = getattr(x, "_mmap", None)  # set by np.memmap on itself and its views
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if not isinstance(mapping, mmap.mmap) or advice is None or mapping.closed:
        return
    try:
        mapping.madvise(advice)
    except (OSError, ValueError):  # nothing to release, or not supported here
        pass
