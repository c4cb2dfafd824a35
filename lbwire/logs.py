"""Log setup shared by the three programs: `--log-format json|text`, worker ids, rate limits.

Owns the root handler's format and the filters every line passes through: a worker filter
that stamps each record with the worker id (so lines of `--workers N` processes sharing
one stderr can be told apart) and a rate-limit filter for noisy loggers (failed TLS
handshakes are client-driven: a scanner must not flood the log). JSON comes from
python-json-logger (installed with kopf). This module must not open files or sockets:
it writes to the stream it is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter

ENV_FORMAT = "WSLB_LOG_FORMAT"
ENV_LEVEL = "WSLB_LOG_LEVEL"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(worker_tag)s %(message)s"
# Attributes the JSON formatter writes under other keys, or that say nothing to a reader.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogSetupError(ValueError):
    """A log format or level that does not exist; the message says which values do."""


def parse_format(value: str) -> LogFormat:
    try:
        return LogFormat(value.strip().lower())
    except ValueError:
        choices = ", ".join(f.value for f in LogFormat)
        raise LogSetupError(f"unknown log format {value!r}: use one of {choices}") from None


def parse_level(value: str) -> int:
    level = logging.getLevelName(value.strip().upper())
    if not isinstance(level, int):
        raise LogSetupError(
            f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return level


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None) -> None:
    """`--log-level` and `--log-format`, defaulting to WSLB_LOG_LEVEL / WSLB_LOG_FORMAT."""
    env = os.environ if env is None else env
    parser.add_argument(
        "--log-level",
        default=env.get(ENV_LEVEL, "INFO"),
        help=f"DEBUG, INFO, WARNING or ERROR (default INFO, or ${ENV_LEVEL})",
    )
    parser.add_argument(
        "--log-format",
        default=env.get(ENV_FORMAT, LogFormat.TEXT.value),
        help=f"text or json: one JSON object per line (default text, or ${ENV_FORMAT})",
    )


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """One readable line, UTC ISO 8601 time, `[worker N]` after the logger when set."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, defaults={"worker_tag": ""})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time, level, logger, message, worker, then any extras."""

    def __init__(self) -> None:
        super().__init__(JSON_FIELDS, rename_fields=JSON_RENAMES)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("worker_tag", None)  # the text form's rendering of `worker`
        if log_data.get("worker") is None:
            log_data.pop("worker", None)


class WorkerFilter(logging.Filter):
    """Stamps `worker` (None in a single process) and its text rendering on each record."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker
        self.tag = "" if worker is None else f" [worker {worker}]"

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        record.worker_tag = self.tag
        return True


class RateLimitFilter(logging.Filter):
    """Lets at most `burst` records of one kind through per `interval` seconds.

    A kind is the logger name and the message template (not its arguments), so "TLS
    handshake failed from %s" is one kind whatever the peer. The first record let through
    after a quiet spell says how many were dropped, so nothing is lost silently.
    """

    def __init__(
        self,
        interval: float = 60.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self.max_kinds = max_kinds
        # kind -> [window start, passed in window, suppressed since last pass]
        self._windows: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        kind = (record.name, str(record.msg))
        window = self._windows.get(kind)
        if window is None:
            if len(self._windows) >= self.max_kinds:
                self._windows.clear()  # bounded memory whatever the callers log
            window = self._windows[kind] = [now, 0, 0]
        if now - window[0] >= self.interval:
            window[0], window[1] = now, 0
        if window[1] >= self.burst:
            window[2] += 1
            return False
        window[1] += 1
        if window[2]:
            record.msg = f"{record.msg} ({int(window[2])} similar messages suppressed)"
            record.suppressed = int(window[2])
            window[2] = 0
        return True


_HANDLER_MARK = "_wslb_handler"


def configure(
    level: str = "INFO",
    fmt: str | LogFormat = LogFormat.TEXT,
    worker: int | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install the one root handler (replacing ours from an earlier call) and return it.

    Raises LogSetupError for an unknown level or format, before touching logging.
    """
    numeric = parse_level(level)
    chosen = fmt if isinstance(fmt, LogFormat) else parse_format(fmt)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter() if chosen is LogFormat.JSON else TextFormatter())
    handler.addFilter(WorkerFilter(worker))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def rate_limit(logger: logging.Logger, interval: float = 60.0, burst: int = 5) -> RateLimitFilter:
    """Attach a RateLimitFilter to `logger` (records logged on it directly) and return it."""
    limiter = RateLimitFilter(interval, burst)
    logger.addFilter(limiter)
    return limiter
