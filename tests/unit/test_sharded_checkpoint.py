"""The manifest of a sharded checkpoint: what loading checks before DCP reads a byte (no process group needed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mltf_flow.errors import TrackingError
from mltf_flow.sharded_checkpoint import MANIFEST, digest_files, manifest_text, parse_manifest, verify


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> tuple[Path, str]:
    """A directory as save_sharded leaves it: two shards, DCP's metadata and the manifest; and its digest."""
    for name, data in ((".metadata", b"meta"), ("__1_0.distcp", b"rank one"), ("__0_0.distcp", b"rank zero")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / MANIFEST).write_text(manifest_text(digest_files(tmp_path)))
    return tmp_path, sha((tmp_path / MANIFEST).read_bytes())


def test_manifest_is_sha256sum_format_sorted_by_path_whoever_wrote_what() -> None:
    files = {"__1_0.distcp": sha(b"b"), ".metadata": sha(b"m"), "__0_0.distcp": sha(b"a")}
    text = manifest_text(files)
    assert text == f"{sha(b'm')}  .metadata\n{sha(b'a')}  __0_0.distcp\n{sha(b'b')}  __1_0.distcp\n"
    assert manifest_text(dict(reversed(list(files.items())))) == text  # gathered in another rank order
    assert parse_manifest(text) == files


def test_digest_files_lists_every_file_but_the_manifest(checkpoint_dir: tuple[Path, str]) -> None:
    directory, _ = checkpoint_dir
    assert digest_files(directory) == {".metadata": sha(b"meta"), "__0_0.distcp": sha(b"rank zero"),
                                       "__1_0.distcp": sha(b"rank one")}


def test_an_intact_checkpoint_verifies_and_a_stale_extra_file_is_ignored(checkpoint_dir: tuple[Path, str]) -> None:
    directory, digest = checkpoint_dir
    verify(directory, digest, "ck")
    (directory / "__2_0.distcp").write_bytes(b"left by a save that was killed")  # not in the manifest
    verify(directory, digest, "ck")


def test_a_changed_shard_is_refused_naming_it(checkpoint_dir: tuple[Path, str]) -> None:
    directory, digest = checkpoint_dir
    (directory / "__1_0.distcp").write_bytes(b"rank one, changed")
    with pytest.raises(TrackingError, match=r"checkpoint ck: file __1_0\.distcp is [0-9a-f]{64}, its MANIFEST says"):
        verify(directory, digest, "ck")


def test_a_missing_shard_is_refused(checkpoint_dir: tuple[Path, str]) -> None:
    directory, digest = checkpoint_dir
    (directory / "__0_0.distcp").unlink()
    with pytest.raises(TrackingError, match=r"file __0_0\.distcp is missing"):
        verify(directory, digest, "ck")


def test_a_manifest_other_than_the_recorded_one_is_refused(checkpoint_dir: tuple[Path, str]) -> None:
    directory, digest = checkpoint_dir
    with pytest.raises(TrackingError, match=f"but {'0' * 64} was recorded"):
        verify(directory, "0" * 64, "ck")
    (directory / MANIFEST).unlink()
    with pytest.raises(TrackingError, match="checkpoint ck has no MANIFEST"):
        verify(directory, digest, "ck")
