"""Rucio staging: ``rucio://scope:name`` made available on the facility's storage, verified, as a manifest.

Two modes, chosen by the profile's ``rucio:`` section (see :class:`RucioSettings`)::

    rucio:
      rse_expression: MLTF_NVME      # where the facility's copies live (mode rule)
      mode: rule                     # rule | download
      lifetime: 30d                  # rule lifetime (the facility's cache)
      pfn_map: {"root://xrootd.mltf.vu:1094//store/": "/store/"}   # PFN prefix -> local path prefix
      verify: full                   # full | sample | off (size only)
      timeout: 6h                    # give up waiting for the rule after this
      stuck_grace: 30m               # a STUCK rule fails after this long

* ``rule``: reuse this account's replication rule for the DID on the RSE expression, or create one (never a
  duplicate on rerun or retry); wait for it with backoff and a deadline, reporting the locks OK /
  replicating / stuck; then, not trusting the rule state alone, compare the DID's files with the
  AVAILABLE replicas on the RSE, map each PFN to a local path and check size and adler32.
* ``download``: Rucio's download client into a local cache directory (sites without a facility RSE);
  files already there with the right size and adler32 are kept, others fetched (again).

Credentials come the Rucio way (``rucio.cfg``, ``RUCIO_CONFIG``, ``RUCIO_ACCOUNT``, tokens); nothing of
them is ever written to logs, manifests or MLflow. Nothing here imports rucio until staging runs.
"""

from __future__ import annotations

import logging
import os
import random
import time
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The section is typed in mltf_flow.config.rucio; these names stay importable from here.
from mltf_flow.config.rucio import MODES as MODES
from mltf_flow.config.rucio import VERIFY as VERIFY
from mltf_flow.config.rucio import RucioSettings as RucioSettings
from mltf_flow.config.rucio import rucio_settings as rucio_settings
from mltf_flow.errors import ConfigError, RucioNotConfigured, StagingError
from mltf_flow.progress import Poller
from mltf_flow.staging.manifest import MANIFEST_VERSION, manifest_digest
from mltf_flow.staging.uri import DatasetURI

_log = logging.getLogger(__name__)

_FAILED = {"SUSPENDED", "WAITING_APPROVAL"}


def adler32_file(path: Path, chunk: int = 1 << 20) -> str:
    """adler32 of a file as Rucio writes it (8 lowercase hex digits)."""
    value = 1
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"


def pfn_to_path(pfn: str, pfn_map: tuple[tuple[str, str], ...]) -> Path | None:
    """The local path of a replica: a ``pfn_map`` prefix rewrite, else the path of a ``file://`` PFN."""
    for prefix, local in pfn_map:
        if pfn.startswith(prefix):
            return Path(local + pfn[len(prefix):])
    parsed = urllib.parse.urlparse(pfn)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    return None


# -- the client ----------------------------------------------------------------------------------------
def _secrets() -> list[str]:
    """Configured passwords/tokens, to be cut out of any message that might echo them."""
    found = []
    try:
        from rucio.common.config import config_get

        for option in ("password", "client_secret"):
            value = config_get("client", option, raise_exception=False, default=None)
            if value:
                found.append(str(value))
    except Exception:  # no configuration: nothing to hide
        pass
    return found


def scrub(text: str) -> str:
    """``text`` with configured secrets masked."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def make_client() -> Any:
    """A ``rucio.client.Client`` configured the Rucio way; our errors say what to fix."""
    try:
        from rucio.common.exception import (
            CannotAuthenticate,
            ConfigLoadingError,
            ConfigNotFound,
            ConfigurationError,
            MissingClientParameter,
            RucioException,
            ServerConnectionException,
        )
    except ImportError as exc:
        raise RucioNotConfigured(f"rucio:// datasets need rucio-clients ({exc}); pip install rucio-clients.") from None
    try:
        from rucio.client import Client  # reads rucio.cfg on import

        return Client()
    except (ConfigNotFound, ConfigLoadingError, ConfigurationError, MissingClientParameter) as exc:
        raise RucioNotConfigured(
            f"Rucio is not configured here ({type(exc).__name__}: {scrub(str(exc))}). Point RUCIO_CONFIG at a "
            "rucio.cfg with a [client] section (rucio_host, auth_host, auth_type, account), as for the rucio "
            "command line."
        ) from None
    except CannotAuthenticate as exc:
        raise StagingError(
            f"Rucio refused the credentials ({type(exc).__name__}: {scrub(str(exc))}). Check the account and "
            "the username/password, certificate or token configured in rucio.cfg / RUCIO_CONFIG "
            "(`rucio whoami` shows the same answer)."
        ) from None
    except ServerConnectionException as exc:
        raise StagingError(f"cannot reach the Rucio server ({scrub(str(exc))}); check rucio_host in rucio.cfg.") \
            from None
    except RucioException as exc:
        raise StagingError(f"the Rucio client could not start: {type(exc).__name__}: {scrub(str(exc))}") from None


# -- staging -------------------------------------------------------------------------------------------
Progress = Callable[[str, int, int, int, int], None]  # state, ok, replicating, stuck, total


@dataclass
class StagedFile:
    scope: str
    name: str
    size: int
    adler32: str
    path: Path | None = None


class RucioStager:
    """Stages one DID (see the module docstring). ``progress`` is called on every poll."""

    def __init__(self, uri: DatasetURI, settings: RucioSettings, *, cache_dir: Path, client: Any = None,
                 progress: Progress | None = None, on_rule: Callable[[str], None] | None = None) -> None:
        if uri.scheme != "rucio" or not uri.scope or not uri.name:
            raise ConfigError(f"{uri.canonical} is not a rucio:// DID.")
        self.uri = uri
        self.did = {"scope": uri.scope, "name": uri.name}
        self.settings = settings
        self.cache_dir = cache_dir
        self._client = client
        self.progress = progress or (lambda *args: None)
        self.on_rule = on_rule or (lambda rule_id: None)
        self.rule_id: str | None = None
        self.did_type: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client()
        return self._client

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A Rucio call whose failure becomes a StagingError naming the DID and what was being done."""
        from rucio.common.exception import DataIdentifierNotFound, RucioException

        try:
            return fn(*args, **kwargs)
        except DataIdentifierNotFound:
            raise StagingError(
                f"{self.uri.canonical} does not exist in Rucio ({self.client.host}): check the scope and name "
                f"(`rucio did list {self.uri.scope}:*`)."
            ) from None
        except RucioException as exc:
            rule = f" (rule {self.rule_id})" if self.rule_id else ""
            raise StagingError(f"Rucio failed to {what} for {self.uri.canonical}{rule}: {type(exc).__name__}: "
                               f"{scrub(str(exc))}") from None

    def files(self) -> list[StagedFile]:
        """The DID's files as the catalogue lists them (name order)."""
        did = self._call("look up the DID", self.client.get_did, self.uri.scope, self.uri.name)
        self.did_type = str(did.get("type", "")).upper()
        if self.did_type == "FILE":
            raw = [{"scope": self.uri.scope, "name": self.uri.name, "bytes": did.get("bytes"),
                    "adler32": did.get("adler32")}]
        else:
            if did.get("open"):
                _log.info(f"{self.uri.canonical} is an open {self.did_type.lower()}: files attached later are "
                          "staged on the next run.")
            raw = list(self._call("list the files", self.client.list_files, self.uri.scope, self.uri.name))
        if not raw:
            raise StagingError(f"{self.uri.canonical} has no files: nothing to train on.")
        files = [StagedFile(str(f["scope"]), str(f["name"]), int(f["bytes"] or 0), str(f.get("adler32") or ""))
                 for f in raw]
        return sorted(files, key=lambda f: (f.scope, f.name))

    def check(self) -> list[StagedFile]:
        """Everything that can be wrong before staging starts: credentials, settings, the DID. Returns its files."""
        assert self.client is not None  # connects and authenticates: a missing rucio.cfg is the first thing to say
        if self.settings.mode == "rule" and not self.settings.rse_expression:
            raise ConfigError(
                f"staging {self.uri.canonical} needs the facility RSE: set rucio.rse_expression in the "
                "profile (or rucio.mode: download to fetch into a local cache)."
            )
        return self.files()

    def stage(self, files: list[StagedFile] | None = None) -> dict[str, Any]:
        """Stage the DID (its ``files`` when already listed by :meth:`check`); return its manifest (not yet
        written)."""
        files = files if files is not None else self.check()
        if self.settings.mode == "download":
            self._download(files)
        else:
            self.rule_id = self.find_or_create_rule()
            self.on_rule(self.rule_id)
            self.wait(files)
        self._verify(files)
        return self.manifest(files)

    # rule mode ----------------------------------------------------------------------------------------
    def find_or_create_rule(self, attempts: int = 3) -> str:
        """This account's rule for the DID on the RSE expression (one copy), created only if none exists."""
        from rucio.common.exception import DuplicateRule, RucioException

        rse = self.settings.rse_expression
        account = self.client.account
        for rule in self._call("list rules", self.client.list_did_rules, self.uri.scope, self.uri.name):
            if rule["account"] == account and rule["rse_expression"] == rse and int(rule["copies"]) == 1:
                return str(rule["id"])
        try:
            ids = self.client.add_replication_rule(
                [self.did], 1, rse, lifetime=int(self.settings.lifetime) if self.settings.lifetime else None,
                grouping=self.settings.grouping, activity=self.settings.activity, comment="mltf_flow staging",
            )
            return str(ids[0])
        except DuplicateRule:  # another process created it just now: use theirs
            if attempts <= 1:
                raise StagingError(f"Rucio reports a duplicate rule for {self.uri.canonical} on {rse}, but "
                                   f"account {account} has none: check `rucio rule list {self.uri.scope}:"
                                   f"{self.uri.name}`.") from None
            return self.find_or_create_rule(attempts - 1)
        except RucioException as exc:
            raise StagingError(f"Rucio refused a replication rule for {self.uri.canonical} on {rse}: "
                               f"{type(exc).__name__}: {scrub(str(exc))}") from None

    def _replicas(self, files: list[StagedFile]) -> tuple[dict[tuple[str, str], str], list[StagedFile]]:
        """PFNs of AVAILABLE replicas on the RSE expression, and the files that have none yet."""
        found: dict[tuple[str, str], str] = {}
        reps = self._call("list replicas", self.client.list_replicas, [self.did],
                          rse_expression=self.settings.rse_expression)
        for rep in reps:
            for pfns in (rep.get("rses") or {}).values():
                if pfns:
                    found[(str(rep["scope"]), str(rep["name"]))] = sorted(pfns)[0]
                    break
        return found, [f for f in files if (f.scope, f.name) not in found]

    def wait(self, files: list[StagedFile]) -> None:
        """Until the rule is OK *and* every file has an AVAILABLE replica on the RSE (or fail)."""
        from rucio.common.exception import RuleNotFound

        start = time.monotonic()
        delay, stuck_since = 0.5, None
        note = ""
        while True:
            try:
                rule = self.client.get_replication_rule(self.rule_id)
            except RuleNotFound:
                raise StagingError(f"rule {self.rule_id} for {self.uri.canonical} disappeared (deleted or expired); "
                                   "run again to create a new one.") from None
            state = str(rule["state"])
            counts = (int(rule.get("locks_ok_cnt") or 0), int(rule.get("locks_replicating_cnt") or 0),
                      int(rule.get("locks_stuck_cnt") or 0))
            self.progress(state, *counts, len(files))
            now = time.monotonic()
            if state == "OK":
                pfns, missing = self._replicas(files)
                if not missing:
                    for f in files:
                        f.path = self._local(f, pfns[(f.scope, f.name)])
                    return
                # Rule OK but files missing: attached after the rule was evaluated (Rucio's judge has not
                # seen them yet), or a replica was declared bad. Keep waiting, within the deadline.
                note = (f"; rule OK but {len(missing)} of {len(files)} files have no AVAILABLE replica on "
                        f"{self.settings.rse_expression} yet (e.g. {missing[0].scope}:{missing[0].name})")
            if state in _FAILED:
                raise StagingError(self._describe(rule, f"is {state}"))
            if state == "STUCK":
                stuck_since = stuck_since if stuck_since is not None else now
                if now - stuck_since >= self.settings.stuck_grace:
                    raise StagingError(self._describe(rule, f"has been STUCK for {now - stuck_since:.0f} s"))
            else:
                stuck_since = None
            if now - start >= self.settings.timeout:
                raise StagingError(self._describe(rule, f"did not complete within {self.settings.timeout:.0f} s")
                                   + note + ". Are Rucio's transfer daemons running? Raise rucio.timeout to wait "
                                   "longer.")
            time.sleep(min(delay, max(0.1, self.settings.timeout - (now - start))))
            delay = min(delay * 2, self.settings.poll_max)

    def _describe(self, rule: Mapping[str, Any], what: str) -> str:
        error = rule.get("error") or "no error given"
        return (f"replication rule {self.rule_id} for {self.uri.canonical} on {self.settings.rse_expression} {what}: "
                f"state {rule['state']}, locks ok/replicating/stuck {rule.get('locks_ok_cnt')}/"
                f"{rule.get('locks_replicating_cnt')}/{rule.get('locks_stuck_cnt')}, Rucio says: {scrub(str(error))}")

    def _local(self, f: StagedFile, pfn: str) -> Path:
        path = pfn_to_path(pfn, self.settings.pfn_map)
        if path is None:
            raise StagingError(
                f"replica {pfn} of {f.scope}:{f.name} has no local path: add its prefix to rucio.pfn_map in the "
                "profile (e.g. {'root://host:1094//store/': '/store/'})."
            )
        return path

    # download mode ------------------------------------------------------------------------------------
    def _download(self, files: list[StagedFile]) -> None:
        from rucio.client.downloadclient import DownloadClient
        from rucio.common.exception import NoFilesDownloaded, NotAllFilesDownloaded

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        todo = []
        for f in files:
            f.path = self.cache_dir / f.scope / f.name  # DownloadClient's layout for file DIDs
            if f.path.is_file() and f.path.stat().st_size == f.size and adler32_file(f.path) == f.adler32:
                continue  # already here and intact: a resumed download skips it
            if f.path.exists():
                _log.warning(f"{f.path} is incomplete or corrupt; fetching {f.scope}:{f.name} again")
                f.path.unlink()
            todo.append(f)
        self.progress("DOWNLOADING", len(files) - len(todo), len(todo), 0, len(files))
        if not todo:
            return
        items = [{"did": f"{f.scope}:{f.name}", "base_dir": str(self.cache_dir)} for f in todo]
        if self.settings.source_rse_expression:
            for item in items:
                item["rse"] = self.settings.source_rse_expression
        downloads = logging.getLogger("mltf_flow.rucio.download")
        if downloads.level == logging.NOTSET:
            downloads.setLevel(logging.WARNING)  # Rucio's per-file INFO lines stay off the console, as before
        def arrived() -> None:  # files count once whole at their path (Rucio renames a finished .part file)
            here = sum(1 for f in todo if f.path is not None and f.path.is_file() and f.path.stat().st_size == f.size)
            self.progress("DOWNLOADING", len(files) - len(todo) + here, len(todo) - here, 0, len(files))

        try:
            with Poller(arrived, 2.0, "mltf-rucio-download"):
                DownloadClient(client=self.client, logger=downloads, tracing=False).download_dids(items)
        except (NoFilesDownloaded, NotAllFilesDownloaded) as exc:
            raise StagingError(f"downloading {self.uri.canonical} into {self.cache_dir} failed: "
                               f"{type(exc).__name__}: {scrub(str(exc))}") from None
        self.progress("DOWNLOADED", len(files), 0, 0, len(files))

    # verification -------------------------------------------------------------------------------------
    def _verify(self, files: list[StagedFile]) -> None:
        """Every file at its local path with the catalogue's size; adler32 for all (full), some (sample)."""
        checked: set[tuple[str, str]] = {(f.scope, f.name) for f in files}
        if self.settings.verify == "sample":
            chooser = random.Random(self.uri.canonical)  # the same sample every time for the same DID
            checked = {(f.scope, f.name) for f in chooser.sample(files, min(len(files), self.settings.sample_files))}
        elif self.settings.verify == "off":
            checked = set()
        for f in files:
            assert f.path is not None
            where = "the local cache" if self.settings.mode == "download" else self.settings.rse_expression
            if not f.path.is_file():
                raise StagingError(f"{f.scope}:{f.name} of {self.uri.canonical} should be at {f.path} ({where}) "
                                   "but is not: the storage is not mounted here, or pfn_map is wrong.")
            size = f.path.stat().st_size
            if size != f.size:
                raise StagingError(f"{f.path} ({f.scope}:{f.name}) has {size} bytes, the catalogue says {f.size}.")
            if (f.scope, f.name) in checked and f.adler32:
                actual = adler32_file(f.path)
                if actual != f.adler32:
                    hint = ("run again to fetch it anew" if self.settings.mode == "download" else
                            f"declare the replica bad (rucio replica declare-bad --reason corrupt "
                            f"{f.scope}:{f.name} --rse {self.settings.rse_expression}) and run again")
                    raise StagingError(f"checksum mismatch: {f.path} ({f.scope}:{f.name}) has adler32 {actual}, "
                                       f"the catalogue says {f.adler32}; {hint}.")

    def manifest(self, files: list[StagedFile]) -> dict[str, Any]:
        entries = []
        for f in files:
            assert f.path is not None
            entries.append({"name": f"{f.scope}:{f.name}", "path": str(f.path), "size": f.size, "adler32": f.adler32,
                            "mtime_ns": f.path.stat().st_mtime_ns})
        return {
            "version": MANIFEST_VERSION,
            "uri": self.uri.canonical,
            "scheme": "rucio",
            "did": {**self.did, "type": self.did_type},
            "mode": self.settings.mode,
            "rse_expression": self.settings.rse_expression,
            "rule_id": self.rule_id,
            "rucio_host": str(getattr(self.client, "host", "")),
            "account": str(getattr(self.client, "account", "")),
            "verify": self.settings.verify,
            "files": entries,
            "digest": manifest_digest(entries),
        }


# -- is a manifest still true? ---------------------------------------------------------------------------
_LISTINGS: dict[str, list[tuple[str, int, str]] | None] = {}


def forget(uri: DatasetURI) -> None:
    _LISTINGS.pop(uri.canonical, None)


def still_valid(uri: DatasetURI, manifest: Mapping[str, Any]) -> bool:
    """The staged files are unchanged on disk (size, mtime) and the DID still has exactly these files.

    The DID is listed once per process; when Rucio cannot be reached the local check alone decides
    (with a warning), so a facility keeps working through a Rucio outage."""
    for entry in manifest.get("files", []):
        try:
            stat = os.stat(entry["path"])
        except OSError:
            return False
        if stat.st_size != entry["size"] or stat.st_mtime_ns != entry.get("mtime_ns"):
            return False
    if uri.canonical not in _LISTINGS:
        try:
            listed = RucioStager(uri, RucioSettings(), cache_dir=Path(".")).files()
            _LISTINGS[uri.canonical] = sorted((f"{f.scope}:{f.name}", f.size, f.adler32) for f in listed)
        except StagingError as exc:
            _log.warning(f"cannot check {uri.canonical} in Rucio ({exc}); trusting the staged copy.")
            _LISTINGS[uri.canonical] = None
    current = _LISTINGS[uri.canonical]
    if current is None:
        return True
    recorded = sorted((str(f["name"]), int(f["size"]), str(f.get("adler32", ""))) for f in manifest.get("files", []))
    return recorded == current
