"""OpenAI-compatible inference: ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming too), ``/v1/models``.

Existing OpenAI clients (the ``openai`` package with ``base_url=<server>/v1``, LangChain, curl
scripts) talk to the edited model unchanged. Everything runs through ``Engine.generate`` under the
engine lock, so an answer never sees a half-applied or uncommitted version; the version it ran on is
in the ``X-Smedit-Model-Version`` header and in ``system_fingerprint`` (``smedit-v<N>``).

Auth is the service's own: an API key with the ``read`` scope as ``Authorization: Bearer <key>``
(what the ``openai`` package sends as its ``api_key``). Errors use OpenAI's body shape
(``{"error": {"message", "type", "param", "code"}}``, plus ``detail`` like the rest of the API);
invalid requests are 400 as OpenAI's are (the native API uses 422).

What is supported: string prompts (or a list of them), ``max_tokens``, ``temperature`` (0 = greedy),
``stop``, ``seed``, ``n``, ``echo``, ``stream`` with ``stream_options.include_usage``. Parameters the
model cannot honour (``logprobs``, ``top_p`` != 1, penalties, ``logit_bias``, ``suffix``, tools)
are a 400 naming the parameter rather than silently ignored; unknown fields are ignored. Any
``model`` name is accepted (one model is served). smedit extras (``extra_body`` in the ``openai``
package): ``min_version`` and ``wait_s``, as on ``/v1/generate``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import model_engine, services
from app.api.inference import _wait_version
from app.auth import Principal, require
from editor_core.tokens import prompt_ids

VERSION_HEADER = "X-Smedit-Model-Version"
MAX_N = 8
MAX_STOP = 8

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


def openai_error(status_code: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body (``error``), plus ``detail`` as every other smedit endpoint answers."""
    body = {
        "error": {"message": message, "type": _ERROR_TYPES.get(status_code, "api_error"), "param": param, "code": code},
        "detail": message,
    }
    return JSONResponse(body, status_code=status_code, headers=headers)


class BadParam(Exception):
    """A request parameter the service cannot honour: 400 naming it."""

    def __init__(self, param: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


class _OpenAIRoute(APIRoute):
    """Routes of this router answer errors in OpenAI's shape (and validation errors as 400)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except BadParam as exc:
                return openai_error(400, exc.message, exc.param, exc.code)
            except RequestValidationError as exc:
                errors = exc.errors()
                parts, first = [], None
                for e in errors:
                    field = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
                    first = first or field
                    parts.append(f"{field}: {e.get('msg')}")
                return openai_error(400, "; ".join(parts) or "invalid request", first)
            except HTTPException as exc:
                detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
                return openai_error(exc.status_code, detail, headers=dict(exc.headers or {}))

        return wrapped


router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=_OpenAIRoute)


# ---- requests -----------------------------------------------------------------------------
class _Lenient(BaseModel):
    """Unknown fields are ignored: clients send many optional OpenAI parameters."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class _Sampling(_Lenient):
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


class CompletionIn(_Sampling):
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


class ChatIn(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


# ---- checks shared by both endpoints ------------------------------------------------------
def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP:
        raise BadParam("stop", f"at most {MAX_STOP} stop sequences")
    return stops


def _check_sampling(body: _Sampling) -> None:
    if body.top_p is not None and body.top_p != 1:
        raise BadParam("top_p", "only top_p=1 is supported (use temperature)", "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise BadParam(name, f"{name} is not supported (only 0)", "unsupported_parameter")
    if body.logit_bias:
        raise BadParam("logit_bias", "logit_bias is not supported", "unsupported_parameter")
    if body.stream and (body.n or 1) > 1:
        raise BadParam("n", "streaming supports n=1 only", "unsupported_parameter")


def _max_tokens(requested: int | None, default: int | None, limit: int) -> int | None:
    """The requested count (checked against the server limit), or the default (None: fill the context)."""
    if requested is None:
        return default
    if requested > limit:
        raise BadParam("max_tokens", f"at most {limit} (the server's MAX_NEW_TOKENS)")
    return requested


def _cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence, and whether one was found."""
    cut = len(text)
    for s in stops:
        idx = text.find(s)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut], cut < len(text)


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop sequence (not yet safe to send)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


def _model_id(engine: Any) -> str:
    return engine.model_dir.name or "smedit"


def _fingerprint(version: int) -> str:
    return f"smedit-v{version}"


# ---- blocking work (threads, never on the event loop) -------------------------------------
@dataclass
class _Job:
    """One prompt to continue, as the engine sees it."""

    prompt: str
    max_tokens: int | None  # None: as much as the context and MAX_NEW_TOKENS allow
    temperature: float
    stops: list[str]
    seed: int | None


@dataclass
class _Choice:
    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int


def _prompt_tokens(engine: Any, prompt: str) -> int:
    return len(prompt_ids(engine.tokenizer, prompt))  # under the engine lock: fast tokenizers aren't thread-safe


def _resolve_max(engine: Any, job: _Job, n_prompt: int, limit: int) -> int:
    if job.max_tokens is not None:
        return job.max_tokens
    room = (engine.context - n_prompt) if engine.context else limit
    if room < 1:
        raise BadParam("messages", f"the prompt needs {n_prompt} tokens; the model's context is {engine.context}",
                       "context_length_exceeded")
    return min(limit, room)


def _run(engine: Any, jobs: Sequence[_Job], n: int, limit: int) -> tuple[int, list[_Choice]]:
    """Every choice of every prompt on one version (the engine lock is held throughout)."""
    out: list[_Choice] = []
    with engine.exclusive():
        version = engine.live_version if engine.live_version is not None else -1
        for job in jobs:
            n_prompt = _prompt_tokens(engine, job.prompt)
            max_tokens = _resolve_max(engine, job, n_prompt, limit)
            for k in range(n):
                seed = job.seed + k if job.seed is not None else None
                try:
                    r = engine.generate(job.prompt, max_tokens, job.temperature, (), seed)
                except ValueError as exc:  # ContextTooLong
                    raise BadParam(getattr(exc, "field", "prompt"), str(exc), "context_length_exceeded") from None
                text, stopped = _cut(r.text, job.stops)
                finish = "stop" if stopped or r.tokens < max_tokens else "length"
                out.append(_Choice(text, finish, r.tokens, n_prompt))
    return version, out


class _Cancelled(Exception):
    """Raised inside generation when the client went away or a stop sequence was reached."""


class _Streamer:
    """A ``transformers`` streamer feeding decoded text to the event loop, under the engine lock.

    ``generate`` first puts the prompt ids (the lock is held then, so the version is known: the
    stream's start), then each new token. Text is sent as soon as it decodes cleanly (no partial
    UTF-8 characters).
    """

    def __init__(self, tokenizer: Any, emit: Callable[[tuple[str, Any]], None], cancelled: threading.Event) -> None:
        self.tokenizer, self.emit, self.cancelled = tokenizer, emit, cancelled
        self.version: int = -1
        self.prompt_tokens = 0
        self.started = False
        self.ids: list[int] = []
        self.sent = ""

    def put(self, value: Any) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()
        if not self.started:
            self.started = True
            self.emit(("start", self.version))
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and (text.endswith("\ufffd") or not text.startswith(self.sent)):
            return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.emit(("text", text[len(self.sent):]))
            self.sent = text


def _start_stream(engine: Any, job: _Job, limit: int, loop: asyncio.AbstractEventLoop,
                  queue: asyncio.Queue[tuple[str, Any]], cancelled: threading.Event) -> _Streamer:
    """Generate in a thread; messages: start(version), text(piece)*, done(tokens, max) | error(exc)."""

    def emit(item: tuple[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            cancelled.set()

    streamer = _Streamer(engine.tokenizer, emit, cancelled)

    def work() -> None:
        try:
            with engine.exclusive():
                streamer.version = engine.live_version if engine.live_version is not None else -1
                streamer.prompt_tokens = _prompt_tokens(engine, job.prompt)
                max_tokens = _resolve_max(engine, job, streamer.prompt_tokens, limit)
                try:
                    r = engine.generate(job.prompt, max_tokens, job.temperature, (), job.seed, streamer=streamer)
                except ValueError as exc:  # ContextTooLong
                    raise BadParam(getattr(exc, "field", "prompt"), str(exc), "context_length_exceeded") from None
            emit(("done", (r.tokens, max_tokens)))
        except _Cancelled:
            emit(("cancelled", None))
        except BaseException as exc:  # noqa: BLE001 - reported to the client (before or inside the stream)
            emit(("error", exc))

    threading.Thread(target=work, name="smedit-openai-stream", daemon=True).start()
    return streamer


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error_payload(exc: BaseException) -> tuple[int, str, str | None, str | None]:
    if isinstance(exc, BadParam):
        return 400, exc.message, exc.param, exc.code
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail), None, None
    return 500, f"{type(exc).__name__}: {exc}", None, None


Chunk = Callable[[int, str | None, str | None, dict[str, Any] | None], dict[str, Any]]


async def _stream(
    request: Request, job: _Job, chunk: Chunk, first: list[tuple[str | None, dict[str, Any] | None]],
    include_usage: bool, endpoint: str,
) -> Response:
    """Start generating; once the version is fixed, answer with an SSE stream of ``chunk`` objects.

    ``chunk(version, text, finish_reason, delta)`` builds one event; ``first`` are (text, delta)
    events sent before the generated text (the chat role, an echoed prompt).
    """
    svc = services(request)
    engine = model_engine(request)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    cancelled = threading.Event()
    t0 = time.perf_counter()
    streamer = _start_stream(engine, job, svc.settings.max_new_tokens, loop, queue, cancelled)
    try:
        kind, value = await queue.get()
    except BaseException:
        cancelled.set()
        raise
    if kind == "error":
        status, message, param, code = _error_payload(value)
        return openai_error(status, message, param, code)
    if kind != "start":  # "done" without a start cannot happen; be safe
        return openai_error(500, "generation ended before it started")
    version = int(value)

    async def events() -> AsyncIterator[str]:
        text, sent, finish = "", 0, None
        try:
            for text0, delta0 in first:
                yield _sse(chunk(version, text0, None, delta0))
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    text += value
                    visible, stopped = _cut(text, job.stops)
                    if stopped:
                        cancelled.set()
                        if len(visible) > sent:
                            yield _sse(chunk(version, visible[sent:], None, None))
                        sent, finish = len(visible), "stop"
                        break
                    safe = len(text) - _holdback(text, job.stops)
                    if safe > sent:
                        yield _sse(chunk(version, text[sent:safe], None, None))
                        sent = safe
                elif kind == "done":
                    tokens, max_tokens = value
                    visible, stopped = _cut(text, job.stops)
                    if len(visible) > sent:
                        yield _sse(chunk(version, visible[sent:], None, None))
                    finish = "stop" if stopped or tokens < max_tokens else "length"
                    break
                elif kind == "cancelled":
                    finish = finish or "stop"
                    break
                elif kind == "error":
                    status, message, param, code = _error_payload(value)
                    yield _sse({"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"),
                                          "param": param, "code": code}})
                    return
            yield _sse(chunk(version, None, finish, None))
            if include_usage:
                usage = {"prompt_tokens": streamer.prompt_tokens, "completion_tokens": len(streamer.ids),
                         "total_tokens": streamer.prompt_tokens + len(streamer.ids)}
                yield _sse({**chunk(version, None, None, None), "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
            svc.metrics.inference_latency.labels(endpoint).observe(time.perf_counter() - t0)
        finally:
            cancelled.set()  # client gone or stream over: stop generating, release the engine lock

    return StreamingResponse(
        events(), media_type="text/event-stream",
        headers={VERSION_HEADER: str(version), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _usage(choices: Sequence[_Choice], prompt_tokens: int) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


# ---- endpoints ----------------------------------------------------------------------------
@router.get("/models")
def list_models(request: Request, _: Principal = Depends(require("read"))) -> dict[str, Any]:
    """The one served model (OpenAI's model list shape); its live version is in ``smedit_live_version``."""
    engine = model_engine(request)
    return {"object": "list", "data": [{
        "id": _model_id(engine), "object": "model", "created": int(engine.model_dir.stat().st_mtime)
        if engine.model_dir.exists() else 0, "owned_by": "smedit", "smedit_live_version": engine.live_version,
    }]}


@router.post("/completions")
async def completions(body: CompletionIn, request: Request, _: Principal = Depends(require("read"))) -> Response:
    """OpenAI text completion on the edited model (``stream: true`` for server-sent events)."""
    svc = services(request)
    engine = model_engine(request)
    settings = svc.settings
    _check_sampling(body)
    if body.logprobs:
        raise BadParam("logprobs", "logprobs are not supported", "unsupported_parameter")
    if body.suffix:
        raise BadParam("suffix", "suffix (insertion) is not supported", "unsupported_parameter")
    if body.best_of not in (None, 1, body.n or 1):
        raise BadParam("best_of", "best_of is not supported", "unsupported_parameter")
    if isinstance(body.prompt, str):
        prompts = [body.prompt]
    elif body.prompt and all(isinstance(p, str) for p in body.prompt):
        prompts = list(body.prompt)  # type: ignore[arg-type]
    else:
        raise BadParam("prompt", "prompt must be a string or a non-empty list of strings (token ids are not supported)")
    for p in prompts:
        if not p:
            raise BadParam("prompt", "prompt must not be empty")
        if len(p) > settings.max_prompt_chars:
            raise BadParam("prompt", f"longer than {settings.max_prompt_chars} characters")
    n = body.n or 1
    if len(prompts) * n > settings.max_batch:
        raise BadParam("prompt", f"at most {settings.max_batch} completions (prompts x n) per request")
    if body.stream and len(prompts) > 1:
        raise BadParam("prompt", "streaming supports a single prompt", "unsupported_parameter")
    temperature = 1.0 if body.temperature is None else body.temperature
    stops = _stops(body.stop)
    max_tokens = _max_tokens(body.max_tokens, 16, settings.max_new_tokens)
    jobs = [_Job(p, max_tokens, temperature, stops, body.seed) for p in prompts]
    await run_in_threadpool(_wait_version, request, body.min_version, body.wait_s)
    model = _model_id(engine)
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        def chunk(version: int, text: str | None, finish: str | None, _: dict[str, Any] | None) -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": _fingerprint(version),
                    "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        first = [(prompts[0], None)] if body.echo else []
        return await _stream(request, jobs[0], chunk, first, include_usage, "openai_completions")

    t0 = time.perf_counter()
    version, choices = await run_in_threadpool(_run, engine, jobs, n, settings.max_new_tokens)
    svc.metrics.inference_latency.labels("openai_completions").observe(time.perf_counter() - t0)
    out_choices = [
        {"index": i, "text": (jobs[i // n].prompt if body.echo else "") + c.text, "logprobs": None,
         "finish_reason": c.finish_reason}
        for i, c in enumerate(choices)
    ]
    prompt_tokens = sum(choices[i * n].prompt_tokens for i in range(len(jobs)))
    payload = {"id": cid, "object": "text_completion", "created": created, "model": model,
               "system_fingerprint": _fingerprint(version), "choices": out_choices,
               "usage": _usage(choices, prompt_tokens)}
    return JSONResponse(payload, headers={VERSION_HEADER: str(version)})


def _message_text(m: ChatMessage, index: int) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    parts = []
    for part in m.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadParam(f"messages.{index}.content", "only text content parts are supported", "unsupported_parameter")
        parts.append(part["text"])
    return "".join(parts)


def _chat_prompt(engine: Any, messages: list[dict[str, str]]) -> str:
    """The chat template applied to ``messages`` with the assistant turn opened (engine lock held)."""
    tok = engine.tokenizer
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - jinja errors from the model's own template (e.g. role order)
        raise BadParam("messages", f"the model's chat template refused these messages: {exc}") from None
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos):  # the template wrote BOS; drop it when tokenizing adds one again
        ids = tok("x")["input_ids"]
        if ids and ids[0] == tok.bos_token_id:
            text = text[len(bos):]
    return text


@router.post("/chat/completions")
async def chat_completions(body: ChatIn, request: Request, _: Principal = Depends(require("read"))) -> Response:
    """OpenAI chat completion, for models with a chat template (400 ``no_chat_template`` otherwise)."""
    svc = services(request)
    engine = model_engine(request)
    settings = svc.settings
    if not getattr(engine.tokenizer, "chat_template", None):
        raise BadParam("model", f"model {_model_id(engine)!r} has no chat template: use /v1/completions with a plain "
                       "prompt", "no_chat_template")
    _check_sampling(body)
    if body.logprobs:
        raise BadParam("logprobs", "logprobs are not supported", "unsupported_parameter")
    if body.tools:
        raise BadParam("tools", "tools are not supported", "unsupported_parameter")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise BadParam("response_format", "only text responses are supported", "unsupported_parameter")
    messages = []
    for i, m in enumerate(body.messages):
        text = _message_text(m, i)
        if len(text) > settings.max_prompt_chars:
            raise BadParam(f"messages.{i}.content", f"longer than {settings.max_prompt_chars} characters")
        messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    n = body.n or 1
    temperature = 1.0 if body.temperature is None else body.temperature
    stops = _stops(body.stop)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = _max_tokens(requested, None, settings.max_new_tokens)

    def render() -> str:
        with engine.exclusive():
            return _chat_prompt(engine, messages)

    prompt = await run_in_threadpool(render)
    job = _Job(prompt, max_tokens, temperature, stops, body.seed)
    await run_in_threadpool(_wait_version, request, body.min_version, body.wait_s)
    model = _model_id(engine)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:

        def chunk(version: int, text: str | None, finish: str | None, delta: dict[str, Any] | None) -> dict[str, Any]:
            d = delta if delta is not None else ({"content": text} if text else {})
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": _fingerprint(version),
                    "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(request, job, chunk, [(None, {"role": "assistant", "content": ""})], include_usage,
                             "openai_chat")

    t0 = time.perf_counter()
    version, choices = await run_in_threadpool(_run, engine, [job], n, settings.max_new_tokens)
    svc.metrics.inference_latency.labels("openai_chat").observe(time.perf_counter() - t0)
    payload = {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": _fingerprint(version),
        "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)],
        "usage": _usage(choices, choices[0].prompt_tokens if choices else 0),
    }
    return JSONResponse(payload, headers={VERSION_HEADER: str(version)})
