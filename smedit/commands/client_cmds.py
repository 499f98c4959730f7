"""Client verbs against a running smedit server: ``edit``, ``bulk``, ``history``, ``revert``, ``restore``,
``generate``, ``probe``.

Each is a Typer command function (registered in ``smedit.cli``); ``client_app`` groups them too.
They are thin wrappers over :mod:`smedit.client`. The server URL and API key come from ``--url`` /
``--key`` or ``SMEDIT_URL`` / ``SMEDIT_API_KEY``.

Every failure is one line on stderr and an exit code a script can branch on (docs/api.md):
0 done; 1 the service answered with an error; 2 bad usage, URL or input file (Typer's code);
3 the service cannot be reached; 4 a ``--wait`` ran out of time.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, List, NoReturn, Optional, TypeVar

import typer
from pydantic import BaseModel

from smedit.client import APIConnectionError, APIError, Client, Fact, WaitTimeout

client_app = typer.Typer(help="Talk to a running smedit server.", no_args_is_help=True)

URL = typer.Option("http://127.0.0.1:8000", "--url", envvar="SMEDIT_URL", help="Server base URL.")
KEY = typer.Option(None, "--key", envvar="SMEDIT_API_KEY", help="API key (Bearer).")
WAIT = typer.Option(False, "--wait", help="Wait until the server has finished the job.")
WAIT_TIMEOUT = 600.0
R = TypeVar("R")
EXIT_API_ERROR, EXIT_UNREACHABLE, EXIT_WAIT_TIMEOUT = 1, 3, 4


def _client(url: str, key: Optional[str]) -> Client:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest.strip("/"):
        _bad_input(f"--url {url!r} is not an http(s) URL; e.g. http://127.0.0.1:8000")
    return Client(url, api_key=key or "", timeout=120)


def _bad_input(message: str) -> NoReturn:
    """A usage, URL or input-file problem: one line, exit code 2 (before anything is sent)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _call(fn: Callable[[], R]) -> R:
    """Run a client call; its failure becomes one line on stderr and the module's exit code."""
    try:
        return fn()
    except APIConnectionError as exc:
        typer.echo(f"error: {exc.detail} (is the service running? --url / SMEDIT_URL)", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except APIError as exc:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        typer.echo(f"error {exc.status_code}: {detail}", err=True)
        raise typer.Exit(EXIT_API_ERROR) from None
    except WaitTimeout as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_WAIT_TIMEOUT) from None


def _print(data: Any) -> None:
    def plain(x: Any) -> Any:
        if isinstance(x, BaseModel):
            return x.model_dump(mode="json")
        if isinstance(x, list):
            return [plain(i) for i in x]
        return x

    typer.echo(json.dumps(plain(data), indent=2, default=str))


@client_app.command("edit")
def edit(
    prompt: str = typer.Argument(..., help="The prompt, e.g. 'The Zentrix X2 costs'."),
    target: str = typer.Argument(..., help="The new completion, e.g. '49 dollars'."),
    paraphrase: List[str] = typer.Option([], "--paraphrase", "-p", help="Another phrasing (repeatable)."),
    author: Optional[str] = typer.Option(None, "--author"),
    reason: Optional[str] = typer.Option(None, "--reason"),
    idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key"),
    supersedes: Optional[int] = typer.Option(
        None, "--supersedes", help="Id of an applied edit this one replaces (the same prompt replaces it anyway)."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Submit one fact; prints the edit ids (and with --wait, the outcome)."""
    with _client(url, key) as c:
        fact = Fact(prompt, target, paraphrase, supersedes=supersedes)
        sub = _call(lambda: c.submit_edits([fact], author=author, reason=reason, idempotency_key=idempotency_key))
        if not wait:
            _print(sub)
            return
        _print(_call(lambda: c.wait_for_edits(sub.edit_ids, WAIT_TIMEOUT)))


def read_facts(path: Path) -> Iterator[Fact]:
    """Facts from a CSV (columns ``prompt,target`` and optionally ``paraphrases``, ``|``-separated)
    or a JSONL file (one ``{"prompt", "target", "paraphrases"?, "locality"?}`` per line)."""
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            yield from _jsonl_facts(path)
        else:
            yield from _csv_facts(path)
    except UnicodeDecodeError as exc:
        _bad_input(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")


def _jsonl_facts(path: Path) -> Iterator[Fact]:
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                _bad_input(f"{path}:{n}: not JSON ({exc.msg}, column {exc.colno})")
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("target"), str):
                _bad_input(f"{path}:{n}: needs an object with string 'prompt' and 'target'")
            yield Fact(row["prompt"], row["target"], row.get("paraphrases", ()), row.get("locality", ()))


def _csv_facts(path: Path) -> Iterator[Fact]:
    with path.open(encoding="utf-8", newline="") as handle:
        for n, row in enumerate(csv.DictReader(handle), 2):
            if not row.get("prompt") or not row.get("target"):
                _bad_input(f"{path}:{n}: needs 'prompt' and 'target' columns")
            paraphrases = [p.strip() for p in (row.get("paraphrases") or "").split("|") if p.strip()]
            yield Fact(row["prompt"], row["target"], paraphrases)


@client_app.command("bulk")
def bulk(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV (prompt,target[,paraphrases]) or JSONL."),
    author: Optional[str] = typer.Option(None, "--author"),
    reason: Optional[str] = typer.Option(None, "--reason"),
    chunk: int = typer.Option(64, "--chunk", min=1, help="Facts per request (at most the server's MAX_BATCH)."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Submit every fact of a file. Each chunk carries an idempotency key derived from the file's
    content and these options, so running the same command again submits nothing twice."""
    facts = list(read_facts(file))
    digest = hashlib.sha256(file.read_bytes() + json.dumps([author, reason, chunk]).encode()).hexdigest()[:16]
    ids: list[int] = []
    with _client(url, key) as c:
        for start in range(0, len(facts), chunk):
            part = facts[start:start + chunk]
            sub = _call(lambda: c.submit_edits(part, author=author, reason=reason,
                                               idempotency_key=f"bulk-{digest}-{start}"))
            ids.extend(sub.edit_ids)
        if not wait:
            _print({"edit_ids": ids, "facts": len(facts)})
            return
        edits = _call(lambda: c.wait_for_edits(ids, WAIT_TIMEOUT))
    counts: dict[str, int] = {}
    for e in edits:
        counts[e.status] = counts.get(e.status, 0) + 1
    for e in edits:
        if not e.applied:
            typer.echo(f"#{e.id} {e.status}: {e.prompt!r} -> {e.target!r}  {e.error or ''}")
    _print({"edit_ids": ids, "statuses": counts,
            "latest_version": max((e.applied_version or 0) for e in edits) if edits else None})


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
    with _client(url, key) as c:
        if versions:
            vpage = _call(lambda: c.list_versions(created_by=author, q=q, limit=limit, offset=offset))
            if as_json:
                _print(vpage)
                return
            for v in vpage.items:
                live = " (live)" if v.live else ""
                typer.echo(f"v{v.number:<5} {v.kind:<8} {v.created_at.isoformat()}  {v.weights_hash[:12]}  "
                           f"{v.note or ''}{live}")
            typer.echo(f"{len(vpage.items)} of {vpage.total}")
            return
        page = _call(lambda: c.list_edits(status=status, author=author, q=q, limit=limit, offset=offset))
    if as_json:
        _print(page)
        return
    for e in page.items:
        ver = f"v{e.applied_version}" if e.applied_version is not None else "-"
        typer.echo(f"#{e.id:<5} {e.status:<12} {ver:<6} {e.prompt!r} -> {e.target!r}  ({e.author or ''})")
    typer.echo(f"{len(page.items)} of {page.total}")


@client_app.command("revert")
def revert(
    edit_id: int = typer.Argument(..., help="The edit to revert."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the job and the version's note)."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Revert an applied edit (admin): a new version without it."""
    with _client(url, key) as c:
        _print(_call(lambda: c.revert(edit_id, wait=wait, timeout=WAIT_TIMEOUT, reason=reason)))


@client_app.command("restore")
def restore(
    version: int = typer.Argument(..., help="The version to restore."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept in the job and the version's note)."),
    wait: bool = WAIT,
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Restore a version (admin): a new version with exactly its weights."""
    with _client(url, key) as c:
        _print(_call(lambda: c.restore(version, wait=wait, timeout=WAIT_TIMEOUT, reason=reason)))


@client_app.command("consolidate")
def consolidate(wait: bool = WAIT, url: str = URL, key: Optional[str] = KEY) -> None:
    """Consolidate (admin): all live edits re-solved into one delta, committed if the gate passes it."""
    with _client(url, key) as c:
        _print(_call(lambda: c.consolidate(wait=wait, timeout=WAIT_TIMEOUT)))


@client_app.command("approve")
def approve(
    edit_id: int = typer.Argument(..., help="A needs_review edit."),
    note: Optional[str] = typer.Option(None, "--note", help="Why (kept with the approval's job)."),
    wait: bool = WAIT, url: str = URL, key: Optional[str] = KEY,
) -> None:
    """Review mode (admin): apply an edit the gate held back (recomputed now, gate waived)."""
    with _client(url, key) as c:
        _print(_call(lambda: c.approve(edit_id, wait=wait, timeout=WAIT_TIMEOUT, note=note)))


@client_app.command("reject")
def reject(
    edit_id: int = typer.Argument(..., help="A needs_review edit."),
    note: Optional[str] = typer.Option(None, "--note", help="Why (kept with the edit)."),
    url: str = URL, key: Optional[str] = KEY,
) -> None:
    """Review mode (admin): reject a held edit for good."""
    with _client(url, key) as c:
        _print(_call(lambda: c.reject(edit_id, note)))


keys_app = typer.Typer(help="API keys (admin): list, create, revoke.", no_args_is_help=True)


@keys_app.command("list")
def keys_list(url: str = URL, key: Optional[str] = KEY) -> None:
    """Every key: id, name, scopes, created, revoked (never the token)."""
    with _client(url, key) as c:
        _print(_call(c.list_keys))


@keys_app.command("create")
def keys_create(
    name: str = typer.Argument(..., help="Who or what uses the key."),
    scope: List[str] = typer.Option(["read"], "--scope", "-s", help="read, edit or admin (repeatable)."),
    url: str = URL, key: Optional[str] = KEY,
) -> None:
    """Create a key; its token is printed once (only its hash is stored)."""
    with _client(url, key) as c:
        _print(_call(lambda: c.create_key(name, scope)))


@keys_app.command("revoke")
def keys_revoke(key_id: int = typer.Argument(...), url: str = URL, key: Optional[str] = KEY) -> None:
    """Revoke a key (kept in the list with its revocation time)."""
    with _client(url, key) as c:
        _print(_call(lambda: c.revoke_key(key_id)))


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
    with _client(url, key) as c:
        out = _call(lambda: c.generate(prompt, max_tokens=max_tokens, temperature=temperature, min_version=min_version))
    typer.echo(f"[v{out.version}] {prompt}{out.text}")


@client_app.command("probe")
def probe(
    prompt: str = typer.Argument(..., help="The question / prompt, e.g. 'The Zentrix X2 costs'."),
    target: str = typer.Argument(..., help="The answer to check, e.g. '49 dollars'."),
    min_version: Optional[int] = typer.Option(None, "--min-version", help="Wait until this version is live."),
    url: str = URL,
    key: Optional[str] = KEY,
) -> None:
    """Check an answer: P(target | prompt), the first token's rank, and what greedy decoding says."""
    with _client(url, key) as c:
        r = _call(lambda: c.probe(prompt, target, min_version=min_version))
    verdict = "yes" if r.greedy else "no"
    typer.echo(f"[v{r.version}] p={r.probability:.4f} rank={r.rank} greedy says it: {verdict} "
               f"(greedy: {r.greedy_text!r})")
