"""CSA: Contextual Similarity Aggregation with Self-attention for Visual Re-ranking (NeurIPS 2021).

The package holds every piece of logic of the pipeline; the Snakemake scripts in ``workflow/scripts`` only read
their inputs, call into it and write their outputs.  Every module, in pipeline order (``tests/test_imports.py``
checks that they import each other without a cycle):

What to compute
- :mod:`csa_rerank.registry`   the datasets and re-ranking methods, one entry each
- :mod:`csa_rerank.plan`       the experiments of a configuration: models, sweeps, table and figure layouts, inputs
  (``core``, ``checks``, ``canonical``, ``models``, ``tables``, ``figures``, ``analysis``, ``paths``)
- :mod:`csa_rerank.code_version`  the digest of the package code a workflow script runs (rerun on code changes)
- :mod:`csa_rerank.snakemake_locks`  a finished Snakemake run removes its own locks only (a Snakemake 9 defect)

Data
- :mod:`csa_rerank.download`   downloads of the real datasets and networks (resumed, retried, checked), safe unpacking
- :mod:`csa_rerank.demo`       the generated demo benchmark (images and ground truth in the real formats)
- :mod:`csa_rerank.safe_pickle`  loading downloaded pickles without running code from them
- :mod:`csa_rerank.datasets`   ground-truth / training-set files and image lists
- :mod:`csa_rerank.export`     descriptors in the pickle layout of the authors' code

Descriptors and the first round
- :mod:`csa_rerank.networks`   GeM/MAC/SPoC/R-MAC pooling, the retrieval network, cirtorch checkpoints
- :mod:`csa_rerank.extract`    image loading, query cropping, multi-scale descriptor extraction
- :mod:`csa_rerank.whitening`  learned post-whitening (cirtorch's Lw)
- :mod:`csa_rerank.h5io`       the HDF5 contract of descriptors, rankings and affinities
- :mod:`csa_rerank.knn`        exact blocked top-k by inner product
- :mod:`csa_rerank.affinity`   the affinity sequences of the paper's Eq. 1

CSA
- :mod:`csa_rerank.model`      the CSA transformer re-ranker and its model file
- :mod:`csa_rerank.training`   losses, optimiser, schedule and the training loop (:mod:`csa_rerank.distributed`:
  in one process or several)
- :mod:`csa_rerank.inference`  low-precision (bf16) inference; :mod:`csa_rerank.onednn_graph` its fused CPU engine
- :mod:`csa_rerank.rerank`     re-ranking of the top-K block by affinity scores, the training-free "Affinity
  Feature" baseline, latency
- :mod:`csa_rerank.validation` evaluation on the training set's val split (supplementary Fig. 1)

Re-ranking methods
- :mod:`csa_rerank.methods`    CSA ("Ours", :mod:`csa_rerank.methods.csa`) and the compared re-ranking methods,
  one ``rerank(query, db, ranks, **params)`` interface
- :mod:`csa_rerank.compare`    the pipeline stages of the compared methods (fit, re-rank)
- :mod:`csa_rerank.graph`      the database's neighbour graph, built once (rule db_graph) for the methods that
  read one

Results
- :mod:`csa_rerank.evaluate`   the revisitop protocol (mAP Easy/Medium/Hard, mP@k), per query too
- :mod:`csa_rerank.tables`     the paper's tables, built from evaluation results
- :mod:`csa_rerank.figures`    the figures of model variants (Fig. 2, supplementary Figs. 1 and 2)
- :mod:`csa_rerank.per_query`  per-query analysis, Figure 3 and the gallery (drawn by :mod:`csa_rerank.qualitative`)

Your own descriptors
- :mod:`csa_rerank.api`        search, re-rank with any method by label, train, evaluate: arrays in, arrays out
- :mod:`csa_rerank.formats`    descriptor files (.npy, .h5, .fvecs, the authors' .pkl), rankings, names, labels
- :mod:`csa_rerank.cli`        the ``csa-rerank`` command (also :mod:`csa_rerank.__main__`: ``python -m csa_rerank``)

Jobs
- :mod:`csa_rerank.stages`     one function per pipeline stage, called by the Snakemake scripts
- :mod:`csa_rerank.jobs`       each job's process settings (:func:`csa_rerank.jobs.prepare_job`, with
  :mod:`csa_rerank.allocator`) and its peak memory
- :mod:`csa_rerank.atomic`     every file written under a temporary name and renamed when complete
- :mod:`csa_rerank.run_lock`   one training per run folder (an flock held by the training process)
- :mod:`csa_rerank.logs`       a job's log file
"""

__version__ = "0.1.0"
