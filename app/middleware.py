"""HTTP middleware: request ids, access log and HTTP metrics; the request body size limit."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging import request_id_var

log = logging.getLogger("app.main")


async def request_context(request: Request, call_next: Any) -> Any:
    """Request id (from X-Request-ID or new), access log line, HTTP metrics."""
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    token = request_id_var.set(rid[:128])
    t0 = time.perf_counter()
    status_code = 500
    try:
        response = await call_next(request)
        status_code = response.status_code
        response.headers["X-Request-ID"] = rid[:128]
        return response
    finally:
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        services = getattr(request.app.state, "services", None)
        if services is not None:
            services.metrics.http_requests.labels(request.method, path, str(status_code)).inc()
        log.info("request", extra={"method": request.method, "path": request.url.path, "status": status_code,
                                   "duration_ms": round((time.perf_counter() - t0) * 1000, 1)})
        request_id_var.reset(token)


class BodySizeLimit:
    """Reject request bodies over ``limit`` bytes (413), whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._reject(send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
        await response({"type": "http"}, _empty_receive, send)


class _TooLarge(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
