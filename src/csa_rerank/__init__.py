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
- :mod:`csa_rerank.model`      the CSA transformer re-ranker and its model file
- :mod:`csa_rerank.training`   losses, optimiser, schedule and the training loop (:mod:`csa_rerank.distributed`:
  in one process or several)
- :mod:`csa_rerank.inference`  low-precision (bf16) inference; :mod:`csa_rerank.onednn_graph` its fused CPU engine
- :mod:`csa_rerank.rerank`     re-ranking of the top-K block by affinity scores, the training-free "Affinity
  Feature" baseline, latency
- :mod:`csa_rerank.methods`    CSA ("Ours", :mod:`csa_rerank.methods.csa`) and the compared re-ranking methods,
  one ``rerank(query, db, ranks, **params)`` interface
- :mod:`csa_rerank.evaluate`   the revisitop protocol (mAP Easy/Medium/Hard, mP@k)
- :mod:`csa_rerank.tables`     the paper's tables, built from evaluation results
- :mod:`csa_rerank.stages`     one function per pipeline stage, called by the Snakemake scripts (each job first
  runs :func:`csa_rerank.jobs.prepare_job`); every file is written through :mod:`csa_rerank.atomic`
"""

__version__ = "0.1.0"
