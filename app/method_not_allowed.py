"""405 with an ``Allow`` header naming every method the path has.

Starlette answers a wrong method from the first route whose path matches, so for a path served
by several routes (``GET`` and ``POST /v1/edits``) its ``Allow`` listed one route's methods only.
The methods are taken from the OpenAPI spec, the public list of what each path accepts; a path
outside it (the console's, the docs') keeps Starlette's answer.

A fixed path wins over a template it also matches: ``/v1/keys/me`` is GET only, although
``DELETE /v1/keys/{key_id}`` would route it (and answer 422 for the id ``me``), so a wrong method
on a fixed path is a 405 before routing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import lru_cache

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException


def _pattern(template: str) -> re.Pattern[str]:
    """``/v1/edits/{edit_id}`` as a regex; a model id (``/v1/models/{model_id}``) may hold slashes."""
    regex = re.escape(template)
    regex = regex.replace(re.escape("{model_id}"), ".+")
    regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", regex)
    return re.compile(f"^{regex}$")


def install(app: FastAPI) -> None:
    @lru_cache(maxsize=1)
    def table() -> list[tuple[str, re.Pattern[str], frozenset[str]]]:
        return [(path, _pattern(path), frozenset(m.upper() for m in ops)) for path, ops in app.openapi()["paths"].items()]

    def allowed(path: str) -> list[str]:
        """The methods of the fixed path ``path`` if the spec has it, else of every template matching it."""
        fixed = [verbs for template, _, verbs in table() if template == path]
        if fixed:
            return sorted(fixed[0])
        return sorted(set().union(*(verbs for _, pattern, verbs in table() if pattern.match(path))))

    def not_allowed(request: Request, allow: list[str]) -> JSONResponse:
        return JSONResponse({"detail": f"method {request.method} not allowed here; allowed: {', '.join(allow)}"},
                            status_code=405, headers={"Allow": ", ".join(allow)})

    async def handler(request: Request, exc: StarletteHTTPException) -> Response:
        allow = allowed(request.url.path) if exc.status_code == 405 else []
        return not_allowed(request, allow) if allow else await http_exception_handler(request, exc)

    async def fixed_paths(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path.startswith("/v1/"):
            fixed = [verbs for template, _, verbs in table() if template == path]
            if fixed and request.method not in fixed[0]:
                return not_allowed(request, sorted(fixed[0]))
        return await call_next(request)

    app.add_exception_handler(StarletteHTTPException, handler)  # type: ignore[arg-type]
    app.middleware("http")(fixed_paths)
