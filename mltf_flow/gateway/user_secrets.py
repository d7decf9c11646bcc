"""Users' secrets on the gateway (a Rucio password, a W&B or Hugging Face key), as REANA's ``secrets-add``: set
once, encrypted at rest, listed without their values, and given to that user's jobs only, as environment.

This module owns the key file (:func:`load_or_create_key`), the encryption (:class:`SecretBox`: AES-GCM, a
random nonce per value, the user and the secret's name bound as associated data, so a value copied to another
user's or another name's row does not open) and what a secret may be called and hold (:func:`check_name`,
:func:`check_value`). Storing the sealed values is :mod:`.store`'s, injecting them :mod:`.lifecycle`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from mltf_flow.errors import ConfigError, GatewayError, RequestRejected

KEY_BYTES = 32
NONCE_BYTES = 12
MAX_NAME_CHARS = 128
MAX_VALUE_BYTES = 64 * 1024
# The first byte of a sealed value: the layout (and, one day, which key) it was sealed with.
_VERSION = b"\x01"
_TAG_BYTES = 16
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Names a secret may not take (compared in upper case), and why: the job or the gateway sets them.
RESERVED_NAMES = {
    "PATH": "the job's shell finds its programs with it",
    "HOME": "the job's tools keep their configuration below it",
    "USER": "it names the account the job runs as",
}
#: Prefixes a secret's name may not start with (compared in upper case), and why.
RESERVED_PREFIXES = {
    "LD_": "the dynamic loader's variables change what the job runs",
    "PYTHON": "Python's own variables change how the job's interpreter starts",
    "MLFLOW_": "the gateway sets MLflow's variables (the job's tracking URI and credential)",
    "MLTF_": "mltf_flow's own variables configure the job",
    "SLURM_": "SLURM sets its variables for the job",
    "CUDA_": "the job's profile sets the GPUs' variables",
    "NCCL_": "the job's profile sets NCCL's variables",
}


def load_or_create_key(path: Path) -> bytes:
    """The gateway's secret key (32 bytes) from ``path``, made (mode 0600, atomically) when there is none yet.
    ConfigError for a key file that others may read, or that is not a key."""
    if not path.exists():
        _create_key(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the gateway's secret key may be read or written by others (mode {mode:04o}); "
            f"make it the gateway's own: chmod 600 {path}"
        )
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{path}: not a secret key ({len(key)} bytes, not {KEY_BYTES}). Restore the gateway's key file; "
            f"a new one (remove this file) makes every stored secret unreadable."
        )
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
        # link, not rename: two gateways starting at once keep the first key, never one each.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _associated(user: str, name: str) -> bytes:
    # JSON: no user name and secret name can be spliced into another pair ("a", "b_c" vs "a_b", "c").
    return json.dumps(["mltf-flow secret", user, name]).encode()


class SecretBox:
    """Seals and opens users' secret values with the gateway's key."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != KEY_BYTES:
            raise ConfigError(f"the gateway's secret key has {len(key)} bytes, not {KEY_BYTES}.")
        self._aead = AESGCM(key)

    def seal(self, user: str, name: str, value: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, value.encode(), _associated(user, name))

    def open(self, user: str, name: str, sealed: bytes) -> str:
        from cryptography.exceptions import InvalidTag

        version, nonce, body = sealed[:1], sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
        try:
            # The tag alone is 16 bytes: anything shorter was cut, and AESGCM would refuse the short nonce.
            if version != _VERSION or len(body) < _TAG_BYTES:
                raise InvalidTag
            return self._aead.decrypt(nonce, body, _associated(user, name)).decode()
        except InvalidTag:
            raise GatewayError(
                f"the secret store is damaged: secret {name!r} of user {user!r} does not open with the gateway's "
                f"key (a value copied from another row, or another key file); the user must set it again.",
                status=500,
            ) from None


def check_name(name: str) -> str:
    """``name`` if a secret may take it: an environment variable's name that neither the gateway nor the job
    needs. RequestRejected (422) saying why not."""
    if len(name) > MAX_NAME_CHARS or not _NAME.match(name):
        raise RequestRejected(
            f"secret name {name[:MAX_NAME_CHARS]!r} is not an environment variable's name: letters, digits and "
            f"'_', not starting with a digit, at most {MAX_NAME_CHARS} characters (e.g. WANDB_API_KEY).",
            status=422,
        )
    upper = name.upper()
    why = RESERVED_NAMES.get(upper) or next(
        (reason for prefix, reason in RESERVED_PREFIXES.items() if upper.startswith(prefix)), None
    )
    if why is not None:
        raise RequestRejected(f"secret name {name!r} is reserved: {why}. Choose another name.", status=422)
    return name


def check_value(name: str, value: str) -> str:
    """``value`` if it can be a secret's: at most 64 KiB, and no NUL (an environment cannot hold one)."""
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise RequestRejected(
            f"secret {name!r} is larger than {MAX_VALUE_BYTES // 1024} KiB: store a file's content elsewhere "
            f"(a dataset) and its path or key here.", status=413,
        )
    if "\0" in value:
        raise RequestRejected(f"secret {name!r} holds a NUL character, which no environment can.", status=422)
    return value


__all__ = ["KEY_BYTES", "RESERVED_NAMES", "RESERVED_PREFIXES", "SecretBox", "check_name", "check_value",
           "load_or_create_key"]
