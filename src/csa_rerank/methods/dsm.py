"""DSM: deep spatial matching (Siméoni, Avrithis, Chum, "Local features and visual words emerge in activations",
CVPR 2019), Table 5 "DSM".

The activations of a CNN's last convolutional layer are treated as an image per channel: extremal regions detected
on a channel's map are local features whose visual word is the channel index, so two images are matched without
descriptors (same channel = tentative correspondence) and verified geometrically, and the top of the first-round
list is re-ranked by the number of inliers.  Unlike the other methods it needs the network and the images at
re-ranking time: the core works on activation maps [C, h, w] (arrays in, arrays out), and
:func:`rerank_with_network` extracts them.

Per image, with activations A [C, h, w] (after the last ReLU; a cell = one activation position)::

    channels  the ``channels`` channels of largest maximum (all when None)
    levels    thresholds t_l = l / levels * max(A_c),  l = 0 .. levels - 1;  level sets A_c > t_l
    regions   4-connected components of every level set, kept when MSER-stable (below)
    feature   visual word c, centre = mean (x, y) of the region's cells, shape = covariance of the cell
              coordinates + I / 12 (the spread of one cell), in cells

Stability follows MSER (Matas et al. 2002) as VLFeat computes it, with the level index as grey value: a
component R at level l has variation q(R) = (|R^(l - delta)| - |R|) / |R|, R^(l - delta) the component at level
l - delta containing R; R is kept when q(R) <= max_variation, q(R) < q(parent) (the component containing R one
level lower, when its q is defined), q(R) <= q(child) for every component one level higher inside R, and
min_area <= |R| <= max_area * h w.  On maps of a few hundred cells the integer areas make q jump (it is 0 on every
plateau), so one blob yields several nested stable regions; instead of VLFeat's area-based duplicate test, regions
of one channel whose centres are closer than ``merge_radius`` are one feature, the most stable (smallest q, then
largest area).

Cost: the components of all levels are found together by label propagation over [channels, levels, h, w]
(``CHUNK_CELLS`` at a time), O(iterations x C x levels x h w) per image, iterations ~ the longest component's
diameter; on the device of the activations (seconds per ResNet image on one CPU core, milliseconds on a GPU).
Matching scores every hypothesis of a pair against every correspondence, O(M^2) for M tentative correspondences,
on the same device (:func:`verify`).

Matching a query feature set a with a database feature set b::

    tentative     all pairs (i, j) with word_a(i) = word_b(j)
    hypotheses    one per correspondence: the upright affine map of ellipse i onto ellipse j,
                  M = S_j^1/2 S_i^-1/2,  t = c_j - M c_i      (S = shape, no rotation: the gravity-vector
                  assumption of fast spatial matching, Philbin et al. 2007)
    inliers       correspondences with || M c_i + t - c_j || <= inlier_threshold (cells of b), counted as
                  min(distinct a features, distinct b features) among them
    refinement    the best hypothesis re-fitted by least squares (full affine) on its inliers and kept if it
                  has more (one local-optimisation step)
    score         inliers of the best hypothesis

The top_n of every list are sorted by score (ties keep their first-round order); the rest is unchanged.

What is the paper's and what is ours: MSER regions on the last activation maps, the channel as visual word,
correspondences by equal words, fast spatial matching and re-ranking the top of the list by inlier count are
DSM's.  The detector is our vectorised re-implementation of MSER on ``levels`` thresholds relative to each
channel's maximum (the grey-level quantisation of MSER's input), not the OpenCV / VLFeat code; its parameters,
the channel selection, the inlier threshold, the counting of inliers and top_n are ours (the paper's values were
not available to us), all exposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from csa_rerank.extract import IMAGENET_MEAN, IMAGENET_STD, load_image, to_tensor
from csa_rerank.rerank import rerank_topk

CHUNK_CELLS = 2**22  # channels x levels x cells labelled at once (32 MB of int64 labels)
HYPOTHESIS_BLOCK = 256  # hypotheses scored at once against all correspondences


class Regions(NamedTuple):
    """The local features of one image, R of them (coordinates in activation cells, x = column, y = row)."""

    word: np.ndarray  # [R] int64, the channel
    centre: np.ndarray  # [R, 2] float64, (x, y)
    shape: np.ndarray  # [R, 2, 2] float64, covariance of the cell coordinates + I / 12
    area: np.ndarray  # [R] int64, cells


class Match(NamedTuple):
    """Spatial verification of a pair: inlier count and the affine map x_b = matrix x_a + translation."""

    inliers: int
    matrix: np.ndarray  # [2, 2]
    translation: np.ndarray  # [2]


# ----------------------------------------------------------------------------------------------------------------
# detection


def connected_components(masks: torch.Tensor) -> torch.Tensor:
    """4-connected components of boolean maps [..., h, w]: int64 labels of the same shape, 0 outside the masks,
    and inside 1 + the largest flat index (row * w + column) of a cell of the component.

    Labels grow by a max over the 4 neighbours and by pointer jumping (a cell takes the label of the cell its label
    points to, which lies in the same component and only ever holds larger labels) until nothing changes.
    """
    h, w = masks.shape[-2:]
    labels = torch.where(masks, torch.arange(1, h * w + 1, device=masks.device).view(h, w), 0)
    while True:
        grown = labels.clone()
        grown[..., 1:, :] = torch.maximum(grown[..., 1:, :], labels[..., :-1, :])
        grown[..., :-1, :] = torch.maximum(grown[..., :-1, :], labels[..., 1:, :])
        grown[..., :, 1:] = torch.maximum(grown[..., :, 1:], labels[..., :, :-1])
        grown[..., :, :-1] = torch.maximum(grown[..., :, :-1], labels[..., :, 1:])
        flat = torch.where(masks, grown, 0).flatten(-2)  # [..., h w]
        flat = torch.where(flat > 0, flat.gather(-1, (flat - 1).clamp_min(0)), 0)  # pointer jumping
        grown = flat.view(labels.shape)
        if torch.equal(grown, labels):
            return labels
        labels = grown


def _stable_regions(
    maps: torch.Tensor, levels: int, delta: int, max_variation: float, min_area: int, max_area: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSER-stable components of maps [c, h, w] (module docstring), on the maps' device.

    Returns:
        kept [c, levels, h w + 1] bool and variation [c, levels, h w + 1] over (map, level, label), and the
        labels [c, levels, h w].
    """
    c, h, w = maps.shape
    cells, device = h * w, maps.device
    thresholds = maps.amax(dim=(1, 2))[:, None] * torch.arange(levels, device=device) / levels  # [c, levels]
    labels = connected_components(maps[:, None] > thresholds[..., None, None]).flatten(-2)  # [c, levels, cells]
    table = (torch.arange(c * levels, device=device) * (cells + 1)).view(c, levels, 1)  # offset of (map, level)
    area = torch.bincount((table + labels).flatten(), minlength=c * levels * (cells + 1)).view(c, levels, -1)
    area[..., 0] = 0  # the background is no region
    exists = area > 0
    areaf = area.float()
    # every level set is nested in the one below, so the cell a label points to is in the containing component
    # at any lower level: label of the ancestor at level l - d = labels[:, l - d, label - 1]
    cell_of = torch.arange(cells + 1, device=device).clamp_min(1) - 1  # label -> the cell it points to

    def ancestor(d: int) -> torch.Tensor:
        """[c, levels - d, cells + 1]: label of the component d levels lower containing each (level >= d)."""
        return labels[:, : levels - d, cell_of]

    variation = torch.full((c, levels, cells + 1), torch.inf, device=device)
    ancestor_area = areaf[:, :-delta].gather(2, ancestor(delta))
    variation[:, delta:] = torch.where(
        exists[:, delta:], (ancestor_area - areaf[:, delta:]) / areaf[:, delta:], torch.inf
    )
    parent = ancestor(1)  # [c, levels - 1, cells + 1], for levels 1 ..
    parent_variation = torch.full_like(variation, torch.inf)  # inf = undefined: no constraint
    parent_variation[:, 1:] = variation[:, :-1].gather(2, parent)
    child_variation = torch.full_like(variation, torch.inf)
    child_variation[:, :-1].scatter_reduce_(2, parent, torch.where(exists[:, 1:], variation[:, 1:], torch.inf), "amin")
    kept = (
        exists
        & (variation <= max_variation)
        & ((variation < parent_variation) | parent_variation.isinf())
        & (variation <= child_variation)
        & (area >= min_area)
        & (area <= max_area * cells)
    )
    return kept, variation, labels


def _suppress_duplicates(word: np.ndarray, centre: np.ndarray, variation: np.ndarray, area: np.ndarray, radius: float):
    """Indices of the regions kept when, among regions of one word with centres closer than ``radius``, only the
    most stable (smallest variation, then largest area) survives; in word order, then by stability."""
    order = np.lexsort((-area, variation, word))
    kept: list[int] = []
    for group in np.split(order, np.flatnonzero(np.diff(word[order])) + 1):  # one group per word
        chosen: list[int] = []
        for i in group:
            if all(np.linalg.norm(centre[i] - centre[j]) >= radius for j in chosen):
                chosen.append(i)
        kept.extend(chosen)
    return np.asarray(kept, dtype=np.int64)


def detect_regions(
    activations: np.ndarray | torch.Tensor,
    channels: int | None = None,
    levels: int = 32,
    delta: int = 1,
    max_variation: float = 0.25,
    min_area: int = 2,
    max_area: float = 0.5,
    merge_radius: float = 1.0,
) -> Regions:
    """DSM's local features of one image: MSER-stable regions of its channel maps (module docstring).

    Runs on the device of ``activations`` when it is a tensor.

    Args:
        activations: [C, h, w] non-negative activations.
        channels: keep the maps of that many channels of largest maximum; None = all.
        levels, delta, max_variation (VLFeat's MSER default), min_area (cells), max_area (fraction of the map):
            the stability test.
        merge_radius: regions of one channel whose centres are closer (cells) are one feature: the most stable.
    Returns:
        the :class:`Regions`, ordered by channel.
    """
    maps = torch.as_tensor(activations, dtype=torch.float32)
    C, h, w = maps.shape
    cells, device = h * w, maps.device
    maxima = maps.amax(dim=(1, 2))
    order = torch.argsort(maxima, descending=True, stable=True)[: C if channels is None else channels]
    words = torch.sort(order[maxima[order] > 0]).values  # channels with a non-empty level 0
    y, x = (g.flatten().double() for g in torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"))
    moments = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y]).to(device)  # [6, cells]
    found = []
    chunk = max(1, CHUNK_CELLS // (levels * cells))
    for start in range(0, len(words), chunk):
        chunk_words = words[start : start + chunk]
        kept, variation, labels = _stable_regions(maps[chunk_words], levels, delta, max_variation, min_area, max_area)
        keys = (torch.arange(len(chunk_words) * levels, device=device) * (cells + 1)).view(-1, levels, 1) + labels
        sums = torch.stack(
            [torch.bincount(keys.flatten(), m.repeat(len(chunk_words) * levels), kept.numel()) for m in moments]
        )  # [6, c levels (cells + 1)]: cells, sum x, sum y, sum x^2, sum xy, sum y^2 of every (map, level, label)
        map_index, level, label = kept.nonzero(as_tuple=True)
        flat = (map_index * levels + level) * (cells + 1) + label
        found.append((chunk_words[map_index], variation[kept], sums[:, flat]))
    found = found or [(torch.zeros(0, dtype=torch.int64), torch.zeros(0), torch.zeros(6, 0, dtype=torch.float64))]
    word = torch.cat([f[0] for f in found]).cpu().numpy()
    stability = torch.cat([f[1] for f in found]).cpu().numpy()
    n, sx, sy, sxx, sxy, syy = torch.cat([f[2] for f in found], dim=1).cpu()
    cx, cy = sx / n, sy / n
    vxx, vxy, vyy = sxx / n - cx * cx + 1 / 12, sxy / n - cx * cy, syy / n - cy * cy + 1 / 12
    centre = torch.stack([cx, cy], -1).numpy()
    shape = torch.stack([torch.stack([vxx, vxy], -1), torch.stack([vxy, vyy], -1)], -2).numpy()
    area = n.round().long().numpy()
    keep = _suppress_duplicates(word, centre, stability, area, merge_radius)
    return Regions(word[keep], centre[keep], shape[keep], area[keep])


# ----------------------------------------------------------------------------------------------------------------
# matching and spatial verification


def _sqrtm(spd: np.ndarray, power: float) -> np.ndarray:
    """spd [..., 2, 2] symmetric positive definite -> spd^power (by eigendecomposition)."""
    values, vectors = np.linalg.eigh(spd)
    return (vectors * values[..., None, :] ** power) @ np.swapaxes(vectors, -1, -2)


def _count(inlier: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_a: int, n_b: int) -> torch.Tensor:
    """Inlier counts of hypotheses: inlier [H, M] bool over correspondences (a[m], b[m]) -> [H] int,
    min(distinct a features, distinct b features) among each row's inliers."""
    rows, columns = inlier.nonzero(as_tuple=True)
    seen_a = torch.zeros((len(inlier), n_a), dtype=torch.bool, device=inlier.device)
    seen_b = torch.zeros((len(inlier), n_b), dtype=torch.bool, device=inlier.device)
    seen_a[rows, a[columns]] = True
    seen_b[rows, b[columns]] = True
    return torch.minimum(seen_a.sum(dim=1), seen_b.sum(dim=1))


def _distances(matrices: torch.Tensor, translations: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """|| M_h c_a(m) + t_h - c_b(m) || for hypotheses (M [H, 2, 2], t [H, 2]) and correspondences (ca, cb
    [M, 2]) -> [H, M], summed term by term in float64 (so the same on every device)."""
    projected = (
        matrices[:, None, :, 0] * ca[None, :, None, 0] + matrices[:, None, :, 1] * ca[None, :, None, 1]
    ) + translations[:, None]  # [H, M, 2]
    return (projected - cb).square().sum(dim=-1).sqrt()


def _best_hypothesis(matrices, translations, ca, cb, a, b, n_a: int, n_b: int, threshold: float) -> tuple[int, int]:
    """(index, inliers) of the hypothesis with the most inliers, the first of equals: every hypothesis scored
    against every correspondence, ``HYPOTHESIS_BLOCK`` at a time (tensors on one device: the O(M^2) of matching)."""
    best, best_inliers = 0, -1
    for start in range(0, len(a), HYPOTHESIS_BLOCK):
        block = slice(start, start + HYPOTHESIS_BLOCK)
        counts = _count(_distances(matrices[block], translations[block], ca, cb) <= threshold, a, b, n_a, n_b)
        top = int(counts.max())
        if top > best_inliers:
            best, best_inliers = start + int(counts.argmax()), top
    return best, best_inliers


def verify(
    regions_a: Regions, regions_b: Regions, inlier_threshold: float = 1.0, device: str | torch.device = "cpu"
) -> Match:
    """Spatial verification of two images' features (module docstring): the best affine map a -> b.

    Every hypothesis is scored against every correspondence on ``device`` (the O(M^2) part); forming the
    hypotheses (one per correspondence) and the refinement (once) stay on the CPU.

    Returns:
        a :class:`Match`; 0 inliers and the identity map when the images share no visual word.
    """
    same = regions_a.word[:, None] == regions_b.word[None, :]  # [R_a, R_b]
    a, b = np.nonzero(same)  # tentative correspondences [M]
    if len(a) == 0:
        return Match(0, np.eye(2), np.zeros(2))
    ca, cb = regions_a.centre[a], regions_b.centre[b]  # [M, 2]
    matrices = _sqrtm(regions_b.shape[b], 0.5) @ _sqrtm(regions_a.shape[a], -0.5)  # [M, 2, 2]
    translations = cb - np.einsum("mij,mj->mi", matrices, ca)  # [M, 2]
    n_a, n_b = len(regions_a.word), len(regions_b.word)
    on_device = [torch.as_tensor(x, device=device) for x in (matrices, translations, ca, cb, a, b)]
    best, best_inliers = _best_hypothesis(*on_device, n_a, n_b, inlier_threshold)
    match = Match(best_inliers, matrices[best], translations[best])
    inlier = np.linalg.norm(ca @ match.matrix.T + match.translation - cb, axis=1) <= inlier_threshold
    if inlier.sum() >= 3:  # local optimisation: least-squares affine map on the inliers
        design = np.hstack([ca[inlier], np.ones((int(inlier.sum()), 1))])  # [m, 3]
        solution, _, rank, _ = np.linalg.lstsq(design, cb[inlier], rcond=None)  # [3, 2]
        if rank == 3:
            matrix, translation = solution[:2].T, solution[2]
            refined = np.linalg.norm(ca @ matrix.T + translation - cb, axis=1) <= inlier_threshold
            count = int(_count(torch.as_tensor(refined[None]), torch.as_tensor(a), torch.as_tensor(b), n_a, n_b)[0])
            if count > match.inliers:
                match = Match(count, matrix, translation)
    return match


# ----------------------------------------------------------------------------------------------------------------
# re-ranking


def rerank(
    query: np.ndarray | None,
    db: np.ndarray | None,
    ranks: np.ndarray,
    query_regions: Sequence[Regions],
    db_regions: Sequence[Regions],
    top_n: int = 100,
    inlier_threshold: float = 1.0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """DSM re-ranking: the top_n of every list sorted by inlier count (ties keep their order).

    Args:
        query, db: global descriptors, unused by DSM (accepted for the common interface; may be None).
        ranks: [Q, N'] first-round rankings.
        query_regions: Q feature sets; db_regions: indexable by database index (a list of N, or a dict holding
            at least the images in the top_n of the lists).
        device: where the hypotheses of each pair are scored (:func:`verify`).
    Returns:
        [Q, N'] re-ranked lists.
    """
    ranks = np.asarray(ranks)
    top = ranks[:, :top_n]
    scores = np.array(
        [
            [verify(q, db_regions[i], inlier_threshold, device).inliers for i in row]
            for q, row in zip(query_regions, top, strict=True)
        ]
    ).reshape(top.shape)
    return rerank_topk(ranks, scores)


@torch.no_grad()
def activations(
    net: nn.Module,
    path: str | Path,
    image_size: int,
    bbx: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Last-layer activations [C, h, w] of one image on ``device``, loaded (and cropped to ``bbx``) as for
    extraction."""
    image = to_tensor(load_image(path, image_size, bbx), mean, std)[None].to(device)
    return net.features(image)[0].float()


def rerank_with_network(
    net: nn.Module,
    image_paths_query: Sequence[str | Path],
    image_paths_db: Sequence[str | Path],
    ranks: np.ndarray,
    top_n: int = 100,
    image_size: int = 1024,
    query_bbxs: Sequence[Sequence[float]] | None = None,
    device: str | torch.device = "cpu",
    inlier_threshold: float = 1.0,
    **detection,
) -> np.ndarray:
    """DSM end to end: activations of the queries and of every database image in a top_n, features, re-ranking.

    Args:
        net: a network with a ``features`` body mapping images [1, 3, H, W] to activations [1, C, h, w]
            (:class:`csa_rerank.networks.RetrievalNet`); used in eval mode on ``device``.
        image_paths_query: Q paths; image_paths_db: N paths (database index order).
        ranks: [Q, N'] first-round rankings.
        image_size, query_bbxs: image loading as in :mod:`csa_rerank.extract` (queries cropped to their boxes).
        detection: keyword arguments of :func:`detect_regions`.
    Returns:
        [Q, N'] re-ranked lists.
    """
    net = net.eval().to(device)

    def features(path, bbx=None) -> Regions:
        return detect_regions(activations(net, path, image_size, bbx, device), **detection)

    query_regions = [
        features(path, None if query_bbxs is None else query_bbxs[i]) for i, path in enumerate(image_paths_query)
    ]
    db_regions = {int(i): features(image_paths_db[i]) for i in np.unique(np.asarray(ranks)[:, :top_n])}
    return rerank(None, None, ranks, query_regions, db_regions, top_n, inlier_threshold, device)
