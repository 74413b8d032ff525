"""Set-level metrics of a version, accumulated batch by batch (shard by shard) with bounded memory.

- **Near-duplicates** (:class:`NearDuplicates`): 64-bit perceptual hashes (``imagehash.phash``)
  within a Hamming distance; optionally ignoring pairs of the same group (variants of one source).
- **Memorisation** (:class:`ReferenceMatches`): outputs whose hash is that close to a reference
  (training) image's.
- **Variants differ** (:class:`VariantSpread`): img2img variants of one source must not be copies
  of each other (highest PSNR between two variants of a source).
- **Diversity and distribution distance**: :class:`augflow.models.feature_stats.FeatureStats`
  computes the :class:`DistributionReport` this module's checks read. It lives apart because it
  needs torch, and the hash-based checks above do not: a gate with nothing to compare against
  (``generate`` without a reference) never imports torch in the flow's process.

Memory: images are never kept (except the few variants of the sources of one shard); per row the
accumulators keep an 8-byte hash, a 24-byte row id and an 8-byte group key (40 MB per million
rows); features live in two reservoirs (``reservoir × num_features`` floats each) and in FID's
running sums (``num_features²`` doubles). Every accumulator has ``update(...)`` and
``compute()``; ``compute()`` may be called again after more updates.

Pure functions and classes: no Prefect, Ray or storage; phase 2 of issue 11 wires them into the gate.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from augflow.models.effects import as_rgb_array, psnr_db

ImageLike = Image.Image | np.ndarray

#: Default Hamming distance (of 64 bits) at or below which two images are near-duplicates.
#: Distinct LFW faces are ≥ 10 apart, distinct photo crops ≥ 14 (5th percentile); a re-encoded or
#: slightly edited copy is 0–4 (docs/quality-gate.md).
DEFAULT_MAX_HAMMING = 6
#: Below this many pairs a brute-force comparison is cheaper than indexing.
_BRUTE_FORCE_PAIRS = 20_000_000
#: Most hash comparisons the indexed search may make before falling back to a sample estimate.
_COMPARISON_BUDGET = 300_000_000
#: Hash pairs compared per vectorised step. Each step holds ~10 temporary arrays of this length
#: (8 bytes an element), so the step, not the set, bounds the search's memory: 100k random hashes
#: (68M candidate pairs) peak at 33 MB of numpy memory with 250k-pair steps, 75 MB with 1M and
#: ~240 MB with 4M (a spike in the flow's process once a version fills a step). Smaller steps are
#: also faster here (0.95 s against 1.8 s at 1M: the arrays stay in cache).
_BLOCK_PAIRS = 250_000
#: Rows a sample estimate draws.
_SAMPLE_ROWS = 2000
_MAX_EXAMPLES = 5


# --- perceptual hashes ---------------------------------------------------------------------------


def phash64(img: ImageLike) -> int:
    """The 64-bit DCT perceptual hash (``imagehash.phash``, hash_size 8) as an unsigned int."""
    import imagehash

    pil = img if isinstance(img, Image.Image) else Image.fromarray(as_rgb_array(img))
    bits = imagehash.phash(pil, hash_size=8).hash.ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phashes(images: Iterable[ImageLike]) -> np.ndarray:
    """uint64 array of :func:`phash64` of each image."""
    return np.array([phash64(im) for im in images], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances of broadcastable uint64 arrays."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _group_key(group: str | None) -> int:
    if group is None:
        return -1
    return int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "big") >> 1


class TooManyCandidates(RuntimeError):
    """The indexed near-pair search would compare more pairs than its budget allows."""


def near_pairs(
    a: np.ndarray,
    max_distance: int,
    b: np.ndarray | None = None,
    budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All index pairs (i, j) with Hamming(a[i], b[j]) ≤ ``max_distance`` and their distances.

    Within one set (``b`` None) only pairs i < j. Small inputs are compared exhaustively; larger
    ones by multi-index hashing: split the 64 bits into ``max_distance + 1`` chunks — two hashes
    that close agree exactly on at least one chunk (pigeonhole) — and compare only hashes that
    share a chunk value. Exact either way (tested against each other). Raises
    :class:`TooManyCandidates` when the index would need more than ``budget`` (default
    ``_COMPARISON_BUDGET``) comparisons — a large set of very similar, distinct hashes; callers
    then estimate from a sample.
    """
    a = np.asarray(a, dtype=np.uint64)
    within = b is None
    b = a if b is None else np.asarray(b, dtype=np.uint64)
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if len(a) * len(b) <= _BRUTE_FORCE_PAIRS:
        return _pairs_brute(a, b, max_distance, within)
    return _pairs_indexed(a, b, max_distance, within, budget or _COMPARISON_BUDGET)


def _pairs_brute(
    a: np.ndarray, b: np.ndarray, t: int, within: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ii, jj, dd = [], [], []
    step = max(1, _BLOCK_PAIRS // max(1, len(b)))
    for start in range(0, len(a), step):
        d = hamming(a[start : start + step, None], b[None, :])
        i, j = np.nonzero(d <= t)
        dist = d[i, j]
        i = i + start
        if within:
            keep = i < j
            i, j, dist = i[keep], j[keep], dist[keep]
        ii.append(i)
        jj.append(j)
        dd.append(dist)
    return np.concatenate(ii), np.concatenate(jj), np.concatenate(dd)


def _chunks(t: int) -> list[tuple[int, int]]:
    """(shift, width) of ``t + 1`` chunks covering 64 bits."""
    n = t + 1
    widths = [64 // n + (1 if k < 64 % n else 0) for k in range(n)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def _expand(counts: np.ndarray, block: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """For rows with ``counts[k]`` candidates each, yield (row, k-th candidate offset) arrays in
    blocks of about ``block`` pairs: a vectorised ``for row: for off in range(counts[row])``."""
    ends = np.cumsum(counts)
    start_row = 0
    while start_row < len(counts):
        base = ends[start_row - 1] if start_row else 0
        stop_row = int(np.searchsorted(ends, base + block, side="right"))
        stop_row = max(stop_row, start_row + 1)
        c = counts[start_row:stop_row]
        rows = np.repeat(np.arange(start_row, stop_row), c)
        first = np.cumsum(c) - c
        offsets = np.arange(int(c.sum())) - np.repeat(first, c)
        yield rows, offsets
        start_row = stop_row


def _pairs_indexed(
    a: np.ndarray, b: np.ndarray, t: int, within: bool, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    plans = []
    total = 0
    for shift, width in _chunks(t):
        mask = np.uint64((1 << width) - 1)
        kb = (b >> np.uint64(shift)) & mask
        order_b = np.argsort(kb, kind="stable")
        sorted_kb = kb[order_b]
        if within:
            # candidates of sorted position p: the later positions of its run of equal keys
            is_start = np.ones(len(sorted_kb), dtype=bool)
            is_start[1:] = sorted_kb[1:] != sorted_kb[:-1]
            starts = np.flatnonzero(is_start)
            sizes = np.diff(np.append(starts, len(sorted_kb)))
            run_end = np.repeat(starts + sizes, sizes)
            counts = run_end - 1 - np.arange(len(sorted_kb))
            lo = np.arange(len(sorted_kb)) + 1
        else:
            ka = (a >> np.uint64(shift)) & mask
            lo = np.searchsorted(sorted_kb, ka, side="left")
            counts = np.searchsorted(sorted_kb, ka, side="right") - lo
        total += int(counts.sum())
        if total > budget:
            raise TooManyCandidates(f"more than {budget} candidate pairs")
        plans.append((order_b, lo, counts))
    found: list[np.ndarray] = []
    nb = np.int64(len(b))
    for order_b, lo, counts in plans:
        for rows, offsets in _expand(counts, _BLOCK_PAIRS):
            j = order_b[lo[rows] + offsets]
            i = order_b[rows] if within else rows
            close = hamming(a[i], b[j]) <= t
            i, j = i[close], j[close]
            if within:
                i, j = np.minimum(i, j), np.maximum(i, j)
            found.append(i.astype(np.int64) * nb + j.astype(np.int64))
    keys = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    i, j = keys // nb, keys % nb
    return i, j, hamming(a[i], b[j])


class _RowStore:
    """Growing per-row arrays (hash, id, group key) in preallocated chunks: 40 bytes a row."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []

    def add(self, hashes: np.ndarray, ids: Sequence[str], groups: Sequence[str | None]) -> None:
        if not (len(hashes) == len(ids) == len(groups)):
            raise ValueError(
                f"{len(hashes)} hashes, {len(ids)} ids and {len(groups)} groups: need one each a row"
            )
        self._hashes.append(np.asarray(hashes, dtype=np.uint64))
        self._ids.append(np.array([str(i).encode() for i in ids], dtype="S"))
        self._groups.append(np.array([_group_key(g) for g in groups], dtype=np.int64))

    def __len__(self) -> int:
        return sum(len(h) for h in self._hashes)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._hashes:
            return np.zeros(0, np.uint64), np.zeros(0, "S1"), np.zeros(0, np.int64)
        h = np.concatenate(self._hashes)
        ids = np.concatenate(self._ids)
        g = np.concatenate(self._groups)
        # Compact, so repeated compute() calls and later updates do not re-concatenate.
        self._hashes, self._ids, self._groups = [h], [ids], [g]
        return h, ids, g


def _decode(ids: np.ndarray, idx: Iterable[int]) -> list[str]:
    return [ids[int(k)].decode() for k in idx]


# --- near-duplicates within a set ---------------------------------------------------------------


@dataclass
class DuplicateReport:
    """What :class:`NearDuplicates` found. ``duplicate_rows``: rows with a near-duplicate earlier
    in the set (a set of k copies counts k − 1); ``unique_fraction``: groups of mutually close
    images (connected components) per row, 1.0 when no two rows are close."""

    rows: int
    max_distance: int
    duplicate_rows: int
    duplicate_fraction: float
    unique_fraction: float
    #: False when the set was too large and self-similar for an exact search and the fractions
    #: are estimated from a sample of rows
    exact: bool = True
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NearDuplicates:
    """Near-duplicate rows of one set by perceptual hash; ``update`` per batch, then ``compute``.

    ``ignore_same_group``: pairs whose rows share a group (pass the source id for img2img, whose
    variants are meant to resemble each other) do not count; :class:`VariantSpread` checks those.
    """

    def __init__(self, max_distance: int = DEFAULT_MAX_HAMMING, ignore_same_group: bool = False):
        if not 0 <= max_distance < 32:
            raise ValueError(f"max_distance must be in 0..31 bits, got {max_distance}")
        self.max_distance = int(max_distance)
        self.ignore_same_group = ignore_same_group
        self._rows = _RowStore()

    def update(
        self,
        images: Sequence[ImageLike],
        ids: Sequence[str],
        groups: Sequence[str | None] | None = None,
    ) -> None:
        self.update_hashes(phashes(images), ids, groups)

    def update_hashes(
        self,
        hashes: Sequence[int] | np.ndarray,
        ids: Sequence[str],
        groups: Sequence[str | None] | None = None,
    ) -> None:
        """Add rows whose hashes were computed elsewhere (e.g. stored per row by the actor)."""
        h = np.asarray(hashes, dtype=np.uint64)
        self._rows.add(h, ids, groups if groups is not None else [None] * len(h))

    def compute(self) -> DuplicateReport:
        h, ids, groups = self._rows.arrays()
        n = len(h)
        if n == 0:
            return DuplicateReport(0, self.max_distance, 0, 0.0, 1.0, True)
        # Identical hashes first (O(n log n), also for a set of a million equal images), then
        # near pairs among the distinct values only.
        uniq, first, cls = np.unique(h, return_index=True, return_inverse=True)
        cls = cls.ravel()
        dup = self._exact_duplicates(cls, first, groups)
        exact = True
        try:
            u, v, _ = near_pairs(uniq, self.max_distance)
        except TooManyCandidates:
            u = v = np.zeros(0, dtype=np.int64)
            exact = False
        if len(u):
            # A class's first row duplicates the first row of a close class that came earlier.
            fu, fv = first[u], first[v]
            later = np.where(fu < fv, fv, fu)
            earlier = np.where(fu < fv, fu, fv)
            ok = np.ones(len(u), dtype=bool)
            if self.ignore_same_group:
                ok = (groups[later] != groups[earlier]) | (groups[later] < 0)
            dup[later[ok]] = True
        components = _components(len(uniq), u, v)
        if not exact:
            est = _sampled_duplicate_fraction(h, groups, self.max_distance, self.ignore_same_group)
            dup_rows = round(est * n)
            unique_fraction = 1.0 - est
        else:
            dup_rows = int(dup.sum())
            unique_fraction = components / n
        return DuplicateReport(
            rows=n,
            max_distance=self.max_distance,
            duplicate_rows=dup_rows,
            duplicate_fraction=dup_rows / n,
            unique_fraction=unique_fraction,
            exact=exact,
            examples=self._examples(h, ids, groups, dup),
        )

    def _exact_duplicates(
        self, cls: np.ndarray, first: np.ndarray, groups: np.ndarray
    ) -> np.ndarray:
        """Rows whose hash equals an earlier row's (of another group, if groups are ignored)."""
        n = len(cls)
        idx = np.arange(n)
        if not self.ignore_same_group:
            return idx != first[cls]
        first_group = groups[first[cls]]
        other = (groups != first_group) | (groups < 0)
        # earliest row of each class whose group differs from the class's first row's group
        alt = np.full(len(first), n, dtype=np.int64)
        np.minimum.at(alt, cls[other], idx[other])
        return (idx != first[cls]) & (other | (alt[cls] < idx))

    def _examples(
        self, h: np.ndarray, ids: np.ndarray, groups: np.ndarray, dup: np.ndarray
    ) -> list[dict[str, Any]]:
        out = []
        rows = np.nonzero(dup)[0][:_MAX_EXAMPLES]
        for r in rows:
            d = hamming(h[:r], h[r])
            if self.ignore_same_group and groups[r] >= 0:
                d = np.where(groups[:r] == groups[r], 99, d)
            k = int(np.argmin(d)) if r > 0 else -1
            if k < 0 or d[k] > self.max_distance:
                continue
            a, b = _decode(ids, (k, r))
            out.append({"row_id": b, "duplicate_of": a, "distance": int(d[k])})
        return out


def _components(n: int, i: np.ndarray, j: np.ndarray) -> int:
    """Connected components of n nodes joined by the edges (i, j)."""
    if n == 0:
        return 0
    if len(i) == 0:
        return n
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def _sampled_duplicate_fraction(
    h: np.ndarray, groups: np.ndarray, t: int, ignore_same_group: bool
) -> float:
    """Share of rows with a close earlier row, estimated from a seeded sample of rows."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(h), size=min(_SAMPLE_ROWS, len(h)), replace=False)
    hits = 0
    for r in rows:
        if r == 0:
            continue
        close = hamming(h[:r], h[r]) <= t
        if ignore_same_group and groups[r] >= 0:
            close &= groups[:r] != groups[r]
        hits += bool(close.any())
    return hits / len(rows)


# --- memorisation: outputs that copy reference images -------------------------------------------


@dataclass
class MemorisationReport:
    """Rows whose hash is within ``max_distance`` of some reference image's."""

    rows: int
    reference_images: int
    max_distance: int
    matched_rows: int
    matched_fraction: float
    exact: bool = True
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReferenceMatches:
    """Outputs that copy a reference (training) image. ``add_reference`` the reference set
    (streamed too), ``update`` the outputs, ``compute``."""

    def __init__(self, max_distance: int = DEFAULT_MAX_HAMMING) -> None:
        self.max_distance = int(max_distance)
        self._ref = _RowStore()
        self._rows = _RowStore()

    def add_reference(self, images: Sequence[ImageLike], ids: Sequence[str] | None = None) -> None:
        self.add_reference_hashes(phashes(images), ids)

    def add_reference_hashes(
        self, hashes: Sequence[int] | np.ndarray, ids: Sequence[str] | None = None
    ) -> None:
        h = np.asarray(hashes, dtype=np.uint64)
        start = len(self._ref)
        names = list(ids) if ids is not None else [f"reference#{start + k}" for k in range(len(h))]
        self._ref.add(h, names, [None] * len(h))

    def update(self, images: Sequence[ImageLike], ids: Sequence[str]) -> None:
        self.update_hashes(phashes(images), ids)

    def update_hashes(self, hashes: Sequence[int] | np.ndarray, ids: Sequence[str]) -> None:
        h = np.asarray(hashes, dtype=np.uint64)
        self._rows.add(h, ids, [None] * len(h))

    def compute(self) -> MemorisationReport:
        h, ids, _ = self._rows.arrays()
        r, rids, _ = self._ref.arrays()
        n = len(h)
        uh, cls = np.unique(h, return_inverse=True)
        ur, ref_first = np.unique(r, return_index=True)
        exact = True
        best: np.ndarray | None
        partner: np.ndarray | None
        try:
            i, j, d = near_pairs(uh, self.max_distance, ur)
            best = np.full(len(uh), 99, dtype=np.int64)
            partner = np.full(len(uh), -1, dtype=np.int64)
            order = np.argsort(-d)  # assign in decreasing distance: the closest wins
            best[i[order]] = d[order]
            partner[i[order]] = j[order]
            matched_cls = best <= self.max_distance
            matched = matched_cls[cls.ravel()]
        except TooManyCandidates:
            exact = False
            rng = np.random.default_rng(0)
            sample = rng.choice(n, size=min(_SAMPLE_ROWS, n), replace=False)
            hits = [bool((hamming(ur, h[s]) <= self.max_distance).any()) for s in sample]
            matched = np.zeros(n, dtype=bool)
            matched[sample[np.array(hits, dtype=bool)]] = True
            partner = best = None
        examples = []
        if partner is not None and best is not None:
            for row in np.nonzero(matched)[0][:_MAX_EXAMPLES]:
                c = int(cls.ravel()[row])
                examples.append(
                    {
                        "row_id": _decode(ids, [row])[0],
                        "reference": _decode(rids, [ref_first[partner[c]]])[0],
                        "distance": int(best[c]),
                    }
                )
            count = int(matched.sum())
            fraction = count / n if n else 0.0
        else:
            fraction = float(matched.sum()) / min(_SAMPLE_ROWS, n)
            count = round(fraction * n)
        return MemorisationReport(
            rows=n,
            reference_images=len(r),
            max_distance=self.max_distance,
            matched_rows=count,
            matched_fraction=fraction,
            exact=exact,
            examples=examples,
        )


# --- img2img: variants of one source must differ ------------------------------------------------


@dataclass
class VariantReport:
    """Per source, the highest PSNR between two of its variants (identical variants: 100 dB)."""

    sources: int
    max_pair_psnr: float
    failing_sources: int
    threshold_db: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VariantSpread:
    """Do variants of one source differ from one another? Buffers the variants of the sources of
    the current batch/shard; ``flush()`` (call it at the end of each shard — augflow's planner puts
    every variant of a source in one shard) measures and drops them. Also flushes by itself once
    more than ``max_buffered`` images wait; a source split by that is measured in two parts."""

    def __init__(self, max_pair_psnr: float = 40.0, max_buffered: int = 1024) -> None:
        self.threshold = float(max_pair_psnr)
        self.max_buffered = int(max_buffered)
        self._buffer: dict[str, list[tuple[str, np.ndarray]]] = {}
        self._buffered = 0
        self._sources = 0
        self._failing = 0
        self._max = -math.inf
        self._examples: list[dict[str, Any]] = []

    def update(
        self, images: Sequence[ImageLike], source_ids: Sequence[str], ids: Sequence[str]
    ) -> None:
        if not (len(images) == len(source_ids) == len(ids)):
            raise ValueError("VariantSpread.update needs one source id and one row id per image")
        for img, src, rid in zip(images, source_ids, ids, strict=True):
            self._buffer.setdefault(str(src), []).append((str(rid), as_rgb_array(img)))
            self._buffered += 1
        if self._buffered > self.max_buffered:
            self.flush()

    def flush(self) -> None:
        for src, rows in self._buffer.items():
            if len(rows) < 2:
                continue
            best, pair = -math.inf, ("", "")
            for a in range(len(rows)):
                for b in range(a + 1, len(rows)):
                    ia, ib = rows[a][1], rows[b][1]
                    p = psnr_db(ia, ib) if ia.shape == ib.shape else 0.0
                    if p is not None and p > best:
                        best, pair = p, (rows[a][0], rows[b][0])
            self._sources += 1
            self._max = max(self._max, best)
            if best >= self.threshold:
                self._failing += 1
                if len(self._examples) < _MAX_EXAMPLES:
                    self._examples.append(
                        {"source_id": src, "row_ids": list(pair), "psnr": round(best, 2)}
                    )
        self._buffer.clear()
        self._buffered = 0

    def compute(self) -> VariantReport:
        self.flush()
        return VariantReport(
            sources=self._sources,
            max_pair_psnr=self._max if self._sources else float("nan"),
            failing_sources=self._failing,
            threshold_db=self.threshold,
            examples=list(self._examples),
        )


# --- features: diversity and distribution distance ----------------------------------------------


@dataclass
class DistributionReport:
    """KID/FID between the outputs (fake) and the reference (real), and each side's diversity."""

    extractor: str
    extractor_digest: str
    num_features: int
    outputs: int
    reference: int
    kid: float | None
    kid_std: float | None
    kid_subset_size: int | None
    fid: float | None
    output_diversity: float | None
    reference_diversity: float | None
    diversity_ratio: float | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- set-level checks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SetThresholds:
    """Default thresholds of the set-level checks (justified in docs/quality-gate.md)."""

    #: Hamming distance (of 64 bits) at or below which two images are near-duplicates
    max_hamming: int = DEFAULT_MAX_HAMMING
    #: share of rows that near-duplicate an earlier row; for denoise/upscale/inpaint on top of
    #: the inputs' own share (duplicated inputs give duplicated outputs)
    max_duplicate_fraction: float = 0.01
    #: share of generated rows that copy a reference (training) image
    max_memorised_fraction: float = 0.001
    #: img2img: two variants of a source at or above this PSNR are copies of each other ...
    variant_max_pair_psnr: float = 40.0
    #: ... and at most this share of sources may have such a pair
    max_variant_copy_fraction: float = 0.05
    #: generate/img2img: mean pairwise feature distance of the outputs ÷ the reference's
    min_diversity_ratio: float = 0.5
    #: KID/FID against the reference; None = reported, not checked (their scale depends on the
    #: feature extractor and the domain; see docs/quality-gate.md for measured values)
    max_kid: float | None = None
    max_fid: float | None = None


@dataclass(frozen=True)
class SetCheckResult:
    """One set-level check: what was required, what was observed, a few example rows."""

    name: str
    passed: bool
    observed: float | None
    threshold: float | None
    detail: str
    examples: list[dict[str, Any]] = field(default_factory=list)


def set_checks(
    operation: str,
    *,
    duplicates: DuplicateReport | None = None,
    input_duplicates: DuplicateReport | None = None,
    memorisation: MemorisationReport | None = None,
    variants: VariantReport | None = None,
    distribution: DistributionReport | None = None,
    thresholds: SetThresholds | None = None,
) -> list[SetCheckResult]:
    """The set-level checks that apply to ``operation`` given the reports that were computed."""
    t = thresholds or SetThresholds()
    out: list[SetCheckResult] = []
    if duplicates is not None:
        base = 0.0
        if input_duplicates is not None and operation in ("denoise", "upscale", "inpaint"):
            base = input_duplicates.duplicate_fraction
        limit = base + t.max_duplicate_fraction
        out.append(
            SetCheckResult(
                "near_duplicates",
                duplicates.duplicate_fraction <= limit,
                duplicates.duplicate_fraction,
                limit,
                f"{duplicates.duplicate_rows} of {duplicates.rows} rows are within "
                f"{duplicates.max_distance} bits (pHash) of an earlier row; allowed "
                f"{limit:.2%}" + (" (the inputs' share + margin)" if base else ""),
                duplicates.examples,
            )
        )
    if memorisation is not None:
        out.append(
            SetCheckResult(
                "memorisation",
                memorisation.matched_fraction <= t.max_memorised_fraction,
                memorisation.matched_fraction,
                t.max_memorised_fraction,
                f"{memorisation.matched_rows} of {memorisation.rows} rows are within "
                f"{memorisation.max_distance} bits of one of {memorisation.reference_images} "
                f"reference images; allowed {t.max_memorised_fraction:.2%}",
                memorisation.examples,
            )
        )
    if variants is not None and operation == "img2img" and variants.sources:
        share = variants.failing_sources / variants.sources
        out.append(
            SetCheckResult(
                "variants_differ",
                share <= t.max_variant_copy_fraction,
                share,
                t.max_variant_copy_fraction,
                f"{variants.failing_sources} of {variants.sources} sources have two variants "
                f"with a PSNR of ≥ {variants.threshold_db:g} dB to each other (copies); allowed "
                f"{t.max_variant_copy_fraction:.0%}",
                variants.examples,
            )
        )
    if distribution is not None:
        ratio = distribution.diversity_ratio
        if operation in ("generate", "img2img") and ratio is not None:
            out.append(
                SetCheckResult(
                    "diversity",
                    ratio >= t.min_diversity_ratio,
                    ratio,
                    t.min_diversity_ratio,
                    f"outputs' mean pairwise feature distance is {ratio:.2f}× the reference's "
                    f"({distribution.extractor}); required ≥ {t.min_diversity_ratio:g}×",
                )
            )
        for name, value, bound in (
            ("kid", distribution.kid, t.max_kid),
            ("fid", distribution.fid, t.max_fid),
        ):
            if value is None:
                continue
            checked = bound is not None
            out.append(
                SetCheckResult(
                    f"distribution_{name}",
                    value <= bound if bound is not None else True,
                    value,
                    bound,
                    f"{name.upper()} {value:.4g} vs the reference ({distribution.extractor}, "
                    f"{distribution.outputs} outputs, {distribution.reference} reference images); "
                    + (f"allowed ≤ {bound:g}" if checked else "reported, no threshold set"),
                )
            )
    return out
