"""Params that change only when values change.

Snakemake records each job's params as their ``repr`` and reruns the job when it differs, so a dict param whose
keys come in another order (a reordered YAML mapping, a default the schema validator appended) would rerun the
job with the same values.  The plan therefore reads a copy of the configuration whose every mapping has its keys
sorted (:func:`canonical`), and gives its own dicts to the rules through it: the order of a YAML mapping is no
value anywhere in the workflow.  Lists keep their order, which is a value (the sweeps, ``table1_K``, the scales).
Where an order is shown (the rows of tables 3-5, 4 and S1, named by mapping keys) it is the paper's
(:func:`csa_rerank.plan.tables.paper_order`), not the mapping's.
"""

from __future__ import annotations


def canonical(value):
    """``value`` with the keys of every mapping in it sorted, recursively (lists keep their order)."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value
