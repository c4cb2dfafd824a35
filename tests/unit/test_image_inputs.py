"""What `make image` and `make venv` read before building: the lock's freshness, this host's pip
settings (the image build's secrets) and the image tag the chart expects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_script(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def copy_lock_inputs(tmp_path: Path) -> Path:
    """A repository with only what hack/lock.py reads."""
    (tmp_path / "hack").mkdir()
    for name in ("lock.py", "pip_settings.py"):
        shutil.copy(REPO / "hack" / name, tmp_path / "hack" / name)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path


def test_committed_lock_matches_pyproject() -> None:
    result = run_script("hack/lock.py", "check")
    assert result.returncode == 0, result.stderr


def test_lock_check_names_the_fix_when_a_requirement_changed(tmp_path: Path) -> None:
    repo = copy_lock_inputs(tmp_path)
    pyproject = repo / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"pytest>=8",', '"pytest>=8", "hypothesis",')
    )
    result = run_script("hack/lock.py", "check", cwd=repo)
    assert result.returncode == 1
    assert result.stderr.startswith("ERROR: requirements/dev.txt is stale")
    assert "make lock" in result.stderr


def test_lock_check_fails_on_a_missing_lock_file(tmp_path: Path) -> None:
    repo = copy_lock_inputs(tmp_path)
    (repo / "requirements" / "runtime.txt").unlink()
    result = run_script("hack/lock.py", "check", cwd=repo)
    assert result.returncode == 1
    assert "requirements/runtime.txt is missing" in result.stderr


def test_pip_settings_prefer_the_environment_over_pip_conf(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://file.invalid/simple\ntrusted-host = a.invalid\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": "https://env.invalid/s"}
    env.pop("PIP_TRUSTED_HOST", None)
    result = run_script("hack/pip_settings.py", "pip-conf", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "[global]\nindex-url = https://env.invalid/s\ntrusted-host = a.invalid\n"
    )


def test_pip_settings_cert_is_the_bundle_pip_uses(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not read, only named\n")
    env = {**os.environ, "PIP_CERT": str(bundle)}
    result = run_script("hack/pip_settings.py", "cert", env=env)
    assert result.stdout.strip() == str(bundle)


def test_make_image_tags_the_charts_app_version() -> None:
    """The chart's default image is localhost/wslb:<appVersion>: `make image` must build it."""
    chart = yaml.safe_load((REPO / "helm" / "wslb" / "Chart.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("WSLB_IMAGE", "WSLB_RELEASE_IMAGE")}
    result = subprocess.run(
        ["bash", "-c", 'source hack/lib.sh && echo "$WSLB_RELEASE_IMAGE $WSLB_IMAGE"'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [f"localhost/wslb:{chart['appVersion']}", "localhost/wslb:dev"]


def test_kind_demo_runs_the_image_make_image_builds() -> None:
    """examples/kind-demo/echo.yaml names the tag `make image` builds and kind loads."""
    chart = yaml.safe_load((REPO / "helm" / "wslb" / "Chart.yaml").read_text())
    documents = yaml.safe_load_all((REPO / "examples" / "kind-demo" / "echo.yaml").read_text())
    (deployment,) = (d for d in documents if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"localhost/wslb:{chart['appVersion']}"
