"""What a submission request must be before the gateway accepts it, and accepting it.

Everything that can be checked while the user waits for the answer is checked here, so that a bad request is
a 4xx with a message and leaves nothing behind (no row, no rule, no job): the request's shape, the project
(an uploaded archive, unpacked with its members checked, or a git URL and commit the gateway can reach), its
MLproject and entry point, or its ``pipeline.yaml`` and target step, and the backend-config keys.
Then the row is written (the submission exists from here on, whatever happens to the gateway) and the hooks'
quick halves run (:meth:`mltf_flow.gateway.lifecycle.Lifecycle.prepare`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mltf_flow.errors import ConfigError, RequestRejected
from mltf_flow.phases import GATEWAY_ACCEPTED, reached

if TYPE_CHECKING:
    from mltf_flow.gateway.identity import Identity
    from mltf_flow.gateway.lifecycle import Lifecycle
    from mltf_flow.gateway.store import Submission

_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


class Source(BaseModel):
    """Where the project comes from: ``{"archive": "sha256:..."}`` or ``{"git": URL, "commit": SHA}``."""

    model_config = ConfigDict(extra="forbid")
    archive: str | None = None
    git: str | None = None
    commit: str | None = None
    subdirectory: str = ""


class SubmissionRequest(BaseModel):
    """The body of ``POST /api/v1/submissions``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["project", "pipeline"]
    source: Source
    entry_point: str = "main"
    target: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    backend_config: dict[str, Any] = Field(default_factory=dict)
    job: dict[str, Any] = Field(default_factory=dict)
    profile: str | None = None
    env_manager: Literal["local", "virtualenv", "uv", "conda"] | None = None
    experiment: str | None = None
    experiment_id: str | None = None


def _archive_path(lifecycle: Lifecycle, digest: str) -> Path:
    from mltf_flow.gateway.archive import stored

    return stored(lifecycle.settings.state_path / "archives", digest)


def _clone(url: str, commit: str, dest: Path, allow_file: bool) -> None:
    if not (url.startswith(("https://", "ssh://", "git@")) or (allow_file and url.startswith("file://"))):
        raise RequestRejected(f"source.git {url!r}: the gateway clones https:// (or ssh) URLs only.", status=422)
    if not _COMMIT.match(commit):
        raise RequestRejected(f"source.commit {commit!r}: give the commit's hash (7 to 40 hex digits), so the "
                              "job runs exactly the code you meant.", status=422)
    for args in (["git", "clone", "--quiet", "--no-checkout", url, str(dest)],
                 ["git", "-C", str(dest), "checkout", "--quiet", commit]):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                              env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise RequestRejected(f"the gateway cannot get {url} at {commit}: {proc.stderr.strip()[-500:]}",
                                  status=422)


def fetch_project(lifecycle: Lifecycle, source: Source, dest: Path) -> Path:
    """The project's files in ``dest`` (created); returns the project directory (``subdirectory`` of it)."""
    from mltf_flow.gateway.archive import unpack

    limits = lifecycle.settings.limits
    if (source.archive is None) == (source.git is None):
        raise RequestRejected("source: give either 'archive' (an uploaded digest) or 'git' and 'commit'.",
                              status=422)
    if source.archive is not None:
        unpack(_archive_path(lifecycle, source.archive), dest, max_members=limits.members,
               max_bytes=limits.bytes("unpacked"))
    else:
        _clone(source.git or "", source.commit or "", dest, lifecycle.settings.allow_file_git)
    project = (dest / source.subdirectory).resolve()
    if not project.is_relative_to(dest.resolve()) or not project.is_dir():
        raise RequestRejected(f"source.subdirectory {source.subdirectory!r} is not a directory of the project.",
                              status=422)
    return project


def check_project(lifecycle: Lifecycle, request: SubmissionRequest, project: Path) -> None:
    """The entry point and its parameters, or the pipeline target; a ConfigError (422) naming the file otherwise."""
    if request.kind == "project":
        from mltf_flow.gateway.project_jobs import check_request

        check_request(lifecycle.settings, project, request.entry_point, request.params, request.backend_config)
        return
    if not request.target:
        raise RequestRejected("a pipeline submission needs 'target': the step to run (with what it needs).",
                              status=422)
    from mltf_flow.config.pipeline import read_pipeline_file
    from mltf_flow.gateway.pipeline_jobs import check_params

    pipeline_file = project / "pipeline.yaml"
    if not pipeline_file.is_file():
        raise RequestRejected("a pipeline submission needs pipeline.yaml at the top of the project "
                              "(`mltf-flow init` writes one).", status=422)
    steps = read_pipeline_file(pipeline_file).steps
    if request.target not in steps:
        raise RequestRejected(f"pipeline.yaml has no step {request.target!r}; its steps: {', '.join(steps)}.",
                              status=422)
    check_params(request.params)


def accept(lifecycle: Lifecycle, who: Identity, request: SubmissionRequest, idempotency_key: str | None
           ) -> tuple[Submission, bool]:
    """Check, record and prepare a submission (see the module docstring); the flag says whether it is new."""
    settings = lifecycle.settings
    staging = settings.state_path / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        fetched = Path(tmp) / "project"
        try:
            project = fetch_project(lifecycle, request.source, fetched)
            check_project(lifecycle, request, project)
        except RequestRejected:
            raise
        except ConfigError as exc:
            raise RequestRejected(str(exc).replace(str(fetched), "<project>"), status=422) from None
        body = request.model_dump(exclude={"source"} | ({"entry_point"} if request.kind == "pipeline" else set()))
        # Under the lifecycle's lock: its loop (which resumes `accepted` rows after a restart) must not prepare
        # this one while its files are being put in place.
        with lifecycle.lock:
            sub, new = lifecycle.store.add_submission(who.user, request.kind, body, request.source.model_dump(),
                                                      idempotency_key)
            if not new:
                return sub, False
            reached(GATEWAY_ACCEPTED)
            target = lifecycle.project_dir(sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(project if request.source.subdirectory else fetched), str(target))
            return lifecycle.prepare(sub), True
