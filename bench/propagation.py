"""Config propagation latency: EndpointSlice change -> applied by every data plane.

    python -m bench.propagation [--endpoints 1000] [--data-planes 2] [--changes 50] [--quick]

Starts the loopback kube-apiserver + etcd of the integration tests (CRDs and the chart's
RBAC installed), the real controller (`controller.main.run`, production debounce
settings, logged in as the chart's ServiceAccount) on a thread of its own, and N real
data planes (`ConfigClient` + `Runtime`, listeners on 127.0.0.1, one port each) on this
process's uvloop. It creates a Service whose EndpointSlices hold `--endpoints` endpoints
(at most 100 per slice, as the EndpointSlice controller makes them), a LoadBalancer and
a Listener, and waits until every data plane runs a snapshot with all of them.

Then, `--changes` times: flip `conditions.ready` of one endpoint with a JSON patch of
its EndpointSlice, and time from just before that API call until every data plane has
applied (swapped to) a snapshot showing the change, timestamped in the data plane's
`ConfigClient.apply` as it returns its ack. Rounds are spaced by `--gap` so the
controller's debounce never merges two of them. Per round it also records when the
PATCH returned, when the controller's EndpointSlice event handler ran, when the
controller published the snapshot, and when each data plane started and finished its
apply, so the latency can be split into its stages.

Results go to bench/results/propagation.json and .md (not with --quick, which only
prints: 100 endpoints, 5 changes, for checking that it works).

Two observation hooks, no edits: `ControllerMetrics.event` is wrapped (EndpointSlice
events) and a logging handler on `wslb.reconciler` catches its "published" line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType
from prometheus_client.parser import text_string_to_metric_families

from bench.procstat import CLOCK_TICKS, cpu_seconds
from controller.metrics import ControllerMetrics
from controller.settings import Settings
from dataplane.config_client import ClientSettings, ConfigClient
from dataplane.runtime import Runtime
from lbwire.messages import Ack, Nack, SnapshotMessage, encode
from lbwire.snapshot import Snapshot
from tests.integration.apiserver import (
    VERSIONS,
    ControlPlane,
    control_plane,
    free_port,
    missing_binaries,
)
from tests.integration.test_controller_kopf import (
    ControllerThread,
    http_get,
    listener,
    load_balancer,
    secret_text,
    service,
    write_tls,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
NAMESPACE = "bench"
SLICE_SIZE = 100  # the EndpointSlice controller's default --max-endpoints-per-slice
BACKEND_PORT = 9000
SETUP_TIMEOUT = 120.0

log = logging.getLogger("bench.propagation")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- hooks


class Marks:
    """Monotonic times of controller-side moments, appended from the controller's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slice_events: list[float] = []
        self.published: list[float] = []
        self.gc: list[tuple[float, float, int]] = []  # (start, end, generation)
        self._gc_start = 0.0

    def first_after(self, which: list[float], t0: float) -> float | None:
        with self.lock:
            return next((t for t in which if t >= t0), None)

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """A `gc.callbacks` entry: collections stop every thread of this process."""
        if phase == "start":
            self._gc_start = time.monotonic()
        else:
            self.gc.append((self._gc_start, time.monotonic(), info["generation"]))

    def gc_between(self, t0: float, t1: float) -> tuple[float, int]:
        """Milliseconds of garbage collection inside [t0, t1], and the oldest generation."""
        spent, oldest = 0.0, -1
        for start, end, generation in list(self.gc):
            overlap = min(end, t1) - max(start, t0)
            if overlap > 0:
                spent += overlap
                oldest = max(oldest, generation)
        return round(spent * 1000, 3), oldest


MARKS = Marks()


def install_hooks() -> None:
    """Observe the controller without changing it: its EndpointSlice event handler (via
    the metrics call it makes first) and its "published" log line."""
    original = ControllerMetrics.event

    def event(self: ControllerMetrics, kind: str, type_: str | None) -> None:
        if kind == "EndpointSlice":
            with MARKS.lock:
                MARKS.slice_events.append(time.monotonic())
        original(self, kind, type_)

    ControllerMetrics.event = event  # type: ignore[method-assign]

    class Published(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("published"):
                with MARKS.lock:
                    MARKS.published.append(time.monotonic())

    logging.getLogger("wslb.reconciler").addHandler(Published(logging.INFO))
    gc.callbacks.append(MARKS.on_gc)


# ---------------------------------------------------------------------- data planes


@dataclass
class Applied:
    started: float
    """Monotonic time `ConfigClient.apply` was entered (message received and decoded)."""
    done: float
    """Monotonic time the Runtime had swapped to it (just before the ack is sent)."""
    endpoints: int
    not_ready: frozenset[str]
    """What the rounds check, not the snapshot itself: keeping hundreds of snapshots of
    1,000 endpoint models alive would slow every full garbage collection of the process
    (controller included) and show up as latency that is the benchmark's own."""


class BenchRuntime(Runtime):
    """The real Runtime; its one listener binds 127.0.0.1 on a port of its own, so
    several data planes fit in one process."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    async def apply(self, snapshot: Snapshot) -> None:
        listeners = [
            item.model_copy(update={"address": "127.0.0.1", "port": self.port})
            for item in snapshot.listeners
        ]
        await super().apply(snapshot.model_copy(update={"listeners": listeners}))


class TimedClient(ConfigClient):
    """The real ConfigClient, timestamping every snapshot it applies."""

    def __init__(self, settings: ClientSettings, runtime: Runtime) -> None:
        super().__init__(settings, runtime)
        self.applied: list[Applied] = []
        self.refused: list[Nack] = []
        self.last_message: SnapshotMessage | None = None

    async def apply(self, message: SnapshotMessage) -> Ack | Nack:
        started = time.monotonic()
        reply = await super().apply(message)
        done = time.monotonic()
        if isinstance(reply, Ack) and self.runtime.snapshot is not None:
            current = endpoints_of(self.runtime.snapshot)
            not_ready = frozenset(a for a, ready in current.items() if not ready)
            self.applied.append(Applied(started, done, len(current), not_ready))
            self.last_message = message
        elif isinstance(reply, Nack):
            self.refused.append(reply)
        return reply


def endpoints_of(snapshot: Snapshot | None) -> dict[str, bool]:
    """address -> ready, over every listener of a snapshot."""
    if snapshot is None:
        return {}
    return {e.address: e.ready for item in snapshot.listeners for e in item.backends.endpoints}


@contextlib.asynccontextmanager
async def data_planes(
    count: int, directory: Path, url: str, lb: str, token: str, ca_pem: str
) -> AsyncIterator[list[TimedClient]]:
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_text(ca_pem)
    stop = asyncio.Event()
    clients: list[TimedClient] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        client = TimedClient(
            ClientSettings(
                url=url,
                load_balancer=lb,
                node=f"lb-wslb-{index}",  # one session per node name
                token_file=directory / "token",
                ca_file=directory / "ca.crt",
                backoff_min=0.1,
                backoff_max=0.5,
            ),
            BenchRuntime(free_port()),
        )
        clients.append(client)
        tasks.append(asyncio.create_task(client.run(stop), name=f"data plane {index}"))
    try:
        yield clients
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        for client in clients:
            await client.runtime.shutdown(drain_timeout=0)


# ---------------------------------------------------------------------- objects


def address(index: int) -> str:
    """Pod-like addresses (the API server refuses loopback ones in EndpointSlices)."""
    return f"10.244.{index // 250}.{index % 250 + 1}"


def slice_name(number: int) -> str:
    return f"echo-{number:03d}"


def endpoint_slices(ns: str, total: int) -> list[dict[str, Any]]:
    slices = []
    for number, first in enumerate(range(0, total, SLICE_SIZE)):
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name(number),
                    "namespace": ns,
                    "labels": {"kubernetes.io/service-name": "echo"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
                "endpoints": [
                    {
                        "addresses": [address(i)],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                    }
                    for i in range(first, min(first + SLICE_SIZE, total))
                ],
            }
        )
    return slices


# ---------------------------------------------------------------------- measuring


@dataclass
class Round:
    number: int
    slice: str
    address: str
    ready: bool
    """The value `conditions.ready` was set to."""
    latency_ms: float | None = None
    """PATCH sent -> every data plane applied a snapshot showing it; None: deadline hit."""
    api_ms: float | None = None
    """PATCH sent -> its response."""
    event_ms: float | None = None
    """PATCH sent -> the controller's EndpointSlice event handler ran."""
    published_ms: float | None = None
    """PATCH sent -> the controller published the new snapshot."""
    apply_started_ms: list[float | None] = field(default_factory=list)
    applied_ms: list[float | None] = field(default_factory=list)
    """Per data plane: PATCH sent -> its apply started / finished."""
    gc_ms: float = 0.0
    """Garbage collection (which pauses every thread here) during the round."""
    gc_generation: int = -1
    """The oldest generation collected during the round (-1: none)."""


def since(t0: float, t: float | None) -> float | None:
    return None if t is None else round((t - t0) * 1000, 3)


async def wait_applied(
    clients: Sequence[TimedClient],
    cursors: list[int],
    check: Callable[[Applied], bool],
    deadline: float,
) -> list[Applied | None]:
    """For each data plane, the first snapshot applied from its cursor on that passes
    `check`; None for those that had none by the deadline."""
    found: list[Applied | None] = [None] * len(clients)
    while True:
        for index, client in enumerate(clients):
            while found[index] is None and cursors[index] < len(client.applied):
                entry = client.applied[cursors[index]]
                cursors[index] += 1
                if check(entry):
                    found[index] = entry
        if all(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.002)  # when it is noticed; the times come from the hook


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is their maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "count": len(values),
        "min": round(min(values), 1),
        "p50": round(percentile(values, 50), 1),
        "p90": round(percentile(values, 90), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
        "mean": round(sum(values) / len(values), 1),
    }


def histograms(text: str) -> dict[str, dict[str, Any]]:
    """Histogram families of a Prometheus exposition: name -> {buckets, sum, count}."""
    out: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        item: dict[str, Any] = {"buckets": {}, "sum": 0.0, "count": 0.0}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = sample.labels["le"]
                item["buckets"][le] = item["buckets"].get(le, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                item["sum"] += sample.value
            elif sample.name.endswith("_count"):
                item["count"] += sample.value
        out[family.name] = item
    return out


def histogram_delta(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """What was observed between two scrapes, with histogram_quantile-style estimates."""
    base = before or {"buckets": {}, "sum": 0.0, "count": 0.0}
    buckets = {le: after["buckets"][le] - base["buckets"].get(le, 0.0) for le in after["buckets"]}
    count = after["count"] - base["count"]
    result: dict[str, Any] = {
        "count": int(count),
        "mean_ms": round((after["sum"] - base["sum"]) / count * 1000, 1) if count else None,
        "buckets": {le: int(n) for le, n in buckets.items()},
    }
    bounds = sorted(((float(le), n) for le, n in buckets.items()), key=lambda item: item[0])
    for p in (50, 99):
        result[f"p{p}_ms_estimate"] = _quantile(bounds, count, p / 100)
    return result


def _quantile(bounds: list[tuple[float, float]], count: float, q: float) -> float | None:
    """Linear interpolation inside the bucket holding the q-quantile (as Prometheus does)."""
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= rank:
            if math.isinf(upper):
                return round(lower * 1000, 1)
            inside = cumulative - below
            share = (rank - below) / inside if inside else 1.0
            return round((lower + (upper - lower) * share) * 1000, 1)
        lower, below = upper, cumulative
    return None


def thread_cpu_seconds(native_id: int | None) -> float | None:
    """utime + stime of one thread of this process, from /proc (clock-tick resolution)."""
    if native_id is None:
        return None
    try:
        text = Path(f"/proc/self/task/{native_id}/stat").read_bytes()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuMark:
    process: float
    main_thread: float
    controller_thread: float | None
    apiserver: float
    etcd: float


def cpu_mark(controller: ControllerThread, cluster: ControlPlane) -> CpuMark:
    pids = {p.name: p.popen.pid for p in cluster.processes}
    return CpuMark(
        process=time.process_time(),
        main_thread=time.thread_time(),
        controller_thread=thread_cpu_seconds(controller.native_id),
        apiserver=cpu_seconds(pids["kube-apiserver"]),
        etcd=cpu_seconds(pids["etcd"]),
    )


def machine_ticks() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                return [int(v) for v in line.split()[1:9]]
    return []


def machine_share(before: list[int], after: list[int], own_cpu_seconds: float) -> dict[str, Any]:
    """How busy the whole machine was between two readings, and how much of that was
    not this benchmark (its process, kube-apiserver and etcd)."""
    if len(before) < 8 or len(after) < 8:
        return {}
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta) or 1
    busy = total - delta[3] - delta[4]
    return {
        "busy_fraction": round(busy / total, 3),
        "steal_fraction": round(delta[7] / total, 3),
        "not_this_benchmark_fraction": round(
            max(0.0, busy / CLOCK_TICKS - own_cpu_seconds) / (total / CLOCK_TICKS), 3
        ),
    }


def cpu_delta(before: CpuMark, after: CpuMark) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in asdict(after).items():
        start = getattr(before, key)
        out[key] = None if value is None or start is None else round(value - start, 2)
    return out


# ---------------------------------------------------------------------- the run


async def eventually(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not reached in {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def scrape(port: int) -> str:
    status, body = await http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"controller /metrics answered {status}")
    return body


async def bench(cluster: ControlPlane, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    ns = NAMESPACE
    total = args.endpoints
    os.environ["KUBECONFIG"] = str(cluster.controller_kubeconfig)
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    await asyncio.to_thread(cluster.kubectl, "create", "namespace", ns)
    lb = load_balancer(ns)
    lb["spec"]["replicas"] = args.data_planes
    slices = endpoint_slices(ns, total)
    await asyncio.to_thread(cluster.apply, service(ns), *slices, lb, listener(ns, free_port()))
    say(f"{len(slices)} EndpointSlices, {total} endpoints, 1 LoadBalancer, 1 Listener created")

    tls_dir = work / "tls"
    tls_dir.mkdir()
    write_tls(tls_dir)
    settings = Settings(
        config_tls_dir=str(tls_dir),
        config_host="127.0.0.1",
        config_port=0,
        http_port=0,
        image="wslb:bench",
    )  # holdoff, max delay and retry: the production defaults
    controller = ControllerThread(settings)
    started = time.monotonic()
    controller.start()
    admin = AsyncClient(
        config=KubeConfig.from_file(str(cluster.admin_kubeconfig)),
        field_manager="wslb-bench",
        trust_env=False,
    )
    try:

        def listening() -> bool:
            if not controller.is_alive():
                raise RuntimeError(f"controller exited: {controller.error!r}")
            return len(controller.ports) == 2

        await eventually(listening, "controller listening", 30)

        async def secret() -> dict[str, Any] | None:
            return await asyncio.to_thread(cluster.get, "secret", "lb-wslb-config", ns)

        found: dict[str, Any] = await eventually(secret, "config Secret", SETUP_TIMEOUT)
        async with data_planes(
            args.data_planes,
            work,
            f"wss://127.0.0.1:{controller.ports['config']}",
            f"{ns}/lb",
            secret_text(found, "token"),
            secret_text(found, "ca.crt"),
        ) as clients:

            def complete() -> bool:
                return all(len(endpoints_of(c.runtime.snapshot)) == total for c in clients)

            await eventually(complete, f"every data plane with {total} endpoints", SETUP_TIMEOUT)
            initial_s = time.monotonic() - started
            say(f"every data plane runs {total} endpoints, {initial_s:.1f}s after controller start")
            await asyncio.sleep(2 * args.gap + 1)  # trailing status writes settle
            result = await measure(cluster, controller, admin, clients, args)
            result["initial_sync_seconds"] = round(initial_s, 2)
            return result
    finally:
        await admin.close()
        controller.request_stop()
        await asyncio.to_thread(controller.join, 20)
        if controller.is_alive():
            say("controller thread did not stop within 20 s")


async def measure(
    cluster: ControlPlane,
    controller: ControllerThread,
    admin: AsyncClient,
    clients: list[TimedClient],
    args: argparse.Namespace,
) -> dict[str, Any]:
    total = args.endpoints
    nslices = math.ceil(total / SLICE_SIZE)
    message = clients[0].last_message
    assert message is not None
    wire_bytes = len(encode(message).encode())
    metrics_before = histograms(await scrape(controller.ports["http"]))
    cpu_before = cpu_mark(controller, cluster)
    ticks_before = machine_ticks()
    wall_before = time.monotonic()
    ready = dict.fromkeys(range(total), True)
    rounds: list[Round] = []
    for number in range(args.changes):
        # Spread over slices and positions: slice number % slices, a different endpoint
        # each time; ready flips, so the endpoint count stays the same.
        index = (number % nslices) * SLICE_SIZE + (number * 37) % SLICE_SIZE
        index = min(index, total - 1)
        slice_number, position = divmod(index, SLICE_SIZE)
        want = not ready[index]
        item = Round(number, slice_name(slice_number), address(index), want)
        cursors = [len(c.applied) for c in clients]

        def shows(entry: Applied, item: Round = item) -> bool:
            return entry.endpoints == total and (item.address in entry.not_ready) != item.ready

        patch = [
            {"op": "replace", "path": f"/endpoints/{position}/conditions/ready", "value": want},
            {"op": "replace", "path": f"/endpoints/{position}/conditions/serving", "value": want},
        ]
        t0 = time.monotonic()
        await admin.patch(
            EndpointSlice, item.slice, patch, namespace=NAMESPACE, patch_type=PatchType.JSON
        )
        item.api_ms = since(t0, time.monotonic())
        found = await wait_applied(clients, cursors, shows, t0 + args.deadline)
        ready[index] = want
        item.event_ms = since(t0, MARKS.first_after(MARKS.slice_events, t0))
        item.published_ms = since(t0, MARKS.first_after(MARKS.published, t0))
        item.apply_started_ms = [since(t0, f.started if f else None) for f in found]
        item.applied_ms = [since(t0, f.done if f else None) for f in found]
        if all(found):
            item.latency_ms = max(v for v in item.applied_ms if v is not None)
        item.gc_ms, item.gc_generation = MARKS.gc_between(t0, time.monotonic())
        rounds.append(item)
        say(
            f"round {number + 1}/{args.changes}: {item.latency_ms} ms"
            f" (api {item.api_ms}, event {item.event_ms}, published {item.published_ms},"
            f" applied {item.applied_ms}, gc {item.gc_ms} ms)"
        )
        await asyncio.sleep(args.gap)
    wall = time.monotonic() - wall_before
    cpu_after = cpu_mark(controller, cluster)
    ticks_after = machine_ticks()
    cpu = cpu_delta(cpu_before, cpu_after)
    own = sum(cpu[k] or 0.0 for k in ("process", "apiserver", "etcd"))
    metrics_after = histograms(await scrape(controller.ports["http"]))

    done = [r for r in rounds if r.latency_ms is not None]

    def stage(values: list[float | None]) -> dict[str, float]:
        return summary([v for v in values if v is not None])

    controller_side = {
        name: histogram_delta(metrics_before.get(name), metrics_after[name])
        for name in (
            "wslb_controller_propagation_seconds",
            "wslb_controller_push_ack_seconds",
            "wslb_controller_build_duration_seconds",
        )
        if name in metrics_after
    }
    apply_ms = [
        (a - s)
        for r in done
        for s, a in zip(r.apply_started_ms, r.applied_ms, strict=True)
        if s is not None and a is not None
    ]
    publish_to_all = [
        r.latency_ms - r.published_ms for r in done if r.published_ms is not None and r.latency_ms
    ]
    return {
        "summary_ms": {
            "propagation": summary([r.latency_ms for r in done if r.latency_ms is not None]),
            "first_data_plane_applied": stage(
                [min((v for v in r.applied_ms if v is not None), default=None) for r in rounds]
            ),
            "api_patch": stage([r.api_ms for r in rounds]),
            "to_controller_event": stage([r.event_ms for r in rounds]),
            "to_published": stage([r.published_ms for r in rounds]),
            "published_to_all_applied": summary(publish_to_all),
            "data_plane_apply": summary(apply_ms),
        },
        "timeouts": len(rounds) - len(done),
        "gc_ms_per_round": summary([r.gc_ms for r in rounds]),
        "propagation_by_gc_ms": {
            "rounds_with_a_full_collection": summary(
                [r.latency_ms for r in done if r.latency_ms is not None and r.gc_generation == 2]
            ),
            "rounds_without": summary(
                [r.latency_ms for r in done if r.latency_ms is not None and r.gc_generation < 2]
            ),
        },
        "gc_tracked_objects": len(gc.get_objects()),
        "machine_during_rounds": machine_share(ticks_before, ticks_after, own),
        "nacks": sum(len(c.refused) for c in clients),
        "snapshot_wire_bytes": wire_bytes,
        "controller_metrics": controller_side,
        "cpu_seconds_during_rounds": cpu,
        "rounds_wall_seconds": round(wall, 2),
        "rounds": [asdict(r) for r in rounds],
    }


# ---------------------------------------------------------------------- environment, output


def environment() -> dict[str, Any]:
    def run(*command: str) -> str:
        try:
            out = subprocess.run(
                command, capture_output=True, text=True, timeout=10, check=False, cwd=REPO
            )
        except OSError:
            return ""
        return out.stdout.strip()

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.metadata.version("uvloop"),
        "kubernetes": VERSIONS.get("K8S_VERSION", ""),
        "etcd": VERSIONS.get("ETCD_VERSION", ""),
        "commit": run("git", "rev-parse", "--short", "HEAD"),
    }


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def within(histogram: dict[str, Any], le: str) -> int:
    return int(histogram.get("buckets", {}).get(le, 0))


def markdown(result: dict[str, Any]) -> str:
    s = result["summary_ms"]
    a = result["arguments"]
    env = result["environment"]
    cpu = result["cpu_seconds_during_rounds"]
    busy = max(result["loadavg_start"][0], result["loadavg_end"][0]) > 0.5 * (env["cores"] or 1)

    def row(name: str, key: str) -> str:
        v = s.get(key) or {}
        cells = " | ".join(f"{v[k]:,.1f}" if k in v else "-" for k in ("p50", "p90", "p99", "max"))
        return f"| {name} | {cells} | {v.get('count', 0)} |"

    prop = result["controller_metrics"].get("wslb_controller_propagation_seconds", {})
    builds = result["controller_metrics"].get("wslb_controller_build_duration_seconds", {})
    gc_ms = result["gc_ms_per_round"]
    with_gc = result["propagation_by_gc_ms"]["rounds_with_a_full_collection"]
    without_gc = result["propagation_by_gc_ms"]["rounds_without"]
    machine = result["machine_during_rounds"]
    lines = [
        "# Config propagation latency (EndpointSlice change → applied by every data plane)",
        "",
        f"Generated by `python -m bench.propagation` on {result['finished']} UTC "
        f"(wslb at {env['commit']}); raw rounds in `bench/results/propagation.json`.",
        "",
        f"{a['endpoints']:,} endpoints in {math.ceil(a['endpoints'] / SLICE_SIZE)} "
        f"EndpointSlices, {a['data_planes']} data planes, {a['changes']} changes "
        f"{a['gap']} s apart; snapshot {result['snapshot_wire_bytes']:,} bytes on the wire. "
        f"{result['timeouts']} rounds missed the {a['deadline']} s deadline, "
        f"{result['nacks']} nacks. From the controller's start to every data plane running "
        f"all endpoints: {result['initial_sync_seconds']} s.",
        "",
        "| stage, ms after the PATCH was sent | p50 | p90 | p99 | max | n |",
        "|---|---|---|---|---|---|",
        row("**every data plane applied the change**", "propagation"),
        row("first data plane applied the change", "first_data_plane_applied"),
        row("PATCH answered by the API server", "api_patch"),
        row("controller's EndpointSlice handler ran", "to_controller_event"),
        row("controller published the snapshot", "to_published"),
        row("published → last data plane applied (span)", "published_to_all_applied"),
        row("one data plane's apply (parse, digest, swap; span)", "data_plane_apply"),
        "",
        f"The controller's own `wslb_controller_propagation_seconds` (from its event handler "
        f"to the last ack, so without the API server's share): {prop.get('count', 0)} "
        f"observations, mean {prop.get('mean_ms')} ms; {within(prop, '0.25')} of them within "
        f"250 ms, {within(prop, '0.5')} within 500 ms (its buckets are too coarse for "
        "percentiles: interpolating inside 250-500 ms would invent a tail).",
        "",
        f"The controller built {builds.get('count', 0)} snapshots for {a['changes']} changes "
        f"(mean {builds.get('mean_ms')} ms each): besides the build that publishes the "
        "change, the data planes' acks and the echo of its own status writes mark the "
        "LoadBalancer dirty again, and each such round rebuilds and digests all endpoints "
        "before finding nothing new to publish. Garbage collection (it pauses every thread "
        f"of the process) took p50 {gc_ms.get('p50')} ms, max {gc_ms.get('max')} ms per round"
        + (
            f"; the {with_gc['count']} rounds with a full (generation 2) collection of the "
            f"{result['gc_tracked_objects']:,} objects this one process tracks had p50 "
            f"{with_gc['p50']} ms, max {with_gc['max']} ms; the "
            f"{without_gc.get('count', 0)} without, p50 {without_gc.get('p50')} ms, p99 "
            f"{without_gc.get('p99')} ms, max {without_gc.get('max')} ms."
            if with_gc
            else "; no round saw a full collection."
        ),
        "",
        f"CPU seconds during the {result['rounds_wall_seconds']} s of rounds: whole bench "
        f"process {cpu['process']} (controller thread {cpu['controller_thread']}, main thread "
        f"with the data planes {cpu['main_thread']}), kube-apiserver {cpu['apiserver']}, "
        f"etcd {cpu['etcd']}. The machine's CPUs were {machine.get('busy_fraction', 0):.0%} "
        f"busy during the rounds ({machine.get('not_this_benchmark_fraction', 0):.0%} of their "
        f"time was other work than this benchmark; steal {machine.get('steal_fraction', 0):.0%}).",
        "",
        f"Machine: {env['cores']} x {env['cpu']}, kernel {env['kernel']}, Python "
        f"{env['python']}, kube-apiserver {env['kubernetes']}, etcd {env['etcd']}. Load average "
        f"{result['loadavg_start'][0]:.2f} at the start, {result['loadavg_end'][0]:.2f} at the "
        f"end" + (" — **the machine was busy** with other work." if busy else "."),
        "",
        "**Method and caveats.** Each round flips `conditions.ready` (and `serving`) of one "
        "endpoint with a JSON patch of its EndpointSlice through the API server, and takes "
        "the time from just before that request until every data plane's `ConfigClient` "
        "has swapped its Runtime to a snapshot showing the change (timestamped as `apply` "
        "returns, just before the ack is sent; the ack's trip back is not included). The "
        "controller's debounce holdoff (100 ms after the last change, production default) "
        "is part of the latency by design: it is what turns a rollout's burst into one "
        "snapshot. The API server and etcd are real but run on loopback without a kind "
        "cluster, kubelet or kube-controller-manager, so watch delivery is faster than "
        "across a network; the controller runs on a thread and the data planes on the "
        "event loop of one Python process, so they share one GIL and the data planes' "
        "applies are serialised, which a real deployment (a pod each) would not do. "
        f"Percentiles are nearest-rank over the {a['changes']} rounds"
        + (
            f": p99 is the {ordinal(a['changes'] - math.ceil(0.99 * a['changes']) + 1)} largest."
            if a["changes"] >= 2
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--data-planes", type=int, default=2)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds after each round")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per round")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 endpoints, 5 changes; prints the summary and writes no result files",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.endpoints, args.changes = 100, 5
    if args.endpoints < 1 or args.data_planes < 1 or args.changes < 1:
        parser.error("--endpoints, --data-planes and --changes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_binaries()
    if missing:
        say(f"missing binaries (run `make e2e-assets`): {', '.join(missing)}")
        return 2
    log_file = Path(tempfile.gettempdir()) / f"wslb-propagation-{os.getpid()}.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])  # INFO, as in production
    install_hooks()
    loadavg_start = os.getloadavg()
    say(f"load average {loadavg_start}; log in {log_file}")
    began = time.monotonic()
    with control_plane() as cluster, tempfile.TemporaryDirectory(prefix="wslb-prop-") as tmp:
        say(f"kube-apiserver up at {cluster.url} in {time.monotonic() - began:.1f}s")
        result = uvloop.run(bench(cluster, args, Path(tmp)))
    result = {
        "arguments": vars(args),
        "settings": {
            "holdoff_seconds": Settings().holdoff_seconds,
            "max_delay_seconds": Settings().max_delay_seconds,
        },
        "environment": environment(),
        "loadavg_start": list(loadavg_start),
        "loadavg_end": list(os.getloadavg()),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "run_seconds": round(time.monotonic() - began, 1),
        **result,
    }
    say(json.dumps({"summary_ms": result["summary_ms"], "timeouts": result["timeouts"]}))
    say(f"run took {result['run_seconds']} s")
    if args.quick:
        say("--quick: no result files written")
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "propagation.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "propagation.md").write_text(markdown(result))
    say(f"wrote {RESULTS / 'propagation.json'} and {RESULTS / 'propagation.md'}")
    return 0 if result["timeouts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
