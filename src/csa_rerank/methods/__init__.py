"""The re-ranking methods compared in Table 5, behind one arrays-in, arrays-out interface.

Every method is a function ``rerank(query, db, ranks, **params) -> new_ranks`` with

- ``query`` [Q, D] float32 L2-normalised query descriptors,
- ``db`` [N, D] float32 L2-normalised database descriptors,
- ``ranks`` [Q, N'] int64 first-round rankings (db indices, best first; N' <= N, usually the whole database),
- keyword parameters with the defaults of the method's paper (documented in its module),

returning a new ranking [Q, N'] (a permutation of each row of ``ranks``), so every method runs on the same
descriptors, the same first-round lists and the same evaluator.  Methods that need training data take it
from a separate ``fit`` step (documented in their module); :data:`METHODS` maps each Table 5 row label to its
function.
"""

from __future__ import annotations

from csa_rerank.methods import crl, dba, diffusion, dsm, gss, kreciprocal, lattqe, qe, superglobal

METHODS: dict = {
    # training-free; "k-reciprocal" and "SuperGlobal (refinement)" are extra rows, not in the paper
    "AQE": qe.aqe,
    "AQEwD": qe.aqewd,
    "DQE": qe.dqe,
    "αQE": qe.alpha_qe,
    "ADBA + AQE": dba.adba_aqe,
    "ADBAwD + AQEwD": dba.adbawd_aqewd,
    "DDBA + DQE": dba.ddba_dqe,
    "αDBA + αQE": dba.alpha_dba_alpha_qe,
    "DFS": diffusion.dfs,
    "k-reciprocal": kreciprocal.k_reciprocal,
    "SuperGlobal (refinement)": superglobal.superglobal,
    # learned on the training set (``fit`` in their module; ``weights=``), graph and spatial methods
    "LAttQE": lattqe.rerank,
    "LAttDBA + LAttQE": lattqe.rerank_dba,
    "CRL": crl.rerank,
    "GSS": gss.rerank,
    "DSM": dsm.rerank,
}
