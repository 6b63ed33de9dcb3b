"""Logging for the workflow scripts: everything a job prints goes to its rule's log file."""

from __future__ import annotations

import logging
import sys


def setup(log_path: str, name: str = "csa_rerank") -> logging.Logger:
    """Send stderr (tqdm progress bars, warnings, tracebacks) and a logger to ``log_path``."""
    sys.stderr = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    return logging.getLogger(name)
