"""Client verbs against a running smedit server: ``edit``, ``history``, ``revert``, ``restore``, ``generate``.

Each is a Typer command function (registered in ``smedit.cli``); ``client_app`` groups them too.
The server URL and API key come from ``--url`` / ``--key`` or ``SMEDIT_URL`` / ``SMEDIT_API_KEY``.
"""

from __future__ import annotations

import json
import time
from typing import Any, List, Optional

import httpx
import typer

client_app = typer.Typer(help="Talk to a running smedit server.", no_args_is_help=True)

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="SMEDIT_URL", help="Server base URL.")
KEY = typer.Option(None, "--key", envvar="SMEDIT_API_KEY", help="API key (Bearer).")
WAIT = typer.Option(False, "--wait", help="Wait until the server has finished the job.")


def _client(url: str, key: Optional[str]) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120)


def _check(r: httpx.Response) -> Any:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text
        typer.echo(f"error {r.status_code}: {json.dumps(detail) if not isinstance(detail, str) else detail}", err=True)
        raise typer.Exit(1)
    return r.json()


def _print(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _poll(c: httpx.Client, path: str, done: tuple[str, ...], timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        body = _check(c.get(path))
        if body["status"] in done or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


@client_app.command("edit")
def edit(
    prompt: str = typer.Argument(..., help="The prompt, e.g. 'The Zentrix X2 costs'."),
    target: str = typer.Argument(..., help="The new completion, e.g. '49 dollars'."),
    paraphrase: List[str] = typer.Option([], "--paraphrase", "-p", help="Another phrasing (repeatable)."),
    author: Optional[str] = typer.Option(None, "--author"),
    reason: Optional[str] = typer.Option(None, "--reason"),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key"),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Submit one fact; prints the edit ids (and with --wait, the outcome)."""
    body: dict[str, Any] = {"prompt": prompt, "target": target, "paraphrases": paraphrase}
    for name, value in (("author", author), ("reason", reason), ("idempotency_key", idempotency_key)):
        if value is not None:
            body[name] = value
    with _client(url, key) as c:
        sub = _check(c.post("/v1/edits", json=body))
        if not wait:
            _print(sub)
            return
        _print([_poll(c, f"/v1/edits/{i}", ("applied", "rejected", "needs_review", "failed", "reverted"))
                for i in sub["edit_ids"]])


@client_app.command("history")
def history(
    versions: bool = typer.Option(False, "--versions", help="List model versions instead of edits."),
    status: Optional[str] = typer.Option(None, "--status", help="Edit status filter."),
    author: Optional[str] = typer.Option(None, "--author"),
    q: Optional[str] = typer.Option(None, "--q", help="Text search."),
    limit: int = typer.Option(20, "--limit"),
    offset: int = typer.Option(0, "--offset"),
    as_json: bool = typer.Option(False, "--json", help="Print raw JSON."),
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Edits (or versions, --versions), newest first."""
    params = {k: v for k, v in dict(status=status, author=author, q=q, limit=limit, offset=offset).items() if v is not None}
    if versions:
        params.pop("status", None)
        if "author" in params:
            params["created_by"] = params.pop("author")
    with _client(url, key) as c:
        page = _check(c.get("/v1/versions" if versions else "/v1/edits", params=params))
    if as_json:
        _print(page)
        return
    if versions:
        for v in page["items"]:
            live = " (live)" if v["live"] else ""
            typer.echo(f"v{v['number']:<5} {v['kind']:<8} {v['created_at']}  {v['weights_hash'][:12]}  {v['note'] or ''}{live}")
    else:
        for e in page["items"]:
            ver = f"v{e['applied_version']}" if e["applied_version"] is not None else "-"
            typer.echo(f"#{e['id']:<5} {e['status']:<12} {ver:<6} {e['prompt']!r} -> {e['target']!r}  ({e['author'] or ''})")
    typer.echo(f"{len(page['items'])} of {page['total']}")


@client_app.command("revert")
def revert(
    edit_id: int = typer.Argument(..., help="The edit to revert."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Revert an applied edit (admin): a new version without it."""
    with _client(url, key) as c:
        job = _check(c.post(f"/v1/edits/{edit_id}/revert"))
        _print(_poll(c, f"/v1/jobs/{job['job_id']}", ("done", "failed")) if wait else job)


@client_app.command("restore")
def restore(
    version: int = typer.Argument(..., help="The version to restore."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Restore a version (admin): a new version with exactly its weights."""
    with _client(url, key) as c:
        job = _check(c.post(f"/v1/versions/{version}/restore"))
        _print(_poll(c, f"/v1/jobs/{job['job_id']}", ("done", "failed")) if wait else job)


@client_app.command("generate")
def generate(
    prompt: str = typer.Argument(...),
    max_tokens: int = typer.Option(32, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    min_version: Optional[int] = typer.Option(None, "--min-version", help="Wait until this version is live."),
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Generate text on the live (edited) model; prints the text and the version it ran on."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
    if min_version is not None:
        body["min_version"] = min_version
    with _client(url, key) as c:
        out = _check(c.post("/v1/generate", json=body))
    typer.echo(f"[v{out['version']}] {prompt}{out['text']}")
