"""The editing worker: the one writer of versions (see :mod:`app.worker.loop`)."""

from app.worker.loop import Worker
from app.worker.replay import DeltaCache, ReplayMismatch, bootstrap_and_replay

__all__ = ["DeltaCache", "ReplayMismatch", "Worker", "bootstrap_and_replay"]
