"""Cache keys and code hashes: equal when the inputs are equal, different when any one differs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.cache_key import KEY_VERSION, cache_key, code_hash, git_state
from mltf_flow.errors import ConfigError
from mltf_flow.mlproject import read_project

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

BASE: dict[str, Any] = {
    "project": "jet_tagging",
    "entry_point": "train",
    "command": "python train.py --epochs {epochs} --lr {lr}",
    "params": {"epochs": 3, "lr": 0.001},
    "code": "c" * 64,
    "env": "e" * 64,
    "upstream": ["k" * 64],
    "inputs": [{"uri": "file:///data/a", "digest": "1" * 64}],
}


def key(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes})


def test_key_is_sha256_of_the_documented_canonical_json() -> None:
    doc = {**BASE, "v": KEY_VERSION, "upstream": sorted(BASE["upstream"])}
    expected = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert key() == expected


def test_key_equal_for_equal_normalised_inputs() -> None:
    ep = read_project(REPO / "pipelines" / "jet_tagging").entry_point("train")
    a = ep.normalise({"epochs": "3", "lr": "1E-3"}, filled_later=["features"])
    b = ep.normalise({"lr": 0.001, "epochs": 3.0}, filled_later=["features"])
    assert key(params=a) == key(params=dict(reversed(list(b.items()))))
    assert key() == key()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("project", "other_project"),
        ("entry_point", "features"),
        ("command", "python train.py --epochs {epochs}  --lr {lr}"),
        ("params", {"epochs": 4, "lr": 0.001}),
        ("params", {"epochs": 3, "lr": 0.002}),
        ("params", {"epoch": 3, "lr": 0.001}),
        ("params", {"epochs": 3, "lr": 0.001, "seed": 1}),
        ("code", "d" * 64),
        ("env", "f" * 64),
        ("upstream", ["j" * 64]),
        ("upstream", ["k" * 64, "j" * 64]),
        ("upstream", []),
        ("inputs", [{"uri": "file:///data/a", "digest": "2" * 64}]),
        ("inputs", [{"uri": "file:///data/b", "digest": "1" * 64}]),
        ("inputs", []),
    ],
)
def test_key_changes_when_one_field_changes(field: str, value: Any) -> None:
    assert BASE[field] != value
    assert key(**{field: value}) != key()


def test_input_order_does_not_matter() -> None:
    a = {"uri": "file:///data/a", "digest": "1" * 64}
    b = {"digest": "2" * 64, "uri": "rucio://user.x:b"}
    assert key(inputs=[a, b]) == key(inputs=[b, a]) == key(inputs=iter([dict(reversed(a.items())), b]))
    assert key(inputs=[a, b]) != key(inputs=[a])


# -- code hashes ---------------------------------------------------------------------------------------


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True)
    return done.stdout


@pytest.fixture
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the developer's global git config nor the system one changes what is ignored."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # "outside git" even if TMPDIR is in a repo


def make_tree(root: Path) -> Path:
    (root / "lib").mkdir(parents=True)
    (root / "train.py").write_text("import lib.util\nEPOCHS = 3\n")
    (root / "features.py").write_text("print('features')\n")
    (root / "lib" / "util.py").write_text("def f():\n    return 1\n")
    (root / ".gitignore").write_text("*.log\n")
    return root


@pytest.fixture
def repo(tmp_path: Path, isolated_git: None) -> Path:
    """A git repository holding one committed project in ``proj/`` (plus a file outside it)."""
    top = tmp_path / "repo"
    make_tree(top / "proj")
    (top / "README.md").write_text("top\n")
    git(top, "init", "-q")
    git(top, "config", "user.name", "t")
    git(top, "config", "user.email", "t@example.org")
    git(top, "add", "-A")
    git(top, "commit", "-qm", "init")
    return (top / "proj").resolve()


def test_code_hash_in_git(repo: Path) -> None:
    version = code_hash(repo)
    assert version.in_git
    assert version.files == 3  # train.py, features.py, lib/util.py: .gitignore is VCS metadata
    assert len(version.hash) == 64


def test_uncommitted_edit_changes_hash_and_revert_restores_it(repo: Path) -> None:
    original = code_hash(repo).hash
    train = repo / "train.py"
    text = train.read_text()
    train.write_text(text.replace("EPOCHS = 3", "EPOCHS = 4"))
    edited = code_hash(repo).hash
    assert edited != original
    train.write_text(text)
    assert code_hash(repo).hash == original


def test_untracked_file_counts_ignored_file_does_not(repo: Path) -> None:
    original = code_hash(repo)
    (repo / "train.log").write_text("ignored\n")
    assert code_hash(repo) == original
    (repo / "lib" / "new.py").write_text("x = 1\n")
    changed = code_hash(repo)
    assert changed.hash != original.hash
    assert changed.files == original.files + 1


def test_pyc_files_never_count(repo: Path) -> None:
    original = code_hash(repo).hash
    (repo / "lib" / "__pycache__").mkdir()
    (repo / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0bytecode")
    (repo / "stray.pyc").write_bytes(b"\0")
    assert code_hash(repo).hash == original


def test_edit_outside_code_paths_does_not_change_hash(repo: Path) -> None:
    original = code_hash(repo, ("train.py",))
    assert original.files == 1
    (repo / "features.py").write_text("print('changed')\n")
    (repo.parent / "README.md").write_text("changed\n")
    assert code_hash(repo, ("train.py",)) == original
    (repo / "train.py").write_text("EPOCHS = 5\n")
    assert code_hash(repo, ("train.py",)).hash != original.hash


def test_directory_code_path(repo: Path) -> None:
    original = code_hash(repo, ("lib",))
    assert original.files == 1
    (repo / "train.py").write_text("changed\n")
    assert code_hash(repo, ("lib",)) == original
    (repo / "lib" / "util.py").write_text("changed\n")
    assert code_hash(repo, ("lib",)).hash != original.hash


def test_committing_an_edit_keeps_the_hash(repo: Path) -> None:
    (repo / "train.py").write_text("EPOCHS = 9\n")
    (repo / "lib" / "new.py").write_text("y = 2\n")
    uncommitted = code_hash(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "edit")
    assert code_hash(repo) == uncommitted


def test_deleted_tracked_file_changes_hash(repo: Path) -> None:
    original = code_hash(repo)
    (repo / "features.py").unlink()
    changed = code_hash(repo)
    assert changed.files == original.files - 1
    assert changed.hash != original.hash


def test_git_and_plain_copies_of_the_same_files_hash_alike(repo: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(repo, plain)
    assert code_hash(plain).in_git is False
    assert code_hash(plain).hash == code_hash(repo).hash


def test_outside_git_hashes_contents_and_skips_caches(tmp_path: Path, isolated_git: None) -> None:
    root = make_tree(tmp_path / "plain")
    original = code_hash(root)
    assert not original.in_git
    assert original.files == 3
    (root / "lib" / "__pycache__").mkdir()
    (root / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    (root / "lib" / "__pycache__" / "notes.txt").write_text("cache dir\n")
    (root / "train.pyc").write_bytes(b"\0")
    (root / ".mltf").mkdir()
    (root / ".mltf" / "mlflow.db").write_bytes(b"db")
    assert code_hash(root) == original
    (root / "lib" / "util.py").write_text("def f():\n    return 2\n")
    assert code_hash(root).hash != original.hash


def test_outside_git_hash_does_not_depend_on_location(tmp_path: Path, isolated_git: None) -> None:
    a = make_tree(tmp_path / "a")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert code_hash(a) == code_hash(b)


@pytest.mark.parametrize("in_git", [True, False])
def test_nonexistent_code_path_is_a_config_error(repo: Path, tmp_path: Path, in_git: bool) -> None:
    root = repo if in_git else make_tree(tmp_path / "plain")
    with pytest.raises(ConfigError, match=r"missing\.py"):
        code_hash(root, ("missing.py",))


def test_nonexistent_code_path_next_to_existing_one_in_git(repo: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.py"):
        code_hash(repo, ("train.py", "missing.py"))


def test_work_dir_inside_git_project_is_not_code(repo: Path) -> None:
    original = code_hash(repo)
    (repo / ".mltf").mkdir()
    (repo / ".mltf" / "mlflow.db").write_bytes(b"changes after every run")
    (repo / "mlruns").mkdir()
    (repo / "mlruns" / "meta.yaml").write_text("x: 1\n")
    assert code_hash(repo) == original


# -- git_state -------------------------------------------------------------------------------------------


def test_git_state_outside_git(tmp_path: Path, isolated_git: None) -> None:
    assert git_state(make_tree(tmp_path / "plain")) == (None, False)


def test_git_state_reports_head_and_dirty(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git_state(repo) == (head, False)
    (repo / "features.py").write_text("print('edited')\n")
    assert git_state(repo) == (head, True)
    assert git_state(repo, ("train.py",)) == (head, False)
    assert git_state(repo, ("features.py",)) == (head, True)
    git(repo, "commit", "-qam", "edit")
    new_head = git(repo, "rev-parse", "HEAD").strip()
    assert new_head != head
    assert git_state(repo) == (new_head, False)
    (repo / "lib" / "untracked.py").write_text("z = 0\n")
    assert git_state(repo) == (new_head, True)
    assert git_state(repo, ("train.py",)) == (new_head, False)


# -- what is code: outputs written into the project never change the key (mltf_flow.code_set) ----------
OUTPUTS = {
    "out/model.pkl": b"\x80pickle",
    "plot.png": b"\x89PNG",
    "metrics.json": b'{"loss": 1}',
    "train.log": b"epoch 1\n",
    "results.csv": b"a,b\n1,2\n",
    "lightning_logs/version_0/hparams.yaml": b"lr: 1\n",
    "mlruns/0/meta.yaml": b"x: 1\n",
}


def write_outputs(root: Path, files: dict[str, bytes] = OUTPUTS) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.mark.parametrize("in_git", [True, False])
def test_data_like_outputs_are_not_code(repo: Path, tmp_path: Path, in_git: bool) -> None:
    root = repo if in_git else make_tree(tmp_path / "plain")
    original = code_hash(root)
    write_outputs(root)
    after = code_hash(root)
    assert after == original
    assert after.selection is not None and "out/model.pkl" not in after.selection.files


@pytest.mark.parametrize("in_git", [True, False])
def test_new_source_and_config_files_are_code(repo: Path, tmp_path: Path, in_git: bool) -> None:
    root = repo if in_git else make_tree(tmp_path / "plain")
    original = code_hash(root)
    (root / "config.yaml").write_text("lr: 0.1\n")
    with_config = code_hash(root)
    assert with_config.hash != original.hash
    (root / "run.sh").write_text("echo hi\n")
    assert code_hash(root).hash != with_config.hash


def test_large_untracked_files_are_reported_not_hashed(repo: Path) -> None:
    original = code_hash(repo)
    (repo / "weights.py").write_bytes(b"#" * (2 * 1024 * 1024))  # even with a source suffix
    (repo / "sample.root").write_bytes(b"\0" * (2 * 1024 * 1024))
    after = code_hash(repo)
    assert after == original
    assert after.selection is not None and after.selection.large == ("sample.root", "weights.py")


def test_large_tracked_file_is_code(repo: Path) -> None:
    (repo / "calib.dat").write_bytes(b"\1" * (2 * 1024 * 1024))
    git(repo, "add", "calib.dat")
    git(repo, "commit", "-qm", "calibration")
    original = code_hash(repo)
    assert original.selection is not None and "calib.dat" in original.selection.files
    (repo / "calib.dat").write_bytes(b"\2" * (2 * 1024 * 1024))
    assert code_hash(repo).hash != original.hash


def test_files_the_command_names_are_code_whatever_their_suffix(tmp_path: Path, isolated_git: None) -> None:
    root = make_tree(tmp_path / "plain")
    (root / "cuts.dat").write_text("pt > 1\n")
    command = "python train.py --cuts cuts.dat --threshold={threshold}"
    original = code_hash(root, command=command)
    assert original.selection is not None and "cuts.dat" in original.selection.files
    (root / "cuts.dat").write_text("pt > 2\n")
    assert code_hash(root, command=command).hash != original.hash
    assert code_hash(root).hash == code_hash(root, command="python train.py").hash  # .dat: not code otherwise


@pytest.mark.parametrize("in_git", [True, False])
def test_recorded_outputs_are_not_code_but_scripts_always_are(repo: Path, tmp_path: Path, in_git: bool) -> None:
    """Config-like files (yaml, toml, ...) are code until a step run of the project is seen writing them."""
    root = repo if in_git else make_tree(tmp_path / "plain")
    (root / "summary.yaml").write_text("loss: 1\n")
    (root / "metrics.json").write_text("{}\n")  # never code when untracked and unnamed: no record needed
    with_summary = code_hash(root)
    recorded = {"summary.yaml", "train.py"}
    baseline = code_hash(root, outputs=recorded)
    assert baseline.selection is not None
    assert baseline.selection.outputs == ("summary.yaml",)
    assert "metrics.json" not in baseline.selection.files
    assert "train.py" in baseline.selection.files  # a script a run "wrote" is still code: users edit them
    (root / "summary.yaml").write_text("loss: 0.5\n")
    assert code_hash(root, outputs=recorded) == baseline
    assert code_hash(root).hash != with_summary.hash


def test_recorded_tracked_output_is_not_code(repo: Path) -> None:
    (repo / "results").mkdir()
    (repo / "results" / "latest.yaml").write_text("acc: 0.5\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "results")
    before = code_hash(repo, outputs={"results/latest.yaml"})
    (repo / "results" / "latest.yaml").write_text("acc: 0.9\n")
    assert code_hash(repo, outputs={"results/latest.yaml"}) == before


def test_explicit_lists_globs_and_exclusions(repo: Path) -> None:
    write_outputs(repo)
    explicit = code_hash(repo, ("train.py", "metrics.json"))
    assert explicit.selection is not None and explicit.selection.files == ("metrics.json", "train.py")
    globbed = code_hash(repo, ("lib/*.py",))
    assert globbed.selection is not None and globbed.selection.files == ("lib/util.py",)
    auto_minus = code_hash(repo, ("auto", "!lib/*"))
    assert auto_minus.selection is not None and auto_minus.selection.files == ("features.py", "train.py")
    auto_plus = code_hash(repo, ("auto", "results.csv"))
    assert auto_plus.selection is not None and "results.csv" in auto_plus.selection.files
    with pytest.raises(ConfigError, match=r"nothing\*"):
        code_hash(repo, ("nothing*",))


def test_project_outputs_record_learns_what_a_run_wrote(tmp_path: Path) -> None:
    from mltf_flow.project_outputs import load_outputs, remember_outputs, snapshot, written

    root = make_tree(tmp_path / "plain")
    (root / "summary.yaml").write_text("loss: 1\n")
    (root / "cfg.json").write_text("{}\n")
    before = snapshot(root)
    (root / "summary.yaml").write_text("loss: 0.5, longer\n")
    (root / "train.py").write_text("EPOCHS = 1\n")  # a script: the user's edit, never an output
    (root / "cfg.json").write_text('{"lr": 1}\n')  # named by the command, existed before: the user's edit
    (root / "model.pkl").write_bytes(b"\x80")  # named by the command (--out model.pkl), created by the run
    (root / "out").mkdir()
    (root / "out" / "new.yaml").write_text("a: 1\n")
    named = {"cfg.json", "model.pkl"}
    changed = written(before, snapshot(root), keep=named)
    assert changed == ["model.pkl", "out/new.yaml", "summary.yaml"]
    rewritten = snapshot(root)
    (root / "model.pkl").write_bytes(b"\x80\x81")  # the next run rewrites it: still an output once known
    assert written(rewritten, snapshot(root), keep=named, known={"model.pkl"}) == ["model.pkl"]
    assert written(rewritten, snapshot(root), keep=named) == []
    work = tmp_path / "work"
    assert load_outputs(work, root) == frozenset()
    remember_outputs(work, root, changed, "train", "r1")
    remember_outputs(work, root, ["more.json"], "eval", "r2")
    assert load_outputs(work, root) == {"model.pkl", "out/new.yaml", "summary.yaml", "more.json"}


def test_named_output_and_parameter_files(tmp_path: Path, isolated_git: None) -> None:
    from mltf_flow.code_set import parameter_files

    root = make_tree(tmp_path / "plain")
    command = "python train.py --out model.pkl"
    (root / "model.pkl").write_bytes(b"\x80")
    assert code_hash(root, command=command, outputs={"model.pkl"}).hash == code_hash(root).hash
    (root / "data").mkdir()
    (root / "data" / "calib.csv").write_text("a,b\n")
    files = parameter_files(root, {"calib": "path", "name": "string", "remote": "path"},
                            {"calib": str(root / "data" / "calib.csv"), "name": "data/calib.csv",
                             "remote": "s3://bucket/x"})
    assert files == {"data/calib.csv"}
    with_calib = code_hash(root, named=files)
    (root / "data" / "calib.csv").write_text("a,b\n1,2\n")
    assert code_hash(root, named=files).hash != with_calib.hash
    assert code_hash(root).hash == code_hash(root, command="python train.py").hash  # not code otherwise
