"""The pure parts of rucio:// staging: the profile's rucio section, PFN mapping, adler32, manifest digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError
from mltf_flow.staging.manifest import manifest_digest
from mltf_flow.staging.rucio import RucioSettings, adler32_file, pfn_to_path, rucio_settings


def test_defaults_and_durations() -> None:
    assert rucio_settings(None) == RucioSettings()
    got = rucio_settings({"rse_expression": "MLTF_NVME", "lifetime": "7d", "timeout": "90m", "stuck_grace": 30,
                          "verify": "sample", "sample_files": 3, "mode": "download"})
    assert (got.lifetime, got.timeout, got.stuck_grace) == (7 * 86400, 5400, 30)
    assert (got.rse_expression, got.verify, got.sample_files, got.mode) == ("MLTF_NVME", "sample", 3, "download")
    assert rucio_settings({"lifetime": None}).lifetime is None  # a rule without expiry
    assert rucio_settings({"timeout": "6 hours", "poll_max": "1.5m"}).timeout == 6 * 3600  # Dask's grammar


@pytest.mark.parametrize(("section", "message"), [
    ({"rse": "X"}, "unknown key(s) rse"),
    ({"mode": "teleport"}, "mode 'teleport'"),
    ({"verify": "maybe"}, "verify 'maybe'"),
    ({"timeout": "6 parsecs"}, "rucio timeout"),  # Dask's grammar: "6 hours" is 6 h
    ({"grouping": "FILES"}, "grouping 'FILES'"),
    ({"rse_expression": ""}, "rse_expression"),
    ({"sample_files": 0}, "sample_files"),
    ({"pfn_map": ["root://x"]}, "pfn_map"),
    ("FACILITY", "expected a mapping"),
])
def test_bad_sections_name_where_and_what(section: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^site\.yaml: ") as info:
        rucio_settings(section, "site.yaml: profile 'p'")  # type: ignore[arg-type]
    assert message in str(info.value)


def test_pfn_mapping_longest_prefix_first() -> None:
    pfn_map = rucio_settings({"pfn_map": {"root://eos.example:1094//eos/": "/eos/",
                                          "root://eos.example:1094//eos/cms/store/": "/store/"}}).pfn_map
    assert pfn_to_path("root://eos.example:1094//eos/cms/store/a/b.root", pfn_map) == Path("/store/a/b.root")
    assert pfn_to_path("root://eos.example:1094//eos/user/x.root", pfn_map) == Path("/eos/user/x.root")
    assert pfn_to_path("file://localhost/data/rse/test/ab/cd/f.root", ()) == Path("/data/rse/test/ab/cd/f.root")
    assert pfn_to_path("file:///data/with%20space.root", ()) == Path("/data/with space.root")
    assert pfn_to_path("davs://storage.example:443/x.root", pfn_map) is None


def test_adler32_as_rucio_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert adler32_file(path) == "024d0127"
    path.write_bytes(b"")
    assert adler32_file(path) == "00000001"
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 9000)  # several chunks
    import zlib

    assert adler32_file(big, chunk=4096) == f"{zlib.adler32(big.read_bytes()) & 0xFFFFFFFF:08x}"


def test_manifest_digest_follows_rucio_checksums() -> None:
    files = [{"name": "test:a.root", "size": 3, "adler32": "024d0127"}, {"name": "test:b.root", "size": 1,
                                                                         "adler32": "00620062"}]
    same = manifest_digest(list(reversed(files)))
    assert manifest_digest(files) == same  # order does not matter
    changed = [files[0], {**files[1], "adler32": "00630063"}]
    assert manifest_digest(changed) != same
    assert manifest_digest([*files, {"name": "test:c.root", "size": 1, "adler32": "00640064"}]) != same
