"""Settings: where each value comes from, in which order, and what is rejected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mltf_flow.config import SETTING_KEYS, load_settings
from mltf_flow.errors import ConfigError

SITE_FILE = Path("/etc/mltf_flow/config.yaml")


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No developer settings: HOME, CWD and every MLTF_FLOW_* / MLFLOW_TRACKING_URI variable isolated."""
    if SITE_FILE.exists():
        pytest.skip(f"{SITE_FILE} exists on this machine and would change every result")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for key in (*SETTING_KEYS, "config"):
        monkeypatch.delenv(f"MLTF_FLOW_{key.upper()}", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def user_file(home: Path, data: object) -> Path:
    path = home / ".config" / "mltf_flow" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def explicit_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: object) -> Path:
    path = tmp_path / "explicit.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    monkeypatch.setenv("MLTF_FLOW_CONFIG", str(path))
    return path


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    work = tmp_path.resolve() / ".mltf"
    assert settings.work_dir == work
    assert settings.tracking_uri == f"sqlite:///{work}/mlflow.db"
    assert settings.tracking_uri != f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert settings.is_local_store
    assert settings.artifact_root == work / "artifacts"
    assert settings.experiment is None
    assert settings.experiment_for("jet_tagging") == "jet_tagging"
    assert (settings.prefetch_limit, settings.stderr_tail_lines) == (5000, 30)


def test_default_tracking_uri_follows_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_WORK_DIR", str(tmp_path / "w"))
    settings = load_settings()
    assert settings.tracking_uri == f"sqlite:///{tmp_path.resolve()}/w/mlflow.db"
    assert settings.artifact_root == tmp_path.resolve() / "w" / "artifacts"


def test_precedence_of_every_layer(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = {"experiment": "user", "prefetch_limit": 10, "stderr_tail_lines": 5, "work_dir": "u"}
    user_file(clean_env, layer)
    settings = load_settings()
    assert (settings.experiment, settings.prefetch_limit, settings.stderr_tail_lines) == ("user", 10, 5)
    assert settings.work_dir == tmp_path.resolve() / "u"

    explicit_file(tmp_path, monkeypatch, {"experiment": "explicit", "prefetch_limit": 20})
    settings = load_settings()
    assert (settings.experiment, settings.prefetch_limit, settings.stderr_tail_lines) == ("explicit", 20, 5)
    assert settings.work_dir == tmp_path.resolve() / "u"

    monkeypatch.setenv("MLTF_FLOW_EXPERIMENT", "env")
    settings = load_settings()
    assert (settings.experiment, settings.prefetch_limit) == ("env", 20)

    settings = load_settings(experiment="kwarg", prefetch_limit=None)
    assert (settings.experiment, settings.prefetch_limit, settings.stderr_tail_lines) == ("kwarg", 20, 5)
    assert settings.experiment_for("jet_tagging") == "kwarg"


def test_user_file_path_follows_home(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_file(clean_env, {"experiment": "first-home"})
    other = tmp_path / "other-home"
    other.mkdir()
    monkeypatch.setenv("HOME", str(other))
    assert load_settings().experiment is None


def test_env_integers_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_PREFETCH_LIMIT", "7")
    assert load_settings().prefetch_limit == 7
    monkeypatch.setenv("MLTF_FLOW_PREFETCH_LIMIT", "lots")
    with pytest.raises(ConfigError, match="MLTF_FLOW_PREFETCH_LIMIT"):
        load_settings()


def test_env_yes_no_and_the_lease_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().wait_for_running is True and load_settings().lease_seconds == 60
    monkeypatch.setenv("MLTF_FLOW_WAIT_FOR_RUNNING", "false")
    monkeypatch.setenv("MLTF_FLOW_LEASE_SECONDS", "5")
    assert load_settings().wait_for_running is False and load_settings().lease_seconds == 5
    monkeypatch.setenv("MLTF_FLOW_WAIT_FOR_RUNNING", "maybe")
    with pytest.raises(ConfigError, match="MLTF_FLOW_WAIT_FOR_RUNNING='maybe' is not true or false"):
        load_settings()
    monkeypatch.setenv("MLTF_FLOW_WAIT_FOR_RUNNING", "1")
    monkeypatch.setenv("MLTF_FLOW_LEASE_SECONDS", "1")
    with pytest.raises(ConfigError, match="lease_seconds"):
        load_settings()


def test_mlflow_tracking_uri_honoured_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    settings = load_settings()
    assert settings.tracking_uri == "http://mlflow.example:5000"
    assert not settings.is_local_store


def test_mlflow_tracking_uri_loses_to_our_settings(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://theirs:5000")
    user_file(clean_env, {"tracking_uri": "http://file:5000"})
    assert load_settings().tracking_uri == "http://file:5000"
    monkeypatch.setenv("MLTF_FLOW_TRACKING_URI", "http://env:5000")
    assert load_settings().tracking_uri == "http://env:5000"
    assert load_settings(tracking_uri="http://kwarg:5000").tracking_uri == "http://kwarg:5000"


def test_none_kwarg_is_not_given_for_mlflow_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://theirs:5000")
    assert load_settings(tracking_uri=None).tracking_uri == load_settings().tracking_uri


@pytest.mark.parametrize(
    ("key", "value"),
    [("prefetch_limit", "many"), ("prefetch_limit", True), ("prefetch_limit", 1.5), ("work_dir", 3),
     ("tracking_uri", ["sqlite:///x"]), ("experiment", {"name": "x"}), ("wait_for_running", "no"),
     ("lease_seconds", 2)],
)
def test_wrong_type_names_file_and_key(clean_env: Path, key: str, value: object) -> None:
    path = user_file(clean_env, {key: value})
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(path) in str(info.value)
    assert repr(key) in str(info.value)


def test_wrong_type_in_kwargs_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'stderr_tail_lines'"):
        load_settings(stderr_tail_lines="30")


def test_unknown_key_warns_and_is_ignored(clean_env: Path) -> None:
    path = user_file(clean_env, {"experimnet": "typo", "experiment": "ok"})
    with pytest.warns(UserWarning, match="'experimnet'") as record:
        settings = load_settings()
    assert str(path) in str(record[0].message)
    assert settings.experiment == "ok"
    assert not hasattr(settings, "experimnet")


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "file:mlruns", "/tmp/mlruns", "mlruns"])
def test_file_store_tracking_uris_are_rejected(uri: str) -> None:
    with pytest.raises(ConfigError, match="not supported"):
        load_settings(tracking_uri=uri)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "http://h:5000", "https://h"])
def test_supported_tracking_uris(uri: str) -> None:
    assert load_settings(tracking_uri=uri).tracking_uri == uri


def test_missing_mltf_flow_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTF_FLOW_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_settings()


@pytest.mark.parametrize("text", ["experiment: [unclosed", "- a\n- b\n"])
def test_unreadable_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = explicit_file(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_settings()


def test_empty_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit_file(tmp_path, monkeypatch, "# nothing set\n")
    assert load_settings().prefetch_limit == 5000


@pytest.mark.parametrize(("key", "value"), [("prefetch_limit", -1), ("stderr_tail_lines", 0)])
def test_out_of_range_values(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=key):
        load_settings(**{key: value})


def test_paths_are_expanded_and_absolute(clean_env: Path, tmp_path: Path) -> None:
    settings = load_settings(work_dir="~/w", artifact_root="rel/art")
    assert settings.work_dir == clean_env.resolve() / "w"
    assert settings.artifact_root == tmp_path.resolve() / "rel" / "art"
