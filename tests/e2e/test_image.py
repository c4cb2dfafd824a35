"""Our image as `make image` builds it: the build secrets never land in it, and it carries no
tool that installs or builds code.

The module builds the image once more under a throwaway name with hack/image.sh (the path
`make image` takes), with a canary in each build secret: a CA certificate made for this test,
appended to the CA bundle pip trusts here (so the build still reaches the index through this
machine's proxy), and a pip setting naming a host that exists nowhere. Every file of every
layer, the image config and the image history are then searched for both.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.certs import self_signed
from tests.e2e.kind_cluster import REPO, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900, func_only=False)]

#: The image may grow with features, not by accident (331 MB before it was trimmed).
MAX_IMAGE_MIB = 200


def engine() -> str:
    """podman here; docker where only Docker is installed (as hack/image.sh chooses)."""
    chosen = os.environ.get("WSLB_CONTAINER_ENGINE") or shutil.which("podman") or "docker"
    if not shutil.which(chosen):
        raise FileNotFoundError("neither podman nor docker is installed (hack/host-prep.sh)")
    return chosen


def host_ca_bundle() -> Path:
    """The CA bundle hack/image.sh would pass as the `cacert` secret on this host."""
    result = run(["python3", str(REPO / "hack" / "pip_settings.py"), "cert"])
    return Path(result.stdout.strip())


@dataclass
class Canary:
    """What the canary build was given, and the strings that must not be found."""

    image: str
    bundle: Path
    pem_line: bytes  # one base64 line of the canary certificate, unique to this run
    host: bytes  # the made-up trusted host in the pip.conf secret

    def needles(self) -> dict[str, bytes]:
        return {"canary CA certificate": self.pem_line, "pip.conf setting": self.host}


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    """Builds the canary image with hack/image.sh; removes it afterwards."""
    token = secrets.token_hex(6)
    work = tmp_path_factory.mktemp("image-canary")
    certificate, _ = self_signed([f"wslb-canary-{token}.invalid"])
    bundle = work / "ca-bundle.pem"
    host_bundle = host_ca_bundle()
    bundle.write_text((host_bundle.read_text() if host_bundle.is_file() else "") + certificate)
    pem_lines = certificate.splitlines()
    image = f"localhost/wslb-canary:{token}"
    host = f"wslb-canary-{token}.invalid"
    env = {
        **os.environ,
        "PIP_CERT": str(bundle),
        "PIP_TRUSTED_HOST": host,
        "WSLB_IMAGE": image,
        "WSLB_RELEASE_IMAGE": image,
    }
    try:
        result = subprocess.run(
            ["bash", str(REPO / "hack" / "image.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
        assert result.returncode == 0, f"hack/image.sh failed:\n{result.stderr[-4000:]}"
        yield Canary(image, bundle, pem_lines[len(pem_lines) // 2].encode(), host.encode())
    finally:
        subprocess.run([engine(), "rmi", "-f", image], capture_output=True, check=False)


def saved_image(image: str, directory: Path) -> tarfile.TarFile:
    """`save` of the image as a docker-archive (layer tars, config and manifest)."""
    archive = directory / "image.tar"
    run([engine(), "save", "-q", "--format", "docker-archive", "-o", str(archive), image])
    return tarfile.open(archive)


def find_in_layers(outer: tarfile.TarFile, needles: dict[str, bytes]) -> list[str]:
    """`what in layer/path` for each needle found in a file of any layer or in the metadata."""
    found = []
    for member in outer.getmembers():
        if not member.isfile():
            continue
        data = outer.extractfile(member)
        assert data is not None
        if member.name.endswith(".tar"):
            with tarfile.open(fileobj=data) as layer:
                for entry in layer.getmembers():
                    content = layer.extractfile(entry) if entry.isfile() else None
                    text = content.read() if content else b""
                    text += entry.name.encode() + entry.linkname.encode()
                    found += [
                        f"{what} in {member.name}:{entry.name}"
                        for what, needle in needles.items()
                        if needle in text
                    ]
        else:  # the config (env, labels, history) and the manifest
            text = data.read()
            found += [
                f"{what} in {member.name}" for what, needle in needles.items() if needle in text
            ]
    return found


def test_build_secrets_are_in_no_layer_and_no_metadata(canary: Canary, tmp_path: Path) -> None:
    """The CA bundle and the pip settings reach the build (it downloaded through this
    machine's proxy) and are found in no layer, in the config and in the history."""
    needles = canary.needles()
    with saved_image(canary.image, tmp_path) as outer:
        leaks = find_in_layers(outer, needles)
    history = run([engine(), "history", "--no-trunc", "--format", "{{.CreatedBy}}", canary.image])
    inspect = run([engine(), "image", "inspect", canary.image])
    for what, needle in needles.items():
        for where, text in (("history", history.stdout), ("inspect", inspect.stdout)):
            if needle.decode() in text:
                leaks.append(f"{what} in {where}")
    assert leaks == []


def test_image_has_no_package_or_build_tools_and_is_small(canary: Canary) -> None:
    """Nothing in the image can install or build code; it is one trimmed layer."""
    probe = (
        "import importlib.util as u, shutil; "
        "print(sorted(m for m in ('pip', 'setuptools', 'ensurepip', 'venv') if u.find_spec(m)), "
        "sorted(t for t in ('pip', 'pip3', 'apt-get', 'apt', 'gcc', 'cc', 'strip') "
        "if shutil.which(t)))"
    )
    result = run([engine(), "run", "--rm", "--read-only", canary.image, "python3", "-c", probe])
    assert result.stdout.strip() == "[] []"
    inspect = json.loads(run([engine(), "image", "inspect", canary.image]).stdout)[0]
    assert inspect["Config"]["User"] == "10001:10001"
    assert len(inspect["RootFS"]["Layers"]) == 1
    assert inspect["Size"] / 2**20 < MAX_IMAGE_MIB
