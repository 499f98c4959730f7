"""What each route can answer besides its success, written into the OpenAPI spec.

FastAPI documents a route's success and (for routes with parameters) a 422. A client generator or
a fuzzer needs every status the route really returns, so the spec is completed here from one
table: every ``/v1`` route can answer 401 (no or a bad key), 403 (a key without the scope) and
503 (the database or Redis unreachable, or the model still loading: with ``Retry-After``); the
table adds each route's own 400 / 404 / 409 / 413 / 504. The OpenAI-compatible routes answer
invalid requests with 400 (OpenAI's status), not 422. ``tests/app/test_openapi_contract.py``
checks the table against the routes, and the reliability suite fuzzes the result.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "description": "``detail``: a message, or for 422 the list of bad fields; the OpenAI-compatible routes "
    "add OpenAI's ``error`` object",
    "properties": {"detail": {}, "error": {"type": "object"}},
}

COMMON = {
    400: "the body is not JSON (or not UTF-8)",
    401: "missing, unknown or revoked API key",
    403: "the key lacks the route's scope",
    413: "request body larger than SMEDIT_MAX_REQUEST_BYTES",
    503: "a dependency (database, Redis) is unreachable or the model is still loading; retry after Retry-After",
}
BOUNDED_WAIT = {409: "min_version can never be reached here", 504: "min_version not live within wait_s"}
OPENAI = {400: "invalid request (OpenAI's error shape, naming the parameter)", **BOUNDED_WAIT}

ROUTE_ERRORS: dict[tuple[str, str], dict[int, str]] = {
    ("POST", "/v1/edits"): {409: "idempotency key reused for another request, supersedes names no applied edit, "
                                 "or the side-effect budget is spent (reason capacity)"},
    ("GET", "/v1/edits"): {},
    ("GET", "/v1/edits/{edit_id}"): {404: "no such edit"},
    ("POST", "/v1/edits/{edit_id}/revert"): {404: "no such edit", 409: "the edit is not applied, or already being reverted"},
    ("POST", "/v1/edits/{edit_id}/approve"): {404: "no such edit", 409: "the edit is not needs_review"},
    ("POST", "/v1/edits/{edit_id}/reject"): {404: "no such edit", 409: "the edit is not needs_review"},
    ("GET", "/v1/jobs/{job_id}"): {404: "no such job"},
    ("GET", "/v1/versions"): {},
    ("GET", "/v1/versions/{number}"): {404: "no such version"},
    ("POST", "/v1/versions/consolidate"): {409: "fewer than two live deltas, or this state's consolidation "
                                                "was already accepted"},
    ("POST", "/v1/versions/{number}/restore"): {404: "no such version", 409: "that state is already live, or its "
                                                                            "restore was already accepted"},
    ("GET", "/v1/versions/{number}/adapter"): {404: "no such version", 409: "the version is the base model"},
    ("POST", "/v1/generate"): BOUNDED_WAIT,
    ("POST", "/v1/probe"): BOUNDED_WAIT,
    ("GET", "/v1/model"): {},
    ("GET", "/v1/kpis"): {400: "since after until, or more than 2,000 buckets"},
    ("POST", "/v1/keys"): {},
    ("GET", "/v1/keys"): {},
    ("GET", "/v1/keys/me"): {},
    ("DELETE", "/v1/keys/{key_id}"): {404: "no such key", 409: "a key cannot revoke itself"},
    ("GET", "/v1/models"): {},
    ("GET", "/v1/models/{model_id}"): {404: "not the served model (code model_not_found)"},
    ("POST", "/v1/completions"): OPENAI,
    ("POST", "/v1/chat/completions"): OPENAI,
}
NO_SCOPE = {("GET", "/v1/keys/me")}  # any valid key: no 403


def complete_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the table's error responses (all sharing ``Error``) to every ``/v1`` operation."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for name in _request_schemas(spec):
        _constrain_strings(schemas[name])
    for path, operations in spec.get("paths", {}).items():
        if not path.startswith("/v1"):
            continue
        for method, operation in operations.items():
            key = (method.upper(), path)
            errors = dict(COMMON)
            if key in NO_SCOPE:
                errors.pop(403)
            if "requestBody" not in operation:
                errors.pop(400)
            errors.update(ROUTE_ERRORS.get(key, {}))
            responses = operation.setdefault("responses", {})
            if key in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions")):
                responses.pop("422", None)  # OpenAI's status for invalid requests is 400
                responses["200"].setdefault("content", {})["text/event-stream"] = {
                    "schema": {"description": "with stream: true, server-sent events: each data is a chunk "
                               "(JSON), an error object, or [DONE]"}}
            elif "422" in responses:
                responses["422"]["description"] = "invalid parameters or body: each bad field named"
            for status, description in errors.items():
                entry = responses.setdefault(str(status), {"description": description})
                entry.setdefault("content", {"application/json": {"schema": ref}})
    return spec


# app.text_checks' policy as JSON Schema: no control character but tab, LF, CR; and a required
# text field (``minLength`` 1) holds something besides whitespace.
_CONTROLS = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f"
_SPACE = "\\t\\n\\r \\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
TEXT_PATTERN = f"^[^{_CONTROLS}]*$"
NONBLANK_PATTERN = f"^[{_SPACE}]*[^{_SPACE}{_CONTROLS}][^{_CONTROLS}]*$"


def _request_schemas(spec: dict[str, Any]) -> set[str]:
    """Names of the component schemas request bodies use, transitively."""
    found: set[str] = set()

    def refs(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("$ref", "")
            if target.startswith("#/components/schemas/") and target.rsplit("/", 1)[1] not in found:
                name = target.rsplit("/", 1)[1]
                found.add(name)
                refs(spec["components"]["schemas"].get(name))
            for value in node.values():
                refs(value)
        elif isinstance(node, list):
            for value in node:
                refs(value)

    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            refs(operation.get("requestBody"))
    return found


def _constrain_strings(node: Any) -> None:
    """Add the text policy's pattern to every string schema under ``node`` that has none."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "pattern" not in node and "enum" not in node and "const" not in node \
                and "format" not in node:
            node["pattern"] = NONBLANK_PATTERN if node.get("minLength", 0) >= 1 else TEXT_PATTERN
        for key, value in node.items():
            if key != "$ref":
                _constrain_strings(value)
    elif isinstance(node, list):
        for value in node:
            _constrain_strings(value)


def install(app: FastAPI) -> None:
    """Serve the completed spec at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_spec(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
