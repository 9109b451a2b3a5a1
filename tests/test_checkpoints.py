"""Checkpoints (chat.runs.store.keep_checkpointing): a finished Markdown block is written soon.

Issue 10, item 9: text already on screen must not be taken away by a crash. Without a database:
a fake store records what each checkpoint would have written, and when.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from chat.fusion.types import FinalDelta, ModelSpec, PanelDelta
from chat.runs.state import RunState
from chat.runs.store import Checkpoint, keep_checkpointing
from tests.rows import row_like


class FakeStore:
    """Records (seconds since start, member text, answer) for each checkpoint; counts heartbeats."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.checkpoints: list[tuple[float, str, str]] = []
        self.heartbeats = 0

    def write(self, checkpoints: list[Checkpoint], heartbeats: list[str]) -> None:
        for c in checkpoints:
            member = c.members.get(0, {})
            self.checkpoints.append((time.monotonic() - self.t0, member.get("content", ""), c.run["answer"]))
        self.heartbeats += len(heartbeats) - len(checkpoints)

    def finalize(self, state: RunState, *, conversation_id: int, wall_ms: int) -> None:
        raise AssertionError("not in these tests")


def new_state() -> RunState:
    row = row_like(uuid.UUID(int=1))
    return RunState.start(row, [ModelSpec(model="sim/a")])


@pytest.fixture
def interval_1s(settings):
    settings.FUSION_CHECKPOINT_INTERVAL_S = 1.0


async def run_checkpointer(state: RunState, store: FakeStore, script) -> None:
    task = asyncio.create_task(keep_checkpointing(state, store))
    try:
        await script()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.usefixtures("interval_1s")
class TestBlockEndCheckpoints:
    async def test_a_finished_member_block_is_written_within_a_fraction_of_the_interval(self):
        state, store = new_state(), FakeStore()

        async def script() -> None:
            await asyncio.sleep(0.3)  # past the minimum gap since the checkpointer started
            state.apply(PanelDelta(slot=0, model="sim/a", delta="The sky scatters blue light.\n\n"))
            state.apply(PanelDelta(slot=0, model="sim/a", delta="Red"))  # the paragraph is now finished
            assert state.block_finished
            await asyncio.sleep(0.25)

        await run_checkpointer(state, store, script)
        assert store.checkpoints, "the finished block waited for the full interval"
        at, text, _ = store.checkpoints[0]
        assert text.startswith("The sky scatters blue light.") and at < 0.55
        assert not state.block_finished

    async def test_a_finished_block_of_the_fused_answer_is_written_soon_too(self):
        state, store = new_state(), FakeStore()

        async def script() -> None:
            await asyncio.sleep(0.3)
            state.apply(FinalDelta(delta="# Answer\n\nRayleigh"))
            await asyncio.sleep(0.25)

        await run_checkpointer(state, store, script)
        assert store.checkpoints and store.checkpoints[0][2].startswith("# Answer")

    async def test_text_without_a_finished_block_still_waits_for_the_interval(self):
        state, store = new_state(), FakeStore()

        async def script() -> None:
            await asyncio.sleep(0.3)
            state.apply(PanelDelta(slot=0, model="sim/a", delta="Still in the first paragraph"))
            await asyncio.sleep(0.4)
            assert store.checkpoints == []
            await asyncio.sleep(0.45)  # the interval (1 s) has passed

        await run_checkpointer(state, store, script)
        assert len(store.checkpoints) == 1 and store.checkpoints[0][0] >= 0.95

    async def test_blocks_finishing_fast_write_at_most_every_250_ms(self):
        state, store = new_state(), FakeStore()

        async def script() -> None:
            for i in range(40):  # a block every 25 ms for a second
                state.apply(PanelDelta(slot=0, model="sim/a", delta=f"Line {i}.\n\n"))
                await asyncio.sleep(0.025)

        await run_checkpointer(state, store, script)
        times = [at for at, _, _ in store.checkpoints]
        assert 2 <= len(times) <= 4
        assert all(b - a >= 0.24 for a, b in zip(times, times[1:], strict=False))

    async def test_a_quiet_run_still_beats_its_heartbeat_at_the_interval(self, settings):
        settings.FUSION_CHECKPOINT_INTERVAL_S = 0.2
        state, store = new_state(), FakeStore()
        await run_checkpointer(state, store, lambda: asyncio.sleep(0.5))
        assert store.checkpoints == [] and store.heartbeats == 2
