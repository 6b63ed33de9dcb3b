"""Exact first-round ranking by inner product, tiled over queries and database rows so memory stays bounded.

Narrow, faiss-like interface: float32 arrays in, (scores, ids) arrays out.  The inputs are only sliced by rows
(``x[start:stop]``, ``x.shape``), so they may be numpy arrays, h5py datasets or a :class:`RowStack` of several:
a database larger than memory (R1M: 1M x 2048 float32, 8 GB) is read from its file one tile at a time.

Order: descending score, equal scores by ascending database index, whatever the tile sizes.

Tiling.  Queries are taken ``query_rows`` at a time, and each such block is scored against the database
``db_rows`` rows at a time:

* for a top-k (k < N) every database tile is merged into a running top-k of the block.  A (score, id) pair is
  held as one int64 key whose integer order is the ranking order (:func:`_keys`), so a merge is one
  ``torch.topk`` and ties need no special case.  A tile only offers the scores above each query's current k-th
  score (an equal score loses the tie: its id is higher than every id kept), at most k per query: a tile with
  more is split in halves, the left one raising the threshold for the right one (only the first tile, with no
  threshold yet, goes through ``torch.topk`` whole).  The scores above a query's threshold are soon a small
  part of a tile, so the selection (a comparison, a ``nonzero``, a merge of at most k candidates) costs little
  beside the matrix product;
* for the whole ranking (k = N, which the test stage needs for exact AP) the block's score rows [query_rows, N]
  are filled tile by tile and sorted once.

Memory.  Besides its results (12 bytes per returned entry: float32 score, int64 id; the budget of
:func:`self_graph` and :func:`self_neighbours` leaves them out), the search needs for one tile of q query rows and
n database rows, in bytes, with D the dimension and N the database size::

    working(q, n) = 4·D·q + 8·D·n + 5·q·n + state·q
    state = 128·k   if k < N   (running keys, candidates, merge buffers)
            16·N    if k = N   (the score row and its sorted copy)

(the query block; the database tile as read and as assembled from several files; the tile's scores and their
``> threshold`` mask; the per-query state).  :func:`tile_sizes` takes q = min(Q, 4096), halved until a database
tile of at least min(q, N) rows fits, and n = min(N, 16384, (budget - results - q·(4D + state)) / (8D + 5q)).
Beyond 4096 x 16384 the matrix product is no faster, and the first tile (selected whole by ``torch.topk``) costs
more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch

QUERY_TILE_ROWS = 4096  # largest query block
DB_TILE_ROWS = 16384  # largest database tile
DEFAULT_MEMORY_BYTES = 4 * 2**30
RESULT_BYTES = 12  # float32 score + int64 id per returned entry

_ID_MASK = 2**32 - 1  # the low 32 bits of a key hold 2**32 - 1 - id
_EMPTY = torch.iinfo(torch.int64).min  # below every key of a real score: a free slot of a running top-k


class Rows(Protocol):
    """What the search reads: a [rows, D] shape and float32 row slices (numpy array, h5py dataset, RowStack)."""

    shape: tuple[int, ...]

    def __getitem__(self, rows: slice) -> np.ndarray: ...


class RowStack:
    """Several [N_i, D] row sources seen as one [sum N_i, D] array, read slice by slice and never concatenated.

    Row ``offsets[i] + j`` is row ``j`` of ``parts[i]``: a test database followed by distractors gives the
    distractors the ids they would have after a concatenation.
    """

    def __init__(self, parts: Sequence[Rows]):
        dims = {part.shape[1] for part in parts}
        if len(dims) != 1:
            raise ValueError(f"row sources of different dimensions: {sorted(dims)}")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [part.shape[0] for part in parts]).tolist()
        self.shape = (self.offsets[-1], dims.pop())

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("RowStack reads contiguous row ranges only")
        pieces = [
            part[max(start, first) - first : min(stop, end) - first]
            for part, first, end in zip(self.parts, self.offsets[:-1], self.offsets[1:], strict=True)
            if first < stop and start < end
        ]
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.empty((0, self.shape[1]), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# tile sizes from the memory budget


def _state_bytes(n_db: int, k: int) -> int:
    """Per-query working memory: the full score row and its sorted copy, or the running top-k's buffers."""
    return 16 * n_db if k >= n_db else 128 * k


def working_bytes(query_rows: int, db_rows: int, n_db: int, dim: int, k: int) -> int:
    """Working memory (bytes) of one tile of ``query_rows`` x ``db_rows``: the model of the module docstring."""
    state = _state_bytes(n_db, k)
    return 4 * dim * query_rows + 8 * dim * db_rows + 5 * query_rows * db_rows + state * query_rows


def tile_sizes(
    n_queries: int, n_db: int, dim: int, k: int, memory_bytes: int, result_bytes: int = RESULT_BYTES
) -> tuple[int, int]:
    """(query rows, database rows) per tile such that results + one tile fit in ``memory_bytes``.

    The query block is min(Q, QUERY_TILE_ROWS), halved until a database tile of at least min(block, N) rows fits;
    the database tile is then the largest that fits, at most min(N, DB_TILE_ROWS).  ``result_bytes``: bytes the
    caller keeps per result entry, [Q, k] of them.
    """
    k = min(k, n_db)
    budget = memory_bytes - result_bytes * n_queries * k
    state = _state_bytes(n_db, k)
    query_rows = min(n_queries, QUERY_TILE_ROWS)
    while True:
        fitting_db_rows = (budget - query_rows * (4 * dim + state)) // (8 * dim + 5 * query_rows)
        db_rows = min(n_db, DB_TILE_ROWS, fitting_db_rows)
        if db_rows >= min(query_rows, n_db):
            return query_rows, db_rows
        if query_rows == 1:
            needed = result_bytes * n_queries * k + working_bytes(1, 1, n_db, dim, k)
            raise ValueError(
                f"a memory budget of {memory_bytes / 2**30:.3g} GiB cannot hold the {n_queries} x {k} results and "
                f"one tile; at least {needed / 2**30:.3g} GiB are needed"
            )
        query_rows = (query_rows + 1) // 2


# ----------------------------------------------------------------------------------------------------------------
# exact top-k by int64 keys


def _keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose integer order is the ranking order: higher score first, then lower id; same shape.

    High 32 bits: the float32 score's bits with the magnitude bits of negative scores flipped, so that signed
    integer order is float order (adding 0.0 first turns -0.0 into +0.0: the two compare equal as floats).
    Low 32 bits: 2**32 - 1 - id.  All keys differ, so ``torch.topk`` on keys is exact, ties included.
    """
    bits = (scores + 0.0).view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (ordered.to(torch.int64) << 32) | (_ID_MASK - ids)


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scores, int64 ids) of keys made by :func:`_keys`; same shape."""
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)  # the flip is its own inverse
    return bits.view(torch.float32), _ID_MASK - (keys & _ID_MASK)


class _RunningTopK:
    """The best k (score, id) pairs seen so far by each query of a block, merged in one database tile at a time.

    Tiles must come in increasing id order: a score equal to a query's k-th kept score then loses the tie.
    """

    def __init__(self, n_queries: int, k: int, device: torch.device):
        self.k = k
        self.keys = torch.full((n_queries, k), _EMPTY, dtype=torch.int64, device=device)  # [q, k], unordered
        self.threshold = torch.full((n_queries, 1), -torch.inf, device=device)  # [q, 1], the k-th kept score
        self.seen = 0  # database rows merged so far

    def add(self, scores: torch.Tensor, first_id: int) -> None:
        """Merge the scores [q, n] of database rows ``first_id`` ... ``first_id + n - 1``."""
        if self.seen < self.k < scores.shape[1]:  # no threshold yet: more than k candidates in every row
            candidates = self._best_of_tile(scores, first_id)
        else:
            candidates = self._keys_above(scores, first_id)
        if candidates is None:
            # some query has more than k scores above its threshold (in the tiles after the first): the left half
            # raises the threshold that prunes the right half; a half of at most k rows always fits
            half = scores.shape[1] // 2
            self.add(scores[:, :half], first_id)
            self.add(scores[:, half:], first_id + half)
            return
        self.seen += scores.shape[1]
        if candidates.shape[1] == 0:
            return
        self.keys = torch.topk(torch.cat([self.keys, candidates], dim=1), self.k, dim=1, sorted=False).values
        kth = self.keys.min(dim=1, keepdim=True).values
        self.threshold = torch.where(kth == _EMPTY, -torch.inf, _decode(kth)[0])

    def _keys_above(self, scores: torch.Tensor, first_id: int) -> torch.Tensor | None:
        """Keys [q, w] of the scores above each query's threshold, padded with free slots; None if w > k.

        Only those scores can enter: an equal one loses the tie, its id being higher than every id kept.
        """
        above = scores > self.threshold  # [q, n]
        if int(torch.count_nonzero(above)) > self.k * len(scores):
            return None
        rows, cols = above.nonzero(as_tuple=True)  # row-major: each query's columns in increasing order
        per_row = torch.bincount(rows, minlength=len(scores))
        width = int(per_row.max())
        if width > self.k:
            return None
        slots = torch.arange(len(rows), device=rows.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
        candidates = torch.full((len(scores), width), _EMPTY, dtype=torch.int64, device=scores.device)
        candidates[rows, slots] = _keys(scores[rows, cols], cols + first_id)
        return candidates

    def _best_of_tile(self, scores: torch.Tensor, first_id: int) -> torch.Tensor:
        """Keys [q, k] of each query's best k scores of the tile [q, n > k], equal scores cut at the lower ids."""
        values, cols = torch.topk(scores, self.k + 1, dim=1)
        # topk keeps any subset of a group of equal scores cut by the k-th position; a (k+1)-th score equal to
        # the k-th shows such a cut, and those queries (rare with real descriptors) are redone with a stable sort
        for row in (values[:, self.k - 1] == values[:, self.k]).nonzero().flatten().tolist():
            row_values, row_cols = torch.sort(scores[row], descending=True, stable=True)
            values[row], cols[row] = row_values[: self.k + 1], row_cols[: self.k + 1]
        return _keys(values[:, : self.k], cols[:, : self.k] + first_id)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [q, k] float32 (descending) and ids [q, k] int64."""
        return _decode(torch.sort(self.keys, dim=1, descending=True).values)


# ----------------------------------------------------------------------------------------------------------------
# search


def _read(rows: Rows, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` as a float32 tensor [stop - start, D] (from disk when ``rows`` is an h5py dataset; a
    slice, not a copy, when ``rows`` is already a tensor on ``device``)."""
    if isinstance(rows, torch.Tensor):
        return rows[start:stop].to(device)
    return torch.as_tensor(np.ascontiguousarray(rows[start:stop], dtype=np.float32), device=device)


def _top_k(block: torch.Tensor, db: Rows, k: int, db_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (k < N) of a query block [q, D] over the database, one tile of ``db_rows`` at a time: [q, k] x 2."""
    running = _RunningTopK(len(block), k, block.device)
    for start in range(0, db.shape[0], db_rows):
        running.add(block @ _read(db, start, start + db_rows, block.device).T, start)
    return running.result()


def _full_ranking(block: torch.Tensor, db: Rows, db_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole database ranked for a query block [q, D]: scores and ids [q, N]."""
    scores = torch.empty((len(block), db.shape[0]), device=block.device)
    for start in range(0, db.shape[0], db_rows):
        tile = _read(db, start, start + db_rows, block.device)
        scores[:, start : start + len(tile)] = block @ tile.T
    return torch.sort(scores, dim=1, descending=True, stable=True)


def _ranked_blocks(
    queries: Rows, db: Rows, k: int, tiles: tuple[int, int], device: torch.device
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(first query row, scores [q, k], ids [q, k]) of each block of ``tiles[0]`` queries."""
    query_rows, db_rows = tiles
    for start in range(0, queries.shape[0], query_rows):
        block = _read(queries, start, start + query_rows, device)
        yield start, *(_full_ranking(block, db, db_rows) if k == db.shape[0] else _top_k(block, db, k, db_rows))


def _check_shapes(queries: Rows, db: Rows) -> None:
    if queries.shape[1] != db.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the database {db.shape[1]}")
    if db.shape[0] > _ID_MASK:
        raise ValueError(f"{db.shape[0]} database rows: ids must fit in 32 bits")


def search(
    queries: Rows,
    db: Rows,
    k: int,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    tiles: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database rows by inner product for every query.

    Args:
        queries: [Q, D]; db: [N, D], float32; anything sliced by rows (numpy array, h5py dataset, RowStack).
        memory_bytes: bound on what the search allocates, results included (tile sizes follow from it).
        tiles: (query rows, database rows) per tile instead of those :func:`tile_sizes` derives.
    Returns:
        scores [Q, k] float32 (descending) and ids [Q, k] int64.  With k >= N this is the full ranking.
        Ties are broken by the lower database index, so results do not depend on the tiles.
    """
    _check_shapes(queries, db)
    n_queries, n_db = queries.shape[0], db.shape[0]
    k = min(k, n_db)
    tiles = tiles or tile_sizes(n_queries, n_db, db.shape[1], k, memory_bytes)
    scores = np.empty((n_queries, k), dtype=np.float32)
    ids = np.empty((n_queries, k), dtype=np.int64)
    for start, block_scores, block_ids in _ranked_blocks(queries, db, k, tiles, torch.device(device)):
        scores[start : start + len(block_scores)] = block_scores.cpu().numpy()
        ids[start : start + len(block_ids)] = block_ids.cpu().numpy()
    return scores, ids


def self_neighbours(
    features: Rows,
    k: int,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    tiles: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Top-``k`` neighbour lists of every row of ``features`` [N, D] among all rows, the row itself at position 0.

    The authors rely on self-similarity 1 putting the image first; an exact duplicate could displace it, so the
    image is placed first explicitly, followed by the k - 1 best other rows.  ``memory_bytes`` and ``tiles`` as
    for :func:`self_graph`, which computes them.
    Returns ids [N, k] int64.
    """
    return self_graph(features, k, 0, memory_bytes, tiles, device).near_ids


class SelfGraph(NamedTuple):
    """Neighbour lists of every row among the rows themselves (:func:`self_graph`)."""

    near_scores: np.ndarray  # [N, near] float32, descending after column 0 (the row itself: +inf)
    near_ids: np.ndarray  # [N, near] int64, the row itself first, then its most similar other rows
    far_scores: np.ndarray  # [N, far] float32, ascending
    far_ids: np.ndarray  # [N, far] int64, the least similar rows first


GRAPH_TILE_WIDTH = 1024  # graphs up to this width (near + far) are all tiled as one of this width


def graph_tiles(n: int, dim: int, width: int, memory_bytes: int) -> tuple[int, int]:
    """The tiles of :func:`self_graph` for N = ``n`` rows and ``width`` = near + far columns: the largest whose
    working memory (that of a search of width max(``width``, ``GRAPH_TILE_WIDTH``)) fits in ``memory_bytes``, so
    the same for every width up to ``GRAPH_TILE_WIDTH``; the lists themselves come on top of it."""
    return tile_sizes(n, n, dim, max(width, GRAPH_TILE_WIDTH), memory_bytes, result_bytes=0)


def self_graph(
    features: Rows,
    near: int,
    far: int = 0,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    tiles: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> SelfGraph:
    """For every row of ``features`` [N, D]: itself and its ``near`` - 1 most similar other rows, and its ``far``
    least similar rows (what :func:`search` finds with the negated rows as queries), from one product per tile.

    Order as :func:`search` (equal scores by the lower index); the row itself is placed first as in
    :func:`self_neighbours`.  Every graph of width near + far <= ``GRAPH_TILE_WIDTH`` has the tiles of that
    width, so its scores are the same products whatever its width, and a narrower graph is exactly the first
    columns of a wider one: a method reading the first k columns of a graph built once for several methods ranks
    as if it had built its own (csa_rerank.graph).  ``memory_bytes`` bounds the working memory of a tile
    (:func:`graph_tiles`); the lists, 12 bytes an entry, come on top.  ``tiles`` as for :func:`search`.
    """
    n = features.shape[0]
    near, far = min(near, n), min(far, n)
    query_rows, db_rows = tiles or graph_tiles(n, features.shape[1], near + far, memory_bytes)
    graph = SelfGraph(
        np.empty((n, near), np.float32), np.empty((n, near), np.int64), np.empty((n, far), np.float32),
        np.empty((n, far), np.int64),
    )  # fmt: skip
    device = torch.device(device)
    for start in range(0, n, query_rows):
        block = _read(features, start, start + query_rows, device)
        nearest = _RunningTopK(len(block), near, device)
        farthest = _RunningTopK(len(block), far, device) if far else None
        for first in range(0, n, db_rows):
            scores = block @ _read(features, first, first + db_rows, device).T
            nearest.add(scores, first)
            if farthest:  # -(x·y) is exactly (-x)·y: the lists a search with the negated rows as queries finds
                farthest.add(scores.neg_(), first)
        rows = slice(start, start + len(block))
        graph.near_scores[rows], graph.near_ids[rows] = (t.cpu().numpy() for t in self_first(*nearest.result(), start))
        if farthest:
            far_scores, graph.far_ids[rows] = (t.cpu().numpy() for t in farthest.result())
            graph.far_scores[rows] = -far_scores
    return graph


def self_first(scores: torch.Tensor, ids: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k lists (scores, ids) [q, k] of rows ``start``, ``start + 1``, ... of a set among that set, each row
    itself moved first (score +inf): dropped where ranked, else the last column dropped, so k - 1 others remain."""
    rows = torch.arange(start, start + len(ids), device=ids.device)
    self_ranked = ids == rows[:, None]  # [q, k], at most one True per row
    drop = self_ranked.clone()
    drop[:, -1] |= ~self_ranked.any(dim=1)
    others = (len(ids), ids.shape[1] - 1)
    first_scores = torch.full((len(ids), 1), torch.inf, device=scores.device)
    return (
        torch.cat([first_scores, scores[~drop].view(others)], dim=1),
        torch.cat([rows[:, None], ids[~drop].view(others)], dim=1),
    )
