"""bench/image_build.py's stamp: the image's build of wslb is rebuilt exactly when what it is
built from changed (the interpreter, requirements, setup.py, pyproject.toml, dataplane/,
lbwire/), and never for the checkout's own build products or for other files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import image_build
from bench.image_build import BuildError, compiled_modules, ensure, fingerprint, is_current

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3.11 3.11.2 (main, ...) [GCC 12.2.0]"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small tree shaped like the repository's inputs."""
    root = tmp_path / "repo"
    for name, text in {
        "pyproject.toml": "[project]\nname = 'wslb'\n",
        "setup.py": (REPO / "setup.py").read_text(),
        "README.md": "readme\n",
        "requirements/build.txt": "mypy==1 --hash=sha256:aa\n",
        "requirements/runtime.txt": "uvloop==1 --hash=sha256:bb\n",
        "requirements/dev.txt": "pytest==1 --hash=sha256:cc\n",
        "dataplane/__init__.py": "",
        "dataplane/relay.py": "X = 1\n",
        "lbwire/__init__.py": "",
        "controller/main.py": "Y = 1\n",
        "tests/test_x.py": "",
    }.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "edited",
    [
        "dataplane/relay.py",
        "dataplane/new_module.py",
        "lbwire/__init__.py",
        "setup.py",
        "pyproject.toml",
        "requirements/runtime.txt",
        "requirements/build.txt",
    ],
)
def test_an_edit_to_what_the_wheel_is_built_from_changes_the_stamp(repo: Path, edited: str) -> None:
    before = fingerprint(repo, PYTHON)
    path = repo / edited
    path.write_text((path.read_text() if path.exists() else "") + "# edited\n")
    assert fingerprint(repo, PYTHON) != before


def test_a_renamed_file_changes_the_stamp(repo: Path) -> None:
    before = fingerprint(repo, PYTHON)
    (repo / "dataplane/relay.py").rename(repo / "dataplane/relay2.py")
    assert fingerprint(repo, PYTHON) != before


def test_another_interpreter_changes_the_stamp(repo: Path) -> None:
    assert fingerprint(repo, PYTHON) != fingerprint(repo, PYTHON.replace("3.11.2", "3.11.7"))


@pytest.mark.parametrize(
    "added",
    [
        "dataplane/relay.cpython-311-x86_64-linux-gnu.so",  # a `make compiled` in the checkout
        "dataplane/core__mypyc.cpython-311-x86_64-linux-gnu.so",
        "dataplane/__pycache__/relay.cpython-311.pyc",
        "controller/other.py",
        "requirements/dev.txt",
        "tests/test_y.py",
        "README.md",
    ],
)
def test_the_checkouts_build_products_and_other_files_leave_the_stamp(
    repo: Path, added: str
) -> None:
    before = fingerprint(repo, PYTHON)
    path = repo / added
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("anything\n")
    assert fingerprint(repo, PYTHON) == before


def test_a_current_stamp_skips_the_build_and_a_stale_one_rebuilds(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    def build_venv(repo: Path, build: Path, python: Path, venv: Path) -> None:
        venv.mkdir(parents=True, exist_ok=True)
        builds.append(venv)

    monkeypatch.setattr(image_build, "_build", build_venv)
    build = tmp_path / "build"
    python = Path(sys.executable)

    venv = ensure(repo, build, python, log=lambda _: None)
    assert builds == [venv] and (venv / image_build.STAMP_NAME).exists()
    ensure(repo, build, python, log=lambda _: None)
    assert len(builds) == 1  # nothing changed: no build

    (repo / "dataplane/relay.py").write_text("X = 2\n")
    ensure(repo, build, python, log=lambda _: None)
    assert len(builds) == 2


def test_a_build_that_fails_leaves_no_stamp(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next run builds again instead of using a half-built venv."""

    def fail(repo: Path, build: Path, python: Path, venv: Path) -> None:
        venv.mkdir(parents=True)
        raise BuildError("pip failed")

    monkeypatch.setattr(image_build, "_build", fail)
    with pytest.raises(BuildError, match="pip failed"):
        ensure(repo, tmp_path / "build", Path(sys.executable), log=lambda _: None)
    assert not (tmp_path / "build/wslb-venv" / image_build.STAMP_NAME).exists()


def test_compiled_modules_are_read_from_setup_py() -> None:
    names = compiled_modules(REPO)
    assert "dataplane.relay" in names and "dataplane.handshake" in names
    assert all(name.startswith("dataplane.") and not name.endswith(".py") for name in names)


def test_a_python_other_than_the_images_is_refused_with_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho 3 12\n")
    fake.chmod(0o755)
    monkeypatch.delenv("BENCH_WSLB_PYTHON", raising=False)
    monkeypatch.setattr(image_build, "DEFAULT_PYTHON", str(fake))
    with pytest.raises(BuildError, match=r"Python 3\.12, not the image's 3\.11.*BENCH_WSLB_PYTHON"):
        image_build.interpreter()


def test_bench_wslb_python_names_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_WSLB_PYTHON", sys.executable)
    assert image_build.interpreter() == Path(sys.executable)
    monkeypatch.setenv("BENCH_WSLB_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(BuildError, match="not an executable Python"):
        image_build.interpreter()


def test_the_source_copy_leaves_the_checkouts_build_products_out(repo: Path) -> None:
    (repo / "dataplane/relay.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (repo / "dataplane/__pycache__").mkdir()
    (repo / "dataplane/__pycache__/relay.cpython-311.pyc").write_bytes(b"")
    copy = repo.parent / "copy"
    image_build.copy_sources(repo, copy)
    assert sorted(p.name for p in (copy / "dataplane").iterdir()) == ["__init__.py", "relay.py"]
    assert (copy / "controller/main.py").exists() and not (copy / "tests").exists()


def test_is_current_only_with_the_same_stamp(tmp_path: Path) -> None:
    assert not is_current(tmp_path / "missing", "abc")
    (tmp_path / image_build.STAMP_NAME).write_text("abc\n")
    assert is_current(tmp_path, "abc")
    assert not is_current(tmp_path, "abd")


def test_bench_wslb_is_image_or_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.proxies import wslb_build_choice

    monkeypatch.delenv("BENCH_WSLB", raising=False)
    assert wslb_build_choice() == "image"
    monkeypatch.setenv("BENCH_WSLB", "checkout")
    assert wslb_build_choice() == "checkout"
    monkeypatch.setenv("BENCH_WSLB", "compiled")
    with pytest.raises(SystemExit, match="BENCH_WSLB must be one of image, checkout"):
        wslb_build_choice()


def test_the_data_planes_console_script_comes_from_pyproject() -> None:
    from bench.proxies import console_script

    assert console_script("dataplane.cli:main") == "wslb-dataplane"
    with pytest.raises(SystemExit, match="no console script"):
        console_script("dataplane.nothing:main")
