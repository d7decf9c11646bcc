"""TLS credentials of the Dask clusters mltf_flow starts: who may talk to a scheduler and its workers.

Every cluster the keeper starts (LocalCluster or dask-jobqueue SLURMCluster) gets credentials of its
own: a fresh self-signed certificate and its private key (made by ``distributed``'s own
``Security.temporary()``), written as two files into a new 0700 directory
``<work_dir>/dask-security/cluster-XXXX`` (the parent is 0700 too; the key file is 0600). The
certificate is the cluster's CA as well, and TLS is mutual (``distributed`` requires a peer
certificate on both ends): a process without the key (another user on the node, anyone who learnt the
``tls://`` address from a log or the ``mltf.dask_scheduler`` tag) fails the handshake, before any
message is read.

Who reads the files: the keeper (scheduler, LocalCluster workers), the SLURM workers (dask-jobqueue
writes ``--tls-ca-file/--tls-cert/--tls-key`` *paths* into the job script: the work dir is on the
filesystem the nodes share), every client mltf_flow makes (:func:`security`), and the step's command,
through dask's own configuration variables (:meth:`Credentials.client_env`), so user code's plain
``Client(os.environ["DASK_SCHEDULER_ADDRESS"])`` connects unchanged. Only paths ever appear in
environments, logs, tags or job scripts. The directory is removed when its cluster closes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Under the settings' work dir: one subdirectory per cluster.
SECURITY_DIR = "dask-security"
_CERT = "cert.pem"
_KEY = "key.pem"


@dataclass(frozen=True)
class Credentials:
    """A cluster's certificate and key, as files in ``directory``."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / _CERT

    @property
    def key(self) -> Path:
        return self.directory / _KEY

    def security(self) -> Any:
        """The ``distributed.security.Security`` for every role: scheduler, worker and client."""
        from distributed.security import Security

        cert, key = str(self.cert), str(self.key)
        return Security(
            require_encryption=True, tls_ca_file=cert,
            tls_client_cert=cert, tls_client_key=key,
            tls_scheduler_cert=cert, tls_scheduler_key=key,
            tls_worker_cert=cert, tls_worker_key=key,
        )

    def client_env(self) -> dict[str, str]:
        """Dask configuration variables that make a plain ``Client(address)`` of a new process use these
        credentials (paths only)."""
        cert, key = str(self.cert), str(self.key)
        return {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": key,
        }

    def remove(self) -> None:
        """Delete the files (the cluster is closed: nothing needs them any more)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (created, or tightened if it exists)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask, and the directory may be older
    return path


def _write_private(path: Path, text: str) -> None:
    """Write a new file readable by its owner only (mode 0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def create(work_dir: Path) -> Credentials:
    """New credentials for one cluster, in a new private directory under ``work_dir``."""
    from distributed.security import Security

    parent = _private_dir(Path(work_dir).expanduser().resolve() / SECURITY_DIR)
    directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=parent))  # 0700, a name nobody can guess
    made = Security.temporary()  # in memory: the certificate and key PEM texts
    credentials = Credentials(directory)
    try:
        _write_private(credentials.cert, str(made.tls_scheduler_cert))
        _write_private(credentials.key, str(made.tls_scheduler_key))
    except BaseException:
        credentials.remove()
        raise
    return credentials


def from_directory(directory: str | os.PathLike[str]) -> Credentials:
    """The credentials another process of this invocation created in ``directory``."""
    return Credentials(Path(directory))
