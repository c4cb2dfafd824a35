"""What build of the data plane a bench run measured, asked of the interpreter that ran it.

The report must say what ran, not what the checkout looks like: the interpreter (its path,
version, Debian package if any, and whether libpython is a shared library, as in pyenv's
build, or linked into the executable, as in Debian's) and which of our modules that
interpreter loads compiled. `describe` runs a probe in that interpreter, from the proxy's
working directory and environment, so the same package shadows the same way as in the proxy
itself; `mapped_extensions` reads what a running process actually mapped. Nothing here
builds or starts the data plane.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

PROBE_TIMEOUT = 60.0
PACKAGES = ("dataplane", "lbwire")

# Imports every module of our packages and reports each one's file name and whether an
# extension loader loaded it (mypyc can give a module of its group a wrong __file__ path,
# never a wrong suffix).
PROBE = """
import importlib, json, os, pkgutil, platform, sys
from importlib import metadata
from importlib.machinery import ExtensionFileLoader
modules, extensions, errors = {}, [], {}
for package in sys.argv[1:]:
    top = importlib.import_module(package)
    for found in pkgutil.walk_packages(top.__path__, package + "."):
        if found.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            module = importlib.import_module(found.name)
        except Exception as error:
            errors[found.name] = repr(error)
            continue
        modules[found.name] = os.path.basename(module.__file__ or "")
        if isinstance(module.__loader__, ExtensionFileLoader):
            extensions.append(found.name)
with open("/proc/self/maps") as maps:
    libpython = sorted({line.split()[-1] for line in maps if "libpython" in line})
print(json.dumps({
    "executable": sys.executable,
    "base_executable": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    "version": platform.python_version(),
    "libpython": libpython,
    "uvloop": metadata.version("uvloop"),
    "openssl": __import__("ssl").OPENSSL_VERSION,
    "package_dir": os.path.dirname(sys.modules["dataplane"].__file__),
    "modules": modules,
    "extensions": extensions,
    "errors": errors,
}))
"""


class ProbeError(Exception):
    """The interpreter could not tell what it loads (the message has its output)."""


def describe(python: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What `python` loads when run from `cwd` with `env`: see the module docstring. Adds
    `debian_package` ("python3.11-minimal 3.11.2-6+deb12u6", or "" when dpkg does not own
    the executable) and `compiled` (the module names whose file is an extension)."""
    done = subprocess.run(
        [python, "-c", PROBE, *PACKAGES],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=PROBE_TIMEOUT,
    )
    if done.returncode != 0:
        raise ProbeError(f"{python} could not import the data plane: {done.stderr[-2000:]}")
    info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    info["debian_package"] = debian_package(info["base_executable"])
    # The shared mypyc runtime (dataplane/core__mypyc.*.so) is no module of ours.
    info["compiled"] = sorted(
        name
        for name, file in info["modules"].items()
        if (file.endswith(".so") or name in info["extensions"]) and not name.endswith("__mypyc")
    )
    return info


def debian_package(path: str) -> str:
    """The Debian package (name and version) that installed `path`, or ""."""
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", path], capture_output=True, text=True, timeout=PROBE_TIMEOUT
        )
        if owner.returncode != 0:
            return ""
        name = owner.stdout.split(":", 1)[0].strip()
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", name],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f"{name} {version}".strip()


def summary(info: dict[str, Any], origin: str) -> str:
    """One sentence for the report: interpreter, where the package came from, what is
    compiled. `origin` says how the data plane was installed."""
    package = info["debian_package"]
    owner = f"Debian's, {package}" if package else "not Debian's"
    linked = "libpython shared" if info["libpython"] else "libpython linked in"
    python = f"{info['base_executable']} {info['version']} ({owner}; {linked})"
    names = [name.removeprefix("dataplane.") for name in info["compiled"]]
    built = (
        f"compiled with mypyc as loaded: {', '.join(names)}"
        if names
        else "pure Python (no compiled module loaded)"
    )
    return f"{origin} on {python}, {built}"


def mapped_extensions(pids: list[int], package: str = "dataplane") -> list[str]:
    """Paths of `package`'s extension modules mapped by the running processes `pids`."""
    found: set[str] = set()
    marker = f"{os.sep}{package}{os.sep}"
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    path = line.split()[-1]
                    if marker in path and path.endswith(".so"):
                        found.add(path)
        except OSError:
            continue
    return sorted(found)
