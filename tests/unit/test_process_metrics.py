"""dataplane.process_metrics: build info, limits in force, TLS failure reasons from real
OpenSSL handshakes, certificate expiry, channel state, and survival of the workers' merge."""

from __future__ import annotations

import logging
import ssl
import tempfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dataplane.certs import self_signed
from dataplane.process_metrics import (
    TLS_FAILURE_REASONS,
    BuildInfoCollector,
    CertificateCollector,
    ChannelState,
    LimitsInForce,
    Observability,
    TlsFailures,
    tls_failure_reason,
)
from dataplane.tls import CertificateSet
from dataplane.workers import _Merged
from lbwire.build import build_labels
from lbwire.snapshot import Listener, LoadBalancerLimits, Snapshot

pytestmark = pytest.mark.unit


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def https_listener(
    name: str, days: int = 30, names: list[str] | None = None, port: int = 8443
) -> Listener:
    cert, key = self_signed(["lb.example.com"], days=days)
    return Listener.model_validate(
        {
            "name": name,
            "protocol": "HTTPS",
            "port": port,
            "tls": {
                "certificates": [
                    {"certificatePem": cert, "privateKeyPem": key, "serverNames": names or []}
                ]
            },
        }
    )


# --------------------------------------------------------------------------- build, limits


def test_build_info_names_the_running_versions() -> None:
    labels = build_labels()
    assert labels["python"].count(".") == 2
    assert labels["openssl"][0].isdigit(), labels
    assert labels["uvloop"] != "unknown"
    registry = CollectorRegistry()
    registry.register(BuildInfoCollector(labels))
    got = samples(registry)
    assert got[("wslb_build_info", frozenset(labels.items()))] == 1


def test_limits_are_each_process_share_and_listener_values() -> None:
    snap = Snapshot.model_validate(
        {
            "loadBalancer": {"limits": {"maxConnections": 5000, "newConnectionsPerSecond": 3000}},
            "listeners": [
                {
                    "name": "ws",
                    "port": 8080,
                    "idleTimeoutSeconds": 90,
                    "limits": {"maxConnections": 700},
                    "keepalive": {"intervalSeconds": 20},
                }
            ],
        }
    )
    current: list[Snapshot | None] = [None]
    registry = CollectorRegistry()
    Observability.install(registry, lambda: current[0], workers=3)
    assert not any(name.startswith("wslb_dataplane_listener_") for name, _ in samples(registry))
    current[0] = snap
    got = samples(registry)
    ws = frozenset({("listener", "ws")})
    assert got[("wslb_dataplane_load_balancer_max_connections", frozenset())] == 1667
    assert got[("wslb_dataplane_load_balancer_max_new_connections_per_second", frozenset())] == 1000
    # Each worker's share of the listener's limits (700 = 234 + 233 + 233; rate 5000 / 3).
    assert got[("wslb_dataplane_listener_max_connections", ws)] == 234
    assert got[("wslb_dataplane_listener_max_new_connections_per_second", ws)] == 1667
    assert got[("wslb_dataplane_listener_idle_timeout_seconds", ws)] == 90
    assert got[("wslb_dataplane_listener_keepalive_interval_seconds", ws)] == 20
    assert got[("wslb_dataplane_listener_max_message_bytes", ws)] == 1024 * 1024
    # A listener that left the config leaves no series behind.
    current[0] = Snapshot()
    assert not any(labels == ws for _, labels in samples(registry))
    limits = LimitsInForce(LoadBalancerLimits(max_connections=10), [], workers=4)
    assert (limits.lb_max_connections, limits.lb_new_connections_per_second) == (3, 750)
    last = LimitsInForce(LoadBalancerLimits(max_connections=10), [], workers=4, index=3)
    assert (last.lb_max_connections, last.listener_share(700)) == (2, 175)


def test_process_metrics_and_channel_only_in_controller_mode() -> None:
    standalone, channel = CollectorRegistry(), CollectorRegistry()
    Observability.install(standalone, lambda: None)
    made = Observability.install(channel, lambda: None, controller_mode=True)
    names = {name for name, _ in samples(standalone)}
    assert {"process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"} <= (
        names
    )
    assert "process_cpu_seconds_total" in names
    assert "wslb_dataplane_config_channel_connected" not in names
    made.channel.connected(True)
    made.channel.acked()
    got = samples(channel)
    assert got[("wslb_dataplane_config_channel_connected", frozenset())] == 1
    assert got[("wslb_dataplane_config_last_ack_timestamp_seconds", frozenset())] > 1.7e9


def test_channel_state_counts_sessions_and_times() -> None:
    clock = iter([100.0, 200.0])
    state = ChannelState(clock=lambda: next(clock))
    state.connected(True)
    state.connected(True)
    state.acked()
    state.connected(False)
    state.connected(True)
    state.nacked()
    assert (state.connects, state.last_ack, state.last_nack, state.is_connected) == (
        2,
        100.0,
        200.0,
        True,
    )


# --------------------------------------------------------------------------- TLS failures


def handshake_failure(
    server: ssl.SSLContext, client_bytes: bytes | ssl.SSLContext
) -> BaseException:
    """Run a real OpenSSL handshake over memory BIOs; return the server side's exception."""
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    if isinstance(client_bytes, bytes):
        s_in.write(client_bytes)
        s_in.write_eof()
        cli = None
    else:
        c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        cli = client_bytes.wrap_bio(c_in, c_out, server_hostname="lb.example.com")
    for _ in range(20):
        if cli is not None:
            try:
                cli.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                pass  # the client refused: its alert is in c_out
            data = c_out.read()
            if data:
                s_in.write(data)
            elif not s_out.pending:
                s_in.write_eof()  # the client gave up and closed
        try:
            srv.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLError, OSError) as exc:
            return exc
        if cli is not None:
            c_in.write(s_out.read())
    raise AssertionError("the handshake did not fail")


@pytest.fixture(scope="module")
def server_context() -> ssl.SSLContext:
    return CertificateSet(https_listener("wss").tls).select(None)  # type: ignore[arg-type]


def client(**kwargs: object) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for key, value in kwargs.items():
        if key == "ciphers":
            context.set_ciphers(str(value))
        else:
            setattr(context, key, value)
    return context


def verifying_client() -> ssl.SSLContext:
    """Trusts another CA than the listener's, as a client with a stale bundle does."""
    other, _ = self_signed(["elsewhere.example"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ca.pem"
        path.write_text(other)
        return ssl.create_default_context(cafile=str(path))


@pytest.mark.parametrize(
    ("peer", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http_request"),
        (b"\x00\x01\x02\x03garbage-that-is-not-tls\r\n" * 4, "not_tls"),
        (b"\x16\x03\x01\x00", "eof"),  # a record header, then the peer went away
        ("tls12_to_tls13_listener", "protocol_version"),
        ("rsa_kx_only", "no_shared_cipher"),
        ("stale_ca", "certificate_rejected"),
    ],
)
def test_real_handshake_failures_get_their_reason(
    server_context: ssl.SSLContext, peer: bytes | str, reason: str
) -> None:
    if peer == "tls12_to_tls13_listener":
        peer_ctx: bytes | ssl.SSLContext = client(maximum_version=ssl.TLSVersion.TLSv1_2)
        tls = https_listener("wss13").tls
        assert tls is not None
        server_context = CertificateSet(tls.model_copy(update={"min_version": "1.3"})).select(None)
    elif peer == "rsa_kx_only":
        peer_ctx = client(maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA256")
    elif peer == "stale_ca":
        peer_ctx = verifying_client()
    else:
        assert isinstance(peer, bytes)
        peer_ctx = peer
    exc = handshake_failure(server_context, peer_ctx)
    assert tls_failure_reason(exc) == reason, repr(exc)
    assert reason in TLS_FAILURE_REASONS


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), "timeout"),
        (ConnectionAbortedError("SSL handshake is taking longer than 10 seconds"), "timeout"),
        (ConnectionResetError(), "reset"),
        (ValueError("odd"), "other"),
    ],
)
def test_transport_failures_get_their_reason(exc: BaseException, reason: str) -> None:
    assert tls_failure_reason(exc) == reason


def test_tls_failures_are_counted_by_listener_and_logged_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = TlsFailures()
    registry = CollectorRegistry()
    registry.register(failures)
    with caplog.at_level(logging.INFO, logger="wslb.tls"):
        for _ in range(20):
            failures.observe("wss", ssl.SSLError(1, "[SSL: HTTP_REQUEST] http request"))
        failures.observe("wss", TimeoutError())
    got = samples(registry)
    assert (
        got[
            (
                "wslb_dataplane_tls_handshake_failures_total",
                frozenset({("listener", "wss"), ("reason", "other")}),
            )
        ]
        == 20
    )
    assert (
        got[
            (
                "wslb_dataplane_tls_handshake_failures_total",
                frozenset({("listener", "wss"), ("reason", "timeout")}),
            )
        ]
        == 1
    )
    logged = [r for r in caplog.records if r.name == "wslb.tls"]
    assert 2 <= len(logged) <= 6  # a burst of 5 per kind per minute, not 21 lines
    failures.forget("wss")
    assert not [k for k in samples(registry) if k[0].startswith("wslb_dataplane_tls")]


# --------------------------------------------------------------------------- certificates


def test_certificate_expiry_per_listener_and_certificate() -> None:
    soon = https_listener("wss", days=10, names=["chat.example.com"])
    later = https_listener("wss2", days=400, port=9443)
    current = [Snapshot(listeners=[soon, later])]
    registry = CollectorRegistry()
    Observability.install(registry, lambda: current[0])
    got = samples(registry)
    name = "wslb_dataplane_certificate_expiry_timestamp_seconds"
    first = got[(name, frozenset({("listener", "wss"), ("certificate", "chat.example.com")}))]
    second = got[(name, frozenset({("listener", "wss2"), ("certificate", "lb.example.com")}))]
    assert 380 * 86400 < second - first < 400 * 86400
    current[0] = Snapshot(listeners=[later])
    assert len([k for k in samples(registry) if k[0] == name]) == 1
    pushed = CertificateCollector()
    pushed.update([soon])
    assert [e.certificate for e in pushed.expiries] == ["chat.example.com"]


# --------------------------------------------------------------------------- workers' merge


def test_per_worker_series_survive_the_workers_merge() -> None:
    texts = []
    for worker in (0, 1):
        registry = CollectorRegistry()
        snap = Snapshot.model_validate({"loadBalancer": {"limits": {"maxConnections": 10}}})
        Observability.install(registry, lambda snap=snap: snap, workers=2)
        texts.append((worker, generate_latest(registry).decode()))
    merged = CollectorRegistry()
    merged.register(_Merged(texts))
    got = samples(merged)
    for worker in ("0", "1"):
        assert ("process_resident_memory_bytes", frozenset({("worker", worker)})) in got
        assert ("process_cpu_seconds_total", frozenset({("worker", worker)})) in got
        assert (
            got[("wslb_dataplane_load_balancer_max_connections", frozenset({("worker", worker)}))]
            == 5
        )
    assert any(name == "wslb_build_info" for name, _ in got)


def test_install_turns_off_created_series() -> None:
    registry = CollectorRegistry()
    Observability.install(registry, lambda: None)
    Counter("wslb_dataplane_example_total", "An example.", registry=registry).inc()
    text = generate_latest(registry).decode()
    assert "wslb_dataplane_example_total 1.0" in text
    assert "_created" not in text
