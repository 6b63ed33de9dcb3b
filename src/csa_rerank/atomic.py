"""Files written whole or not at all: under a temporary name beside the target, renamed to it when complete.

A job killed while writing leaves no truncated output that a rerun (or Snakemake) would take for a finished one,
and a failed rewrite keeps the previous file.  Every writer of the package goes through :func:`atomic_path`
(HDF5 through :func:`csa_rerank.h5io.atomic_h5`); the resumable downloads of :mod:`csa_rerank.download` keep
their own ``.part`` files, which a rerun continues instead of discarding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_SUFFIX = ".part"


@contextmanager
def atomic_path(path: str | Path, keep_extension: bool = False) -> Iterator[Path]:
    """The temporary path ``<path>.part`` to write ``path`` through (its folder is created).

    When the block succeeds the temporary file replaces ``path`` (one rename within a folder: atomic); when it
    raises, the temporary file is removed and ``path`` is left as it was.  Writers that infer the format from
    the file name (matplotlib's ``savefig``) must be given it, since the temporary name ends in ``.part``, or
    ``keep_extension``, for ``<stem>.part<extension>`` (``snakemake --report`` accepts .html and .zip only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = f"{path.stem}{TEMPORARY_SUFFIX}{path.suffix}" if keep_extension else path.name + TEMPORARY_SUFFIX
    temporary = path.with_name(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: str | Path, obj) -> None:
    """``obj`` as JSON indented by two spaces, with a final newline, through :func:`atomic_path`."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_figure(figure, path: str | Path, **savefig_kwargs) -> None:
    """A matplotlib figure to ``path`` through :func:`atomic_path`, in the format of its extension (PNG without
    one)."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=Path(path).suffix.lstrip(".").lower() or "png", **savefig_kwargs)
