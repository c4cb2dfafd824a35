"""`wslb-echo` (the demo backend) answers --version, and a bad flag or environment value is
one line naming it with exit status 2, as the other two programs do."""

from __future__ import annotations

import pytest

from dataplane import echo
from lbwire import programs


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        echo.main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert (code, out.strip()) == (0, f"wslb-echo {programs.version()}")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--port", "http"], "--port"),
        (["--port", "70000"], "--port"),
        (["--log-format", "yaml"], "yaml"),
        (["--log-level", "loud"], "loud"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flag_is_one_line_and_status_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("wslb-echo: ") and named in err
    assert "Traceback" not in err


def test_bad_port_in_the_environment_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSLB_ECHO_PORT", "tcp://10.0.0.1:80")  # what a service link injects
    code, _, err = run_main([], capsys)
    assert code == 2 and "--port" in err and err.count("\n") == 1
