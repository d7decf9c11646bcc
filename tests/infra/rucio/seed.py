"""Seed a test Rucio server through its REST API (rucio-clients only: works from the main .venv).

    seed_site(client, home)                                  RSEs SITE_A, FACILITY_NVME, ISLAND, quota, distance, scope
    upload_dataset(client, scope, name, paths, rse="SITE_A")  upload files into a dataset, then close it
    attach_file(client, scope, name, path, rse="SITE_A")      reopen a closed dataset, add one file, close it again

CLI (for demos), with the server from `server.py up --home DIR`:

    .venv/bin/python tests/infra/rucio/seed.py --home DIR --dataset test:jets_v1 FILE [FILE ...]

RSEs are POSIX directories DIR/rse/<RSE>/ with a `file` protocol (deterministic `hash` lfn2pfn:
<prefix>/<scope>/<md5[0:2]>/<md5[2:4]>/<name>). Only SITE_A -> FACILITY_NVME has a distance, so a rule to ISLAND
goes STUCK (NO_SOURCES). Everything is idempotent where that is cheap: re-running is harmless.

Uploads need RUCIO_CONFIG (the server's client.cfg) in the environment even with an explicitly configured
`client`: UploadClient's rsemanager builds a `Client()` of its own from the config file (rucio_env.py wraps the
calls in `RucioServer.activated()`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rucio.client import Client

SOURCE = "SITE_A"
FACILITY = "FACILITY_NVME"
ISLAND = "ISLAND"
RSES = (SOURCE, FACILITY, ISLAND)
SCOPE = "test"
ACCOUNT = "root"
LOG = logging.getLogger("rucio-test-seed")


def rse_dir(home: str | os.PathLike[str], rse: str) -> Path:
    """Where the files of an RSE lie on disk."""
    return Path(home) / "rse" / rse


def posix_protocol(prefix: str) -> dict[str, Any]:
    return {
        "scheme": "file", "hostname": "localhost", "port": 0, "prefix": prefix,
        "impl": "rucio.rse.protocols.posix.Default",
        "domains": {
            "lan": {"read": 1, "write": 1, "delete": 1},
            # third_party_copy_*: without them the submitter finds no path and the rule goes STUCK.
            "wan": {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1, "third_party_copy_write": 1},
        },
    }


def seed_site(client: Client, home: str | os.PathLike[str]) -> None:
    """SITE_A (source), FACILITY_NVME (the facility), ISLAND (no distance: rules there go STUCK); POSIX
    protocols under DIR/rse/<RSE>/, unlimited quota for root on each, distance SITE_A -> FACILITY_NVME, scope
    `test`."""
    from rucio.common.exception import Duplicate

    for rse in RSES:
        prefix = str(rse_dir(home, rse)) + "/"
        os.makedirs(prefix, exist_ok=True)
        with contextlib.suppress(Duplicate):
            client.add_rse(rse)  # deterministic by default -> lfn2pfn `hash`
        with contextlib.suppress(Duplicate):
            client.add_protocol(rse, posix_protocol(prefix))
        client.add_rse_attribute(rse, "facility", "mltf" if rse == FACILITY else "remote")
        # Under the generic policy even root needs a limit (else InsufficientAccountLimit); -1 = unlimited.
        client.set_local_account_limit(ACCOUNT, rse, -1)
    with contextlib.suppress(Duplicate):
        client.add_distance(SOURCE, FACILITY, {"distance": 1})
    with contextlib.suppress(Duplicate):
        client.add_scope(ACCOUNT, SCOPE)


def _dataset_state(client: Client, scope: str, name: str) -> tuple[bool, bool, set[str]]:
    """(exists, open, names of the attached files)."""
    from rucio.common.exception import DataIdentifierNotFound

    try:
        did = client.get_did(scope, name)
    except DataIdentifierNotFound:
        return False, False, set()
    return True, bool(did["open"]), {f["name"] for f in client.list_files(scope, name)}


def _upload(client: Client, scope: str, name: str, paths: Iterable[str | os.PathLike[str]], rse: str) -> None:
    from rucio.client.uploadclient import UploadClient

    items = [{"path": str(p), "rse": rse, "did_scope": scope, "did_name": Path(p).name,
              "dataset_scope": scope, "dataset_name": name, "register_after_upload": True} for p in paths]
    if items:
        # The logger must be a logging.Logger (UploadClient calls .log on it). Tracing stays on: tracing=False
        # crashes in 41.5.1; the server has no /traces endpoint and answers 404, which is harmless.
        UploadClient(client, logger=LOG).upload(items)


def upload_dataset(client: Client, scope: str, name: str, paths: Sequence[str | os.PathLike[str]],
                   rse: str = SOURCE) -> list[dict[str, Any]]:
    """Upload `paths` to `rse`, register them as files of dataset scope:name (created with a rule on `rse` if
    new) and close the dataset. Files already attached (same name) are skipped, so a re-run is a no-op.
    Returns the dataset's files as `list_files` gives them (scope, name, bytes, adler32, ...)."""
    exists, is_open, attached = _dataset_state(client, scope, name)
    todo = [p for p in paths if Path(p).name not in attached]
    if not exists and not todo:
        raise ValueError(f"no files to create dataset {scope}:{name} from")
    if todo and exists and not is_open:
        client.set_status(scope, name, open=True)  # root/admin only under the generic policy
        is_open = True
    _upload(client, scope, name, todo, rse)
    if todo or is_open or not exists:
        client.close(scope, name)
    return list(client.list_files(scope, name))


def attach_file(client: Client, scope: str, name: str, path: str | os.PathLike[str],
                rse: str = SOURCE) -> dict[str, Any]:
    """Add one more file to an existing (closed) dataset: reopen it, upload + attach, close it again. Rules on
    the dataset pick the file up only when the judge re-evaluator runs (daemons.py does, every round).
    Returns the file's `list_files` entry."""
    exists, is_open, attached = _dataset_state(client, scope, name)
    if not exists:
        raise ValueError(f"dataset {scope}:{name} does not exist (upload_dataset creates it)")
    if Path(path).name not in attached:
        if not is_open:
            client.set_status(scope, name, open=True)
        _upload(client, scope, name, [path], rse)
    if is_open or Path(path).name not in attached:
        client.close(scope, name)
    return next(f for f in client.list_files(scope, name) if f["name"] == Path(path).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="the server home (server.py up --home DIR)")
    parser.add_argument("--dataset", default=None, help="scope:name to upload FILES into (closed afterwards)")
    parser.add_argument("--rse", default=SOURCE)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    home = args.home.resolve()
    # The client config of that server, and a token cache of its own (both read at import: set them first).
    os.environ["RUCIO_CONFIG"] = str(home / "etc" / "client.cfg")
    os.environ["TMPDIR"] = str(home / "tmp")
    os.environ.pop("RUCIO_ACCOUNT", None)
    os.environ.pop("RUCIO_HOME", None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    from rucio.client import Client

    client = Client()
    seed_site(client, home)
    print(f"seeded {', '.join(RSES)} and scope {SCOPE} (files under {home / 'rse'})")
    if args.files:
        if not args.dataset or ":" not in args.dataset:
            parser.error("--dataset scope:name is required with FILES")
        scope, name = args.dataset.split(":", 1)
        files = upload_dataset(client, scope, name, args.files, rse=args.rse)
        print(f"{scope}:{name} (closed) on {args.rse}: {', '.join(sorted(f['name'] for f in files))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
