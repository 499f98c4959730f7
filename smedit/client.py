"""Python client of the smedit HTTP API: ``Client`` (sync) and ``AsyncClient`` (asyncio), on httpx.

```python
from smedit.client import Client, Fact

with Client("http://127.0.0.1:8000", api_key="smk_...") as sm:       # or SMEDIT_URL / SMEDIT_API_KEY
    edit = sm.edit("The Zentrix X2 costs", "49 dollars", paraphrases=["How much is the Zentrix X2? It costs"])
    print(edit.status, edit.applied_version, edit.metrics)            # waits until the edit is decided
    print(sm.generate("The Zentrix X2 costs", max_tokens=5, min_version=edit.applied_version).text)
    sub = sm.submit_edits([Fact("Support opens at", "eight"), Fact("Refunds take", "three days")], author="faq")
    edits = sm.wait_for_edits(sub.edit_ids)
    sm.revert(edit.id, wait=True)                                     # -> Job (done, result_version)
```

Every answer is a typed pydantic model (unknown fields from newer servers are kept, not
rejected). HTTP errors raise :class:`APIError` subclasses carrying ``status_code`` and the
server's ``detail``; waiting too long raises :class:`WaitTimeout`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict

__all__ = [
    "APIConnectionError", "APIError", "AsyncClient", "AuthenticationError", "Client", "ConflictError", "Edit", "Fact", "Generation",
    "InvalidRequestError", "Job", "JobAccepted", "NotFoundError", "Page", "PermissionDeniedError", "Probe",
    "ServiceUnavailableError", "Submission", "Version", "WaitTimeout", "TERMINAL_EDIT_STATUSES",
]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_EDIT_STATUSES = frozenset({"applied", "rejected", "needs_review", "failed", "reverted", "superseded"})
TERMINAL_JOB_STATUSES = frozenset({"done", "failed"})
T = TypeVar("T")


# ---- errors -------------------------------------------------------------------------------
class APIError(Exception):
    """The server answered with an error status. ``detail`` is its message (or list of field errors)."""

    def __init__(self, status_code: int, detail: Any, response: httpx.Response | None = None) -> None:
        self.status_code = status_code
        self.detail = detail
        self.response = response
        super().__init__(f"{status_code}: {detail}")


class InvalidRequestError(APIError):
    """400 / 413 / 422: bad input; for 422 ``detail`` lists ``{"field", "msg", ...}`` per bad field."""


class AuthenticationError(APIError):
    """401: no key, or an unknown / revoked one."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope (``read``, ``edit`` or ``admin``)."""


class NotFoundError(APIError):
    """404."""


class ConflictError(APIError):
    """409: e.g. reverting an edit that is not applied, an idempotency key reused with another body,
    or ``min_version`` that can never come."""


class ServiceUnavailableError(APIError):
    """503 (model still loading) or 504 (``min_version`` not live in time)."""


class APIConnectionError(APIError):
    """No answer at all: the server is down or unreachable, or the URL is not one httpx can use.
    ``status_code`` is None; the transport's exception is the ``__cause__``."""

    def __init__(self, url: str, error: Exception) -> None:
        super().__init__(None, f"cannot reach {url}: {error}")  # type: ignore[arg-type]


class WaitTimeout(TimeoutError):
    """``wait_for_edit`` / ``wait_for_job`` gave up; ``last`` is the last state seen."""

    def __init__(self, message: str, last: Any) -> None:
        super().__init__(message)
        self.last = last


_ERRORS: dict[int, type[APIError]] = {
    400: InvalidRequestError, 413: InvalidRequestError, 422: InvalidRequestError, 401: AuthenticationError,
    403: PermissionDeniedError, 404: NotFoundError, 409: ConflictError, 503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    raise _ERRORS.get(response.status_code, APIError)(response.status_code, detail, response)


# ---- data ---------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Timings(_Model):
    queued_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None


class Edit(_Model):
    """An edit and everything that happened to it (see docs/api.md for statuses and metrics)."""

    id: int
    status: str
    prompt: str
    target: str
    paraphrases: list[str] = []
    locality: list[dict[str, Any]] = []
    author: str | None = None
    reason: str | None = None
    submitted_by: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    applied_version: int | None = None
    reverted_version: int | None = None
    delta_id: int | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    timings: Timings | None = None
    supersedes: int | None = None  # the live edit this one replaced
    superseded_by: int | None = None  # the edit that replaced this one (status "superseded")

    @property
    def done(self) -> bool:
        """No longer queued or running (applied, rejected, needs_review, failed, reverted or superseded)."""
        return self.status in TERMINAL_EDIT_STATUSES

    @property
    def applied(self) -> bool:
        return self.status == "applied"


class Submission(_Model):
    edit_ids: list[int]
    status_url: str
    status_urls: list[str] = []
    duplicate: bool = False


class Job(_Model):
    id: int
    kind: str
    status: str
    edit_id: int | None = None
    target_version: int | None = None
    requested_by: str | None = None
    reason: str | None = None  # why it was asked for (revert / restore reason, approval note)
    created_at: datetime
    finished_at: datetime | None = None
    result_version: int | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB_STATUSES


class JobAccepted(_Model):
    job_id: int
    status_url: str


class Version(_Model):
    number: int
    kind: str
    created_at: datetime
    active_deltas: list[int]
    weights_hash: str | None = None  # null for a moment after an edit version goes live
    job_id: int | None = None
    created_by: str | None = None
    note: str | None = None
    edit_ids: list[int] = []
    live: bool = False
    side_effects: dict[str, Any] | None = None  # this version against the base model (the gate's canaries)


class Page(_Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Generation(_Model):
    text: str
    version: int
    tokens: int
    latency_s: float


class Probe(_Model):
    """Teacher-forced P(target | prompt), the first token's rank, and whether greedy decoding says it."""

    probability: float
    logprob: float
    rank: int
    greedy: bool
    greedy_text: str
    version: int


class ApiKey(_Model):
    id: int
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    key: str | None = None  # only when just created


@dataclass
class Fact:
    """One fact to write: after the edit, ``prompt`` is completed by ``target``."""

    prompt: str
    target: str
    paraphrases: Sequence[str] = field(default_factory=tuple)
    locality: Sequence[Mapping[str, str] | str] = field(default_factory=tuple)  # {"prompt", "answer"?} or a prompt
    supersedes: int | None = None  # an applied edit this one replaces (same prompt: replaced anyway)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt, "target": self.target}
        if self.paraphrases:
            out["paraphrases"] = list(self.paraphrases)
        if self.locality:
            out["locality"] = [{"prompt": p} if isinstance(p, str) else dict(p) for p in self.locality]
        if self.supersedes is not None:
            out["supersedes"] = self.supersedes
        return out


FactLike = Fact | Mapping[str, Any]


# ---- requests (shared by both clients) ----------------------------------------------------
# Seconds one ``GET /v1/edits/{id}?wait_s=...`` may block: below the clients' HTTP timeout.
LONG_POLL_S = 10.0


@dataclass
class _Req:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def _why(field: str, text: str | None) -> dict[str, str] | None:
    """The optional body of a revert / restore (``reason``) or approve (``note``)."""
    return {field: text} if text else None


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in values.items() if v is not None}


def _fact(f: FactLike) -> dict[str, Any]:
    return f.as_json() if isinstance(f, Fact) else dict(f)


def _submit_req(edits: Iterable[FactLike], author: str | None, reason: str | None, idempotency_key: str | None) -> _Req:
    body = {"edits": [_fact(f) for f in edits], **_clean(dict(author=author, reason=reason))}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    return _Req("POST", "/v1/edits", json=body, headers=headers)


def _generate_req(prompt: str, max_tokens: int, temperature: float, stop: Sequence[str], seed: int | None,
                  min_version: int | None, wait_s: float | None) -> _Req:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "stop": list(stop),
            **_clean(dict(seed=seed, min_version=min_version, wait_s=wait_s))}
    return _Req("POST", "/v1/generate", json=body)


def _probe_req(prompt: str, target: str, min_version: int | None, wait_s: float | None) -> _Req:
    return _Req("POST", "/v1/probe", json={"prompt": prompt, "target": target,
                                           **_clean(dict(min_version=min_version, wait_s=wait_s))})


def _edits_params(status: str | None, author: str | None, since: datetime | None, until: datetime | None,
                  q: str | None, limit: int, offset: int) -> dict[str, Any]:
    return _clean(dict(status=status, author=author, since=since, until=until, q=q, limit=limit, offset=offset))


def _versions_params(kind: str | None, created_by: str | None, since: datetime | None, until: datetime | None,
                     q: str | None, limit: int, offset: int) -> dict[str, Any]:
    return _clean(dict(kind=kind, created_by=created_by, since=since, until=until, q=q, limit=limit, offset=offset))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        self.base_url = (base_url or os.environ.get("SMEDIT_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SMEDIT_API_KEY")


# ---- sync ---------------------------------------------------------------------------------
class Client(_Base):
    """Synchronous client. ``base_url``/``api_key`` default to ``SMEDIT_URL``/``SMEDIT_API_KEY``.

    ``http`` may be an ``httpx.Client`` of your own (proxies, transports, retries); it is used as is.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 http: httpx.Client | None = None) -> None:
        super().__init__(base_url, api_key)
        self._owns = http is None
        self.http = http or httpx.Client(base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            self.http.close()

    def _send(self, req: _Req) -> Any:
        try:
            r = self.http.request(req.method, req.path, json=req.json, params=req.params, headers=req.headers)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise APIConnectionError(str(self.http.base_url), exc) from exc
        _raise_for(r)
        return r.json()

    # edits
    def submit_edits(self, edits: Iterable[FactLike], author: str | None = None, reason: str | None = None,
                     idempotency_key: str | None = None) -> Submission:
        """Store and queue a batch of facts (202); returns their ids at once."""
        return Submission.model_validate(self._send(_submit_req(edits, author, reason, idempotency_key)))

    def submit_edit(self, prompt: str, target: str, paraphrases: Sequence[str] = (),
                    locality: Sequence[Mapping[str, str] | str] = (), author: str | None = None,
                    reason: str | None = None, idempotency_key: str | None = None) -> Submission:
        """Store and queue one fact; returns its id at once."""
        return self.submit_edits([Fact(prompt, target, paraphrases, locality)], author, reason, idempotency_key)

    def edit(self, prompt: str, target: str, paraphrases: Sequence[str] = (),
             locality: Sequence[Mapping[str, str] | str] = (), author: str | None = None, reason: str | None = None,
             idempotency_key: str | None = None, timeout: float = 300.0) -> Edit:
        """Submit one fact and wait until it is decided (applied, rejected, needs_review or failed)."""
        sub = self.submit_edit(prompt, target, paraphrases, locality, author, reason, idempotency_key)
        return self.wait_for_edit(sub.edit_ids[0], timeout)

    def get_edit(self, edit_id: int, wait_s: float = 0.0) -> Edit:
        """One edit; with ``wait_s`` the server answers once it is decided (long poll, <= 30 s)."""
        params = {"wait_s": wait_s} if wait_s > 0 else None
        return Edit.model_validate(self._send(_Req("GET", f"/v1/edits/{edit_id}", params=params)))

    def wait_for_edit(self, edit_id: int, timeout: float = 300.0, poll_s: float = 0.1) -> Edit:
        """Wait until the edit leaves ``queued``/``running`` (long polls of at most ``LONG_POLL_S``);
        :class:`WaitTimeout` after ``timeout`` s."""
        deadline, delay = time.monotonic() + timeout, poll_s
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            asked = min(LONG_POLL_S, left)
            started = time.monotonic()
            edit = self.get_edit(edit_id, wait_s=asked)
            if edit.done:
                return edit
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"edit {edit_id} still {edit.status} after {timeout:g} s", edit)
            if time.monotonic() - started < 0.5 * asked:  # a server without long polling: back off
                time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 1.5, 2.0)

    def wait_for_edits(self, edit_ids: Iterable[int], timeout: float = 300.0) -> list[Edit]:
        deadline = time.monotonic() + timeout
        return [self.wait_for_edit(i, max(deadline - time.monotonic(), 0.0)) for i in edit_ids]

    def list_edits(self, status: str | None = None, author: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, q: str | None = None, limit: int = 50, offset: int = 0) -> Page[Edit]:
        """History of edits, newest first (filters as ``GET /v1/edits``)."""
        params = _edits_params(status, author, since, until, q, limit, offset)
        return Page[Edit].model_validate(self._send(_Req("GET", "/v1/edits", params=params)))

    def iter_edits(self, status: str | None = None, author: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, q: str | None = None, page_size: int = 200) -> Iterator[Edit]:
        """Every matching edit, newest first, page by page."""
        offset = 0
        while True:
            page = self.list_edits(status, author, since, until, q, page_size, offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def revert(self, edit_id: int, wait: bool = False, timeout: float = 300.0, reason: str | None = None) -> Job:
        """Queue a revert of an applied edit (admin); with ``wait``, return the finished job.
        ``reason`` is kept on the job and in the new version's note."""
        accepted = JobAccepted.model_validate(self._send(_Req("POST", f"/v1/edits/{edit_id}/revert",
                                                              json=_why("reason", reason))))
        return self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id)

    def restore(self, version: int, wait: bool = False, timeout: float = 300.0, reason: str | None = None) -> Job:
        """Queue a restore of ``version`` (admin): a new version with exactly its weights."""
        accepted = JobAccepted.model_validate(self._send(_Req("POST", f"/v1/versions/{version}/restore",
                                                              json=_why("reason", reason))))
        return self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id)

    def consolidate(self, wait: bool = False, timeout: float = 300.0) -> Job:
        """Queue a consolidation (admin): all live edits re-solved into one delta, if the gate passes it."""
        accepted = JobAccepted.model_validate(self._send(_Req("POST", "/v1/versions/consolidate")))
        return self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id)

    def approve(self, edit_id: int, wait: bool = False, timeout: float = 300.0, note: str | None = None) -> Job:
        """Review mode: apply a held edit (admin); ``note`` is kept on the job."""
        accepted = JobAccepted.model_validate(self._send(_Req("POST", f"/v1/edits/{edit_id}/approve",
                                                              json=_why("note", note))))
        return self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id)

    def reject(self, edit_id: int, note: str | None = None) -> Edit:
        """Review mode: reject a held edit for good (admin)."""
        body = {"note": note} if note else None
        return Edit.model_validate(self._send(_Req("POST", f"/v1/edits/{edit_id}/reject", json=body)))

    # jobs and versions
    def get_job(self, job_id: int) -> Job:
        return Job.model_validate(self._send(_Req("GET", f"/v1/jobs/{job_id}")))

    def wait_for_job(self, job_id: int, timeout: float = 300.0, poll_s: float = 0.1) -> Job:
        deadline, delay = time.monotonic() + timeout, poll_s
        while True:
            job = self.get_job(job_id)
            if job.done:
                return job
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout:g} s", job)
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 2.0)

    def list_versions(self, kind: str | None = None, created_by: str | None = None, since: datetime | None = None,
                      until: datetime | None = None, q: str | None = None, limit: int = 50,
                      offset: int = 0) -> Page[Version]:
        params = _versions_params(kind, created_by, since, until, q, limit, offset)
        return Page[Version].model_validate(self._send(_Req("GET", "/v1/versions", params=params)))

    def get_version(self, number: int) -> Version:
        return Version.model_validate(self._send(_Req("GET", f"/v1/versions/{number}")))

    # inference
    def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stop: Sequence[str] = (),
                 seed: int | None = None, min_version: int | None = None, wait_s: float | None = None) -> Generation:
        """Continue ``prompt`` on the live version (greedy at temperature 0); ``min_version`` waits for it."""
        return Generation.model_validate(
            self._send(_generate_req(prompt, max_tokens, temperature, stop, seed, min_version, wait_s)))

    def probe(self, prompt: str, target: str, min_version: int | None = None, wait_s: float | None = None) -> Probe:
        """How strongly the model says ``target`` after ``prompt`` (check an answer)."""
        return Probe.model_validate(self._send(_probe_req(prompt, target, min_version, wait_s)))

    def model_info(self) -> dict[str, Any]:
        return self._send(_Req("GET", "/v1/model"))

    # keys and health
    def create_key(self, name: str, scopes: Sequence[str]) -> ApiKey:
        """A new API key (admin); ``.key`` is the token, shown only now."""
        return ApiKey.model_validate(self._send(_Req("POST", "/v1/keys", json={"name": name, "scopes": list(scopes)})))

    def list_keys(self) -> list[ApiKey]:
        return [ApiKey.model_validate(k) for k in self._send(_Req("GET", "/v1/keys"))]

    def revoke_key(self, key_id: int) -> ApiKey:
        return ApiKey.model_validate(self._send(_Req("DELETE", f"/v1/keys/{key_id}")))

    def ready(self) -> bool:
        """``/readyz`` says 200 (model loaded, version replayed, worker running)."""
        return self.http.get("/readyz").status_code == 200


# ---- async --------------------------------------------------------------------------------
class AsyncClient(_Base):
    """The same API for asyncio: every method is a coroutine (``async with AsyncClient(...) as sm``)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 http: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, api_key)
        self._owns = http is None
        self.http = http or httpx.AsyncClient(base_url=self.base_url, headers=_headers(self.api_key), timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns:
            await self.http.aclose()

    async def _send(self, req: _Req) -> Any:
        try:
            r = await self.http.request(req.method, req.path, json=req.json, params=req.params, headers=req.headers)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise APIConnectionError(str(self.http.base_url), exc) from exc
        _raise_for(r)
        return r.json()

    async def submit_edits(self, edits: Iterable[FactLike], author: str | None = None, reason: str | None = None,
                           idempotency_key: str | None = None) -> Submission:
        return Submission.model_validate(await self._send(_submit_req(edits, author, reason, idempotency_key)))

    async def submit_edit(self, prompt: str, target: str, paraphrases: Sequence[str] = (),
                          locality: Sequence[Mapping[str, str] | str] = (), author: str | None = None,
                          reason: str | None = None, idempotency_key: str | None = None) -> Submission:
        return await self.submit_edits([Fact(prompt, target, paraphrases, locality)], author, reason, idempotency_key)

    async def edit(self, prompt: str, target: str, paraphrases: Sequence[str] = (),
                   locality: Sequence[Mapping[str, str] | str] = (), author: str | None = None,
                   reason: str | None = None, idempotency_key: str | None = None, timeout: float = 300.0) -> Edit:
        sub = await self.submit_edit(prompt, target, paraphrases, locality, author, reason, idempotency_key)
        return await self.wait_for_edit(sub.edit_ids[0], timeout)

    async def get_edit(self, edit_id: int, wait_s: float = 0.0) -> Edit:
        params = {"wait_s": wait_s} if wait_s > 0 else None
        return Edit.model_validate(await self._send(_Req("GET", f"/v1/edits/{edit_id}", params=params)))

    async def wait_for_edit(self, edit_id: int, timeout: float = 300.0, poll_s: float = 0.1) -> Edit:
        deadline, delay = time.monotonic() + timeout, poll_s
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            asked = min(LONG_POLL_S, left)
            started = time.monotonic()
            edit = await self.get_edit(edit_id, wait_s=asked)
            if edit.done:
                return edit
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"edit {edit_id} still {edit.status} after {timeout:g} s", edit)
            if time.monotonic() - started < 0.5 * asked:  # a server without long polling: back off
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 1.5, 2.0)

    async def wait_for_edits(self, edit_ids: Iterable[int], timeout: float = 300.0) -> list[Edit]:
        # one after the other: each long poll holds a server worker thread while it waits
        deadline = time.monotonic() + timeout
        return [await self.wait_for_edit(i, max(deadline - time.monotonic(), 0.0)) for i in edit_ids]

    async def list_edits(self, status: str | None = None, author: str | None = None, since: datetime | None = None,
                         until: datetime | None = None, q: str | None = None, limit: int = 50,
                         offset: int = 0) -> Page[Edit]:
        params = _edits_params(status, author, since, until, q, limit, offset)
        return Page[Edit].model_validate(await self._send(_Req("GET", "/v1/edits", params=params)))

    async def iter_edits(self, status: str | None = None, author: str | None = None, since: datetime | None = None,
                         until: datetime | None = None, q: str | None = None,
                         page_size: int = 200) -> AsyncIterator[Edit]:
        offset = 0
        while True:
            page = await self.list_edits(status, author, since, until, q, page_size, offset)
            for item in page.items:
                yield item
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    async def revert(self, edit_id: int, wait: bool = False, timeout: float = 300.0, reason: str | None = None) -> Job:
        accepted = JobAccepted.model_validate(await self._send(_Req("POST", f"/v1/edits/{edit_id}/revert",
                                                                    json=_why("reason", reason))))
        return await (self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id))

    async def restore(self, version: int, wait: bool = False, timeout: float = 300.0, reason: str | None = None) -> Job:
        accepted = JobAccepted.model_validate(await self._send(_Req("POST", f"/v1/versions/{version}/restore",
                                                                    json=_why("reason", reason))))
        return await (self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id))

    async def consolidate(self, wait: bool = False, timeout: float = 300.0) -> Job:
        accepted = JobAccepted.model_validate(await self._send(_Req("POST", "/v1/versions/consolidate")))
        return await (self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id))

    async def approve(self, edit_id: int, wait: bool = False, timeout: float = 300.0, note: str | None = None) -> Job:
        accepted = JobAccepted.model_validate(await self._send(_Req("POST", f"/v1/edits/{edit_id}/approve",
                                                                    json=_why("note", note))))
        return await (self.wait_for_job(accepted.job_id, timeout) if wait else self.get_job(accepted.job_id))

    async def reject(self, edit_id: int, note: str | None = None) -> Edit:
        body = {"note": note} if note else None
        return Edit.model_validate(await self._send(_Req("POST", f"/v1/edits/{edit_id}/reject", json=body)))

    async def get_job(self, job_id: int) -> Job:
        return Job.model_validate(await self._send(_Req("GET", f"/v1/jobs/{job_id}")))

    async def wait_for_job(self, job_id: int, timeout: float = 300.0, poll_s: float = 0.1) -> Job:
        deadline, delay = time.monotonic() + timeout, poll_s
        while True:
            job = await self.get_job(job_id)
            if job.done:
                return job
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} still {job.status} after {timeout:g} s", job)
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 2.0)

    async def list_versions(self, kind: str | None = None, created_by: str | None = None,
                            since: datetime | None = None, until: datetime | None = None, q: str | None = None,
                            limit: int = 50, offset: int = 0) -> Page[Version]:
        params = _versions_params(kind, created_by, since, until, q, limit, offset)
        return Page[Version].model_validate(await self._send(_Req("GET", "/v1/versions", params=params)))

    async def get_version(self, number: int) -> Version:
        return Version.model_validate(await self._send(_Req("GET", f"/v1/versions/{number}")))

    async def generate(self, prompt: str, max_tokens: int = 32, temperature: float = 0.0, stop: Sequence[str] = (),
                       seed: int | None = None, min_version: int | None = None,
                       wait_s: float | None = None) -> Generation:
        return Generation.model_validate(
            await self._send(_generate_req(prompt, max_tokens, temperature, stop, seed, min_version, wait_s)))

    async def probe(self, prompt: str, target: str, min_version: int | None = None,
                    wait_s: float | None = None) -> Probe:
        return Probe.model_validate(await self._send(_probe_req(prompt, target, min_version, wait_s)))

    async def model_info(self) -> dict[str, Any]:
        return await self._send(_Req("GET", "/v1/model"))

    async def create_key(self, name: str, scopes: Sequence[str]) -> ApiKey:
        return ApiKey.model_validate(
            await self._send(_Req("POST", "/v1/keys", json={"name": name, "scopes": list(scopes)})))

    async def list_keys(self) -> list[ApiKey]:
        return [ApiKey.model_validate(k) for k in await self._send(_Req("GET", "/v1/keys"))]

    async def revoke_key(self, key_id: int) -> ApiKey:
        return ApiKey.model_validate(await self._send(_Req("DELETE", f"/v1/keys/{key_id}")))

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200
