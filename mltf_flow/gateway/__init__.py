"""The gateway: remote submission of MLflow projects and whole pipelines, with SSO tokens.

Users outside the facility have no account on its cluster. They send work to the gateway, a REST service
(FastAPI on uvicorn) that runs next to SLURM under the facility's service identity and submits for them::

    client (mlflow run --backend mltf -c '{"gateway": URL}', mltf-flow submit)
        │  bearer token (OIDC, from `mltf-flow login`'s device flow)
        ▼
    gateway ── auth: JWT checked by signature against the IdP's JWKS (no call to the IdP per request)
        │   ── store: every submission in a database (sqlite, or PostgreSQL) before it is answered
        │   ── pre-submit hooks (Rucio staging, site checks), then sbatch as the service identity
        │   ── /mlflow/...: MLflow's REST API, proxied with the caller's identity stamped on runs
        ▼
    SLURM job ── reports to MLflow through /mlflow with a credential scoped to its submission (expires with it)

The REST API (``/api/v1``)::

    GET    /auth                         issuer, client id, audience: what `mltf-flow login` needs (no token)
    PUT    /archives                     a project as .tar.gz (raw body) -> {"digest": "sha256:..."}
    POST   /submissions                  a project entry point or a pipeline target (JSON; Idempotency-Key)
    GET    /submissions[?all=true]       the caller's submissions (an admin: everyone's with all=true)
    GET    /submissions/{id}             one, with its state, message, jobs, runs and links
    POST   /submissions/{id}/cancel      cancel it (its jobs scancelled, its runs KILLED)
    GET    /submissions/{id}/logs        its job log (?follow=true streams until it ends)
    PUT    /secrets/{name}, GET /secrets, DELETE /secrets/{name}   the caller's secrets (values never shown)
    GET    /healthz, /metrics            (outside /api/v1; no token)

A submission's states: ``accepted`` -> ``staging`` (hooks wait, e.g. for a Rucio rule) -> ``submitting`` ->
``queued`` -> ``running`` -> ``finished`` | ``failed`` | ``cancelled``.

Modules: :mod:`.settings` (the gateway's configuration file), :mod:`.identity` (who calls),
:mod:`.auth` (OIDC bearer tokens), :mod:`.job_credentials` (the per-submission credential of jobs),
:mod:`.store` (the database), :mod:`.archive` (uploaded projects), :mod:`.user_secrets` (encrypted at rest),
:mod:`.rate_limit`, :mod:`.hooks` (pre-submit hooks; Rucio staging), :mod:`.lifecycle` (a submission from
accepted to its end; recovery after a restart), :mod:`.mlflow_proxy`, :mod:`.app` (the routes),
:mod:`.client` and :mod:`.login` (the user's side), :mod:`.commands` (the CLI).
"""
