"""Dataset URIs and local manifests: parsing, content digests, staleness and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.errors import ConfigError, StagingError
from mltf_flow.staging.local import list_files, stage_local, still_valid
from mltf_flow.staging.manifest import read_manifest, write_manifest
from mltf_flow.staging.uri import DatasetURI, parse_dataset_uri

# -- dataset URIs -----------------------------------------------------------------------------------------


def test_absolute_path() -> None:
    uri = parse_dataset_uri("/data/jets")
    assert uri == DatasetURI("file", "file:///data/jets", path=Path("/data/jets"))


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cwd = Path(os.getcwd())
    assert parse_dataset_uri("data/jets").path == cwd / "data" / "jets"
    assert parse_dataset_uri("./data/../data/jets").canonical == (cwd / "data" / "jets").as_uri()
    assert parse_dataset_uri("~/jets").path == tmp_path / "home" / "jets"


@pytest.mark.parametrize("text", ["file:///data/jets", "file://localhost/data/jets", " /data/jets/ "])
def test_file_uris_equal_plain_paths(text: str) -> None:
    assert parse_dataset_uri(text) == parse_dataset_uri("/data/jets")


@pytest.mark.parametrize("text", ["/data/jets/*.root", "file:///data/jets/*.root"])
def test_glob_in_last_component(text: str) -> None:
    uri = parse_dataset_uri(text)
    assert (uri.path, uri.pattern) == (Path("/data/jets"), "*.root")
    assert uri.canonical == "file:///data/jets/*.root"


@pytest.mark.parametrize("text", ["/data/*/x.root", "/data/run[12]/x.root", "/d/?/*.root", "file:///d/*/x.root"])
def test_glob_outside_last_component_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="last path component"):
        parse_dataset_uri(text)


@pytest.mark.parametrize(
    "text", ["/data/jets", "/data/jets/*.root", "/data/jets/run_?.root", "/data/my jets/x[0-9].root"]
)
def test_canonical_form_parses_to_itself(text: str) -> None:
    uri = parse_dataset_uri(text)
    assert parse_dataset_uri(uri.canonical) == uri


@pytest.mark.parametrize(
    ("text", "scope", "name"),
    [
        ("rucio://user.jdoe:jets_2024_v1", "user.jdoe", "jets_2024_v1"),
        ("rucio:user.jdoe:jets_2024_v1", "user.jdoe", "jets_2024_v1"),
        ("rucio://mc23_13p6TeV:mc23.601229.sample/v1", "mc23_13p6TeV", "mc23.601229.sample/v1"),
    ],
)
def test_rucio_dids(text: str, scope: str, name: str) -> None:
    uri = parse_dataset_uri(text)
    assert (uri.scheme, uri.scope, uri.name, uri.path) == ("rucio", scope, name, None)
    assert uri.canonical == f"rucio://{scope}:{name}"


@pytest.mark.parametrize(
    "text",
    [
        "rucio://noscope", "rucio://scope:", "rucio://:name", "rucio://sc ope:name", "rucio://",
        f"rucio://{'s' * 26}:n",
    ],
)
def test_malformed_rucio_dids(text: str) -> None:
    with pytest.raises(ConfigError, match="Rucio DID"):
        parse_dataset_uri(text)


@pytest.mark.parametrize(
    ("path", "directory", "pattern"),
    [("/data/jets/run_?.root", "/data/jets", "run_?.root"), ("/data/run#1/*.root", "/data/run#1", "*.root")],
)
def test_file_uri_never_drops_part_of_the_path(path: str, directory: str, pattern: str) -> None:
    # '?' and '#' are part of the path (a glob, a directory name), not a query or a fragment: cutting them
    # off would silently stage another dataset (here /data/jets/run_ or /data/run).
    uri = parse_dataset_uri(f"file://{path}")
    assert (uri.path, uri.pattern) == (Path(directory), pattern)
    assert uri == parse_dataset_uri(path)


@pytest.mark.parametrize("text", ["s3://bucket/key", "root://eos.cern.ch//eos/x.root", "https://h/x", "gs://b/k"])
def test_unsupported_schemes(text: str) -> None:
    with pytest.raises(ConfigError, match="is not supported"):
        parse_dataset_uri(text)


def test_file_uri_with_other_host_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'otherhost'"):
        parse_dataset_uri("file://otherhost/data/jets")


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_uri_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_dataset_uri(text)


# -- manifests -------------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    (root / "a.root").write_bytes(b"aaa")
    (root / "sub" / "b.root").write_bytes(b"bbbb")
    (root / "notes.txt").write_text("n\n")
    (root / ".hidden").write_text("skipped\n")
    return root


def stage(path: Path | str) -> dict[str, Any]:
    return stage_local(parse_dataset_uri(str(path)))


def test_manifest_describes_every_file(dataset: Path) -> None:
    manifest = stage(dataset)
    assert manifest["version"] == 1 and manifest["scheme"] == "file"
    assert manifest["uri"] == dataset.as_uri()
    by_name = {f["name"]: f for f in manifest["files"]}
    assert sorted(by_name) == ["a.root", "notes.txt", "sub/b.root"]
    entry = by_name["sub/b.root"]
    assert entry["path"] == str(dataset / "sub" / "b.root")
    assert entry["size"] == 4
    assert entry["sha256"] == hashlib.sha256(b"bbbb").hexdigest()
    assert entry["mtime_ns"] == (dataset / "sub" / "b.root").stat().st_mtime_ns


def test_glob_and_single_file_datasets(dataset: Path) -> None:
    assert [f["name"] for f in stage(dataset / "*.root")["files"]] == ["a.root", "sub/b.root"]
    assert [f["name"] for f in stage(dataset / "a.root")["files"]] == ["a.root"]
    with pytest.raises(StagingError, match=r"\*\.csv"):
        stage(dataset / "*.csv")


def test_missing_or_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="does not exist"):
        stage(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StagingError, match="no files"):
        stage(tmp_path / "empty")


def test_a_fifo_in_the_dataset_is_refused_before_anything_is_read(dataset: Path) -> None:
    fifo = dataset / "sub" / "pipe.root"
    os.mkfifo(fifo)  # reading it for its checksum would block forever
    with pytest.raises(StagingError, match=r"pipe\.root is a FIFO, not data\. Move it out"):
        stage(dataset)
    with pytest.raises(StagingError, match="is a FIFO"):
        stage(fifo)  # named alone
    assert [f["name"] for f in stage(dataset / "a.root")["files"]] == ["a.root"]  # the rest is fine
    (dataset / "gone.root").symlink_to(dataset / "missing")
    fifo.unlink()
    with pytest.raises(StagingError, match=r"gone\.root cannot be read .*broken link"):
        stage(dataset)


def test_digest_does_not_depend_on_location(dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(dataset, copy, copy_function=shutil.copy)  # new paths and new mtimes
    original, copied = stage(dataset), stage(copy)
    assert copied["files"][0]["path"] != original["files"][0]["path"]
    assert copied["digest"] == original["digest"]


def test_digest_does_not_depend_on_mtime(dataset: Path) -> None:
    before = stage(dataset)
    os.utime(dataset / "a.root", ns=(1_000_000_000, 1_000_000_000))
    after = stage(dataset)
    assert after["files"] != before["files"]
    assert after["digest"] == before["digest"]


def test_digest_changes_with_content_names_and_files(dataset: Path) -> None:
    original = stage(dataset)["digest"]
    (dataset / "a.root").write_bytes(b"aab")  # same size, other content
    assert stage(dataset)["digest"] != original
    (dataset / "a.root").write_bytes(b"aaa")
    assert stage(dataset)["digest"] == original
    (dataset / "a.root").rename(dataset / "c.root")
    assert stage(dataset)["digest"] != original


def test_still_valid_until_a_file_is_touched(dataset: Path) -> None:
    uri = parse_dataset_uri(str(dataset))
    manifest = stage_local(uri)
    assert still_valid(uri, manifest)
    mtime = (dataset / "a.root").stat().st_mtime_ns
    os.utime(dataset / "a.root", ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))
    assert not still_valid(uri, manifest)
    os.utime(dataset / "a.root", ns=(mtime, mtime))
    assert still_valid(uri, manifest)


def test_still_valid_false_after_adding_or_removing(dataset: Path) -> None:
    uri = parse_dataset_uri(str(dataset))
    manifest = stage_local(uri)
    (dataset / ".another-hidden").write_text("ignored\n")
    assert still_valid(uri, manifest)
    (dataset / "sub" / "new.root").write_bytes(b"n")
    assert not still_valid(uri, manifest)
    (dataset / "sub" / "new.root").unlink()
    assert still_valid(uri, manifest)
    (dataset / "notes.txt").unlink()
    assert not still_valid(uri, manifest)
    shutil.rmtree(dataset)
    assert not still_valid(uri, manifest)


def test_still_valid_with_glob_ignores_other_files(dataset: Path) -> None:
    uri = parse_dataset_uri(str(dataset / "*.root"))
    manifest = stage_local(uri)
    (dataset / "more.txt").write_text("not matched\n")
    assert still_valid(uri, manifest)
    (dataset / "more.root").write_text("matched\n")
    assert not still_valid(uri, manifest)


def test_size_change_with_restored_mtime_is_stale(dataset: Path) -> None:
    uri = parse_dataset_uri(str(dataset))
    manifest = stage_local(uri)
    stat = (dataset / "a.root").stat()
    (dataset / "a.root").write_bytes(b"longer content")
    os.utime(dataset / "a.root", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not still_valid(uri, manifest)


def test_write_then_read_manifest(dataset: Path, tmp_path: Path) -> None:
    manifest = stage(dataset)
    path = tmp_path / "work" / "datasets" / "x" / "manifest.json"
    write_manifest(path, manifest)
    assert read_manifest(path) == manifest
    assert os.listdir(path.parent) == ["manifest.json"]


def test_failed_write_keeps_the_old_manifest_and_no_temp_file(dataset: Path, tmp_path: Path) -> None:
    path = tmp_path / "m" / "manifest.json"
    manifest = stage(dataset)
    write_manifest(path, manifest)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_manifest(path, {**manifest, "files": {object()}})
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["manifest.json"]


@pytest.mark.parametrize(
    "text", ["not json {", "", '{"version": 1}', '{"version": 2, "digest": "x"}', '{"digest": "x"}']
)
def test_read_manifest_rejects_garbage(tmp_path: Path, text: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(text)
    with pytest.raises(StagingError, match="manifest"):
        read_manifest(path)


def test_read_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="cannot be read"):
        read_manifest(tmp_path / "absent.json")


@pytest.mark.parametrize("value", [[], None, "text", 1])
def test_read_manifest_rejects_json_that_is_not_an_object(tmp_path: Path, value: object) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(value))
    with pytest.raises(StagingError):
        read_manifest(path)


def test_list_files_skips_hidden_directories(dataset: Path) -> None:
    (dataset / ".cache").mkdir()
    (dataset / ".cache" / "x.root").write_bytes(b"x")
    names = [name for name, _ in list_files(parse_dataset_uri(str(dataset)))]
    assert names == ["a.root", "notes.txt", "sub/b.root"]
