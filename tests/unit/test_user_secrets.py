"""Users' secrets (mltf_flow.gateway.user_secrets): the key file, real AES-GCM sealing bound to user and name,
and the names and values a secret may have."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError, GatewayError, RequestRejected
from mltf_flow.gateway.user_secrets import SecretBox, check_name, check_value, load_or_create_key


def test_key_is_created_once_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secrets.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["secrets.key"]  # no temporary file left


def test_concurrent_creators_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and set(keys) == {path.read_bytes()}


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    load_or_create_key(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"secrets.key: .* may be read or written by others \(mode 0640\); "
                                          r"make it the gateway's own: chmod 600 "):
        load_or_create_key(path)


def test_a_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"not a secret key \(5 bytes, not 32\)"):
        load_or_create_key(path)


def test_seal_and_open(tmp_path: Path) -> None:
    box = SecretBox(load_or_create_key(tmp_path / "k"))
    sealed = box.seal("alice", "WANDB_API_KEY", "s3cr3t-välue")
    assert b"s3cr3t" not in sealed
    assert box.open("alice", "WANDB_API_KEY", sealed) == "s3cr3t-välue"
    assert box.seal("alice", "WANDB_API_KEY", "s3cr3t-välue") != sealed  # a fresh nonce each time
    # Another gateway with the same key file opens it: nothing but the key is needed.
    assert SecretBox(load_or_create_key(tmp_path / "k")).open("alice", "WANDB_API_KEY", sealed) == "s3cr3t-välue"


@pytest.mark.parametrize(("user", "name"), [("bob", "WANDB_API_KEY"), ("alice", "HF_TOKEN"),
                                            ("aliceW", "ANDB_API_KEY")])
def test_a_value_moved_to_another_row_does_not_open(user: str, name: str) -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("alice", "WANDB_API_KEY", "value")
    with pytest.raises(GatewayError, match=r"the secret store is damaged: secret .* does not open") as caught:
        box.open(user, name, sealed)
    assert caught.value.status == 500


def test_tampered_values_and_other_keys_do_not_open() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.seal("alice", "TOKEN", "value")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad in (flipped, b"\x02" + sealed[1:], sealed[:5], b""):
        with pytest.raises(GatewayError, match="the secret store is damaged"):
            box.open("alice", "TOKEN", bad)
    with pytest.raises(GatewayError, match="the secret store is damaged"):
        SecretBox(os.urandom(32)).open("alice", "TOKEN", sealed)


def test_a_key_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="has 16 bytes, not 32"):
        SecretBox(os.urandom(16))


@pytest.mark.parametrize("name", ["WANDB_API_KEY", "HF_TOKEN", "_private", "rucio_password", "A" * 128,
                                  "PATHS", "HOMER", "MY_PATH"])
def test_names_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("1ABC", "not an environment variable's name"), ("A-B", "not an environment variable's name"),
    ("", "not an environment variable's name"), ("A" * 129, "at most 128 characters"),
    ("A B", "not an environment variable's name"), ("Ä", "not an environment variable's name"),
    ("PATH", "finds its programs"), ("HOME", "configuration below it"), ("USER", "the account"),
    ("LD_PRELOAD", "dynamic loader"), ("PYTHONPATH", "Python's own"), ("PYTHONSTARTUP", "Python's own"),
    ("MLFLOW_TRACKING_TOKEN", "MLflow's variables"), ("MLTF_FLOW_PROFILE", "mltf_flow's own"),
    ("SLURM_JOB_ID", "SLURM"), ("CUDA_VISIBLE_DEVICES", "GPUs"), ("NCCL_SOCKET_IFNAME", "NCCL"),
    ("mlflow_tracking_uri", "MLflow's variables"), ("path", "finds its programs"),
])
def test_names_refused(name: str, why: str) -> None:
    with pytest.raises(RequestRejected, match=why) as caught:
        check_name(name)
    assert caught.value.status == 422


def test_values() -> None:
    assert check_value("K", "x" * 64 * 1024) == "x" * 64 * 1024
    with pytest.raises(RequestRejected, match=r"secret 'K' is larger than 64 KiB") as caught:
        check_value("K", "é" * (32 * 1024 + 1))  # 2 bytes each in UTF-8: one byte over
    assert caught.value.status == 413
    with pytest.raises(RequestRejected, match="NUL character") as caught:
        check_value("K", "a\0b")
    assert caught.value.status == 422
