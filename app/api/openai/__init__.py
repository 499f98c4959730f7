"""OpenAI-compatible inference: ``/v1/completions``, ``/v1/chat/completions`` (SSE streaming too), ``/v1/models``.

Existing OpenAI clients (the ``openai`` package with ``base_url=<server>/v1``, LangChain, curl
scripts) talk to the edited model unchanged. Everything runs through ``ModelRuntime.generate`` under the
runtime lock, so an answer never sees a half-applied or uncommitted version; the version it ran on is
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

Modules: ``protocol`` (wire types, errors), ``serving`` (requests into generation jobs, one
version per answer), ``streaming`` (generation thread to SSE), ``stops`` (stop sequences),
``router`` (the routes).
"""

from app.api.openai.router import router

__all__ = ["router"]
