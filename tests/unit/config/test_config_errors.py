"""One test per class of configuration error: each message names the file (or variable), the key, and says
what is expected (the fix). No pydantic traceback or wording reaches the user."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mltf_flow.clusters.profiles import get_profile, profile_names
from mltf_flow.config import load_settings
from mltf_flow.errors import ConfigError

WriteProfiles = Callable[[object], Path]


def failure(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    context = None if info.value.__suppress_context__ else info.value.__context__
    assert not isinstance(info.value.__cause__ or context, ValidationError)  # no pydantic traceback above ours
    assert "pydantic" not in message.lower() and "validation error" not in message.lower(), message
    assert "Input should be" not in message and "For further information" not in message, message
    return message


def settings_file(home: Path, data: object) -> Path:
    path = home / ".config" / "mltf_flow" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


# -- bad type ---------------------------------------------------------------------------------------------------


def test_bad_type_in_a_profile(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"gpu": {"extends": "slurm", "workers": "many"}})
    message = failure(lambda: get_profile("gpu"))
    assert message == (f"{path}: profile 'gpu', key 'workers': expected a whole number >= 1, found 'many'.")


def test_bad_type_in_a_settings_file(tmp_path: Path) -> None:
    path = settings_file(tmp_path, {"prefetch_limit": "many"})
    message = failure(load_settings)
    assert message == f"{path}: key 'prefetch_limit': expected a whole number >= 0, found 'many'."


def test_unquoted_walltime_says_how_to_quote_it(write_profiles: WriteProfiles) -> None:
    path = write_profiles("gpu:\n  extends: slurm\n  walltime: 10:00:00\n")
    message = failure(lambda: get_profile("gpu"))
    assert message.startswith(f"{path}: profile 'gpu', key 'walltime': ")
    assert 'Quote it: walltime: "10:00:00"' in message


# -- bad unit: durations and sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("memory", "4 parsecs", "expected a size like '4GB' or '16GiB', found '4 parsecs'."),
    ("memory", "4", "expected a size like '4GB' or '16GiB', found '4'."),
    ("lifetime", "3h50m", "expected a duration like '55m'"),
    ("lifetime", "55 m", "no space"),
    ("walltime", "two hours", 'expected a quoted SLURM time like "02:00:00"'),
])
def test_bad_unit(write_profiles: WriteProfiles, key: str, value: str, expected: str) -> None:
    path = write_profiles({"gpu": {"extends": "slurm", key: value}})
    message = failure(lambda: get_profile("gpu"))
    assert message.startswith(f"{path}: profile 'gpu', key {key!r}: ")
    assert expected in message


def test_bad_duration_in_the_rucio_section(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"stage": {"extends": "local", "rucio": {"timeout": "6 parsecs"}}})
    message = failure(lambda: get_profile("stage"))
    assert message == (f"{path}: profile 'stage': rucio timeout: expected seconds or a duration like 30m, 6h, 7d; "
                       "found '6 parsecs'.")


# -- unknown keys warn ---------------------------------------------------------------------------------------------


def test_unknown_profile_key_warns_with_file_and_key(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"gpu": {"extends": "slurm", "partiton": "x"}})
    with pytest.warns(UserWarning) as record:
        profile = get_profile("gpu")
    message = str(record[0].message)
    assert message.startswith(f"{path}: profile 'gpu': unknown key 'partiton' ignored")
    assert "partition" in message  # the known keys: the fix
    assert profile.partition is None  # type: ignore[attr-defined]


def test_unknown_setting_warns_with_file_and_key(tmp_path: Path) -> None:
    path = settings_file(tmp_path, {"experimnet": "x"})
    with pytest.warns(UserWarning, match=r"unknown setting 'experimnet' ignored \(known: .*experiment") as record:
        load_settings()
    assert str(record[0].message).startswith(f"{path}: ")


def test_unknown_key_in_a_section_is_an_error(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"gpu": {"extends": "slurm", "gds": {"enable": True}}})
    message = failure(lambda: get_profile("gpu"))
    assert message.startswith(f"{path}: profile 'gpu': gds: unknown key(s) enable; known: enabled, ")


# -- unknown profile, bad extends ----------------------------------------------------------------------------------


def test_unknown_profile_name_says_where_to_define_it(write_profiles: WriteProfiles) -> None:
    write_profiles({"mine": {"workers": 1}})
    message = failure(lambda: get_profile("nope"))
    assert "no profile 'nope'; known profiles: local, mine, slurm." in message
    assert "~/.config/mltf_flow/profiles.yaml or a file listed in MLTF_FLOW_PROFILE_FILES" in message


def test_extends_of_an_unknown_profile(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"child": {"extends": "ghost"}})
    message = failure(lambda: get_profile("child"))
    assert message.startswith(f"{path}: profile 'child' extends unknown profile 'ghost'; known profiles: ")


def test_extends_in_a_cycle(write_profiles: WriteProfiles) -> None:
    path = write_profiles({"a": {"extends": "b"}, "b": {"extends": "a"}})
    message = failure(lambda: get_profile("a"))
    assert "a -> b -> a" in message and str(path) in message and "Remove one 'extends'" in message


# -- bad YAML ------------------------------------------------------------------------------------------------------


def test_bad_yaml_names_the_file_and_the_fix(write_profiles: WriteProfiles) -> None:
    path = write_profiles("gpu: {extends: slurm\n")
    message = failure(profile_names)
    assert message.startswith(f"{path}: not valid YAML at line 2, column 1: ") and message.endswith(
        "Fix the file or remove it.")
    assert "\n" not in message and "<unicode string>" not in message  # one line, naming the file only


def test_bad_pipeline_yaml_is_one_line_naming_the_file_and_the_line(tmp_path: Path) -> None:
    from mltf_flow.config.pipeline import read_pipeline_file

    path = tmp_path / "pipeline.yaml"
    path.write_text("name: p\nsteps:\n  fit:\n    entry_point: fit\n  prepare\n    entry_point: prepare\n")
    message = failure(lambda: read_pipeline_file(path))
    assert message.startswith(f"{path}: not valid YAML at line 6, column 16: ") and "\n" not in message, message
    assert "<unicode string>" not in message


def test_a_profile_that_is_not_a_mapping(write_profiles: WriteProfiles) -> None:
    path = write_profiles("gpu: [a, b]\n")
    assert failure(profile_names) == f"{path}: expected a mapping of profile name -> settings."


# -- bad section values --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "expected"), [
    ({"fabric": {"kind": "roce", "socket_ifname": "e0", "traffic_class": "106"}},
     "profile 'gpu': fabric traffic_class: expected a whole number, found '106'."),
    ({"fabric": {"kind": "carrier-pigeon"}},
     "profile 'gpu': fabric kind 'carrier-pigeon': expected one of auto, roce, ib, socket, none."),
    ({"fabric": {"kind": "auto", "traffic_class": 999}}, "profile 'gpu': fabric: traffic_class=999 is outside 0..255"),
    ({"fabric": "roce"}, "profile 'gpu', key 'fabric': expected a mapping (kind: auto, ...), found 'roce'."),
    ({"gds": {"enabled": "yes"}}, "profile 'gpu': gds enabled: expected true or false, found 'yes'."),
    ({"gds": {"cufile": {"max_io_threads": 0}}},
     "profile 'gpu': cufile max_io_threads: expected a whole number >= 1, found 0."),
    ({"rucio": {"mode": "teleport"}}, "profile 'gpu': rucio mode 'teleport': expected one of 'rule' or 'download'."),
    ({"rucio": {"sample_files": 0}}, "profile 'gpu': rucio sample_files: expected a whole number >= 1, found 0."),
])
def test_bad_section_value(write_profiles: WriteProfiles, section: dict[str, object], expected: str) -> None:
    path = write_profiles({"gpu": {"extends": "slurm", "interface": "ib0", **section}})
    message = failure(lambda: get_profile("gpu"))
    assert message.startswith(f"{path}: ")
    assert expected in message


# -- bad environment variables -------------------------------------------------------------------------------------


def test_bad_value_in_a_set_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__SLURM__MEMORY", "lots")
    message = failure(lambda: get_profile("slurm"))
    assert message == ("$MLTF_FLOW_SET__SLURM__MEMORY: profile 'slurm', key 'memory': expected a size like '4GB' "
                       "or '16GiB', found 'lots'.")


def test_set_variable_for_an_unknown_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__SLURM__PARTITOIN", "gpu")
    message = failure(lambda: get_profile("slurm"))
    assert "MLTF_FLOW_SET__SLURM__PARTITOIN: no profile 'SLURM' or no key 'partitoin'" in message
    assert "MLTF_FLOW_SET__<PROFILE>__<KEY>" in message


def test_bad_setting_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_STDERR_TAIL_LINES", "0")
    assert failure(load_settings) == ("$MLTF_FLOW_STDERR_TAIL_LINES: key 'stderr_tail_lines': expected a whole "
                                      "number >= 1, found 0.")


@pytest.mark.parametrize(("old", "new"), [
    ("MLTF_FLOW_PROFILES", "MLTF_FLOW_PROFILE_FILES"),
    ("MLTF_FLOW_PROFILE__SLURM__PARTITION", "MLTF_FLOW_SET__<PROFILE>__<KEY>"),
])
def test_retired_variables_name_their_successor(monkeypatch: pytest.MonkeyPatch, old: str, new: str) -> None:
    monkeypatch.setenv(old, "x")
    for call in (load_settings, lambda: get_profile("local")):
        message = failure(call)
        assert message.startswith(f"${old} is no longer read: use {new}") and f"then unset {old}" in message


def test_missing_profile_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", str(tmp_path / "nope.yaml"))
    message = failure(lambda: get_profile("local"))
    assert f"profile_files names {tmp_path / 'nope.yaml'}, which does not exist" in message
    assert "MLTF_FLOW_PROFILE_FILES" in message


# -- pipeline.yaml -------------------------------------------------------------------------------------------------


def pipeline_project(root: Path, pipeline: str) -> Path:
    """A project with one entry point and the given pipeline.yaml; returns the pipeline.yaml."""
    root.mkdir()
    (root / "MLproject").write_text("name: tiny\nentry_points:\n  train:\n    command: python train.py\n")
    (root / "pipeline.yaml").write_text(pipeline)
    return root / "pipeline.yaml"


def test_bad_key_and_value_in_pipeline_yaml(tmp_path: Path) -> None:
    from mltf_flow.pipeline import load_pipeline

    path = pipeline_project(tmp_path / "p", "steps:\n  train:\n    entrypoint: train\n    gpu: maybe\n")
    message = failure(lambda: load_pipeline(path.parent))
    assert message.splitlines() == [
        f"{path}: step 'train', key 'gpu': expected true or false, found 'maybe'.",
        f"{path}: step 'train': unknown key(s) entrypoint; known: entry_point, dataset, inputs, outputs, code, "
        "requires, gpu, run_on, world_size, timeout. Did you mean 'entry_point'?",
    ]


def test_unknown_entry_point_in_pipeline_yaml(tmp_path: Path) -> None:
    from mltf_flow.pipeline import load_pipeline

    path = pipeline_project(tmp_path / "p", "steps:\n  train:\n    entry_point: trian\n")
    message = failure(lambda: load_pipeline(path.parent))
    assert message.startswith(f"{path}: step 'train', key 'entry_point': {path.parent / 'MLproject'}: no entry "
                              "point 'trian'; entry points are: train")


# -- the backend config (mlflow run --backend mltf --backend-config) ----------------------------------------------


def test_bad_values_in_a_backend_config(tmp_path: Path) -> None:
    from mltf_flow.backend.config import load_backend_config_file, parse_backend_config

    path = tmp_path / "slurm_config.json"
    path.write_text('{"nodes": 0, "time": "1 hour", "kill_grace": -1}')
    message = failure(lambda: parse_backend_config(load_backend_config_file(path), source=str(path)))
    assert message.splitlines() == [
        f"{path}: key 'nodes': expected a whole number >= 1, found 0.",
        f'{path}: key \'time\': expected a SLURM time limit like "00:30:00", "1-00:00:00", minutes, or "UNLIMITED", '
        "found '1 hour'.",
        f"{path}: key 'kill_grace': expected seconds above zero, or a duration like 10s or 2m; found -1.",
    ]


def test_unknown_key_in_a_backend_config(tmp_path: Path) -> None:
    from mltf_flow.backend.config import parse_backend_config

    message = failure(lambda: parse_backend_config({"partiton": "gpu"}, source="slurm_config.json"))
    assert message.startswith("slurm_config.json: unknown key(s) 'partiton' (did you mean 'partition'?). Known keys: ")
    assert message.endswith("(see docs/mlflow_backend.md).")
