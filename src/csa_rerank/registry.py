"""The datasets and re-ranking methods the pipeline knows: one entry each, in one place.

Everything else is derived from these entries: the names the configuration accepts (``datasets.*``, ``methods``),
the raw-data paths under ``<data>``, the column labels of the tables, the path slug of a method's ranking file,
which module fits a learned method, the row order of table 5 and :data:`csa_rerank.methods.METHODS`.

Adding a dataset or a method is one more entry in :data:`DATASETS` or :data:`METHODS` (README.md, "Extending").
The lookups below read the tuples when called, so an entry appended at the end of this module, e.g.
``METHODS = (*METHODS, Method("My QE", "myqe", "csa_rerank.methods.myqe:rerank"))``, counts like one in the
literal.  Importing this module imports no method: functions are named as ``"module:function"`` strings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------------
# datasets

# What a dataset is for; also the `kind` the extraction script is told (csa_rerank.stages).
TEST = "test"  # revisitop test set: database + queries with bounding boxes, ground truth gnd_<name>.pkl
DISTRACTORS = "distractors"  # image list appended to every test database (the "+R1M" columns)
TRAINING = "training"  # cirtorch training set: train/val splits with cluster labels and query/positive pairs
WHITENING = "whitening"  # cirtorch whitening set: images and pairs that fit a learned post-whitening


@dataclass(frozen=True)
class Dataset:
    name: str  # as in the config (datasets.*) and in paths (<results>/features/<name>/...)
    kind: str  # TEST, DISTRACTORS, TRAINING or WHITENING
    root: str  # folder under <data>
    listing: str  # file in root: ground truth (test), image list (distractors), db pickle (training, whitening)
    images: str  # image folder in root
    label: str  # in table columns ("ROxf Medium", "ROxf+R1M Hard")
    # database images (test set) or train-split images (training set) of the real data, which K, L and the batch
    # are checked against when the DAG is built; None where unknown
    images_count: int | None = None
    # given as descriptor files instead of images (extraction skipped): (network, file) pairs; the listing is then
    # a path of its own, not under <data>
    descriptors: tuple[tuple[str, str], ...] = ()

    @property
    def listing_path(self) -> str:
        return f"{self.root}/{self.listing}"

    @property
    def images_path(self) -> str:
        return f"{self.root}/{self.images}"


def own_dataset(name: str, spec: dict) -> Dataset:
    """A dataset of the configuration (``datasets.own.<name>``), not of this registry.

    Without ``descriptors``: a test set in revisitop's layout (:func:`revisitop_test_set`) or a training set in
    rSfM120k's (``<data>/train/<name>/<name>.pkl`` and ``ims/``).  With ``descriptors`` (network -> descriptor
    file, the arrays of :mod:`csa_rerank.h5io`): those descriptors, and ``listing``, the ground truth (test) or
    the train/val cluster file (training) at the path given; no images.
    """
    label = spec.get("label", name)
    if spec.get("descriptors"):
        descriptors = tuple(sorted(spec["descriptors"].items()))
        return Dataset(name, spec["kind"], "", spec["listing"], "", label, descriptors=descriptors)
    if spec["kind"] == TEST:
        return revisitop_test_set(name, label)
    return Dataset(name, TRAINING, f"train/{name}", f"{name}.pkl", "ims", label)


def revisitop_test_set(name: str, label: str | None = None, images_count: int | None = None) -> Dataset:
    """A test set in revisitop's layout: <data>/test/<name>/jpg/ and <data>/test/<name>/gnd_<name>.pkl."""
    return Dataset(name, TEST, f"test/{name}", f"gnd_{name}.pkl", "jpg", label or name, images_count=images_count)


_SFM = "train/retrieval-SfM-120k"  # cirtorch's folder of the training and whitening sets (one image folder)

DATASETS: tuple[Dataset, ...] = (
    revisitop_test_set("roxford5k", "ROxf", 4993),
    revisitop_test_set("rparis6k", "RPar", 6322),
    Dataset("r1m", DISTRACTORS, "revisitop1m", "revisitop1m.txt", "jpg", "R1M"),
    Dataset("rsfm120k", TRAINING, _SFM, "retrieval-SfM-120k.pkl", "ims", "rSfM120k", 91642),
    Dataset("rsfm120k-whiten", WHITENING, _SFM, "retrieval-SfM-120k-whiten.pkl", "ims", "rSfM120k-whiten"),
)


def dataset(name: str) -> Dataset:
    for entry in DATASETS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(d.name for d in DATASETS)}")


def dataset_names(*kinds: str) -> list[str]:
    """The registered datasets of the given kinds, in registry order."""
    return [d.name for d in DATASETS if d.kind in kinds]


# ---------------------------------------------------------------------------------------------------------------
# re-ranking methods

COMPARED = "compared"  # a method of csa_rerank.methods, rerank(query, db, ranks, **params), rule rerank_method
CSA = "csa"  # the paper's own method, planned by the CSA rules (train, affinity, rerank_csa), not by rerank_method


@dataclass(frozen=True)
class GraphUse:
    """The columns of the database graph (:func:`csa_rerank.knn.self_graph`, rule db_graph) a method reads, each a
    number or the name of one of its keyword parameters (``fit.<name>``: of its fit, i.e. of the model): ``near``
    plus ``near_extra`` nearest rows, the row itself included, and ``far`` least similar rows."""

    near: str | int
    near_extra: int = 0
    far: str | int = 0

    def widths(self, params: dict) -> tuple[int, int]:
        """(near, far) for the method's parameters ``params`` (defaults included, its fit's as ``fit.<name>``)."""
        near, far = (params[value] if isinstance(value, str) else value for value in (self.near, self.far))
        return near + self.near_extra, far


@dataclass(frozen=True)
class Method:
    label: str  # the row label of table 5 and the key under the config's `methods`
    slug: str  # in paths: <results>/knn/{testset}/{network}~{slug}.h5; never change a published one
    function: str  # "module:function", imported on first use
    fitted_by: str | None = None  # learned: the module of csa_rerank.methods whose fit() trains its weights
    needs_images: bool = False  # re-ranks with the images and the network, not only the descriptors
    in_paper: bool = True  # False: an extra row of table 5, marked "(not in the paper)"
    plus_ours: bool = False  # table 5 also has CSA re-ranking this method's lists ("GSS+Ours")
    # reads the database's neighbour graph, built once per (test set, network) for every such method; its
    # function then takes it as ``graph`` (and builds its own without it)
    graph: GraphUse | None = None
    # runs on the GPU when its job has one (rule rerank_method then requests one; its function takes ``device``)
    gpu: bool = False
    kind: str = COMPARED

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    def load(self):
        """The method's function (imports its module)."""
        return getattr(importlib.import_module(self.module), self.function.partition(":")[2])


# Table 5's rows in order: the paper's compared methods, CSA ("Ours", then "GSS+Ours", "DFS+Ours"), the extra rows.
METHODS: tuple[Method, ...] = (
    Method("AQE", "aqe", "csa_rerank.methods.qe:aqe"),
    Method("AQEwD", "aqewd", "csa_rerank.methods.qe:aqewd"),
    Method("DQE", "dqe", "csa_rerank.methods.qe:dqe"),
    Method("αQE", "alphaqe", "csa_rerank.methods.qe:alpha_qe"),
    Method("LAttQE", "lattqe", "csa_rerank.methods.lattqe:rerank", fitted_by="lattqe"),
    Method("ADBA + AQE", "adba-aqe", "csa_rerank.methods.dba:adba_aqe", graph=GraphUse("n_dba", 1)),
    Method("ADBAwD + AQEwD", "adbawd-aqewd", "csa_rerank.methods.dba:adbawd_aqewd", graph=GraphUse("n_dba", 1)),
    Method("DDBA + DQE", "ddba-dqe", "csa_rerank.methods.dba:ddba_dqe", graph=GraphUse("n_dba", 1, "n_negatives")),
    Method("αDBA + αQE", "alphadba-alphaqe", "csa_rerank.methods.dba:alpha_dba_alpha_qe", graph=GraphUse("n_dba", 1)),
    # LAttQE's model, fitted once, also re-ranks the database side (one fit_method job for both rows)
    Method(
        "LAttDBA + LAttQE",
        "lattdba-lattqe",
        "csa_rerank.methods.lattqe:rerank_dba",
        fitted_by="lattqe",
        graph=GraphUse("fit.k", 1),
    ),
    Method("DSM", "dsm", "csa_rerank.methods.dsm:rerank", needs_images=True, gpu=True),
    Method("CRL", "crl", "csa_rerank.methods.crl:rerank", fitted_by="crl"),
    Method("GSS", "gss", "csa_rerank.methods.gss:rerank", plus_ours=True, graph=GraphUse("k"), gpu=True),
    Method("DFS", "dfs", "csa_rerank.methods.diffusion:dfs", plus_ours=True, graph=GraphUse("k")),
    Method("Ours", "csa", "csa_rerank.methods.csa:rerank", kind=CSA),
    Method(
        "k-reciprocal",
        "kreciprocal",
        "csa_rerank.methods.kreciprocal:k_reciprocal",
        in_paper=False,
        graph=GraphUse("k1", 1, 1),
    ),
    Method("SuperGlobal (refinement)", "superglobal", "csa_rerank.methods.superglobal:superglobal", in_paper=False),
)


def method(label: str) -> Method:
    for entry in METHODS:
        if entry.label == label:
            return entry
    raise KeyError(f"unknown method {label!r}; known: {', '.join(m.label for m in METHODS)}")


def compared_methods() -> list[Method]:
    """The methods rule rerank_method runs (every one but CSA), in registry order."""
    return [m for m in METHODS if m.kind == COMPARED]


def learned() -> dict[str, str]:
    """Learned method label -> the module whose fit() trains it."""
    return {m.label: m.fitted_by for m in METHODS if m.fitted_by}


def fit_modules() -> dict[str, str]:
    """Module with a fit() -> the method label whose config `fit` settings train it (the first that names it)."""
    modules: dict[str, str] = {}
    for label, module in learned().items():
        modules.setdefault(module, label)
    return modules
