"""`bench/.build/wslb-venv`: the data plane as the image ships it, built here for `make bench`.

The image (Dockerfile, build stage) runs Debian's python3.11 with our mypyc-compiled wheel;
the checkout's .venv runs another CPython (pyenv's here: no PGO/LTO, libpython shared) and
whatever build the checkout is in. This module repeats the build stage on this machine: a
tools venv from requirements/build.txt, the data plane's venv from requirements/runtime.txt
(both with --require-hashes, as the Dockerfile installs them), then the wheel built with
WSLB_MYPYC=1 from a clean copy of the source (the checkout's own .so files and build/ never
reach it) and installed, not editable. Like the Dockerfile it fails when an installed
module of setup.py's COMPILED is not the compiled one.

A stamp (a hash of the interpreter, requirements/build.txt and runtime.txt, setup.py,
pyproject.toml, dataplane/ and lbwire/) skips the build while nothing it depends on changed.
The interpreter is `/usr/bin/python3`, which must be CPython 3.11 as in the image's Debian
base; BENCH_WSLB_PYTHON names another.

    python -m bench.image_build    # build if stale; print the venv's path
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "bench" / ".build"
DEFAULT_PYTHON = "/usr/bin/python3"
IMAGE_PYTHON = (3, 11)  # bookworm's python3, the image's base (Dockerfile BASE_IMAGE)
#: Bumped when the recipe below changes, so existing venvs are rebuilt by the new one.
RECIPE = "1"
#: What the wheel is built from (the Dockerfile's COPY lines); controller/ and the README go
#: into the wheel but do not change the data plane, so they are not in the stamp.
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "README.md",
    "LICENSE",
    "lbwire",
    "dataplane",
    "controller",
)
#: What the stamp hashes: the locks the image installs (not requirements/dev.txt), the build
#: hook and the packages the data plane runs.
STAMPED = (
    "pyproject.toml",
    "setup.py",
    "requirements/build.txt",
    "requirements/runtime.txt",
    "lbwire",
    "dataplane",
)
#: Never copied nor hashed (the .dockerignore's exclusions, and bytecode).
IGNORED = ("__pycache__", "*.so", "*.pyc")
STAMP_NAME = ".bench-stamp"
STEP_TIMEOUT = 1800.0  # seconds for one pip step; mypyc on a busy 2-core machine takes minutes


class BuildError(Exception):
    """The image's build could not be repeated here; the message says why and what to do."""


def interpreter() -> Path:
    """The interpreter the image runs: BENCH_WSLB_PYTHON, else /usr/bin/python3 (which must
    be CPython 3.11, as in the image)."""
    chosen = os.environ.get("BENCH_WSLB_PYTHON", "")
    path = Path(chosen or DEFAULT_PYTHON)
    if not os.access(path, os.X_OK):
        raise BuildError(f"{path} is not an executable Python; set BENCH_WSLB_PYTHON")
    if not chosen:
        version = _run([str(path), "-c", "import sys; print(*sys.version_info[:2])"]).split()
        if tuple(map(int, version)) != IMAGE_PYTHON:
            wanted = ".".join(map(str, IMAGE_PYTHON))
            raise BuildError(
                f"{path} is Python {'.'.join(version)}, not the image's {wanted}: "
                f"set BENCH_WSLB_PYTHON to a python{wanted} (Debian's, as in the image)"
            )
    return path


def stamped_files(repo: Path) -> Iterator[Path]:
    """Every file the stamp hashes, in a stable order."""
    for name in STAMPED:
        top = repo / name
        if top.is_file():
            yield top
            continue
        for path in sorted(top.rglob("*")):
            if path.is_file() and not _ignored(path.relative_to(repo)):
                yield path


def fingerprint(repo: Path, python_identity: str) -> str:
    """The hash of what the venv is built from: the interpreter (its path and full
    version), this recipe, and the stamped files (names and contents)."""
    digest = hashlib.sha256(f"recipe {RECIPE}\npython {python_identity}\n".encode())
    for path in stamped_files(repo):
        digest.update(f"{path.relative_to(repo)}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current(venv: Path, stamp: str) -> bool:
    """Whether the venv was completely built from exactly these inputs."""
    try:
        return (venv / STAMP_NAME).read_text().strip() == stamp
    except OSError:
        return False


def compiled_modules(repo: Path) -> list[str]:
    """setup.py's COMPILED as module names (read from its source: importing it builds)."""
    tree = ast.parse((repo / "setup.py").read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in targets):
            paths = ast.literal_eval(node.value)  # type: ignore[attr-defined]
            return [p.removesuffix(".py").replace("/", ".") for p in paths]
    raise BuildError("setup.py has no COMPILED tuple")


def ensure(
    repo: Path = REPO,
    build: Path = BUILD,
    python: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The venv, built first if missing or stale; returns its directory. One build at a
    time (a lock file), so concurrent runs wait for it instead of racing."""
    say = log or _log
    python = python or interpreter()
    version = _run([str(python), "-c", "import sys; print(sys.version)"])
    identity = f"{Path(python).resolve()} {version}"
    venv = build / "wslb-venv"
    stamp = fingerprint(repo, identity)
    if is_current(venv, stamp):
        return venv
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "wslb-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_current(venv, stamp):  # another run may have built it meanwhile
            started = time.monotonic()
            say(f"building {_rel(venv, repo)} as the image does ({python}, mypyc)")
            _build(repo, build, Path(python), venv)
            (venv / STAMP_NAME).write_text(stamp + "\n")
            say(f"built {_rel(venv, repo)} in {time.monotonic() - started:.0f} s")
    return venv


def copy_sources(repo: Path, source: Path) -> None:
    """A clean copy of what the wheel is built from (the Dockerfile's COPY lines), without
    the checkout's .so files and bytecode, into a fresh `source`."""
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in SOURCES:
        if (repo / name).is_dir():
            shutil.copytree(repo / name, source / name, ignore=shutil.ignore_patterns(*IGNORED))
        elif (repo / name).exists():
            shutil.copy2(repo / name, source / name)


def _build(repo: Path, build: Path, python: Path, venv: Path) -> None:
    """The Dockerfile's build stage, step by step, into `build`."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_WARN_SCRIPT_LOCATION": "1"}
    env.pop("PYTHONPATH", None)
    tools = build / "tools"
    tools_stamp = hashlib.sha256(
        str(python.resolve()).encode() + (repo / "requirements/build.txt").read_bytes()
    ).hexdigest()
    if not is_current(tools, tools_stamp):
        shutil.rmtree(tools, ignore_errors=True)
        _run([str(python), "-m", "venv", str(tools)], env=env)
        install = [str(tools / "bin/pip"), "install", "-q", "--require-hashes"]
        _run([*install, "-r", str(repo / "requirements/build.txt")], env=env)
        (tools / STAMP_NAME).write_text(tools_stamp + "\n")
    pip = str(tools / "bin/pip")
    shutil.rmtree(venv, ignore_errors=True)
    _run([str(python), "-m", "venv", "--without-pip", str(venv)], env=env)
    target = ["--python", str(venv / "bin/python"), "install", "-q"]
    runtime = str(repo / "requirements/runtime.txt")
    _run([pip, *target, "--require-hashes", "-r", runtime], env=env)
    source, dist = build / "src", build / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    copy_sources(repo, source)
    compile_env = {**env, "WSLB_MYPYC": "1", "WSLB_MYPYC_PYTHON": str(venv / "bin/python")}
    wheel = [pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dist)]
    _run([*wheel, str(source)], env=compile_env, cwd=build)
    wheels = sorted(dist.glob("wslb-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wslb wheel in {dist}, found {[w.name for w in wheels]}")
    _run([pip, *target, "--no-deps", "--no-index", str(wheels[0])], env=env)
    # As the Dockerfile checks: every module of COMPILED imports from its extension.
    check = (
        "import importlib, sys\n"
        "from importlib.machinery import ExtensionFileLoader as E\n"
        "loose = [n for n in sys.argv[1:]\n"
        "         if not isinstance(importlib.import_module(n).__loader__, E)]\n"
        "assert not loose, f'not compiled: {loose}'\n"
    )
    _run([str(venv / "bin/python"), "-c", check, *compiled_modules(repo)], env=env, cwd=build)
    shutil.rmtree(source, ignore_errors=True)


def _ignored(relative: Path) -> bool:
    return any(relative.match(pattern) or pattern in relative.parts for pattern in IGNORED)


def _run(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=cwd, timeout=STEP_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"{' '.join(command[:4])} ...: {error}") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-3000:]
        raise BuildError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{output}")
    return done.stdout.strip()


def _rel(path: Path, repo: Path) -> str:
    return str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)


def _log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main() -> None:
    try:
        print(ensure())
    except BuildError as error:
        raise SystemExit(f"bench: the image's build of wslb failed: {error}") from None


if __name__ == "__main__":
    main()
