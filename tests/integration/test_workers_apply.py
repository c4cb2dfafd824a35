"""The parent's side of `--workers N` in controller mode, over real worker admin sockets:
a snapshot one worker refuses raises that worker's error and the worker that took it is
put back on the previous snapshot, so every worker serves the same version."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dataplane.admin import AdminServer
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from dataplane.workers import WorkerSet, snapshot_receiver
from lbwire.errors import ConfigError, FieldProblem
from lbwire.snapshot import Snapshot, parse_snapshot
from tests.integration.conftest import listener, snapshot


@dataclass
class Options:
    config: Path | None = None
    workers: int = 2
    admin_host: str | None = "127.0.0.1"
    admin_port: int = 0


class Picky:
    """A worker's apply target that refuses one version (as a worker whose port is taken
    would), else applies to its real runtime."""

    def __init__(self, runtime: Runtime, refuse: str) -> None:
        self.runtime = runtime
        self.refuse = refuse

    async def apply(self, snap: Snapshot) -> None:
        if snap.version == self.refuse:
            raise ConfigError(
                f"snapshot version {snap.version}",
                [FieldProblem("listeners[1].port", "cannot listen: Address already in use")],
            )
        await self.runtime.apply(snap)


@pytest.fixture
async def two_workers(tmp_path: Path) -> AsyncIterator[tuple[WorkerSet, list[Runtime]]]:
    workers = WorkerSet(Options(), str(tmp_path), [])
    runtimes = [Runtime(Metrics(), workers=2), Runtime(Metrics(), workers=2)]
    appliers = [runtimes[0].apply, Picky(runtimes[1], refuse="2").apply]
    admins = []
    for index, apply in enumerate(appliers):
        admin = AdminServer(Metrics().registry, lambda: True)
        await admin.start_unix(workers._socket(index), snapshot_receiver(apply))
        admins.append(admin)
        await workers._sync(index)  # what the supervisor does once a worker answers
    assert workers.synced == {0, 1}
    yield workers, runtimes
    for admin in admins:
        await admin.close()
    for runtime in runtimes:
        await runtime.shutdown(drain_timeout=0)


async def test_refusal_by_one_worker_rolls_the_other_back(
    two_workers: tuple[WorkerSet, list[Runtime]],
) -> None:
    workers, runtimes = two_workers
    first = parse_snapshot(snapshot(listener("ws"), version="1"))
    await workers.apply(first)
    assert [r.snapshot.version if r.snapshot else None for r in runtimes] == ["1", "1"]

    second = parse_snapshot(
        snapshot(listener("ws", port=first.listeners[0].port), listener("more"), version="2")
    )
    with pytest.raises(ConfigError) as refused:
        await workers.apply(second)
    assert refused.value.fields == ["listeners[1].port"]
    assert "(worker 1)" in str(refused.value)
    # Worker 0 had taken version 2; it is back on version 1 like worker 1.
    assert [r.snapshot.version if r.snapshot else None for r in runtimes] == ["1", "1"]
    assert set(runtimes[0].listeners) == {"ws"}
    assert workers.current == first

    third = parse_snapshot(snapshot(listener("ws", port=first.listeners[0].port), version="3"))
    await workers.apply(third)
    assert [r.snapshot.version if r.snapshot else None for r in runtimes] == ["3", "3"]


async def test_bad_body_is_a_refusal_not_a_crash(
    two_workers: tuple[WorkerSet, list[Runtime]],
) -> None:
    workers, runtimes = two_workers
    error = await workers._push(0, b"{not json")
    assert error is not None and "not JSON" in str(error)
    error = await workers._push(0, b'{"listeners": [{"name": "ws", "port": 70000}]}')
    assert error is not None and "listeners[0].port" in error.fields
    assert runtimes[0].snapshot is None
