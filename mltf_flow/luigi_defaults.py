"""Luigi's settings that mltf_flow pipelines depend on: exit codes and the command-line lock.

**Exit codes**: non-zero on every failure, from any directory.
Luigi exits 0 when a task fails unless a ``[retcode]`` section says otherwise "for backwards
compatibility" (``reference/luigi_dask_slurm.md``). A ``luigi.cfg`` in the repository only helps
whoever runs Luigi there; cron, scrontab and CI elsewhere would see success. So importing our step
classes fills in the codes below for every ``[retcode]`` key the user's own Luigi configuration does
not set (their values always win).

**Lock**: Luigi's own lock (``[core] no_lock = false``) lets one process per *command line* run: two
invocations of ``luigi --module pipelines Train`` in different projects block each other (exit 10), while
two that need the same step with different command lines are not kept apart at all. mltf_flow claims
each step by its cache key instead (:mod:`mltf_flow.lease`: a second invocation waits for the first's
result), so ``no_lock`` defaults to true here; a user's configuration that sets it still wins.

Applying these is the one import-time effect of the package, and it is deliberate: ``luigi --module M Task``
imports ``M`` (and so us) *before* it reads ``[retcode]`` and ``[core]``, and there is no later hook.
"""

from __future__ import annotations

import logging

#: Also documented in ``mltf-flow --help`` and written by ``mltf-flow init`` into ``luigi.cfg``.
RETCODES: dict[str, int] = {
    "already_running": 10,
    "missing_data": 20,
    "not_run": 25,
    "task_failed": 30,
    "scheduling_error": 35,
    "unhandled_exception": 40,
}

_log = logging.getLogger(__name__)


#: ``[core]`` options, as above.
CORE: dict[str, str] = {"no_lock": "true"}


def apply_luigi_defaults() -> dict[str, str]:
    """Set each ``[retcode]`` and ``[core]`` option above that the Luigi configuration lacks; returns what
    was set (``section.option``)."""
    from luigi.configuration import get_config

    config = get_config()
    applied: dict[str, str] = {}
    wanted = [("retcode", name, str(code)) for name, code in RETCODES.items()]
    wanted += [("core", name, value) for name, value in CORE.items()]
    try:
        for section, name, value in wanted:
            if not config.has_option(section, name):
                if not config.has_section(section):
                    config.add_section(section)
                config.set(section, name, value)
                applied[f"{section}.{name}"] = value
    except AttributeError:  # a TOML configuration (LUIGI_CONFIG_PARSER=toml) has another API
        _log.debug("Luigi configuration of type %s: defaults not applied", type(config).__name__)
    return applied


__all__ = ["CORE", "RETCODES", "apply_luigi_defaults"]
