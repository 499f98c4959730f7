"""The service exempts what it loaded at start-up from full garbage collections (gc.freeze)."""

from __future__ import annotations

import gc
from typing import Any

from tests.app.conftest import wait_edit


def test_objects_alive_at_start_are_frozen_and_the_service_still_works(server_factory: Any) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        srv = server_factory(gc_freeze=True)
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # torch, transformers, the model: everything alive once it was ready
        c = srv.client()
        edit = wait_edit(c, c.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0])
        assert edit["status"] == "applied"
        assert gc.get_freeze_count() <= frozen  # frozen once, at start-up, not per edit (some are freed since)
    finally:
        gc.unfreeze()  # the next tests' servers are not meant to stay in this process for good


def test_off_when_switched_off(server_factory: Any) -> None:
    gc.unfreeze()
    server_factory(gc_freeze=False)
    assert gc.get_freeze_count() == 0
