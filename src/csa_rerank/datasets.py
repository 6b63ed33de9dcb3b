"""The on-disk datasets in their real layouts (cirtorch / revisitop), read without trusting their pickles.

- test sets (``roxford5k``, ``rparis6k``): ``<root>/jpg/<name>.jpg`` and ``<root>/gnd_<dataset>.pkl`` with
  ``imlist``, ``qimlist`` and ``gnd`` (one dict per query: ``bbx``, ``easy``, ``hard``, ``junk``);
- distractors (revisitop1m): ``<root>/revisitop1m.txt`` listing paths relative to ``<root>/jpg``;
- training set (retrieval-SfM-120k): ``<root>/retrieval-SfM-120k.pkl`` with ``train``/``val`` splits holding
  ``cids`` and ``cluster`` (and ``qidxs``/``pidxs`` pairs); images at
  ``<root>/ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``;
- whitening set (cirtorch's ``retrieval-SfM-120k-whiten.pkl`` beside it): one dict with ``cids`` (images of the
  same ``ims`` folder) and the matching pairs ``qidxs``/``pidxs`` (indices into ``cids``) that learn the post-hoc
  whitening ``Lw``.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import safe_pickle


class DatasetFormatError(ValueError):
    """A dataset file does not have the expected layout."""


def load_ground_truth(path: str | Path) -> dict:
    """A revisitop ``gnd_*.pkl``, checked for the keys every later stage relies on."""
    cfg = safe_pickle.load(path)
    missing = [k for k in ("imlist", "qimlist", "gnd") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise DatasetFormatError(f"{path}: ground-truth file lacks {', '.join(missing)}; is it a revisitop gnd pkl?")
    if len(cfg["gnd"]) != len(cfg["qimlist"]):
        raise DatasetFormatError(f"{path}: {len(cfg['qimlist'])} queries but {len(cfg['gnd'])} gnd entries")
    for name, entry in zip(cfg["qimlist"], cfg["gnd"], strict=True):
        _check_query_box(path, name, entry.get("bbx"))
    return cfg


def _check_query_box(path: str | Path, query: str, bbx) -> None:
    """A query box is four finite numbers x1 < x2, y1 < y2 (whether it lies in the image is checked when the image
    is read: csa_rerank.extract.load_image)."""
    try:
        x1, y1, x2, y2 = (float(v) for v in bbx)
    except (TypeError, ValueError):
        raise DatasetFormatError(f"{path}: query {query}: bbx {bbx!r} is not four numbers (x1, y1, x2, y2)") from None
    if not all(map(math.isfinite, (x1, y1, x2, y2))) or x1 >= x2 or y1 >= y2:
        raise DatasetFormatError(
            f"{path}: query {query}: bbx {bbx!r} is empty or reversed; a box is (x1, y1, x2, y2) with x1 < x2, y1 < y2"
        )


def test_image_paths(root: str | Path, gnd: dict) -> tuple[list[Path], list[Path], list[list[float]]]:
    """(db image paths, query image paths, query boxes) of a test set rooted at ``root``."""
    jpg = Path(root) / "jpg"
    db = [jpg / f"{name}.jpg" for name in gnd["imlist"]]
    queries = [jpg / f"{name}.jpg" for name in gnd["qimlist"]]
    return db, queries, [list(map(float, entry["bbx"])) for entry in gnd["gnd"]]


def distractor_image_paths(list_file: str | Path) -> list[Path]:
    """Image paths of the distractor set, in the order of its list file."""
    list_file = Path(list_file)
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetFormatError(f"{list_file}: the distractor list is empty")
    return [list_file.parent / "jpg" / name for name in names]


def searched_image_paths(
    gnd_file: str | Path, distractor_list: str | Path | None = None
) -> tuple[dict, list[Path], list[Path], list[list[float]]]:
    """(ground truth, db image paths, query image paths, query boxes) of a test set as it is searched: the rows
    of the distractor set, when given, after the test set's own, in the order of the descriptor files."""
    gnd = load_ground_truth(gnd_file)
    db, queries, bbxs = test_image_paths(Path(gnd_file).parent, gnd)
    if distractor_list:
        db = db + distractor_image_paths(distractor_list)
    return gnd, db, queries, bbxs


def cid_path(ims_dir: str | Path, cid: str) -> Path:
    """cirtorch's location of a retrieval-SfM-120k image: ``ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>``."""
    if len(cid) < 6:
        raise ValueError(f"image id {cid!r} is shorter than the 6 characters cirtorch's layout needs")
    return Path(ims_dir) / cid[-2:] / cid[-4:-2] / cid[-6:-4] / cid


def load_training_db(path: str | Path) -> dict:
    """A ``retrieval-SfM-120k.pkl``, checked for the keys the training needs."""
    db = safe_pickle.load(path)
    for split in ("train", "val"):
        if not isinstance(db, dict) or split not in db:
            raise DatasetFormatError(f"{path}: training database lacks the '{split}' split")
        for key in ("cids", "cluster"):
            if key not in db[split]:
                raise DatasetFormatError(f"{path}: split '{split}' lacks '{key}'")
        if len(db[split]["cids"]) != len(db[split]["cluster"]):
            raise DatasetFormatError(f"{path}: split '{split}' has unequal 'cids' and 'cluster' lengths")
    return db


def load_whitening_db(path: str | Path) -> dict:
    """A ``retrieval-SfM-120k-whiten.pkl``: ``cids`` and matching pairs ``qidxs``/``pidxs``, checked."""
    db = safe_pickle.load(path)
    missing = [k for k in ("cids", "qidxs", "pidxs") if not isinstance(db, dict) or k not in db]
    if missing:
        raise DatasetFormatError(f"{path}: whitening database lacks {', '.join(missing)}; is it a *-whiten.pkl?")
    n, q, p = len(db["cids"]), list(db["qidxs"]), list(db["pidxs"])
    if not q or len(q) != len(p):
        raise DatasetFormatError(
            f"{path}: 'qidxs' and 'pidxs' must be non-empty and of equal length ({len(q)}, {len(p)})"
        )
    if not all(0 <= int(i) < n for i in q + p):
        raise DatasetFormatError(f"{path}: 'qidxs'/'pidxs' hold indices outside the {n} images of 'cids'")
    return db
