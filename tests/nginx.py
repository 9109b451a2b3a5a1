"""nginx for the tests: the documented ``docs/deploy/nginx.conf``, as plain HTTP, run from a temp dir.

:func:`site_for_tests` turns the production file into what a test can run, and changes nothing
else in it:

* the ``upstream fusion`` block gets the test's servers instead of ``127.0.0.1:8001`` … (its
  other lines, ``least_conn`` among them, stay);
* the port-80 server (the one that answers ``return 301``) is dropped;
* in the TLS server, the ``listen`` lines become one ``listen 127.0.0.1:<port>;`` and the
  ``ssl_*`` and ``http2`` lines go;
* the ``alias`` of ``/static/`` (collectstatic's STATIC_ROOT in production) points at a
  directory the test names.

Every location, proxy header and timeout is the documented one. If the file's shape changes so
that a rule no longer applies, :func:`site_for_tests` raises instead of testing something else.

:func:`running_nginx` wraps a site in a whole ``nginx.conf`` whose pid, logs, lock and temp
paths all live in one directory, checks it with ``nginx -t``, runs ``nginx -p <dir> -c
<dir>/nginx.conf -g 'daemon off;'`` and stops it on the way out, whatever happened. The wrapper
adds two things for the tests only: an access log with ``$upstream_addr``, and the header
``X-Fusion-Upstream: $upstream_addr`` on every proxied response (the websocket handshake's 101
too), so a test can tell which Daphne served a request.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.daphne import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
NGINX = Path("/usr/sbin/nginx")
SITE = ROOT / "docs" / "deploy" / "nginx.conf"
UPSTREAM_HEADER = "X-Fusion-Upstream"

_SERVER_LINE = re.compile(r"^\s*server\s+\S+.*;\s*$")
_REDIRECT = re.compile(r"^\s*return\s+301\s")
_LISTEN = re.compile(r"^\s*listen\s")
_TLS_ONLY = re.compile(r"^\s*(ssl_\w+|http2)\s")
_STATIC_ALIAS = re.compile(r"^(\s*)alias\s+\S+;\s*$")


def _strip_comment(line: str) -> str:
    """The line without its ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            return line[:i].rstrip()
    return line.rstrip()


def _top_level(text: str) -> list[list[str]]:
    """The file's top-level statements, each as its (comment-free, non-empty) lines."""
    statements: list[list[str]] = []
    current: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line.strip():
            continue
        current.append(line)
        depth += line.count("{") - line.count("}")
        if depth < 0:
            raise ValueError(f"{SITE.name}: unbalanced '}}' at {raw!r}")
        if depth == 0 and (line.rstrip().endswith(("}", ";"))):
            statements.append(current)
            current = []
    if depth or current:
        raise ValueError(f"{SITE.name}: unterminated block at the end of the file")
    return statements


def site_for_tests(text: str, *, upstreams: list[int], listen_port: int, static_root: Path) -> str:
    """``docs/deploy/nginx.conf`` as plain HTTP on 127.0.0.1:<listen_port>, upstreams on 127.0.0.1."""
    out: list[str] = []
    seen = {"upstream": 0, "redirect": 0, "tls": 0, "listen": 0, "alias": 0}
    for statement in _top_level(text):
        head = statement[0].split()
        if head[:2] == ["upstream", "fusion"]:
            seen["upstream"] += 1
            kept = [line for line in statement if not _SERVER_LINE.match(line)]
            if len(kept) == len(statement):
                raise ValueError("upstream fusion has no server lines to replace")
            indent = "    "
            out += kept[:-1] + [f"{indent}server 127.0.0.1:{port};" for port in upstreams] + kept[-1:]
        elif head[:1] == ["server"]:
            if any(_REDIRECT.match(line) for line in statement):
                seen["redirect"] += 1
                continue
            seen["tls"] += 1
            if not any(_LISTEN.match(line) and " ssl" in line for line in statement):
                raise ValueError("the server block without a redirect does not listen with ssl")
            for line in statement:
                if _LISTEN.match(line):
                    if not seen["listen"]:
                        out.append(f"    listen 127.0.0.1:{listen_port};")
                    seen["listen"] += 1
                elif _TLS_ONLY.match(line):
                    continue
                elif (alias := _STATIC_ALIAS.match(line)) is not None:
                    seen["alias"] += 1
                    out.append(f"{alias.group(1)}alias {static_root.resolve()}/;")
                else:
                    out.append(line)
        else:
            out += statement
    expected = {"upstream": 1, "redirect": 1, "tls": 1, "alias": 1}
    if {k: seen[k] for k in expected} != expected:
        raise ValueError(f"{SITE.name} does not have the shape tests/nginx.py expects: {seen}")
    return "\n".join(out) + "\n"


def full_config(site: str, prefix: Path) -> str:
    """A whole nginx.conf around *site*: everything it writes stays under *prefix*."""
    p = prefix.resolve()
    mime = Path("/etc/nginx/mime.types")
    types = (
        f"include {mime};"
        if mime.exists()
        else "types { text/html html; text/css css; text/javascript js mjs; image/svg+xml svg; }"
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dir (mode 700)
    temp = "\n".join(
        f"    {kind}_temp_path {p}/temp/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "# Generated by tests/nginx.py from docs/deploy/nginx.conf.\n"
        f"{user}"
        "worker_processes 1;\n"
        f"pid {p}/nginx.pid;\n"
        f"lock_file {p}/nginx.lock;\n"
        f"error_log {p}/error.log notice;\n"
        "events {\n    worker_connections 512;\n}\n"
        "http {\n"
        f"    {types}\n"
        "    default_type application/octet-stream;\n"
        f"{temp}\n"
        "    log_format fusion_test '$remote_addr \"$request\" $status upstream=$upstream_addr';\n"
        f"    access_log {p}/access.log fusion_test;\n"
        "    # For the tests only: which upstream served a request (also on a websocket's 101).\n"
        f"    add_header {UPSTREAM_HEADER} $upstream_addr always;\n"
        f"{site}"
        "}\n"
    )


_CERTIFICATE = re.compile(r"^(\s*)(ssl_certificate|ssl_certificate_key)\s+\S+;\s*$")


def production_with_certificate(text: str, *, certificate: Path, key: Path) -> str:
    """``docs/deploy/nginx.conf`` unchanged, TLS and all, but for the certificate placeholders."""
    out, replaced = [], 0
    for line in text.splitlines():
        if (m := _CERTIFICATE.match(line)) is not None:
            replaced += 1
            line = f"{m.group(1)}{m.group(2)} {(certificate if m.group(2) == 'ssl_certificate' else key).resolve()};"
        out.append(line)
    if replaced != 2:
        raise ValueError(f"{SITE.name}: expected one ssl_certificate and one ssl_certificate_key, found {replaced}")
    return "\n".join(out) + "\n"


def check_config(prefix: Path, site: str) -> Path:
    """Write the whole nginx.conf for *site* under *prefix* and have ``nginx -t`` check it (no port is bound)."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(full_config(site, prefix))
    checked = subprocess.run(
        [str(NGINX), "-p", str(prefix), "-c", str(conf), "-t", "-q"], capture_output=True, text=True, timeout=30
    )
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t refused {conf}:\n{checked.stdout}{checked.stderr}")
    return conf


@dataclass
class Nginx:
    port: int
    prefix: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return self.url

    def _read(self, name: str) -> str:
        try:
            return (self.prefix / name).read_text(errors="replace")
        except OSError:
            return ""

    def access_log(self) -> str:
        return self._read("access.log")

    def log_tail(self, lines: int = 30) -> str:
        parts = []
        for name in ("stderr.log", "error.log", "access.log"):
            text = "\n".join(self._read(name).splitlines()[-lines:])
            parts.append(f"--- nginx {name} ---\n{text}")
        return "\n".join(parts)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], prefix: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}:\n{_logs(prefix)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{_logs(prefix)}")
        time.sleep(0.05)


def _logs(prefix: Path) -> str:
    out = []
    for name in ("stderr.log", "error.log"):
        with contextlib.suppress(OSError):
            out.append(f"--- {name} ---\n" + (prefix / name).read_text(errors="replace")[-4000:])
    return "\n".join(out)


@contextlib.contextmanager
def running_nginx(prefix: Path, *, upstreams: list[int], static_root: Path, timeout: float = 10) -> Iterator[Nginx]:
    """nginx running docs/deploy/nginx.conf (as plain HTTP) in front of *upstreams*, under *prefix*."""
    port = free_port()
    site = site_for_tests(SITE.read_text(), upstreams=upstreams, listen_port=port, static_root=static_root)
    conf = check_config(prefix, site)
    with (prefix / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [str(NGINX), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], stdout=err, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process, prefix, timeout)
        yield Nginx(port=port, prefix=prefix, process=process)
    finally:
        if process.poll() is None:
            stop_process(process)
