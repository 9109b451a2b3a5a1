"""The scaled deployment: two Daphne processes sharing one PostgreSQL database and one Redis.

DESIGN.md ("Streaming and runs"): a run is owned by a task in ONE server process; a client that
reconnects gets a snapshot and then live deltas, without gaps or duplicates, whichever worker
process it lands on. Here process A owns the runs and process B does not, so B's snapshots come
from A's database checkpoints (``chat.runs.run_snapshot`` → ``run_state``) and B's live frames
come through Redis (channels_redis).

Module fixture ``cluster``:

* a fresh PostgreSQL database ``fusion_scaled_<random>`` (created through the ``postgres`` db,
  dropped at the end), migrated with ``manage.py migrate``;
* one user and a few conversations, made by a small Django script in a subprocess;
* the scripted upstream (``chat.testing.scripted.ScriptedUpstream``) in a thread: members take
  ~3–4 s per answer, ``sim/slow`` ~20 s (always still running when a test stops it);
* two ``python -m daphne`` processes on free ports, same ``DATABASE_URL``, same ``REDIS_URL``
  (db ``FUSION_TEST_REDIS_DB``, default 7, flushed before and after), same secret key;
  logs in ``test-artifacts/scaled-daphne-{a,b}.log``;
* a session cookie from signing in over HTTP (on A; the session lives in the database).

The Daphne processes run with the arguments of ``docs/deploy/fusion@.service``'s ExecStart
(``--proxy-headers`` among them), and trust ``X-Forwarded-Proto: https`` as they do in production
under ``FUSION_BEHIND_TLS=true`` (``DJANGO_SECURE_PROXY_SSL_HEADER``; the rest of that switch —
HTTPS redirect, secure cookies — needs TLS, which the tests do not have).

Module fixture ``nginx``: ``/usr/sbin/nginx`` running ``docs/deploy/nginx.conf`` made plain HTTP
by ``tests/nginx.py`` (its upstream: the two Daphne processes; pid, logs and temp files in a temp
dir), stopped at the end. The tests under "through nginx" use it like a browser would: sign-in,
a turn, sockets spread over both processes, the Origin check, health, static files, and the proxy
headers a client must not be able to forge.

Without PostgreSQL or Redis on 127.0.0.1 the module is skipped — except with ``CI=true``, where
that is a failure (``.ci/run`` starts both services). The same goes for a missing
``/usr/sbin/nginx`` (``make test`` installs Debian's package).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.testing.scripted import ScriptedUpstream
from tests.daphne import free_port, stop_process, wait_until_healthy
from tests.nginx import (
    NGINX,
    SITE,
    UPSTREAM_HEADER,
    Nginx,
    check_config,
    production_with_certificate,
    running_nginx,
)

pytestmark = pytest.mark.scaled

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DEPLOY = ROOT / "docs" / "deploy"
UNIT = DEPLOY / "fusion@.service"
IN_CI = os.environ.get("CI", "").strip().lower() == "true"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_DB = int(os.environ.get("FUSION_TEST_REDIS_DB", "7"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
PASSWORD = "scaled-Deployment-pw-1"

# Longer than channels_redis' BZPOPMIN wait (5 s): what idles that long must survive it.
IDLE_S = 6.5
CONTROL_AGE_S = 6.5

PANEL_MODELS = ["sim/atlas", "sim/borealis", "sim/cirrus"]
SLOW = "sim/slow"
SCRIPTS: dict[str, dict[str, Any]] = {
    # ~750 generated characters each at 50–60 tokens/s: ~3–4 s per answer.
    "sim/atlas": {"ttft_ms": 250, "tokens_per_s": 60, "chunk_chars": 10, "style": "structured"},
    "sim/borealis": {"ttft_ms": 300, "tokens_per_s": 55, "chunk_chars": 10, "style": "narrative"},
    "sim/cirrus": {"ttft_ms": 350, "tokens_per_s": 50, "chunk_chars": 8, "style": "concise"},
    # ~20 s: still streaming whenever a test stops it.
    SLOW: {"ttft_ms": 150, "tokens_per_s": 8, "chunk_chars": 6, "style": "narrative"},
    "sim/analyst": {"ttft_ms": 150, "tokens_per_s": 800, "chunk_chars": 64},
    "sim/writer": {"ttft_ms": 150, "tokens_per_s": 150, "chunk_chars": 16},
}
PANEL = {
    "members": [{"model": m} for m in PANEL_MODELS],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}
SLOW_PANEL = {
    "members": [{"model": SLOW}, {"model": SLOW}],
    "analyst": {"model": "sim/analyst"},
    "writer": {"model": "sim/writer"},
}

MAKE_USER = """
import json, sys, django
django.setup()
from django.contrib.auth import get_user_model
from chat.models import Conversation
user = get_user_model().objects.create_user(sys.argv[1], password=sys.argv[2])
print(json.dumps([Conversation.objects.create(user=user, title=f"scaled {i}").pk for i in range(int(sys.argv[3]))]))
"""


# --------------------------------------------------------------------------- services and processes


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Scaled-deployment tests cannot run under CI: {reason}.", pytrace=False)
    pytest.skip(f"Scaled-deployment tests skipped: {reason}.")


def _pg_connect(dbname: str = "postgres") -> Any:
    import psycopg

    return psycopg.connect(dbname=dbname, connect_timeout=3, autocommit=True, **PG)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log ---\n" + "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Cluster:
    a: Server
    b: Server
    upstream: ScriptedUpstream
    dbname: str
    username: str
    session: str
    conversations: list[int]

    def logs(self) -> str:
        return self.a.log_tail() + "\n" + self.b.log_tail()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with _pg_connect(self.dbname) as conn:
            return conn.execute(sql, params).fetchall()

    def log_marks(self) -> tuple[int, int]:
        return len(self.a.log_text()), len(self.b.log_text())

    def assert_no_tracebacks_since(self, marks: tuple[int, int]) -> None:
        for server, mark in zip((self.a, self.b), marks):
            new = server.log_text()[mark:]
            assert "Traceback" not in new, f"{server.name} logged a traceback:\n{new[-4000:]}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        stop_process(process)


def daphne_command(port: int) -> list[str]:
    """docs/deploy/fusion@.service's ExecStart for instance *port*, with this virtualenv's Python."""
    [line] = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    args = shlex.split(line.removeprefix("ExecStart="))
    assert Path(args[0]).name == "daphne", f"{UNIT.name}: ExecStart does not run daphne: {args}"
    return [sys.executable, "-m", "daphne", *(arg.replace("%i", str(port)) for arg in args[1:])]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        _pg_connect().close()
    except Exception as exc:  # psycopg.OperationalError, or psycopg missing
        _unavailable(f"PostgreSQL on 127.0.0.1:5432 is unreachable ({exc})")
    import redis

    flush = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        flush.ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis on 127.0.0.1:6379 is unreachable ({exc})")

    ARTIFACTS.mkdir(exist_ok=True)
    dbname = f"fusion_scaled_{secrets.token_hex(4)}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    flush.flushdb()
    upstream: ScriptedUpstream | None = None
    servers: list[Server] = []
    logs: list[Any] = []
    try:
        upstream = ScriptedUpstream(SCRIPTS, time_scale=1.0).start_in_thread()
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "fusionsite.settings",
            "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}",
            "REDIS_URL": REDIS_URL,
            # Both processes must sign and check sessions alike.
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DJANGO_DEBUG": "false",
            "ALLOWED_HOSTS": "127.0.0.1",
            "CSRF_TRUSTED_ORIGINS": "",
            "OPENROUTER_BASE_URL": upstream.base_url,
            "OPENROUTER_API_KEY": "x",
            "FUSION_ALLOW_SERVER_KEY": "true",
            "FUSION_DAILY_SPEND_LIMIT_USD": "0",
            "FUSION_CHECKPOINT_INTERVAL_S": "0.3",
            "FUSION_MAX_CONCURRENT_RUNS_PER_USER": "10",
            "FUSION_LOGIN_RATE_PER_MIN": "0",  # the per-address sign-in bucket is tested elsewhere
            "FUSION_PROVIDERS": "",
            "FUSION_SEARCH_BACKEND": "",
            "FUSION_DEFAULT_PANEL": ",".join(PANEL_MODELS),
            "FUSION_DEFAULT_ANALYST": "sim/analyst",
            "FUSION_DEFAULT_WRITER": "sim/writer",
            "FUSION_DEMO": "false",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # What FUSION_BEHIND_TLS=true trusts from nginx; the rest of it needs TLS.
            "FUSION_BEHIND_TLS": "false",
            "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
        }
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if migrate.returncode != 0:
            pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}", pytrace=False)
        username = f"scaled-{secrets.token_hex(3)}"
        made = subprocess.run(
            [sys.executable, "-c", MAKE_USER, username, PASSWORD, "6"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if made.returncode != 0:
            pytest.fail(f"creating the user failed:\n{made.stdout}\n{made.stderr}", pytrace=False)
        conversations = json.loads(made.stdout.strip().splitlines()[-1])

        for name in ("a", "b"):
            port = free_port()
            log_path = ARTIFACTS / f"scaled-daphne-{name}.log"
            log = log_path.open("wb")
            logs.append(log)
            process = subprocess.Popen(daphne_command(port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            servers.append(Server(name=f"daphne-{name}", port=port, process=process, log_path=log_path))
        for server in servers:
            wait_until_healthy(server.url, server.process, name=server.name, log_tail=server.log_tail)

        session = _http_login(servers[0].url, username)
        yield Cluster(
            a=servers[0],
            b=servers[1],
            upstream=upstream,
            dbname=dbname,
            username=username,
            session=session,
            conversations=conversations,
        )
    finally:
        for server in servers:
            _stop(server.process)
        for log in logs:
            log.close()
        if upstream is not None:
            upstream.stop()
        with contextlib.suppress(Exception):
            flush.flushdb()
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _http_login(base: str, username: str) -> str:
    """Sign in like a browser: GET the form (CSRF cookie), POST the credentials; the sessionid."""
    with httpx.Client(base_url=base, follow_redirects=False, timeout=20) as c:
        r = c.get("/accounts/login/")
        token = c.cookies.get("csrftoken")
        assert r.status_code == 200 and token, f"login form: {r.status_code}"
        r = c.post(
            "/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/"},
            headers={"Referer": base + "/accounts/login/"},
        )
        assert r.status_code in (302, 303), f"login: {r.status_code}"
        session = c.cookies.get("sessionid")
        assert session, "no session cookie after signing in"
        return session


# --------------------------------------------------------------------------- websocket client


class Socket:
    """One conversation websocket; every event (batches flattened) goes into a queue."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = json.loads(raw)
                for ev in frame.get("events", []) if frame.get("type") == "batch" else [frame]:
                    self.events.append(ev)
                    self.queue.put_nowait(ev)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def next(self, timeout: float) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no frame within {timeout} s; last frames: {[e.get('type') for e in self.events[-10:]]}"
            ) from None

    async def wait_for(self, pred: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: the awaited frame did not come within {timeout} s; last frames: "
                    f"{[(e.get('type'), e.get('code'), e.get('message')) for e in self.events[-10:]]}"
                )
            ev = await self.next(left)
            if pred(ev):
                return ev


@contextlib.asynccontextmanager
async def ws_connect(
    port: int,
    conversation_id: int,
    *,
    session: str | None,
    origin: str,
    name: str,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Socket]:
    """A conversation websocket to 127.0.0.1:*port* (a Daphne, or nginx in front of them)."""
    from websockets.asyncio.client import connect

    extra = {**({"Cookie": f"sessionid={session}"} if session else {}), **(headers or {})}
    async with connect(
        f"ws://127.0.0.1:{port}/ws/conversations/{conversation_id}/",
        origin=origin,
        additional_headers=extra,
        max_size=None,
        open_timeout=10,
        ping_interval=None,
        close_timeout=2,
    ) as ws:
        sock = Socket(ws, name)
        try:
            yield sock
        finally:
            sock.reader.cancel()


def open_socket(
    cluster: Cluster, server: Server, conversation_id: int
) -> contextlib.AbstractAsyncContextManager[Socket]:
    return ws_connect(
        server.port,
        conversation_id,
        session=cluster.session,
        origin=f"http://127.0.0.1:{server.port}",
        name=server.name,
    )


def start_frame(panel: dict[str, Any], prompt: str) -> tuple[str, dict[str, Any]]:
    client_run_id = str(uuid.uuid4())
    return client_run_id, {"type": "start", "run_id": client_run_id, "prompt": prompt, "panel": panel}


@dataclass
class Rebuild:
    """A client's copy of one run's texts, kept by the offset rules of docs/protocol.md.

    A delta whose offset equals the text's length is applied; a smaller offset is a duplicate
    (the overlap must match what we have; only the new part is added); a larger one is a gap:
    send ``subscribe`` (one at a time) and take the new snapshot's text — unless what we have
    already extends it (a snapshot older than deltas we applied). A stream still short of the
    highest offset seen after a snapshot subscribes again (the snapshot was older than the deltas
    already seen) — at most every 0.1 s.
    """

    run: str
    texts: dict[str, str] = field(default_factory=dict)
    seen_end: dict[str, int] = field(default_factory=dict)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    applied: int = 0
    overlaps: int = 0
    mismatches: list[str] = field(default_factory=list)
    gaps: int = 0
    subscribes: int = 0
    deltas_seen: int = 0
    awaiting: bool = False
    terminal: dict[str, Any] | None = None
    first_gap_at: float | None = None
    synced_at: float | None = None
    member_deltas_after_sync: int = 0

    def unresolved(self) -> list[str]:
        return [k for k, end in self.seen_end.items() if len(self.texts.get(k, "")) < end]

    def take(self, state: dict[str, Any]) -> None:
        self.snapshots.append(state)
        for key, content in [(f"m{m['slot']}", m["content"]) for m in state["members"]] + [
            ("final", state["final"]["content"])
        ]:
            have = self.texts.get(key, "")
            if not (len(have) > len(content) and have.startswith(content)):
                self.texts[key] = content

    def apply_delta(self, key: str, offset: int, delta: str) -> bool:
        """False on a gap."""
        self.deltas_seen += 1
        self.seen_end[key] = max(self.seen_end.get(key, 0), offset + len(delta))
        text = self.texts.get(key, "")
        if offset > len(text):
            self.gaps += 1
            self.first_gap_at = self.first_gap_at or time.monotonic()
            self.synced_at = None
            return False
        if offset < len(text):
            overlap = len(text) - offset
            if text[offset : offset + len(delta)] != delta[:overlap]:
                self.mismatches.append(f"{key}@{offset}: have {text[offset:][:30]!r}, delta {delta[:30]!r}")
            self.overlaps += 1
            delta = delta[overlap:]
        else:
            self.applied += 1
            if self.synced_at is not None and key != "final":
                self.member_deltas_after_sync += 1
        self.texts[key] = text + delta
        return True

    async def follow(self, sock: Socket, timeout: float = 30) -> Rebuild:
        """Apply *sock*'s frames for this run until ``completed`` or ``failed``."""
        deadline = time.monotonic() + timeout
        while self.terminal is None:
            ev = await sock.next(max(0.1, deadline - time.monotonic()))
            kind = ev.get("type")
            if kind == "snapshot":
                self.awaiting = False
                state = next((s for s in ev["runs"] if s["run"] == self.run), None)
                if state is not None:
                    self.take(state)
                if self.first_gap_at is not None and self.synced_at is None and not self.unresolved():
                    self.synced_at = time.monotonic()
                if self.unresolved():
                    await asyncio.sleep(0.1)
                    await self._subscribe(sock)
                continue
            if ev.get("run") != self.run:
                continue
            if kind == "panel.added" and ev.get("attempt", 1) > 1:
                self.texts[f"m{ev['slot']}"], self.seen_end[f"m{ev['slot']}"] = "", 0
            elif kind == "final.started":
                self.texts["final"], self.seen_end["final"] = "", 0
            elif kind in ("panel.delta", "final.delta"):
                key = f"m{ev['slot']}" if kind == "panel.delta" else "final"
                if not self.apply_delta(key, int(ev["offset"]), ev["delta"]) and not self.awaiting:
                    await self._subscribe(sock)
            elif kind in ("completed", "failed"):
                self.terminal = ev
        return self

    async def _subscribe(self, sock: Socket) -> None:
        self.awaiting = True
        self.subscribes += 1
        await sock.send({"type": "subscribe"})

    def stats(self) -> dict[str, Any]:
        catch_up = None if self.first_gap_at is None or self.synced_at is None else self.synced_at - self.first_gap_at
        return {
            "snapshots": len(self.snapshots),
            "deltas": self.deltas_seen,
            "applied": self.applied,
            "overlaps": self.overlaps,
            "gaps": self.gaps,
            "subscribes": self.subscribes,
            "catch_up_s": None if catch_up is None else round(catch_up, 2),
            "member_deltas_after_sync": self.member_deltas_after_sync,
            "unresolved": self.unresolved(),
        }


def stored(cluster: Cluster, run_id: str) -> tuple[dict[str, str], str, str]:
    """(texts by stream, run status, owning process id) as stored in PostgreSQL."""
    rows = cluster.query("SELECT slot, content FROM chat_memberresponse WHERE run_id = %s ORDER BY slot", run_id)
    [(answer, status, process_id)] = cluster.query(
        "SELECT answer, status, process_id FROM chat_run WHERE id = %s", run_id
    )
    return {**{f"m{slot}": content for slot, content in rows}, "final": answer}, status, process_id


def running_runs(cluster: Cluster, conversation_id: int) -> list[tuple[str, str]]:
    return [
        (str(r[0]), r[1])
        for r in cluster.query(
            "SELECT id, client_run_id FROM chat_run WHERE conversation_id = %s AND status = 'running'", conversation_id
        )
    ]


async def stop_on_owner(owner: Socket, client_run_id: str, run_id: str, *others: Socket) -> None:
    """Stop a run through its owner's socket; every socket must see it end as cancelled."""
    await owner.send({"type": "stop", "run_id": client_run_id})
    for sock in (owner, *others):
        try:
            ev = await sock.wait_for(lambda e: e.get("run") == run_id and e.get("type") in ("failed", "completed"), 10)
        except AssertionError as exc:
            raise RuntimeError(str(exc)) from None
        if ev["type"] != "failed" or ev["status"] != "cancelled":
            raise RuntimeError(f"{sock.name}: the run did not end as cancelled: {ev}")


def owner_pid(process_id: str) -> int:
    return int(process_id.split(":")[-2])  # chat.runs.PROCESS_ID is host:pid:random


# --------------------------------------------------------------------------- tests


async def test_reconnect_to_the_other_process_gets_a_snapshot_then_live_deltas(cluster: Cluster) -> None:
    """A run owned by A; a socket that joins on B mid-run ends with exactly the stored text.

    B's first snapshot is A's last database checkpoint, older than the first delta B gets through
    Redis; B then asks A (over the channel layer) for the live snapshot, which lines the offsets
    up. Deltas arriving in between may be a gap, which the rebuild rule also repairs (run with
    ``-s`` to see the counts). The owner's socket, there from the start, never sees a gap.
    """
    marks = cluster.log_marks()
    conv = cluster.conversations[0]
    async with open_socket(cluster, cluster.a, conv) as sock_a:
        await sock_a.wait_for(lambda e: e["type"] == "snapshot")
        client_run_id, frame = start_frame(PANEL, "How should a small team choose a database?")
        await sock_a.send(frame)
        started = await sock_a.wait_for(lambda e: e["type"] in ("run.started", "error"))
        assert started["type"] == "run.started", started
        run_id = started["run"]
        on_a = Rebuild(run_id)
        follow_a = asyncio.create_task(on_a.follow(sock_a))
        # Some deltas first, so B joins mid-stream and its snapshot (a checkpoint) has text.
        deadline = time.monotonic() + 10
        while max((len(t) for k, t in on_a.texts.items() if k != "final"), default=0) < 150:
            assert not follow_a.done() and time.monotonic() < deadline, f"no deltas on A: {on_a.stats()}"
            await asyncio.sleep(0.02)

        async with open_socket(cluster, cluster.b, conv) as sock_b:
            on_b = Rebuild(run_id)
            await asyncio.wait_for(asyncio.gather(follow_a, on_b.follow(sock_b)), timeout=40)

    truth, status, process_id = stored(cluster, run_id)
    print(f"\nscaled join on B: A {on_a.stats()}\n                  B {on_b.stats()}")
    detail = f"\nA: {on_a.stats()}\nB: {on_b.stats()}\n{cluster.logs()}"
    assert status == "complete", detail
    # A owns the run, so B's snapshot can only have come from the database (B's RunManager has
    # no such run), and B's deltas from A through Redis.
    assert owner_pid(process_id) == cluster.a.process.pid, process_id
    first = on_b.snapshots[0]
    assert first["status"] == "running" and first["phase"] == "panel", first
    assert any(m["content"] for m in first["members"]), f"B's first snapshot has no text yet: {first}"
    for m in first["members"]:
        assert truth[f"m{m['slot']}"].startswith(m["content"]), f"B's snapshot is not a prefix of slot {m['slot']}"
    assert on_b.deltas_seen > 0 and on_b.applied > 0, f"B got no live deltas through Redis: {on_b.stats()}"
    assert len(on_b.snapshots) >= 2, f"B never got the owner's live snapshot: {on_b.stats()}"
    # B joined during the panel: the fused answer streamed to it from offset 0, no gap possible.
    assert on_b.seen_end.get("final") == len(truth["final"]) > 0, detail

    assert on_a.terminal["type"] == "completed" and on_b.terminal["type"] == "completed", detail
    assert on_a.gaps == 0 and not on_a.snapshots, f"the owner's socket saw gaps: {on_a.stats()}"
    for rebuild in (on_a, on_b):
        assert not rebuild.mismatches, f"duplicated text differs from what the client had: {rebuild.mismatches}"
        assert not rebuild.unresolved(), detail
        assert rebuild.texts == truth, f"rebuilt text differs from the stored text{detail}"
    cluster.assert_no_tracebacks_since(marks)


async def test_stop_member_and_stop_sent_to_the_non_owner_process_reach_the_owner(cluster: Cluster) -> None:
    """B does not own A's run: its stop_member and stop are forwarded to A (group runctl_<run>).

    They are answered with no frame of their own (docs/protocol.md, "Several server processes");
    the effect shows in the run's frames, on both processes' sockets.
    """
    marks = cluster.log_marks()
    conv = cluster.conversations[1]
    async with open_socket(cluster, cluster.a, conv) as sock_a, open_socket(cluster, cluster.b, conv) as sock_b:
        await sock_a.wait_for(lambda e: e["type"] == "snapshot")
        await sock_b.wait_for(lambda e: e["type"] == "snapshot")
        client_run_id, frame = start_frame(SLOW_PANEL, "Tell me a long story.")
        await sock_a.send(frame)
        t_start = time.monotonic()
        started = await sock_a.wait_for(lambda e: e["type"] in ("run.started", "error"))
        assert started["type"] == "run.started", started
        run_id = started["run"]
        _, _, process_id = stored(cluster, run_id)
        assert owner_pid(process_id) == cluster.a.process.pid, process_id
        try:
            for slot in (0, 1):
                await sock_b.wait_for(
                    lambda e, slot=slot: e.get("run") == run_id and e["type"] == "panel.delta" and e["slot"] == slot
                )
            # Like a user who reads for a while before pressing Stop: the owner's control listener
            # has then been waiting on the channel layer longer than channels_redis' 5 s BZPOPMIN.
            await asyncio.sleep(max(0.0, CONTROL_AGE_S - (time.monotonic() - t_start)))

            hung_up = cluster.upstream.disconnects.count(SLOW)
            await sock_b.send({"type": "stop_member", "run_id": client_run_id, "slot": 0})
            for sock in (sock_b, sock_a):
                ev = await sock.wait_for(
                    lambda e: e["type"] == "error"
                    or (e.get("run") == run_id and e["type"] in ("panel.failed", "failed", "completed")),
                    10,
                )
                assert (ev["type"], ev.get("slot"), ev.get("status")) == ("panel.failed", 0, "stopped"), (sock.name, ev)
            # The rest of the run goes on: member 1 still streams to both sockets.
            for sock in (sock_b, sock_a):
                await sock.wait_for(lambda e: e.get("run") == run_id and e["type"] == "panel.delta" and e["slot"] == 1)

            await sock_b.send({"type": "stop", "run_id": client_run_id})
            for sock in (sock_b, sock_a):
                ev = await sock.wait_for(
                    lambda e: e["type"] == "error" or (e.get("run") == run_id and e["type"] in ("failed", "completed")),
                    10,
                )
                assert ev["type"] == "failed" and ev["status"] == "cancelled", (sock.name, ev)
            [(status, member_statuses)] = [
                (r[0], r[1])
                for r in cluster.query(
                    "SELECT r.status, array_agg(m.status ORDER BY m.slot) FROM chat_run r "
                    "JOIN chat_memberresponse m ON m.run_id = r.id WHERE r.id = %s GROUP BY r.status",
                    run_id,
                )
            ]
            assert (status, member_statuses) == ("cancelled", ["stopped", "stopped"])
            # Stopping closed the upstream streams (the provider stops billing).
            deadline = time.monotonic() + 5
            while cluster.upstream.disconnects.count(SLOW) < hung_up + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert cluster.upstream.disconnects.count(SLOW) == hung_up + 2, cluster.upstream.disconnects
        finally:
            if running_runs(cluster, conv):
                await stop_on_owner(sock_a, client_run_id, run_id, sock_b)
    cluster.assert_no_tracebacks_since(marks)


async def test_an_idle_socket_stays_connected_on_both_processes(cluster: Cluster) -> None:
    """A socket with nothing to receive for a while (no run going) must stay up on the Redis layer.

    channels_redis waits for messages with BZPOPMIN (5 s); with redis-py 8's default 5 s socket
    read timeout the wait raises redis.exceptions.TimeoutError and the consumer dies with close
    code 1011 (django/channels_redis#422) — hence ``socket_timeout: None`` in the layer's hosts
    (fusionsite/settings.py). The same wait serves a run's control listener (test above).
    """
    marks = cluster.log_marks()
    conv = cluster.conversations[0]
    async with open_socket(cluster, cluster.a, conv) as sock_a, open_socket(cluster, cluster.b, conv) as sock_b:
        for sock in (sock_a, sock_b):
            await sock.wait_for(lambda e: e["type"] == "snapshot")
        await asyncio.sleep(IDLE_S)
        for sock in (sock_a, sock_b):
            await sock.send({"type": "ping"})
            ev = await sock.wait_for(lambda e: e["type"] == "pong", 5)
            assert ev == {"type": "pong"}
    cluster.assert_no_tracebacks_since(marks)


async def test_a_second_run_in_the_same_conversation_is_busy_across_processes(cluster: Cluster) -> None:
    marks = cluster.log_marks()
    # Sequential: A's run is going; a start on B is refused.
    conv = cluster.conversations[2]
    async with open_socket(cluster, cluster.a, conv) as sock_a, open_socket(cluster, cluster.b, conv) as sock_b:
        await sock_a.wait_for(lambda e: e["type"] == "snapshot")
        await sock_b.wait_for(lambda e: e["type"] == "snapshot")
        client_run_id, frame = start_frame(SLOW_PANEL, "First prompt.")
        await sock_a.send(frame)
        started = await sock_a.wait_for(lambda e: e["type"] in ("run.started", "error"))
        assert started["type"] == "run.started", started
        run_id = started["run"]
        await sock_b.wait_for(lambda e: e["type"] == "run.started" and e["run"] == run_id)
        other_id, frame = start_frame(SLOW_PANEL, "Second prompt.")
        await sock_b.send(frame)
        refused = await sock_b.wait_for(lambda e: e["type"] in ("error", "run.started") and e.get("run") != run_id)
        assert refused["type"] == "error" and refused["code"] == "busy", refused
        assert refused.get("run_id") == other_id
        assert running_runs(cluster, conv) == [(run_id, client_run_id)]
        assert cluster.query("SELECT count(*) FROM chat_run WHERE client_run_id = %s", other_id) == [(0,)]
        await stop_on_owner(sock_a, client_run_id, run_id, sock_b)

    # A race: both processes get a start for the same idle conversation at once. Exactly one run
    # starts (the other start is refused by the check or by the database's partial unique index).
    conv = cluster.conversations[3]
    async with open_socket(cluster, cluster.a, conv) as sock_a, open_socket(cluster, cluster.b, conv) as sock_b:
        await sock_a.wait_for(lambda e: e["type"] == "snapshot")
        await sock_b.wait_for(lambda e: e["type"] == "snapshot")
        (id_a, frame_a), (id_b, frame_b) = start_frame(SLOW_PANEL, "Race A."), start_frame(SLOW_PANEL, "Race B.")
        await asyncio.gather(sock_a.send(frame_a), sock_b.send(frame_b))
        answers = {}
        for sock, own in ((sock_a, id_a), (sock_b, id_b)):
            answers[sock.name] = await sock.wait_for(
                lambda e, own=own: (e["type"] == "error" and e.get("run_id") == own)
                or (e["type"] == "run.started" and e["client_run_id"] == own)
            )
        kinds = sorted((a["type"], a.get("code")) for a in answers.values())
        assert kinds == [("error", "busy"), ("run.started", None)], answers
        [(run_id, winner_id)] = running_runs(cluster, conv)
        owner = sock_a if winner_id == id_a else sock_b
        other = sock_b if owner is sock_a else sock_a
        await stop_on_owner(owner, winner_id, run_id, other)
    cluster.assert_no_tracebacks_since(marks)


# --------------------------------------------------------------------------- through nginx


@pytest.fixture(scope="module")
def nginx(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """docs/deploy/nginx.conf (plain HTTP) in front of the module's two Daphne processes."""
    if not NGINX.exists():
        _unavailable(f"{NGINX} is missing (Debian's nginx package; `make browser` installs it)")
    # /static/ is collectstatic's STATIC_ROOT in production; here the app's static/ (its source).
    with running_nginx(
        tmp_path_factory.mktemp("nginx"), upstreams=[cluster.a.port, cluster.b.port], static_root=ROOT / "static"
    ) as server:
        wait_until_healthy(server.url, server.process, name="nginx", log_tail=server.log_tail)
        yield server


@pytest.fixture(scope="module")
def nginx_session(cluster: Cluster, nginx: Nginx) -> str:
    """A session made by signing in through nginx."""
    return _http_login(nginx.url, cluster.username)


def via_nginx(nginx: Nginx, conversation_id: int, session: str | None, name: str = "nginx", **kw: Any) -> Any:
    return ws_connect(
        nginx.port, conversation_id, session=session, origin=kw.pop("origin", nginx.origin), name=name, **kw
    )


def upstream_of(sock: Socket) -> str:
    """Which Daphne (127.0.0.1:port) nginx handed this socket to."""
    return str(sock.ws.response.headers[UPSTREAM_HEADER])


def server_at(cluster: Cluster, address: str) -> Server:
    return next(s for s in (cluster.a, cluster.b) if address == f"127.0.0.1:{s.port}")


async def refused_status(port: int, conversation_id: int, **kw: Any) -> int | None:
    """The HTTP status that refused the handshake (None: the socket opened)."""
    from websockets.exceptions import InvalidStatus

    try:
        async with ws_connect(port, conversation_id, name="probe", **kw):
            return None
    except InvalidStatus as exc:
        return int(exc.response.status_code)


async def close_code(port: int, conversation_id: int, **kw: Any) -> int | None:
    """The code the server closed an accepted socket with (None: still open after 5 s)."""
    from websockets.exceptions import ConnectionClosed

    async with ws_connect(port, conversation_id, name="probe", **kw) as sock:
        try:
            async with asyncio.timeout(5):
                await sock.ws.wait_closed()
        except TimeoutError:
            return None
        with contextlib.suppress(ConnectionClosed):
            await sock.ws.recv()
        return sock.ws.close_code


async def test_through_nginx_sign_in_then_a_turn_runs_to_completion(
    cluster: Cluster, nginx: Nginx, nginx_session: str
) -> None:
    """Signed in over HTTP through nginx (the session fixture), a page and a whole turn over its websocket."""
    marks = cluster.log_marks()
    with httpx.Client(base_url=nginx.url, cookies={"sessionid": nginx_session}, timeout=20) as c:
        page = c.get(f"/c/{cluster.conversations[4]}/")
    assert page.status_code == 200 and "scaled 4" in page.text, page.status_code
    assert page.headers.get(UPSTREAM_HEADER) in (f"127.0.0.1:{cluster.a.port}", f"127.0.0.1:{cluster.b.port}")

    async with via_nginx(nginx, cluster.conversations[4], nginx_session) as sock:
        await sock.wait_for(lambda e: e["type"] == "snapshot")
        _, frame = start_frame(PANEL, "Which is better for a small team, PostgreSQL or SQLite?")
        await sock.send(frame)
        started = await sock.wait_for(lambda e: e["type"] in ("run.started", "error"))
        assert started["type"] == "run.started", started
        rebuild = await Rebuild(started["run"]).follow(sock, timeout=40)

    truth, status, process_id = stored(cluster, started["run"])
    detail = f"\n{rebuild.stats()}\n{cluster.logs()}\n{nginx.log_tail()}"
    assert status == "complete" and rebuild.terminal and rebuild.terminal["type"] == "completed", detail
    # The process the socket reached owns the run; everything came through nginx without a gap.
    assert owner_pid(process_id) == server_at(cluster, upstream_of(sock)).process.pid, process_id
    assert rebuild.gaps == 0 and not rebuild.mismatches and not rebuild.snapshots, detail
    assert rebuild.texts == truth and truth["final"], detail
    cluster.assert_no_tracebacks_since(marks)


async def test_through_nginx_sockets_spread_over_both_processes_and_a_stop_reaches_the_run(
    cluster: Cluster, nginx: Nginx, nginx_session: str
) -> None:
    """least_conn hands open sockets to both Daphnes; a stop sent on the other process's socket ends the run."""
    marks = cluster.log_marks()
    conv = cluster.conversations[5]
    async with contextlib.AsyncExitStack() as stack:
        socks = [await stack.enter_async_context(via_nginx(nginx, conv, nginx_session, f"nginx-{i}")) for i in range(4)]
        for sock in socks:
            await sock.wait_for(lambda e: e["type"] == "snapshot")
        served = [upstream_of(sock) for sock in socks]
        assert set(served) == {f"127.0.0.1:{cluster.a.port}", f"127.0.0.1:{cluster.b.port}"}, served

        starter = socks[0]
        stopper = next(s for s in socks if upstream_of(s) != upstream_of(starter))
        client_run_id, frame = start_frame(SLOW_PANEL, "Tell me a long story, through nginx.")
        await starter.send(frame)
        started = await starter.wait_for(lambda e: e["type"] in ("run.started", "error"))
        assert started["type"] == "run.started", started
        run_id = started["run"]
        _, _, process_id = stored(cluster, run_id)
        assert owner_pid(process_id) == server_at(cluster, upstream_of(starter)).process.pid, process_id
        try:
            await stopper.wait_for(lambda e: e.get("run") == run_id and e["type"] == "panel.delta")
            hung_up = cluster.upstream.disconnects.count(SLOW)
            await stopper.send({"type": "stop", "run_id": client_run_id})
            for sock in socks:
                ev = await sock.wait_for(
                    lambda e: e["type"] == "error" or (e.get("run") == run_id and e["type"] in ("failed", "completed")),
                    10,
                )
                assert ev["type"] == "failed" and ev["status"] == "cancelled", (sock.name, ev)
            assert stored(cluster, run_id)[1] == "cancelled"
            deadline = time.monotonic() + 5
            while cluster.upstream.disconnects.count(SLOW) < hung_up + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert cluster.upstream.disconnects.count(SLOW) == hung_up + 2, cluster.upstream.disconnects
        finally:
            if running_runs(cluster, conv):
                await stop_on_owner(starter, client_run_id, run_id)
    cluster.assert_no_tracebacks_since(marks)


async def test_through_nginx_the_origin_check_and_close_codes_hold(
    cluster: Cluster, nginx: Nginx, nginx_session: str
) -> None:
    """The site's origin is nginx's (scheme, host and port as the browser sees them), nothing else."""
    conv = cluster.conversations[4]
    for origin in (
        "http://evil.example",
        f"http://127.0.0.1:{cluster.a.port}",  # a Daphne's own origin: the browser reached nginx
        f"https://127.0.0.1:{nginx.port}",  # the other scheme
        f"http://localhost:{nginx.port}",
    ):
        assert await refused_status(nginx.port, conv, session=nginx_session, origin=origin) == 403, origin
    assert await refused_status(nginx.port, conv, session=nginx_session, origin=nginx.origin) is None
    # Accepted, then closed with the app's reason: signed out (4401), not the user's conversation (4404).
    assert await close_code(nginx.port, conv, session=None, origin=nginx.origin) == 4401
    assert await close_code(nginx.port, 10**9, session=nginx_session, origin=nginx.origin) == 4404


async def test_through_nginx_a_client_cannot_forge_the_proxy_headers(
    cluster: Cluster, nginx: Nginx, nginx_session: str
) -> None:
    """Daphne (--proxy-headers) and the app trust X-Forwarded-For and X-Forwarded-Proto: nginx must set them.

    Straight to a Daphne, a forged header is believed (that is what trusting a proxy means); through
    nginx it is replaced by what nginx saw: the sign-in lockout counts nginx's client address, and a
    claimed https does not make an http:// page's Origin wrong or an https:// one right.
    """
    probe = f"probe-{secrets.token_hex(3)}"
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for base, username in ((cluster.a.url, f"{probe}-direct"), (nginx.url, f"{probe}-nginx")):
        with httpx.Client(base_url=base, headers=forged, timeout=20) as c:
            c.get("/accounts/login/")
            r = c.post(
                "/accounts/login/",
                data={"username": username, "password": "wrong", "csrfmiddlewaretoken": c.cookies["csrftoken"]},
                # Taken as https straight to Daphne, the sign-in's Referer must be https too.
                headers={"Referer": base.replace("http://", "https://") + "/accounts/login/"},
            )
            assert r.status_code == 200, (base, r.status_code)  # the form again, with its error
    rows = cluster.query(
        "SELECT DISTINCT username, ip_address FROM axes_accessattempt WHERE username LIKE %s", probe + "%"
    )
    addresses = {username: str(address) for username, address in rows}
    assert addresses == {f"{probe}-direct": "203.0.113.9", f"{probe}-nginx": "127.0.0.1"}, addresses

    conv = cluster.conversations[4]
    https = {"X-Forwarded-Proto": "https"}
    direct = cluster.a.port
    assert (
        await refused_status(direct, conv, session=cluster.session, origin=f"https://127.0.0.1:{direct}", headers=https)
        is None
    )
    assert (
        await refused_status(
            nginx.port, conv, session=nginx_session, origin=f"https://127.0.0.1:{nginx.port}", headers=https
        )
        == 403
    )
    assert await refused_status(nginx.port, conv, session=nginx_session, origin=nginx.origin, headers=https) is None


def test_through_nginx_health_and_static_files(cluster: Cluster, nginx: Nginx) -> None:
    """/healthz is proxied to a Daphne; /static/ is nginx's own, from the directory collectstatic fills."""
    health = httpx.get(f"{nginx.url}/healthz", timeout=5)
    assert (health.status_code, health.text) == (200, "ok")
    assert UPSTREAM_HEADER.lower() in health.headers

    script = httpx.get(f"{nginx.url}/static/js/app.js", timeout=5)
    assert script.status_code == 200
    assert script.content == (ROOT / "static" / "js" / "app.js").read_bytes()
    assert "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    assert UPSTREAM_HEADER.lower() not in script.headers  # no Daphne was asked
    missing = httpx.get(f"{nginx.url}/static/js/no-such-file.js", timeout=5)
    assert missing.status_code == 404 and UPSTREAM_HEADER.lower() not in missing.headers


# --------------------------------------------------------------------------- nginx alone


class _Echo(threading.Thread):
    """An upstream that answers every request with the headers it got; /api/ streams two events."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        super().__init__(daemon=True)
        self.release = threading.Event()
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/api/stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(b"data: one\n\n")
                    self.wfile.flush()
                    echo.release.wait(5)  # until the client saw "one" (buffered: it never does)
                    self.wfile.write(b"data: two\n\n")
                    return
                body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])

    def run(self) -> None:
        self.server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_nginx(tmp_path: Path) -> Iterator[tuple[Nginx, _Echo]]:
    if not NGINX.exists():
        _unavailable(f"{NGINX} is missing (Debian's nginx package; `make browser` installs it)")
    echo = _Echo()
    echo.start()
    try:
        with running_nginx(tmp_path / "nginx", upstreams=[echo.port], static_root=ROOT / "static") as server:
            yield server, echo
    finally:
        echo.stop()


def test_every_proxied_location_sets_the_headers_the_app_trusts(echo_nginx: tuple[Nginx, _Echo]) -> None:
    """nginx drops proxy_set_header inherited from above in a location that sets its own: each must set all."""
    server, _ = echo_nginx
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for path in ("/ws/conversations/1/", "/api/v1/models", "/accounts/login/"):
        got = httpx.get(server.url + path, headers=forged, timeout=5).json()
        assert got["host"] == f"127.0.0.1:{server.port}", (path, got)
        assert got["x-forwarded-for"] == "127.0.0.1", (path, got)
        assert got["x-forwarded-proto"] == "http", (path, got)


def test_the_api_location_streams_events_as_they_are_written(echo_nginx: tuple[Nginx, _Echo]) -> None:
    """proxy_buffering off under /api/: the first event arrives while the upstream still holds the second."""
    server, echo = echo_nginx
    t0 = time.monotonic()
    with httpx.stream("GET", f"{server.url}/api/stream", timeout=10) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        waited = time.monotonic() - t0
        echo.release.set()
        rest = b"".join(chunks)
    # Buffered, nginx would hold the headers and "one" until the upstream gave up waiting (5 s).
    assert first == b"data: one\n\n" and waited < 3, (first, waited)
    assert rest == b"data: two\n\n"


def test_the_production_config_with_tls_passes_nginx_t(tmp_path: Path) -> None:
    """What the running tests drop (the port-80 server, listen … ssl, ssl_*) is still valid nginx."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if not NGINX.exists():
        _unavailable(f"{NGINX} is missing (Debian's nginx package; `make browser` installs it)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fusion.example.org")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    site = production_with_certificate(SITE.read_text(), certificate=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    assert "listen 443 ssl" in site and "return 301 https://" in site
    check_config(tmp_path / "nginx", site)


# --------------------------------------------------------------------------- the deployment files


def _env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile reads them (comments, blank lines, quotes)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def test_the_procfile_the_unit_the_target_and_nginx_name_the_same_processes() -> None:
    upstream_ports = re.findall(r"^\s*server 127\.0\.0\.1:(\d+);", SITE.read_text(), flags=re.M)
    procfile = [line for line in (DEPLOY / "Procfile").read_text().splitlines() if re.match(r"^\w+:", line)]
    target = (DEPLOY / "fusion.target").read_text()
    wanted = re.findall(r"fusion@(\d+)\.service", next(x for x in target.splitlines() if x.startswith("Wants=")))
    assert len(upstream_ports) >= 2 and wanted == upstream_ports
    assert len(procfile) == len(upstream_ports)
    for line, port in zip(procfile, upstream_ports):
        args = shlex.split(line.partition(":")[2])
        assert Path(args[0]).name == "daphne", line
        assert [sys.executable, "-m", "daphne", *args[1:]] == daphne_command(int(port)), line


def test_check_deploy_is_clean_with_the_example_environment(tmp_path: Path) -> None:
    """docs/deploy/fusion.env.example, its placeholders filled in: `manage.py check --deploy` reports nothing."""
    from cryptography.fernet import Fernet

    example = _env_file(DEPLOY / "fusion.env.example")
    assert example["FUSION_BEHIND_TLS"] == "true" and example["DJANGO_DEBUG"] == "false"
    example["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    example["FUSION_KEY_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "DJANGO_", "OPENROUTER_"))}
    base.pop("DATABASE_URL", None)
    base.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **example, "DJANGO_SECRET_KEY_FILE": str(tmp_path / "secret_key")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "no issues" in result.stdout, result.stdout + result.stderr
