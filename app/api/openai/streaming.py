"""Streaming: a generation in a worker thread, read as events on the event loop, sent as SSE.

``generate`` is blocking and holds the runtime lock for the whole answer, so it runs in its own
thread; a :class:`TokenStream` is the ``transformers`` streamer it feeds, and hands each decoded
piece of text to the event loop through an ``asyncio`` queue. The client going away (or a stop
sequence) makes the next token raise inside ``generate``, which releases the lock at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from app.api.openai.protocol import Reply, api_error
from app.api.openai.stops import StopFilter

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_DONE = "data: [DONE]\n\n"

#: ("start", version) once the prompt is in, ("text", piece)*, then one of ("done", hit_limit),
#: ("cancelled", None) or ("error", exception).
Event = tuple[str, Any]


class _Cancelled(Exception):
    """Raised inside ``generate`` (from the streamer) to end a generation nobody reads any more."""


class TokenStream:
    """One generation running in a thread, as events for the event loop.

    The generation's ``work`` sets ``version`` and ``prompt_tokens`` (under the runtime lock) and
    passes this object to ``generate`` as its streamer: ``generate`` puts the prompt ids first
    (the "start" event: the version is fixed from then on), then each new token. Text is sent as
    soon as it decodes cleanly (no partial UTF-8 characters).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.version = -1
        self.prompt_tokens = 0
        self.ids: list[int] = []
        self._decode = decode
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._started = False
        self._sent = ""

    def start(self, work: Callable[[TokenStream], bool]) -> None:
        """Run ``work(self)`` in a thread; it generates and returns whether it hit ``max_tokens``."""

        def run() -> None:
            try:
                hit_limit = work(self)
                self._emit(("done", hit_limit))
            except _Cancelled:
                self._emit(("cancelled", None))
            except BaseException as exc:  # noqa: BLE001 - reported to the client (before or inside the stream)
                self._emit(("error", exc))

        threading.Thread(target=run, name="smedit-openai-stream", daemon=True).start()

    async def next_event(self) -> Event:
        try:
            return await self._queue.get()
        except BaseException:  # the request was cancelled while waiting: stop generating
            self.cancel()
            raise

    def cancel(self) -> None:
        """End the generation at its next token (the runtime lock is released then)."""
        self._cancelled.set()

    # ---- the transformers streamer interface (called by generate, in the thread) ----------
    def put(self, value: Any) -> None:
        if self._cancelled.is_set():
            raise _Cancelled()
        if not self._started:  # the prompt ids
            self._started = True
            self._emit(("start", self.version))
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self._decode(self.ids)
        if not final and (text.endswith("\ufffd") or not text.startswith(self._sent)):
            return
        if text.startswith(self._sent) and len(text) > len(self._sent):
            self._emit(("text", text[len(self._sent):]))
            self._sent = text

    def _emit(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (server shutting down)
            self._cancelled.set()


def sse(data: Any) -> str:
    """One server-sent event carrying ``data`` as compact JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def sse_events(
    stream: TokenStream, reply: Reply, prompt: str, stops: StopFilter, include_usage: bool,
    on_complete: Callable[[], None],
) -> AsyncIterator[str]:
    """The SSE body of a started stream: opening events, text chunks, the finish, usage, ``[DONE]``.

    An error after the start can only be an ``error`` event (the status line is sent already).
    ``on_complete`` runs once the whole answer went out. However the body ends (client gone
    included), the generation is cancelled, so the runtime lock is never held for nobody.
    """
    version = stream.version
    finish = "stop"
    try:
        for event in reply.opening(version, prompt):
            yield sse(event)
        while True:
            kind, value = await stream.next_event()
            if kind == "text":
                piece = stops.feed(value)
                if stops.stopped:
                    stream.cancel()  # nothing after the stop sequence is sent: stop generating now
                if piece:
                    yield sse(reply.chunk(version, piece))
                if stops.stopped:
                    break
            elif kind == "done":
                piece = stops.flush()
                if piece:
                    yield sse(reply.chunk(version, piece))
                finish = "length" if value and not stops.stopped else "stop"
                break
            elif kind == "cancelled":
                break
            elif kind == "error":
                yield sse({"error": api_error(value).body()})
                return
        yield sse(reply.chunk(version, finish_reason=finish))
        if include_usage:
            completion = len(stream.ids)
            usage = {"prompt_tokens": stream.prompt_tokens, "completion_tokens": completion,
                     "total_tokens": stream.prompt_tokens + completion}
            yield sse(reply.usage_chunk(version, usage))
        yield SSE_DONE
        on_complete()
    finally:
        stream.cancel()
