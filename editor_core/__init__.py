"""editor_core: the SMEdit model-editing library (torch + transformers only; no web, no database)."""

from editor_core.types import EditRequest, LocalityProbe

__all__ = ["EditRequest", "LocalityProbe"]
