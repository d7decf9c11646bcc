"""``mltf-flow gateway serve --config gateway.yaml``: the gateway on uvicorn.

One uvicorn worker: the lifecycle thread (which submits and watches jobs) must run once per database; scale
with the site's reverse proxy in front (TLS) and PostgreSQL behind, not with workers. uvicorn's access log
has the method, path and status of each request, never its headers (so never a token).
"""

from __future__ import annotations

import logging
from pathlib import Path


def serve(config: Path, *, log_level: str = "info") -> int:
    import os

    import uvicorn

    from mltf_flow.gateway.app import create_app
    from mltf_flow.gateway.settings import check_site, load_gateway_settings

    settings = load_gateway_settings(config)
    check_site(settings, str(config))
    # Users' projects, job scripts, logs and the database stay the service account's: nothing in the state
    # directory is readable by other accounts of a shared filesystem (jobs run as the same account).
    os.umask(0o077)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request: uvicorn's says it
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, proxy_headers=True,
                timeout_graceful_shutdown=10)
    return 0
