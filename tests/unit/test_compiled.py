"""The build of the connection core that the tests run is the one the job asked for.

WSLB_MYPYC=1 (`make test-compiled`, CI's compiled pass) requires the mypyc-compiled modules,
so that pass can never silently test pure Python; WSLB_MYPYC=0 (`make test`) requires the
pure ones. Unset (a developer's pytest run) either is accepted. A compiled module whose .py
changed after it was compiled always fails: the stale .so would run instead of the edit.
"""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path
from types import ModuleType

import pytest

import dataplane.deadlines
import dataplane.frames
import dataplane.http1
import dataplane.http_proxy
import dataplane.relay
import dataplane.tunnel

CORE = (
    dataplane.relay,
    dataplane.frames,
    dataplane.deadlines,
    dataplane.http1,
    dataplane.http_proxy,
    dataplane.tunnel,
)


def compiled(module: ModuleType) -> bool:
    # The loader, not __file__: mypyc gives a module of its group that another one imports
    # a wrong __file__ (dataplane/dataplane/frames...so).
    return isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)


def on_disk(module: ModuleType) -> Path:
    """The file an import of `module` resolves to now (the .so when there is one)."""
    spec = importlib.machinery.PathFinder.find_spec(module.__name__, dataplane.__path__)
    assert spec is not None and spec.origin is not None, module.__name__
    return Path(spec.origin)


def test_the_requested_build_of_the_connection_core_is_imported() -> None:
    flag = os.environ.get("WSLB_MYPYC", "")
    found = {module.__name__: compiled(module) for module in CORE}
    if flag == "1":
        assert all(found.values()), f"WSLB_MYPYC=1 but pure Python was imported: {found}"
    elif flag == "0":
        assert not any(found.values()), (
            f"WSLB_MYPYC=0 but compiled modules were imported (`make pure` removes them): {found}"
        )
    else:
        assert flag == "", f"WSLB_MYPYC must be 0, 1 or unset, not {flag!r}"
        assert len(set(found.values())) == 1, f"half-compiled core: {found}"


@pytest.mark.parametrize("module", CORE, ids=lambda module: module.__name__)
def test_a_compiled_module_is_not_older_than_its_source(module: ModuleType) -> None:
    path = on_disk(module)
    source = path.with_name(module.__name__.rpartition(".")[2] + ".py")
    assert source.exists(), f"{source} is missing"
    assert compiled(module) == (path != source), f"imported {module.__loader__}, on disk {path}"
    if compiled(module):
        assert path.stat().st_mtime >= source.stat().st_mtime, (
            f"{source} changed after it was compiled: `make compiled` again, or `make pure`"
        )


def test_the_compiled_core_behaves_as_the_pure_one_on_a_small_message() -> None:
    """One smoke check through whichever build is imported (the full unit tier runs too)."""
    relay = dataplane.relay.Relay(
        dataplane.relay.RelaySettings(max_message=1 << 20, idle_timeout=60.0), now=0.0
    )
    frame = bytes([0x81, 0x85, 0, 0, 0, 0]) + b"hello"  # a masked text frame, all-zero key
    assert relay.client_data(frame, 1.0) is frame  # forwarded as is, never copied
    assert (relay.messages_c2b, relay.bytes_c2b, relay.last_activity) == (1, len(frame), 1.0)
