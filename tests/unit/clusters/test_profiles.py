"""Cluster profiles: layering and precedence, `extends`, validation messages, derived properties."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import mltf_flow
from mltf_flow.clusters.profiles import (
    LocalProfile,
    SlurmProfile,
    duration_seconds,
    get_profile,
    gpu_variant,
    profile_names,
    walltime_seconds,
)
from mltf_flow.errors import ConfigError

SHIPPED = (Path(mltf_flow.__file__).resolve().parent / "profiles.yaml").resolve()
REPO_PROFILES = Path(__file__).resolve().parents[3] / "configs" / "profiles.yaml"

WriteCwd = Callable[[object], Path]


def _dump(data: object) -> str:
    return data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)


def user_file(home: Path, data: object) -> Path:
    path = home / ".config" / "mltf_flow" / "profiles.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(data))
    return path


def extra_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *datas: object) -> list[Path]:
    """Files listed (in this order) in MLTF_FLOW_PROFILE_FILES."""
    paths = []
    for i, data in enumerate(datas):
        path = tmp_path / "extra" / f"profiles-{i}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump(data))
        paths.append(path)
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", ":".join(str(p) for p in paths))
    return paths


# --------------------------------------------------------------------------------------------- layering


def test_shipped_profiles_resolve_with_documented_defaults() -> None:
    assert {"local", "slurm"} <= set(profile_names())
    local, slurm = get_profile("local"), get_profile("slurm")
    assert (local.kind, local.workers, local.memory) == ("local", 2, "2GB")
    assert (slurm.kind, slurm.workers, slurm.memory, slurm.walltime) == ("slurm", 1, "4GB", "01:00:00")
    # slurm extends local: keys it does not set come from local
    assert slurm.worker_start_timeout == 120.0
    assert slurm.dashboard_address == "127.0.0.1:8787"
    assert slurm.origin == str(SHIPPED)
    assert slurm.source_of("memory") == str(SHIPPED)


def test_user_file_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    path = user_file(tmp_path, {"local": {"workers": 7}})
    local = get_profile("local")
    assert local.workers == 7
    assert local.source_of("workers") == str(path.resolve())
    assert local.memory == "2GB"
    assert local.source_of("memory") == str(SHIPPED)


LAYERS = ("user", "extra-a", "extra-b", "env")


@pytest.mark.parametrize("n", range(1, len(LAYERS) + 1), ids=[f"upto-{layer}" for layer in LAYERS])
def test_each_layer_beats_the_ones_before(
    n: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shipped < ~/.config < MLTF_FLOW_PROFILE_FILES files (later wins) < MLTF_FLOW_SET__ variables."""
    user_file(tmp_path, {"my-prof": {"extends": "slurm", "partition": "user", "account": "user"}})
    expected, source = "user", str((tmp_path / ".config" / "mltf_flow" / "profiles.yaml").resolve())
    if n >= 2:
        extras = [{"my-prof": {"partition": "extra-a"}}]
        if n >= 3:
            extras.append({"my-prof": {"partition": "extra-b"}})
        paths = extra_files(tmp_path, monkeypatch, *extras)
        expected, source = str(extras[-1]["my-prof"]["partition"]), str(paths[-1].resolve())
    if n >= 4:
        monkeypatch.setenv("MLTF_FLOW_SET__MY_PROF__PARTITION", "gpu")
        expected, source = "gpu", "$MLTF_FLOW_SET__MY_PROF__PARTITION"

    profile = get_profile("my-prof")
    assert profile.partition == expected
    assert profile.source_of("partition") == source
    # untouched keys keep their lower-layer values
    assert profile.account == "user"
    assert profile.memory == "4GB"
    assert profile.source_of("memory") == str(SHIPPED)
    assert profile.kind == "slurm"


def test_later_file_in_mltf_flow_profiles_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = extra_files(tmp_path, monkeypatch, {"p": {"workers": 3}}, {"p": {"workers": 5}})
    assert get_profile("p").workers == 5
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", f"{b}:{a}")
    assert get_profile("p").workers == 3


def test_mltf_flow_profiles_naming_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", str(missing))
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        get_profile("local")


def test_profiles_yaml_in_the_current_directory_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "profiles.yaml").write_text(yaml.safe_dump({"here": {"workers": 4}}))  # tmp_path is the cwd
    assert Path.cwd() == tmp_path
    assert "here" not in profile_names()


def test_the_same_files_give_the_same_profiles_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_profiles: WriteCwd
) -> None:
    write_profiles({"here": {"extends": "slurm", "workers": 4, "partition": "p", "fabric": {"kind": "none"}}})
    resolved = {}
    for cwd in (tmp_path / "a", tmp_path / "b", Path("/")):
        if cwd != Path("/"):  # a ./profiles.yaml that would win if the current directory were read
            cwd.mkdir()
            (cwd / "profiles.yaml").write_text("here: {workers: 9}\n")
        monkeypatch.chdir(cwd)
        resolved[cwd] = {name: dataclasses.asdict(get_profile(name)) for name in profile_names()}
    first, *others = resolved.values()
    assert first["here"]["workers"] == 4
    assert all(other == first for other in others)


def test_relative_profile_files_are_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative MLTF_FLOW_PROFILE_FILES entry means the file where it was set; messages show it absolute."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "profiles.yaml").write_text("rel: {extends: slurm, memory: lots}\n")
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", "conf/profiles.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{(tmp_path / 'conf' / 'profiles.yaml').resolve()}: profile")):
        get_profile("rel")


def test_env_override_value_is_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__LOCAL__WORKERS", "5")
    monkeypatch.setenv("MLTF_FLOW_SET__SLURM__PROLOGUE", '["module load cuda"]')
    assert get_profile("local").workers == 5
    assert get_profile("slurm").prologue == ("module load cuda",)


@pytest.mark.parametrize(
    ("var", "fragment"),
    [
        ("MLTF_FLOW_SET__GHOST__PARTITION", "'GHOST'"),
        ("MLTF_FLOW_SET__SLURM__PARTITOIN", "'partitoin'"),
    ],
    ids=["unknown-profile", "unknown-key"],
)
def test_env_override_of_unknown_profile_or_key_is_an_error(
    var: str, fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, "gpu")
    with pytest.raises(ConfigError) as info:
        get_profile("local")
    assert var in str(info.value)
    assert fragment in str(info.value)


def test_env_override_with_invalid_yaml_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__SLURM__PROLOGUE", "[unclosed")
    with pytest.raises(ConfigError, match="MLTF_FLOW_SET__SLURM__PROLOGUE"):
        get_profile("slurm")


def test_env_override_with_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_SET__LOCAL__WORKERS", "zero")
    with pytest.raises(ConfigError) as info:
        get_profile("local")
    assert "$MLTF_FLOW_SET__LOCAL__WORKERS" in str(info.value)
    assert "'workers'" in str(info.value)


# --------------------------------------------------------------------------------------------- extends


def test_three_level_extends_overrides_only_what_differs(write_profiles: WriteCwd) -> None:
    path = write_profiles(
        {
            "base": {"extends": "slurm", "partition": "p", "cores": 8, "memory": "8GB", "walltime": "02:00:00"},
            "mid": {"extends": "base", "cores": 4},
            "leaf": {"extends": "mid", "memory": "16GB"},
        }
    )
    leaf = get_profile("leaf")
    assert (leaf.kind, leaf.partition, leaf.cores, leaf.memory, leaf.walltime) == ("slurm", "p", 4, "16GB", "02:00:00")
    assert leaf.job_name == "mltf-worker"  # from the shipped slurm profile
    assert leaf.source_of("cores") == str(path.resolve())
    assert leaf.source_of("job_name") == str(SHIPPED)
    mid = get_profile("mid")
    assert (mid.cores, mid.memory) == (4, "8GB")
    assert get_profile("base").cores == 8


def test_extends_cycle_is_an_error_showing_the_chain(write_profiles: WriteCwd) -> None:
    write_profiles({"a": {"extends": "b"}, "b": {"extends": "c"}, "c": {"extends": "a"}})
    with pytest.raises(ConfigError, match=re.escape("a -> b -> c -> a")):
        get_profile("a")


def test_profile_extending_itself_is_a_cycle(write_profiles: WriteCwd) -> None:
    write_profiles({"me": {"extends": "me"}})
    with pytest.raises(ConfigError, match=re.escape("me -> me")):
        get_profile("me")


def test_extends_unknown_profile_is_an_error(write_profiles: WriteCwd) -> None:
    write_profiles({"child": {"extends": "slurm"}, "grandchild": {"extends": "ghost"}})
    with pytest.raises(ConfigError, match=r"'grandchild' extends unknown profile 'ghost'"):
        get_profile("grandchild")


def test_unknown_profile_lists_known_names(write_profiles: WriteCwd) -> None:
    write_profiles({"mine": {"workers": 1}})
    with pytest.raises(ConfigError) as info:
        get_profile("nope")
    message = str(info.value)
    assert "'nope'" in message
    for known in ("local", "slurm", "mine"):
        assert known in message


def test_unknown_key_warns_and_is_ignored(tmp_path: Path) -> None:
    path = user_file(tmp_path, {"typo": {"extends": "slurm", "partitoin": "gpu"}})
    with pytest.warns(UserWarning, match=r"unknown key 'partitoin'") as record:
        profile = get_profile("typo")
    assert str(path) in str(record[0].message)
    assert "'typo'" in str(record[0].message)
    assert profile.partition is None


def test_known_keys_do_not_warn(write_profiles: WriteCwd) -> None:
    write_profiles({"clean": {"extends": "slurm", "partition": "gpu", "lifetime": "30m"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_profile("clean").partition == "gpu"


# --------------------------------------------------------------------------------------------- validation


def test_unquoted_walltime_tells_to_quote_it(write_profiles: WriteCwd) -> None:
    path = write_profiles("long:\n  extends: slurm\n  walltime: 10:00:00\n")
    assert yaml.safe_load(path.read_text())["long"]["walltime"] == 36000  # the YAML trap itself
    with pytest.raises(ConfigError) as info:
        get_profile("long")
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "'walltime'" in message
    assert "36000" in message
    assert 'walltime: "10:00:00"' in message
    assert "Quote it" in message


@pytest.mark.parametrize(
    ("key", "yaml_value", "expected"),
    [
        ("kind", "cloud", "'local' or 'slurm'"),
        ("memory", "lots", "a size like"),
        ("memory", "4", "a size like"),
        ("lifetime", "3h50m", "a duration like"),
        ("lifetime_stagger", "soon", "a duration like"),
        ("workers", "0", "a whole number >= 1"),
        ("cores", "-2", "a whole number >= 1"),
        ("workers", "true", "a whole number >= 1"),
        ("gpus_per_node", "two", "a whole number >= 0"),
        ("gpu_directive", "gpus", "'gres' or 'gpus-per-node'"),
        ("walltime", '"two hours"', "SLURM time"),
        ("prologue", "module load cuda", "a list of strings"),
        ("extra_directives", "[1, 2]", "a list of strings"),
        ("worker_start_timeout", "0", "a number of seconds > 0"),
        ("partition", "[a, b]", "a string or null"),
    ],
)
def test_wrong_type_names_file_and_key(key: str, yaml_value: str, expected: str, write_profiles: WriteCwd) -> None:
    path = write_profiles(f"bad:\n  extends: slurm\n  {key}: {yaml_value}\n")
    with pytest.raises(ConfigError) as info:
        get_profile("bad")
    message = str(info.value)
    assert str(path.resolve()) in message
    assert f"key {key!r}" in message
    assert expected in message


def test_error_in_a_parent_profile_names_the_parent_file(tmp_path: Path, write_profiles: WriteCwd) -> None:
    parent_file = user_file(tmp_path, {"parent": {"extends": "slurm", "memory": "lots"}})
    write_profiles({"child": {"extends": "parent", "cores": 2}})
    with pytest.raises(ConfigError, match=re.escape(str(parent_file.resolve()))):
        get_profile("child")


def test_malformed_file_is_an_error(tmp_path: Path) -> None:
    path = user_file(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: expected a mapping")):
        profile_names()


def test_invalid_yaml_file_is_an_error(tmp_path: Path) -> None:
    path = user_file(tmp_path, "p: {unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid YAML")):
        get_profile("local")


@pytest.mark.parametrize(
    "content",
    ["bad: {extends: slurm, partitoin: x}\n", "- a list\n", "p: {unclosed\n"],
    ids=["unknown-key-warning", "not-a-mapping", "invalid-yaml"],
)
def test_problems_in_cwd_file_name_its_absolute_path(
    content: str, tmp_path: Path, write_profiles: WriteCwd
) -> None:
    path = write_profiles(content)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            get_profile("bad")
        except ConfigError as exc:
            message = str(exc)
        else:
            message = " ".join(str(w.message) for w in record)
    assert str(path.resolve()) in message


@pytest.mark.parametrize("lifetime", ["60m", "1h", "2h", "3600s"])
def test_lifetime_not_below_walltime_is_an_error(lifetime: str, write_profiles: WriteCwd) -> None:
    path = write_profiles({"lt": {"extends": "slurm", "walltime": "01:00:00", "lifetime": lifetime}})
    with pytest.raises(ConfigError) as info:
        get_profile("lt")
    assert "lifetime" in str(info.value)
    assert "walltime" in str(info.value)
    assert str(path.resolve()) in str(info.value)


def test_lifetime_below_walltime_is_fine(write_profiles: WriteCwd) -> None:
    write_profiles(
        {"lt": {"extends": "slurm", "walltime": "01:00:00", "lifetime": "59m", "lifetime_stagger": "30s"}}
    )
    profile = get_profile("lt")
    assert (profile.lifetime, profile.lifetime_stagger) == ("59m", "30s")


def test_lifetime_plus_stagger_not_below_walltime_is_an_error(write_profiles: WriteCwd) -> None:
    write_profiles(
        {"lt": {"extends": "slurm", "walltime": "01:00:00", "lifetime": "58m", "lifetime_stagger": "4m"}}
    )
    with pytest.raises(ConfigError, match="lifetime"):
        get_profile("lt")


def test_processes_other_than_gpus_per_node_is_an_error(write_profiles: WriteCwd) -> None:
    write_profiles(
        {
            "gpu": {"extends": "slurm", "cores": 8, "gpus_per_node": 4, "processes": 2},
            "gpu-same": {"extends": "slurm", "cores": 8, "gpus_per_node": 4, "processes": 4},
        }
    )
    with pytest.raises(ConfigError, match=r"processes=2 with gpus_per_node=4"):
        get_profile("gpu")
    assert get_profile("gpu-same").worker_processes == 4


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"gpus_per_node": 4, "cores": 2}, "cores=2 is fewer than the 4 worker processes"),
        ({"processes": 3, "cores": 2}, "cores=2 is fewer than the 3 worker processes"),
    ],
    ids=["gpus", "processes"],
)
def test_fewer_cores_than_processes_is_an_error(
    settings: dict[str, int], fragment: str, write_profiles: WriteCwd
) -> None:
    write_profiles({"few": {"extends": "slurm", **settings}})
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        get_profile("few")


def test_slurm_only_checks_do_not_apply_to_local_profiles(write_profiles: WriteCwd) -> None:
    write_profiles({"lp": {"extends": "local", "walltime": "00:10:00", "lifetime": "1h", "processes": 3}})
    profile = get_profile("lp")
    assert profile.kind == "local"
    assert profile.expected_workers == 2


def test_zero_processes_is_an_error(write_profiles: WriteCwd) -> None:
    write_profiles({"zero": {"extends": "slurm", "processes": 0}})
    with pytest.raises(ConfigError, match="'processes'"):
        get_profile("zero")


# --------------------------------------------------------------------------------------------- properties


def test_gpu_variant(write_profiles: WriteCwd) -> None:
    write_profiles(
        {
            "cpu": {"extends": "slurm", "cores": 4, "gpu_profile": "gpu"},
            "gpu": {"extends": "slurm", "cores": 2, "gpus_per_node": 2},
            "gpu-with-pointer": {"extends": "gpu", "gpu_profile": "cpu"},
            "plain": {"extends": "slurm"},
        }
    )
    variant = gpu_variant(get_profile("cpu"))
    assert variant.name == "gpu"
    assert variant.gpus_per_node == 2
    gpu = get_profile("gpu")
    assert gpu_variant(gpu) is gpu
    with_pointer = get_profile("gpu-with-pointer")
    assert gpu_variant(with_pointer) is with_pointer  # has GPUs itself: the pointer is not followed
    plain = get_profile("plain")
    assert gpu_variant(plain) is plain


def test_gpu_variant_pointing_nowhere_is_an_error(write_profiles: WriteCwd) -> None:
    write_profiles({"cpu": {"extends": "slurm", "gpu_profile": "ghost"}})
    with pytest.raises(ConfigError, match="'ghost'"):
        gpu_variant(get_profile("cpu"))


@pytest.mark.parametrize(
    ("settings", "worker_processes", "expected_workers"),
    [
        ({"kind": "slurm", "workers": 3, "gpus_per_node": 4}, 4, 12),
        ({"kind": "slurm", "workers": 3, "processes": 2}, 2, 6),
        ({"kind": "slurm", "workers": 3}, 1, 3),
        ({"kind": "slurm", "workers": 2, "gpus_per_node": 4, "processes": 4}, 4, 8),
        ({"kind": "local", "workers": 3, "gpus_per_node": 4}, 4, 3),
        ({"kind": "local", "workers": 5, "processes": 2}, 2, 5),
    ],
)
def test_worker_processes_and_expected_workers(
    settings: dict[str, object], worker_processes: int, expected_workers: int
) -> None:
    cls = SlurmProfile if settings.pop("kind") == "slurm" else LocalProfile
    profile = cls(name="p", **settings)  # type: ignore[arg-type]
    assert profile.worker_processes == worker_processes
    assert profile.expected_workers == expected_workers


@pytest.mark.parametrize(
    ("text", "seconds"),
    # SLURM's forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
    [("1-02:03:04", 93784), ("02:00:00", 7200), ("10:00", 600), ("00:00:30", 30), ("100:00:00", 360000),
     ("10", 600), ("1:2:3", 3723)],
)
def test_walltime_seconds(text: str, seconds: int) -> None:
    assert walltime_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "3h", "1:2:3:4", "abc", "1-"])
def test_walltime_seconds_rejects_non_slurm_times(text: str) -> None:
    with pytest.raises(ValueError):
        walltime_seconds(text)


@pytest.mark.parametrize(("text", "seconds"), [("0-02:00", 7200), ("1-02:03", 93780), ("1-02", 93600)])
def test_walltime_seconds_days_hours_forms(text: str, seconds: int) -> None:
    assert walltime_seconds(text) == seconds


def test_days_hours_minutes_walltime_allows_a_shorter_lifetime(write_profiles: WriteCwd) -> None:
    write_profiles({"dh": {"extends": "slurm", "walltime": "0-02:00", "lifetime": "55m"}})
    assert get_profile("dh").walltime == "0-02:00"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("55m", 3300), ("30s", 30), ("1.5h", 5400), ("2d", 172800), (" 1h ", 3600)],
)
def test_duration_seconds(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["3h50m", "55", "m", "", "4 parsecs", "1h 5m"])
def test_duration_seconds_rejects_compound_and_unitless(text: str) -> None:
    with pytest.raises(ValueError):
        duration_seconds(text)


@pytest.mark.parametrize(("text", "seconds"), [("1w", 604800), ("4 minutes", 240), ("4 m", 240), ("300ms", 0.3)])
def test_duration_seconds_follows_dasks_units(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


# --------------------------------------------------------------------------------------------- origin, repo


def test_origin_names_the_defining_file(tmp_path: Path, write_profiles: WriteCwd) -> None:
    user = user_file(tmp_path, {"from-user": {"extends": "slurm", "cores": 2}})
    cwd = write_profiles({"from-cwd": {"extends": "from-user", "memory": "1GB"}})
    assert get_profile("from-user").origin == str(user.resolve())
    assert get_profile("from-cwd").origin == str(cwd.resolve())
    assert get_profile("local").origin == str(SHIPPED)


def test_origin_survives_an_override_of_the_first_key(
    monkeypatch: pytest.MonkeyPatch, write_profiles: WriteCwd
) -> None:
    cwd = write_profiles({"my-prof": {"partition": "cpu", "extends": "slurm"}})
    monkeypatch.setenv("MLTF_FLOW_SET__MY_PROF__PARTITION", "gpu")
    profile = get_profile("my-prof")
    assert profile.partition == "gpu"
    assert profile.origin == str(cwd.resolve())


def test_repository_site_profiles_all_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    assert REPO_PROFILES.is_file(), REPO_PROFILES
    monkeypatch.setenv("MLTF_FLOW_PROFILE_FILES", str(REPO_PROFILES))
    defined = set(yaml.safe_load(REPO_PROFILES.read_text()))
    assert defined, "configs/profiles.yaml defines no profiles"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown keys either
        names = profile_names()
        assert defined <= set(names)
        resolved = {name: get_profile(name) for name in names}
    for name in defined:
        profile = resolved[name]
        assert profile.origin == str(REPO_PROFILES.resolve()), name
        variant = gpu_variant(profile)
        if profile.gpu_profile is not None and not profile.gpus_per_node:
            assert variant.gpus_per_node > 0, f"{name}'s gpu_profile {profile.gpu_profile} has no GPUs"
        if profile.kind == "slurm":
            assert profile.expected_workers == profile.workers * profile.worker_processes


@pytest.mark.parametrize(("value", "seconds"), [("45m", 2700.0), ('"01:00:00"', 3600.0), ("90", 90.0)])
def test_timeout_is_seconds_and_at_most_the_walltime(value: str, seconds: float, write_profiles: WriteCwd) -> None:
    write_profiles(f"t:\n  extends: slurm\n  walltime: \"01:00:00\"\n  timeout: {value}\n")
    assert get_profile("t").timeout == seconds
    assert get_profile("local").timeout is None  # no timeout unless one is set


@pytest.mark.parametrize("value", ["61m", '"01:00:01"', "2h"])
def test_timeout_beyond_the_walltime_is_an_error(value: str, write_profiles: WriteCwd) -> None:
    path = write_profiles(f"t:\n  extends: slurm\n  walltime: \"01:00:00\"\n  timeout: {value}\n")
    with pytest.raises(ConfigError) as info:
        get_profile("t")
    message = str(info.value)
    assert f"{path.resolve()}: profile 't', key 'timeout'" in message
    assert "longer than the profile's walltime 01:00:00" in message
    assert 'timeout: "01:00:00"' in message  # the fix


def test_a_local_profile_has_no_walltime_to_fit_in(write_profiles: WriteCwd) -> None:
    write_profiles({"t": {"extends": "local", "timeout": "3d"}})
    assert get_profile("t").timeout == 3 * 86400.0


@pytest.mark.parametrize("value", ["soon", "0", "-1s"])
def test_bad_timeout_names_file_and_key(value: str, write_profiles: WriteCwd) -> None:
    path = write_profiles(f"t:\n  extends: local\n  timeout: {value}\n")
    with pytest.raises(ConfigError) as info:
        get_profile("t")
    assert str(path.resolve()) in str(info.value) and "key 'timeout'" in str(info.value)
    assert "a clock time like" in str(info.value)
