"""``mltf-flow schedule``: add, list, show, pause, resume, remove and fire schedules.

    mltf-flow schedule add NAME (--every 1d [--start 2026-12-07T02:00] | --cron '0 2 * * *')
                           [--via slurm|scrontab|cron|none] [--if-running wait|skip]
                           [--partition P] [--account A] [--time-limit T] [--replace]
                           PROJECT_DIR --step STEP [-P k=v ...] [--profile P] [--env-manager M] [--workers N]
    mltf-flow schedule add NAME ... --pipeline NAME --luigi --module MODULE TASK [luigi arguments ...]
    mltf-flow schedule list
    mltf-flow schedule show NAME [--fires N]       definition, what is installed, the last fires
    mltf-flow schedule pause NAME | resume NAME    take the installed job/line away, put it back
    mltf-flow schedule remove NAME                 no job left in squeue, no line in the crontab
    mltf-flow schedule fire NAME|DEFINITION        one fire now (what SLURM, scrontab and cron run)

Everything ``add`` is given is checked before anything is installed: the target is built as ``mltf-flow run``
builds it (parameters, environments, profiles, datasets, the tracking server), SLURM pre-flights the fire's
job (``sbatch --test-only``), and a period cron cannot express is refused for cron and scrontab.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from mltf_flow.errors import ConfigError
from mltf_flow.schedule import crontab, slurm_chain, store
from mltf_flow.schedule.spec import (
    IF_RUNNING,
    VIAS,
    Schedule,
    SlurmOptions,
    Target,
    check_luigi_args,
    check_name,
    check_params,
    current_python,
    kept_environment,
)
from mltf_flow.schedule.when import When, stamp


def add_parser(sub: Any) -> None:
    """The ``schedule`` subcommand and its own subcommands, on ``mltf-flow``'s parser."""
    schedule = sub.add_parser("schedule", help="run a pipeline on a schedule (SLURM, scrontab or cron)")
    actions = schedule.add_subparsers(dest="action", required=True)
    p = actions.add_parser("add", help="schedule a pipeline invocation")
    p.add_argument("name", help="the schedule's name (letters, digits, . _ -)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", help="a period: 1d, 6h, 30m, 1m (fires on a grid from --start)")
    when.add_argument("--cron", help="a cron expression, e.g. '0 2 * * *' (02:00 every night)")
    p.add_argument("--start", help="with --every: the first fire, local time (2026-12-07T02:00); default now")
    p.add_argument("--via", choices=VIAS, default=None,
                   help="where it is installed (default: slurm where sbatch is on PATH, else cron); none: "
                        "nothing, your own scheduler runs `mltf-flow schedule fire NAME`")
    p.add_argument("--if-running", choices=IF_RUNNING, default="wait",
                   help="an earlier fire still runs: wait for it, or skip this fire (default wait)")
    p.add_argument("--partition", help="SLURM partition of the fire's job (slurm, scrontab)")
    p.add_argument("--account", help="SLURM account of the fire's job")
    p.add_argument("--time-limit", help="SLURM time limit of the fire's job (default: the partition's)")
    p.add_argument("--mem", help="SLURM memory of the fire's job, e.g. 4G (default: the partition's; some sites "
                                 "give a job the whole node)")
    p.add_argument("--replace", action="store_true", help="replace a schedule of the same name")
    p.add_argument("--pipeline", help="with --luigi: the pipeline (MLflow experiment) its steps record to")
    p.add_argument("project_dir", nargs="?", help="the project, as for `mltf-flow run`")
    p.add_argument("--step", "-e", help="step (or entry point) to run")
    p.add_argument("-P", "--param", action="append", default=[], help="KEY=VALUE or STEP.KEY=VALUE")
    p.add_argument("--profile", default=None, help="cluster profile")
    p.add_argument("--env-manager", default=None, choices=("local", "virtualenv", "uv", "conda"))
    p.add_argument("--workers", type=int, default=1, help="Luigi worker processes")
    p.add_argument("--luigi", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="instead of PROJECT_DIR: a luigi command line (what follows `luigi`), e.g. --module "
                        "pipelines RangeDaily --of Train --start 2026-12-01")
    actions.add_parser("list", help="the schedules of this work directory")
    p = actions.add_parser("show", help="a schedule: its definition, what is installed, its last fires")
    p.add_argument("name")
    p.add_argument("--fires", type=int, default=10, help="how many of the last fires to list")
    for name, helptext in (("pause", "stop firing (the definition is kept)"), ("resume", "fire again"),
                           ("remove", "remove the schedule and every job or line it installed")):
        actions.add_parser(name, help=helptext).add_argument("name")
    p = actions.add_parser("fire", help="fire a schedule once, now (SLURM, scrontab and cron run this)")
    p.add_argument("schedule", metavar="NAME|DEFINITION")


def cmd_schedule(args: argparse.Namespace) -> int:
    from mltf_flow.config import load_settings

    if args.action == "fire":
        from mltf_flow.schedule.fire import fire

        given = Path(args.schedule)
        return fire(given if given.suffix == ".json" else store.definition_path(load_settings().work_dir,
                                                                                  args.schedule))
    work_dir = load_settings().work_dir
    action = {"add": _add, "list": _list, "show": _show, "pause": _pause, "resume": _resume,
              "remove": _remove}[args.action]
    return action(args, work_dir)


def _add(args: argparse.Namespace, work_dir: Path) -> int:
    name = check_name(args.name)
    path = store.definition_path(work_dir, name)
    old = store.load(path) if path.exists() else None
    if old is not None and not args.replace:
        raise ConfigError(f"schedule {name!r} exists ({path}). Add --replace to replace it, or `mltf-flow "
                          f"schedule remove {name}` first.")
    now = time.time()
    via = args.via or _default_via()
    schedule = Schedule(
        # A replaced schedule keeps its id: its history (fires are found by it) goes on.
        name=name, id=old.id if old else uuid.uuid4().hex,
        when=When.parse(every=args.every, cron=args.cron, start=args.start, now=now), target=_target(args), via=via,
        if_running=args.if_running, cwd=os.getcwd(), python=current_python(),
        environment=kept_environment(os.environ), slurm=_slurm_options(args, via), created=now,
    )
    _check_where(schedule, path)  # everything is checked before the old one is taken away
    if old is not None:
        _uninstall(old)
    store.save(schedule, path)
    try:
        what = _install(schedule, path, now)
    except BaseException:
        store.forget(path)  # nothing half-installed stays behind
        raise
    print(f"schedule {name!r} {'replaced' if old else 'added'}: {schedule.target.command()}")
    print(f"  {schedule.when.describe()}, via {schedule.via}: {what}")
    _say_what_cron_lacks(schedule)
    print(f"  history: mltf-flow schedule show {name}; remove: mltf-flow schedule remove {name}")
    return 0


def _slurm_options(args: argparse.Namespace, via: str) -> SlurmOptions:
    options = SlurmOptions(args.partition, args.account, args.time_limit, args.mem)
    given = [flag for flag, value in (("--partition", args.partition), ("--account", args.account),
                                      ("--time-limit", args.time_limit), ("--mem", args.mem)) if value]
    if given and via not in ("slurm", "scrontab"):
        raise ConfigError(f"{', '.join(given)}: options of the fire's SLURM job, but --via {via} starts no job. "
                          "Use --via slurm, or leave them out.")
    return options


def _check_where(schedule: Schedule, path: Path) -> None:
    if schedule.via in ("cron", "scrontab"):
        schedule.when.cron_expression(schedule.via)  # a period cron cannot express fails here
    if schedule.via == "scrontab":
        crontab.scrontab_path()
    if schedule.via == "slurm":
        slurm_chain.preflight(schedule, path)


def _say_what_cron_lacks(schedule: Schedule) -> None:
    """cron passes no environment: settings held in variables a schedule does not keep (secrets) are missing."""
    if schedule.via != "cron":
        return
    dropped = sorted(name for name in os.environ if name.startswith(("MLTF_FLOW_", "MLFLOW_TRACKING_"))
                     and name not in schedule.environment)
    if dropped:
        print(f"  note: cron fires will not have {', '.join(dropped)} (secrets are not kept in a schedule): put "
              "them in ~/.config/mltf_flow/config.yaml or a file only you can read (docs/scheduling.md, Secrets)")


def _target(args: argparse.Namespace) -> Target:
    if args.luigi is not None:
        if args.project_dir or args.step:
            raise ConfigError("give either PROJECT_DIR --step STEP or --luigi ARGS, not both.")
        luigi_args = tuple(a for a in args.luigi if a != "--") if args.luigi[:1] == ["--"] else tuple(args.luigi)
        if not luigi_args:
            raise ConfigError("--luigi needs a luigi command line, e.g. --luigi --module pipelines Train.")
        if not args.pipeline:
            raise ConfigError("--luigi needs --pipeline NAME: the pipeline (MLflow experiment) its steps record "
                              "to, where the schedule's fires are recorded too.")
        check_luigi_args(luigi_args)
        _check_luigi_target(luigi_args)
        return Target(luigi_args=luigi_args, pipeline=args.pipeline)
    if not args.project_dir or not args.step:
        raise ConfigError("schedule add needs what to run: PROJECT_DIR --step STEP [-P k=v ...] (as for "
                          "`mltf-flow run`), or --luigi followed by a luigi command line.")
    from mltf_flow.pipeline_run import Request, build_target, parse_params, pipeline_name

    params = parse_params(args.param)
    check_params(params)
    project = str(Path(args.project_dir).resolve())
    build_target(Request(project, args.step, params, profile=args.profile, env_manager=args.env_manager))
    return Target(project_dir=project, step=args.step, params=tuple(params.items()), profile=args.profile,
                  env_manager=args.env_manager, workers=args.workers,
                  pipeline=args.pipeline or pipeline_name(project))


def _check_luigi_target(luigi_args: tuple[str, ...]) -> None:
    """Luigi parses the command line now (module importable, task and parameters known), as a fire will."""
    import sys

    from luigi.cmdline_parser import CmdlineParser

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as a fire will: `luigi --module M` typed in this directory
    try:
        with CmdlineParser.global_instance(list(luigi_args)) as parser:
            parser.get_task_obj()
    except SystemExit:
        raise ConfigError(f"--luigi {' '.join(luigi_args)}: luigi does not accept this command line (its "
                          "message is above).") from None
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--luigi {' '.join(luigi_args)}: {type(exc).__name__}: {exc}") from None


def _default_via() -> str:
    if shutil.which("sbatch"):
        return "slurm"
    if shutil.which("crontab"):
        return "cron"
    raise ConfigError("no place to install a schedule: neither sbatch (SLURM) nor crontab (cron) is on PATH. "
                      "Add it from a SLURM login node, or install cron.")


def _install(schedule: Schedule, path: Path, now: float) -> str:
    if schedule.via == "none":
        return (f"nothing installed: your own scheduler (a systemd timer, a workflow system) runs `"
                f"{shlex.join(slurm_chain.fire_command(schedule, path))}` in {schedule.cwd}")
    if schedule.via == "slurm":
        return slurm_chain.install(schedule, path, now)
    return crontab.install(schedule, path, schedule.via)


def _uninstall(schedule: Schedule, *, running_too: bool = True) -> str:
    if schedule.via == "none":
        return "nothing was installed"
    if schedule.via == "slurm":
        cancelled = slurm_chain.uninstall(schedule, running_too=running_too)
        return f"cancelled SLURM job(s) {', '.join(cancelled)}" if cancelled else "no SLURM job was queued"
    removed = crontab.uninstall(schedule, schedule.via)
    if schedule.via == "scrontab":
        slurm_chain.uninstall(schedule, running_too=running_too)  # scrontab's pending job (and a running fire)
    return f"removed its {schedule.via} line" if removed else f"no {schedule.via} line was installed"


def _installed(schedule: Schedule) -> str:
    if schedule.via == "none":
        return "fired by your own scheduler"
    try:
        if schedule.via == "slurm":
            fires = slurm_chain.queued(schedule)
            if not fires:
                return "NOT INSTALLED: no job in squeue (mltf-flow schedule resume " + schedule.name + ")"
            return "; ".join(f"job {f.job_id} {f.state.lower()}" + (f", begins {f.begins}" if f.state == "PENDING"
                                                                    else "") for f in fires)
        if crontab.installed(schedule, schedule.via):
            return f"{schedule.via} line installed, next fire at {stamp(schedule.when.next_slot(time.time()))}"
        return f"NOT INSTALLED: no {schedule.via} line (mltf-flow schedule resume {schedule.name})"
    except Exception as exc:  # a status display: say what could not be asked
        return f"unknown ({type(exc).__name__}: {exc})"


def _list(args: argparse.Namespace, work_dir: Path) -> int:
    schedules = store.all_schedules(work_dir)
    if not schedules:
        print(f"no schedules in {store.schedules_dir(work_dir)} (mltf-flow schedule add --help)")
    for schedule, _ in schedules:
        state = "paused" if schedule.paused else _installed(schedule)
        print(f"{schedule.name:<20} {schedule.when.describe():<40} {schedule.via:<9} {state}")
        print(f"{'':<20} {schedule.target.command()}")
    return 0


def _show(args: argparse.Namespace, work_dir: Path) -> int:
    schedule, path = store.find(work_dir, args.name)
    print(f"schedule {schedule.name} (id {schedule.id}), {schedule.when.describe()}, via {schedule.via}"
          + (" [paused]" if schedule.paused else ""))
    print(f"  runs:        {schedule.target.command()}")
    print(f"  in:          {schedule.cwd}")
    print(f"  if running:  {schedule.if_running}")
    print(f"  definition:  {path}")
    print(f"  logs:        {store.log_dir(path)}")
    print(f"  installed:   {'paused' if schedule.paused else _installed(schedule)}")
    if schedule.via == "slurm":
        print(f"  job script ({slurm_chain.script_path(path)}):")
        print("    " + slurm_chain.render(schedule, path).rstrip().replace("\n", "\n    "))
    elif schedule.via == "none":
        print(f"  fire command: cd {shlex.quote(schedule.cwd)} && "
              f"{shlex.join(slurm_chain.fire_command(schedule, path))}")
    else:
        print(f"  {schedule.via} lines:")
        print("    " + "\n    ".join(crontab.block(schedule, path, schedule.via)))
    _print_fires(schedule, args.fires)
    return 0


def _print_fires(schedule: Schedule, count: int) -> None:
    from mltf_flow.config import load_settings
    from mltf_flow.schedule.record import FireRecord
    from mltf_flow.tags import TAG_SCHEDULE_OUTCOME, TAG_SCHEDULE_SLOT, TAG_SCHEDULE_VIA

    settings = load_settings()
    experiment = settings.experiment_for(schedule.target.pipeline)
    fires = FireRecord(settings, experiment).fires(schedule.id, count)
    print(f"  last fires ({len(fires)}; MLflow experiment {experiment!r}):")
    for fire in fires:
        outcome = fire.tags.get(TAG_SCHEDULE_OUTCOME, "running (or killed: no outcome yet)")
        print(f"    {fire.tags.get(TAG_SCHEDULE_SLOT, '?'):<20} {fire.status:<9} "
              f"{fire.tags.get(TAG_SCHEDULE_VIA, '?'):<8} {fire.run_id}  {outcome}")


def _pause(args: argparse.Namespace, work_dir: Path) -> int:
    schedule, path = store.find(work_dir, args.name)
    store.save(replace(schedule, paused=True), path)  # first: a fire starting now sees it and does nothing
    print(f"schedule {schedule.name!r} paused: {_uninstall(schedule, running_too=False)} (a fire that is running "
          f"finishes). `mltf-flow schedule resume {schedule.name}` fires it again.")
    return 0


def _resume(args: argparse.Namespace, work_dir: Path) -> int:
    schedule, path = store.find(work_dir, args.name)
    schedule = replace(schedule, paused=False)
    store.save(schedule, path)
    print(f"schedule {schedule.name!r} resumed: {_install(schedule, path, time.time())}")
    return 0


def _remove(args: argparse.Namespace, work_dir: Path) -> int:
    schedule, path = store.find(work_dir, args.name)
    path.unlink()  # first: a fire starting now finds no schedule and does not submit the next one
    try:
        what = _uninstall(schedule)
    except BaseException:
        store.save(schedule, path)  # still installed: keep the definition that says so
        raise
    store.forget(path)
    print(f"schedule {schedule.name!r} removed: {what}. Its fires stay in MLflow (tag mltf.schedule = "
          f"'{schedule.name}').")
    return 0


__all__ = ["add_parser", "cmd_schedule", "stamp"]
