"""The one exception tree of mltf_flow.

Every error raised on purpose by mltf_flow derives from :class:`MltfFlowError`, so callers can catch
one class. A message says what failed, what was found, where it came from and what to do next::

    MltfFlowError
    ├── ConfigError            bad settings, MLproject, pipeline.yaml, parameters or URIs (before anything runs)
    │   ├── ParameterError     a parameter is unknown, missing or does not parse as its declared type
    │   └── BackendUnavailable a GDS read backend asked for by name cannot run here (fabric.gds.read_tensor)
    ├── StagingError           an input dataset cannot be staged or verified
    │   ├── DatasetNotFound    a local dataset path does not exist or holds no files (also a ConfigError)
    │   └── RucioNotConfigured a rucio:// URI was given but no Rucio client is configured (also a ConfigError)
    ├── TrackingError          the MLflow tracking store cannot be reached or answers unexpectedly
    ├── RunNotFound            a step's complete run was asked for before it exists (also a LookupError)
    ├── ClusterError           a Dask cluster could not be started or lost its workers
    │   ├── SlurmRejected      `sbatch --test-only` rejected a job script (also a ConfigError)
    │   ├── SlurmUnavailable   SLURM's controller did not answer (a job's state is unknown, not gone)
    │   └── WorkersTimeout     the requested workers did not arrive in time
    ├── EnvBuildError          a job could not build the project's Python environment on its node
    ├── StepError              a pipeline step did not produce a complete, verified run
    │   ├── StepFailed         the entry point exited non-zero (carries exit code and stderr tail)
    │   │   └── StepTimedOut   it ran past the step's (or profile's) timeout and was stopped
    │   ├── OutputMissing      the entry point exited 0 but a declared output is missing
    │   └── StepInProgress     another invocation runs the same step (same cache key) and we may not wait
    ├── CommandError           an external command failed (carries command, exit code, stdout, stderr)
    └── GatewayError           the gateway refused or failed a request (carries the HTTP status it answers)
        ├── AuthError          401: no token, or one that is expired, for another audience or badly signed
        ├── Forbidden          403: a valid token that may not do this (another user's submission)
        ├── NotFound           404: no such submission or secret (for this user)
        └── RequestRejected    400/413/422/429: a bad request (also a ConfigError): archive, spec, size, rate

A :class:`ConfigError` is a *user-input error*: the fix is in what the user typed or wrote (a flag, a
parameter, a file, a variable). Both front ends treat it alike: one line on the console, exit code 2, the
traceback only at debug level (``mltf-flow`` and ``luigi --module``; see :mod:`mltf_flow.input_check`).
An error of another class is something that failed while working and keeps its own exit code.

Classes with a second, builtin base (``ConfigError`` is a ``ValueError``, ``RunNotFound`` a ``LookupError``)
keep working where callers catch the builtin. Not in this tree, on purpose: the ``BaseException`` classes
that carry a stop signal out of a running command (:class:`mltf_flow.launch.local.Stopped` and its
``_Terminated``): they are control flow, and no ``except Exception`` may swallow them.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The exit code of both front ends for a user-input error (a :class:`ConfigError`), as argparse's own.
EXIT_BAD_INPUT = 2
#: ``mltf-flow run --no-wait``: another invocation runs a step this one needs (Luigi's ``already_running``).
EXIT_ALREADY_RUNNING = 10


class MltfFlowError(Exception):
    """Base class of every error mltf_flow raises on purpose. Its message never shows a URL's password
    (:func:`mltf_flow.redaction.strip_credentials`), wherever it is printed, tagged or logged."""

    def __str__(self) -> str:
        from mltf_flow.redaction import strip_credentials

        return strip_credentials(super().__str__())


class ConfigError(MltfFlowError, ValueError):
    """Invalid configuration or user input, detected before anything is launched."""


class ParameterError(ConfigError):
    """An entry-point parameter is unknown, missing, or not of its declared type."""


class BackendUnavailable(ConfigError):
    """A read backend that was asked for by name cannot run here (module, GPU or driver missing)."""


class StagingError(MltfFlowError):
    """An input dataset could not be staged or verified."""


class DatasetNotFound(StagingError, ConfigError):
    """A local dataset path does not exist, or matches no files."""


class DatasetNotData(StagingError, ConfigError):
    """A local dataset holds something that is not a readable regular file (a FIFO, a socket, a broken link)."""


class RucioNotConfigured(StagingError, ConfigError):
    """A ``rucio://`` dataset was requested but this installation has no Rucio configuration."""


class TrackingError(MltfFlowError):
    """The MLflow tracking store failed or answered something unexpected."""


class ServerUnreachable(TrackingError, ConfigError):
    """The tracking server does not answer at all: the fix is the URI or starting the server (exit 2)."""


class RunNotFound(MltfFlowError, LookupError):
    """A step's complete run was asked for (``MLflowRunTarget.run_id``) before one exists."""


class ClusterError(MltfFlowError):
    """A Dask cluster for a profile could not be started, reached or kept."""


class SlurmRejected(ClusterError, ConfigError):
    """SLURM rejected the worker job script of a profile (bad partition, account, gres, memory...)."""


class SlurmUnavailable(ClusterError):
    """SLURM's controller did not answer (the job's state is unknown, not gone)."""


class WorkersTimeout(ClusterError):
    """The cluster did not reach the requested number of workers in time."""


class EnvBuildError(MltfFlowError):
    """A job could not build the project's environment (python_env.yaml) on its node."""


class StepError(MltfFlowError):
    """A step did not end in a complete, verified MLflow run."""

    def __init__(self, message: str, *, step: str, run_id: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.run_id = run_id


class StepFailed(StepError):
    """The step's command exited with a non-zero code."""

    def __init__(
        self, *, step: str, run_id: str | None, exit_code: int, stderr_tail: Sequence[str], log_path: str,
        summary: str | None = None,
    ) -> None:
        tail = "\n".join(f"    {line}" for line in stderr_tail) or "    (no stderr output)"
        if summary:  # several processes (ranks): the summary says how each ended, with its stderr
            what = f"{summary}\n  (MLflow run {run_id}, marked FAILED)\n  full log: {log_path}\n"
        else:
            what = (f"its command exited with code {exit_code} (MLflow run {run_id}, marked FAILED).\n"
                    f"  last lines of stderr:\n{tail}\n  full log: {log_path}\n")
        message = (
            f"step '{step}' failed: {what}"
            "  Fix the cause and run the same command again: completed steps are not repeated."
        )
        super().__init__(message, step=step, run_id=run_id)
        self.exit_code = exit_code
        self.stderr_tail = list(stderr_tail)
        self.log_path = log_path
        self.summary = summary


class StepTimedOut(StepFailed):
    """The step's command ran past its timeout: it was stopped with every process of its session."""

    def __init__(
        self, *, step: str, run_id: str | None, exit_code: int, stderr_tail: Sequence[str], log_path: str,
        timeout: str, source: str, summary: str | None = None,
    ) -> None:
        super().__init__(step=step, run_id=run_id, exit_code=exit_code, stderr_tail=stderr_tail, log_path=log_path,
                         summary=summary)
        tail = "\n".join(f"    {line}" for line in stderr_tail[-5:]) or "    (no stderr output)"
        self.reason = (f"timed out after {timeout} (timeout from {source}): its command and its processes were "
                       "stopped")
        # The first line says it all (the console's one line); then how the command (or each rank) ended.
        message = (
            f"step '{step}' {self.reason} (MLflow run {run_id}, marked FAILED). Raise the timeout, or make the "
            f"command finish sooner (fewer epochs, a checkpoint to resume from).\n"
            + (f"{summary}\n" if summary else f"  last lines of stderr:\n{tail}\n")
            + f"  full log: {log_path}"
        )
        StepError.__init__(self, message, step=step, run_id=run_id)
        self.timeout = timeout
        self.source = source


class OutputMissing(StepError):
    """The step's command exited 0 but did not produce a declared output."""


class StepInProgress(StepError):
    """Another invocation holds this step's cache key (its lease is live) and this one was told not to wait
    (setting ``wait_for_running: false``, ``mltf-flow run --no-wait``)."""


class CommandError(MltfFlowError):
    """An external command exited non-zero."""

    def __init__(self, command: Sequence[str], exit_code: int, stdout: str, stderr: str) -> None:
        self.command = list(command)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command {' '.join(self.command)!r} exited with code {exit_code}\n"
            f"  stdout: {stdout.strip() or '(empty)'}\n  stderr: {stderr.strip() or '(empty)'}"
        )


class GatewayError(MltfFlowError):
    """The gateway refused a request or failed it; ``status`` is the HTTP status it answers with (and the
    status a client saw, on the client's side)."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class AuthError(GatewayError):
    """No bearer token, or one the gateway does not accept (expired, wrong audience, bad signature)."""

    status = 401


class Forbidden(GatewayError):
    """A valid identity that may not do this (another user's submission; a job's credential on the API)."""

    status = 403


class NotFound(GatewayError, LookupError):
    """No such submission or secret for this user (another user's look the same: their ids are not revealed)."""

    status = 404


class RequestRejected(GatewayError, ConfigError):
    """A request the gateway refuses as it is: bad spec or archive (400/422), too large (413), too many (429)."""

    status = 400
