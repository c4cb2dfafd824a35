"""Writes and checks requirements/*.txt: every Python package that CI and the image install,
pinned to one version and the sha256 of each of its files.

- ``requirements/runtime.txt``: the project's dependencies (the image installs exactly these);
- ``requirements/build.txt``: pip and the build backend (the image's builder, and ``make venv``
  before anything else);
- ``requirements/dev.txt``: all of the above plus the ``dev`` extra (what ``make venv`` and so
  CI install; the project itself then goes in with ``--no-deps``).

One resolution, by uv for every platform (``--universal``): the same files serve an amd64 CI
host and an arm64 image build, and the runtime and build files are constrained to the dev file,
so a package has one version everywhere. Each file records a digest of the pyproject.toml
requirements it was made from; ``check`` (run by ``make venv``, offline) fails when those have
changed since, instead of installing a stale set.

    python3 hack/lock.py write            # make lock: add what pyproject.toml gained, keep
                                          # every other pin (uv prefers the existing file)
    python3 hack/lock.py write --upgrade  # make lock-upgrade: newest versions of everything
    python3 hack/lock.py check            # make venv: is the lock still pyproject.toml's?
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pip_settings  # a sibling script: its folder is on sys.path when this one runs

REPO = Path(__file__).resolve().parents[1]
LOCK_DIR = REPO / "requirements"
FILES = ("dev.txt", "runtime.txt", "build.txt")
#: The resolver, pinned: another uv version may resolve the same input differently.
UV_VERSION = "0.13.9"
#: The interpreter every image and CI machine runs (requires-python's floor).
PYTHON_VERSION = "3.11"
DIGEST_PREFIX = "# pyproject-digest: "


class LockError(Exception):
    """The lock cannot be written or is stale; the message says what to do."""


def pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def inputs() -> dict[str, object]:
    """The parts of pyproject.toml a lock is made from."""
    project = pyproject()["project"]
    return {
        "requires-python": project.get("requires-python", ""),
        "dependencies": project.get("dependencies", []),
        "dev": project.get("optional-dependencies", {}).get("dev", []),
        "build": pyproject()["build-system"]["requires"],
        "uv": UV_VERSION,
    }


def digest() -> str:
    """sha256 of `inputs()`, canonical JSON."""
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()


def uv() -> Path:
    """The pinned uv, installed once into the build cache with the host's pip."""
    cache = Path(
        os.environ.get("WSLB_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wslb"
    )
    venv = cache / "uv" / UV_VERSION
    binary = venv / "bin" / "uv"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"uv=={UV_VERSION}"], check=True
        )
    return binary


def uv_env() -> dict[str, str]:
    """uv reaches the index pip uses here (uv does not read pip's configuration)."""
    found = pip_settings.settings()
    env = dict(os.environ)
    if found.get("index-url"):
        env["UV_DEFAULT_INDEX"] = found["index-url"]
    if found.get("extra-index-url"):
        env["UV_INDEX"] = found["extra-index-url"]
    if found.get("trusted-host"):
        env["UV_INSECURE_HOST"] = found["trusted-host"]
    ca = pip_settings.cert(found)
    if ca:
        env["SSL_CERT_FILE"] = ca
    return env


def compile_lock(
    out: Path, sources: list[str], extra: list[str], env: dict[str, str], upgrade: bool
) -> None:
    """One `uv pip compile` into `out`, with the digest line on top."""
    command = [
        str(uv()),
        "pip",
        "compile",
        "--quiet",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--generate-hashes",
        "--no-strip-extras",
        "--custom-compile-command",
        "make lock",
        *(["--upgrade"] if upgrade else []),
        "--output-file",
        str(out),
        *extra,
        *sources,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise LockError(f"uv pip compile failed for {out.name}:\n{result.stderr}")
    out.write_text(f"{DIGEST_PREFIX}{digest()}\n{out.read_text()}")


def write(upgrade: bool = False) -> None:
    """Resolve pyproject.toml again and write the three files."""
    LOCK_DIR.mkdir(exist_ok=True)
    env = uv_env()
    with tempfile.TemporaryDirectory() as tmp:
        build_in = Path(tmp) / "build.in"
        build_in.write_text("\n".join(["pip", *pyproject()["build-system"]["requires"]]) + "\n")
        dev, runtime, build = (LOCK_DIR / name for name in FILES)
        compile_lock(dev, ["pyproject.toml", str(build_in)], ["--extra", "dev"], env, upgrade)
        compile_lock(runtime, ["pyproject.toml"], ["--constraint", str(dev)], env, upgrade)
        compile_lock(build, [str(build_in)], ["--constraint", str(dev)], env, upgrade)
    for name in FILES:
        text = (LOCK_DIR / name).read_text()
        if tmp in text:  # the temporary input's path in uv's `# via` comments
            (LOCK_DIR / name).write_text(text.replace(str(build_in), "build-system.requires"))
    print(f"wrote {', '.join(f'requirements/{n}' for n in FILES)}", file=sys.stderr)


def check() -> None:
    """Fail unless every lock file was written from the current pyproject.toml."""
    want = digest()
    for name in FILES:
        path = LOCK_DIR / name
        if not path.exists():
            raise LockError(f"requirements/{name} is missing: run `make lock`")
        first = path.read_text().partition("\n")[0]
        if first != DIGEST_PREFIX + want:
            raise LockError(
                f"requirements/{name} is stale: pyproject.toml's requirements changed since it "
                "was written; run `make lock` and commit requirements/"
            )


def main(argv: list[str]) -> int:
    """`write [--upgrade]` or `check`; a failure is one line on stderr and exit 1."""
    if argv not in (["write"], ["write", "--upgrade"], ["check"]):
        print("usage: hack/lock.py write [--upgrade] | check", file=sys.stderr)
        return 2
    try:
        check() if argv == ["check"] else write(upgrade="--upgrade" in argv)
    except (LockError, subprocess.CalledProcessError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
