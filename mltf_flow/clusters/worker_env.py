"""The environment the Dask worker processes of our clusters start with (LocalCluster and SLURM jobs alike).

Dask's nanny exports ``distributed.nanny.pre-spawn-environ`` before it spawns a worker. Its default sets
``MALLOC_TRIM_THRESHOLD_=65536``, and setting any glibc malloc threshold switches off glibc's *dynamic* mmap
threshold: every array above 128 KiB is then ``mmap``-ed fresh and ``munmap``-ed when freed, so each
allocation page-faults zeroed pages again. Array code (uproot/awkward/numpy in the example's ``features``
step) ran 30-60 % slower per file inside a worker than in a plain process for that reason alone (measured:
a plain process with only that variable set is as slow as the worker; a worker without it is as fast as a
plain process; the BLAS thread variables, the worker thread and the event loop made no difference). The
step's own commands started on a worker inherit the variable too.

So our workers start without it: glibc's defaults keep freed memory for reuse up to its dynamic
thresholds (at most 32 MiB mmap threshold, 64 MiB trim threshold per process), a bounded cost the
worker's memory limit still covers. The rest of Dask's pre-spawn environment (``OMP_NUM_THREADS=1`` and
the other BLAS thread counts: one worker process per core must not start a thread per core each) is kept.
A variable the user exports in the worker's environment still wins, as in Dask.
"""

from __future__ import annotations

from typing import Any

#: Entries of ``distributed.nanny.pre-spawn-environ`` we change: None removes Dask's default.
PRE_SPAWN_OVERRIDES: dict[str, str | None] = {"MALLOC_TRIM_THRESHOLD_": None}


def dask_config() -> dict[str, Any]:
    """For ``dask.config.set`` in the process whose nannies spawn the workers (a LocalCluster's)."""
    return {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in PRE_SPAWN_OVERRIDES.items()}


def job_exports() -> dict[str, str]:
    """The same as environment variables, for a SLURM job script (read by dask.config in the job's nanny).

    A dict literal for the whole section: dask lower-cases the keys of ``DASK_..__KEY`` variables, which
    would add ``malloc_trim_threshold_`` beside the upper-case default instead of removing it; a literal's
    keys keep their case and are merged into the defaults."""
    literal = "{" + ", ".join(f'"{name}": {value!r}' for name, value in PRE_SPAWN_OVERRIDES.items()) + "}"
    return {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": literal}
