"""Websockets against a live Daphne: exact origins, sessions that end, frame sizes, nesting, floods.

These drive real sockets (the ``websockets`` client) against ``python -m daphne`` on a file
SQLite database, because the failures they protect against (autobahn's frame limit, a socket
that outlives its session, Origin headers a browser sends) only show on a real server.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.live import LiveApp, live_app

pytestmark = pytest.mark.asyncio

FRAME_LIMIT = 64 * 1024
# A 126 KB Python code block: Pygments makes well over a megabyte of HTML of it.
BIG_CODE = (
    "```python\n"
    + "".join(
        f"def function_{i}(alpha, beta):\n    return {{'value': alpha * {i} + beta, \"name\": 'f{i}'}}\n"
        for i in range(1700)
    )
    + "```\n"
)
SCRIPTS: dict[str, Any] = {
    "sim/a": {"ttft_ms": 20, "tokens_per_s": 4000, "chunk_chars": 40},
    "sim/slow": {"ttft_ms": 50, "tokens_per_s": 4, "chunk_chars": 4, "content": "slow " * 400},
    "sim/bigcode": {"ttft_ms": 20, "chunk_chars": 8000, "content": BIG_CODE},
    "sim/analyst": {},
    "sim/writer": {"ttft_ms": 20, "tokens_per_s": 4000, "chunk_chars": 40},
}
FAST_PANEL = {"members": [{"model": "sim/a"}], "analyst": {"model": "sim/analyst"}, "writer": {"model": "sim/writer"}}
SLOW_PANEL = {
    "members": [{"model": "sim/slow"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}
BIG_PANEL = {
    "members": [{"model": "sim/bigcode"}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}
PASSWORD = "correct-horse-battery-staple-7"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    env = {
        "FUSION_SESSION_RECHECK_S": "1",
        "FUSION_MAX_WS_FRAME_BYTES": str(FRAME_LIMIT),
        "FUSION_WS_RATE_PER_S": "5",
        "FUSION_WS_BURST": "20",
        "FUSION_WS_USER_RATE_PER_S": "50",
        "FUSION_WS_USER_BURST": "200",
        "FUSION_WS_FLOOD_CLOSE_AFTER": "30",
        "FUSION_RUN_SWEEP_INTERVAL_S": "1",
        "FUSION_CHECKPOINT_INTERVAL_S": "0.5",
        "FUSION_MAX_CONCURRENT_RUNS_PER_USER": "20",
        "CSRF_TRUSTED_ORIGINS": "https://fusion.example.org",
    }
    with live_app(tmp_path_factory.mktemp("ws-security"), SCRIPTS, env, name="ws-security") as live:
        yield live


_users = 0


def new_user(app: LiveApp) -> tuple[str, dict[str, int], httpx.Client]:
    global _users
    _users += 1
    name = f"user{_users}_{uuid.uuid4().hex[:6]}"
    ids = app.make_user(name, PASSWORD)
    return name, ids, app.sign_in(name, PASSWORD)


def socket_for(
    app: LiveApp,
    client: httpx.Client,
    conversation: int,
    *,
    origin: str | None = None,
    max_size: int | None = FRAME_LIMIT,
) -> Any:
    return connect(
        f"{app.ws_url}/ws/conversations/{conversation}/",
        origin=origin or app.origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": app.cookie_header(client)},
        max_size=max_size,
        open_timeout=10,
    )


async def frames(ws: Any, timeout: float = 20) -> Any:
    """Every event the server sends (batches opened, chunked frames joined) until *timeout*."""
    deadline = time.monotonic() + timeout
    parts: list[str] = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout=max(0.05, deadline - time.monotonic()))
        frame = json.loads(raw)
        if frame["type"] == "chunk":
            parts.append(frame["data"])
            if not frame["last"]:
                continue
            frame, parts = json.loads("".join(parts)), []
        for event in frame["events"] if frame["type"] == "batch" else [frame]:
            yield event


async def wait_for(ws: Any, kinds: set[str], timeout: float = 20) -> list[dict[str, Any]]:
    seen = []
    async for event in frames(ws, timeout):
        seen.append(event)
        if event["type"] in kinds:
            return seen
    raise AssertionError("unreachable")


async def close_code(ws: Any, within: float) -> int | None:
    """Read until the server closes the socket; its close code (None: still open after *within*)."""
    try:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return None


def start_frame(panel: dict[str, Any], prompt: str = "Is the sky blue?") -> str:
    return json.dumps({"type": "start", "run_id": str(uuid.uuid4()), "prompt": prompt, "panel": panel})


async def assert_start_refused(ws: Any) -> None:
    """A start on an ended session: the socket closes with 4401 (the send may already fail)."""
    try:
        await ws.send(start_frame(FAST_PANEL))
    except ConnectionClosed:
        pass
    assert await close_code(ws, within=5) == 4401


def assert_nothing_paid(app: LiveApp, ids: dict[str, int], requests_before: int) -> None:
    assert app.orm(f"result = Run.objects.filter(user_id={ids['user']}).count()") == 0
    assert len(app.upstream.requests) == requests_before


def sign_out(app: LiveApp, client: httpx.Client) -> None:
    response = client.post(
        "/accounts/logout/",
        data={"csrfmiddlewaretoken": client.cookies.get("csrftoken", "")},
        headers={"Referer": f"{app.url}/"},
    )
    assert response.status_code in (200, 302)


class TestOrigin:
    async def test_the_sites_own_origin_is_accepted(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "snapshot"

    @pytest.mark.parametrize(
        "origin",
        [
            "http://127.0.0.1:18322",  # another port of the same host (the attack that worked)
            "https://127.0.0.1:{port}",  # the other scheme, same host and port
            "https://127.0.0.1",
            "http://localhost:3000",
            "http://127.0.0.1.evil.example:{port}",
            "null",
        ],
    )
    async def test_another_origin_on_the_same_host_is_refused(self, app, origin):
        _, ids, client = new_user(app)
        with pytest.raises(InvalidStatus) as refused:
            async with socket_for(app, client, ids["conversation"], origin=origin.format(port=app.port)):
                pass
        assert refused.value.response.status_code == 403

    async def test_a_socket_without_origin_is_refused(self, app):
        _, ids, client = new_user(app)
        with pytest.raises(InvalidStatus):
            async with connect(
                f"{app.ws_url}/ws/conversations/{ids['conversation']}/",
                additional_headers={"Cookie": app.cookie_header(client)},
                open_timeout=10,
            ):
                pass

    async def test_an_origin_listed_in_csrf_trusted_origins_is_accepted(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"], origin="https://fusion.example.org") as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"


class TestSessionEnds:
    async def test_signing_out_closes_an_idle_socket_within_five_seconds(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()  # snapshot
            sign_out(app, client)
            started = time.monotonic()
            assert await close_code(ws, within=5) == 4401
            assert time.monotonic() - started < 5

    async def test_a_password_changed_in_another_browser_ends_this_socket(self, app):
        name, ids, client = new_user(app)
        other = app.sign_in(name, PASSWORD)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            changed = app.post_form(
                other,
                "/accounts/password/",
                {
                    "old_password": PASSWORD,
                    "new_password1": "another-long-passphrase-9",
                    "new_password2": "another-long-passphrase-9",
                },
            )
            assert changed.status_code == 302, changed.text[:500]
            assert await close_code(ws, within=5) == 4401
        # The browser that changed it stays signed in.
        async with socket_for(app, other, ids["conversation"]) as ws:
            assert json.loads(await ws.recv())["type"] == "snapshot"

    async def test_a_start_right_after_the_session_ended_starts_no_paid_run(self, app):
        _, ids, client = new_user(app)
        before = len(app.upstream.requests)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await app.aorm(
                f"from django.contrib.sessions.models import Session\nSession.objects.all().delete()\n"
                f"result = Run.objects.filter(user_id={ids['user']}).count()"
            )
            # At once: a steering frame checks the session itself, never from a cache.
            await assert_start_refused(ws)
        assert_nothing_paid(app, ids, before)

    async def test_a_start_right_after_a_password_change_elsewhere_starts_no_paid_run(self, app):
        name, ids, client = new_user(app)
        other = app.sign_in(name, PASSWORD)
        before = len(app.upstream.requests)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            changed = app.post_form(
                other,
                "/accounts/password/",
                {
                    "old_password": PASSWORD,
                    "new_password1": "yet-another-passphrase-4",
                    "new_password2": "yet-another-passphrase-4",
                },
            )
            assert changed.status_code == 302
            await assert_start_refused(ws)
        assert_nothing_paid(app, ids, before)

    async def test_another_users_conversation_closes_with_4404_after_accept(self, app):
        _, mine, client = new_user(app)
        _, theirs, _ = new_user(app)
        async with socket_for(app, client, theirs["conversation"]) as ws:
            assert await close_code(ws, within=5) == 4404
        async with socket_for(app, client, 10**9) as ws:
            assert await close_code(ws, within=5) == 4404

    async def test_a_deactivated_users_socket_closes_and_their_runs_are_cancelled(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await ws.send(start_frame(SLOW_PANEL))
            await wait_for(ws, {"panel.delta"})
            await app.aorm(f"User.objects.filter(pk={ids['user']}).update(is_active=False)")
            assert await close_code(ws, within=5) == 4401
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = await app.aorm(
                f"result = list(Run.objects.filter(user_id={ids['user']}).values_list('status', flat=True))"
            )
            if status != ["running"]:
                break
            await asyncio.sleep(0.3)
        assert status == ["cancelled"]
        assert "sim/slow" in app.upstream.disconnects

    async def test_a_signed_out_users_run_keeps_going_and_can_be_watched_after_sign_in(self, app):
        name, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await ws.send(start_frame(SLOW_PANEL))
            await wait_for(ws, {"panel.delta"})
            sign_out(app, client)
            assert await close_code(ws, within=5) == 4401
        again = app.sign_in(name, PASSWORD)
        async with socket_for(app, again, ids["conversation"]) as ws:
            snapshot = json.loads(await ws.recv())
            assert snapshot["type"] == "snapshot"
            assert [r["status"] for r in snapshot["runs"]] == ["running"]
            await ws.send(json.dumps({"type": "stop", "run_id": snapshot["runs"][0]["client_run_id"]}))
            await wait_for(ws, {"failed"})


class TestFrameSize:
    async def test_a_huge_rendered_answer_arrives_in_frames_under_the_limit(self, app):
        _, ids, client = new_user(app)
        # max_size=FRAME_LIMIT: a bigger frame from the server fails this client (close 1009).
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await ws.send(start_frame(BIG_PANEL))
            events = await wait_for(ws, {"completed", "failed"}, timeout=60)
            completed = next(e for e in events if e["type"] == "panel.completed")
            assert len(completed["html"]) > 2 * FRAME_LIMIT
            assert "function_1699" in completed["html"]
            assert events[-1]["type"] == "completed"

    async def test_a_reconnect_snapshot_of_a_huge_run_arrives_whole(self, app):
        _, ids, client = new_user(app)
        panel = {
            "members": [{"model": "sim/bigcode"}, {"model": "sim/slow"}],
            "analyst": {"model": "sim/analyst"},
            "writer": {"model": "sim/writer"},
        }
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await ws.send(start_frame(panel))
            events = await wait_for(ws, {"panel.completed"}, timeout=30)
            run_id = events[-1]["run"]
        async with socket_for(app, client, ids["conversation"]) as ws:
            snapshot = await wait_for(ws, {"snapshot"})
            run = snapshot[-1]["runs"][0]
            assert run["run"] == run_id
            big = next(m for m in run["members"] if m["model"] == "sim/bigcode")
            assert "function_1699" in big["html"]
            await ws.send(json.dumps({"type": "stop", "run_id": run["client_run_id"]}))
            await wait_for(ws, {"failed"})


class TestBadFrames:
    async def test_deeply_nested_json_gets_an_error_frame_and_the_socket_stays_open(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            for raw in (
                "[" * 30000,
                '{"type": "ping", "x": ' + "[" * 5000 + "]" * 5000 + "}",
                "{" * 20000,
                '{"type": "start", "preset": ' + "9" * 5000 + "}",
            ):  # past Python's int-digit limit
                await ws.send(raw)
                error = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert error["type"] == "error" and error["code"] == "invalid", error
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}


class TestRateLimit:
    async def test_a_burst_of_frames_past_the_bucket_gets_rate_limited_with_retry_after(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            for _ in range(25):
                await ws.send(json.dumps({"type": "ping"}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(25)]
            pongs = [r for r in replies if r["type"] == "pong"]
            limited = [r for r in replies if r.get("code") == "rate_limited"]
            assert 18 <= len(pongs) <= 21 and len(limited) == 25 - len(pongs)
            assert all(0 < r["retry_after"] <= 1 for r in limited)
            await asyncio.sleep(limited[-1]["retry_after"] + 0.3)
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}

    async def test_invalid_starts_count_too_and_a_client_that_keeps_flooding_is_closed(self, app):
        _, ids, client = new_user(app)
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            bad = json.dumps({"type": "start", "run_id": "nope", "prompt": 1})
            try:
                for _ in range(3000):
                    await ws.send(bad)
            except ConnectionClosed:
                pass
            assert await close_code(ws, within=5) == 4429

    async def test_the_user_bucket_is_shared_by_the_users_sockets(self, app):
        _, ids, client = new_user(app)
        opened = [socket_for(app, client, ids["conversation"]) for _ in range(12)]
        sockets = [await s.__aenter__() for s in opened]
        try:
            for ws in sockets:
                await ws.recv()
            # 12 sockets × 19 pings = 228 frames: within each socket's bucket (20), past the user's (200).
            for ws in sockets:
                for _ in range(19):
                    await ws.send(json.dumps({"type": "ping"}))
            limited = 0
            for ws in sockets:
                for _ in range(19):
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    limited += reply.get("code") == "rate_limited"
            assert limited >= 20
        finally:
            for s in opened:
                await s.__aexit__(None, None, None)


class TestRecoveryWithoutMakeRun:
    async def test_a_run_left_by_a_dead_process_is_interrupted_and_releases_its_hold(self, app):
        _, ids, client = new_user(app)
        run = app.orm(
            "from datetime import timedelta\nfrom django.utils import timezone\n"
            f"c = Conversation.objects.get(pk={ids['conversation']})\n"
            "t = Turn.objects.create(conversation=c, index=0, prompt='left behind')\n"
            f"r = Run.objects.create(user_id={ids['user']}, conversation=c, turn=t, client_run_id='{uuid.uuid4()}',"
            " config={}, status='running', process_id='dead-host:1:0', reserved_usd=3,"
            " heartbeat_at=timezone.now() - timedelta(minutes=5))\n"
            "MemberResponse.objects.create(run=r, slot=0, model='sim/a', status='streaming', content='partial')\n"
            "result = str(r.pk)"
        )
        httpx.get(f"{app.url}/healthz")  # any request: the sweep is running in every live process
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = app.orm(f"r = Run.objects.get(pk='{run}')\nresult = [r.status, str(r.reserved_usd)]")
            if row[0] != "running":
                break
            await asyncio.sleep(0.5)
        assert row[0] == "interrupted"
        assert float(row[1]) == 0
        # Its conversation's slot is free: a new run starts there.
        async with socket_for(app, client, ids["conversation"]) as ws:
            await ws.recv()
            await ws.send(start_frame(FAST_PANEL))
            events = await wait_for(ws, {"completed", "error"})
            assert events[-1]["type"] == "completed", events[-1]
