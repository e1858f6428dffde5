"""The upstream stub: nginx answering the fixed bodies of fixtures.py, far cheaper than keyplane."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import fixtures
from harness import HOST, BenchError, free_port, pinned, stop, vm_kb, wait_http
from harness import cpu_seconds as process_cpu_seconds

# nginx reads a quoted `return` text as one configuration token, limited to 4 KB.
_NGINX_TOKEN_MAX = 3500


def _nginx_text(body: bytes) -> str:
    text = body.decode()
    if any(c in text for c in "'\\$"):
        raise ValueError("stub bodies must not contain quotes, backslashes or '$'")
    return text.replace("\n", "\\n")


def _route(files: Path, path: str, body: bytes, content_type: str) -> str:
    if len(body) <= _NGINX_TOKEN_MAX:
        return (
            f"location = {path} {{ default_type {content_type}; "
            f"return 200 '{_nginx_text(body)}'; }}\n"
        )
    # Too long for `return`: a static file. nginx refuses POST to static files with 405, which
    # error_page turns back into the file with status 200.
    name = path.strip("/").replace("/", "_") + ".body"
    (files / name).write_bytes(body)
    return (
        f"location = {path} {{ default_type {content_type}; "
        f"error_page 405 =200 /{name}; try_files /{name} =404; }}\n"
    )


def nginx_config(directory: Path, connections: int, http: str) -> str:
    """A whole nginx configuration: one worker in the foreground, its pid, error log and temporary
    files in ``directory``, no access log unless ``http`` (the rest of the http block) asks."""
    d = directory
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fastcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
{http}}}
"""


def start_nginx(directory: Path, config: str, cpus: str | None) -> subprocess.Popen[bytes]:
    """Writes ``config`` to ``directory``/nginx.conf and starts nginx on it, pinned to ``cpus``."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise BenchError("nginx is not installed (run bench/setup.sh)")
    conf = directory / "nginx.conf"
    conf.write_text(config)
    argv = [nginx, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)]
    return subprocess.Popen(pinned(cpus, argv), stdin=subprocess.DEVNULL)


ROUTES: list[tuple[str, bytes, str]] = [
    ("/v1/models", fixtures.MODELS_RESPONSE, "application/json"),
    ("/v1/chat/completions", fixtures.CHAT_RESPONSE, "application/json"),
    ("/v1/embeddings", fixtures.EMBEDDINGS_RESPONSE, "application/json"),
    # The streaming upstream has its own base URL (keyplane appends /chat/completions to it).
    ("/stream/v1/models", fixtures.MODELS_RESPONSE, "application/json"),
    ("/stream/v1/chat/completions", fixtures.CHAT_STREAM_RESPONSE, "text/event-stream"),
]


class Stub:
    """nginx (one worker, not daemonized) answering fixed bodies on two ports.

    ``direct_port`` is what wrk hits for the baseline; ``upstream_port`` is what keyplane forwards
    to, and only it keeps an access log, so the accounting check can count exactly how many
    requests keyplane forwarded."""

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        self.dir = workdir / "nginx"
        self.files = self.dir / "files"
        self.cpus = cpus
        self.direct_port = free_port()
        self.upstream_port = free_port()
        self.access_log = self.dir / "upstream-access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def direct(self) -> str:
        return f"http://{HOST}:{self.direct_port}"

    @property
    def upstream(self) -> str:
        return f"http://{HOST}:{self.upstream_port}"

    def _config(self) -> str:
        routes = "".join(_route(self.files, p, b, t) for p, b, t in ROUTES)
        (self.dir / "routes.conf").write_text(routes)
        d = self.dir
        return nginx_config(
            d,
            4096,
            f"""
  log_format bench '$request $status';
  client_body_buffer_size 64k;
  client_max_body_size 1m;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server_tokens off;
  open_file_cache max=16;
  open_file_cache_valid 600s;
  root {self.files};
  server {{
    listen {HOST}:{self.direct_port} backlog=4096;
    include {d}/routes.conf;
  }}
  server {{
    listen {HOST}:{self.upstream_port} backlog=4096;
    access_log {self.access_log} bench buffer=64k flush=1s;
    include {d}/routes.conf;
  }}
""",
        )

    def start(self) -> None:
        self.files.mkdir(parents=True)
        # nginx's worker may run as an unprivileged user: let it read the bodies.
        for p in (self.dir.parent, self.dir, self.files):
            p.chmod(0o755)
        config = self._config()
        for f in self.files.iterdir():
            f.chmod(0o644)
        self.proc = start_nginx(self.dir, config, self.cpus)
        wait_http(f"{self.direct}/v1/models", 10, self.proc)
        wait_http(f"{self.upstream}/v1/models", 10, self.proc)

    def flush_log(self) -> None:
        # USR1 makes nginx reopen its logs, which writes out the access log buffer.
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)

    def forwarded_posts(self) -> int:
        """POSTs that reached the upstream port so far (keyplane's forwarded requests)."""
        self.flush_log()
        if not self.access_log.exists():
            return 0
        with self.access_log.open("rb") as f:
            return sum(1 for line in f if line.startswith(b"POST "))

    def _pids(self) -> list[int]:
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def rss_kb(self) -> int:
        """Peak RSS of the master plus its worker(s)."""
        return sum(vm_kb(p, "VmHWM") for p in self._pids())

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(p) for p in self._pids())

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGQUIT, 10, "nginx")
