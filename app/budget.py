"""The side-effect budget: when the live edits together have spent it.

The worker's gate stores its measurement of every committed state against the base model on the
version row (``side_effects``: ``changed`` of ``total`` canaries); the API refuses new edits
(409 ``capacity``) and /readyz warns once the latest version has spent the budget.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import repository as repo


def budget_spent(session: Session, budget: float) -> dict[str, Any] | None:
    """The latest version's side effects when no canary is left to spend under ``budget`` (one
    more changed canary would exceed it), else None. A version not measured (yet) spends nothing."""
    latest = repo.latest_version(session)
    measured = latest.side_effects if latest is not None else None
    return measured if budget_is_spent(measured, budget) else None


def budget_is_spent(side_effects: dict[str, Any] | None, budget: float) -> bool:
    if not side_effects or not side_effects.get("total") or budget >= 1:
        return False
    return bool(side_effects["changed"] + 1 > budget * side_effects["total"])
