"""Bad user input, as a tester types it: every case is rejected before anything runs, with exit code 2, one
line naming what was wrong, and no traceback.

Each case runs the installed console scripts (``mltf-flow``, ``luigi --module``) in a subprocess with its own
HOME, working directory, work dir and cache, so nothing of the developer's leaks in. The cases run in
parallel threads once per module (a fixture), and each is then asserted as its own test.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import BIN, EXAMPLE, REPO, SITE_SETTINGS, Result, run_cmd

P = str(EXAMPLE)  # the example project (MLproject + pipeline.yaml)
SECRET = "s3cr3t-pw"


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # shell words; {P} = the example project, {DATA} = an existing dataset, {T} = the case's dir
    fragment: str  # a part of the one-line message
    env: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (name under the case's dir, text)
    code: int = 2


#: A fake ``sbatch`` first on PATH (the case's ``bin``): it records that it was called. No case may call it.
FAKE_SBATCH = ("bin/sbatch", "#!/bin/sh\ntouch \"$(dirname \"$0\")/../sbatch-called\"\nexit 1\n")
SLURM_T = 't: {{extends: slurm, partition: debug, walltime: "00:10:00", timeout: {timeout}}}\n'


def timeout_project(timeout: str) -> tuple[tuple[str, str], ...]:
    """A one-step project whose step ``main`` has ``timeout`` in pipeline.yaml."""
    return (("proj/MLproject", "name: t\nentry_points:\n  main:\n    command: \"true\"\n"),
            ("proj/pipeline.yaml", f"steps:\n  main:\n    entry_point: main\n    timeout: {timeout}\n"))


RUN = f"mltf-flow run {P} --step train"
STATUS = f"mltf-flow status {P} --step train"
LUIGI = "luigi --module pipelines Train --local-scheduler --no-lock --dataset {DATA}"
PIPE = f"luigi --module mltf_flow.pipeline PipelineStep --local-scheduler --no-lock --project-dir {P} --run-step train"

CASES = [
    # -- mltf-flow run / status: parameters (-P) -------------------------------------------------------------
    Case(
        "run-float-overflow",
        f"{RUN} -P lr=1e400",
        "parameter 'lr' of entry point 'train' (type float): '1e400' is beyond",
    ),
    Case("run-float-nan", f"{RUN} -P lr=nan", "'nan' is not a finite number"),
    Case("run-float-inf", f"{RUN} -P lr=inf", "'inf' is not a finite number"),
    Case("run-float-minus-inf", f"{RUN} -P lr=-Infinity", "is not a finite number"),
    Case("run-float-text", f"{RUN} -P lr=fast", "'fast' is not a finite number"),
    Case("run-int-text", f"{RUN} -P epochs=abc", "parameter 'epochs' of entry point 'train' (type int): 'abc' is not"),
    Case("run-int-fraction", f"{RUN} -P epochs=1.5", "'1.5' is not a whole number"),
    Case("run-int-empty", f"{RUN} -P epochs=", "'' is not an integer"),
    Case("run-int-overflow-float", f"{RUN} -P hidden=1e400", "'1e400' is beyond the range of a 64-bit integer"),
    Case("run-unknown-param", f"{RUN} -P nosuch=1", "has no parameter 'nosuch'"),
    Case("run-param-no-equals", f"{RUN} -P epochs", "-P 'epochs': expected KEY=VALUE"),
    Case("run-param-no-key", f"{RUN} -P =3", "-P '=3': expected KEY=VALUE"),
    Case("run-param-unknown-step", f"{RUN} -P nostep.epochs=3", "-P names unknown step(s) ['nostep']"),
    Case("run-upstream-param-bad", f"{RUN} -P features.max_constituents=many", "'many' is not an integer"),
    Case("status-float-overflow", f"{STATUS} -P lr=1e400", "'1e400' is beyond the range of a float"),
    Case("status-unknown-param", f"{STATUS} -P nosuch=1", "has no parameter 'nosuch'"),
    # -- mltf-flow run: project, step, flags -----------------------------------------------------------------
    Case("run-unknown-step", f"mltf-flow run {P} --step nosuch",
         "no step 'nosuch'; steps are: stage, features, train, train_fsdp"),
    Case(
        "run-missing-project",
        "mltf-flow run /nonexistent/project --step train",
        "project directory /nonexistent/project does not exist",
    ),
    Case("run-dir-without-mlproject", "mltf-flow run {T} --step train", "MLproject"),
    Case("run-workers-not-int", f"{RUN} --workers many", "argument --workers: invalid int value: 'many'"),
    Case("run-env-manager-unknown", f"{RUN} --env-manager docker", "argument --env-manager: invalid choice: 'docker'"),
    Case("run-no-step", f"mltf-flow run {P}", "the following arguments are required: --step/-e"),
    # -- datasets -------------------------------------------------------------------------------------------
    Case("run-dataset-empty", f"{RUN} -P stage.dataset=", "empty dataset URI"),
    Case("run-dataset-unset-variable", f"{RUN} -P stage.dataset=$NO_SUCH_VARIABLE_SET", "empty dataset URI"),
    Case("run-dataset-missing", f"{RUN} -P stage.dataset=/nonexistent/jets", "/nonexistent/jets does not exist"),
    Case("run-dataset-bad-did", f"{RUN} -P stage.dataset=rucio://no-colon", "is not a valid Rucio DID"),
    Case("run-dataset-bad-scheme", f"{RUN} -P stage.dataset=s3://bucket/jets", "scheme 's3' is not supported"),
    Case("run-dataset-remote-file", f"{RUN} -P stage.dataset=file://otherhost/jets", "names host 'otherhost'"),
    Case("run-dataset-inner-glob", f"{RUN} -P stage.dataset=/data/*/jets.root", "wildcards are allowed in the last"),
    Case("status-dataset-missing", f"{STATUS} -P stage.dataset=/nonexistent/jets", "/nonexistent/jets does not exist"),
    # -- profiles and settings ------------------------------------------------------------------------------
    Case(
        "run-profile-variable", RUN, "(profile 'nosuch' from MLTF_FLOW_PROFILE)", env=(("MLTF_FLOW_PROFILE", "nosuch"),)
    ),
    Case("run-profile-flag", f"{RUN} --profile nosuch", "(profile 'nosuch' from --profile)"),
    Case("status-profile-flag", f"{STATUS} --profile nosuch", "(profile 'nosuch' from --profile)"),
    Case(
        "run-profile-file-yaml",
        RUN,
        "bad.yaml",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/bad.yaml"),),
        files=(("bad.yaml", "profiles:\n  x: [unclosed\n"),),
    ),
    Case(
        "run-profile-file-missing",
        RUN,
        "/nonexistent/profiles.yaml",
        env=(("MLTF_FLOW_PROFILE_FILES", "/nonexistent/profiles.yaml"),),
    ),
    Case(
        "config-missing-file",
        "mltf-flow config",
        "MLTF_FLOW_CONFIG=/nonexistent.yaml does not exist",
        env=(("MLTF_FLOW_CONFIG", "/nonexistent.yaml"),),
    ),
    Case(
        "config-retired-variable", "mltf-flow config", "use MLTF_FLOW_PROFILE_FILES", env=(("MLTF_FLOW_PROFILES", "x"),)
    ),
    Case(
        "config-variable-not-int",
        "mltf-flow config",
        "MLTF_FLOW_PREFETCH_LIMIT='abc' is not an integer",
        env=(("MLTF_FLOW_PREFETCH_LIMIT", "abc"),),
    ),
    Case(
        "config-file-bad-value",
        "mltf-flow config",
        "config.yaml: key 'prefetch_limit': expected a whole number",
        env=(("MLTF_FLOW_CONFIG", "{T}/config.yaml"),),
        files=(("config.yaml", "prefetch_limit: abc\n"),),
    ),
    Case(
        "run-config-file-yaml",
        RUN,
        "Fix the file",
        env=(("MLTF_FLOW_CONFIG", "{T}/config.yaml"),),
        files=(("config.yaml", "work_dir: [x\n"),),
    ),
    Case("render-no-profile", "mltf-flow render", "render needs --profile NAME"),
    Case("render-local-profile", "mltf-flow render --profile local", "is a local profile: it has no job script"),
    Case("render-unknown-profile", "mltf-flow render --profile nosuch", "no profile 'nosuch'"),
    Case(
        "render-backend-bad-json",
        "mltf-flow render --backend-config {bad",
        "--backend-config: not a .json file and not valid JSON",
    ),
    Case(
        "render-backend-not-object", "mltf-flow render --backend-config [1]", "--backend-config: expected a JSON object"
    ),
    Case(
        "render-backend-no-project", "mltf-flow render --backend-config {}", "render --backend-config needs the project"
    ),
    Case(
        "profiles-bad-variable",
        "mltf-flow profiles",
        "MLTF_FLOW_SET__GHOST__PARTITION",
        env=(("MLTF_FLOW_SET__GHOST__PARTITION", "x"),),
    ),
    Case(
        "render-bad-variable",
        "mltf-flow render --profile slurm",
        "MLTF_FLOW_SET__GHOST__PARTITION",
        env=(("MLTF_FLOW_SET__GHOST__PARTITION", "x"),),
    ),
    # -- luigi --module pipelines Train ---------------------------------------------------------------------
    Case("luigi-int-text", f"{LUIGI} --epochs abc", "Luigi parameter --epochs 'abc': not an integer"),
    Case("luigi-int-fraction", f"{LUIGI} --batch-size 1.5", "Luigi parameter --batch-size '1.5': not an integer"),
    Case("luigi-float-overflow", f"{LUIGI} --lr 1e400", "Luigi parameter --lr '1e400': not a finite number"),
    Case("luigi-float-nan", f"{LUIGI} --lr nan", "Luigi parameter --lr 'nan': not a finite number"),
    Case("luigi-float-text", f"{LUIGI} --lr fast", "Luigi parameter --lr 'fast': not a number"),
    Case(
        "luigi-upstream-flag",
        f"{LUIGI} --ExtractFeatures-max-constituents many",
        "--max-constituents 'many': not an integer",
    ),
    Case(
        "luigi-dataset-empty",
        "luigi --module pipelines Train --local-scheduler --no-lock --dataset ''",
        "--dataset: empty value (an unset shell variable?)",
    ),
    Case(
        "luigi-dataset-missing",
        "luigi --module pipelines Train --local-scheduler --no-lock --dataset /nonexistent/jets",
        "/nonexistent/jets does not exist",
    ),
    Case(
        "luigi-dataset-bad-scheme",
        "luigi --module pipelines Train --local-scheduler --no-lock --dataset s3://b/x",
        "scheme 's3' is not supported",
    ),
    Case(
        "luigi-stage-bad-did",
        "luigi --module pipelines StageDataset --local-scheduler --no-lock --dataset rucio://x",
        "is not a valid Rucio DID",
    ),
    Case("luigi-profile-flag", f"{LUIGI} --profile nosuch", "(profile 'nosuch' from --profile)"),
    Case(
        "luigi-profile-variable",
        LUIGI,
        "(profile 'nosuch' from MLTF_FLOW_PROFILE)",
        env=(("MLTF_FLOW_PROFILE", "nosuch"),),
    ),
    # -- luigi --module mltf_flow.pipeline PipelineStep ------------------------------------------------------
    Case(
        "pipeline-overrides-bad-json",
        f"{PIPE} --overrides '{{bad'",
        "--overrides '{bad': not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2",
    ),
    Case("pipeline-overrides-unknown", f"{PIPE} --overrides '{{\"nosuch\": 1}}'", "has no parameter 'nosuch'"),
    Case(
        "pipeline-overrides-overflow",
        f"{PIPE} --overrides '{{\"lr\": 1e400}}'",
        "parameter 'lr' of entry point 'train'",
    ),
    Case(
        "pipeline-unknown-step",
        f"luigi --module mltf_flow.pipeline PipelineStep --local-scheduler --no-lock "
        f"--project-dir {P} --run-step nosuch",
        "no step 'nosuch'",
    ),
    Case("pipeline-empty-dataset", f'{PIPE} --overrides \'{{"stage.dataset": ""}}\'', "empty dataset URI"),
    # -- timeouts: bad values, and longer than a SLURM profile's walltime (refused before any sbatch) ---------
    Case(
        "profile-timeout-bad",
        f"{RUN} --profile t",
        "profile 't', key 'timeout': expected a duration like 90s, 30m or 2h",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/p.yaml"),),
        files=(("p.yaml", "t: {extends: local, timeout: soon}\n"),),
    ),
    Case(
        "profile-timeout-zero",
        f"{RUN} --profile t",
        "key 'timeout': expected a duration",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/p.yaml"),),
        files=(("p.yaml", "t: {extends: local, timeout: 0}\n"),),
    ),
    Case(
        "profile-timeout-beyond-walltime",
        f"{RUN} --profile t",
        "timeout 01:00:00 is longer than the profile's walltime 00:10:00",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/p.yaml"),),
        files=(("p.yaml", SLURM_T.format(timeout="1h")), FAKE_SBATCH),
    ),
    Case(
        "step-timeout-bad",
        "mltf-flow run {T}/proj --step main",
        "step 'main', key 'timeout': expected a duration like 90s",
        files=timeout_project("soon"),
    ),
    Case(
        "step-timeout-beyond-walltime",
        "mltf-flow run {T}/proj --step main --profile t",
        "step 'main' has timeout 02:00:00, longer than walltime 00:10:00 of its SLURM profile 't'",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/p.yaml"),),
        files=(("p.yaml", SLURM_T.format(timeout="null")), FAKE_SBATCH, *timeout_project("2h")),
    ),
    Case(
        "luigi-step-timeout-beyond-walltime",
        "luigi --module mltf_flow.pipeline PipelineStep --local-scheduler --no-lock --project-dir {T}/proj "
        "--run-step main --profile t",
        "Lower the timeout to at most \"00:10:00\" or raise the profile's walltime",
        env=(("MLTF_FLOW_PROFILE_FILES", "{T}/p.yaml"),),
        files=(("p.yaml", SLURM_T.format(timeout="null")), FAKE_SBATCH, *timeout_project('"01:00:00"')),
    ),
    # -- the gateway: the facility's configuration, the user's commands (no gateway is reached) ---------------
    Case("gateway-config-missing", "mltf-flow gateway serve --config {T}/gateway.yaml",
         "gateway.yaml does not exist: write one"),
    Case("gateway-config-typo", "mltf-flow gateway serve --config {T}/gateway.yaml",
         "unknown key(s) isuer", files=(("gateway.yaml", "public_url: http://127.0.0.1:1\n"
                                         "mlflow_upstream: http://127.0.0.1:2\noidc: {isuer: http://sso}\n"),)),
    Case("gateway-config-user-key", "mltf-flow gateway serve --config {T}/gateway.yaml",
         "key 'backend': unknown key(s) run_id",
         files=(("gateway.yaml", "public_url: http://127.0.0.1:1\nmlflow_upstream: http://127.0.0.1:2\n"
                                 "oidc: {issuer: http://sso}\nbackend: {run_id: abc}\n"),)),
    Case("gateway-config-no-profile", "mltf-flow gateway serve --config {T}/gateway.yaml",
         "gateway.yaml: key 'backend': no profile 'nope'; known profiles:",
         files=(("gateway.yaml", "public_url: http://127.0.0.1:1\nmlflow_upstream: http://127.0.0.1:2\n"
                                 "oidc: {issuer: http://sso}\nstate_dir: state\nbackend: {profile: nope}\n"),)),
    Case("submit-no-gateway", f"mltf-flow submit {P} --step train", "which gateway? Pass --gateway URL"),
    Case("submit-bad-gateway-url", f"mltf-flow submit {P} --step train --gateway gw.example.org",
         "gateway URL 'gw.example.org': expected http(s)://"),
    Case("submit-not-logged-in", f"mltf-flow submit {P} --step train --gateway http://127.0.0.1:9",
         "not logged in to http://127.0.0.1:9", code=1),
    Case("submit-no-mlproject", "mltf-flow submit {T} --step train --gateway http://127.0.0.1:9",
         "has no MLproject"),
    Case("submissions-no-id", "mltf-flow submissions show --gateway http://127.0.0.1:9",
         "needs a SUBMISSION_ID"),

]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Case, Result, Path]]]:
    site = [str(path) for path in SITE_SETTINGS if path.exists()]
    if site:
        pytest.skip(f"{', '.join(site)} holds site settings that would change every result")
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    data.mkdir()
    (data / "jets.root").write_bytes(b"not really ROOT")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLTF_", "MLFLOW_"))}

    def run(case: Case) -> tuple[Case, Result, Path]:
        home = root / case.id
        home.mkdir()
        for name, text in case.files:
            (home / name).parent.mkdir(parents=True, exist_ok=True)
            (home / name).write_text(text)
            if name.startswith("bin/"):
                (home / name).chmod(0o755)
        env = {
            **base,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / "cache"),
            "PYTHONPATH": str(REPO),
            "LUIGI_CONFIG_PATH": str(REPO / "configs" / "luigi.cfg"),
            "MLTF_FLOW_WORK_DIR": str(home / "work"),
            "MLTF_FLOW_ENV_MANAGER": "local",
            "PATH": os.pathsep.join([str(home / "bin"), str(BIN), base.get("PATH", "")]),
        }
        env.update({k: v.replace("{T}", str(home)) for k, v in case.env})
        command = case.command.replace("{P}", P).replace("{T}", str(home)).replace("{DATA}", str(data))
        words = shlex.split(command.replace("$NO_SUCH_VARIABLE_SET", ""))
        return case, run_cmd([str(BIN / words[0]), *words[1:]], env=env, cwd=home, timeout=120), home

    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {case.id: outcome for case, outcome in zip(CASES, pool.map(run, CASES), strict=True)}


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, results: dict[str, tuple[Case, Result, Path]]) -> None:
    _, result, home = results[case.id]
    shown = f"{case.command}\nexit code {result.returncode}\n{result.output[-3000:]}"
    assert "Traceback" not in result.output, shown
    assert result.returncode == case.code, shown
    assert case.fragment in result.output, shown
    assert SECRET not in result.output, shown
    assert "Will not run" not in result.output, shown  # Luigi's scheduling-error report
    assert not (home / "sbatch-called").exists(), shown  # rejected before anything was submitted
