"""The package-index settings that pip uses on this host, for builds that run elsewhere.

The image build (hack/image.sh passes them as build secrets) and the lock writer (hack/lock.py
hands them to uv) must reach the same index, through the same proxy, as `pip install` here.
This reads them from `pip config list` (config files and PIP_* variables), keeps pip's
precedence, and prints them only where asked: never into a file that ends up in the image.

    python3 hack/pip_settings.py pip-conf   # a pip.conf with the index settings (no cert)
    python3 hack/pip_settings.py cert       # the CA bundle pip trusts ('' when none)
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

#: The settings that say where packages come from. `cert` is handled apart: a host path.
INDEX_KEYS = ("index-url", "extra-index-url", "trusted-host")
#: pip's sections for `pip install`, lowest precedence first (the environment wins).
SECTIONS = ("global", "install", ":env:")
#: Debian's system bundle: pip >= 24.2 trusts the system store even with no `cert` setting.
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def settings() -> dict[str, str]:
    """pip's effective index settings and `cert` on this host (only those that are set)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    # A Python without pip (Debian's python3 without python3-pip) has no pip settings either.
    listing = result.stdout if result.returncode == 0 else ""
    found: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or section not in SECTIONS or name not in (*INDEX_KEYS, "cert"):
            continue
        rank = SECTIONS.index(section)
        if name not in found or rank >= found[name][0]:
            found[name] = (rank, str(ast.literal_eval(raw)))  # pip prints repr(value)
    return {name: value for name, (_, value) in found.items()}


def cert(found: dict[str, str] | None = None) -> str:
    """The CA bundle to trust: pip's `cert`, else SSL_CERT_FILE, else the system bundle."""
    found = settings() if found is None else found
    for candidate in (found.get("cert"), os.environ.get("SSL_CERT_FILE"), str(SYSTEM_BUNDLE)):
        if candidate and Path(candidate).is_file():
            return candidate
    return ""


def pip_conf(found: dict[str, str] | None = None) -> str:
    """A pip.conf with the index settings; empty when pip uses its defaults."""
    found = settings() if found is None else found
    lines = [f"{key} = {found[key]}" for key in INDEX_KEYS if found.get(key)]
    return "[global]\n" + "\n".join(lines) + "\n" if lines else ""


def main(argv: list[str]) -> int:
    """Print what was asked for."""
    if argv not in (["pip-conf"], ["cert"]):
        print("usage: pip_settings.py pip-conf|cert", file=sys.stderr)
        return 2
    print(pip_conf() if argv == ["pip-conf"] else cert(), end="" if argv == ["pip-conf"] else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
