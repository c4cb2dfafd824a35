"""`make bench`: wslb, HAProxy and nginx side by side in one run, same backend, same load.

Owns the run: settings from the environment, the certificate, the echo backend and the
load client pinned to CPU 0, the proxies pinned to CPU 1, the order of measurements,
and the raw results file. Figures are normalised by the proxy's own CPU time in the
measurement window (utime + stime of its process tree), so a proxy that the load
client cannot saturate is still compared per second of CPU it used. The report is
written by `bench.report`.

Settings (environment):
  BENCH_QUICK=1           about 1.5 s per measurement, 1000 idle connections (development)
  BENCH_DURATION          measured seconds per measurement (default 10)
  BENCH_WARMUP            unmeasured seconds before each window (default 1)
  BENCH_REPEAT            rounds of every measurement, interleaved by proxy (default 3;
                          the report shows medians)
  BENCH_IDLE_CONNECTIONS  idle connections held for the RSS figure (default 5000)
  BENCH_PROXIES           comma list, of wslb,haproxy,nginx,floor (default the first three;
                          floor: bench/floor.py, a bare uvloop TCP relay, no WSS)
  BENCH_TESTS             comma list, of idle,idle-wss,idle-http,handshake,echo,bulk,wss,
                          http (default all); the HTTP rows alone: BENCH_TESTS=http,idle-http
  BENCH_HANDSHAKE_CONNECTIONS, BENCH_ECHO_CONNECTIONS, BENCH_BULK_CONNECTIONS,
  BENCH_HTTP_CONNECTIONS  concurrent connections of each load (default 32, 64, 4, 16: the
                          HTTP clients no more than the 16 idle backend connections that
                          wslb and nginx keep, or they close and redial backend connections)
  BENCH_BACKEND           go (bench/echo-go, built with the local Go; the default) or
                          picows (bench/echo_fast.py; also used when Go is missing)
  BENCH_OUT               results file (default bench/results/results.json;
                          quick mode: bench/results/quick.json)
  BENCH_WSLB              image (the default: the data plane as the image ships it, built
                          into bench/.build/wslb-venv by bench/image_build.py) or checkout
                          (this checkout's package with this Python, as it is built: A/B
                          work on uncommitted code)
  BENCH_WSLB_PYTHON       the image's interpreter (default /usr/bin/python3, Debian's 3.11)
  BENCH_ACCESS_LOG        on (the default: every proxy logs each WS and WSS connection to its
                          standard output, a file in the run's directory) or off (none does)
  BENCH_KEEP=1            keep the run's directory (configs, proxies' output and access logs);
                          removed at the end otherwise (the access logs grow by ~100 MB a run)

The HTTP rows use `bench/httpload.c` (a C epoll client, built with the local C compiler
on first use) against the same Go backend, which answers plain requests with 1 KiB.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.build_info import mapped_extensions, summary
from bench.procstat import (
    die_with_parent,
    machine_busy_seconds,
    raise_nofile,
    total_rss_kib,
    tree,
)
from bench.proxies import (
    PROXIES,
    REPO,
    Proxy,
    Wslb,
    access_log_choice,
    uvloop_version,
    wslb_build_choice,
)

LOAD_CPU = 0
PROXY_CPU = 1
RESULTS = REPO / "bench" / "results"
TESTS = ("idle", "idle-wss", "idle-http", "handshake", "echo", "bulk", "wss", "http")
IDLE_TESTS = ("idle", "idle-wss", "idle-http")
IDLE_KEYS = {"idle": "idle", "idle-wss": "idle_wss", "idle-http": "idle_http"}
SETTLE_SECONDS = 1.0  # after the idle connections are open, before RSS is read


@dataclass
class Settings:
    quick: bool
    duration: float
    warmup: float
    repeat: int
    idle_connections: int
    proxies: list[str]
    tests: list[str]
    out: Path
    backend: str = "go"
    wslb: str = "image"
    handshake_connections: int = 32
    echo_connections: int = 64
    bulk_connections: int = 4
    http_connections: int = 16
    bulk_window: int = 4
    small_size: int = 64
    bulk_size: int = 64 * 1024
    access_log: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        quick = env.get("BENCH_QUICK", "") not in ("", "0")
        proxies = [p for p in env.get("BENCH_PROXIES", "wslb,haproxy,nginx").split(",") if p]
        tests = [t for t in env.get("BENCH_TESTS", ",".join(TESTS)).split(",") if t]
        unknown = [p for p in proxies if p not in PROXIES] + [t for t in tests if t not in TESTS]
        if unknown:
            raise SystemExit(f"unknown proxy or test: {', '.join(unknown)}")
        default_out = RESULTS / ("quick.json" if quick else "results.json")
        return cls(
            quick=quick,
            duration=float(env.get("BENCH_DURATION", "1.5" if quick else "10")),
            warmup=float(env.get("BENCH_WARMUP", "0.3" if quick else "1")),
            repeat=max(1, int(env.get("BENCH_REPEAT", "1" if quick else "3"))),
            idle_connections=int(env.get("BENCH_IDLE_CONNECTIONS", "1000" if quick else "5000")),
            proxies=proxies,
            tests=tests,
            out=Path(env.get("BENCH_OUT", str(default_out))),
            backend=env.get("BENCH_BACKEND", "go"),
            wslb=wslb_build_choice(),
            handshake_connections=int(env.get("BENCH_HANDSHAKE_CONNECTIONS", "32")),
            echo_connections=int(env.get("BENCH_ECHO_CONNECTIONS", "64")),
            bulk_connections=int(env.get("BENCH_BULK_CONNECTIONS", "4")),
            http_connections=int(env.get("BENCH_HTTP_CONNECTIONS", "16")),
            access_log=access_log_choice(),
        )


@dataclass
class Measurement:
    proxy: str
    test: str
    round: int
    load: dict[str, Any]
    derived: dict[str, float] = field(default_factory=dict)


def python() -> str:
    return sys.executable


def pinned(cpu: int | None, *command: str) -> list[str]:
    return [*([] if cpu is None else ["taskset", "-c", str(cpu)]), *command]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ssl

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "kernel": platform.release(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "uvloop": uvloop_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "loadavg_start": os.getloadavg(),
        "wslb_revision": revision(),
    }


def wslb_build(proxy: Wslb) -> dict[str, Any]:
    """Which build of the data plane ran, asked of the running proxy's interpreter: its
    path, version and Debian package, and the modules it loads compiled (`summary`, one
    sentence for the report). Fails when the running process mapped extension modules from
    anywhere else than the probe found them (another package shadowing the one measured)."""
    info = proxy.build_info()
    mapped = mapped_extensions(proxy.pids())
    home = info["package_dir"]
    stray = [path for path in mapped if str(Path(path).parent) != home]
    if stray or (info["compiled"] and not mapped):
        raise RuntimeError(
            f"wslb (pids {proxy.pids()}) mapped {mapped or 'no compiled module'}, "
            f"but its interpreter loads the package from {home}"
        )
    keys = ("base_executable", "version", "debian_package", "libpython", "uvloop", "compiled")
    return {
        "summary": summary(info, proxy.origin()),
        "build": proxy.build,
        "executable": proxy.program()[0],
        **{key: info[key] for key in keys},
        "mapped": mapped,
    }


def revision() -> str:
    """The commit the data plane ran from, and whether dataplane/ had uncommitted edits."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dataplane", "lbwire"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' with uncommitted changes in dataplane/' if dirty else ''}" or "unknown"


def go_echo() -> Path | None:
    """Build the Go echo backend (bench/echo-go, standard library only) unless it is built
    and current; None when Go is missing or the build fails."""
    source = REPO / "bench" / "echo-go"
    binary = REPO / "bench" / ".build" / "echo"
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin:/usr/lib/go/bin")
    newest = max(path.stat().st_mtime for path in source.iterdir())
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    if go is None:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    built = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=source, env=env, capture_output=True, text=True
    )
    if built.returncode != 0:
        log(f"Go echo backend did not build, using picows: {built.stderr[-500:]}")
        return None
    return binary


def http_client() -> Path:
    """Build the C HTTP load client (bench/httpload.c) unless it is built and current."""
    source = REPO / "bench" / "httpload.c"
    binary = REPO / "bench" / ".build" / "httpload"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: the HTTP rows need a C compiler (cc); apt-get install gcc")
    binary.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [cc, "-O2", "-o", str(binary), str(source)], capture_output=True, text=True
    )
    if built.returncode != 0:
        raise SystemExit(f"bench: bench/httpload.c did not build: {built.stderr[-1000:]}")
    return binary


class Backend:
    """The echo backend, pinned to the load client's CPU: the Go one (`kind="go"`) or
    the picows one (`kind="picows"`, also the fallback when Go is missing)."""

    def __init__(self, cpu: int | None = LOAD_CPU, kind: str = "picows") -> None:
        binary = go_echo() if kind == "go" else None
        self.kind = "go" if binary is not None else "picows"
        if binary is not None:
            command = [str(binary), "--port", "0"]
        else:
            command = [python(), "-m", "bench.echo_fast", "--port", "0"]
        self.process = subprocess.Popen(
            pinned(cpu, *command),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            text=True,
            env={**os.environ, "GOMAXPROCS": "1"},
            preexec_fn=die_with_parent,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            self.stop()
            raise RuntimeError(f"echo backend did not start: {line}")
        self.port = int(line[1])

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def load(
    args: list[str], watch: dict[str, list[int]], timeout: float, cpu: int | None = LOAD_CPU
) -> dict[str, Any]:
    """Run the load client once (pinned) and return its JSON result: the C client for
    HTTP modes (`get`), the picows one for the rest."""
    if args[0] == "get":
        command = [str(http_client()), *args]
    else:
        command = [python(), "-m", "bench.loadgen", *args]
    for name, pids in watch.items():
        command += ["--watch", f"{name}={','.join(map(str, pids))}"]
    done = subprocess.run(
        pinned(cpu, *command),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        preexec_fn=die_with_parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def derive(measurement: Measurement, backend_pid: int) -> None:
    result = measurement.load
    wall = result["wall_seconds"]
    cpu = result["cpu_seconds"]
    proxy_cpu = cpu.get("proxy", 0.0)
    count = result["count"]
    d = measurement.derived
    d["rate"] = count / wall
    d["proxy_cpu_seconds"] = proxy_cpu
    d["proxy_cpu_share"] = proxy_cpu / wall
    d["proxy_kernel_share"] = cpu.get("proxy_system", 0.0) / proxy_cpu if proxy_cpu > 0 else 0.0
    d["load_cpu_share"] = (cpu.get("loadgen", 0.0) + cpu.get("backend", 0.0)) / wall
    d["per_proxy_cpu_second"] = count / proxy_cpu if proxy_cpu > 0 else 0.0
    if measurement.test == "bulk":
        megabytes = result["bytes"] / 1e6
        d["mb_per_second"] = megabytes / wall
        d["mb_per_proxy_cpu_second"] = megabytes / proxy_cpu if proxy_cpu > 0 else 0.0
    latency = result.get("latency_us")
    if latency:
        d["p50_us"] = latency["p50"]
        d["p99_us"] = latency["p99"]


def idle_command(proxy: Proxy, test: str, connections: int, hold: float) -> list[str]:
    """The client that opens `connections` idle connections: WS, WSS, or HTTP keep-alive
    (one GET answered on each, then nothing)."""
    shape = ["--connections", str(connections), "--hold", str(hold), "--open-seconds", "90"]
    if test == "idle-http":
        return [str(http_client()), "idle", "--port", str(proxy.http_port), *shape]
    url = proxy.wss_url if test == "idle-wss" else proxy.ws_url
    return [python(), "-m", "bench.loadgen", "idle", "--url", url, *shape]


def measure_idle(proxy: Proxy, settings: Settings, test: str = "idle") -> dict[str, Any]:
    """RSS per idle WS, WSS or keep-alive HTTP connection: VmRSS of the proxy tree before
    and after."""
    warm = idle_command(proxy, test, 200, 0.5)
    # Allocator and lazy imports warmed up once: 200 connections opened, then closed.
    subprocess.run(
        pinned(LOAD_CPU, *warm),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=REPO,
        timeout=120,
        preexec_fn=die_with_parent,
        check=True,
    )
    time.sleep(SETTLE_SECONDS)
    pids = proxy.pids()
    before = total_rss_kib(pids)
    command = idle_command(proxy, test, settings.idle_connections, 120)
    client = subprocess.Popen(
        pinned(LOAD_CPU, *command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        text=True,
        preexec_fn=die_with_parent,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        ready = json.loads(client.stdout.readline() or "{}")
        time.sleep(SETTLE_SECONDS)
        pids = proxy.pids()
        after = total_rss_kib(pids)
        fds = sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)
        client.stdin.write("close\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    opened = int(ready.get("open", 0))
    final = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    delta = after - before
    return {
        "connections": opened,
        "alive_at_release": final.get("count", 0),
        "open_seconds": ready.get("open_seconds"),
        "errors": ready.get("errors", {}),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "proxy_fds": fds,
        "kib_per_connection": delta / opened if opened else 0.0,
        "stderr": err[-500:] if err else "",
    }


def run_load(
    test: str, proxy: Proxy, backend: Backend, settings: Settings, rnd: int
) -> Measurement:
    common = ["--duration", str(settings.duration), "--warmup", str(settings.warmup)]
    if test == "handshake":
        args = [
            "handshake",
            "--url",
            proxy.ws_url,
            "--connections",
            str(settings.handshake_connections),
        ]
    elif test == "wss":
        args = [
            "handshake",
            "--url",
            proxy.wss_url,
            "--connections",
            str(settings.handshake_connections),
        ]
    elif test == "http":
        args = [
            "get",
            "--port",
            str(proxy.http_port),
            "--connections",
            str(settings.http_connections),
        ]
    elif test == "echo":
        args = [
            "echo",
            "--url",
            proxy.ws_url,
            "--connections",
            str(settings.echo_connections),
            "--size",
            str(settings.small_size),
        ]
    else:
        args = [
            "bulk",
            "--url",
            proxy.ws_url,
            "--connections",
            str(settings.bulk_connections),
            "--size",
            str(settings.bulk_size),
            "--window",
            str(settings.bulk_window),
        ]
    watch = {"proxy": proxy.pids(), "backend": [backend.pid]}
    timeout = settings.warmup + settings.duration + 120
    measurement = Measurement(proxy.name, test, rnd, load(args + common, watch, timeout))
    derive(measurement, backend.pid)
    return measurement


def _own_cpu() -> float:
    """CPU seconds of this process and of its waited-for children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    settings = Settings.from_env()
    raise_nofile()
    started = time.monotonic()
    busy_start, own_start = machine_busy_seconds(), _own_cpu()
    info = machine()
    log(f"load average {info['loadavg_start']}; settings {settings}")
    workdir = Path(tempfile.mkdtemp(prefix="wslb-bench-"))
    from dataplane.certs import self_signed

    cert_pem, key_pem = self_signed(["127.0.0.1", "localhost"])
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    cert.write_text(cert_pem)
    key.write_text(key_pem)
    key.chmod(0o600)

    backend = Backend(kind=settings.backend)
    info["backend"] = backend.kind
    if backend.kind != "go" and {"http", "idle-http"} & set(settings.tests):
        backend.stop()
        raise SystemExit(
            "bench: the HTTP rows need the Go backend (bench/echo-go; the picows one speaks "
            "WebSocket only): install Go, or leave http and idle-http out of BENCH_TESTS"
        )
    log(f"echo backend: {backend.kind}")
    proxies: list[Proxy] = []
    idle: dict[str, dict[str, Any]] = {key: {} for key in IDLE_KEYS.values()}
    measurements: list[Measurement] = []
    try:
        for name in settings.proxies:
            proxy = PROXIES[name](workdir, backend.port, cert, key, PROXY_CPU)
            proxy.start()
            proxies.append(proxy)
            log(f"{name} pid {proxy.pids()} on {proxy.ws_url} and {proxy.wss_url}")
        info["versions"] = {proxy.name: proxy.version() for proxy in proxies}
        for proxy in proxies:
            if isinstance(proxy, Wslb):
                info["wslb"] = wslb_build(proxy)
                info["wslb_build"] = info["wslb"]["summary"]
                log(f"wslb: {info['wslb_build']}")
        measured_idle = False
        for test in IDLE_TESTS:
            if test not in settings.tests:
                continue
            found = idle[IDLE_KEYS[test]]
            for proxy in proxies:
                if not proxy.supports(test):
                    continue
                if test == "idle-http" and measured_idle:
                    # A fresh process: memory the WS rows' connections freed would be reused
                    # by the keep-alive ones and hide their cost (measured: 0.00 KiB).
                    proxy.stop()
                    proxy.start()
                found[proxy.name] = measure_idle(proxy, settings, test)
                log(f"{test} {proxy.name}: {found[proxy.name]['kib_per_connection']:.2f} KiB/conn")
            measured_idle = True
        for rnd in range(settings.repeat):
            for test in settings.tests:
                if test in IDLE_TESTS:
                    continue
                # Odd rounds go in reverse order, so drift in the machine's load evens out.
                for proxy in proxies if rnd % 2 == 0 else proxies[::-1]:
                    if not proxy.supports(test):
                        continue
                    m = run_load(test, proxy, backend, settings, rnd)
                    measurements.append(m)
                    d = m.derived
                    log(
                        f"{test:9} {proxy.name:7} rate {d['rate']:9.0f}/s  per proxy-CPU-s "
                        f"{d['per_proxy_cpu_second']:9.0f}  proxy CPU {d['proxy_cpu_share']:.0%}"
                        f"  cpu0 {d['load_cpu_share']:.0%}  errors {m.load['errors']}"
                    )
        info["backend_tree"] = tree(backend.pid)
    finally:
        for proxy in proxies:
            proxy.stop()
        backend.stop()
        if os.environ.get("BENCH_KEEP", "") in ("", "0"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_seconds"] = time.monotonic() - started
    # Every process of this run is a waited-for child by now, so its CPU is in os.times();
    # what the machine spent beyond that was other people's work.
    foreign = (machine_busy_seconds() - busy_start) - (_own_cpu() - own_start)
    info["foreign_cpu_cores"] = max(0.0, foreign / info["elapsed_seconds"])
    settings_out = asdict(settings)
    settings_out["out"] = str(settings.out)
    results = {
        "machine": info,
        "settings": settings_out,
        **idle,
        "measurements": [asdict(m) for m in measurements],
    }
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"raw results in {settings.out} ({info['elapsed_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
