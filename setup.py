"""Build hook: the connection core compiled with mypyc when WSLB_MYPYC=1, pure Python otherwise.

Everything else about the package is in pyproject.toml. Compiled, the modules in COMPILED
become C extensions beside their .py files (measured: the core alone about 45% fewer
instructions per 64 B message and 12% per handshake; the HTTP modules about 55% per
proxied HTTP request); the .py files stay and are what runs whenever the .so files are
absent, so `make run` and `make venv` need no compiler. The image and `make compiled` set
WSLB_MYPYC=1 (a C compiler and Python's headers needed).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

#: The modules compiled: the per-chunk path (the Relay, which holds both directions' frame state), the wheel, and
#: the per-request HTTP path (the readers, the session, the endpoint choice and the pool), and
#: the client connection adapter.
COMPILED = (
    "dataplane/relay.py",
    "dataplane/frames.py",
    "dataplane/deadlines.py",
    "dataplane/http1.py",
    "dataplane/http_proxy.py",
    "dataplane/tunnel.py",
    "dataplane/listener.py",
    # the plain counters every connection and request adds to (metrics.py reads them)
    "dataplane/counts.py",
    "dataplane/handshake.py",
    # the access-log line of every connection (~45k instructions interpreted)
    "dataplane/log_lines.py",
    # admission, once per accepted connection: the gate, its token buckets and policies
    "dataplane/admission.py",
    "dataplane/ratelimit.py",
    "dataplane/policy.py",
    # the endpoint choice and the idle pool, called once per HTTP request: 126.7k ->
    # 106.6k instructions per proxied keep-alive GET compiled (balancer.py and pool.py are
    # pure logic; group.py alone was 2k of it)
    "dataplane/group.py",
    "dataplane/balancer.py",
    "dataplane/pool.py",
    # the TLS layer of HTTPS listeners: every read and write of a WSS/HTTPS connection
    "dataplane/tls_stream.py",
)


def ext_modules() -> list[object]:
    flag = os.environ.get("WSLB_MYPYC", "")
    if flag not in ("", "0", "1"):
        sys.exit(f"WSLB_MYPYC must be 1 (compile the connection core) or 0/unset, not {flag!r}")
    if flag != "1":
        return []
    from mypyc.build import mypycify

    # No config file: pyproject's mypy plugins (pydantic) are not needed for these modules
    # and not installed where the image builds. One group named inside the package, so the
    # shared runtime lands as dataplane/core__mypyc.*.so, not as a top-level module.
    # mypyc type-checks what the modules import (websockets, httptools, prometheus_client...):
    # where the build's own Python lacks them (the image builds with a tools venv and installs
    # into another), WSLB_MYPYC_PYTHON names the interpreter whose packages mypy reads.
    options = ["--config-file="]
    python = os.environ.get("WSLB_MYPYC_PYTHON")
    if python:
        options += ["--python-executable", python]
    return list(mypycify([*options, *COMPILED], group_name="dataplane.core"))


setup(ext_modules=ext_modules())
