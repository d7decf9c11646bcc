"""Reading a request's body within a limit: refused (413) as soon as it passes it, never read whole first."""

from __future__ import annotations

from fastapi import Request

from mltf_flow.errors import RequestRejected


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) as soon as it passes ``limit`` bytes (a declared Content-Length above
    it is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(f"request body of {declared} bytes for {request.url.path} is above the gateway's "
                              f"limit of {limit}.", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(f"request body for {request.url.path} is above the gateway's limit of {limit} "
                                  "bytes.", 413)
        chunks.append(chunk)
    return b"".join(chunks)
