"""Resolved configuration remembered across invocations (mltf_flow.config.memo): a cached rerun reads it
without importing pydantic, and any change to an input is seen at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from mltf_flow.config.memo import cache_dir, remembered
from mltf_flow.errors import ConfigError

#: Resolve the settings and the default profile in a fresh process; print whether pydantic was imported.
PROBE = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("always")
    from mltf_flow.config import load_settings
    from mltf_flow.clusters.profiles import get_profile
    settings = load_settings()
    profile = get_profile(settings.profile)
    print(profile.name, profile.workers, "pydantic" in sys.modules)
""")


def probe(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLTF_FLOW_SET__")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), MLTF_FLOW_PROFILE="mine",
               MLTF_FLOW_PROFILE_FILES=str(home / "profiles.yaml"))
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=home, capture_output=True, text=True,
                          check=False)


def test_second_invocation_reads_the_remembered_value_without_pydantic(tmp_path: Path) -> None:
    (tmp_path / "profiles.yaml").write_text("mine: {kind: local, workers: 3}\n")
    first, second = probe(tmp_path), probe(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["mine", "3", "True"]  # validated: pydantic was needed
    assert second.stdout.split() == ["mine", "3", "False"], second.stderr  # remembered: it was not


def test_an_edit_of_the_same_size_within_one_clock_tick_is_seen(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("mine: {kind: local, workers: 3}\n")
    stamp = profiles.stat().st_mtime_ns
    assert probe(tmp_path).stdout.split()[:2] == ["mine", "3"]
    profiles.write_text("mine: {kind: local, workers: 4}\n")  # same size
    os.utime(profiles, ns=(stamp, stamp))  # and the same mtime: only the contents tell
    assert probe(tmp_path).stdout.split()[:2] == ["mine", "4"]


def test_warnings_are_given_again_and_errors_are_not_remembered(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("mine: {kind: local, workers: 3, wrokers: 4}\n")
    for _ in range(2):  # computed, then remembered
        run = probe(tmp_path)
        assert run.returncode == 0, run.stderr
        assert "unknown key 'wrokers'" in run.stderr
    profiles.write_text("mine: {kind: local, workers: three}\n")
    for _ in range(2):
        run = probe(tmp_path)
        assert run.returncode != 0
        assert "key 'workers': expected a whole number >= 1, found 'three'" in run.stderr


def test_remembered_calls_compute_once_per_distinct_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "input.yaml"
    source.write_text("a: 1\n")
    calls: list[str] = []

    def compute() -> dict[str, str]:
        calls.append(source.read_text())
        warnings.warn("said once, heard every time", UserWarning, stacklevel=1)
        return {"text": source.read_text()}

    for _ in range(2):
        with pytest.warns(UserWarning, match="heard every time"):
            assert remembered("test", [source], ("ctx",), compute) == {"text": "a: 1\n"}
    assert len(calls) == 1
    with pytest.warns(UserWarning):
        remembered("test", [source], ("other ctx",), compute)
    assert len(calls) == 2
    assert {p.name.split("-")[0] for p in cache_dir().iterdir()} == {"test"}


def test_an_unreadable_entry_is_computed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert remembered("test", [], (), lambda: 1) == 1
    (entry,) = cache_dir().iterdir()
    entry.write_bytes(b"not a pickle")
    assert remembered("test", [], (), lambda: 2) == 2


def test_a_failed_computation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def fail() -> int:
        raise ConfigError("bad file")

    with pytest.raises(ConfigError):
        remembered("test", [], (), fail)
    assert not cache_dir().exists() or not list(cache_dir().iterdir())
