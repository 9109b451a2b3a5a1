"""Websocket fan-out benchmark: N concurrent fusion runs through real websockets.

    .venv/bin/python bench/ws_fanout.py [--runs 8] [--members 3] [--rounds 3] [--json out.json]

Self-contained: starts the project's scripted upstream (bench/upstream_probe.py, which is
``chat.testing.scripted`` plus a log of chunk send times) and Daphne on free 127.0.0.1 ports with
a temporary SQLite database, creates one user + one conversation per concurrent run, signs each
user in over HTTP, opens one websocket per conversation, and drives ``--rounds`` rounds of
``--runs`` simultaneous runs. Every subprocess is stopped on exit, on error and on Ctrl-C.

What it prints (see bench/README.md for how to read it):

(a) upstream token → websocket frame latency, p50/p99;
(b) fused answer's first frame versus the scripted critical path, as overhead p50/p99, with a
    breakdown of where the overhead goes;
(c) frames per second (total, per socket) and upstream chunks per frame (coalescing factor);
(d) peak RSS of the Daphne process(es) and of this client (psutil, sampled every 100 ms), CPU,
    and the Daphne RSS growth per live run.

``--baseline`` first runs the same load against the bare relay (bench/relay.py: the same streams
on the same stack, nothing else) and prints both sides and a side-by-side table with the ratios;
``--relay-only`` runs the relay alone. ``--workers N`` runs the app as N Daphnes behind a local
nginx (the documented docs/deploy/nginx.conf, made runnable by bench/cluster.py) on a fresh
PostgreSQL database and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    import httpx
    import psutil
    import websockets
    from websockets.asyncio.client import connect as ws_connect
    from websockets.typing import Origin
except ImportError as exc:  # pragma: no cover - a setup problem, said plainly
    sys.exit(f"ws_fanout: missing dev dependency ({exc.name}); run `make install-dev` (requirements-dev.txt).")

from chat.testing.scripted import generate_answer  # plain Python, no Django  # noqa: E402

PASSWORD = "bench-Pa55word-not-secret"

# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float | None:
    """Percentile with linear interpolation (p in 0..100); None for no data."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "min": None, "max": None}
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _set_pdeathsig() -> None:
    """Children get SIGTERM if this process dies without cleaning up (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Children:
    """Subprocesses this benchmark started; each in its own process group, stopped by id."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "wb")
        try:
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
            )
        finally:
            out.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 8) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=2)
        self.procs.clear()


class BenchError(RuntimeError):
    pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- scripts


def member_content(model: str, target_chars: int, seed: int) -> str:
    """Deterministic, realistic Markdown (paragraphs, lists, a code block) of about target_chars."""
    styles = ("structured", "narrative", "concise")
    parts = [f"## Answer from {model}\n"]
    k = 0
    while sum(len(p) + 2 for p in parts) < target_chars:
        topic = f"Question {seed}.{k}: how should a small team choose and operate a database"
        parts.append(generate_answer(model, topic, styles[(seed + k) % 3]))
        if k == 1:
            parts.append("```python\nfor row in rows:\n    handle(row)  # stream, do not buffer\n```")
        k += 1
    return "\n\n".join(parts)[:target_chars].rstrip() + "\n"


@dataclass
class RunPlan:
    conv_index: int
    round: int
    members: list[str]
    analyst: str
    writer: str


def build_scripts(args: argparse.Namespace) -> tuple[dict[str, Any], list[list[RunPlan]], dict[str, Any]]:
    """Scripts for every run's members, analyst and writer (unique model ids per run)."""
    scripts: dict[str, Any] = {}
    plans: list[list[RunPlan]] = []
    member_timing = []
    for m in range(args.members):
        member_timing.append(
            {
                "ttft_ms": args.member_ttft_ms + args.member_ttft_step_ms * m,
                "tokens_per_s": max(args.member_tps / 4, args.member_tps - args.member_tps_step * m),
            }
        )
    writer_content = None
    for c in range(args.runs):
        row = []
        for r in range(args.rounds):
            prefix = f"bench/c{c:02d}r{r}"
            members = [f"{prefix}m{m}" for m in range(args.members)]
            for m, model in enumerate(members):
                scripts[model] = {
                    "content": member_content(model, args.member_chars, seed=c * 31 + r * 7 + m),
                    "chunk_chars": args.chunk_chars,
                    **member_timing[m],
                }
            analyst, writer = f"{prefix}-analyst", f"{prefix}-writer"
            # Analyst: generated (valid) analysis JSON, no pacing: its time is exactly its ttft.
            scripts[analyst] = {"ttft_ms": args.analyst_ttft_ms, "tokens_per_s": 0}
            if writer_content is None:
                writer_content = member_content("the writer", args.writer_chars, seed=999)
            scripts[writer] = {
                "content": writer_content,
                "chunk_chars": args.chunk_chars,
                "ttft_ms": args.writer_ttft_ms,
                "tokens_per_s": args.writer_tps,
            }
            row.append(RunPlan(c, r, members, analyst, writer))
        plans.append(row)
    ts = args.time_scale
    member_durations = [
        (t["ttft_ms"] + (len(scripts[plans[0][0].members[m]]["content"]) / 4) / t["tokens_per_s"] * 1000) * ts
        for m, t in enumerate(member_timing)
    ]
    timing = {
        "members": member_timing,
        "member_duration_ms": member_durations,
        "member_chars": [len(scripts[x]["content"]) for x in plans[0][0].members],
        "analyst_ms": args.analyst_ttft_ms * ts,
        "writer_ttft_ms": args.writer_ttft_ms * ts,
        "writer_chars": len(writer_content or ""),
        "writer_duration_ms": (args.writer_ttft_ms + len(writer_content or "") / 4 / args.writer_tps * 1000) * ts,
    }
    timing["critical_path_ms"] = max(member_durations) + timing["analyst_ms"] + timing["writer_ttft_ms"]
    return scripts, plans, timing


def scripted_duration_ms(script: dict[str, Any], chars: int, ts: float) -> float:
    rate = float(script.get("tokens_per_s") or 0)
    pace = (chars / 4) / rate * 1000 if rate > 0 else 0.0
    return (float(script.get("ttft_ms") or 0) + pace) * ts


# --------------------------------------------------------------------------- setup (Django side)

SETUP = r"""
import json, sys, django
django.setup()
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from chat.models import Conversation
User = get_user_model()
n, password = int(sys.argv[1]), sys.argv[2]
encoded = make_password(password)  # hashed once, shared: PBKDF2 costs ~0.5 s per call
out = []
for i in range(n):
    user = User.objects.create(username=f"bench{i}", password=encoded)
    conv = Conversation.objects.create(user=user, title=f"bench {i}")
    out.append({"user_id": user.pk, "username": user.username, "conversation_id": conv.pk})
print("BENCH_JSON " + json.dumps(out))
"""

SESSIONS = r"""
import json, sys, django
from importlib import import_module
django.setup()
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
store = import_module(settings.SESSION_ENGINE).SessionStore
out = {}
for user in get_user_model().objects.filter(pk__in=json.loads(sys.argv[1])):
    s = store()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    out[user.pk] = s.session_key
print("BENCH_JSON " + json.dumps({"cookie": settings.SESSION_COOKIE_NAME, "sessions": out}))
"""


def run_django(code: str, argv: list[str], env: dict[str, str], timeout: float) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "fusionsite.settings"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise BenchError(f"setup subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON ") :])
    raise BenchError(f"setup subprocess printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


async def http_login(client: httpx.AsyncClient, base: str, username: str) -> str | None:
    """Sign in like a browser: GET the form (CSRF cookie), POST the credentials; the sessionid."""
    r = await client.get("/accounts/login/")
    token = client.cookies.get("csrftoken")
    if r.status_code != 200 or not token:
        return None
    r = await client.post(
        "/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/"},
        headers={"Referer": base + "/accounts/login/"},
    )
    if r.status_code not in (302, 303):
        return None
    return client.cookies.get("sessionid")


async def http_logins(base: str, usernames: list[str], concurrency: int = 4) -> list[str | None]:
    """Every user signed in over HTTP, a few at a time (each its own cookie jar); None where it failed."""
    gate = asyncio.Semaphore(concurrency)

    async def one(username: str) -> str | None:
        async with gate:
            try:
                async with httpx.AsyncClient(base_url=base, follow_redirects=False, timeout=60) as client:
                    return await http_login(client, base, username)
            except httpx.HTTPError:
                return None

    return list(await asyncio.gather(*(one(u) for u in usernames)))


def wait_http(url: str, proc: subprocess.Popen[bytes], name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode} while starting:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer at {url} within {timeout:.0f} s:\n{tail(log)}")


# --------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """RSS of the watched processes every interval; peaks overall and since mark()."""

    def __init__(self, procs: dict[str, int], interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.interval = interval
        self.peak: dict[str, int] = {n: 0 for n in self.procs}
        self.baseline: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()

    @staticmethod
    def _family(name: str, p: psutil.Process) -> list[psutil.Process]:
        """A process, and for a Daphne its children: the app's Markdown worker process(es)
        (chat.render.pool), whose RSS and CPU are the app's too."""
        if not name.startswith("daphne"):
            return [p]
        try:
            return [p, *p.children(recursive=True)]
        except psutil.Error:
            return [p]

    def sample(self) -> dict[str, int]:
        now = {}
        for name, p in self.procs.items():
            try:
                now[name] = p.memory_info().rss
            except psutil.Error:
                continue
            for child in self._family(name, p)[1:]:
                try:
                    now[name] += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak[name] = max(self.peak[name], now[name])
        self.samples += 1
        return now

    def mark_baseline(self) -> None:
        self.baseline = self.sample()
        self.peak = dict(self.baseline)

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, p in self.procs.items():
            for member in self._family(name, p):
                try:
                    t = member.cpu_times()
                except psutil.Error:
                    continue
                out[name] = out.get(name, 0.0) + t.user + t.system
        return out

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- the websocket side


@dataclass
class RunRecord:
    plan: RunPlan
    client_run_id: str
    t_start: float = 0.0  # when the start frame was sent
    t_end: float | None = None  # when completed/failed arrived
    t_started: float | None = None  # when run.started arrived (the turn and run are in the database)
    server_run: str | None = None
    status: str = "pending"
    error: str = ""
    timings: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class SocketRecord:
    index: int
    conversation_id: int
    frames: list[tuple[float, int, list[dict[str, Any]]]] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    bytes: int = 0
    close: str = ""


async def reader(ws: Any, sock: SocketRecord, by_client: dict[str, RunRecord], by_server: dict[str, RunRecord]) -> None:
    try:
        async for raw in ws:
            t = time.time()
            frame = json.loads(raw)
            events = frame.get("events", []) if frame.get("type") == "batch" else [frame]
            sock.frames.append((t, len(raw), events))
            sock.bytes += len(raw)
            for ev in events:
                kind = ev.get("type")
                if kind == "run.started":
                    rec = by_client.get(ev.get("client_run_id", ""))
                    if rec is not None:
                        rec.server_run = ev.get("run")
                        rec.status = "running"
                        rec.t_started = t
                        by_server[ev["run"]] = rec
                elif kind in ("completed", "failed"):
                    rec = by_server.get(ev.get("run", ""))
                    if rec is not None:
                        rec.t_end = t
                        rec.status = ev.get("status", kind)
                        rec.timings = ev.get("timings") or {}
                        if kind == "failed":
                            rec.error = f"{ev.get('kind')}: {ev.get('message')}"
                        rec.done.set()
                elif kind == "error":
                    rec = by_client.get(ev.get("run_id", ""))
                    if rec is not None:
                        rec.status, rec.error, rec.t_end = "error", f"{ev.get('code')}: {ev.get('message')}", t
                        rec.done.set()
    except websockets.ConnectionClosed as exc:
        sock.close = f"closed: {exc}"
    finally:
        for rec in by_client.values():  # nobody will answer any more
            if not rec.done.is_set() and rec.t_start:
                rec.status, rec.error = "lost", sock.close or "socket closed"
                rec.done.set()


class LoopLag:
    """The bench client's own event-loop lag: if it stalls, its receive times are late too."""

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.gaps: list[float] = []  # ms beyond the period
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self.gaps.append((now - last - self.period) * 1000)
            last = now


async def drive(
    args: argparse.Namespace,
    base_port: int,
    accounts: list[dict[str, Any]],
    cookie_name: str,
    plans: list[list[RunPlan]],
    on_connected: Any,
    lag: LoopLag,
    label: str = "",
) -> list[SocketRecord]:
    origin = f"http://127.0.0.1:{base_port}"
    socks = [SocketRecord(i, a["conversation_id"]) for i, a in enumerate(accounts)]
    readers: list[asyncio.Task[None]] = []
    maps: list[tuple[dict[str, RunRecord], dict[str, RunRecord]]] = []
    conns: list[Any] = [None] * len(socks)
    gate = asyncio.Semaphore(16)  # handshakes in flight: a bounded burst, not all N at once

    async def open_one(i: int) -> None:
        async with gate:
            conns[i] = await ws_connect(
                f"ws://127.0.0.1:{base_port}/ws/conversations/{socks[i].conversation_id}/",
                origin=Origin(origin),
                additional_headers={"Cookie": f"{cookie_name}={accounts[i]['session']}"},
                max_size=None,
                open_timeout=30,
                ping_interval=None,
                close_timeout=2,
            )

    try:
        opening = [asyncio.create_task(open_one(i)) for i in range(len(socks))]
        try:
            await asyncio.gather(*opening)
        except BaseException:
            for t in opening:
                t.cancel()
            await asyncio.gather(*opening, return_exceptions=True)
            raise
        for sock, ws in zip(socks, conns):
            by_client: dict[str, RunRecord] = {}
            by_server: dict[str, RunRecord] = {}
            maps.append((by_client, by_server))
            readers.append(asyncio.create_task(reader(ws, sock, by_client, by_server)))
        # Every socket gets its connect snapshot before the first round.
        deadline = time.monotonic() + 10 + 0.1 * len(socks)
        while any(not s.frames for s in socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        on_connected()
        lag.task = asyncio.create_task(lag.run())
        try:
            for r in range(args.rounds):
                recs = []
                for sock, ws, (by_client, _) in zip(socks, conns, maps):
                    plan = plans[sock.index][r]
                    rec = RunRecord(plan, str(uuid.uuid4()))
                    by_client[rec.client_run_id] = rec
                    sock.runs.append(rec)
                    recs.append(rec)
                    panel = {
                        "members": [{"model": m} for m in plan.members],
                        "analyst": {"model": plan.analyst},
                        "writer": {"model": plan.writer},
                    }
                    frame = json.dumps(
                        {
                            "type": "start",
                            "run_id": rec.client_run_id,
                            "panel": panel,
                            "prompt": f"Benchmark round {r}, conversation {sock.index}: "
                            "how should a small team choose a database?",
                        }
                    )
                    rec.t_start = time.time()
                    await ws.send(frame)
                left = max(1.0, args.round_timeout)
                waits = [asyncio.create_task(rec.done.wait()) for rec in recs]
                done, pending = await asyncio.wait(waits, timeout=left)
                for w in pending:
                    w.cancel()
                for rec in recs:
                    if not rec.done.is_set():
                        rec.status, rec.error = "timeout", f"no completed/failed frame within {left:.0f} s"
                bad = [rec for rec in recs if rec.status != "complete"]
                if bad:
                    print(
                        f"  [{label}] round {r + 1}/{args.rounds}: {len(bad)} of {len(recs)} runs did not complete "
                        f"(first: {bad[0].status} {bad[0].error})",
                        file=sys.stderr,
                    )
                    if all(rec.status != "complete" for rec in recs):
                        break  # nothing works: stop early, report what there is
                else:
                    spent = max(rec.t_end or 0 for rec in recs) - min(rec.t_start for rec in recs)
                    print(
                        f"  [{label}] round {r + 1}/{args.rounds}: {len(recs)} runs complete in {spent:.1f} s",
                        file=sys.stderr,
                    )
                await asyncio.sleep(args.pause_s)
        finally:
            lag.task.cancel()
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, lag.task, return_exceptions=True)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns if ws is not None), return_exceptions=True)
    return socks


# --------------------------------------------------------------------------- analysis


@dataclass
class StreamFrames:
    """Delta frames of one stream (a member or the final answer) of one run."""

    starts: list[int] = field(default_factory=list)  # offset of each delta (ascending)
    ends: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    frame_ids: list[int] = field(default_factory=list)
    chars: int = 0
    mismatch: int = 0

    def add(self, offset: int, length: int, t: float, frame_id: int) -> None:
        if self.ends and offset != self.ends[-1]:
            self.mismatch += 1  # a gap or an overlap: never expected on one live socket
        self.starts.append(offset)
        self.ends.append(offset + length)
        self.times.append(t)
        self.frame_ids.append(frame_id)
        self.chars = max(self.chars, offset + length)

    def coverage(self) -> tuple[int, int]:
        """(distinct characters received, characters received more than once)."""
        spans = sorted(zip(self.starts, self.ends))
        union = total = 0
        reach = 0
        for lo, hi in spans:
            total += hi - lo
            if hi > reach:
                union += hi - max(lo, reach)
                reach = hi
        return union, total - union

    def frame_of(self, last_char: int) -> int | None:
        """Index of the delta that carried character *last_char*."""
        i = bisect.bisect_right(self.starts, last_char) - 1
        if 0 <= i < len(self.starts) and self.starts[i] <= last_char < self.ends[i]:
            return i
        return None


def analyse(
    args: argparse.Namespace,
    socks: list[SocketRecord],
    scripts: dict[str, Any],
    timing: dict[str, Any],
    sends: list[list[Any]] | None,
    requests: list[dict[str, Any]],
    dump: list[list[Any]] | None = None,
) -> dict[str, Any]:
    ts = args.time_scale
    # --- per run, per stream: which frame carried which characters
    streams: dict[str, StreamFrames] = {}  # model id (unique per run and role) → its delta frames
    run_of_model: dict[str, RunRecord] = {}
    frame_seq = 0
    delta_frames = 0
    total_frames = 0
    chunk_counts: dict[int, int] = {}  # global frame id → upstream chunks it delivered
    delta_events_per_frame: list[int] = []
    first_final_frame: dict[str, float] = {}
    sock_rates = []
    for sock in socks:
        recs = {rec.server_run: rec for rec in sock.runs if rec.server_run}
        for rec in sock.runs:
            for model in [*rec.plan.members, rec.plan.writer, rec.plan.analyst]:
                run_of_model[model] = rec
        active = 0.0
        n_run_frames = 0
        for t, _size, events in sock.frames:
            frame_seq += 1
            is_run_frame = False
            n_delta = 0
            for ev in events:
                found = recs.get(ev.get("run", ""))
                if found is None:
                    continue
                rec = found
                is_run_frame = True
                kind = ev.get("type")
                if kind == "panel.delta":
                    model = rec.plan.members[ev["slot"]]
                elif kind == "final.delta":
                    model = rec.plan.writer
                    first_final_frame.setdefault(rec.client_run_id, t)
                else:
                    continue
                n_delta += 1
                streams.setdefault(model, StreamFrames()).add(ev["offset"], len(ev["delta"]), t, frame_seq)
            if is_run_frame:
                total_frames += 1
                n_run_frames += 1
            if n_delta:
                delta_frames += 1
                delta_events_per_frame.append(n_delta)
                chunk_counts.setdefault(frame_seq, 0)
        for rec in sock.runs:
            if rec.t_end:
                active += rec.t_end - rec.t_start
        if active > 0:
            sock_rates.append(n_run_frames / active)

    # --- upstream send times: measured (probe) and scheduled (request time + ttft + offset/pace)
    req_time: dict[str, float] = {}
    for req in requests:
        req_time.setdefault(req["model"], req["time"])  # first request per model id
    chunks: dict[str, list[tuple[int, int, float]]] = {}
    ends: dict[str, float] = {}
    gen_of: dict[str, str] = {}
    if sends:
        for kind, model, gen, off, length, t in sends:
            if model not in scripts:
                continue
            if gen_of.setdefault(model, gen) != gen:  # a retried call: keep the latest attempt
                if kind == "c" and off == 0:
                    gen_of[model] = gen
                    chunks[model] = []
                else:
                    continue
            if kind == "c":
                chunks.setdefault(model, []).append((off, length, t))
            else:
                ends[model] = t

    def scheduled(model: str, offset: int) -> float | None:
        if model not in req_time:
            return None
        s = scripts[model]
        return req_time[model] + scripted_duration_ms(s, offset, ts) / 1000

    per_round: dict[int, dict[str, list[float]]] = {}
    lat_all: list[float] = []
    lat_first: list[float] = []
    lat_rest: list[float] = []
    lat_final: list[float] = []
    lat_end: list[float] = []
    lat_sched: list[float] = []
    lateness: list[float] = []
    missing = 0
    mismatches = sum(sf.mismatch for sf in streams.values())
    coverage = {"expected_chars": 0, "received_chars": 0, "lost_chars": 0, "duplicated_chars": 0}
    short: list[str] = []  # streams that lost or repeated characters
    for model, script in scripts.items():
        if model.endswith("-analyst") or model not in run_of_model:
            continue
        sf = streams.get(model)
        expected = len(script["content"])
        got, dup = sf.coverage() if sf else (0, 0)
        coverage["expected_chars"] += expected
        coverage["received_chars"] += got
        coverage["lost_chars"] += max(0, expected - got)
        coverage["duplicated_chars"] += dup
        if got < expected or dup:
            short.append(f"{model}: {got}/{expected} chars" + (f", {dup} duplicated" if dup else ""))
        if sf is None:
            continue
        if sends:
            seq = chunks.get(model, [])
        else:  # fallback: the scripted schedule, chunk by chunk
            size = int(script.get("chunk_chars") or 16)
            seq = [(o, min(size, len(script["content"]) - o), 0.0) for o in range(0, len(script["content"]), size)]
        for i, (off, length, t_sent) in enumerate(seq):
            j = sf.frame_of(off + length - 1)
            if j is None:
                missing += 1
                continue
            t_recv = sf.times[j]
            chunk_counts[sf.frame_ids[j]] = chunk_counts.get(sf.frame_ids[j], 0) + 1
            t_sched = scheduled(model, off)
            if t_sched is not None:
                lat_sched.append((t_recv - t_sched) * 1000)
                if sends:
                    lateness.append((t_sent - t_sched) * 1000)
            if not sends:  # fallback: latency against the schedule
                if t_sched is None:
                    continue
                t_sent = t_sched
            ms = (t_recv - t_sent) * 1000
            if dump is not None:
                dump.append([model, off, length, t_sent, t_recv])
            lat_all.append(ms)
            per_round.setdefault(run_of_model[model].plan.round, {"a": [], "b": []})["a"].append(ms)
            (lat_first if i == 0 else lat_rest).append(ms)
            if i == len(seq) - 1:
                lat_end.append(ms)  # stream-end lag: the last chunk → the frame with its last character
            if model.endswith("-writer"):
                lat_final.append(ms)

    # --- (b) fused answer's first frame vs the scripted critical path, and where the time goes
    overhead: list[float] = []
    server_overhead: list[float] = []
    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "start sent → panel request upstream",
            "upstream pacing (slowest member)",
            "panel done → analyst request",
            "upstream (analyst)",
            "analyst answer → writer request",
            "upstream (writer ttft)",
            "writer first chunk → ws frame",
        )
    }
    crit = timing["critical_path_ms"]
    started_frame: list[float] = []
    app_overhead: list[float] = []
    runs_total = runs_ok = 0
    for sock in socks:
        for rec in sock.runs:
            runs_total += 1
            if rec.status != "complete":
                continue
            runs_ok += 1
            t_first = first_final_frame.get(rec.client_run_id)
            if t_first is None:
                continue
            overhead.append((t_first - rec.t_start) * 1000 - crit)
            per_round.setdefault(rec.plan.round, {"a": [], "b": []})["b"].append(overhead[-1])
            if isinstance(rec.timings.get("final_ttft"), (int, float)):
                server_overhead.append(rec.timings["final_ttft"] - crit)
            if rec.t_started:
                started_frame.append((rec.t_started - rec.t_start) * 1000)
            p = rec.plan
            if not sends or not all(m in ends for m in p.members) or p.analyst not in ends or p.writer not in chunks:
                continue
            gate = max(p.members, key=lambda m: ends[m])
            t_req = req_time.get(gate)
            a_req, w_req = req_time.get(p.analyst), req_time.get(p.writer)
            if t_req is None or a_req is None or w_req is None:
                continue
            gate_dur = scripted_duration_ms(scripts[gate], len(scripts[gate]["content"]), ts) / 1000
            w_first = chunks[p.writer][0][2]
            parts["start sent → panel request upstream"].append((t_req - rec.t_start) * 1000)
            parts["upstream pacing (slowest member)"].append((ends[gate] - t_req - gate_dur) * 1000)
            parts["panel done → analyst request"].append((a_req - ends[gate]) * 1000)
            parts["upstream (analyst)"].append((ends[p.analyst] - a_req) * 1000 - timing["analyst_ms"])
            parts["analyst answer → writer request"].append((w_req - ends[p.analyst]) * 1000)
            parts["upstream (writer ttft)"].append((w_first - w_req) * 1000 - timing["writer_ttft_ms"])
            parts["writer first chunk → ws frame"].append((t_first - w_first) * 1000)
            upstream_late = (
                parts["upstream pacing (slowest member)"][-1]
                + parts["upstream (analyst)"][-1]
                + parts["upstream (writer ttft)"][-1]
            )
            app_overhead.append(overhead[-1] - upstream_late)

    # --- how synchronised the runs were: the spread of their panel / analyst requests, per round
    # (a server that starts runs slowly spreads them out, and its later hops then see smaller bursts)
    spread: dict[str, list[float]] = {"panel_requests": [], "analyst_requests": []}
    by_round: dict[int, list[RunPlan]] = {}
    for sock in socks:
        for rec in sock.runs:
            by_round.setdefault(rec.plan.round, []).append(rec.plan)
    for round_plans in by_round.values():
        firsts = [
            min(req_time[m] for m in pl.members if m in req_time) for pl in round_plans if pl.members[0] in req_time
        ]
        analysts = [req_time[pl.analyst] for pl in round_plans if pl.analyst in req_time]
        for key, ts_ in (("panel_requests", firsts), ("analyst_requests", analysts)):
            if len(ts_) > 1:
                spread[key].append((max(ts_) - min(ts_)) * 1000)

    # --- what the upstream was asked: requests per role and their size (both sides send the same)
    asked: dict[str, dict[str, Any]] = {}
    for req in requests:
        model = str(req.get("model", ""))
        role = "analyst" if model.endswith("-analyst") else "writer" if model.endswith("-writer") else "member"
        chars = sum(len(str(m.get("content") or "")) for m in req.get("messages") or [] if isinstance(m, dict))
        a = asked.setdefault(role, {"n": 0, "chars": 0, "params": set()})
        a["n"] += 1
        a["chars"] += chars
        a["params"].update(req.get("params") or {})
    upstream_requests = {
        role: {"n": a["n"], "mean_message_chars": a["chars"] / max(1, a["n"]), "params": sorted(a["params"])}
        for role, a in sorted(asked.items())
    }

    # --- (c) frame rates
    t0 = min((rec.t_start for s in socks for rec in s.runs if rec.t_start), default=0)
    t1 = max((rec.t_end or 0 for s in socks for rec in s.runs), default=0)
    span = max(1e-9, t1 - t0)
    coalesce = [c for c in chunk_counts.values() if c > 0]
    total_bytes = sum(s.bytes for s in socks)
    return {
        "runs": {
            "total": runs_total,
            "complete": runs_ok,
            "not_complete": [
                f"{rec.plan.conv_index}/{rec.plan.round}: {rec.status} {rec.error}"
                for s in socks
                for rec in s.runs
                if rec.status != "complete"
            ][:10],
        },
        "latency_method": "probe" if sends else "schedule",
        "a_latency_ms": {
            "all": stats(lat_all),
            "first_chunk_of_stream": stats(lat_first),
            "later_chunks": stats(lat_rest),
            "final_answer_chunks": stats(lat_final),
            "stream_end": stats(lat_end),
            "vs_schedule": stats(lat_sched),
            "upstream_lateness_vs_schedule": stats(lateness),
        },
        "b_final_first_token": {
            "critical_path_ms": crit,
            "overhead_ms": stats(overhead),
            "server_final_ttft_overhead_ms": stats(server_overhead),
            "app_overhead_ms": stats(app_overhead),
            "start_to_run_started_frame_ms": stats(started_frame),
            "burst_spread_ms": {k: stats(v) for k, v in spread.items()},
            "breakdown_ms": {k: stats(v) for k, v in parts.items()},
        },
        "c_frames": {
            "span_s": span,
            "frames_total": total_frames,
            "frames_per_s_total": total_frames / span,
            "frames_per_s_per_socket": stats(sock_rates),
            "delta_frames": delta_frames,
            "upstream_chunks": sum(coalesce),
            "upstream_chunks_per_delta_frame": stats([float(c) for c in coalesce]),
            "delta_events_per_delta_frame": stats([float(c) for c in delta_events_per_frame]),
            "bytes_total": total_bytes,
            "mean_frame_bytes": total_bytes / max(1, sum(len(s.frames) for s in socks)),
        },
        "upstream_requests": upstream_requests,
        "per_round": {
            r: {"a_latency_ms": stats(v["a"]), "b_overhead_ms": stats(v["b"])} for r, v in sorted(per_round.items())
        },
        "integrity": {
            **coverage,
            "offset_gaps_or_overlaps": mismatches,
            "chunks_not_found_in_frames": missing,
            "streams_short_or_repeated": short,
        },
    }


def summarise_probe(path: Path, t_runs: float, t_end: float | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    gaps = [g for t, g in data.get("gaps", []) if t >= t_runs]
    gcs = [ms for t, _gen, ms in data.get("gcs", []) if t >= t_runs]
    counts: dict[str, int] = {}
    for t, stack in data.get("samples", []):
        if t < t_runs:
            continue
        own = [f for f in stack if "chat/" in f or "fusionsite/" in f] or stack[-1:]
        key = " ← ".join(reversed(own[-3:]))
        counts[key] = counts.get(key, 0) + 1
    prof: dict[str, int] = {}
    n_prof = 0
    for t, where in data.get("profile", []):
        if t >= t_runs and (t_end is None or t <= t_end):
            prof[where] = prof.get(where, 0) + 1
            n_prof += 1
    busy = n_prof - prof.get("idle", 0)
    return {
        "busy_pct_of_samples": 100 * busy / max(1, n_prof),
        "profile_top": [
            (w, 100 * n / max(1, n_prof)) for w, n in sorted(prof.items(), key=lambda kv: -kv[1]) if w != "idle"
        ][:8],
        "file": str(path),
        "stalls": len(gaps),
        "max_stall_ms": max(gaps, default=None),
        "stall_ms_total": sum(gaps),
        "gc_pauses": len(gcs),
        "max_gc_ms": max(gcs, default=None),
        "gc_ms_total": sum(gcs),
        "top_stacks": sorted(counts.items(), key=lambda kv: -kv[1])[:5],
    }


# --------------------------------------------------------------------------- report


def print_report(
    cfg: dict[str, Any], res: dict[str, Any], mem: dict[str, Any], title: str = "Fusion websocket fan-out benchmark"
) -> None:
    line = "-" * 86
    print()
    print(title)
    print(line)
    for k, v in cfg.items():
        print(f"  {k:<28} {v}")
    print(line)
    r = res["runs"]
    print(f"  runs complete: {r['complete']}/{r['total']}")
    for msg in r["not_complete"]:
        print(f"    not complete: {msg}")

    def row(label: str, s: dict[str, Any], unit: str = "ms", digits: int = 1) -> None:
        print(
            f"  {label:<44} {fmt(s['p50'], digits):>8} {fmt(s['p99'], digits):>8} {fmt(s['max'], digits):>8}"
            f" {s['n']:>7}  {unit}"
        )

    head = f"  {'':<44} {'p50':>8} {'p99':>8} {'max':>8} {'n':>7}"
    a = res["a_latency_ms"]
    method = (
        "upstream send time (probe) → frame receive time"
        if res["latency_method"] == "probe"
        else "scripted schedule → frame receive time (no probe)"
    )
    print(f"\n(a) upstream token → websocket frame  [{method}]")
    print(head)
    row("all chunks", a["all"])
    if res["latency_method"] == "probe":
        row("  first chunk of each stream", a["first_chunk_of_stream"])
        row("  later chunks", a["later_chunks"])
        row("  fused-answer chunks", a["final_answer_chunks"])
        row("  last chunk of each stream (stream-end lag)", a["stream_end"])
        row("same, against the scripted schedule", a["vs_schedule"])
        row("  of which upstream lateness (bench artefact)", a["upstream_lateness_vs_schedule"])
    b = res["b_final_first_token"]
    print(f"\n(b) fused answer first token vs scripted critical path ({b['critical_path_ms']:.0f} ms)")
    print(head)
    row("overhead, client-measured (start sent → frame)", b["overhead_ms"])
    row("  app's share (minus upstream lateness)", b["app_overhead_ms"])
    row("overhead, server's timings.final_ttft (no start)", b["server_final_ttft_overhead_ms"])
    if any(s["n"] for s in b["breakdown_ms"].values()):
        print("  breakdown (slowest member's chain):")
        for k, s in b["breakdown_ms"].items():
            row("    " + k, s)
    row("(start sent → run.started frame)", b["start_to_run_started_frame_ms"])
    sp = b.get("burst_spread_ms") or {}
    if sp.get("panel_requests", {}).get("n"):
        print(
            f"  burst: each round's runs reached the upstream within {fmt(sp['panel_requests']['max'])} ms "
            f"(first panel requests), their analyst requests within {fmt(sp['analyst_requests']['max'])} ms "
            "(max over rounds)"
        )
    asked = res.get("upstream_requests") or {}
    if asked:
        print(
            "  upstream requests: "
            + ", ".join(f"{role} {a['n']} (messages {a['mean_message_chars']:.0f} chars)" for role, a in asked.items())
        )
    if len(res["per_round"]) > 1:
        print("  per round (round 1 includes the server's first-use costs):")
        for rnd, v in res["per_round"].items():
            a_, b_ = v["a_latency_ms"], v["b_overhead_ms"]
            print(
                f"    round {rnd + 1}: (a) p50 {fmt(a_['p50'])} / p99 {fmt(a_['p99'])} ms;"
                f"  (b) overhead p50 {fmt(b_['p50'])} / max {fmt(b_['max'])} ms"
            )
    c = res["c_frames"]
    print(f"\n(c) frames over {c['span_s']:.1f} s")
    print(f"  frames received (run frames, all sockets)     {c['frames_total']}")
    print(f"  frames/s, total                               {c['frames_per_s_total']:.1f}")
    print(head)
    row("frames/s per socket (over its runs)", c["frames_per_s_per_socket"], "frames/s")
    row("upstream chunks per delta frame (coalescing)", c["upstream_chunks_per_delta_frame"], "chunks", 2)
    row("delta events per delta frame", c["delta_events_per_delta_frame"], "events", 2)
    print(f"  bytes received {c['bytes_total'] / 1e6:.2f} MB, mean frame {c['mean_frame_bytes']:.0f} B")
    print("\n(d) memory (RSS, sampled every 100 ms) and CPU during the runs")
    print(f"  {'process':<14} {'before runs':>12} {'peak':>10} {'growth':>10} {'CPU s':>8} {'CPU %':>7}")
    for name, m in mem["processes"].items():
        print(
            f"  {name:<14} {m['baseline_mb']:>10.1f}MB {m['peak_mb']:>8.1f}MB {m['peak_mb'] - m['baseline_mb']:>8.1f}MB"
            f" {m['cpu_s']:>8.2f} {m['cpu_pct']:>6.0f}%"
        )
    dt = mem["daphne_total"]
    if dt["processes"] > 1:
        print(
            f"  {'daphne, all ' + str(dt['processes']):<14} {dt['baseline_mb']:>10.1f}MB {dt['peak_mb']:>8.1f}MB"
            f" {dt['growth_mb']:>8.1f}MB {dt['cpu_s']:>8.2f} {dt['cpu_pct']:>6.0f}%  (sum of the per-process values)"
        )
    print(
        f"  Daphne RSS growth per live run: {dt['growth_per_live_run_mb']:.2f} MB "
        f"((peak − before runs) / {mem['concurrent_runs']} concurrent runs"
        + (", summed over the workers)" if dt["processes"] > 1 else ")")
    )
    print(
        f"  ({mem['samples']} samples; CPU % is of one core over {mem['window_s']:.1f} s; the machine has "
        f"{os.cpu_count()} cores)"
    )
    print(
        f"  whole machine {mem['machine_cpu_pct']:.0f}% busy, of which processes outside the benchmark "
        f"{mem['other_processes_cpu_pct']:.0f}%"
        + ("  ← NOISY: other work was competing for the cores" if mem["other_processes_cpu_pct"] > 25 else "")
    )
    cl = mem["client_loop_lag_ms"]
    print(
        f"  bench client event-loop lag: p99 {fmt(cl['p99'])} ms, max {fmt(cl['max'])} ms, "
        f"{mem['client_loop_stalls_over_20ms']} stalls > 20 ms (its receive times are late by as much)"
    )
    if mem.get("daphne_loop_probe"):
        lp = mem["daphne_loop_probe"]
        print(
            f"  Daphne loop probe: {lp['stalls']} stalls > 40 ms (max {fmt(lp['max_stall_ms'])} ms, "
            f"{lp['stall_ms_total']:.0f} ms in all); {lp['gc_pauses']} GC pauses > 5 ms "
            f"(max {fmt(lp['max_gc_ms'])} ms); stack samples in {lp['file']}"
        )
        for stack, n in lp["top_stacks"][:3]:
            print(f"    {n:>4} stall samples: {stack}")
        print(f"  Daphne main thread busy in {lp['busy_pct_of_samples']:.0f}% of 5-ms samples; where:")
        for where, share in lp["profile_top"]:
            print(f"    {share:5.1f}%  {where}")
    integ = res["integrity"]
    print(
        f"\n  integrity: {integ['received_chars']}/{integ['expected_chars']} streamed characters received, "
        f"{integ['offset_gaps_or_overlaps']} offset gaps/overlaps, {integ['chunks_not_found_in_frames']} chunks unmatched"
    )
    print(f"             {integ['lost_chars']} characters lost, {integ['duplicated_chars']} duplicated")
    for msg in integ["streams_short_or_repeated"][:5]:
        print(f"               {msg}")
    print(line)


# --------------------------------------------------------------------------- the servers of one side


@dataclass
class Target:
    """What the clients talk to on one side (the bare relay, or the app) and the processes behind it."""

    kind: str  # "relay" | "app"
    port: int  # where the clients connect (Daphne, or nginx in front of the workers)
    accounts: list[dict[str, Any]]
    cookie_name: str = "sessionid"
    login: str = "—"
    stack: str = ""
    servers: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)  # the Daphnes (sampled)
    others: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)  # nginx (stopped with them)
    sampled: dict[str, int] = field(default_factory=dict)  # other processes to sample (nginx's worker)
    logs: list[Path] = field(default_factory=list)
    probe_files: list[Path] = field(default_factory=list)
    nginx_site: str = ""


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def daphne_command(args: argparse.Namespace, port: int, app: str, *, proxy_headers: bool = False) -> list[str]:
    return [
        sys.executable,
        *([str(ROOT / "bench" / "daphne_probe.py")] if args.loop_probe else ["-m", "daphne"]),
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        *(["--proxy-headers"] if proxy_headers else []),
        app,
    ]


def app_env(env: dict[str, str], database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **env,
        "DATABASE_URL": database_url,
        "FUSION_ALLOW_SERVER_KEY": "true",  # the bench accounts have no keys of their own
        "FUSION_DAILY_SPEND_LIMIT_USD": "0",  # no limit: rounds of runs must not be refused
        "FUSION_MAX_CONCURRENT_RUNS_PER_USER": "1000",
        # Every bench account signs in from 127.0.0.1 at once: no per-address sign-in bucket.
        "FUSION_LOGIN_RATE_PER_MIN": "0",
        "FUSION_SIGNUP": "open",
        "REDIS_URL": redis_url,
        "FUSION_DEMO": "false",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }


def migrate_and_make_users(args: argparse.Namespace, env: dict[str, str]) -> list[dict[str, Any]]:
    mig = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
    )
    if mig.returncode != 0:
        raise BenchError(f"manage.py migrate failed (exit {mig.returncode}):\n{mig.stderr[-3000:]}")
    accounts: list[dict[str, Any]] = run_django(SETUP, [str(args.runs), PASSWORD], env, timeout=60 + 0.2 * args.runs)
    return accounts


def sign_in(
    args: argparse.Namespace, base: str, accounts: list[dict[str, Any]], env: dict[str, str]
) -> tuple[str, str]:
    """Sessions for every account: the first --http-logins over HTTP, the rest made directly."""
    cookie_name = "sessionid"
    used = []
    n_http = 0 if args.login == "session" else min(len(accounts), max(0, args.http_logins))
    if n_http:
        t = time.monotonic()
        sessions = asyncio.run(http_logins(base, [a["username"] for a in accounts[:n_http]]))
        for acc, sess in zip(accounts, sessions):
            acc["session"] = sess
        ok = sum(1 for x in sessions if x)
        print(f"  {ok}/{n_http} users signed in over HTTP in {time.monotonic() - t:.1f} s", file=sys.stderr)
        if ok:
            used.append(f"http ({ok} users)")
        if ok < n_http:
            print("  HTTP login failed for some users; creating their sessions directly", file=sys.stderr)
    rest = [a for a in accounts if not a.get("session")]
    if rest:
        made = run_django(SESSIONS, [json.dumps([a["user_id"] for a in rest])], env, timeout=60 + 0.2 * len(rest))
        if len(rest) == len(accounts):
            cookie_name = made["cookie"]
        for acc in rest:
            acc["session"] = made["sessions"][str(acc["user_id"])]
        failed = " (HTTP login failed)" if n_http and len(rest) > len(accounts) - n_http else ""
        used.append(f"session ({len(rest)} users{failed})")
    return cookie_name, " + ".join(used)


def start_relay(args: argparse.Namespace, d: Path, children: Children, env: dict[str, str]) -> Target:
    port = free_port()
    log = d / "daphne.log"
    proc = children.start("daphne (relay)", daphne_command(args, port, "bench.relay:application"), env=env, log=log)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, "Daphne (relay)", log, 30)
    accounts = [{"conversation_id": i + 1, "session": "relay", "username": f"bench{i}"} for i in range(args.runs)]
    return Target(
        "relay",
        port,
        accounts,
        login="none (the relay accepts any socket)",
        stack="none (bench/relay.py: no channel layer, no database, no rendering)",
        servers=[("daphne", proc)],
        logs=[log],
        probe_files=[Path(env["BENCH_LOOP_PROBE_OUT"])],
    )


def start_single(args: argparse.Namespace, d: Path, children: Children, env0: dict[str, str]) -> Target:
    env = app_env(env0, f"sqlite:///{d / 'bench.sqlite3'}", "")
    accounts = migrate_and_make_users(args, env)
    port = free_port()
    log = d / "daphne.log"
    proc = children.start("daphne", daphne_command(args, port, "fusionsite.asgi:application"), env=env, log=log)
    wait_http(f"http://127.0.0.1:{port}/healthz", proc, "Daphne", log, 30)
    cookie_name, login = sign_in(args, f"http://127.0.0.1:{port}", accounts, env)
    return Target(
        "app",
        port,
        accounts,
        cookie_name,
        login,
        "in-memory / temporary SQLite",
        servers=[("daphne", proc)],
        logs=[log],
        probe_files=[Path(env["BENCH_LOOP_PROBE_OUT"])],
    )


def start_cluster(
    args: argparse.Namespace,
    d: Path,
    children: Children,
    cleanups: list[tuple[str, Any]],
    env0: dict[str, str],
) -> Target:
    """N Daphnes (PostgreSQL + Redis) behind a local nginx; the database and Redis are cleaned up at exit."""
    from bench import cluster

    try:
        dbname, db_url = cluster.create_database()
    except Exception as exc:
        raise BenchError(f"could not create a database on PostgreSQL 127.0.0.1:5432 (user postgres): {exc}") from exc
    cleanups.append((f"drop database {dbname}", lambda: cluster.drop_database(dbname)))
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    try:
        cluster.flush_redis(redis_url)
    except Exception as exc:
        raise BenchError(f"Redis at {redis_url} is not usable: {exc}") from exc
    cleanups.append((f"flush {redis_url}", lambda: cluster.flush_redis(redis_url)))
    env = app_env(env0, db_url, redis_url)
    env.update(
        {
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),  # every worker signs and checks sessions alike
            "FUSION_BEHIND_TLS": "false",
            "DJANGO_SECURE_PROXY_SSL_HEADER": "",
        }
    )
    t = time.monotonic()
    accounts = migrate_and_make_users(args, env)
    print(f"  PostgreSQL database {dbname} migrated, users made in {time.monotonic() - t:.1f} s", file=sys.stderr)
    ports = free_ports(args.workers + 1)
    nginx_port, daphne_ports = ports[0], ports[1:]
    target = Target("app", nginx_port, accounts)
    for i, port in enumerate(daphne_ports, 1):
        log = d / f"daphne-{i}.log"
        probe_out = d / f"daphne_probe-{i}.json"
        proc = children.start(
            f"daphne-{i}",
            daphne_command(args, port, "fusionsite.asgi:application", proxy_headers=True),
            env={**env, "BENCH_LOOP_PROBE_OUT": str(probe_out)},
            log=log,
        )
        target.servers.append((f"daphne-{i}", proc))
        target.logs.append(log)
        target.probe_files.append(probe_out)
    for (name, proc), port, log in zip(target.servers, daphne_ports, target.logs):
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, name, log, 40)
    ndir = d / "nginx"
    ndir.mkdir()
    conf, target.nginx_site = cluster.nginx_config(ndir, nginx_port, daphne_ports)
    (ndir / "nginx.conf").write_text(conf)
    checked = subprocess.run(
        [*cluster.nginx_command(ndir)[:-2], "-t", "-q"], capture_output=True, text=True, timeout=30
    )
    if checked.returncode != 0:
        raise BenchError(f"nginx -t refused {ndir / 'nginx.conf'}:\n{checked.stdout}{checked.stderr}")
    nginx = children.start("nginx", cluster.nginx_command(ndir), env=env0, log=ndir / "stdout.log")
    target.others.append(("nginx", nginx))
    wait_http(f"http://127.0.0.1:{nginx_port}/healthz", nginx, "nginx", ndir / "error.log", 15)
    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(nginx.pid).children()
        for i, w in enumerate(workers, 1):
            target.sampled["nginx worker" + (f" {i}" if len(workers) > 1 else "")] = w.pid
    # Redis is part of what is measured here (one long-lived process, shared with anything else
    # that uses it); PostgreSQL's backends come and go with each connection, so their CPU stays
    # in "processes outside the benchmark".
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") == "redis-server":
            target.sampled["redis-server"] = proc.pid
            break
    target.cookie_name, target.login = sign_in(args, f"http://127.0.0.1:{nginx_port}", accounts, env)
    target.stack = (
        f"Redis db {args.redis_db} / PostgreSQL {dbname}; {args.workers} Daphne(s) behind nginx 127.0.0.1:{nginx_port}"
    )
    return target


# --------------------------------------------------------------------------- one side, measured


def run_side(
    args: argparse.Namespace,
    side: str,
    tmp: Path,
    children: Children,
    cleanups: list[tuple[str, Any]],
    scripts_file: Path,
    scripts: dict[str, Any],
    plans: list[list[RunPlan]],
    timing: dict[str, Any],
) -> dict[str, Any]:
    """Start a fresh upstream and one side's servers, drive the load, stop them; the side's numbers."""
    t_side = time.monotonic()
    d = tmp / side
    d.mkdir()
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    env = {
        **os.environ,
        "OPENROUTER_BASE_URL": upstream_url + "/v1",
        "OPENROUTER_API_KEY": "x",
        "PYTHONUNBUFFERED": "1",
        "BENCH_LOOP_PROBE_OUT": str(d / "daphne_probe.json"),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    if args.frame_interval_ms is not None:
        env["FUSION_FRAME_INTERVAL_MS"] = str(args.frame_interval_ms)
    frame_interval = env.get("FUSION_FRAME_INTERVAL_MS") or "40 (app default)"
    print(f"[{side}] starting: {args.runs} runs × {args.rounds} rounds; logs in {d}", file=sys.stderr)
    up_log = d / "upstream.log"
    upstream = children.start(
        f"upstream ({side})",
        [
            sys.executable,
            *(["-m", "chat.testing.scripted"] if args.no_probe else [str(ROOT / "bench" / "upstream_probe.py")]),
            "--port",
            str(up_port),
            "--scripts",
            str(scripts_file),
            "--time-scale",
            str(args.time_scale),
        ],
        env=env,
        log=up_log,
    )
    wait_http(upstream_url + "/v1/models", upstream, "scripted upstream", up_log, 15)
    if side == "relay":
        target = start_relay(args, d, children, env)
    elif args.workers:
        target = start_cluster(args, d, children, cleanups, env)
    else:
        target = start_single(args, d, children, env)
    print(f"  [{side}] servers up and users signed in after {time.monotonic() - t_side:.1f} s", file=sys.stderr)
    main_log = target.logs[0]

    # --- drive
    watched = {name: p.pid for name, p in target.servers}
    watched.update(target.sampled)
    watched.update({"upstream": upstream.pid, "bench client": os.getpid()})
    sampler = Sampler(watched)
    sampler.start()
    cpu0: dict[str, float] = {}
    lag = LoopLag()
    sys_cpu0: list[Any] = []
    wall0 = [0.0]

    def on_connected() -> None:
        sampler.mark_baseline()
        cpu0.update(sampler.cpu())
        sys_cpu0.append(psutil.cpu_times())
        wall0[0] = time.monotonic()

    try:
        socks = asyncio.run(
            drive(args, target.port, target.accounts, target.cookie_name, plans, on_connected, lag, label=side)
        )
    except (OSError, websockets.InvalidHandshake, websockets.InvalidStatus) as exc:
        raise BenchError(f"websocket connection failed: {exc!r}\n{tail(main_log)}") from exc
    except websockets.ConnectionClosed as exc:
        raise BenchError(f"websocket closed: {exc!r}\n{tail(main_log)}") from exc
    finally:
        sampler.stop()
    cpu1 = sampler.cpu()
    sys_cpu1 = psutil.cpu_times()
    window = max(1e-9, time.monotonic() - wall0[0])
    busy = 0.0
    if sys_cpu0:
        a, b = sys_cpu0[0], sys_cpu1
        busy = (b.user + b.system + getattr(b, "nice", 0) + getattr(b, "irq", 0) + getattr(b, "softirq", 0)) - (
            a.user + a.system + getattr(a, "nice", 0) + getattr(a, "irq", 0) + getattr(a, "softirq", 0)
        )
    sampler.sample()

    # --- upstream's records
    try:
        requests = httpx.get(upstream_url + "/_scripted/requests", timeout=30).json()["requests"]
    except (httpx.HTTPError, ValueError, KeyError):
        requests = []
    sends = None
    try:
        r = httpx.get(upstream_url + "/_bench/sends", timeout=30)
        if r.status_code == 200:
            sends = r.json()["sends"]
    except (httpx.HTTPError, ValueError, KeyError):
        pass

    # This side's servers go away now (the probe writes its record on shutdown; the next side must
    # not share the cores with them).
    for _name, proc in [*target.others, *target.servers]:
        children.stop(proc)
    children.stop(upstream)
    probe = None
    if args.loop_probe:
        probe = summarise_probe(
            target.probe_files[0],
            min((r.t_start for s in socks for r in s.runs), default=0),
            max((r.t_end or 0 for s in socks for r in s.runs), default=None),
        )
    dump: list[list[Any]] | None = [] if args.dump_chunks else None
    res = analyse(args, socks, scripts, timing, sends, requests, dump)
    if args.dump_chunks:
        path = Path(args.dump_chunks)
        if args.baseline:
            path = path.with_name(f"{path.stem}-{side}{path.suffix}")
        path.write_text(
            json.dumps(
                {
                    "chunks": dump,  # [model, offset, length, upstream send time, frame receive time]
                    "runs": [
                        {
                            "conv": rec.plan.conv_index,
                            "round": rec.plan.round,
                            "t_start": rec.t_start,
                            "t_end": rec.t_end,
                            "status": rec.status,
                        }
                        for s in socks
                        for rec in s.runs
                    ],
                    "requests": [{"model": q["model"], "time": q["time"]} for q in requests],
                    "sends": sends,
                }
            )
        )
    ours = sum(cpu1.get(n, 0) - cpu0.get(n, 0) for n in sampler.procs)
    processes = {
        name: {
            "baseline_mb": sampler.baseline.get(name, 0) / 2**20,
            "peak_mb": sampler.peak.get(name, 0) / 2**20,
            "cpu_s": cpu1.get(name, 0) - cpu0.get(name, 0),
            "cpu_pct": 100 * (cpu1.get(name, 0) - cpu0.get(name, 0)) / window,
        }
        for name in sampler.procs
    }
    daphnes = [processes[name] for name, _ in target.servers if name in processes]
    growth = sum(p["peak_mb"] - p["baseline_mb"] for p in daphnes)
    mem = {
        "samples": sampler.samples,
        "window_s": window,
        "concurrent_runs": args.runs,
        "machine_cpu_pct": 100 * busy / window,
        "other_processes_cpu_pct": max(0.0, 100 * (busy - ours) / window),
        "client_loop_lag_ms": stats(lag.gaps),
        "client_loop_stalls_over_20ms": sum(1 for g in lag.gaps if g > 20),
        "daphne_loop_probe": probe,
        "processes": processes,
        "daphne_total": {
            "processes": len(daphnes),
            "baseline_mb": sum(p["baseline_mb"] for p in daphnes),
            "peak_mb": sum(p["peak_mb"] for p in daphnes),
            "growth_mb": growth,
            "growth_per_live_run_mb": growth / max(1, args.runs),
            "cpu_s": sum(p["cpu_s"] for p in daphnes),
            "cpu_pct": sum(p["cpu_pct"] for p in daphnes),
        },
    }
    cfg = {
        "server": "the bare relay (bench/relay.py under Daphne)"
        if side == "relay"
        else ("the app: " + (f"{args.workers} Daphne worker(s) behind nginx" if args.workers else "one Daphne")),
        "concurrent runs / sockets": f"{args.runs} (one user + conversation each)",
        "rounds": args.rounds,
        "panel": f"{args.members} members + analyst + writer",
        "member timing": ", ".join(
            f"m{m}: ttft {t['ttft_ms'] * args.time_scale:.0f} ms, {t['tokens_per_s'] / args.time_scale:.0f} tok/s"
            for m, t in enumerate(timing["members"])
        ),
        "member answer": f"{timing['member_chars'][0]} chars, {args.chunk_chars}-char chunks "
        f"(durations {', '.join(f'{d:.0f}' for d in timing['member_duration_ms'])} ms)",
        "analyst": f"ttft {timing['analyst_ms']:.0f} ms, unpaced (generated analysis JSON)",
        "writer": f"ttft {timing['writer_ttft_ms']:.0f} ms, {args.writer_tps / args.time_scale:.0f} tok/s, "
        f"{timing['writer_chars']} chars",
        "scripted critical path": f"{timing['critical_path_ms']:.0f} ms to the fused answer's first token",
        "time scale": args.time_scale,
        "FUSION_FRAME_INTERVAL_MS": frame_interval,
        "login": target.login,
        "channel layer / database": target.stack,
        **({"nginx site": target.nginx_site} if target.nginx_site else {}),
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"{platform.machine()}",
        "wall time of this side": f"{time.monotonic() - t_side:.1f} s",
    }
    title = "Fusion websocket fan-out benchmark" + (" — BARE RELAY (baseline)" if side == "relay" else " — APP")
    print_report(cfg, res, mem, title)
    return {"config": cfg, "results": res, "memory": mem}


# --------------------------------------------------------------------------- relay vs app


COMPARED: list[tuple[str, tuple[str, ...]]] = [
    ("token → frame, all chunks", ("a_latency_ms", "all")),
    ("  first chunk of each stream", ("a_latency_ms", "first_chunk_of_stream")),
    ("  stream-end lag (last chunk → its frame)", ("a_latency_ms", "stream_end")),
    (
        "start sent → panel request upstream",
        ("b_final_first_token", "breakdown_ms", "start sent → panel request upstream"),
    ),
    ("panel done → analyst request", ("b_final_first_token", "breakdown_ms", "panel done → analyst request")),
    ("analyst answer → writer request", ("b_final_first_token", "breakdown_ms", "analyst answer → writer request")),
    ("fused answer's first token: overhead, own share", ("b_final_first_token", "app_overhead_ms")),
]


def _dig(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        d = d.get(k) or {}
    return d


def _ratio(app: float | None, relay: float | None) -> float | None:
    if app is None or relay is None or relay <= 0:
        return None
    return app / relay


def compare(relay: dict[str, Any], app: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, path in COMPARED:
        r, a = _dig(relay["results"], path), _dig(app["results"], path)
        rows.append(
            {
                "metric": label,
                "unit": "ms",
                "relay": {"p50": r.get("p50"), "p99": r.get("p99"), "n": r.get("n", 0)},
                "app": {"p50": a.get("p50"), "p99": a.get("p99"), "n": a.get("n", 0)},
                "ratio_p99": _ratio(a.get("p99"), r.get("p99")),
            }
        )
    for label, get, unit in (
        ("runs completed", lambda s: f"{s['results']['runs']['complete']}/{s['results']['runs']['total']}", ""),
        (
            "characters lost / duplicated",
            lambda s: f"{s['results']['integrity']['lost_chars']} / {s['results']['integrity']['duplicated_chars']}",
            "",
        ),
        (
            "spread of a round's analyst requests (max)",
            lambda s: (s["results"]["b_final_first_token"].get("burst_spread_ms") or {})
            .get("analyst_requests", {})
            .get("max"),
            "ms",
        ),
        ("Daphne CPU (% of one core, all processes)", lambda s: s["memory"]["daphne_total"]["cpu_pct"], "%"),
        ("Daphne RSS growth per live run", lambda s: s["memory"]["daphne_total"]["growth_per_live_run_mb"], "MB"),
        ("other processes' CPU (noise)", lambda s: s["memory"]["other_processes_cpu_pct"], "%"),
    ):
        rv, av = get(relay), get(app)
        rows.append(
            {
                "metric": label,
                "unit": unit,
                "relay": rv,
                "app": av,
                "ratio": _ratio(av, rv) if isinstance(av, float) and isinstance(rv, float) else None,
            }
        )
    return rows


def print_comparison(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    line = "=" * 94
    print()
    print(f"Relay vs app: the same load ({args.runs} concurrent runs × {args.rounds} rounds, the same scripts)")
    print(line)
    print(f"  {'':<48} {'relay':^17} {'app':^17} {'app/relay':>9}")
    print(f"  {'':<48} {'p50':>8} {'p99':>8} {'p50':>8} {'p99':>8} {'(p99)':>9}")
    for row in rows:
        ratio = row.get("ratio_p99", row.get("ratio"))
        ratio_s = "—" if ratio is None else f"{ratio:.2f}×"
        if "ratio_p99" in row:
            r, a = row["relay"], row["app"]
            print(
                f"  {row['metric']:<48} {fmt(r['p50']):>8} {fmt(r['p99']):>8} {fmt(a['p50']):>8} {fmt(a['p99']):>8}"
                f" {ratio_s:>9}  ms"
            )
            continue

        def cell(v: Any) -> str:
            if v is None:
                return "—"
            if isinstance(v, float):
                if row["unit"] == "MB":
                    return f"{v:.2f} MB"
                return f"{v:.0f}%" if row["unit"] == "%" else f"{v:.0f} {row['unit']}"
            return str(v)

        print(f"  {row['metric']:<48} {cell(row['relay']):>17} {cell(row['app']):>17} {ratio_s:>9}")
    print(line)


# --------------------------------------------------------------------------- main


def default_timeout(args: argparse.Namespace) -> float:
    """The hard limit: setup (servers, migrate, users, logins) plus the rounds, per side; ≥ 110 s."""
    setup = 30 + (45 if args.workers else 0) + 0.3 * args.runs
    rounds = args.rounds * (5 + 10 * args.time_scale + 0.15 * args.runs)
    return max(110.0, (2 if args.baseline else 1) * (setup + rounds + 15))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--runs", type=int, default=8, help="concurrent runs (= users = conversations = websockets)")
    p.add_argument("--members", type=int, default=3, help="panel members per run (1-8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --runs simultaneous runs (one turn each)")
    p.add_argument("--time-scale", type=float, default=1.0, help="scripted upstream time scale (<1 = faster)")
    p.add_argument("--chunk-chars", type=int, default=16, help="characters per upstream SSE chunk (~4 tokens)")
    p.add_argument("--member-chars", type=int, default=1600, help="length of each member's answer")
    p.add_argument("--member-ttft-ms", type=float, default=300)
    p.add_argument("--member-ttft-step-ms", type=float, default=200, help="member m's ttft = ttft + m × step")
    p.add_argument("--member-tps", type=float, default=120, help="tokens/s of member 0")
    p.add_argument("--member-tps-step", type=float, default=20, help="member m's pace = max(tps/4, tps − m × step)")
    p.add_argument("--analyst-ttft-ms", type=float, default=400)
    p.add_argument("--writer-ttft-ms", type=float, default=300)
    p.add_argument("--writer-tps", type=float, default=125)
    p.add_argument("--writer-chars", type=int, default=1000)
    p.add_argument(
        "--frame-interval-ms", type=int, default=None, help="FUSION_FRAME_INTERVAL_MS for Daphne (app default 40)"
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="first run the same load against the bare relay (bench/relay.py), then against the app; "
        "print both and a side-by-side table with the ratios",
    )
    p.add_argument("--relay-only", action="store_true", help="run the load against the bare relay only")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="the app as N Daphne processes behind a local nginx, on a fresh PostgreSQL database "
        "(127.0.0.1:5432) and Redis (127.0.0.1:6379); 0 = one Daphne, SQLite, in-memory channel layer",
    )
    p.add_argument("--redis-db", type=int, default=11, help="Redis database for --workers (flushed before and after)")
    p.add_argument(
        "--login",
        choices=("http", "session"),
        default="http",
        help="sign in through /accounts/login/ (the first --http-logins users; falls back to sessions) "
        "or create every session directly",
    )
    p.add_argument(
        "--http-logins",
        type=int,
        default=32,
        help="at most this many users sign in over HTTP (4 at a time; each costs the server one PBKDF2 "
        "check, ~0.2 s of CPU); the others get sessions made directly",
    )
    p.add_argument("--pause-s", type=float, default=0.3, help="pause between rounds")
    p.add_argument(
        "--round-timeout", type=float, default=None, help="seconds a round may take (default 45 + 0.25 × runs)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="hard limit for the whole benchmark, seconds (default: scaled with runs × rounds and sides, ≥ 110)",
    )
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="run plain `python -m chat.testing.scripted`; (a) is then measured against the scripted schedule",
    )
    p.add_argument(
        "--loop-probe",
        action="store_true",
        help="run Daphne through bench/daphne_probe.py: event-loop stalls, GC pauses, stack samples",
    )
    p.add_argument(
        "--dump-chunks",
        metavar="PATH",
        help="write every chunk's send and receive time (JSON; with --baseline, PATH-relay / PATH-app)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, database)")
    args = p.parse_args(argv)
    if not 1 <= args.members <= 8:
        p.error("--members must be 1..8")
    if args.runs < 1 or args.rounds < 1:
        p.error("--runs and --rounds must be ≥ 1")
    if args.baseline and args.relay_only:
        p.error("--baseline already runs the relay; use one of the two")
    if not 0 <= args.workers <= 32:
        p.error("--workers must be 0..32")
    if not 0 <= args.redis_db <= 15:
        p.error("--redis-db must be 0..15")
    if args.round_timeout is None:
        args.round_timeout = 45 + 0.25 * args.runs
    if args.timeout is None:
        args.timeout = default_timeout(args)
    return args


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _alarm(_signum: int, _frame: Any) -> None:
    raise BenchError("the benchmark hit its --timeout; stopping")


def raise_fd_limit(needed: int) -> None:
    """Each run holds a websocket in the client, and Daphne ~4 sockets: lift the soft limit to the hard one."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(args.timeout)))
    raise_fd_limit(64 + 8 * args.runs * (args.members + 3))
    t_begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ws_fanout-"))
    children = Children()
    cleanups: list[tuple[str, Any]] = []  # (what, callable): the database and Redis of --workers
    try:
        return _main(args, tmp, children, cleanups, t_begin)
    except BenchError as exc:
        print(f"\nws_fanout: FAILED: {exc}", file=sys.stderr)
        print(f"  logs: {tmp} (kept)", file=sys.stderr)
        args.keep_tmp = True
        return 1
    except KeyboardInterrupt:
        print("\nws_fanout: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.alarm(0)
        # Cleaning up must not be cut short by a second Ctrl-C / SIGTERM (every step has a timeout).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop_all()
        for what, undo in reversed(cleanups):
            try:
                undo()
            except Exception as exc:
                print(f"ws_fanout: cleanup failed ({what}): {exc}", file=sys.stderr)
        if not args.keep_tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _main(
    args: argparse.Namespace, tmp: Path, children: Children, cleanups: list[tuple[str, Any]], t_begin: float
) -> int:
    scripts, plans, timing = build_scripts(args)
    scripts_file = tmp / "scripts.json"
    scripts_file.write_text(json.dumps(scripts))
    sides = ["relay", "app"] if args.baseline else ["relay"] if args.relay_only else ["app"]
    print(
        f"ws_fanout: {' then '.join(sides)}; {args.runs} runs × {args.rounds} rounds, {args.members} members; "
        f"hard limit {args.timeout:.0f} s; temp dir {tmp}",
        file=sys.stderr,
    )
    out: dict[str, dict[str, Any]] = {}
    for side in sides:
        out[side] = run_side(args, side, tmp, children, cleanups, scripts_file, scripts, plans, timing)
    comparison = None
    if len(out) == 2:
        comparison = compare(out["relay"], out["app"])
        print_comparison(comparison, args)
    print(f"  total wall time {time.monotonic() - t_begin:.1f} s")
    if args.json:
        main_side = out.get("app") or out["relay"]
        doc = {**main_side, "timing": timing, "side": "app" if "app" in out else "relay"}
        if comparison is not None:
            doc["sides"] = out
            doc["comparison"] = comparison
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"  wrote {args.json}")
    ok = all(o["results"]["runs"]["complete"] == o["results"]["runs"]["total"] for o in out.values())
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
