"""Paths of the files the rules exchange, with the pathvars <data> and <results> unresolved (Snakemake resolves
them: workflow.pathvars.apply)."""

from __future__ import annotations

from csa_rerank import registry


def dataset_files(entry: registry.Dataset) -> dict[str, str]:
    """The image folder and the list or ground-truth file of a dataset, in cirtorch/revisitop layout under
    <data>; a dataset given as descriptors has only its listing, at the path configured."""
    if entry.descriptors:
        return {"listing": entry.listing}
    return {"images": f"<data>/{entry.images_path}", "listing": f"<data>/{entry.listing_path}"}


def features(dataset: str, network: str) -> str:
    return f"<results>/features/{dataset}/{network}.h5"


def knn(testset: str, network: str) -> str:
    """First-round lists of a network ('net'), or a compared method's re-ranking of them ('net~method')."""
    return f"<results>/knn/{testset}/{network}.h5"


def graph(testset: str, network: str) -> str:
    """The neighbour graph of a test set's database (with the distractors in a '+' set) that the graph-reading
    compared methods share."""
    return f"<results>/graph/{testset}/{network}.h5"


def neighbours(network: str) -> str:
    return f"<results>/neighbours/{network}.h5"


def evaluation(testset: str, network: str, reranker: str | None = None, K=None, L=None) -> str:
    """The evaluation JSON of one (test set, network, re-ranker, K, L); the first round's without a re-ranker."""
    if reranker is None:
        return f"<results>/eval/{testset}/{network}/first_round.json"
    return f"<results>/eval/{testset}/{network}/{reranker}/K{K}_L{L}.json"


def val_evaluation(training_set: str, network: str, model: str, K, L) -> str:
    """The evaluation JSON of a model on the training set's val split."""
    return f"<results>/eval/{training_set}-val/{network}/{csa(model)}/K{K}_L{L}.json"


def rerank(testset: str, network: str, reranker: str, K, L) -> str:
    return f"<results>/rerank/{testset}/{network}/{reranker}/K{K}_L{L}.h5"


def model_summary(model: str) -> str:
    return f"<results>/models/{model}/summary.json"


def csa(model: str) -> str:
    """The re-ranker name of CSA with one trained model (a training set's or a variant's)."""
    return f"csa-{model}"


def method_lists(network: str, label: str) -> str:
    """The ranking name of a network's first-round lists re-ranked by a compared method ('net~gss')."""
    return f"{network}~{registry.method(label).slug}"


def base_testset(testset: str) -> str:
    """The test set of an evaluation set: 'roxford5k+r1m' -> 'roxford5k'."""
    return testset.split("+")[0]


def base_network(network: str) -> str:
    """The network of a ranking name: 'net' or 'net~method' -> 'net'."""
    return network.split("~")[0]
