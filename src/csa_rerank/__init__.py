"""CSA: Contextual Similarity Aggregation with Self-attention for Visual Re-ranking (NeurIPS 2021).

The package holds every piece of logic of the pipeline; the Snakemake scripts in ``workflow/scripts`` only read
their inputs, call into it and write their outputs.  Modules, in pipeline order:

- :mod:`csa_rerank.download`   downloads of the real datasets and networks (resumed, retried, checked), safe unpacking
- :mod:`csa_rerank.demo`       the generated demo benchmark (images and ground truth in the real formats)
- :mod:`csa_rerank.datasets`   ground-truth / training-set files (restricted unpickling) and image lists
- :mod:`csa_rerank.networks`   GeM/MAC/SPoC pooling and the retrieval network (torchvision bodies)
- :mod:`csa_rerank.extract`    image loading, query cropping, multi-scale descriptor extraction
- :mod:`csa_rerank.h5io`       the HDF5 contract of descriptors, rankings and affinities
- :mod:`csa_rerank.knn`        exact blocked top-k by inner product
- :mod:`csa_rerank.affinity`   the affinity sequences of the paper's Eq. 1
- :mod:`csa_rerank.model`      the CSA transformer re-ranker
- :mod:`csa_rerank.training`   losses, optimiser, schedule and the training loop
- :mod:`csa_rerank.rerank`     re-ranking of the top-K block and the training-free "Affinity Feature" baseline
- :mod:`csa_rerank.evaluate`   the revisitop protocol (mAP Easy/Medium/Hard, mP@k)
- :mod:`csa_rerank.tables`     the paper's tables, built from evaluation results
"""

__version__ = "0.1.0"
