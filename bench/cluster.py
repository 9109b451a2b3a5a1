"""PostgreSQL, Redis and nginx for ``bench/ws_fanout.py --workers N`` (several Daphnes behind nginx).

* ``create_database`` / ``drop_database``: a fresh ``fusion_bench_<random>`` on 127.0.0.1:5432
  (user ``postgres``, trust auth), made and dropped through the ``postgres`` database.
* ``flush_redis``: empties the bench's Redis database (before and after).
* ``nginx_config``: a local nginx in front of the Daphnes — everything (pid, logs, temp paths)
  inside the bench's temp dir, listening on a 127.0.0.1 port. Its site is the documented
  production config ``docs/deploy/nginx.conf`` made runnable here (see ``site_from_docs``: the
  same maps, balancing, locations, headers and timeouts; the bench's Daphnes as the upstream's
  servers, plain HTTP on 127.0.0.1, no redirect server, no static files), or, without that
  file, a built-in site of the same shape.

Nothing here is part of the app; only the benchmark imports it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_NGINX = ROOT / "docs" / "deploy" / "nginx.conf"
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
NGINX = "/usr/sbin/nginx"


# --------------------------------------------------------------------------- PostgreSQL and Redis


def create_database() -> tuple[str, str]:
    """A fresh database: (name, DATABASE_URL)."""
    import psycopg

    name = f"fusion_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a name we made
    return name, f"postgres://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg

    if not re.fullmatch(r"fusion_bench_[0-9a-f]+", name):
        raise ValueError(f"not a bench database: {name!r}")
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


# --------------------------------------------------------------------------- nginx


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def render(self, indent: int = 0) -> list[str]:
        pad = "    " * indent
        head = " ".join([self.name, *self.args])
        if self.block is None:
            return [f"{pad}{head};"]
        return [f"{pad}{head} {{", *(line for d in self.block for line in d.render(indent + 1)), f"{pad}}}"]


_TOKEN = re.compile(r"""#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"'#]+""")


def parse_nginx(text: str) -> list[Directive]:
    """A small nginx config parser: directives, arguments (quotes kept), nested blocks."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        tok = match.group(0)
        if tok.startswith("#"):
            continue
        if tok == ";":
            if words:
                stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif tok == "{":
            block: list[Directive] = []
            stack[-1].append(Directive(words[0] if words else "", words[1:], block))
            stack.append(block)
            words = []
        elif tok == "}":
            if len(stack) > 1:
                stack.pop()
            words = []
        else:
            words.append(tok)
    return stack[0]


def _walk(ds: list[Directive]) -> list[Directive]:
    out = []
    for d in ds:
        out.append(d)
        if d.block:
            out.extend(_walk(d.block))
    return out


def _builtin_site(port: int, daphne_ports: list[int]) -> list[Directive]:
    """The bench's own site when there is no documented config: the same shape, one location."""
    text = f"""
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream fusion {{ least_conn; {" ".join(f"server 127.0.0.1:{p};" for p in daphne_ports)} }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fusion;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
    """
    return parse_nginx(text)


def _header(location: list[Directive], name: str) -> Directive | None:
    for d in location:
        if d.name == "proxy_set_header" and d.args and d.args[0].lower() == name.lower():
            return d
    return None


def site_from_docs(text: str, port: int, daphne_ports: list[int]) -> tuple[list[Directive], list[str]]:
    """The documented site, runnable here: (its http-level directives, what was changed).

    Kept as documented: map blocks, the upstream's balancing lines, every proxied location with
    all its headers and timeouts. Changed: the upstream's servers are the bench's Daphnes; the
    port-80 redirect server goes; the TLS server listens on 127.0.0.1:<port> in plain HTTP (its
    ssl_*/http2 lines go); locations that proxy nothing (static files) go. If a proxied location
    lacks what the bench needs (Host $http_host; the websocket upgrade headers on some location),
    it is added and said so.
    """
    changed = ["upstream servers → the bench's Daphnes", f"listen 127.0.0.1:{port}, no TLS"]
    out: list[Directive] = []
    servers = 0
    for d in parse_nginx(text):
        if d.name == "upstream" and d.block is not None:
            kept = [x for x in d.block if x.name != "server"]
            out.append(
                Directive("upstream", d.args, kept + [Directive("server", [f"127.0.0.1:{p}"]) for p in daphne_ports])
            )
        elif d.name == "server" and d.block is not None:
            if any(x.name == "return" and x.args[:1] in (["301"], ["302"]) for x in _walk(d.block)):
                changed.append("redirect server dropped")
                continue
            body: list[Directive] = []
            for x in d.block:
                if x.name == "listen":
                    if not any(y.name == "listen" for y in body):
                        body.append(Directive("listen", [f"127.0.0.1:{port}"]))
                elif x.name.startswith("ssl_") or x.name == "http2":
                    continue
                elif x.name == "location" and x.block is not None and not any(y.name == "proxy_pass" for y in x.block):
                    changed.append(f"location {' '.join(x.args)} (not proxied) dropped")
                else:
                    body.append(x)
            proxied = [x for x in body if x.name == "location" and x.block is not None]
            for loc in proxied:
                host = _header(loc.block or [], "Host")
                if host is None or host.args[1:] != ["$http_host"]:
                    loc.block = [x for x in loc.block or [] if x is not host] + [
                        Directive("proxy_set_header", ["Host", "$http_host"])
                    ]
                    changed.append(f"location {' '.join(loc.args)}: Host $http_host added")
            if proxied and not any(_header(loc.block or [], "Upgrade") for loc in proxied):
                root = next((loc for loc in proxied if loc.args == ["/"]), proxied[0])
                root.block = (root.block or []) + parse_nginx(
                    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade;"
                )
                changed.append(f"location {' '.join(root.args)}: websocket upgrade headers added")
            servers += 1
            out.append(Directive("server", d.args, body))
        else:
            out.append(d)
    if servers != 1:
        raise ValueError(f"expected one server block besides the redirect, found {servers}")
    return out, changed


def nginx_config(workdir: Path, port: int, daphne_ports: list[int], documented: Path = DEPLOY_NGINX) -> tuple[str, str]:
    """(the bench's nginx.conf, where its site came from). Pid, logs, temp paths: all in *workdir*."""
    w = str(workdir)
    source = "built-in (docs/deploy/nginx.conf not found)"
    site = _builtin_site(port, daphne_ports)
    if documented.exists():
        try:
            site, changed = site_from_docs(documented.read_text(), port, daphne_ports)
            source = f"{documented.relative_to(ROOT) if documented.is_relative_to(ROOT) else documented} ({'; '.join(changed)})"
        except (ValueError, IndexError) as exc:
            source = f"built-in ({documented.name} not usable: {exc})"
    lines = [f"# Generated by bench/cluster.py; site: {source}"]
    if os.geteuid() == 0:
        # A root master would switch its workers to "nobody", who cannot enter the temp dir: keep
        # the bench's own user (nothing outside the temp dir is touched).
        lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name};")
    lines += [
        "worker_processes 1;",
        "worker_rlimit_nofile 16384;",
        f"pid {w}/nginx.pid;",
        f"lock_file {w}/nginx.lock;",
        f"error_log {w}/error.log warn;",
        "events { worker_connections 8192; }",
        "http {",
        "    default_type application/octet-stream;",
        f"    access_log {w}/access.log;",
        *(f"    {kind}_temp_path {w}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        *(line for d in site for line in d.render(1)),
        "}",
        "",
    ]
    return "\n".join(lines), source


def nginx_command(workdir: Path) -> list[str]:
    return [
        NGINX,
        "-p",
        str(workdir),
        "-c",
        str(workdir / "nginx.conf"),
        "-e",
        str(workdir / "error.log"),
        "-g",
        "daemon off;",
    ]
