"""The model runtime hands its live deltas to the editor, so a protecting editor leaves them alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from app.runtime import Delta, EditRequest, ModelRuntime

FIRST = EditRequest("The sky is", "green")
SECOND = EditRequest("The Zentrix X2 costs", "59 dollars")


def _moved(runtime: ModelRuntime, old: Delta, new: Delta) -> float:
    """How far ``new`` moves the outputs at the keys ``old`` wrote through."""
    return sum(float((old.keys[n].double() @ new.dense(n).double()).norm()) for n in new.module_names)


def test_compute_protects_the_live_edits_when_the_editor_asks(tiny_model_dir: Path) -> None:
    runtime = ModelRuntime(tiny_model_dir, None, device="cpu")
    first = runtime.compute([FIRST])  # on the base: nothing live yet
    assert first.keys and set(first.keys) == set(runtime.module_names)
    # the stored blob carries the keys, so a replayed delta protects the same edit after a restart
    replayed = runtime.delta_from_bytes(first.to_bytes())
    runtime.materialize(1, [(1, replayed)])

    unprotected = runtime.compute([SECOND])
    runtime.editor.config = replace(runtime.editor.config, live_weight=100.0)
    protected = runtime.compute([SECOND])
    assert _moved(runtime, first, protected) < 0.5 * _moved(runtime, first, unprotected)
