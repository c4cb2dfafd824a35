"""`wslb-dataplane`: --help and --version; a bad flag or environment value is one line naming
it and exit 2, never a traceback; the admin address forms."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataplane import cli
from lbwire import programs
from lbwire.logs import LogFormat

ROOT = Path(__file__).resolve().parents[2]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WSLB_LOG_LEVEL", "WSLB_LOG_FORMAT", "WSLB_ADMIN"):
        monkeypatch.delenv(name, raising=False)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: wslb-dataplane")
    for flag in ("--config", "--controller", "--workers", "--log-format", "--admin"):
        assert flag in out
    assert "--worker-index" not in out and "--admin-socket" not in out  # internal


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"wslb-dataplane {programs.version()}"
    assert programs.version() != "unknown"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--bogus", "-c", "x.yaml"], "unrecognized arguments: --bogus"),
        (["-c", "x.yaml", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
        (["-c", "x.yaml", "--workers", "0"], "--workers must be at least 1, not 0"),
        (["-c", "x.yaml", "--log-level", "loud"], "--log-level: unknown log level 'loud'"),
        (["-c", "x.yaml", "--log-format", "xml"], "--log-format: unknown log format 'xml'"),
        (["-c", "x.yaml", "--admin", "9901"], "--admin: must be host:port"),
        (["-c", "x.yaml", "--admin", "host:99999"], "--admin: must be host:port"),
        (["--controller", "wss://x:1"], "--controller needs --load-balancer"),
        ([], "one of the arguments --config/-c --controller is required"),
    ],
)
def test_bad_flag_is_one_line_and_status_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(f"wslb-dataplane: {expected}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [("WSLB_LOG_LEVEL", "loud"), ("WSLB_LOG_FORMAT", "xml"), ("WSLB_ADMIN", "nowhere")],
)
def test_bad_environment_value_is_one_line_naming_it(
    name: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    code, _, err = run_main(["-c", "x.yaml"], capsys)
    assert code == 2
    assert err.startswith(f"wslb-dataplane: {name}={value!r}: "), err
    assert err.count("\n") == 1


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSLB_LOG_FORMAT", "xml")
    monkeypatch.setenv("WSLB_LOG_LEVEL", "debug")
    options = cli.parse_args(["-c", "x.yaml", "--log-format", "json"])
    assert options.log_format is LogFormat.JSON
    assert options.log_level == "debug"


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:9901", "127.0.0.1", 9901),
        (":9901", None, 9901),  # every address, IPv4 and IPv6
        ("[::]:9902", "::", 9902),
        ("[::1]:9903", "::1", 9903),
        ("0.0.0.0:0", "0.0.0.0", 0),
    ],
)
def test_admin_address_forms(value: str, host: str | None, port: int) -> None:
    options = cli.parse_args(["-c", "x.yaml", "--admin", value])
    assert (options.admin_host, options.admin_port) == (host, port)


def test_defaults() -> None:
    options = cli.parse_args(["-c", "x.yaml"])
    assert (options.admin_host, options.admin_port) == ("127.0.0.1", 9901)
    assert options.log_format is LogFormat.TEXT and options.worker_index is None


def test_real_process_bad_environment_has_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dataplane.cli", "-c", "x.yaml"],
        env={"PATH": "/usr/bin:/bin", "WSLB_LOG_LEVEL": "loud"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("wslb-dataplane: WSLB_LOG_LEVEL='loud': unknown log level")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
