"""The gateway's configuration file (``mltf-flow gateway serve --config gateway.yaml``), typed and checked.

A facility writes it once; every key has a default but the IdP and the MLflow upstream::

    public_url: https://mltf-gateway.example.org    # how users and jobs reach the gateway
    host: 127.0.0.1                                  # where uvicorn listens (behind the site's TLS proxy)
    port: 8088
    state_dir: /shared/mltf-gateway                 # uploads, projects, job dirs: on the nodes' shared filesystem
    database: sqlite:////shared/mltf-gateway/gateway.db   # or postgresql://user@db/mltf_gateway
    mlflow_upstream: http://mlflow.internal:5000    # the MLflow server; only the gateway reaches it
    mlflow_ui: https://mlflow.example.org           # run links shown to users (default: none)
    oidc:
      issuer: https://sso.example.org/realms/mltf  # discovery document and JWKS are read from here
      audience: mltf-gateway                       # the `aud` tokens must carry
      client_id: mltf-cli                          # the public client `mltf-flow login` uses (device flow)
      scopes: [openid, offline_access]
      user_claim: preferred_username
      admin_claim: groups                          # an admin: this claim holds (or equals) admin_value
      admin_value: mltf-admins
      leeway: 30s                                  # clock skew allowed on exp / nbf / iat
    backend: {partition: gpu, time: "04:00:00"}     # defaults of project jobs (keys of `--backend-config`)
    pipeline: {partition: gpu, time: "24:00:00", profile: slurm_gpu}   # the driver job of a pipeline
    hooks: [rucio]                                  # pre-submit hooks: `rucio` or "module:callable"
    rucio: {rse_expression: MLTF_NVME, pfn_map: {...}}   # as a profile's rucio section
    limits: {archive: 200MiB, unpacked: 2GiB, members: 50000, requests_per_minute: 60, burst: 20}

The database URL and the paths may name secrets only through files: the gateway's own secrets (the key that
seals users' secrets and signs job credentials) live in ``<state_dir>/gateway.key`` (0600), never in the
environment the jobs inherit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

from mltf_flow.config.fields import Before, Ge, StrictInt
from mltf_flow.config.files import read_yaml_mapping
from mltf_flow.config.rucio import RucioSettings
from mltf_flow.config.schema import Schema, validate
from mltf_flow.config.units import Seconds, Size, size_bytes
from mltf_flow.errors import ConfigError

#: Backend-config keys a user's submission may set; the others (job_dir, python, env_root, run_id,
#: sbatch-script-file, job_name, environment, exports, modules) are the facility's: they name paths,
#: interpreters and variables of the service account.
USER_BACKEND_KEYS = frozenset({
    "partition", "account", "gpus_per_node", "gres", "mem", "nodes", "ntasks", "time", "profile", "qos",
    "cpus_per_task", "constraint", "exclusive", "pre_timeout_signal", "forward_pre_timeout_signal",
    "max_restarts", "system_metrics",
})
#: Keys of the driver job of a pipeline submission.
PIPELINE_JOB_KEYS = ("partition", "account", "time", "mem", "cpus_per_task", "qos")


def _url(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s):// URL, found {value!r}.")
    return value.rstrip("/")


def _text_list(value: Any) -> Any:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of strings, found {value!r}.")
    return tuple(value)


Url = Annotated[str, Before(_url)]
TextList = Annotated[tuple[str, ...], Before(_text_list)]


@dataclass(frozen=True, kw_only=True)
class OidcSettings(Schema):
    """The ``oidc:`` section: which IdP's tokens the gateway accepts and how it reads them."""

    section: ClassVar[str] = "oidc"
    shape: ClassVar[str] = "issuer: https://..., audience: mltf-gateway, client_id: mltf-cli"

    issuer: Url
    audience: str = "mltf-gateway"
    client_id: str = "mltf-cli"
    scopes: TextList = ("openid", "offline_access")
    user_claim: str = "preferred_username"
    admin_claim: str = "groups"
    admin_value: str | None = None
    leeway: Seconds = 30.0
    algorithms: TextList = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
    #: How long the IdP's keys are trusted before they are read again (a token with an unknown key id reads
    #: them at once: a key rotation is seen on the first token signed with the new key).
    jwks_lifespan: Seconds = 600.0


@dataclass(frozen=True, kw_only=True)
class LimitSettings(Schema):
    """The ``limits:`` section."""

    section: ClassVar[str] = "limits"
    shape: ClassVar[str] = "archive: 200MiB, requests_per_minute: 60"

    archive: Size = "200MiB"
    unpacked: Size = "2GiB"
    members: Annotated[StrictInt, Ge(1)] = 50_000
    request: Size = "1MiB"
    requests_per_minute: Annotated[StrictInt, Ge(1)] = 60
    burst: Annotated[StrictInt, Ge(1)] = 20

    def bytes(self, name: str) -> int:
        value: str = getattr(self, name)
        return size_bytes(value)


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(Schema):
    """The whole file (see the module docstring)."""

    shape: ClassVar[str] = "public_url: ..., mlflow_upstream: ..., oidc: {issuer: ...}"

    public_url: Url
    mlflow_upstream: Url
    oidc: OidcSettings
    host: str = "127.0.0.1"
    port: Annotated[StrictInt, Ge(0)] = 8088
    state_dir: str = "/var/lib/mltf-gateway"
    database: str | None = None
    mlflow_ui: Url | None = None
    backend: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    hooks: TextList = ()
    rucio: RucioSettings | None = None
    limits: LimitSettings = field(default_factory=LimitSettings)
    #: The most a job credential lives, whatever the job's time limit (it is revoked when the job ends anyway).
    credential_lifetime: Seconds = 7 * 86400.0
    #: How often running submissions are looked at (SLURM, MLflow).
    poll_interval: Seconds = 2.0
    #: Accept ``file://`` git sources (the gateway host's own repositories): tests and single-host sites only.
    allow_file_git: bool = False

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state_path / 'gateway.db'}"

    @property
    def job_tracking_uri(self) -> str:
        """What jobs use as ``MLFLOW_TRACKING_URI``: the gateway's MLflow proxy."""
        return f"{self.public_url}/mlflow"


def load_gateway_settings(path: Path) -> GatewaySettings:
    """The configuration in ``path``; a ConfigError naming the file and key when it is wrong."""
    if not path.is_file():
        raise ConfigError(f"gateway configuration {path} does not exist: write one (see docs/gateway.md, "
                          "'Deploying the gateway') and pass it with --config.")
    return gateway_settings(read_yaml_mapping(path), str(path))


def check_site(settings: GatewaySettings, where: str) -> None:
    """What a user would otherwise learn from a failed submission, checked when the gateway starts: the job
    defaults against this site's profiles (a profile that does not exist, a time SLURM cannot read)."""
    from mltf_flow.backend.config import parse_backend_config
    from mltf_flow.clusters.profiles import get_profile
    from mltf_flow.config import load_settings

    site = load_settings()
    try:
        parse_backend_config(settings.backend, site, source=f"{where}: key 'backend'")
    except ConfigError as exc:
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: key 'backend': {exc}") from None
    profile = settings.pipeline.get("profile") or settings.backend.get("profile")
    if profile:
        try:
            get_profile(str(profile))
        except ConfigError as exc:
            raise ConfigError(f"{where}: key 'pipeline': {exc}") from None


def gateway_settings(data: Mapping[str, Any], where: str) -> GatewaySettings:
    """``data`` (a parsed configuration) checked; ``where`` names it in errors."""
    settings = validate(GatewaySettings, dict(data), where)
    from mltf_flow.config.backend import KEYS

    for name, keys in (("backend", set(KEYS) - {"run_id", "job_name", "sbatch-script-file"}),
                       ("pipeline", set(PIPELINE_JOB_KEYS) | {"profile", "python", "environment"})):
        unknown = sorted(set(getattr(settings, name)) - keys)
        if unknown:
            raise ConfigError(f"{where}: key '{name}': unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(sorted(keys))}.")
    return settings
