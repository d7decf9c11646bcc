"""``mltf-flow``: the command line.

    mltf-flow run PROJECT_DIR --step train [-P k=v | -P step.k=v ...] [--workers N]
    mltf-flow status PROJECT_DIR --step train [-P ...] [--graph]   what run would do: runs found, why steps rerun
    mltf-flow status PROJECT_DIR --study NAME [tune's flags]  that too for a study, with its run and trials
    mltf-flow ui [--port 5000]                              MLflow UI on the configured store
    mltf-flow config                                        the resolved settings
    mltf-flow profiles                                      the cluster profiles and where they come from
    mltf-flow render --profile NAME                         the exact SLURM job script, not submitted
    mltf-flow render --backend-config CFG PROJECT -e EP     the script `mlflow run --backend mltf` would submit
    mltf-flow doctor --profile NAME                         check a profile (incl. sbatch --test-only)
    mltf-flow job RUN_ID [--wait | --cancel]                a run `mlflow run --backend mltf` submitted
    mltf-flow init DIR [--module NAME] [--force]            pipeline.yaml + Luigi module for DIR's MLproject
                                                            (or a copy of the example project)
    mltf-flow schedule add|list|show|pause|resume|remove|fire   recurring fires of a pipeline (SLURM, cron)
    mltf-flow tune PROJECT_DIR --study NAME | --step S --space F --metric M   an Optuna study (docs/hpo.md)
    mltf-flow optuna-dashboard [--port 8080]                the studies in optuna-dashboard
    mltf-flow --version

Exit codes of ``run`` follow ``configs/luigi.cfg``'s ``[retcode]``: 0 success, 30 a step failed,
35 scheduling error, 25 not run, 20 missing input; 2 for bad input detected before anything ran; 10 with
``--no-wait`` when another invocation is running a step this one needs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from mltf_flow import __version__
from mltf_flow.console import use_console
from mltf_flow.errors import EXIT_BAD_INPUT, ConfigError, MltfFlowError
from mltf_flow.local_port import check_port_free
from mltf_flow.pipeline_run import CLI_SECRET_PREFIX, parse_params
from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import TAG_COMPLETE, TAG_ERROR, TAG_SLURM_LOG, TAG_SLURM_REASON, TAG_SLURM_STATE


def _hide_secret_argv(argv: list[str]) -> list[str] | None:
    """``argv`` with the values of secret ``-P`` parameters (secret names, URLs with passwords) replaced by
    placeholders whose values go into this process's environment; None when there are none. ``main`` then
    runs itself again with it, so ``ps`` shows no secret for longer than that instant."""
    from mltf_flow.redaction import is_secret_param

    out, hidden = list(argv), False
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-P", "--param"):
            key, eq, value = argv[i + 1].partition("=")
            if eq and not value.startswith(f"@@{CLI_SECRET_PREFIX}") and is_secret_param(key.rpartition(".")[2], value):
                env_name = f"{CLI_SECRET_PREFIX}{i}"
                os.environ[env_name] = value
                out[i + 1] = f"{key}=@@{env_name}@@"
                hidden = True
    return out if hidden else None


def _request(args: argparse.Namespace) -> Any:
    from mltf_flow.pipeline_run import Request

    return Request(args.project_dir, args.step, parse_params(args.param), allow_extra=args.allow_extra_params,
                   profile=getattr(args, "profile", None), env_manager=getattr(args, "env_manager", None),
                   from_study=getattr(args, "from_study", None))


def _build_target(args: argparse.Namespace) -> Any:
    from mltf_flow.pipeline_run import build_target

    return build_target(_request(args))


def cmd_run(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings
    from mltf_flow.failure_report import report_outcome
    from mltf_flow.invocation import new_invocation
    from mltf_flow.pipeline_run import run_tasks

    if args.no_wait:  # a setting like any other, so that forked task processes see it too
        os.environ["MLTF_FLOW_WAIT_FOR_RUNNING"] = "false"
    task = _build_target(args)
    invocation = new_invocation()
    outcome = run_tasks([task], workers=args.workers, scheduler_host=args.scheduler_host, log_level=args.log_level)
    print(outcome.summary)
    pipeline = task.pipeline_name() if hasattr(task, "pipeline_name") else task.pipeline
    report_outcome(load_settings(), invocation_id=invocation, succeeded=outcome.succeeded,
                   title=f"pipeline {pipeline}, step {args.step}")  # grouped failures; notifications
    return outcome.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    """What ``run`` with the same flags would do: per step, the run found for its key, or why it will run
    (mltf_flow.pipeline_status); ``--graph``: the DAG as a tree."""
    from mltf_flow.pipeline_graph import status_lines, status_tree
    from mltf_flow.pipeline_status import collect
    from mltf_flow.step import MLflowStep

    if args.study:
        from mltf_flow.tune.commands import build_study_target

        task = build_study_target(args)
    elif args.step:
        task = _build_target(args)
    else:
        raise ConfigError("status needs --step STEP (a step to run) or --study NAME (a study of pipeline.yaml).")
    nodes = collect([task])
    if args.graph:
        from rich.console import Console

        pipeline = task.pipeline_name() if isinstance(task, MLflowStep) else args.step
        what = f"study {args.study}" if args.study else f"step {args.step}"
        # Not a terminal (a pipe, a log): no width to fit, and a cut line would lose a run id or a study's name.
        width = None if sys.stdout.isatty() else 10_000
        Console(soft_wrap=True, width=width).print(status_tree(nodes, f"pipeline {pipeline}, {what}"))
    else:
        print("\n".join(status_lines(nodes)))
    if args.files:
        todo, seen = [task], set()
        while todo:
            current = todo.pop()
            if isinstance(current, MLflowStep) and current.task_id not in seen:
                seen.add(current.task_id)
                print(f"{current.step_name()}:")
                _print_code(current)
                todo.extend(current.requirements().values())
    return 0


def _print_code(step: Any) -> None:
    """What a step's key covers: its code files, and what was left out on purpose."""
    from mltf_flow.config import load_settings
    from mltf_flow.project_outputs import record_path

    version = step.code_version()
    selection = version.selection
    environment = step.environment()
    print(f"  code ({', '.join(step.code_paths)}): {version.files} file(s) in {selection.root}"
          f"{' (git)' if selection.in_git else ''}")
    for rel in selection.files:
        print(f"    {rel}")
    if selection.large:
        print("  not hashed, large untracked files (list them in code: to make them part of the key):")
        for rel in selection.large:
            print(f"    {rel}")
    if selection.outputs:
        record = record_path(load_settings().work_dir, selection.root)
        print(f"  not hashed, written by earlier step runs (record: {record}):")
        for rel in selection.outputs:
            print(f"    {rel}")
    where = f" at {environment.prefix}" if environment.prefix else ""
    print(f"  environment: {environment.manager}{where}")


def cmd_ui(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings

    settings = load_settings()
    if not settings.is_local_store:
        print(f"tracking server: {settings.tracking_uri} (open it in a browser)")
        return 0
    check_port_free(args.host, args.port, "the MLflow UI", "mltf-flow ui")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri,
           "--host", args.host, "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {settings.tracking_uri}); Ctrl-C stops it\n"
          "  an experiment's runs are under 'Model training' (MLflow opens an experiment on its GenAI overview)",
          flush=True)
    return _serve(cmd)


def _serve(cmd: list[str]) -> int:
    """Run the UI server (``mlflow ui`` and the uvicorn it starts) as a process group of its own, and stop the
    whole group when this process is told to stop (Ctrl-C, or SIGTERM/SIGHUP to its PID): else the server
    outlives ``mltf-flow ui`` and keeps its port."""
    import signal

    proc = subprocess.Popen(cmd, start_new_session=True)
    stopped: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    code = proc.wait()
    if stopped:  # the server shuts down cleanly (exit 0); the command says it was stopped, as a shell expects
        return 128 + stopped[0]
    return 128 - code if code < 0 else code


def _mlflow_error_code(exc: BaseException) -> str | None:
    """MLflow's error code of ``exc`` (``RESOURCE_DOES_NOT_EXIST``, ...), None for other exceptions."""
    code = getattr(exc, "error_code", None)
    return str(code) if code is not None and type(exc).__module__.startswith("mlflow") else None


def cmd_profiles(args: argparse.Namespace) -> int:
    from mltf_flow.clusters.profiles import get_profile, profile_names

    for name in profile_names():
        try:
            p = get_profile(name)
        except ConfigError as exc:
            print(f"{name:<16} INVALID: {exc}")
            continue
        where = p.origin
        gpu = f", {p.gpus_per_node} GPU/job" if p.gpus_per_node else ""
        extra = f" -> GPU steps: {p.gpu_profile}" if p.gpu_profile else ""
        print(f"{name:<16} {p.kind:<6} {p.size}{gpu}{extra}  ({where})")
    return 0


def _slurm_profile(name: str) -> Any:
    from mltf_flow.clusters.profiles import SlurmProfile, get_profile

    profile = get_profile(name)
    if not isinstance(profile, SlurmProfile):
        raise ConfigError(f"profile {name!r} is a {profile.kind} profile: it has no job script.")
    return profile


def cmd_render(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings

    if args.backend_config is not None:
        from mltf_flow.backend.submit import render_for

        config = _backend_config(args.backend_config)
        if not args.project_dir:
            raise ConfigError("render --backend-config needs the project: mltf-flow render --backend-config CFG "
                              "PROJECT_DIR -e ENTRY_POINT [-P key=value ...]")
        if "://" not in args.project_dir and "@" not in args.project_dir and not os.path.exists(args.project_dir):
            # MLflow takes any other string for a git URL, and fails with git's traceback.
            raise ConfigError(f"project {args.project_dir}: no such directory. Pass the directory that holds "
                              "MLproject (or a git URL).")
        print(render_for(args.project_dir, args.entry_point, parse_params(args.param), config, args.env_manager),
              end="")
        return 0
    if args.profile is None:
        raise ConfigError("render needs --profile NAME (a Dask worker job) or --backend-config CFG PROJECT_DIR "
                          "(an `mlflow run --backend mltf` job).")
    from mltf_flow.clusters.slurm import render_job_script

    profile = _slurm_profile(args.profile)
    print(render_job_script(profile, load_settings().work_dir / "slurm-logs" / profile.name), end="")
    return 0


def _backend_config(text: str) -> dict[str, Any]:
    """A backend config as ``mlflow run -c`` takes it: a ``.json`` file, or inline JSON."""
    import json
    from pathlib import Path

    from mltf_flow.backend.config import load_backend_config_file

    if text.endswith(".json"):
        return load_backend_config_file(Path(text))
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--backend-config: not a .json file and not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ConfigError("--backend-config: expected a JSON object of settings.")
    return data


def cmd_job(args: argparse.Namespace) -> int:
    from mltf_flow.backend.submitted import SlurmSubmittedRun
    from mltf_flow.config import load_settings

    settings = load_settings()
    if settings.is_local_store:  # a fresh store: MLflow's "Creating initial MLflow database tables" is no news
        import logging

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    else:
        from mltf_flow.tracking_server import check_server

        check_server(settings.tracking_uri)  # unreachable: say so now (MLflow's own retries take minutes)
    try:
        run = SlurmSubmittedRun.from_run(args.run_id, settings.tracking_uri, poll_interval=2.0,
                                         max_poll_interval=30.0)
    except Exception as exc:
        if _mlflow_error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"no MLflow run {args.run_id!r} in {strip_credentials(settings.tracking_uri)}. "
                              "Pass the run id `mlflow run --backend mltf` printed (or set MLFLOW_TRACKING_URI / "
                              "the tracking_uri setting to the store it ran in).") from None
        raise
    if args.cancel:
        run.cancel()
    ok = run.wait() if args.wait else None
    status = run.get_status()
    tags = run.client.get_run(args.run_id).data.tags
    print(f"MLflow run {args.run_id}: {status}" + (" (complete)" if tags.get(TAG_COMPLETE) == "true" else ""))
    print(f"  SLURM job {run.job_id}: {tags.get(TAG_SLURM_STATE, '?')} ({tags.get(TAG_SLURM_REASON, '?')})")
    if tags.get(TAG_ERROR):
        print("  " + tags[TAG_ERROR].replace("\n", "\n  "))
    print(f"  log: {tags.get(TAG_SLURM_LOG, '?')}")
    if ok is None:
        return 0
    return 0 if ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from mltf_flow.clusters.doctor import run_doctor

    return run_doctor(args.profile)


def cmd_config(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings
    from mltf_flow.redaction import shown_value

    settings = load_settings()
    for key, value in vars(settings).items():
        print(f"{key}: {shown_value(key, value)}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from mltf_flow.scaffold import init_project, report

    print(report(init_project(args.directory, args.module, force=args.force), args.directory))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from mltf_flow.schedule.commands import cmd_schedule as schedule

    return schedule(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from mltf_flow.tune.commands import cmd_tune as tune

    return tune(args)


def cmd_optuna_dashboard(args: argparse.Namespace) -> int:
    from mltf_flow.tune.commands import cmd_optuna_dashboard as dashboard

    return dashboard(args)


def _parser() -> argparse.ArgumentParser:
    from mltf_flow.tune.commands import add_study_flags

    parser = argparse.ArgumentParser(prog="mltf-flow", description="MLflow projects as cached pipelines.")
    parser.add_argument("--version", action="version", version=f"mltf-flow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "run a step and everything it needs"), ("status", "show what would run")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("project_dir", help="directory with MLproject (and pipeline.yaml)")
        p.add_argument("--step", "-e", required=name == "run", help="step (or entry point) to run")
        p.add_argument("-P", "--param", action="append", default=[], help="KEY=VALUE or STEP.KEY=VALUE")
        p.add_argument("--allow-extra-params", action="store_true", help="pass unknown -P as --key value")
        p.add_argument("--profile", default=None, help="cluster profile (mltf-flow profiles lists them)")
        p.add_argument("--env-manager", default=None, choices=("local", "virtualenv", "uv", "conda"),
                       help="the steps' environment, as for `mlflow run` (default: MLflow's for the project)")
        p.add_argument("--from-study", default=None, metavar="STUDY",
                       help="the best trial's parameters of an Optuna study of this step (mltf-flow tune); -P wins")
        if name == "status":
            p.add_argument("--files", action="store_true", help="list the files each step's key covers")
            p.add_argument("--graph", action="store_true", help="draw the steps as a tree, with why each will run")
            p.add_argument("--study", help="a study of pipeline.yaml's studies: section: its run and trials "
                           "(paste the `mltf-flow tune` command line: its flags below apply)")
            add_study_flags(p.add_argument_group("with --study, as for mltf-flow tune"))
        # status takes run's command line as it is (paste it, change the word): these change nothing there.
        quiet = name == "status"
        p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS if quiet else "Luigi worker processes")
        p.add_argument("--scheduler-host", default=None,
                       help=argparse.SUPPRESS if quiet else "central luigid (default: local scheduler)")
        p.add_argument("--log-level", default="WARNING", help=argparse.SUPPRESS if quiet else "Luigi's log level")
        p.add_argument("--no-wait", action="store_true",
                       help=argparse.SUPPRESS if quiet else "a step another invocation is running with the same "
                       "inputs: exit 10 instead of waiting for its result")
    p = sub.add_parser("ui", help="start the MLflow UI on the configured tracking store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    sub.add_parser("config", help="print the resolved settings")
    sub.add_parser("profiles", help="list cluster profiles")
    p = sub.add_parser("render", help="print a SLURM job script without submitting it")
    p.add_argument("--profile", default=None, help="a profile's Dask worker job")
    p.add_argument("--backend-config", default=None, metavar="CFG",
                   help="the job `mlflow run --backend mltf -c CFG` would submit (a .json file or inline JSON)")
    p.add_argument("project_dir", nargs="?", help="with --backend-config: the MLflow project")
    p.add_argument("--entry-point", "-e", default="main")
    p.add_argument("-P", "--param", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--env-manager", default=None, choices=("local", "virtualenv", "uv", "conda"))
    p = sub.add_parser("doctor", help="check a profile and print a report")
    p.add_argument("--profile", required=True)
    p = sub.add_parser("job", help="state of a run `mlflow run --backend mltf` submitted; wait for or cancel it")
    p.add_argument("run_id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--wait", action="store_true", help="wait until it ended (exit 1 unless it completed)")
    group.add_argument("--cancel", action="store_true", help="scancel the job and mark the run KILLED")
    p = sub.add_parser("init", help="start a pipeline in DIR: for its MLproject, or a copy of the example project")
    p.add_argument("directory", metavar="DIR", help="a directory with your MLproject (kept), or a new/empty one")
    p.add_argument("--module", default="pipeline_steps", help="name of the Luigi module to write (default: "
                   "pipeline_steps)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    from mltf_flow.schedule.commands import add_parser
    from mltf_flow.tune.commands import add_parser as add_tune_parsers

    add_parser(sub)
    add_tune_parsers(sub)
    from mltf_flow.gateway.commands import add_parsers as add_gateway_parsers

    add_gateway_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.path.isfile(sys.argv[0]):
        hidden = _hide_secret_argv(sys.argv[1:])
        if hidden is not None:
            os.execv(sys.executable, [sys.executable, sys.argv[0], *hidden])
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "schedule" and args.action == "add" and args.project_dir is None \
            and not extra[0].startswith("-"):
        # argparse fills an optional positional only where it first meets positionals: after NAME and
        # --every, PROJECT_DIR comes back unrecognized. It is the project (as in `mltf-flow run PROJECT ...`).
        args.project_dir = extra.pop(0)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    use_console()
    from mltf_flow.gateway.commands import HANDLERS as GATEWAY_HANDLERS

    handler = {"run": cmd_run, "status": cmd_status, "ui": cmd_ui, "config": cmd_config, "profiles": cmd_profiles,
               "render": cmd_render, "doctor": cmd_doctor, "job": cmd_job, "init": cmd_init,
               "schedule": cmd_schedule, "tune": cmd_tune, "optuna-dashboard": cmd_optuna_dashboard,
               **GATEWAY_HANDLERS}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:
        # Whoever read our output stopped (`mltf-flow status | grep -q ...`, `| head`): end quietly, as Unix
        # tools do, and keep Python from a second BrokenPipeError when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe ended
    except ConfigError as exc:
        print(f"mltf-flow: error: {strip_credentials(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MltfFlowError as exc:
        print(f"mltf-flow: {strip_credentials(str(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        if _mlflow_error_code(exc) is None and not isinstance(exc, OSError):
            raise  # a bug of ours: its traceback is what a report needs
        # MLflow's and the system's errors name what failed in their message: that, without the traceback.
        what = "MLflow" if _mlflow_error_code(exc) else type(exc).__name__
        print(f"mltf-flow: {args.command}: {what}: {strip_credentials(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
