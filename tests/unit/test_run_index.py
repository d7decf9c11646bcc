"""SqliteRunIndex answers exactly what MlflowClient.search_runs answers, in few round trips."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mltf_flow.errors import TrackingError
from mltf_flow.run_index import RestRunIndex, RunRef, SqliteRunIndex, run_index
from tests.helpers import served_store

COMPLETE = (
    "tags.`mltf.cache_key` = '{key}' and attributes.status = 'FINISHED' and tags.`mltf.complete` = 'true'"
)
_clock = itertools.count(1_700_000_000_000, 1000)


@dataclass
class Store:
    uri: str
    root: Path
    client: MlflowClient

    def experiment(self, name: str) -> str:
        artifacts = (self.root / "artifacts" / name).as_uri()
        return self.client.create_experiment(name, artifact_location=artifacts)

    def run(self, exp_id: str, key: str, status: str, complete: str | None = "true") -> str:
        tags = {"mltf.cache_key": key}
        if complete is not None:
            tags["mltf.complete"] = complete
        run_id: str = self.client.create_run(exp_id, start_time=next(_clock), tags=tags).info.run_id
        if status != "RUNNING":
            self.client.set_terminated(run_id, status, end_time=next(_clock))
        return run_id

    def expected(self, exp_id: str, filter_string: str) -> list[str]:
        runs = self.client.search_runs([exp_id], filter_string, order_by=["attributes.end_time DESC"])
        return [r.info.run_id for r in runs]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    s = Store(uri, root, MlflowClient(tracking_uri=uri))
    states = s.experiment("states")
    s.run(states, "K", "FINISHED")
    s.run(states, "K", "FINISHED")  # newer complete run with the same key
    s.run(states, "K", "FINISHED", complete=None)  # exit code 3: FINISHED but never marked complete
    s.run(states, "K", "FAILED")
    s.run(states, "K", "FINISHED", complete="false")
    s.run(states, "K", "RUNNING", complete=None)
    s.client.delete_run(s.run(states, "K", "FINISHED"))
    s.run(states, "ONLY_RUNNING", "RUNNING", complete=None)
    s.run(states, "ONLY_RUNNING", "RUNNING", complete=None)
    s.run(states, "ONLY_FAILED", "FAILED")
    s.run(states, "ONLY_UNMARKED", "FINISHED", complete=None)
    s.run(states, "CAPITAL", "FINISHED", complete="True")
    s.client.delete_run(s.run(states, "ONLY_DELETED", "FINISHED"))
    s.run(states, "SINGLE", "FINISHED")
    bulk = s.experiment("bulk")
    for i in range(50):
        s.run(bulk, f"k{i:02d}", "FINISHED")
    gone = s.experiment("gone")
    s.run(gone, "G", "FINISHED")
    s.client.delete_experiment(gone)
    return s


def exp_id(store: Store, name: str) -> str:
    experiment = store.client.get_experiment_by_name(name)
    assert experiment is not None
    return str(experiment.experiment_id)


KEYS = ["K", "ONLY_RUNNING", "ONLY_FAILED", "ONLY_UNMARKED", "CAPITAL", "ONLY_DELETED", "SINGLE", "ABSENT"]


@pytest.mark.parametrize("key", KEYS)
def test_find_complete_agrees_with_mlflow(store: Store, key: str) -> None:
    expected = store.expected(exp_id(store, "states"), COMPLETE.format(key=key))
    ref = SqliteRunIndex(store.uri).find_complete("states", key)
    assert (ref.run_id if ref else None) == (expected[0] if expected else None)
    if ref is not None:
        assert (ref.status, ref.cache_key) == ("FINISHED", key)


def test_newest_complete_run_wins(store: Store) -> None:
    expected = store.expected(exp_id(store, "states"), COMPLETE.format(key="K"))
    assert len(expected) == 2
    ref = SqliteRunIndex(store.uri).find_complete("states", "K")
    assert ref is not None and ref.run_id == expected[0]
    older = store.client.get_run(expected[1]).info.end_time
    assert ref.end_time is not None and older is not None and ref.end_time > older
    # The prefetch path and the targeted path agree.
    assert SqliteRunIndex(store.uri, prefetch_limit=0).find_complete("states", "K") == ref


@pytest.mark.parametrize(("key", "status"), [("K", "RUNNING"), ("ONLY_RUNNING", "RUNNING"), ("K", "FINISHED"),
                                             ("K", "FAILED"), ("ABSENT", "RUNNING")])
def test_find_with_status_agrees_with_mlflow(store: Store, key: str, status: str) -> None:
    expected = store.expected(
        exp_id(store, "states"), f"tags.`mltf.cache_key` = '{key}' and attributes.status = '{status}'"
    )
    refs = SqliteRunIndex(store.uri).find_with_status("states", key, status)
    assert [r.run_id for r in refs] == expected
    assert all(r.status == status for r in refs)


def _running_then_finished(store: Store, key: str) -> list[str]:
    return [run_id for status in ("RUNNING", "FINISHED") for run_id in store.expected(
        exp_id(store, "states"), f"tags.`mltf.cache_key` = '{key}' and attributes.status = '{status}'")]


@pytest.mark.parametrize("key", ["K", "ONLY_RUNNING", "ONLY_UNMARKED", "ONLY_FAILED", "ABSENT"])
def test_several_statuses_in_one_query_agree_with_mlflow(store: Store, key: str) -> None:
    index = SqliteRunIndex(store.uri)
    index.experiment_id("states")
    refs = index.find_with_status("states", key, "RUNNING", "FINISHED")
    assert [r.run_id for r in refs] == _running_then_finished(store, key) and index.round_trips == 2


def test_statuses_over_rest_agree_with_mlflow_several_in_one_search(store: Store, tmp_path: Path) -> None:
    with served_store(store.uri, tmp_path / "server") as uri:
        index = RestRunIndex(uri)
        index.experiment_id("states")
        for key in ("K", "ONLY_RUNNING", "ONLY_FAILED", "ABSENT"):
            before = index.round_trips
            refs = index.find_with_status("states", key, "RUNNING", "FINISHED")
            assert [r.run_id for r in refs] == _running_then_finished(store, key)
            assert index.round_trips == before + 1
        # Without statuses (a complete run, every run with a key) nothing is left out.
        complete = index.find_complete("states", "K")
        assert complete is not None and complete.run_id == store.expected(exp_id(store, "states"),
                                                                          COMPLETE.format(key="K"))[0]
        assert index.find_complete("states", "ONLY_RUNNING") is None


def test_running_runs_are_listed(store: Store) -> None:
    refs = SqliteRunIndex(store.uri).find_with_status("states", "ONLY_RUNNING", "RUNNING")
    assert len(refs) == 2 and all(r.end_time is None for r in refs)


def test_prefetch_answers_every_key_in_one_round_trip(store: Store) -> None:
    index = SqliteRunIndex(store.uri)
    index.experiment_id("bulk")
    assert index.round_trips == 1
    refs = {f"k{i:02d}": index.find_complete("bulk", f"k{i:02d}") for i in range(50)}
    assert index.round_trips == 2
    bulk = exp_id(store, "bulk")
    for key, ref in refs.items():
        assert ref is not None and [ref.run_id] == store.expected(bulk, COMPLETE.format(key=key))
    assert index.find_complete("bulk", "k99") is None
    assert index.round_trips == 3
    assert index.find_complete("bulk", "k00") == refs["k00"]
    assert index.round_trips == 3


def test_prefetch_limit_keeps_the_newest(store: Store) -> None:
    index = SqliteRunIndex(store.uri, prefetch_limit=10)
    assert index.find_complete("bulk", "k49") is not None
    assert index.round_trips == 2
    for i in range(40, 49):
        assert index.find_complete("bulk", f"k{i:02d}") is not None
    assert index.round_trips == 2
    older = index.find_complete("bulk", "k00")  # beyond the prefetch: one targeted query, then cached
    assert older is not None and older.cache_key == "k00"
    assert index.round_trips == 3
    assert index.find_complete("bulk", "k00") == older
    assert index.round_trips == 3


def test_run_completed_after_prefetch_is_found(store: Store) -> None:
    late = store.experiment("late")
    index = SqliteRunIndex(store.uri)
    assert index.find_complete("late", "L") is None
    run_id = store.run(late, "L", "FINISHED")
    ref = index.find_complete("late", "L")
    assert ref is not None and ref.run_id == run_id


def test_experiment_created_later_is_found(store: Store) -> None:
    index = SqliteRunIndex(store.uri)
    assert index.find_complete("created_later", "X") is None
    assert index.find_with_status("created_later", "X", "RUNNING") == []
    run_id = store.run(store.experiment("created_later"), "X", "FINISHED")
    ref = index.find_complete("created_later", "X")
    assert ref is not None and ref.run_id == run_id


def test_deleted_experiment_has_no_runs(store: Store) -> None:
    assert SqliteRunIndex(store.uri).experiment_id("gone") is None
    assert SqliteRunIndex(store.uri).find_complete("gone", "G") is None


def test_remember_answers_without_a_query(store: Store) -> None:
    index = SqliteRunIndex(store.uri)
    states = index.experiment_id("states")
    assert states is not None
    index.find_complete("states", "SINGLE")
    trips = index.round_trips
    ref = RunRef("r" * 32, "FINISHED", "REMEMBERED", 1)
    index.remember(states, ref)
    assert index.find_complete("states", "REMEMBERED") == ref
    assert index.round_trips == trips


def test_missing_database_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "mlflow.db"
    index = SqliteRunIndex(f"sqlite:///{path}")
    assert index.find_complete("exp", "K") is None
    assert index.find_with_status("exp", "K", "RUNNING") == []
    assert index.round_trips == 0
    assert not path.exists()


def test_uninitialised_database_file(tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    path.touch()
    index = SqliteRunIndex(f"sqlite:///{path}")
    assert index.find_complete("exp", "K") is None
    assert path.stat().st_size == 0


def test_run_index_is_shared_per_uri(tmp_path: Path) -> None:
    first = run_index(f"sqlite:///{tmp_path}/a.db")
    assert run_index(f"sqlite:///{tmp_path}/a.db") is first
    assert isinstance(first, SqliteRunIndex)
    other = run_index(f"sqlite:///{tmp_path}/b.db")
    assert other is not first
    assert isinstance(run_index("http://127.0.0.1:1"), RestRunIndex)


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "postgresql://u@h/db", "databricks", "/tmp/mlruns"])
def test_run_index_rejects_unsupported_schemes(uri: str) -> None:
    with pytest.raises(TrackingError, match="not supported"):
        run_index(uri)


def test_sqlite_uri_without_path_is_rejected() -> None:
    with pytest.raises(TrackingError, match="sqlite:///ABSOLUTE/PATH"):
        SqliteRunIndex("sqlite://")


def test_password_is_not_shown_in_errors() -> None:
    with pytest.raises(TrackingError) as info:
        run_index("ftp://user:s3cret@host/x")
    assert "s3cret" not in str(info.value)


