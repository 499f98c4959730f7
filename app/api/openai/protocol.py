"""OpenAI's wire format as smedit speaks it: request bodies, response bodies and error bodies.

Requests ignore unknown fields (clients send many optional OpenAI parameters); what the model
cannot honour is refused by the serving layer as :class:`BadParam`, never silently ignored.
Responses are plain dicts built here, key for key as OpenAI orders them, so every endpoint and
the streamed chunks share one definition of each shape.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.text_checks import ValidUnicode

VERSION_HEADER = "X-Smedit-Model-Version"
MAX_N = 8
MAX_STOP = 8


# ---- errors -------------------------------------------------------------------------------
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
    504: "timeout",
}


class BadParam(Exception):
    """A request parameter the service cannot honour: 400 naming it."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


@dataclass(frozen=True)
class ApiError:
    """One error as OpenAI clients read it (``openai.BadRequestError.param`` / ``.code``)."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        """The ``error`` object, also what a stream sends once it has started."""
        return {"message": self.message, "type": _ERROR_TYPES.get(self.status, "api_error"),
                "param": self.param, "code": self.code}

    def response(self) -> JSONResponse:
        """OpenAI's error body, plus ``detail`` as every other smedit endpoint answers."""
        return JSONResponse({"error": self.body(), "detail": self.message}, status_code=self.status,
                            headers=self.headers)


def api_error(exc: BaseException) -> ApiError:
    """The OpenAI-style error for anything raised while serving a request (500 if unexpected)."""
    if isinstance(exc, BadParam):
        return ApiError(400, exc.message, exc.param, exc.code)
    if isinstance(exc, RequestValidationError):
        return _validation_error(exc)
    if isinstance(exc, HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return ApiError(exc.status_code, detail, headers=dict(exc.headers or {}))
    return ApiError(500, f"{type(exc).__name__}: {exc}")


def _validation_error(exc: RequestValidationError) -> ApiError:
    """Pydantic's field errors as one 400 (OpenAI's status), naming the first field as ``param``."""
    parts, first = [], None
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        first = first or field
        parts.append(f"{field}: {error.get('msg')}")
    return ApiError(400, "; ".join(parts) or "invalid request", first)


# ---- requests -----------------------------------------------------------------------------
class _Lenient(ValidUnicode, BaseModel):
    """Unknown fields are ignored: clients send many optional OpenAI parameters. Known ones are
    not coerced (``"max_tokens": "3"`` is a 400, as OpenAI answers)."""

    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class SamplingIn(_Lenient):
    """The fields completions and chat share."""

    model: str | None = Field(None, description="any name: one model is served")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 = greedy; default 1 as OpenAI")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="only 1 is supported")
    n: int | None = Field(None, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # smedit extensions (``extra_body`` in the openai package)
    min_version: int | None = Field(None, ge=0, description="wait until this version is live here")
    wait_s: float | None = Field(None, gt=0, description="longest min_version wait (capped by the server)")


class CompletionIn(SamplingIn):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1, description="default 16, as OpenAI")
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatIn(SamplingIn):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


# ---- responses ----------------------------------------------------------------------------
@dataclass
class Choice:
    """One generated answer to one prompt."""

    prompt: str
    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int


class Reply:
    """The envelope of one answer (id, creation time, model, version); subclasses shape its choices.

    A streamed answer is a series of chunks with the same id and creation time as a whole one.
    """

    id_prefix: ClassVar[str]
    object: ClassVar[str]
    chunk_object: ClassVar[str]

    def __init__(self, model: str) -> None:
        self.id = f"{self.id_prefix}{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def body(self, version: int, choices: Sequence[Choice], usage: dict[str, int]) -> dict[str, Any]:
        """The whole (non-streamed) answer."""
        return {**self._envelope(self.object, version),
                "choices": [self._choice(i, c) for i, c in enumerate(choices)], "usage": usage}

    def chunk(self, version: int, text: str | None = None, finish_reason: str | None = None) -> dict[str, Any]:
        """One streamed event: a piece of text, or (``finish_reason``) the end of the choice."""
        return {**self._envelope(self.chunk_object, version), "choices": [self._delta(text, finish_reason)]}

    def usage_chunk(self, version: int, usage: dict[str, int]) -> dict[str, Any]:
        """The last streamed event with ``stream_options.include_usage``: no choices, the counts."""
        return {**self._envelope(self.chunk_object, version), "choices": [], "usage": usage}

    def opening(self, version: int, prompt: str) -> list[dict[str, Any]]:
        """Events a stream sends before the generated text."""
        return []

    def _envelope(self, obj: str, version: int) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": f"smedit-v{version}"}

    def _choice(self, index: int, choice: Choice) -> dict[str, Any]:
        raise NotImplementedError

    def _delta(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError


class CompletionReply(Reply):
    """``text_completion`` objects; ``echo`` puts the prompt in front of the text."""

    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, model: str, echo: bool) -> None:
        super().__init__(model)
        self.echo = echo

    def opening(self, version: int, prompt: str) -> list[dict[str, Any]]:
        return [self.chunk(version, prompt)] if self.echo else []

    def _choice(self, index: int, choice: Choice) -> dict[str, Any]:
        text = (choice.prompt if self.echo else "") + choice.text
        return {"index": index, "text": text, "logprobs": None, "finish_reason": choice.finish_reason}

    def _delta(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


class ChatReply(Reply):
    """``chat.completion`` objects (``chat.completion.chunk`` when streamed), from the assistant."""

    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def opening(self, version: int, prompt: str) -> list[dict[str, Any]]:
        """OpenAI's first chunk names the role, with empty content."""
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [{**self._envelope(self.chunk_object, version), "choices": [role]}]

    def _choice(self, index: int, choice: Choice) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": choice.text}, "logprobs": None,
                "finish_reason": choice.finish_reason}

    def _delta(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None,
                "finish_reason": finish_reason}


def model_object(model_id: str, created: int, live_version: int | None) -> dict[str, Any]:
    """OpenAI's model object for the served model; its live version as ``smedit_live_version``."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "smedit",
            "smedit_live_version": live_version}


def model_not_found(asked: str, served: str) -> ApiError:
    """404 as OpenAI answers an unknown model (``code`` ``model_not_found``)."""
    return ApiError(404, f"the model {asked!r} does not exist here; this server serves {served!r}", "model",
                    "model_not_found")
