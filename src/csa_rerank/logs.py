"""Logging for the workflow scripts: everything a job prints goes to its rule's log file.

When the log cannot be written (its disk is full, its file system gone), what the job prints from then on, its
error included, goes to the stderr the job was started with, i.e. Snakemake's terminal, after a line saying why.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import TextIO


class LogFile(io.TextIOBase):
    """The job's log file as its stderr, falling back to the original stderr when a write to the log fails."""

    def __init__(self, log: TextIO, terminal: TextIO):
        self.log, self.terminal, self.failed = log, terminal, False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                return self.log.write(text)
            except OSError as error:
                self.failed = True
                self.terminal.write(f"cannot write the job's log {self.log.name} ({error}); its output follows here\n")
        return self.terminal.write(text)

    def fileno(self) -> int:
        """The log's descriptor, for subprocesses that write to the job's stderr (``snakemake --report``)."""
        return self.log.fileno()

    def flush(self) -> None:
        if not self.failed:
            try:
                self.log.flush()
            except OSError as error:
                self.failed = True
                self.terminal.write(f"cannot write the job's log {self.log.name} ({error})\n")
        self.terminal.flush()


def setup(log_path: str, name: str = "csa_rerank") -> logging.Logger:
    """Send stderr (tqdm progress bars, warnings, tracebacks) and a logger to ``log_path``."""
    log = open(log_path, "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    sys.stderr = LogFile(log, sys.stderr)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    return logging.getLogger(name)
