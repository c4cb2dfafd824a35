"""`make run`: the data plane standalone in front of two demo echo backends.

Generates a self-signed certificate for 127.0.0.1/localhost on first run (into
~/.cache/wslb/demo-tls/), starts `wslb-echo` on 127.0.0.1:9001 and :9002, then runs the
data plane on the given config until Ctrl-C, and stops the backends it started. Prints
the address of each listener's demo page (the echo backend's GET /): a browser opened there
loads the page, its /api/info and its same-origin WebSocket through that one listener.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from dataplane.certs import ensure_files

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wslb" / "demo-tls"
BACKEND_PORTS = (9001, 9002)


def page_urls(config: dict[str, Any]) -> list[str]:
    """Where a browser finds the demo page through each listener of a standalone config."""
    urls = []
    for listener in config.get("listeners") or []:
        scheme = "https" if listener.get("protocol") == "HTTPS" else "http"
        host = str(listener.get("address", "127.0.0.1"))
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        urls.append(f"{scheme}://{host}:{listener.get('port')}/")
    return urls


def main() -> None:
    config = sys.argv[1] if len(sys.argv) > 1 else "examples/standalone.yaml"
    cert, _ = ensure_files(CACHE, ["localhost", "127.0.0.1"])
    print(f"demo certificate: {cert} (self-signed; clients must trust it)", flush=True)
    try:
        urls = page_urls(yaml.safe_load(Path(config).read_text()) or {})
    except (OSError, yaml.YAMLError, AttributeError):
        urls = []  # the data plane itself reports a missing or broken config clearly
    for page in urls:
        print(f"demo page (HTTP and WebSocket through one listener): {page}", flush=True)
    backends = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dataplane.echo",
                "--port",
                str(port),
                "--name",
                f"echo-{index + 1}",
            ]
        )
        for index, port in enumerate(BACKEND_PORTS)
    ]
    try:
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "dataplane.cli",
                "--config",
                config,
                "--drain-timeout",
                "2",
                *sys.argv[2:],
            ]
        )
    except KeyboardInterrupt:
        code = 0
    finally:
        for proc in backends:
            proc.terminate()
        for proc in backends:
            proc.wait(timeout=10)
    sys.exit(code)


if __name__ == "__main__":
    main()
