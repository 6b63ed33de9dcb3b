"""A workaround for a defect of Snakemake 9's file persistence (present in 9.27.1): locks that protect.

Snakemake refuses to start a run whose files another run in the same working directory has locked (one lock
file per run in ``.snakemake/locks/``).  But when any run ends, ``FilePersistence._delete_locks`` removes its own
lock files and then the whole lock directory, i.e. the locks of every other run still going; a second run on
their targets is then no longer refused, and two Snakemakes run the same jobs on the same files.  The report for
Snakemake's maintainers is docs/snakemake-lock-defect.md.

:func:`keep_other_runs_locks` (called by workflow/rules/common.smk) makes a finished run remove its own lock files
only; ``snakemake --unlock`` still removes every lock.  It changes Snakemake only while the installed version has
the defect (its code removes the lock directory), so a fixed Snakemake runs as it comes.
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

DEFECT = "shutil.rmtree(self._lockdir)"


def _delete_own_locks(persistence) -> None:
    """What a run removes when it ends: the lock files it wrote."""
    for lockfile in persistence._lockfile.values():
        Path(lockfile).unlink(missing_ok=True)
    persistence._lockfile.clear()


def _delete_every_lock(persistence) -> None:
    """``snakemake --unlock``: the locks of every run, for those left by a killed Snakemake."""
    _delete_own_locks(persistence)
    shutil.rmtree(persistence._lockdir, ignore_errors=True)
    Path(persistence._lockdir).mkdir(parents=True, exist_ok=True)


def has_defect() -> bool:
    from snakemake.persistence.file import FilePersistence

    return DEFECT in inspect.getsource(FilePersistence._delete_locks)


def keep_other_runs_locks() -> bool:
    """Patch the installed Snakemake if it has the defect; whether it was patched."""
    from snakemake.persistence.file import FilePersistence

    if not has_defect():
        return False
    FilePersistence._delete_locks = _delete_own_locks
    FilePersistence.cleanup_locks = _delete_every_lock
    return True
