"""The re-ranking methods compared in Table 5, behind one arrays-in, arrays-out interface.

Every method is a function ``rerank(query, db, ranks, **params) -> new_ranks`` with

- ``query`` [Q, D] float32 L2-normalised query descriptors,
- ``db`` [N, D] float32 L2-normalised database descriptors,
- ``ranks`` [Q, N'] int64 first-round rankings (db indices, best first; N' <= N, usually the whole database),
- keyword parameters with the defaults of the method's paper (documented in its module),

returning a new ranking [Q, N'] (a permutation of each row of ``ranks``), so every method runs on the same
descriptors, the same first-round lists and the same evaluator.  Methods that need training data take it
from a separate ``fit`` step (documented in their module).  :data:`METHODS` maps each Table 5 row label of the
registry (:mod:`csa_rerank.registry`, where methods are added) to its function; "Ours" is CSA itself
(``csa_rerank.methods.csa``), which the workflow runs through its own rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from csa_rerank import registry


class _Methods(Mapping):
    """Table 5 row label -> the method's function, in the registry's order (:data:`csa_rerank.registry.METHODS`).

    Read-only, and lazy: a method's module is imported when its function is first looked up, so importing this
    package imports no method (each method's module is its own unit, e.g. for hashing it alone)."""

    def __getitem__(self, label: str) -> Callable:
        try:
            entry = registry.method(label)
        except KeyError:
            raise KeyError(label) from None
        return entry.load()

    def __iter__(self) -> Iterator[str]:
        return iter([m.label for m in registry.METHODS])

    def __len__(self) -> int:
        return len(registry.METHODS)

    def __contains__(self, label: object) -> bool:  # without importing the method
        return any(m.label == label for m in registry.METHODS)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(self)})"


METHODS: Mapping[str, Callable] = _Methods()
