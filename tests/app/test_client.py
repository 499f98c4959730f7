"""``smedit.client``: the sync and async clients against a real server."""

from __future__ import annotations

import asyncio

import pytest

from smedit.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    Edit,
    Fact,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    WaitTimeout,
)
from tests.app.conftest import ADMIN_KEY, RunningServer


def test_sync_client_full_cycle(server: RunningServer) -> None:
    with Client(server.url, api_key=ADMIN_KEY) as sm:
        assert sm.ready()
        edit = sm.edit("The sky is", "green", paraphrases=["The colour of the sky is"],
                       locality=["Water boils at"], author="client-test", reason="test")
        assert isinstance(edit, Edit) and edit.applied and edit.applied_version == 1
        assert edit.metrics is not None and "es" in edit.metrics and edit.timings is not None

        sub = sm.submit_edits([Fact("Water boils at", "fifty degrees"), {"prompt": "The sky today is", "target": "red"}],
                              author="bulk", idempotency_key="bulk-1")
        again = sm.submit_edits([Fact("Water boils at", "fifty degrees"), {"prompt": "The sky today is", "target": "red"}],
                                author="bulk", idempotency_key="bulk-1")
        assert again.duplicate and again.edit_ids == sub.edit_ids
        done = sm.wait_for_edits(sub.edit_ids)
        assert [e.status for e in done] == ["applied", "applied"]
        version = done[0].applied_version
        assert version == 2

        page = sm.list_edits(author="bulk", limit=1)
        assert page.total == 2 and len(page.items) == 1 and page.items[0].id == sub.edit_ids[-1]
        assert [e.id for e in sm.iter_edits(page_size=1)] == [3, 2, 1]
        assert sm.list_edits(q="sky").total == 2

        gen = sm.generate("The sky is", max_tokens=3, min_version=version)
        assert gen.version == version and gen.tokens == 3
        probe = sm.probe("The sky is", "red")
        assert probe.version == version and 0 < probe.probability <= 1 and probe.rank >= 1

        job = sm.revert(edit.id, wait=True)
        assert job.done and job.status == "done" and job.result_version == 3
        assert sm.get_edit(edit.id).status == "reverted"
        job = sm.restore(1, wait=True)
        assert job.result_version == 4 and sm.get_version(4).kind == "restore"
        assert sm.get_edit(edit.id).status == "applied"
        versions = sm.list_versions(kind="restore")
        assert versions.total == 1 and versions.items[0].live
        assert sm.model_info()["live_version"] == 4

        with pytest.raises(NotFoundError):
            sm.get_edit(999)
        with pytest.raises(ConflictError):
            sm.revert(sub.edit_ids[0])  # reverted by the restore: not applied
        with pytest.raises(InvalidRequestError) as bad:
            sm.submit_edit("  ", "x")
        assert bad.value.detail[0]["field"] == "edits.0.prompt"
        with pytest.raises(WaitTimeout):
            sm.wait_for_edit(sm.submit_edit("Refunds are processed within", "ten days").edit_ids[0], timeout=0)

        reader = sm.create_key("reader", ["read"])
        assert reader.key and reader.scopes == ["read"]
    with Client(server.url, api_key=reader.key) as ro:
        assert ro.generate("The sky is", max_tokens=1).tokens == 1
        with pytest.raises(PermissionDeniedError):
            ro.submit_edit("The sky is", "blue")
    with Client(server.url, api_key="nope") as anon, pytest.raises(AuthenticationError):
        anon.list_edits()


def test_async_client(server: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, api_key=ADMIN_KEY) as sm:
            assert await sm.ready()
            sub = await sm.submit_edits([Fact("The sky is", "green"), Fact("Water boils at", "fifty degrees")])
            edits = await sm.wait_for_edits(sub.edit_ids)
            assert {e.status for e in edits} == {"applied"}
            gen = await sm.generate("The sky is", max_tokens=2, min_version=1)
            assert gen.version == 1
            probe = await sm.probe("The sky is", "green")
            assert probe.version == 1
            assert [e.id async for e in sm.iter_edits(page_size=1)] == [2, 1]
            job = await sm.revert(edits[0].id, wait=True)
            assert job.result_version == 2
            job = await sm.restore(1, wait=True)
            assert job.result_version == 3
            assert (await sm.get_version(3)).active_deltas == (await sm.get_version(1)).active_deltas
            assert (await sm.list_versions()).total == 4
            with pytest.raises(NotFoundError):
                await sm.get_job(999)

    asyncio.run(main())


def test_cli_bulk_and_probe(server: RunningServer, tmp_path) -> None:
    """The CLI verbs (thin wrappers over the client): a CSV price list, re-run safely, then a probe."""
    import typer
    from typer.testing import CliRunner

    from smedit.commands import client_cmds

    def run(fn, *args: str) -> str:
        app = typer.Typer()
        app.command()(fn)
        result = CliRunner().invoke(app, list(args), env={"SMEDIT_URL": server.url, "SMEDIT_API_KEY": ADMIN_KEY})
        assert result.exit_code == 0, result.output
        return result.output

    prices = tmp_path / "prices.csv"
    prices.write_text("prompt,target,paraphrases\nThe Zentrix X2 costs,49 dollars,How much is the Zentrix X2?\n"
                      "The Nimbus router costs,80 dollars,\n")
    out = run(client_cmds.bulk, str(prices), "--author", "pricing", "--wait")
    assert '"applied": 2' in out and '"latest_version": 1' in out
    again = run(client_cmds.bulk, str(prices), "--author", "pricing")  # same again: nothing new
    assert json_ids(again) == [1, 2]
    assert "[v1] p=" in run(client_cmds.probe, "The Zentrix X2 costs", "49 dollars", "--min-version", "1")
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "Support opens at", "target": "eight", "paraphrases": ["Support starts at"]}\n')
    assert json_ids(run(client_cmds.bulk, str(facts))) == [3]


def json_ids(output: str) -> list[int]:
    import json

    return json.loads(output)["edit_ids"]
