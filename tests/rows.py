"""Look-alikes of database rows, for tests of run state without a database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace


def row_like(run_id: uuid.UUID | None = None) -> SimpleNamespace:
    """A look-alike of a Run row, enough for RunState.start."""
    return SimpleNamespace(
        pk=run_id or uuid.uuid4(),
        client_run_id="client-1",
        turn_id=7,
        turn=SimpleNamespace(index=0, prompt="Why is the sky blue?"),
        created_at=datetime(2026, 6, 1, 12, 0, tzinfo=UTC),
        analyst_model="sim/analyst",
        writer_model="sim/writer",
        analysis=None,
        label_map={},
        config={},
    )
