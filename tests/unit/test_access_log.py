"""dataplane.access_log: the fields of each line, sampling, escaping, and a writer that never
blocks the caller."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from dataplane import log_lines
from dataplane.access_log import (
    AccessLog,
    AccessLogCollector,
    AccessLogPolicy,
    RequestRecord,
    render,
)
from dataplane.relay import ConnectionRecord
from lbwire.logs import LogFormat

pytestmark = pytest.mark.unit

LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def record(**fields: Any) -> ConnectionRecord:
    """A connection's record: a refused one unless `fields` say more."""
    values: dict[str, Any] = {
        "client": "192.0.2.1",
        "client_port": 1,
        "listener": "ws",
        "backend": "",
        "status": 101,
        "rejection": "",
        "started": 0.0,
        "duration": 1.0,
        "handshake_seconds": 0.0,
        "bytes_c2b": 0,
        "bytes_b2c": 0,
        "messages_c2b": 0,
        "messages_b2c": 0,
        "close_code": 0,
        "closed_by": "",
    }
    values.update(fields)
    return ConnectionRecord(**values)


SESSION = record(
    listener="ws",
    started=1_800_000_000.0,
    duration=61.25,
    client="192.0.2.7",
    client_port=53412,
    status=101,
    forwarded_for="203.0.113.9, 192.0.2.7",
    method="GET",
    host="chat.example.com",
    target="/socket?token=secret&room=1",
    backend="10.1.0.4:8080",
    bytes_c2b=1200,
    bytes_b2c=34000,
    messages_c2b=12,
    messages_b2c=340,
    close_code=1001,
    closed_by="proxy",
)


def parse_logfmt(line: str) -> dict[str, str]:
    """A reader independent of the writer: key=value, values JSON-quoted when needed."""
    assert line.endswith("\n") and "\n" not in line[:-1]
    out: dict[str, str] = {}
    for key, value in LOGFMT.findall(line):
        out[key] = json.loads(value) if value.startswith('"') else value
    return out


def write(records: list[ConnectionRecord], log: AccessLog) -> list[str]:
    assert isinstance(log.stream, io.StringIO)
    log.start()
    for record in records:
        log.record(record)
    log.close()
    return log.stream.getvalue().splitlines(keepends=True)


def test_text_line_carries_every_field_of_an_idle_closed_session() -> None:
    (line,) = write([SESSION], AccessLog(LogFormat.TEXT, io.StringIO(), worker=2))
    got = parse_logfmt(line)
    assert got == {
        "time": "2027-01-15T08:01:01.250+00:00",
        "kind": "websocket",
        "listener": "ws",
        "client_addr": "192.0.2.7",
        "client_port": "53412",
        "forwarded_for": "203.0.113.9, 192.0.2.7",
        "host": "chat.example.com",
        "method": "GET",
        "path": "/socket",
        "backend": "10.1.0.4:8080",
        "status": "101",
        "reason": "-",
        "duration_seconds": "61.25",
        "bytes_from_client": "1200",
        "bytes_to_client": "34000",
        "messages_from_client": "12",
        "messages_to_client": "340",
        "close_code": "1001",
        "closed_by": "proxy",
        "worker": "2",
    }


def test_json_line_has_the_same_fields_typed() -> None:
    (line,) = write([SESSION], AccessLog(LogFormat.JSON, io.StringIO()))
    got: dict[str, Any] = json.loads(line)
    assert got["status"] == 101
    assert got["client_port"] == 53412
    assert got["path"] == "/socket"
    assert got["close_code"] == 1001
    assert got["reason"] is None
    assert got["messages_to_client"] == 340
    assert "worker" not in got


def test_refused_handshake_gets_its_own_line_with_status_and_reason() -> None:
    refused = record(
        started=1_800_000_000.0,
        duration=0.0004,
        client="2001:db8::1",
        client_port=40000,
        status=503,
        rejection="listener_connections",
        target="/socket",
    )
    (line,) = write([refused], AccessLog(LogFormat.TEXT, io.StringIO()))
    got = parse_logfmt(line)
    assert (got["status"], got["reason"], got["backend"], got["close_code"]) == (
        "503",
        "listener_connections",
        "-",
        "-",
    )
    assert got["client_addr"] == "2001:db8::1"


def test_query_string_is_kept_only_when_the_listener_asks() -> None:
    log = AccessLog(LogFormat.JSON, io.StringIO())
    log.set_policies({"ws": AccessLogPolicy(include_query=True)})
    (line,) = write([SESSION], log)
    assert json.loads(line)["path"] == "/socket?token=secret&room=1"


def test_client_fields_cannot_forge_a_line() -> None:
    forged = record(
        host='evil.example\nlistener=admin status="200"',
        target="/a b" + "x" * 5000,
    )
    (line,) = write([forged], AccessLog(LogFormat.TEXT, io.StringIO()))
    got = parse_logfmt(line)
    assert got["listener"] == "ws"
    assert got["host"] == 'evil.example\nlistener=admin status="200"'
    assert got["path"].startswith("/a bxxx")
    assert len(got["path"]) == 1024 + 3


def test_a_listener_switched_off_writes_nothing_and_others_still_do() -> None:
    log = AccessLog(LogFormat.TEXT, io.StringIO())
    log.set_policies({"ws": AccessLogPolicy(enabled=False)})
    other = record(listener="wss")
    lines = write([SESSION, other], log)
    assert [parse_logfmt(line)["listener"] for line in lines] == ["wss"]


def test_sampling_writes_the_chosen_fraction() -> None:
    draws = iter([0.05, 0.5, 0.09, 0.95])
    log = AccessLog(LogFormat.TEXT, io.StringIO(), rng=lambda: next(draws))
    log.set_policies({"ws": AccessLogPolicy(sample_rate=0.1)})
    assert len(write([SESSION] * 4, log)) == 2


def test_bad_sample_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        AccessLogPolicy(sample_rate=0)


class BlockedStream(io.StringIO):
    """A log pipe nobody reads: every write waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(10)
        return super().write(text)


def test_a_stuck_stream_never_blocks_the_caller_and_overflow_is_counted() -> None:
    stream = BlockedStream()
    log = AccessLog(LogFormat.TEXT, stream, queue_batches=4)
    log.start()
    log.record(SESSION)
    assert stream.entered.wait(5)  # the writer thread holds one record, blocked
    started = time.perf_counter()
    for _ in range(10):
        log.record(SESSION)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5  # put_nowait: microseconds, not the 10 s the write waits
    assert log.dropped == 6  # 4 fit in the queue
    stream.release.set()
    log.close()
    assert log.written == 5
    assert len(stream.getvalue().splitlines()) == 5
    registry = CollectorRegistry()
    registry.register(AccessLogCollector(log))
    text = generate_latest(registry).decode()
    assert "wslb_dataplane_access_log_lines_total 5.0" in text
    assert 'wslb_dataplane_access_log_dropped_total{cause="queue_full"} 6.0' in text


def test_a_closed_stream_is_counted_not_raised() -> None:
    stream = io.StringIO()
    stream.close()
    log = AccessLog(LogFormat.TEXT, stream)
    write_log = log
    write_log.start()
    write_log.record(SESSION)
    write_log.close()
    assert (log.written, log.failed) == (0, 1)


async def test_records_on_a_loop_go_to_the_writer_in_batches() -> None:
    """One hand-over per batch (full, or FLUSH_DELAY old), not one thread wake per line."""
    log = AccessLog(LogFormat.TEXT, io.StringIO(), batch_max=2)  # writer not started
    for _ in range(3):
        log.record(SESSION)
    assert log._queue.qsize() == 1  # the full batch of two, at once
    deadline = time.monotonic() + 5
    while log._queue.qsize() < 2:
        assert time.monotonic() < deadline, "the partial batch was never handed over"
        await asyncio.sleep(0.01)
    assert [len(batch or []) for batch in (log._queue.get(), log._queue.get())] == [2, 1]


async def test_flush_hands_over_what_waits_and_close_writes_it() -> None:
    log = AccessLog(LogFormat.TEXT, io.StringIO())
    log.start()
    log.record(SESSION)
    log.flush()
    await asyncio.to_thread(log.close)
    assert log.written == 1


@pytest.mark.parametrize("worker", [None, 3])
def test_text_and_json_lines_say_the_same_in_the_same_order(worker: int | None) -> None:
    """Text is rendered on its own (for speed): it must not drift from the JSON fields."""
    cases = [
        SESSION,
        record(status=403, rejection="origin", target="/a?b", method="GET"),
        record(host='evil "host"=x', forwarded_for="-", client_port=9),
    ]
    for case in cases:
        as_json: dict[str, Any] = json.loads(render(case, False, worker, LogFormat.JSON))
        as_text = parse_logfmt(render(case, False, worker, LogFormat.TEXT))
        expected = {
            key: "-" if value is None else value if isinstance(value, str) else str(value)
            for key, value in as_json.items()
        }
        assert list(as_text) == list(expected)
        assert as_text == expected


# --- plain HTTP requests ----------------------------------------------------------------


def request_record(**fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "client": "192.0.2.7",
        "client_port": 40000,
        "listener": "web",
        "rule": "api",
        "backend": "10.1.0.4:8080",
        "status": 200,
        "rejection": "",
        "started": 1_800_000_000.0,
        "duration": 0.0125,
        "bytes_c2b": 12,
        "bytes_b2c": 3456,
        "method": "POST",
        "host": "api.example.com",
        "target": "/v1/orders?token=secret",
        "forwarded_for": "203.0.113.9",
    }
    values.update(fields)
    return RequestRecord(**values)


def test_http_request_line_in_json_names_the_rule_and_drops_the_query() -> None:
    line = json.loads(render(request_record(), False, None, LogFormat.JSON))
    assert line["kind"] == "http"
    assert (line["method"], line["host"], line["path"]) == ("POST", "api.example.com", "/v1/orders")
    assert (line["rule"], line["backend"], line["status"]) == ("api", "10.1.0.4:8080", 200)
    assert (line["bytes_from_client"], line["bytes_to_client"]) == (12, 3456)
    assert line["duration_seconds"] == 0.0125
    assert line["client_addr"] == "192.0.2.7"
    assert "close_code" not in line


def test_http_request_line_in_text_keeps_the_query_when_asked_and_escapes_the_path() -> None:
    text = render(
        request_record(target='/a b"?q=1', rejection="backend_timeout", status=504),
        True,
        3,
        LogFormat.TEXT,
    )
    pairs = dict(LOGFMT.findall(text))
    assert pairs["kind"] == "http"
    assert json.loads(pairs["path"]) == '/a b"?q=1'
    assert (pairs["status"], pairs["reason"], pairs["worker"]) == ("504", "backend_timeout", "3")
    assert text.endswith("\n") and text.count("\n") == 1


@pytest.mark.parametrize(
    ("value", "written"),
    [(61.25, "61.25"), (0.0004, "0.0004"), (2.0, "2.0"), (0.0000123, "0.000012"), (1e-9, "0.0")],
)
def test_durations_are_written_to_the_microsecond_without_exponent(
    value: float, written: str
) -> None:
    (line,) = write([record(duration=value)], AccessLog(LogFormat.TEXT, io.StringIO()))
    assert parse_logfmt(line)["duration_seconds"] == written


@given(st.text(max_size=12) | st.sampled_from(["GET", "/", "127.0.0.1:80", "a b", 'q"', "é"]))
@settings(max_examples=400, deadline=None)
def test_bare_values_are_remembered_without_changing_any_answer(value: str) -> None:
    """`text` remembers which values need no quoting: asked twice, or after the memo was
    forgotten, every value gets the answer a scan gives."""
    expected = (
        value
        if value
        and value != "-"
        and all(32 < ord(char) < 127 and char not in '"=\\' for char in value)
        else ("-" if not value else json.dumps(value))
    )
    assert log_lines.text(value) == expected
    assert log_lines.text(value) == expected  # the remembered answer
    assert len(log_lines._bare_seen) <= log_lines.BARE_MEMO_SIZE


def test_the_memo_of_bare_values_stays_bounded() -> None:
    for index in range(3 * log_lines.BARE_MEMO_SIZE):
        assert log_lines.text(f"host-{index}") == f"host-{index}"
    assert 0 < len(log_lines._bare_seen) <= log_lines.BARE_MEMO_SIZE
    long = "x" * (log_lines.BARE_MEMO_LENGTH + 1)
    assert log_lines.text(long) == long
    assert long not in log_lines._bare_seen  # long values are scanned, never kept
