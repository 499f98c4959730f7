"""The ``openai`` package, pointed at a real server, completes and chats on the edited model."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.app.conftest import ADMIN_KEY, RunningServer, wait_edit

PROMPT = "The sky is"
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def _oa(server: RunningServer, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def _native(http: httpx.Client, prompt: str, max_tokens: int, version: int) -> str:
    out = http.post("/v1/generate", json={"prompt": prompt, "max_tokens": max_tokens, "min_version": version}).json()
    assert out["version"] == version, out
    return out["text"]


def test_completions_plain_and_streamed_follow_the_edits(server: RunningServer) -> None:
    admin = server.client()
    reader = admin.post("/v1/keys", json={"name": "oa-reader", "scopes": ["read"]}).json()["key"]
    oa = _oa(server, reader)
    assert [m.id for m in oa.models.list().data] == [server.services.runtime.model_dir.name]

    raw = oa.completions.with_raw_response.create(model="anything", prompt=PROMPT, max_tokens=6, temperature=0)
    assert raw.headers["x-smedit-model-version"] == "0"
    before = raw.parse()
    assert before.system_fingerprint == "smedit-v0"
    assert before.choices[0].text == _native(admin, PROMPT, 6, 0)
    assert before.usage is not None and before.usage.completion_tokens == 6

    sub = admin.post("/v1/edits", json={"prompt": PROMPT, "target": "green and purple"}).json()
    edited = wait_edit(admin, sub["edit_ids"][0])
    assert edited["status"] == "applied" and edited["applied_version"] == 1

    raw = oa.completions.with_raw_response.create(model="anything", prompt=PROMPT, max_tokens=6, temperature=0,
                                                  extra_body={"min_version": 1})
    assert raw.headers["x-smedit-model-version"] == "1"
    after = raw.parse().choices[0]
    expected = _native(admin, PROMPT, 6, 1)
    assert after.text == expected and after.finish_reason == "length"

    # streamed: the same text, piece by piece, version in the header; usage at the end
    with oa.completions.with_streaming_response.create(
        model="anything", prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-smedit-model-version"] == "1"
        chunks = list(resp.parse())
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert {c.system_fingerprint for c in chunks} == {"smedit-v1"}

    # stop sequences cut both ways identically
    stop = expected.strip()[-2:]
    assert stop, expected
    cut = expected[: expected.find(stop)]
    plain = oa.completions.create(model="x", prompt=PROMPT, max_tokens=6, temperature=0, stop=[stop])
    assert plain.choices[0].text == cut and plain.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in oa.completions.create(
        model="x", prompt=PROMPT, max_tokens=6, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == cut

    # several prompts and n, in one version; echo
    multi = oa.completions.create(model="x", prompt=[PROMPT, "Water boils at"], max_tokens=3, temperature=0, n=2,
                                  echo=True)
    assert len(multi.choices) == 4 and multi.choices[0].text == PROMPT + _native(admin, PROMPT, 3, 1)
    assert multi.choices[0].text == multi.choices[1].text  # greedy: n copies agree


def test_chat_needs_a_template(server: RunningServer) -> None:
    admin = server.client()
    oa = _oa(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What colour is the sky?"}]
    with pytest.raises(openai.BadRequestError) as err:
        oa.chat.completions.create(model="x", messages=messages)
    assert err.value.code == "no_chat_template" and "chat template" in err.value.message

    tok = server.services.runtime.tokenizer
    tok.chat_template = TEMPLATE  # a chat model, for this test's server only
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    expected = _native(admin, rendered, 5, 0)

    raw = oa.chat.completions.with_raw_response.create(model="x", messages=messages, max_tokens=5, temperature=0)
    assert raw.headers["x-smedit-model-version"] == "0"
    reply = raw.parse().choices[0]
    assert reply.message.role == "assistant" and reply.message.content == expected

    chunks = list(oa.chat.completions.create(model="x", messages=messages, max_completion_tokens=5, temperature=0,
                                             stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_auth_and_bad_parameters(server: RunningServer) -> None:
    admin = server.client()
    editor = admin.post("/v1/keys", json={"name": "oa-editor", "scopes": ["edit"]}).json()["key"]
    with pytest.raises(openai.AuthenticationError):
        _oa(server, "nope").completions.create(model="x", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        _oa(server, editor).completions.create(model="x", prompt=PROMPT, max_tokens=2)
    assert "read" in denied.value.message
    oa = _oa(server)
    for kwargs, param in [
        ({"top_p": 0.5}, "top_p"), ({"logprobs": 2}, "logprobs"), ({"max_tokens": 10_000}, "max_tokens"),
        ({"prompt": [1, 2, 3]}, "prompt"), ({"temperature": 3}, "temperature"),
        ({"max_tokens": 120, "prompt": PROMPT * 20}, "max_tokens"),  # beyond the 128-token context
    ]:
        with pytest.raises(openai.BadRequestError) as bad:
            oa.completions.create(**{"model": "x", "prompt": PROMPT, "max_tokens": 2, **kwargs})
        assert bad.value.param == param, (kwargs, bad.value.body)
    # streaming errors that are known before the first token are plain 400s as well
    r = httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                   json={"model": "x", "prompt": PROMPT * 20, "max_tokens": 120, "stream": True}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    # a version that cannot come
    r = httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                   json={"model": "x", "prompt": PROMPT, "min_version": 99}, timeout=60)
    assert r.status_code == 409 and "version 99" in r.json()["error"]["message"]
