"""A port a server we start (the MLflow UI, optuna-dashboard) is to listen on, checked before it starts: such
servers, on a taken port, log the bind error and hang on (or exit 0), so the user would never hear why."""

from __future__ import annotations

import socket

from mltf_flow.errors import ConfigError


def check_port_free(host: str, port: int, what: str, command: str) -> None:
    """A ConfigError naming ``what`` and ``command`` (to run with another ``--port``) unless ``host:port`` can be
    bound now."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: not a TCP port (1-65535).")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"--host {host!r}: cannot be resolved ({exc}).") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot serve {what} on {host}:{port}: {exc.strerror} (`ss -ltnp 'sport = :{port}'` "
                              f"shows who). Pick another port: {command} --port {port + 1}") from None


__all__ = ["check_port_free"]
