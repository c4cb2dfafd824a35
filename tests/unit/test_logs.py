"""lbwire.logs: the shared --log-format setup, worker ids and the rate-limit filter."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from lbwire import logs

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root")
def test_json_format_writes_one_object_per_line_with_worker_and_extras() -> None:
    out = io.StringIO()
    logs.configure("INFO", "json", worker=3, stream=out)
    logging.getLogger("wslb.test").info("applied %s", "v7", extra={"listener": "ws"})
    logging.getLogger("wslb.test").debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "applied v7"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "wslb.test"
    assert entry["worker"] == 3
    assert entry["listener"] == "ws"
    assert "worker_tag" not in entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])


@pytest.mark.usefixtures("restore_root")
def test_json_format_omits_worker_in_a_single_process() -> None:
    out = io.StringIO()
    logs.configure("INFO", logs.LogFormat.JSON, stream=out)
    logging.getLogger("wslb.test").warning("x")
    assert "worker" not in json.loads(out.getvalue())


@pytest.mark.usefixtures("restore_root")
def test_text_format_tags_the_worker() -> None:
    out = io.StringIO()
    logs.configure("INFO", "text", worker=1, stream=out)
    logging.getLogger("wslb.test").error("boom %d", 5)
    line = out.getvalue().strip()
    assert re.fullmatch(r"\S+T\S+ ERROR wslb\.test \[worker 1\] boom 5", line), line


@pytest.mark.usefixtures("restore_root")
def test_configure_twice_keeps_one_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure("INFO", "text", stream=first)
    logs.configure("INFO", "json", stream=second)
    logging.getLogger("wslb.test").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"


@pytest.mark.parametrize(
    ("level", "fmt", "text"),
    [("INFO", "yaml", "unknown log format 'yaml'"), ("LOUD", "text", "unknown log level")],
)
def test_bad_level_or_format_is_a_clear_error(level: str, fmt: str, text: str) -> None:
    with pytest.raises(logs.LogSetupError, match=text):
        logs.configure(level, fmt)


def test_arguments_default_from_the_environment() -> None:
    parser = argparse.ArgumentParser()
    logs.add_arguments(parser, env={"WSLB_LOG_FORMAT": "json"})
    args = parser.parse_args([])
    assert (args.log_format, args.log_level) == ("json", "INFO")
    assert parser.parse_args(["--log-format", "text"]).log_format == "text"


def _record(msg: str, *args: object, name: str = "wslb.tls") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_rate_limit_passes_a_burst_then_reports_what_it_dropped() -> None:
    now = [0.0]
    limiter = logs.RateLimitFilter(interval=10, burst=2, clock=lambda: now[0])
    template = "TLS handshake failed from %s: %s"
    passed = [limiter.filter(_record(template, f"10.0.0.{i}", "x")) for i in range(5)]
    assert passed == [True, True, False, False, False]
    # Another kind of message has its own budget.
    assert limiter.filter(_record("other %s", 1))
    now[0] = 10.0
    after = _record(template, "10.0.0.9", "x")
    assert limiter.filter(after)
    assert after.getMessage() == (
        "TLS handshake failed from 10.0.0.9: x (3 similar messages suppressed)"
    )
    assert limiter.filter(_record(template, "10.0.0.9", "x"))
    assert not limiter.filter(_record(template, "10.0.0.9", "x"))


def test_rate_limit_attached_to_a_logger_drops_its_records() -> None:
    out = io.StringIO()
    logger = logging.getLogger("wslb.test.ratelimited")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.rate_limit(logger, interval=3600, burst=1)
        for _ in range(3):
            logger.warning("handshake failed")
    finally:
        logger.removeHandler(handler)
    assert out.getvalue().count("handshake failed") == 1
