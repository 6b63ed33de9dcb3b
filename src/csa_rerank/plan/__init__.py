"""The experiment plan: what the workflow computes for a configuration, as pure functions of the config dict.

- :mod:`.core`: :class:`Plan`, built once from the validated config; datasets, evaluation sets, distractor
  shards, models, and the inputs and params of every rule;
- :mod:`.checks`: cross-key checks (``ValueError("config key <key>: ...")``);
- :mod:`.canonical`: the configuration with every mapping's keys sorted, so that no param depends on their order;
- :mod:`.models`: the models to train and the figures' sweeps;
- :mod:`.tables`, :mod:`.figures`: the layout of each paper table and figure;
- :mod:`.paths`: the paths of the files the rules exchange (pathvars unresolved);
- :mod:`.resources`: the memory and time limit of each compared method's job.

No Snakemake and no torch here: workflow/rules/common.smk builds the plan, the rules call it, tests/test_plan.py
tests it without starting Snakemake.
"""

from .core import Plan, alternatives

__all__ = ["Plan", "alternatives"]
