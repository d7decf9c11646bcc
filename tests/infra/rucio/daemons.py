"""Rucio's own daemons, in-process, as the FTS stand-in for tests: rules really complete and files are copied.

Run with the server venv and the server's config:

    RUCIO_CONFIG=DIR/etc/server.cfg .venv-rucio/bin/python tests/infra/rucio/daemons.py once --home DIR
    RUCIO_CONFIG=DIR/etc/server.cfg .venv-rucio/bin/python tests/infra/rucio/daemons.py loop --home DIR

(RUCIO_CONFIG defaults to DIR/etc/server.cfg.) A round is judge re-evaluator (files attached to DIDs that
already have rules) + conveyor submitter + poller + finisher, all with `once=True` and no partition wait, and
the `localcopy` transfertool below, which copies the file between POSIX RSEs (the stock `mock` one only marks
transfers done). One round takes a freshly created rule to OK.

`loop` runs a round every 0.3 s until SIGTERM/SIGINT. Control files in DIR, for tests:
  daemons.round        number of rounds completed by this process, rewritten (atomically) after each round;
  daemons.paused       while it exists no round starts (a round in progress finishes first);
  daemons.paused.ack   written by the loop once it has seen daemons.paused and is idle (removed on resume).

Each daemon call holds DIR/db.lock, which the server takes around each request (dblock.py, locked_app.py):
SQLite gave immediate 'database is locked' errors when both wrote at once.

No judge-repairer: it is not needed for STUCK rules. A rule to an RSE without a distance from any source goes
STUCK (error NO_SOURCES) within one round through the submitter (request NO_SOURCES) and the finisher (lock and
rule STUCK); a repairer pass (tried once) left such a rule STUCK with the same error.
Details: shared/reference/rucio.md sections 2.4, 3 and 6.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTERVAL = 0.3
LOG = logging.getLogger("rucio-test-daemons")


def _register_localcopy() -> None:
    """Register the copying transfertool. TRANSFERTOOL_CLASSES_BY_NAME is a hard-coded dict, so this works only
    in the daemons' own process (the stock rucio-conveyor-* commands cannot use it)."""
    import rucio.core.transfer as core_transfer
    from rucio.transfertool.mock import MockTransfertool
    from rucio.transfertool.transfertool import TransferToolBuilder

    class LocalCopyTransfertool(MockTransfertool):  # type: ignore[misc]
        external_name = "localcopy"
        supported_schemes = {"file"}

        @classmethod
        def submission_builder_for_path(cls, transfer_path: Any, logger: Any = logging.log) -> tuple[Any, Any]:
            return transfer_path, TransferToolBuilder(cls, external_host="localcopy")

        def submit(self, transfers: Any, job_params: Any, timeout: Any = None) -> str:
            for t in transfers:
                src = t.src
                src_path = t.source_protocol(src).pfn2path(t.source_url(src))
                dst_path = t.dest_protocol().pfn2path(t.dest_url)
                os.makedirs(os.path.dirname(dst_path), exist_ok=True)
                shutil.copyfile(src_path, dst_path)  # raises -> the submitter marks the request SUBMISSION_FAILED
            return str(super().submit(transfers, job_params, timeout))

    core_transfer.TRANSFERTOOL_CLASSES_BY_NAME["localcopy"] = LocalCopyTransfertool


def make_round(home: Path) -> Callable[[], None]:
    """Import the daemons (2-4 s) once and return the function that runs one round. Each daemon call holds
    the database lock shared with the server (dblock.py), so that they never write at the same time."""
    from dblock import DbLock

    lock = DbLock(home)
    _register_localcopy()
    from rucio.daemons.common import run_daemon
    from rucio.daemons.conveyor.finisher import finisher
    from rucio.daemons.conveyor.poller import poller
    from rucio.daemons.conveyor.submitter import submitter
    from rucio.daemons.judge import evaluator

    def re_evaluate() -> None:
        # evaluator.re_evaluator() hard-codes partition_wait_time=1 (1 s lost per call): same loop without it.
        run_daemon(once=True, graceful_stop=evaluator.graceful_stop, executable=evaluator.DAEMON_NAME,
                   partition_wait_time=0, sleep_time=30,
                   run_once_fnc=functools.partial(evaluator.run_once, did_limit=100, paused_dids={}))

    def one_round() -> None:
        with lock:
            re_evaluate()
        with lock:
            submitter(once=True, partition_wait_time=0, transfertools=["localcopy"], transfertype="single",
                      filter_transfertool=None)
        with lock:
            # The poller only polls transfers of its own transfertool: else requests stay SUBMITTED forever.
            poller(once=True, older_than=0, partition_wait_time=0, transfertool="localcopy")
        with lock:
            finisher(once=True, partition_wait_time=0)

    return one_round


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def loop(home: Path, one_round: Callable[[], None]) -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        LOG.info("signal %d: stopping after the current round", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    round_file, paused, ack = home / "daemons.round", home / "daemons.paused", home / "daemons.paused.ack"
    completed = 0
    _write_atomic(round_file, "0\n")
    LOG.info("daemons loop ready (pid %d)", os.getpid())
    while not stop.is_set():
        if paused.exists():
            if not ack.exists():
                _write_atomic(ack, f"{completed}\n")
                LOG.info("paused after round %d", completed)
            stop.wait(0.05)
            continue
        ack.unlink(missing_ok=True)
        t0 = time.monotonic()
        try:
            one_round()
        except Exception:  # e.g. 'database is locked' under load: log it, the next round retries
            LOG.error("round %d failed:\n%s", completed + 1, traceback.format_exc())
            stop.wait(INTERVAL)
            continue
        completed += 1
        _write_atomic(round_file, f"{completed}\n")
        LOG.info("round %d done in %.2f s", completed, time.monotonic() - t0)
        stop.wait(INTERVAL)
    LOG.info("daemons loop stopped after %d rounds", completed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["once", "loop"])
    parser.add_argument("--home", type=Path, required=True, help="the server home (server.py up --home)")
    args = parser.parse_args(argv)
    home = args.home.resolve()
    # Rucio caches its config at import, and the submitter reads it at import: set it before any rucio import.
    os.environ.setdefault("RUCIO_CONFIG", str(home / "etc" / "server.cfg"))
    os.environ.pop("RUCIO_HOME", None)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    t0 = time.monotonic()
    one_round = make_round(home)
    LOG.info("daemons imported in %.2f s", time.monotonic() - t0)
    if args.mode == "once":
        t1 = time.monotonic()
        one_round()
        print(f"daemons round done in {time.monotonic() - t1:.2f} s ({time.monotonic() - t0:.2f} s with imports)",
              flush=True)
    else:
        loop(home, one_round)
    return 0


if __name__ == "__main__":
    sys.exit(main())
