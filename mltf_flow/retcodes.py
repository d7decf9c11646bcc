"""Luigi's exit codes for mltf_flow pipelines: non-zero on every failure, from any directory.

Luigi exits 0 when a task fails unless a ``[retcode]`` section says otherwise "for backwards
compatibility" (``reference/luigi_dask_slurm.md``). A ``luigi.cfg`` in the repository only helps
whoever runs Luigi there; cron, scrontab and CI elsewhere would see success. So importing our step
classes fills in the codes below for every ``[retcode]`` key the user's own Luigi configuration does
not set (their values always win).

This is the one import-time effect of the package, and it is deliberate: ``luigi --module M Task``
imports ``M`` (and so us) *before* it reads ``[retcode]``, and there is no later hook.
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


def apply_default_retcodes() -> dict[str, int]:
    """Set each ``[retcode]`` option the Luigi configuration lacks; returns what was set."""
    from luigi.configuration import get_config

    config = get_config()
    applied: dict[str, int] = {}
    try:
        for name, code in RETCODES.items():
            if not config.has_option("retcode", name):
                if not config.has_section("retcode"):
                    config.add_section("retcode")
                config.set("retcode", name, str(code))
                applied[name] = code
    except AttributeError:  # a TOML configuration (LUIGI_CONFIG_PARSER=toml) has another API
        _log.debug("Luigi configuration of type %s: [retcode] defaults not applied", type(config).__name__)
    return applied


__all__ = ["RETCODES", "apply_default_retcodes"]
