"""The gateway's commands in ``mltf-flow``: ``gateway serve`` for the facility; ``login``, ``submit``,
``submissions`` and ``secrets`` for users. The gateway is ``--gateway URL`` or ``$MLTF_GATEWAY_URL``
(``export $(mltf-flow login --gateway URL)`` sets it)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mltf_flow.errors import ConfigError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("gateway", help="run the gateway (REST submission for remote users; facility side)")
    actions = p.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="serve the gateway's API, MLflow proxy, health and metrics")
    serve.add_argument("--config", required=True, type=Path, help="the gateway's YAML configuration")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    p = sub.add_parser("login", help="log in to a gateway (OIDC device flow); use as: export $(mltf-flow login ...)")
    p.add_argument("--gateway", default=None, help="the gateway's URL (default: $MLTF_GATEWAY_URL)")

    p = sub.add_parser("submit", help="submit a pipeline target (or, with --entry-point, one entry point) "
                                      "through a gateway")
    p.add_argument("project_dir", type=Path, help="directory with MLproject (and pipeline.yaml)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--step", "-s", help="pipeline step to run, with what it needs")
    group.add_argument("--entry-point", "-e", help="one entry point, as `mlflow run --backend mltf-gateway`")
    p.add_argument("-P", "--param", action="append", default=[], help="KEY=VALUE (pipelines: or STEP.KEY=VALUE)")
    p.add_argument("--profile", default=None, help="the facility's cluster profile for the pipeline's steps")
    p.add_argument("--backend-config", default=None, help="entry points: JSON of SLURM settings")
    p.add_argument("--experiment", default=None, help="MLflow experiment name")
    p.add_argument("--wait", action="store_true", help="wait until it ended (exit 1 unless it finished)")
    p.add_argument("--gateway", default=None, help="the gateway's URL (default: $MLTF_GATEWAY_URL)")

    p = sub.add_parser("submissions", help="your gateway submissions: list, show, cancel, logs")
    p.add_argument("action", choices=("list", "show", "cancel", "logs"))
    p.add_argument("submission_id", nargs="?")
    p.add_argument("--all", action="store_true", help="list: everyone's (admins)")
    p.add_argument("--wait", action="store_true", help="show: wait until it ended")
    p.add_argument("--follow", "-f", action="store_true", help="logs: follow until it ended")
    p.add_argument("--gateway", default=None, help="the gateway's URL (default: $MLTF_GATEWAY_URL)")

    p = sub.add_parser("secrets", help="your secrets on a gateway, given to your jobs as environment variables")
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("name", nargs="?", help="the variable name, e.g. WANDB_API_KEY")
    p.add_argument("--from-env", action="store_true", help="add: take the value from this shell's variable NAME")
    p.add_argument("--gateway", default=None, help="the gateway's URL (default: $MLTF_GATEWAY_URL)")


def cmd_gateway(args: argparse.Namespace) -> int:
    from mltf_flow.gateway.serve import serve

    return serve(args.config, log_level=args.log_level)


def cmd_login(args: argparse.Namespace) -> int:
    from mltf_flow.gateway.client import gateway_url
    from mltf_flow.gateway.login import login_main

    return login_main(gateway_url(args.gateway), stdout=sys.stdout, stderr=sys.stderr)


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"-P {pair!r}: expected KEY=VALUE.")
        out[key] = value
    return out


def _follow(client: Any, view: dict[str, Any], out: Any) -> int:
    """Print each new state of the submission to ``out`` until it ends; exit 0 when it finished."""
    from mltf_flow.gateway.client import describe

    last = client.wait(view["id"], on_change=lambda v: print(describe(v), file=out, flush=True), seen=view)
    return 0 if last["state"] == "finished" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from mltf_flow.gateway.client import GatewayClient, describe

    if not (args.project_dir / "MLproject").is_file():
        raise ConfigError(f"{args.project_dir} has no MLproject: give the project's directory.")
    if args.entry_point:  # said here, before the upload
        from mltf_flow.mlproject import read_project

        read_project(args.project_dir).entry_point(args.entry_point)
    client = GatewayClient(args.gateway or "")
    digest = client.upload(args.project_dir)
    request: dict[str, Any] = {"kind": "pipeline" if args.step else "project", "source": {"archive": digest},
                               "params": _params(args.param), "experiment": args.experiment}
    if args.step:
        request.update(target=args.step, profile=args.profile)
    else:
        request.update(entry_point=args.entry_point,
                       backend_config=json.loads(args.backend_config) if args.backend_config else {})
    view = client.submit(request)
    print(describe(view), file=sys.stderr)
    print(f"  follow it: mltf-flow submissions show {view['id']} --wait   cancel: mltf-flow submissions cancel "
          f"{view['id']}", file=sys.stderr)
    print(view["id"], flush=True)
    return _follow(client, view, sys.stderr) if args.wait else 0


def cmd_submissions(args: argparse.Namespace) -> int:
    from mltf_flow.gateway.client import GatewayClient, describe

    if args.action != "list" and not args.submission_id:
        raise ConfigError(f"mltf-flow submissions {args.action} needs a SUBMISSION_ID (see: mltf-flow submissions "
                          "list).")
    client = GatewayClient(args.gateway or "")
    if args.action == "list":
        views = client.submissions(everyone=args.all)
        for view in views:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(view["created"]))
            print(f"{when}  " + describe(view).splitlines()[0] + (f" [{view['user']}]" if args.all else ""))
        if not views:
            print("no submissions" + ("" if args.all else " of yours"), file=sys.stderr)
        return 0
    if args.action == "logs":
        for chunk in client.logs(args.submission_id, follow=args.follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return 0
    view = client.cancel(args.submission_id) if args.action == "cancel" else client.get(args.submission_id)
    print(describe(view), flush=True)
    return _follow(client, view, sys.stdout) if args.wait else 0


def cmd_secrets(args: argparse.Namespace) -> int:
    from mltf_flow.gateway.client import GatewayClient

    if args.action != "list" and not args.name:
        raise ConfigError(f"mltf-flow secrets {args.action} needs NAME (the environment variable your jobs get).")
    client = GatewayClient(args.gateway or "")
    if args.action == "list":
        for entry in client.secrets():
            print(entry["name"])
        return 0
    if args.action == "remove":
        client.delete_secret(args.name)
        return 0
    if args.from_env:
        value = os.environ.get(args.name)
        if not value:
            raise ConfigError(f"--from-env: ${args.name} is not set in this shell.")
    elif sys.stdin.isatty():
        value = getpass.getpass(f"value of {args.name} (not shown): ")
    else:
        value = sys.stdin.read().rstrip("\n")
    client.put_secret(args.name, value)
    print(f"stored {args.name}; your jobs get it as ${args.name}", file=sys.stderr)
    return 0


HANDLERS = {"gateway": cmd_gateway, "login": cmd_login, "submit": cmd_submit, "submissions": cmd_submissions,
            "secrets": cmd_secrets}
