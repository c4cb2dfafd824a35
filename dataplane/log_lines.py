"""The text of one access-log line for a WebSocket connection, and its pieces.

Split from `access_log.py` (which batches records and writes them on its own thread) so
that mypyc compiles it: every connection's line is built here, and interpreted it cost
more than the rest of the connection's bookkeeping (~45k instructions: a regex per
client-controlled field, `round()`, `%03d` formatting). Pure functions of a record.
"""

from __future__ import annotations

import json
import time

from dataplane.handshake import head_summary
from dataplane.relay import ConnectionRecord

MAX_FIELD = 1024  # longest Host, path or forwarded-for chain written, in characters

# Field values already checked by `_bare` (the writer thread's): at most BARE_MEMO_SIZE
# of at most BARE_MEMO_LENGTH characters, forgotten all at once when full.
BARE_MEMO_SIZE = 1024
BARE_MEMO_LENGTH = 256
_bare_seen: dict[str, bool] = {}

# The last whole second formatted, and its text (the writer thread's cache).
_second = -1
_second_text = ""


def clip(value: str) -> str | None:
    """A client-controlled value cut to MAX_FIELD characters (None when empty)."""
    if not value:
        return None
    return value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def timestamp(when: float) -> str:
    """ISO 8601 UTC with milliseconds; the date part is formatted once a second (datetime
    per line was a fifth of a line's cost)."""
    global _second, _second_text
    whole = int(when)
    if _second != whole:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole
    millis = int((when - whole) * 1000)
    return _second_text + "." + str(1000 + millis)[1:] + "+00:00"


def seconds(value: float) -> str:
    """A duration to the microsecond, without trailing zeros ("61.25", "0.0004", "2.0"):
    what str(round(value, 6)) gave, without its exponent form for tiny values."""
    micros = int(value * 1_000_000 + 0.5) if value >= 0 else 0
    whole = micros // 1_000_000
    fraction = str(1_000_000 + micros % 1_000_000)[1:].rstrip("0")
    return f"{whole}.{fraction or '0'}"


def _bare(value: str) -> bool:
    """Printable ASCII but blank, quote, equals sign and backslash: written bare. Hosts,
    paths and methods repeat from line to line, so answers are remembered (a scan cost
    ~900 instructions per field, a lookup ~100)."""
    known = _bare_seen.get(value)
    if known is not None:
        return known
    bare = True
    for char in value:
        code = ord(char)
        if code <= 32 or code >= 127 or code == 34 or code == 61 or code == 92:
            bare = False
            break
    if len(value) <= BARE_MEMO_LENGTH:
        if len(_bare_seen) >= BARE_MEMO_SIZE:
            _bare_seen.clear()
        _bare_seen[value] = bare
    return bare


def text(value: str | None) -> str:
    """A client-controlled value in logfmt: bare when it is plain, else JSON-quoted."""
    if not value:
        return "-"
    return value if value != "-" and _bare(value) else json.dumps(value)


def request_summary(record: ConnectionRecord) -> tuple[str, str, str, str]:
    """(method, Host, target, X-Forwarded-For chain as sent upstream) of a connection's
    request: read here, on the writer thread, from the head the connection kept."""
    if not record.head:
        return record.method, record.host, record.target, record.forwarded_for
    method, target, host, chain = head_summary(record.head)
    if record.appended_for:
        chain.append(record.appended_for)
    return method, host, target, ", ".join(chain)


def connection_line(record: ConnectionRecord, include_query: bool, worker: int | None) -> str:
    """One logfmt line, newline included: the keys of `access_log.fields()`, in order."""
    method, host, path, forwarded_for = request_summary(record)
    if not include_query:
        path = path.split("?", 1)[0]
    line = (
        f"time={timestamp(record.started + record.duration)} kind=websocket"
        f" listener={record.listener} client_addr={record.client or '-'}"
        f" client_port={record.client_port} forwarded_for={text(clip(forwarded_for))}"
        f" host={text(clip(host))} method={text(method)}"
        f" path={text(clip(path))} backend={record.backend or '-'} status={record.status}"
        f" reason={record.rejection or '-'} duration_seconds={seconds(record.duration)}"
        f" bytes_from_client={record.bytes_c2b} bytes_to_client={record.bytes_b2c}"
        f" messages_from_client={record.messages_c2b} messages_to_client={record.messages_b2c}"
        f" close_code={record.close_code or '-'} closed_by={record.closed_by or '-'}"
    )
    return f"{line} worker={worker}\n" if worker is not None else line + "\n"
