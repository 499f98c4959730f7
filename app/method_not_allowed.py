"""405 with an ``Allow`` header naming every method the path has.

Starlette answers a wrong method from the first route whose path matches, so for a path served
by several routes (``GET`` and ``POST /v1/edits``) its ``Allow`` listed one route's methods only.
The methods are taken from the OpenAPI spec, the public list of what each path accepts; a path
outside it (the console's, the docs') keeps Starlette's answer.
"""

from __future__ import annotations

import re
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
    def table() -> list[tuple[re.Pattern[str], frozenset[str]]]:
        return [(_pattern(path), frozenset(m.upper() for m in ops)) for path, ops in app.openapi()["paths"].items()]

    def allowed(path: str) -> list[str]:
        methods: set[str] = set()
        for pattern, verbs in table():
            if pattern.match(path):
                methods |= verbs
        return sorted(methods | ({"HEAD"} if "GET" in methods else set()))

    async def handler(request: Request, exc: StarletteHTTPException) -> Response:
        allow = allowed(request.url.path) if exc.status_code == 405 else []
        if not allow:
            return await http_exception_handler(request, exc)
        return JSONResponse({"detail": f"method {request.method} not allowed here; allowed: {', '.join(allow)}"},
                            status_code=405, headers={"Allow": ", ".join(allow)})

    app.add_exception_handler(StarletteHTTPException, handler)  # type: ignore[arg-type]
