"""The three proxies under test, each configured as a one-worker WS/WSS and HTTP proxy in
front of one backend: wslb (`dataplane.cli`, 1 worker), HAProxy (`nbthread 1`) and nginx
(`worker_processes 1`).

wslb runs as the image ships it (BENCH_WSLB=image, the default): the console script of
`bench/.build/wslb-venv`, Debian's python3.11 with the mypyc-compiled wheel
(bench/image_build.py builds it when stale). BENCH_WSLB=checkout runs the checkout's own
package instead (`python -m dataplane.cli` from the repository with this Python, in
whatever build it is: `make compiled` or pure), for A/B work on uncommitted code.

Every proxy gets a WS port and a WSS port (TLS 1.2+, the same ECDSA P-256 certificate),
adds the same forwarding headers as wslb does (X-Forwarded-For/-Proto/-Port, X-Real-IP),
has a one-hour idle timeout (idle connections must stay open while RSS is read), no
health checks, and runs pinned to one CPU with `taskset`. Every proxy writes one access-log
line per WS and WSS connection to its standard output (a file here), as each does in a
container: wslb's default, HAProxy's `option httplog` to `log stdout`, nginx's default
`combined` format to /dev/stdout. BENCH_ACCESS_LOG=off switches it off in all three (the
conditions issue 13's goals were first measured in, before wslb had an access log). A third port
proxies plain HTTP/1.1 the same way in all three: keep-alive to clients (one-hour idle
timeout, no cap on requests per connection) and to the backend (idle backend connections
kept for reuse; 16 at most in wslb and nginx, HAProxy's default reuse) and adds a Via
header as wslb does. This module
writes configs and starts and stops only the processes it started, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from bench import build_info, image_build
from bench.procstat import die_with_parent, tree

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent
MAX_CONNECTIONS = 9000  # HAProxy needs 2 fds per connection below the 20000 hard limit
POOL_IDLE = 16  # idle backend connections kept (wslb's default in dataplane/pool.py)
REQUESTS_PER_CONNECTION = 1_000_000  # the largest wslb accepts: in effect no cap
WSLB_BUILDS = ("image", "checkout")
ACCESS_LOG_CHOICES = ("on", "off")


def access_log_choice() -> bool:
    """BENCH_ACCESS_LOG: `on` (the default: every proxy logs each WS and WSS connection) or
    `off` (none does). The HTTP port logs nothing in any proxy either way."""
    chosen = os.environ.get("BENCH_ACCESS_LOG", "") or "on"
    if chosen not in ACCESS_LOG_CHOICES:
        raise SystemExit(
            f"BENCH_ACCESS_LOG must be one of {', '.join(ACCESS_LOG_CHOICES)}, not {chosen!r}"
        )
    return chosen == "on"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(ports: list[int], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for port in ports:
        while True:
            if process.poll() is not None:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"exited with {process.returncode} before listening: {text}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"port {port} not listening after {START_TIMEOUT} s"
                    ) from None
                time.sleep(0.05)


class Proxy:
    """One proxy process tree: config, start (pinned), PIDs, stop."""

    name = ""

    def __init__(
        self, workdir: Path, backend_port: int, cert: Path, key: Path, cpu: int | None
    ) -> None:
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backend_port = backend_port
        self.cert = cert
        self.key = key
        self.cpu = cpu
        self.ws_port = free_port()
        self.wss_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "output.log"
        self.access_log = access_log_choice()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.wss_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def write_config(self) -> list[str]:
        """Write the config files; return the command line."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        command = self.write_config()
        with open(self.log, "wb") as out:
            pin = [] if self.cpu is None else ["taskset", "-c", str(self.cpu)]
            self.process = subprocess.Popen(
                [*pin, *command],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.working_directory(),
                env=self.environment(),
                preexec_fn=die_with_parent,
            )
        wait_listening(self.listening_ports(), self.process, self.log)

    def listening_ports(self) -> list[int]:
        return [self.ws_port, self.wss_port, self.http_port]

    def supports(self, test: str) -> bool:
        """Whether the proxy can take part in a test (the floor has no TLS)."""
        return True

    def working_directory(self) -> Path:
        return self.dir

    def environment(self) -> dict[str, str] | None:
        """The process's environment; None: this one's."""
        return None

    def pids(self) -> list[int]:
        assert self.process is not None
        return tree(self.process.pid)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


class Wslb(Proxy):
    name = "wslb"

    def __init__(
        self, workdir: Path, backend_port: int, cert: Path, key: Path, cpu: int | None
    ) -> None:
        super().__init__(workdir, backend_port, cert, key, cpu)
        self.build = wslb_build_choice()
        self._venv: Path | None = None
        self._info: dict[str, Any] | None = None

    def write_config(self) -> list[str]:
        config = self.dir / "wslb.yaml"
        limits = (
            "{maxConnections: 1000000, newConnectionsPerSecond: 1000000, maxMessageBytes: 16777216}"
        )
        backends = f"{{endpoints: [{{address: 127.0.0.1, port: {self.backend_port}}}]}}"
        on = "true" if self.access_log else "false"
        config.write_text(
            f"""# written by bench/proxies.py
version: bench
loadBalancer:
  name: bench
  limits: {{maxConnections: 1000000, newConnectionsPerSecond: 1000000}}
listeners:
  - name: ws
    protocol: HTTP
    address: 127.0.0.1
    port: {self.ws_port}
    idleTimeoutSeconds: 3600
    limits: {limits}
    accessLog: {{enabled: {on}}}
    backends: {backends}
  - name: wss
    protocol: HTTPS
    address: 127.0.0.1
    port: {self.wss_port}
    idleTimeoutSeconds: 3600
    limits: {limits}
    tls:
      certificates:
        - {{certificateFile: {self.cert}, privateKeyFile: {self.key}}}
    accessLog: {{enabled: {on}}}
    backends: {backends}
  - name: http
    protocol: HTTP
    address: 127.0.0.1
    port: {self.http_port}
    idleTimeoutSeconds: 3600
    limits: {limits}
    http:
      keepAliveTimeoutSeconds: 3600
      maxRequestsPerConnection: {REQUESTS_PER_CONNECTION}
    accessLog: {{enabled: false}}
    backends: {backends}
"""
        )
        admin = f"127.0.0.1:{free_port()}"
        return [
            *self.program(),
            "--config",
            str(config),
            "--admin",
            admin,
            "--workers",
            "1",
            "--no-watch",
            "--drain-timeout",
            "0",
            "--log-level",
            "WARNING",
        ]

    def venv(self) -> Path:
        """The image's build (bench/image_build.py), built first when stale."""
        if self._venv is None:
            try:
                self._venv = image_build.ensure()
            except image_build.BuildError as error:
                raise SystemExit(f"bench: the image's build of wslb failed: {error}") from None
        return self._venv

    def program(self) -> list[str]:
        """The data plane's command: the venv's console script (not `-m`, whose cwd would
        put the checkout's package first), or the checkout's with this Python."""
        if self.build == "checkout":
            return [sys.executable, "-m", "dataplane.cli"]
        return [str(self.venv() / "bin" / console_script("dataplane.cli:main"))]

    def python(self) -> str:
        """The interpreter that runs the data plane."""
        if self.build == "checkout":
            return sys.executable
        return str(self.venv() / "bin" / "python")

    def build_info(self) -> dict[str, Any]:
        """What this interpreter loads, from this proxy's directory and environment
        (bench/build_info.py); asked once."""
        if self._info is None:
            self._info = build_info.describe(
                self.python(), self.working_directory(), self.environment()
            )
        return self._info

    def origin(self) -> str:
        """How the data plane was installed, for the report."""
        if self.build == "checkout":
            return "the checkout's package (BENCH_WSLB=checkout, `python -m dataplane.cli`)"
        venv = self.venv()
        where = venv.relative_to(REPO) if venv.is_relative_to(REPO) else venv
        return f"the image's build (`{where}/bin/wslb-dataplane`: the wheel, WSLB_MYPYC=1)"

    def version(self) -> str:
        info = self.build_info()
        return f"wslb (Python {info['version']}, uvloop {info['uvloop']}, {info['openssl']})"

    def working_directory(self) -> Path:
        # The checkout's package imports from the repository root, without an install; the
        # image's build must not see it.
        return REPO if self.build == "checkout" else self.dir

    def environment(self) -> dict[str, str] | None:
        if self.build == "checkout":
            return None
        # Nothing from the caller may put another package before the installed one.
        return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def wslb_build_choice() -> str:
    """BENCH_WSLB: `image` (the default) or `checkout`."""
    chosen = os.environ.get("BENCH_WSLB", "") or "image"
    if chosen not in WSLB_BUILDS:
        raise SystemExit(f"BENCH_WSLB must be one of {', '.join(WSLB_BUILDS)}, not {chosen!r}")
    return chosen


def console_script(target: str) -> str:
    """The [project.scripts] name pyproject.toml gives `target` (e.g. wslb-dataplane)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    names = [name for name, value in scripts.items() if value == target]
    if not names:
        raise SystemExit(f"bench: pyproject.toml has no console script for {target}")
    return str(names[0])


class HAProxy(Proxy):
    name = "haproxy"

    def write_config(self) -> list[str]:
        bundle = self.dir / "tls.pem"
        bundle.write_text(self.cert.read_text() + self.key.read_text())
        bundle.chmod(0o600)
        config = self.dir / "haproxy.cfg"
        # A line per connection, written when it ends, to standard output as in a container;
        # the HTTP frontend logs nothing, as in the other proxies.
        logging = (
            ("    log stdout format raw local0 info\n", "    log global\n    option httplog\n")
            if self.access_log
            else ("", "")
        )
        config.write_text(
            f"""# written by bench/proxies.py
global
    nbthread 1
    maxconn {MAX_CONNECTIONS}
    ssl-default-bind-options ssl-min-ver TLSv1.2
{logging[0]}defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
    timeout http-request 10s
    option forwardfor
frontend ws
    bind 127.0.0.1:{self.ws_port}
    maxconn {MAX_CONNECTIONS}
{logging[1]}    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    default_backend echo
frontend wss
    bind 127.0.0.1:{self.wss_port} ssl crt {bundle} alpn http/1.1
    maxconn {MAX_CONNECTIONS}
{logging[1]}    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    default_backend echo
frontend http
    bind 127.0.0.1:{self.http_port}
    maxconn {MAX_CONNECTIONS}
    timeout http-keep-alive 3600s
    http-request add-header Via "1.1 wslb"
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Real-IP %[src]
    default_backend echo
backend echo
    server echo1 127.0.0.1:{self.backend_port}
"""
        )
        return [_binary("haproxy"), "-f", str(config), "-db"]

    def version(self) -> str:
        out = subprocess.run([_binary("haproxy"), "-v"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "haproxy"


class Nginx(Proxy):
    name = "nginx"

    def write_config(self) -> list[str]:
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        common = (
            """
        location / {
            proxy_pass http://echo;%s
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }"""
            % (
                # default `combined` format, a line per connection when it ends
                "\n            access_log /dev/stdout;" if self.access_log else ""
            )
        )
        config = self.dir / "nginx.conf"
        config.write_text(
            f"""# written by bench/proxies.py
worker_processes 1;
worker_rlimit_nofile 19500;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{
    worker_connections {MAX_CONNECTIONS * 2};
}}
http {{
    access_log off;
    client_body_temp_path {self.dir}/tmp/client_body;
    proxy_temp_path {self.dir}/tmp/proxy;
    fastcgi_temp_path {self.dir}/tmp/fastcgi;
    uwsgi_temp_path {self.dir}/tmp/uwsgi;
    scgi_temp_path {self.dir}/tmp/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    upstream echo {{
        server 127.0.0.1:{self.backend_port};
    }}
    upstream web {{
        server 127.0.0.1:{self.backend_port};
        keepalive {POOL_IDLE};
        keepalive_requests {REQUESTS_PER_CONNECTION};
        keepalive_timeout 3600s;
    }}
    server {{
        listen 127.0.0.1:{self.http_port} backlog=4096;
        keepalive_timeout 3600s;
        keepalive_requests {REQUESTS_PER_CONNECTION};
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Via "1.1 wslb";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Real-IP $remote_addr;
        }}
    }}
    server {{
        listen 127.0.0.1:{self.ws_port} backlog=4096;
{common}
    }}
    server {{
        listen 127.0.0.1:{self.wss_port} ssl backlog=4096;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
{common}
    }}
}}
"""
        )
        return [
            _binary("nginx"),
            "-p",
            str(self.dir),
            "-e",
            str(self.dir / "error.log"),
            "-c",
            str(config),
            "-g",
            "daemon off;",
        ]

    def version(self) -> str:
        out = subprocess.run([_binary("nginx"), "-v"], capture_output=True, text=True).stderr
        return out.strip() or "nginx"


class Floor(Proxy):
    """`bench/floor.py`: a bare uvloop TCP relay on the WS and HTTP ports, the floor for
    any proxy on uvloop. Optional (`BENCH_PROXIES=...,floor`); not in the default run."""

    name = "floor"

    def write_config(self) -> list[str]:
        ports = [str(self.backend_port), str(self.ws_port), str(self.http_port)]
        return [sys.executable, "-m", "bench.floor", *ports]

    def listening_ports(self) -> list[int]:
        return [self.ws_port, self.http_port]

    def supports(self, test: str) -> bool:
        return test not in ("wss", "idle-wss")

    def version(self) -> str:
        return f"bare uvloop relay (uvloop {uvloop_version()})"

    def working_directory(self) -> Path:
        return REPO


def uvloop_version() -> str:
    from importlib.metadata import version

    return version("uvloop")


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (bench/run.sh installs it)")
    return found


PROXIES: dict[str, type[Proxy]] = {
    "wslb": Wslb,
    "haproxy": HAProxy,
    "nginx": Nginx,
    "floor": Floor,
}
