"""Model-parallel training: the example's ``train_fsdp`` step (FSDP2 on 2 gloo ranks of the ``local`` profile)
trains and logs, a rank killed mid-training and a rerun of the step resume from the sharded checkpoint in the
same run, that checkpoint loads on 1 rank as the same model and back on 2, and FSDP's loss curve is DDP's.

One pipeline (stage -> features -> train_fsdp, killed, then rerun) serves every test (module fixture); the
DDP run of the same model reuses its features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import BIN, EXAMPLE, REPO, git_project, run_mltf, seed_store, wait_until
from tests.integration.ddp_checks import metric_steps, rank_logs
from tests.integration.mlflow_queries import client, runs, sqlite_uri

pytestmark = pytest.mark.slow

EPOCHS = 5
RESHARD = Path(__file__).parent / "fsdp_reshard.py"


@dataclass(frozen=True)
class Pipeline:
    project: Path
    args: list[str]
    env: dict[str, str]
    uri: str
    killed_after: int  # the checkpoint epoch when a rank was killed
    failed: Any  # the step run as the kill left it
    retry_output: str
    run: Any  # the same run after the rerun


def step_runs(uri: str, step: str) -> list[Any]:
    return [r for r in runs(uri) if r.data.tags.get("mltf.step") == step]


def training_ranks(run_id: str) -> dict[int, psutil.Process]:
    """The train_fsdp processes of this run, by rank (found by the run id in their environment: other tests'
    trainings may run beside this one)."""
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "train_fsdp.py" in " ".join(proc.info["cmdline"] or []) and proc.info["cmdline"][0] != "bash":
                env = proc.environ()
                if env.get("MLFLOW_RUN_ID") == run_id:
                    found[int(env["RANK"])] = proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, jet_sample: Path, store_template: Path) -> Pipeline:
    base = tmp_path_factory.mktemp("fsdp")
    project = git_project(EXAMPLE, base / "checkout")
    work = seed_store(base / "work", store_template)
    env = {"MLTF_FLOW_WORK_DIR": str(work)}
    uri = sqlite_uri(work)
    args = ["run", str(project), "--step", "train_fsdp", "-P", f"stage.dataset={jet_sample}", "-P", f"epochs={EPOCHS}"]
    proc = subprocess.Popen([str(BIN / "mltf-flow"), *args], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env})
    try:
        def second_checkpoint() -> Any:
            if proc.poll() is not None:
                ended = proc.communicate()[0]
                raise AssertionError(f"the pipeline ended before its second checkpoint:\n{ended[-4000:]}")
            found = step_runs(uri, "train_fsdp")
            return found and int(found[0].data.tags.get("mltf.checkpoint.epoch", "-1")) >= 1 and found[0]

        run = wait_until(second_checkpoint, 240, "the second sharded checkpoint", interval=0.1)
        ranks = training_ranks(run.info.run_id)
        killed_after = int(client(uri).get_run(run.info.run_id).data.tags["mltf.checkpoint.epoch"])
        ranks[1].send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, output[-4000:]
    (failed,) = step_runs(uri, "train_fsdp")
    retry = run_mltf(*args, env=env)
    assert retry.returncode == 0, retry.output[-4000:]
    (resumed,) = step_runs(uri, "train_fsdp")
    return Pipeline(project, args, env, uri, killed_after, failed, retry.output, resumed)


def test_two_ranks_train_and_log(pipeline: Pipeline, tmp_path: Path) -> None:
    run = pipeline.run
    assert run.data.tags["mltf.ddp.world_size"] == "2"
    assert run.data.params["parallel"] == "fsdp" and run.data.params["compute_dtype"] == "float32"
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert metric_steps(pipeline.uri, run.info.run_id, key) == list(range(EPOCHS)), key
    assert run.data.tags["mltf.checkpoint.epoch"] == str(EPOCHS - 1)
    assert run.data.tags["mltf.checkpoint.sharded"] == run.data.tags["mltf.checkpoint.latest"]
    logs = rank_logs(pipeline.uri, run, tmp_path)
    assert "resuming after epoch" in logs[1]  # rank 1 trained too (and resumed: its own log says so)
    import mlflow.artifacts

    metrics = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/metrics.json"))
    assert metrics["weights_sha256"] == run.data.tags["weights_sha256"] and metrics["world_size"] == 2


def test_killed_rank_then_rerun_resumes_the_same_run_from_the_sharded_checkpoint(pipeline: Pipeline,
                                                                                 tmp_path: Path) -> None:
    failed, run = pipeline.failed, pipeline.run
    assert failed.info.status == "FAILED"
    assert int(failed.data.tags["mltf.checkpoint.epoch"]) >= pipeline.killed_after >= 1
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    resumed_from = int(run.data.tags["mltf.resumed_from_epoch"])
    assert run.data.tags["mltf.attempt"] == "2" and resumed_from == int(failed.data.tags["mltf.checkpoint.epoch"])
    assert resumed_from < EPOCHS - 1, "the kill came after the last epoch: nothing was resumed"
    logs = rank_logs(pipeline.uri, run, tmp_path)
    for rank in (0, 1):
        assert f"rank {rank}: resuming after epoch {resumed_from} (world size 2)" in logs[rank]
    history = client(pipeline.uri).get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # every epoch exactly once


def torch_command(ranks: int) -> list[str]:
    return ([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1
            else [sys.executable])


def command_env(uri: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    for name in ("RANK", "WORLD_SIZE", "MASTER_PORT", *(() if "MLFLOW_RUN_ID" in extra else ("MLFLOW_RUN_ID",))):
        env.pop(name, None)
    return env


def reshard(pipeline: Pipeline, ranks: int, *args: str) -> str:
    proc = subprocess.run([*torch_command(ranks), str(RESHARD), str(pipeline.project), *args],
                          env=command_env(pipeline.uri), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_checkpoint_of_two_ranks_loads_on_one_as_the_same_model_and_back(pipeline: Pipeline, tmp_path: Path) -> None:
    import torch

    run, last = pipeline.run.info.run_id, EPOCHS - 1
    digest = pipeline.run.data.tags["weights_sha256"]  # of the full weights the training gathered on its 2 ranks
    # 2 -> 1: the step's checkpoint (saved by 2 ranks) on one rank, saved again from there into a new run.
    other = client(pipeline.uri).create_run(pipeline.run.info.experiment_id).info.run_id
    one = reshard(pipeline, 1, f"{run}={tmp_path / 'one.pt'}", "--save-to-run", other)
    assert f"{run}: loaded epoch {last} on 1 ranks; sha256 {digest}" in one
    assert client(pipeline.uri).get_run(other).data.tags["mltf.checkpoint.epoch"] == str(last)
    # ... on 2 ranks, as the step saved it; and 1 -> 2: the checkpoint the one rank saved.
    two = reshard(pipeline, 2, f"{run}={tmp_path / 'two.pt'}", f"{other}={tmp_path / 'back.pt'}")
    assert f"{run}: loaded epoch {last} on 2 ranks; sha256 {digest}" in two
    assert f"{other}: loaded epoch {last} on 2 ranks; sha256 {digest}" in two
    full = {name: torch.load(tmp_path / name, weights_only=True) for name in ("one.pt", "two.pt", "back.pt")}
    assert full["one.pt"].keys() == full["two.pt"].keys() == full["back.pt"].keys()
    assert len(full["one.pt"]) == 2 + 2 + 2 + 2 * 12  # embed, norm, head (weight, bias) and 12 tensors per block
    for key, tensor in full["two.pt"].items():
        assert torch.equal(full["one.pt"][key], tensor), key  # bit-identical: resharding only moves bytes
        assert torch.equal(full["back.pt"][key], tensor), key


def test_fsdp_loss_curve_matches_ddp_of_the_same_model(pipeline: Pipeline, tmp_path: Path) -> None:
    """The DDP version under torchrun (cheaper than another pipeline run) on the features the step read, its
    metrics and checkpoints in a run of the same store."""
    import mlflow.artifacts

    upstream = json.loads(pipeline.run.data.tags["mltf.upstream_run_ids"])["features"]
    features = mlflow.artifacts.download_artifacts(run_id=upstream, artifact_path="features.mltft",
                                                   dst_path=str(tmp_path), tracking_uri=pipeline.uri)
    ddp = client(pipeline.uri).create_run(pipeline.run.info.experiment_id).info.run_id
    proc = subprocess.run([*torch_command(2), "train_fsdp.py", "--features", features, "--epochs", str(EPOCHS),
                           "--parallel", "ddp"], cwd=pipeline.project, env=command_env(pipeline.uri, MLFLOW_RUN_ID=ddp),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    curves = {}
    for name, run_id in (("fsdp", pipeline.run.info.run_id), ("ddp", ddp)):
        history = client(pipeline.uri).get_metric_history(run_id, "train_loss")
        curves[name] = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(curves["fsdp"]) == len(curves["ddp"]) == EPOCHS
    # Same seed, same initial weights, same batches, fp32 on CPU: the only possible difference is how the gradient
    # mean over the ranks is summed (DDP's all-reduce of buckets vs FSDP's reduce-scatter of shards). With 2 gloo
    # ranks both add the same two numbers, and the curves were bit-identical here (the FSDP one through a kill and
    # a resume). 1e-5 relative leaves room for another summation order (more ranks, another torch) that Adam
    # carries on over ~50 steps, and is far below any real difference (another batch order or a wrong shard
    # moves the loss by > 1e-2).
    for fsdp_loss, ddp_loss in zip(curves["fsdp"], curves["ddp"], strict=True):
        assert abs(fsdp_loss - ddp_loss) <= 1e-5 * abs(ddp_loss), curves
    assert curves["fsdp"][-1] < curves["fsdp"][0]  # and it learns


def test_one_process_saves_keeps_the_newest_and_refuses_a_checkpoint_not_sharded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No process group at all (DCP then runs as one rank): the pointer, the pruning, the refusals."""
    import mlflow
    import torch

    from mltf_flow import checkpoint, sharded_checkpoint
    from mltf_flow.errors import TrackingError

    # The store through the environment, as a step's command has it: mlflow.set_tracking_uri would outlive this
    # test in its process and send the next tests' MlflowClient() here.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"]))
    experiment = mlflow.MlflowClient().create_experiment("sharded",
                                                         artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = mlflow.MlflowClient().create_run(experiment).info.run_id
    state = {"w": torch.zeros(3)}
    assert sharded_checkpoint.load_latest_sharded(state, run_id=run_id) is None  # a fresh run
    for epoch in range(3):
        saved = sharded_checkpoint.save_sharded({"w": torch.full((3,), float(epoch))}, epoch, run_id=run_id, keep=2)
        assert saved == f"checkpoints/epoch-{epoch:06d}"
    kept = sorted(f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "checkpoints"))
    assert kept == ["checkpoints/epoch-000001", "checkpoints/epoch-000002"]
    assert sharded_checkpoint.load_latest_sharded(state, run_id=run_id) == 2
    assert torch.equal(state["w"], torch.full((3,), 2.0))  # loaded in place
    with pytest.raises(TrackingError, match=r"is sharded .*load_latest_sharded"):  # not a whole-state checkpoint
        checkpoint.load_latest(run_id=run_id)
    # A corrupted shard in the store is refused before DCP reads it.
    shard = tmp_path / "artifacts" / run_id / "artifacts" / "checkpoints" / "epoch-000002" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(TrackingError, match=r"file __0_0\.distcp is"):
        sharded_checkpoint.load_latest_sharded(state, run_id=run_id)
    # A whole-state checkpoint saved later (mltf_flow.checkpoint) is the latest now, and is not loaded as sharded.
    checkpoint.save({"w": torch.ones(3)}, 3, run_id=run_id)
    with pytest.raises(TrackingError, match=r"checkpoints/epoch-000003.pt of run \w+ is not sharded"):
        sharded_checkpoint.load_latest_sharded(state, run_id=run_id)
