"""``mltf-flow tune`` (a study of a step of any MLflow project) and ``mltf-flow optuna-dashboard``.

    mltf-flow tune DIR --study sweep                         a study of pipeline.yaml's studies: section
    mltf-flow tune DIR --step train --space space.yaml --metric val_accuracy --n-trials 50 [-P epochs=4]
    mltf-flow optuna-dashboard [--port 8080]                 the studies in optuna-dashboard
    mltf-flow status DIR --study sweep [tune's flags]        the study's run and trials (no run)

Flags given with ``--study`` override the file's values. The study's target is built and checked like
``mltf-flow run``'s (parameters, environment, profile, the space against the entry point) before anything runs;
the exit code is ``run``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from mltf_flow.config.tune import StudyEntry
from mltf_flow.errors import ConfigError
from mltf_flow.local_port import check_port_free

#: Flags of ``tune`` that set a key of a study (flag dest -> key).
_STUDY_FLAGS = {"step": "step", "space": "space", "metric": "metric", "direction": "direction", "n_trials": "n_trials",
                "sampler": "sampler", "pruner": "pruner", "seed": "seed", "n_jobs": "n_jobs",
                "world_size": "world_size"}


def add_parser(sub: Any) -> None:
    """``tune`` and ``optuna-dashboard`` on ``mltf-flow``'s parser."""
    p = sub.add_parser("tune", help="a hyperparameter study of a step (Optuna; each trial a cached step run)")
    p.add_argument("project_dir", help="directory with MLproject (and pipeline.yaml)")
    p.add_argument("--study", help="a study of pipeline.yaml's studies: section (flags below override it)")
    p.add_argument("--step", "-e", help="the step (or entry point) whose parameters are searched")
    add_study_flags(p)
    p.add_argument("-P", "--param", action="append", default=[], help="fixed KEY=VALUE or STEP.KEY=VALUE")
    p.add_argument("--allow-extra-params", action="store_true", help="pass unknown -P as --key value")
    p.add_argument("--profile", default=None, help="cluster profile (mltf-flow profiles lists them)")
    p.add_argument("--env-manager", default=None, choices=("local", "virtualenv", "uv", "conda"))
    p.add_argument("--log-level", default="WARNING", help="Luigi's log level")
    p.add_argument("--no-wait", action="store_true", help="the study runs in another invocation: exit 10")
    p = sub.add_parser("optuna-dashboard", help="serve the Optuna studies with optuna-dashboard")
    p.add_argument("--host", default=None, help="default: the host of the optuna_dashboard setting")
    p.add_argument("--port", type=int, default=None, help="default: the port of the optuna_dashboard setting")


def add_study_flags(p: Any) -> None:
    """The flags that set a study's keys (but ``--study`` and ``--step``): ``tune``'s, and ``status --study``'s."""
    p.add_argument("--space", help="search space YAML (parameter -> range; docs/hpo.md)")
    p.add_argument("--metric", help="the metric to optimise, as the entry point logs it (per epoch for pruning)")
    p.add_argument("--direction", choices=("maximize", "minimize"))
    p.add_argument("--n-trials", type=int, help="trials (complete, pruned or failed); default 20")
    p.add_argument("--sampler", choices=("tpe", "random", "cmaes", "gp", "qmc"), help="default tpe")
    p.add_argument("--pruner", choices=("none", "median", "percentile", "hyperband", "successive_halving"),
                   help="default median")
    p.add_argument("--seed", type=int, help="the sampler's seed")
    p.add_argument("--n-jobs", type=int, help="trials at once (default: the profile's workers / world size)")
    p.add_argument("--world-size", type=int, help="ranks of each trial of a ddp step (default 1)")
    p.add_argument("--study-name", help="the Optuna study's name (default: derived from what it searches)")


def study_entry(args: argparse.Namespace, studies: Any, pipeline_file: Path) -> tuple[StudyEntry, str]:
    """The study asked for: ``--study``'s entry of pipeline.yaml with the flags over it, or the flags alone."""
    from mltf_flow.config.schema import dump, validate

    if args.study:
        base: dict[str, Any] = dump(studies(args.study))
        where = f"{pipeline_file}: study {args.study!r}"
    else:
        base, where = {}, "mltf-flow tune"
        missing = [flag for flag, dest in (("--step", "step"), ("--metric", "metric"), ("--space", "space"))
                   if getattr(args, dest) is None]
        if missing:
            raise ConfigError(f"mltf-flow tune: give --study NAME (a study of {pipeline_file.name}) or "
                              f"{', '.join(missing)}.")
    given = {dest: getattr(args, dest) for dest in _STUDY_FLAGS if getattr(args, dest) is not None}
    for dest, value in given.items():
        base[_STUDY_FLAGS[dest]] = str(Path(value).resolve()) if dest == "space" else value
    if args.study and given:  # a bad value may be a flag's: say both places
        where += f" with the flags {', '.join('--' + d.replace('_', '-') for d in given)}"
    return validate(StudyEntry, base, where), where


def build_study_target(args: argparse.Namespace) -> Any:
    """The study's Luigi task, with every input checked."""
    from mltf_flow.input_check import check_tracking_server, validate_tree
    from mltf_flow.pipeline import PIPELINE_FILE, load_pipeline
    from mltf_flow.pipeline_run import parse_params
    from mltf_flow.tune.step import PipelineTune

    spec = load_pipeline(args.project_dir)
    entry, _ = study_entry(args, spec.study, spec.root / PIPELINE_FILE)
    if spec.step(entry.step).is_stage:
        raise ConfigError(f"step {entry.step!r} is a stage step: it has no parameters to search.")
    space = entry.space if isinstance(entry.space, str) else json.dumps(entry.space, sort_keys=False)
    task = PipelineTune(
        project_dir=str(spec.root), run_step=entry.step, overrides=parse_params(args.param),
        allow_extra=args.allow_extra_params, profile=args.profile, env_manager=args.env_manager,
        n_trials=entry.n_trials, space=space, metric=entry.metric, direction=entry.direction, sampler=entry.sampler,
        pruner=entry.pruner, sampler_seed=entry.seed, n_jobs=entry.n_jobs, study_name=args.study_name,
        world_size=entry.world_size or 1, include_baseline=entry.include_defaults,
    )
    validate_tree(task, set())
    check_tracking_server()
    return task


def cmd_tune(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings
    from mltf_flow.failure_report import report_outcome
    from mltf_flow.invocation import new_invocation
    from mltf_flow.pipeline_run import run_tasks

    if args.no_wait:
        os.environ["MLTF_FLOW_WAIT_FOR_RUNNING"] = "false"
    task = build_study_target(args)
    invocation = new_invocation()
    outcome = run_tasks([task], log_level=args.log_level)
    print(outcome.summary)
    report_outcome(load_settings(), invocation_id=invocation, succeeded=outcome.succeeded,
                   title=f"pipeline {task.pipeline_name()}, study of step {task.run_step}")
    return outcome.exit_code


def cmd_optuna_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the configured storage, where study runs link (the ``optuna_dashboard`` setting)."""
    from urllib.parse import urlparse

    from mltf_flow.config import load_settings
    from mltf_flow.tune.spec import shown_storage, storage_url

    settings = load_settings()
    url = storage_url(settings)
    where = urlparse(settings.optuna_dashboard)
    host, port = args.host or where.hostname or "127.0.0.1", args.port or where.port or 8080
    exe = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable)) or shutil.which("optuna-dashboard")
    if exe is None:
        raise ConfigError("optuna-dashboard is not installed here: pip install optuna-dashboard "
                          "(or pip install 'mltf_flow[hpo]').")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise ConfigError(f"no studies yet: {shown_storage(url)} does not exist. Run one first (mltf-flow tune ...).")
    check_port_free(host, port, "optuna-dashboard", "mltf-flow optuna-dashboard")
    print(f"optuna-dashboard on http://{host}:{port} (storage {shown_storage(url)}); Ctrl-C stops it", flush=True)
    # This process becomes the server: a SIGTERM or SIGINT sent to it reaches optuna-dashboard itself (a child
    # started with subprocess.call stayed up, serving, after its parent was terminated).
    os.execv(exe, [exe, url, "--host", host, "--port", str(port), "--quiet"])


__all__ = ["add_parser", "add_study_flags", "build_study_target", "cmd_optuna_dashboard", "cmd_tune", "study_entry"]
