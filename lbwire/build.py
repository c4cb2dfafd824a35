"""What a wslb process runs: the labels of `wslb_build_info`, shared by both programs.

Versions come from the installed distributions (importlib.metadata), never from importing
them: this package must not import uvloop or anything with I/O, and the controller, which
does not run uvloop, still reports the one its image ships.
"""

from __future__ import annotations

import platform
import ssl
from importlib import metadata

BUILD_INFO = "wslb_build_info"
BUILD_INFO_HELP = "Always 1; the labels say which wslb, Python, uvloop and OpenSSL run."


def distribution_version(name: str) -> str:
    """The installed version of a distribution, or "unknown" when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """`version` (wslb), `python`, `uvloop` and the `openssl` this Python is linked with."""
    openssl = ssl.OPENSSL_VERSION.split()
    return {
        "version": distribution_version("wslb"),
        "python": platform.python_version(),
        "uvloop": distribution_version("uvloop"),
        "openssl": openssl[1] if len(openssl) > 1 else ssl.OPENSSL_VERSION,
    }
