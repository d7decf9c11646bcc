"""A disposable Rucio server for tests: SQLite + gunicorn on 127.0.0.1, userpass auth over http.

Run with the server venv (`make rucio-venv`), never with .venv (it has only rucio-clients):

    .venv-rucio/bin/python tests/infra/rucio/server.py up --home DIR [--port P]
    .venv-rucio/bin/python tests/infra/rucio/server.py down --home DIR

`up` writes DIR/etc/server.cfg (server + daemons: RUCIO_CONFIG for daemons.py), DIR/etc/alembic.ini and
DIR/etc/client.cfg (what a client process uses as RUCIO_CONFIG), builds a fresh database DIR/rucio.db, starts
gunicorn in its own session (logs in DIR/log/, PID in DIR/gunicorn.pid), waits for /ping and writes
DIR/server.json = {"url", "port", "pid", "client_cfg", "server_cfg"}, also printed as the last line of stdout.
gunicorn serves Rucio's app through locked_app.py: one request at a time under DIR/db.lock, which daemons.py
takes too (dblock.py says why). `down` stops the server by its PID file only (SIGTERM, wait, SIGKILL, also for
workers left in its process group). Recipe and pitfalls:
shared/reference/rucio.md sections 2 and 6.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

USERNAME = "ddmlab"
PASSWORD = "secret"  # the bootstrap password of a throw-away test server
# Every REST endpoint a test may need. Not `traces`: it needs a STOMP broker and /var/log/rucio/trace, and the
# gunicorn worker fails to boot with it (clients get a harmless 404 on POST /traces/ instead).
ENDPOINTS = ("accounts, auth, config, dids, export, heartbeats, identities, import, lifetime_exceptions, locks, "
             "meta_conventions, ping, redirect, replicas, requests, rses, rules, scopes, subscriptions")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_cfg(home: Path, db_url: str, loglevel: str = "INFO") -> str:
    return f"""[common]
logdir = {home}/log
loglevel = {loglevel}

[database]
default = {db_url}
pool_reset_on_return = rollback

[bootstrap]
# Plaintext: create_root_account() hashes it (the template's sha256 string would become the password).
userpass_identity = {USERNAME}
userpass_pwd = {PASSWORD}
userpass_email = root@localhost

[alembic]
cfg = {home}/etc/alembic.ini

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash
support = nobody
support_rucio = nobody

[conveyor]
scheme = file

[api]
endpoints = {ENDPOINTS}
"""


def client_cfg(home: Path, url: str) -> str:
    # No [database]: that would put the client process in server mode. No auth_token_file_path: it makes every
    # account share one token file; the token cache goes to $TMPDIR/<user>/.rucio_<user>/ instead.
    return f"""[common]
logdir = {home}/log
loglevel = INFO

[client]
rucio_host = {url}
auth_host = {url}
auth_type = userpass
username = {USERNAME}
password = {PASSWORD}
account = root
request_retries = 3
"""


def alembic_ini(db_url: str) -> str:
    spec = importlib.util.find_spec("rucio.db.sqla.migrate_repo")
    assert spec is not None and spec.origin is not None, "rucio (server) is not installed in this interpreter"
    migrate_repo = os.path.dirname(spec.origin)
    # build_database() stamps the schema with alembic, whose env.py calls fileConfig(): the logging sections
    # are required (KeyError: 'formatters' without them).
    return f"""[alembic]
script_location = {migrate_repo}
sqlalchemy.url = {db_url}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARN
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s [%(name)s] %(message)s
"""


def build_database(home: Path) -> None:
    """Fresh schema + base VO + root account (userpass ddmlab/secret). Rucio reads and caches its config at
    import, so RUCIO_CONFIG is set before the first rucio import of this process (this is the only one)."""
    os.environ["RUCIO_CONFIG"] = str(home / "etc" / "server.cfg")
    os.environ.pop("RUCIO_HOME", None)
    from rucio.db.sqla.util import build_database, create_base_vo, create_root_account, purge_db

    purge_db()
    build_database()
    create_base_vo()
    create_root_account()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) from /proc/<pid>/stat, None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2])


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"  # a zombie (exited, not reaped yet) counts as gone


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (gunicorn runs in its own session: master + workers)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                members.append(int(entry.name))
    return members


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(home: Path, timeout: float = 15.0) -> bool:
    """Stop the gunicorn master named in DIR/gunicorn.pid and its workers. True if one was running."""
    pid_file = home / "gunicorn.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    # Guard against a recycled PID: only signal the gunicorn that logs into this home.
    if "gunicorn" not in _cmdline(pid) or str(home) not in _cmdline(pid):
        pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # graceful: the master stops its workers (--graceful-timeout) and exits
    stopped = _wait(lambda: not _alive(pid), timeout) and _wait(lambda: not _group(pid), 5)
    if not stopped:
        # Own session (start_new_session): the process group is the master and its workers.
        for member in _group(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        _wait(lambda: not _group(pid), 10)
    pid_file.unlink(missing_ok=True)
    return True


def start_gunicorn(home: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log_dir = home / "log"
    env = {**os.environ, "RUCIO_CONFIG": str(home / "etc" / "server.cfg"), "RUCIO_TEST_HOME": str(home)}
    env.pop("RUCIO_HOME", None)
    with open(log_dir / "gunicorn.out", "ab") as out:
        # Own session, no inherited stdout/stderr: a server holding the caller's pipe keeps CI hanging after the
        # tests end. --no-control-socket: gunicorn 27 opens ~/.gunicorn/gunicorn.ctl otherwise.
        proc = subprocess.Popen(
            [str(gunicorn), "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", str(threads),
             "--timeout", "120", "--graceful-timeout", "5", "--no-control-socket",
             "--error-logfile", str(log_dir / "gunicorn.err"), "--access-logfile", str(log_dir / "access.log"),
             # Rucio's app (rucio.web.rest.flaskapi.v1.main:application) behind the database lock of dblock.py.
             "--pythonpath", str(Path(__file__).resolve().parent), "locked_app:application"],
            cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (home / "gunicorn.pid").write_text(f"{proc.pid}\n")
    return proc


def wait_ping(proc: subprocess.Popen[bytes], url: str, timeout: float) -> str:
    """'up' once /ping answers, 'exited' if gunicorn exited first (e.g. the port was taken), else 'timeout'."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        try:
            if requests.get(f"{url}/ping", timeout=5).ok:
                return "up"
        except requests.RequestException:  # not only ConnectionError: the first request may time out under load
            pass
        time.sleep(0.1)
    return "timeout"


def up(home: Path, port: int | None, threads: int, timeout: float, loglevel: str = "INFO") -> dict[str, object]:
    t0 = time.monotonic()
    home = home.resolve()
    for sub in ("etc", "log", "rse", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    stop(home)  # a server left over from an earlier `up` in this home
    db_file = home / "rucio.db"
    db_url = f"sqlite:///{db_file}"
    (home / "etc" / "server.cfg").write_text(server_cfg(home, db_url, loglevel))
    (home / "etc" / "alembic.ini").write_text(alembic_ini(db_url))
    db_file.unlink(missing_ok=True)
    build_database(home)

    for attempt in range(3):
        chosen = port if port is not None else free_port()
        url = f"http://127.0.0.1:{chosen}"
        (home / "etc" / "client.cfg").write_text(client_cfg(home, url))
        proc = start_gunicorn(home, chosen, threads)
        state = wait_ping(proc, url, timeout)
        if state == "up":
            break
        stop(home)
        err = (home / "log" / "gunicorn.err").read_text(errors="replace")[-3000:]
        if state == "exited" and port is None and "in use" in err and attempt < 2:
            continue  # the free port was taken between choosing and binding it: choose another
        why = f"exited with {proc.returncode}" if state == "exited" else f"gave no answer in {timeout:.0f} s"
        raise SystemExit(f"rucio server (gunicorn) {why} on {url}/ping:\n{err}")

    info: dict[str, object] = {
        "url": url, "port": chosen, "pid": proc.pid,
        "client_cfg": str(home / "etc" / "client.cfg"), "server_cfg": str(home / "etc" / "server.cfg"),
    }
    (home / "server.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"rucio server up on {url} in {time.monotonic() - t0:.1f} s", flush=True)
    print(json.dumps(info), flush=True)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build a fresh database and start the server")
    p_up.add_argument("--home", type=Path, required=True)
    p_up.add_argument("--port", type=int, default=None, help="default: a free port")
    p_up.add_argument("--threads", type=int, default=2, help="gunicorn threads (1 worker: SQLite has one writer)")
    p_up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /ping")
    p_up.add_argument("--loglevel", default="INFO", help="rucio's log level (DEBUG logs the causes of HTTP 500s)")
    p_down = sub.add_parser("down", help="stop the server by its PID file")
    p_down.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "up":
        up(args.home, args.port, args.threads, args.timeout, args.loglevel)
    else:
        print("rucio server stopped" if stop(args.home.resolve()) else "no rucio server running", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
