"""Query expansion (QE): AQE, AQEwD, αQE and DQE, the second block of Table 5.

Notation: q the query, d_1 ... d_N the database (rows L2-normalised), π the query's first-round list (``ranks``
row, best first), so d_{π_1} is its top-ranked image.  A QE method builds one new query vector q̃ from q and its
top-n, scores every item j of the list by q̃ · d_j and sorts the list by that score (equal scores keep their
first-round order).  The list is the whole ranking as given: rescoring it is the paper's "second-round retrieval"
when ``ranks`` covers the database.

Averaging methods (the unified form of Gordo et al., ECCV 2020, "LAttQE", whose numbers CSA's Table 5 copies)::

    q̃ = normalise( Σ_{i=0..n} w_i d_{π_i} ),   d_{π_0} := q
    AQE    w_i = 1                                   Chum et al., ICCV 2007
    AQEwD  w_i = (n - i) / n                         Gordo et al., IJCV 2017 (weights decay with the rank; the
                                                     n-th neighbour already gets 0)
    αQE    w_i = max(q · d_{π_i}, 0)^α, w_0 = 1      Radenović et al., TPAMI 2018

DQE (Arandjelović & Zisserman, CVPR 2012): a linear SVM separates the positives {q, d_{π_1..π_n}} from the
negatives {the last ``n_negatives`` items of the list}; the new score of d_j is its decision value
w · d_j + b (:func:`linear_svm`).

Defaults and their sources.  The CSA paper gives none of these settings: its QE rows are copied from LAttQE,
which chose the number of neighbours of every method on a validation set (rSfM120k); those values are not in
this project's reference material, so ``n`` is a parameter and its defaults are this implementation's choice,
one rule for all methods: two neighbours carry weight.

- AQE n = 2; AQEwD n = 3 (weights 1, 2/3, 1/3 and 0: two neighbours count); αQE n = 2; DQE n = 2.
- α = 3: Radenović et al., TPAMI 2018 (the value they recommend and use throughout).
- DQE: the 50 last items of the list are the negatives (Arandjelović & Zisserman take low-ranked images as
  negatives without a count that we could check; 50 keeps each SVM small, n + 1 + 50 samples, which matters
  for DDBA's one SVM per database image); C = 1, LIBLINEAR's and scikit-learn LinearSVC's default.

Shapes: query [Q, D], db [N, D] float32 L2-normalised; ranks [Q, N'] int64; every function returns [Q, N'].
"""

from __future__ import annotations

import numpy as np
import torch

from csa_rerank.methods._common import as_tensor, l2_normalise, list_scores, sort_list


def average_weights(n: int) -> torch.Tensor:
    """AQE weights [n + 1]: 1 for the query and for each of its n neighbours."""
    return torch.ones(n + 1)


def decay_weights(n: int) -> torch.Tensor:
    """AQEwD weights [n + 1]: w_i = (n - i) / n for i = 0 (the query) ... n."""
    return (n - torch.arange(n + 1, dtype=torch.float32)) / n


def alpha_weights(sims: torch.Tensor, alpha: float) -> torch.Tensor:
    """αQE weights max(sim, 0)^α from similarities [..., n + 1] to the vector being expanded (column 0: itself)."""
    return sims.clamp(min=0) ** alpha


def aggregate(vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """normalise(Σ_i w_i v_i): vectors [B, n + 1, D], weights [B, n + 1] or [n + 1] -> [B, D]."""
    return l2_normalise(torch.einsum("bnd,bn->bd", vectors, weights.expand(vectors.shape[:2])))


def _query_and_top(query: torch.Tensor, db: torch.Tensor, ranks: np.ndarray, n: int) -> torch.Tensor:
    """[Q, n + 1, D]: each query followed by its n top-ranked database vectors."""
    top = db[torch.as_tensor(ranks[:, :n], dtype=torch.int64)]  # [Q, n, D]
    return torch.cat([query[:, None], top], dim=1)


def average_expansion(
    query: torch.Tensor, db: torch.Tensor, ranks: np.ndarray, n: int, weighting: str, alpha: float = 3.0
) -> torch.Tensor:
    """Expanded queries [Q, D] by ``weighting`` "average" (AQE), "decay" (AQEwD) or "alpha" (αQE)."""
    vectors = _query_and_top(query, db, ranks, n)  # [Q, n + 1, D]
    if weighting == "average":
        weights = average_weights(n)
    elif weighting == "decay":
        weights = decay_weights(n)
    elif weighting == "alpha":
        weights = alpha_weights(torch.einsum("qd,qnd->qn", query, vectors), alpha)
    else:
        raise ValueError(f"weighting={weighting!r}; choose average, decay or alpha")
    return aggregate(vectors, weights)


def _newton_coefficients(gram: torch.Tensor, y: torch.Tensor, active: torch.Tensor, c: float) -> torch.Tensor:
    """Coefficients β [B, m] (w = X̂ᵀ β) of the SVM objective's minimiser with the active set A held fixed.

    With A fixed the objective is a quadratic whose minimiser solves (I + 2C X̂_Aᵀ X̂_A) w = 2C X̂_Aᵀ y_A; by
    Woodbury, w = X̂_Aᵀ β_A with (I / 2C + K_AA) β_A = y_A, K = X̂ X̂ᵀ, and β = 0 off A.  Solved as one m x m
    system per problem whose rows and columns off A are those of the identity, with right-hand side 0 there.
    """
    both = active[:, :, None] & active[:, None, :]  # [B, m, m]
    diagonal = torch.where(active, 1.0 / (2.0 * c), 1.0)  # [B, m]
    system = torch.where(both, gram, 0.0) + torch.diag_embed(diagonal)  # symmetric positive definite
    return torch.cholesky_solve(torch.where(active, y, 0.0)[..., None], torch.linalg.cholesky(system))[..., 0]


def _svm_objective(outputs: torch.Tensor, beta: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """½‖w‖² + C Σ_i max(0, 1 - y_i w · x̂_i)² from the outputs X̂ w = K β [B, m] and β [B, m] -> [B]."""
    slack = (1.0 - y * outputs).clamp(min=0)
    return 0.5 * (beta * outputs).sum(dim=1) + c * (slack * slack).sum(dim=1)


def linear_svm(
    x: torch.Tensor, y: torch.Tensor, c: float = 1.0, tol: float = 1e-8, max_iter: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """B independent L2-regularised, squared-hinge (L2-loss) linear SVMs with a bias, solved to optimality.

    Each problem minimises the strictly convex, piecewise-quadratic primal

        f(w) = ½‖w‖² + C Σ_i max(0, 1 - y_i w · x̂_i)²,   x̂_i = [x_i, 1],  w = [w, b]

    (LIBLINEAR's and scikit-learn LinearSVC's default formulation: the bias is a constant feature, regularised
    like the weights) by the finite Newton method (Mangasarian 2002; Keerthi & DeCoste, JMLR 2005): with
    A = {i : y_i w · x̂_i < 1} the gradient is w + 2C X̂_Aᵀ (X̂_A w - y_A) and the generalised Hessian
    I + 2C X̂_Aᵀ X̂_A; each iteration steps towards the minimiser with A held fixed
    (:func:`_newton_coefficients`) with an Armijo backtracking line search.  Every iterate is w = X̂ᵀ β, so the
    work is done on the m x m Gram matrix K = X̂ X̂ᵀ (m samples, fewer than the dimension for DQE and DDBA): the
    gradient is X̂ᵀ γ with γ = β + 2C (K β - y) on A, and a problem is solved when every |γ_i| <= ``tol``.  The
    start is w = 0.  Computed in float64, the unsolved problems of the batch in lockstep.

    Args:
        x: [B, m, D] samples; y: [B, m] labels in {-1, +1}.
    Returns:
        w [B, D] and b [B] (float32): the decision value of z is w · z + b.
    """
    x_hat = torch.cat([x, torch.ones(x.shape[:2] + (1,), dtype=x.dtype)], dim=2).double()  # [B, m, D + 1]
    y = y.double()
    gram = x_hat @ x_hat.transpose(1, 2)  # [B, m, m]
    beta = torch.zeros_like(y)  # [B, m], w = 0
    todo = torch.arange(len(y))  # problems not solved yet
    for _ in range(max_iter):
        k, labels, coefficients = gram[todo], y[todo], beta[todo]
        outputs = (k @ coefficients[..., None])[..., 0]  # [b, m], = X̂ w
        active = labels * outputs < 1
        gamma = coefficients + 2.0 * c * (outputs - labels) * active  # ∇f = X̂ᵀ γ
        running = gamma.abs().amax(dim=1) > tol
        if not bool(running.any()):
            break
        todo, k, labels, coefficients = todo[running], k[running], labels[running], coefficients[running]
        outputs, active, gamma = outputs[running], active[running], gamma[running]
        step = _newton_coefficients(k, labels, active, c) - coefficients
        step_outputs = (k @ step[..., None])[..., 0]
        slope = (gamma * step_outputs).sum(dim=1)  # [b], ∇f · X̂ᵀ step, < 0 before the optimum
        value = _svm_objective(outputs, coefficients, labels, c)
        t = torch.ones(len(todo), dtype=y.dtype)
        for _ in range(40):  # Armijo: halve a problem's step until it decreases f enough
            trial = _svm_objective(outputs + t[:, None] * step_outputs, coefficients + t[:, None] * step, labels, c)
            short = trial > value + 1e-4 * t * slope
            if not bool(short.any()):
                break
            t = torch.where(short, t / 2, t)
        beta[todo] = coefficients + t[:, None] * step
    w = (x_hat.transpose(1, 2) @ beta[..., None])[..., 0]  # [B, D + 1]
    return w[:, :-1].float(), w[:, -1].float()


def discriminative_expansion(
    query: torch.Tensor, db: torch.Tensor, ranks: np.ndarray, n: int, n_negatives: int, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DQE's SVM of each query: positives = the query and its top-n, negatives = the list's last ``n_negatives``.

    Returns w [Q, D] and b [Q].
    """
    if n + n_negatives > ranks.shape[1]:
        raise ValueError(f"DQE needs n + n_negatives <= list length; got {n} + {n_negatives} > {ranks.shape[1]}")
    positives = _query_and_top(query, db, ranks, n)  # [Q, n + 1, D]
    negatives = db[torch.as_tensor(ranks[:, ranks.shape[1] - n_negatives :], dtype=torch.int64)]  # [Q, n_neg, D]
    labels = torch.cat([torch.ones(n + 1), -torch.ones(n_negatives)]).expand(len(query), -1)
    return linear_svm(torch.cat([positives, negatives], dim=1), labels, c)


def aqe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n: int = 2) -> np.ndarray:
    """AQE: the list sorted by its similarity to the mean of the query and its top-n.  [Q, N'] -> [Q, N']."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    return sort_list(ranks, list_scores(average_expansion(query_t, db_t, ranks, n, "average"), db_t, ranks))


def aqewd(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n: int = 3) -> np.ndarray:
    """AQEwD: as AQE with rank-decaying weights (n - i) / n.  [Q, N'] -> [Q, N']."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    return sort_list(ranks, list_scores(average_expansion(query_t, db_t, ranks, n, "decay"), db_t, ranks))


def alpha_qe(query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n: int = 2, alpha: float = 3.0) -> np.ndarray:
    """αQE: as AQE with weights sim(q, d)^α.  [Q, N'] -> [Q, N']."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    expanded = average_expansion(query_t, db_t, ranks, n, "alpha", alpha)
    return sort_list(ranks, list_scores(expanded, db_t, ranks))


def dqe(
    query: np.ndarray, db: np.ndarray, ranks: np.ndarray, n: int = 2, n_negatives: int = 50, c: float = 1.0
) -> np.ndarray:
    """DQE: the list sorted by the decision value of a linear SVM (top-n positives, bottom negatives)."""
    query_t, db_t = as_tensor(query), as_tensor(db)
    w, b = discriminative_expansion(query_t, db_t, ranks, n, n_negatives, c)
    return sort_list(ranks, list_scores(w, db_t, ranks) + b[:, None])
