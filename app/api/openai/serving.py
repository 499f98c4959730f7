"""From an OpenAI request to an answer: checks, generation jobs, one version, the response.

Completions and chat differ only in how a request becomes prompts (:func:`completion_jobs`,
:func:`chat_job`) and in the shape of the answer (a :class:`Reply`); waiting for ``min_version``,
generating every choice under one hold of the runtime lock (so on one version), streaming and
the metric are one path, :func:`serve`. Blocking work runs in threads, never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from app.api.deps import services, wait_for_version
from app.api.openai.protocol import (
    MAX_STOP, VERSION_HEADER, ApiError, BadParam, ChatIn, ChatMessage, Choice, CompletionIn, Reply, SamplingIn,
    api_error, model_object,
)
from app.api.openai.stops import StopFilter, cut
from app.api.openai.streaming import SSE_HEADERS, TokenStream, sse_events
from app.settings import Settings

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class Job:
    """One prompt to continue, as the runtime sees it."""

    prompt: str
    max_tokens: int | None  # None: as much as the context and MAX_NEW_TOKENS allow
    temperature: float
    stops: list[str]
    seed: int | None


# ---- requests into jobs -------------------------------------------------------------------
def completion_jobs(body: CompletionIn, settings: Settings) -> list[Job]:
    """One job per prompt of a ``/v1/completions`` request, or a :class:`BadParam`."""
    _check_sampling(body)
    if body.logprobs:
        raise BadParam("logprobs", "logprobs are not supported", "unsupported_parameter")
    if body.suffix:
        raise BadParam("suffix", "suffix (insertion) is not supported", "unsupported_parameter")
    if body.best_of not in (None, 1, body.n or 1):
        raise BadParam("best_of", "best_of is not supported", "unsupported_parameter")
    prompts = _prompts(body.prompt, settings)
    if len(prompts) * (body.n or 1) > settings.max_batch:
        raise BadParam("prompt", f"at most {settings.max_batch} completions (prompts x n) per request")
    if body.stream and len(prompts) > 1:
        raise BadParam("prompt", "streaming supports a single prompt", "unsupported_parameter")
    stops = _stops(body.stop)
    max_tokens = _max_tokens(body.max_tokens, DEFAULT_COMPLETION_TOKENS, settings.max_new_tokens)
    return [Job(p, max_tokens, _temperature(body), stops, body.seed) for p in prompts]


async def chat_job(body: ChatIn, runtime: Any, settings: Settings) -> Job:
    """The job of a ``/v1/chat/completions`` request: its messages through the chat template."""
    if not runtime.has_chat_template:
        raise BadParam("model", f"model {runtime.model_id!r} has no chat template: use /v1/completions with a plain "
                       "prompt", "no_chat_template")
    _check_sampling(body)
    if body.logprobs:
        raise BadParam("logprobs", "logprobs are not supported", "unsupported_parameter")
    if body.tools:
        raise BadParam("tools", "tools are not supported", "unsupported_parameter")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise BadParam("response_format", "only text responses are supported", "unsupported_parameter")
    messages = _messages(body.messages, settings)
    stops = _stops(body.stop)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = _max_tokens(requested, None, settings.max_new_tokens)
    try:
        prompt = await run_in_threadpool(runtime.chat_prompt, messages)
    except ValueError as exc:  # the model's template refused the messages
        raise BadParam("messages", str(exc)) from None
    return Job(prompt, max_tokens, _temperature(body), stops, body.seed)


def _check_sampling(body: SamplingIn) -> None:
    if body.top_p is not None and body.top_p != 1:
        raise BadParam("top_p", "only top_p=1 is supported (use temperature)", "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise BadParam(name, f"{name} is not supported (only 0)", "unsupported_parameter")
    if body.logit_bias:
        raise BadParam("logit_bias", "logit_bias is not supported", "unsupported_parameter")
    if body.stream and (body.n or 1) > 1:
        raise BadParam("n", "streaming supports n=1 only", "unsupported_parameter")


def _prompts(prompt: str | list[Any], settings: Settings) -> list[str]:
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise BadParam("prompt", "prompt must be a string or a non-empty list of strings (token ids are not supported)")
    for p in prompts:
        if not p:
            raise BadParam("prompt", "prompt must not be empty")
        if len(p) > settings.max_prompt_chars:
            raise BadParam("prompt", f"longer than {settings.max_prompt_chars} characters")
    return prompts


def _messages(messages: Sequence[ChatMessage], settings: Settings) -> list[dict[str, str]]:
    """Plain ``{role, content}`` dicts for the chat template (``developer`` is OpenAI's new ``system``)."""
    out = []
    for i, m in enumerate(messages):
        text = _message_text(m, i)
        if len(text) > settings.max_prompt_chars:
            raise BadParam(f"messages.{i}.content", f"longer than {settings.max_prompt_chars} characters")
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


def _message_text(message: ChatMessage, index: int) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadParam(f"messages.{index}.content", "only text content parts are supported", "unsupported_parameter")
        parts.append(part["text"])
    return "".join(parts)


def _temperature(body: SamplingIn) -> float:
    return 1.0 if body.temperature is None else body.temperature  # OpenAI's default, not greedy


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s]
    if len(stops) > MAX_STOP:
        raise BadParam("stop", f"at most {MAX_STOP} stop sequences")
    return stops


def _max_tokens(requested: int | None, default: int | None, limit: int) -> int | None:
    """The requested count (checked against the server limit), or the default (None: fill the context)."""
    if requested is None:
        return default
    if requested > limit:
        raise BadParam("max_tokens", f"at most {limit} (the server's MAX_NEW_TOKENS)")
    return requested


# ---- one request, start to end ------------------------------------------------------------
async def serve(request: Request, runtime: Any, body: SamplingIn, jobs: Sequence[Job], reply: Reply,
                endpoint: str) -> Response:
    """Wait for ``min_version``, then answer ``jobs`` as one JSON body or (``stream``) as SSE."""
    await run_in_threadpool(wait_for_version, request, body.min_version, body.wait_s)
    svc = services(request)
    limit = svc.settings.max_new_tokens
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _stream(request, runtime, jobs[0], reply, include_usage, endpoint)
    n = body.n or 1
    t0 = time.perf_counter()
    version, choices = await run_in_threadpool(_run_jobs, runtime, jobs, n, limit)
    svc.metrics.inference_latency.labels(endpoint).observe(time.perf_counter() - t0)
    return JSONResponse(reply.body(version, choices, _usage(choices, n)), headers={VERSION_HEADER: str(version)})


def _run_jobs(runtime: Any, jobs: Sequence[Job], n: int, limit: int) -> tuple[int, list[Choice]]:
    """``n`` choices of every job on one version (the runtime lock is held throughout)."""
    out: list[Choice] = []
    with runtime.exclusive():
        version = _live(runtime)
        for job in jobs:
            n_prompt = runtime.count_prompt_tokens(job.prompt)
            max_tokens = _resolve_max(runtime, job, n_prompt, limit)
            for k in range(n):
                seed = job.seed + k if job.seed is not None else None
                result = _generate(runtime, job, max_tokens, seed)
                text, stopped = cut(result.text, job.stops)
                finish = "stop" if stopped or result.tokens < max_tokens else "length"
                out.append(Choice(job.prompt, text, finish, result.tokens, n_prompt))
    return version, out


async def _stream(request: Request, runtime: Any, job: Job, reply: Reply, include_usage: bool,
                  endpoint: str) -> Response:
    """Start generating; once the version is fixed, answer with an SSE stream of ``reply`` chunks.

    Errors known before the first token (context too long, ...) are still a plain HTTP error.
    """
    svc = services(request)
    limit = svc.settings.max_new_tokens
    t0 = time.perf_counter()

    def work(stream: TokenStream) -> bool:
        with runtime.exclusive():
            stream.version = _live(runtime)
            stream.prompt_tokens = runtime.count_prompt_tokens(job.prompt)
            max_tokens = _resolve_max(runtime, job, stream.prompt_tokens, limit)
            result = _generate(runtime, job, max_tokens, job.seed, streamer=stream)
        return result.tokens >= max_tokens

    stream = TokenStream(runtime.decode)
    stream.start(work)
    kind, value = await stream.next_event()
    if kind == "error":
        return api_error(value).response()
    if kind != "start":  # "done" without a start cannot happen; be safe
        return ApiError(500, "generation ended before it started").response()

    def on_complete() -> None:
        svc.metrics.inference_latency.labels(endpoint).observe(time.perf_counter() - t0)

    events = sse_events(stream, reply, job.prompt, StopFilter(job.stops), include_usage, on_complete)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={VERSION_HEADER: str(stream.version), **SSE_HEADERS})


def _live(runtime: Any) -> int:
    """The version generation runs on (-1 before any version is live)."""
    return runtime.live_version if runtime.live_version is not None else -1


def _resolve_max(runtime: Any, job: Job, n_prompt: int, limit: int) -> int:
    """The job's max_tokens, or what the context leaves after the prompt (capped by ``limit``)."""
    if job.max_tokens is not None:
        return job.max_tokens
    room = (runtime.context - n_prompt) if runtime.context else limit
    if room < 1:
        raise BadParam("messages", f"the prompt needs {n_prompt} tokens; the model's context is {runtime.context}",
                       "context_length_exceeded")
    return min(limit, room)


def _generate(runtime: Any, job: Job, max_tokens: int, seed: int | None, streamer: Any | None = None) -> Any:
    try:
        return runtime.generate(job.prompt, max_tokens, job.temperature, (), seed, streamer=streamer)
    except ValueError as exc:  # ContextTooLong names the field
        raise BadParam(getattr(exc, "field", "prompt"), str(exc), "context_length_exceeded") from None


def _usage(choices: Sequence[Choice], n: int) -> dict[str, int]:
    """Token counts; each prompt counts once however many (``n``) choices it has."""
    prompt = sum(c.prompt_tokens for c in choices[::n])
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def model_card(runtime: Any) -> dict[str, Any]:
    """The served model's object, created when its directory was last written."""
    created = int(runtime.model_dir.stat().st_mtime) if runtime.model_dir.exists() else 0
    return model_object(runtime.model_id, created, runtime.live_version)
