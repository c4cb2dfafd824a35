"""What every wslb program's command line shares: one-line usage errors and `--version`.

A bad flag or environment value is answered with one line that names it and exit status 2
(argparse's usual status), never a usage block or a traceback; `--version` prints the
installed distribution's version. Used by wslb-dataplane, wslb-controller and wslb-echo.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from lbwire.build import distribution_version


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, with `--version`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {version()}")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def version() -> str:
    """The installed wslb version, or `unknown` when run from a tree that is not installed."""
    return distribution_version("wslb")


def fail(program: str, message: str) -> NoReturn:
    """Refuse to start: one line naming what is wrong, exit status 2."""
    print(f"{program}: {message}", file=sys.stderr)
    sys.exit(2)
