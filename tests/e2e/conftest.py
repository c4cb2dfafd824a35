"""Fixtures of the e2e tier: one cluster per session, a namespace per test module.

The session fixture creates a kind cluster (see kind_cluster.py), loads our image, yields the
Cluster, and deletes the cluster at the end even when tests fail. When anything failed, it
first prints the cluster's state and runs `kind export logs` into build/e2e-logs/<cluster>.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import kind_cluster
from tests.e2e.kind_cluster import REPO, Cluster

#: Per-test limit for e2e tests (the call only: creating the cluster is bounded by its own
#: deadlines, and the project-wide 120 s would cut it short on a cold machine).
E2E_TEST_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TEST_TIMEOUT, func_only=True))


def _write(request: pytest.FixtureRequest, text: str) -> None:
    """Print to the terminal from a session fixture, past pytest's output capture."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text, flush=True)


def _report_failure(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    """State dump and `kind export logs` for a failed session, into the test output."""
    _write(request, f"\n==== e2e failure: state of cluster {cluster.name} ====")
    try:
        _write(request, cluster.diagnostics())
    except Exception as exc:  # diagnostics must never hide the original failure
        _write(request, f"(diagnostics failed: {exc})")
    logs_dir = Path(os.environ.get("WSLB_E2E_LOGS", REPO / "build" / "e2e-logs")) / cluster.name
    exported = cluster.export_logs(logs_dir)
    if exported is None:
        return
    _write(request, f"==== kind export logs: {exported} ====")
    # the node's own service logs are where a broken node shows why; print their tails
    for log_file in sorted(exported.glob("*/kubelet.log")) + sorted(
        exported.glob("*/containerd.log")
    ):
        lines = log_file.read_text(errors="replace").splitlines()[-40:]
        _write(request, f"---- {log_file.relative_to(exported)} (last {len(lines)} lines)")
        _write(request, "\n".join(lines))


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's cluster: a new kind cluster, or the current one with
    WSLB_E2E_CLUSTER=existing."""
    if os.environ.get("WSLB_E2E_CLUSTER") == "existing":
        yield kind_cluster.existing()
        return
    planned = kind_cluster.plan()
    failed_setup = False
    try:
        try:
            kind_cluster.start(planned, log=lambda m: _write(request, m))
        except BaseException:
            failed_setup = True
            raise
        yield planned
    finally:
        if failed_setup or request.session.testsfailed:
            _report_failure(request, planned)
        if os.environ.get("WSLB_E2E_KEEP") == "1":
            _write(request, f"keeping cluster {planned.name}: kubeconfig {planned.kubeconfig}")
        else:
            kind_cluster.destroy(planned)


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test module, deleted (without waiting) afterwards."""
    stem = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    name = f"e2e-{stem[:40]}-{secrets.token_hex(2)}"
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode
            == 0
        ),
        what=f"the default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
