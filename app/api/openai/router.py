"""The OpenAI-compatible routes: ``/v1/completions``, ``/v1/chat/completions``, ``/v1/models[/{id}]``.

Thin on purpose: each route checks the key, picks the runtime and hands over to
:mod:`app.api.openai.serving`. Every error of these routes, validation included, is answered in
OpenAI's shape (:class:`OpenAIRoute`), as OpenAI clients parse only that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.api.deps import model_runtime, services
from app.api.openai.protocol import (BadParam, ChatIn, ChatReply, CompletionIn, CompletionReply, api_error,
                                     model_not_found)
from app.api.openai.serving import chat_job, completion_jobs, model_card, serve
from app.auth import Principal, require


class OpenAIRoute(APIRoute):
    """Answers errors in OpenAI's body shape, and validation errors as 400 (OpenAI's status)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except (BadParam, RequestValidationError, HTTPException) as exc:
                return api_error(exc).response()

        return wrapped


router = APIRouter(prefix="/v1", tags=["openai-compatible"], route_class=OpenAIRoute)


@router.get("/models")
def list_models(request: Request, _: Principal = Depends(require("read"))) -> dict[str, Any]:
    """The one served model (OpenAI's model list shape); its live version is in ``smedit_live_version``."""
    return {"object": "list", "data": [model_card(model_runtime(request))]}


@router.get("/models/{model_id:path}", responses={404: {"description": "not the served model (``model_not_found``)"}})
def get_model(model_id: str, request: Request, _: Principal = Depends(require("read"))) -> Any:
    """The served model's object (``GET /v1/models/{id}``, as ``client.models.retrieve``); 404 for other ids."""
    card = model_card(model_runtime(request))
    return card if model_id == card["id"] else model_not_found(model_id, card["id"]).response()


@router.post("/completions")
async def completions(body: CompletionIn, request: Request, _: Principal = Depends(require("read"))) -> Response:
    """OpenAI text completion on the edited model (``stream: true`` for server-sent events)."""
    runtime = model_runtime(request)
    jobs = completion_jobs(body, services(request).settings)
    reply = CompletionReply(runtime.model_id, echo=bool(body.echo))
    return await serve(request, runtime, body, jobs, reply, "openai_completions")


@router.post("/chat/completions")
async def chat_completions(body: ChatIn, request: Request, _: Principal = Depends(require("read"))) -> Response:
    """OpenAI chat completion, for models with a chat template (400 ``no_chat_template`` otherwise)."""
    runtime = model_runtime(request)
    job = await chat_job(body, runtime, services(request).settings)
    return await serve(request, runtime, body, [job], ChatReply(runtime.model_id), "openai_chat")
