"""Pytest fixtures for a real Rucio server: REST API over http on 127.0.0.1, SQLite, userpass root, and Rucio's
own conveyor + judge daemons with a transfertool that really copies files between POSIX RSEs.

Use them from a test module with either of

    pytest_plugins = ["tests.integration.rucio_env"]          # preferred: ruff-clean
    from tests.integration.rucio_env import rucio_server, rucio_seeded, rucio_daemons  # noqa: F401

(the import form makes ruff report F811 on every test that takes a fixture as an argument: add `# noqa: F811`
there). Mixing both forms in one run still starts one server. The server and the daemons run from
`.venv-rucio` (`make rucio-venv`: package `rucio`, kept out of .venv where only `rucio-clients` lives): a test
that uses them is marked `rucio` and runs when the run asks for that environment (`pytest -E rucio`, see
tests/environments.py). The pytest process talks to the server only through `rucio.client` (rucio-clients),
like the code under test.

Fixtures (all objects are defined below):
  rucio_server      session  RucioServer: .url .home .client_cfg .server_cfg .env .client() .activated()
  rucio_seeded      session  RucioSite: RSEs SITE_A (source), FACILITY_NVME (facility), ISLAND (no distance:
                             rules go STUCK/NO_SOURCES), scope `test`; .client() .rse_dir(rse) .upload_dataset()
                             .attach_file()
  rucio_client_env  function the pytest process's environment pointed at the server (RUCIO_CONFIG...) for code
                             under test that calls `Client()` without arguments; restored afterwards
  rucio_daemons     function RucioDaemons: `daemons.py loop` subprocess (a round every 0.3 s); .pause() .resume()
                             .rounds() .wait_rounds(n) .wait_for(predicate) .log

Environment: nothing here changes os.environ of the pytest process permanently. `RucioServer.client()` builds a
Client with explicit arguments (URL, userpass root) and a token cache under the server's home; `.env` is the
full environment for a client *subprocess*; `.activated()` / `rucio_client_env` set RUCIO_CONFIG etc. only for
the duration of a with-block / a test. UploadClient/DownloadClient need one of these two even with an explicit
client: their rsemanager builds a `Client()` of its own from the config (and caches RSE info for 15 min).

The server handles one request at a time, and never while a daemon call runs (DIR/db.lock, see
tests/infra/rucio/dblock.py): with SQLite, concurrent writes from the server and the daemons failed at once with
HTTP 500 'database is locked'. Logs: <home>/log/ (gunicorn.out has rucio's server log, daemons-<test>.log).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.infra.rucio import seed

if TYPE_CHECKING:
    from rucio.client import Client

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "tests" / "infra" / "rucio"
RUCIO_PYTHON = REPO / ".venv-rucio" / "bin" / "python"
USERNAME, PASSWORD = "ddmlab", "secret"  # the server's bootstrap identity (server.py), account root
# Variables that would make a client process use another account, auth type, VO or config than the server's.
CLIENT_ENV_DROP = ("RUCIO_ACCOUNT", "RUCIO_AUTH_TYPE", "RUCIO_VO", "RUCIO_HOME", "RUCIO_CLIENT_MODE")
T = TypeVar("T")


def _server_proc_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP and k != "RUCIO_CONFIG"}
    env.pop("VIRTUAL_ENV", None)  # rucio also looks for $VIRTUAL_ENV/etc/rucio.cfg
    return env


@dataclass
class RucioServer:
    """A running server (`server.py up`). All paths are absolute."""

    url: str
    home: Path
    client_cfg: Path
    server_cfg: Path
    pid: int
    bringup_s: float

    @property
    def token_dir(self) -> Path:
        """Private token cache: what a client with TMPDIR=<home>/tmp uses ($TMPDIR/<user>/.rucio_<user>)."""
        return self.home / "tmp" / getpass.getuser() / f".rucio_{getpass.getuser()}"

    @property
    def _token_prefix(self) -> str:
        # BaseClient builds the directory as TOKEN_PATH_PREFIX + <user>.
        return str(self.token_dir.parent / ".rucio_")

    @property
    def env_overrides(self) -> dict[str, str]:
        """The variables that point a client at this server (merge into an environment that has no
        RUCIO_ACCOUNT/RUCIO_AUTH_TYPE/RUCIO_VO of its own; `env` does that for you)."""
        return {"RUCIO_CONFIG": str(self.client_cfg), "TMPDIR": str(self.home / "tmp")}

    @property
    def env(self) -> dict[str, str]:
        """Complete environment for a client subprocess, from os.environ *now*: RUCIO_CONFIG=client.cfg, a
        private TMPDIR (token cache) under home, and RUCIO_ACCOUNT / RUCIO_AUTH_TYPE / RUCIO_VO / RUCIO_HOME
        removed. Pass it as `env=` (a helper that starts from os.environ and `update()`s would keep them)."""
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_DROP}
        env.update(self.env_overrides)
        return env

    def client(self, account: str = "root", timeout: int = 60) -> Client:
        """A `rucio.client.Client` for this server, independent of os.environ and of any config file: explicit
        host/auth arguments (userpass ddmlab/secret, an identity of root only: another account needs an identity
of its own and its own client) and the token cache of `token_dir`. Enough for every REST
        call; UploadClient/DownloadClient also need `activated()` (their rsemanager builds a `Client()` of its
        own from the config file)."""
        from rucio.client import Client

        # BaseClient.TOKEN_PATH_PREFIX is fixed when rucio.client is first imported (from whatever TMPDIR was
        # then): a subclass gives this server's clients their own token files, shared with its subprocesses.
        cls = type("RucioTestClient", (Client,), {"TOKEN_PATH_PREFIX": self._token_prefix})
        client: Client = cls(rucio_host=self.url, auth_host=self.url, account=account, auth_type="userpass",
                             creds={"username": USERNAME, "password": PASSWORD}, timeout=timeout)
        return client

    @contextlib.contextmanager
    def activated(self) -> Iterator[RucioServer]:
        """Inside the block, os.environ and rucio's cached config point at this server, so in-process code that
        calls `Client()` with no arguments talks to it (token cache under home). Restored on exit."""
        from rucio.client.baseclient import BaseClient
        from rucio.common.config import clean_cached_config

        saved = {k: os.environ.get(k) for k in (*CLIENT_ENV_DROP, *self.env_overrides)}
        saved_prefix = BaseClient.__dict__["TOKEN_PATH_PREFIX"]
        try:
            for key in CLIENT_ENV_DROP:
                os.environ.pop(key, None)
            os.environ.update(self.env_overrides)
            BaseClient.TOKEN_PATH_PREFIX = self._token_prefix
            clean_cached_config()  # rucio caches the parsed config file: re-read it from RUCIO_CONFIG
            yield self
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            BaseClient.TOKEN_PATH_PREFIX = saved_prefix
            clean_cached_config()


SERVER_PY = INFRA / "server.py"
# One server per pytest process even if the fixture is collected twice (a module that imports the fixtures and
# another that uses pytest_plugins give two fixture definitions): started by the first, stopped by the last user.
_SHARED: dict[str, Any] = {}


def _start_server(home: Path) -> RucioServer:
    t0 = time.monotonic()
    result = subprocess.run([str(RUCIO_PYTHON), str(SERVER_PY), "up", "--home", str(home)], env=_server_proc_env(),
                            cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"rucio server did not start (rc {result.returncode}):\n"
                           f"{result.stdout[-3000:]}{result.stderr[-5000:]}")
    info = json.loads((home / "server.json").read_text())
    took = time.monotonic() - t0
    line = f"rucio server up on {info['url']} in {took:.1f} s (server.py: {result.stdout.splitlines()[0]})"
    (home / "bringup.txt").write_text(line + "\n")
    print(f"\n{line}; home {home}", flush=True)
    return RucioServer(url=info["url"], home=home, client_cfg=Path(info["client_cfg"]),
                       server_cfg=Path(info["server_cfg"]), pid=int(info["pid"]), bringup_s=took)


def _stop_server(home: Path) -> None:
    t0 = time.monotonic()
    subprocess.run([str(RUCIO_PYTHON), str(SERVER_PY), "down", "--home", str(home)], env=_server_proc_env(),
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    with contextlib.suppress(OSError), open(home / "bringup.txt", "a") as out:
        out.write(f"server down in {time.monotonic() - t0:.1f} s\n")


@pytest.fixture(scope="session")
def rucio_server(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[RucioServer]:
    """Fresh database + gunicorn on 127.0.0.1:<free port> for the whole session; stopped at the end. The
    bring-up time is printed (pytest -s) and written to <home>/bringup.txt."""
    if not _SHARED:
        home = tmp_path_factory.mktemp("rucio")
        try:
            # Shown even under output capture: the bring-up time is part of what the suite reports.
            capture = pytestconfig.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                _SHARED.update(server=_start_server(home), users=0)
        except BaseException:
            _stop_server(home)  # `up` may have got as far as starting gunicorn
            raise
    _SHARED["users"] += 1
    server: RucioServer = _SHARED["server"]
    try:
        yield server
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED.clear()
            _stop_server(server.home)


@dataclass
class RucioSite:
    """The seeded server: RSE names, scope and helpers (see tests/infra/rucio/seed.py)."""

    server: RucioServer
    scope: str = seed.SCOPE
    source: str = seed.SOURCE
    facility: str = seed.FACILITY
    island: str = seed.ISLAND
    _client: Client | None = field(default=None, repr=False)

    def client(self) -> Client:
        """One shared Client for this site (create your own with `server.client()` for other accounts)."""
        if self._client is None:
            self._client = self.server.client()
        return self._client

    def rse_dir(self, rse: str) -> Path:
        """The directory holding an RSE's files (PFN file://localhost<rse_dir>/<scope>/<xx>/<yy>/<name>)."""
        return seed.rse_dir(self.server.home, rse)

    def upload_dataset(self, name: str, paths: Sequence[str | os.PathLike[str]], scope: str | None = None,
                       rse: str | None = None) -> list[dict[str, Any]]:
        """Upload files to SITE_A as a new closed dataset scope:name; returns its `list_files`."""
        with self.server.activated():  # UploadClient's rsemanager builds its own Client from the config
            return seed.upload_dataset(self.client(), scope or self.scope, name, paths, rse=rse or self.source)

    def attach_file(self, name: str, path: str | os.PathLike[str], scope: str | None = None,
                    rse: str | None = None) -> dict[str, Any]:
        """Reopen dataset scope:name, upload + attach one file, close it again; returns the file's entry."""
        with self.server.activated():
            return seed.attach_file(self.client(), scope or self.scope, name, path, rse=rse or self.source)


@pytest.fixture(scope="session")
def rucio_seeded(rucio_server: RucioServer) -> RucioSite:
    t0 = time.monotonic()
    site = RucioSite(rucio_server)
    seed.seed_site(site.client(), rucio_server.home)
    print(f"\nrucio site seeded in {time.monotonic() - t0:.1f} s", flush=True)
    return site


@pytest.fixture
def rucio_client_env(rucio_server: RucioServer) -> Iterator[RucioServer]:
    """For code under test that builds `Client()` from the environment, in the pytest process."""
    with rucio_server.activated():
        yield rucio_server


class RucioDaemons:
    """Handle on a `daemons.py loop` subprocess. Rounds are counted in <home>/daemons.round."""

    def __init__(self, home: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.home = home
        self.proc = proc
        self.log = log
        self._round_file = home / "daemons.round"
        self._paused = home / "daemons.paused"
        self._ack = home / "daemons.paused.ack"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"rucio daemons exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rounds(self) -> int:
        """Rounds completed so far by this process (0 before the first one)."""
        try:
            return int(self._round_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def pause(self, timeout: float = 60) -> None:
        """No round runs after this returns (until resume()): waits for the round in progress to finish."""
        self._ack.unlink(missing_ok=True)
        self._paused.touch()
        deadline = time.monotonic() + timeout
        while not self._ack.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"rucio daemons did not pause within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def resume(self) -> None:
        self._paused.unlink(missing_ok=True)

    def wait_rounds(self, n: int = 1, timeout: float = 60) -> int:
        """Wait until `n` rounds have run that *started* after this call (the round possibly in progress now
        does not count), so everything done before the call has been seen by n full rounds. Returns the
        round count."""
        if self._paused.exists():
            raise AssertionError("rucio daemons are paused: resume() before wait_rounds()")
        target = self.rounds() + n + 1
        deadline = time.monotonic() + timeout
        while (done := self.rounds()) < target:
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"rucio daemons: {done} rounds, waited for {target} for {timeout:.0f} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.02)
        return done

    def wait_for(self, predicate: Callable[[], T], rounds: int = 5, timeout: float = 60, what: str = "") -> T:
        """Check `predicate` now and after each full round; return its first truthy value, fail after
        `rounds` full rounds."""
        for _ in range(rounds):
            value = predicate()
            if value:
                return value
            self.wait_rounds(1, timeout=timeout)
        value = predicate()
        if value:
            return value
        raise AssertionError(f"{what or 'condition'} still false after {rounds} daemon rounds:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (the loop finishes its round and exits), then SIGKILL. Only this process (its own session)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def rucio_daemons(rucio_server: RucioServer, request: pytest.FixtureRequest) -> Iterator[RucioDaemons]:
    """Rucio's judge re-evaluator + conveyor submitter/poller/finisher (copying `localcopy` transfertool) in a
    subprocess, a round every 0.3 s, for one test. Starts unpaused; the first round comes after the daemon
    imports (~2-4 s), so wait with `wait_rounds()`/`wait_for()`, not with sleeps."""
    home = rucio_server.home
    for name in ("daemons.round", "daemons.paused", "daemons.paused.ack"):
        (home / name).unlink(missing_ok=True)
    log = home / "log" / f"daemons-{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)[:80]}.log"
    env = _server_proc_env()
    env["RUCIO_CONFIG"] = str(rucio_server.server_cfg)
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(RUCIO_PYTHON), str(INFRA / "daemons.py"), "loop", "--home", str(home)],
                                cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    daemons = RucioDaemons(home, proc, log)
    try:
        yield daemons
    finally:
        daemons.stop()
        for name in ("daemons.paused", "daemons.paused.ack"):
            (home / name).unlink(missing_ok=True)
