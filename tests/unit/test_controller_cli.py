"""`wslb-controller`: --help and --version, and bad flags or settings give one line and exit 2."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from controller import main
from controller.settings import ENVIRONMENT, Settings, SettingsError
from dataplane.certs import self_signed
from lbwire import programs


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert out.startswith("usage: wslb-controller")
    for name in ENVIRONMENT.values():
        assert name in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"wslb-controller {programs.version()}"
    assert programs.version() != "unknown"


def test_unknown_flag_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["--bogus"], capsys)
    assert code == 2
    assert err == "wslb-controller: unrecognized arguments: --bogus (see --help)\n"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("WSLB_HOLDOFF_SECONDS", "soon", "a number"),
        ("WSLB_RETRY_SECONDS", "-1", ">= 0"),
        ("WSLB_LEASE_DURATION_SECONDS", "0", ">= 1"),
        ("WSLB_CONFIG_PORT", "99999", "a port number"),
        ("WSLB_HTTP_PORT", "http", "a port number"),
        ("WSLB_LOG_LEVEL", "loud", "one of DEBUG"),
        ("WSLB_LOG_FORMAT", "yaml", "one of text, json"),
        ("WSLB_IMAGE_PULL_POLICY", "Sometimes", "one of Always"),
        ("WSLB_LEADER_ELECTION", "maybe", "true or false"),
        ("WSLB_CONFIG_URL", "http://x", "a wss:// URL"),
    ],
)
def test_bad_environment_value_is_one_line_naming_it_and_status_2(
    name: str,
    value: str,
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(name, value)
    code, _, err = run_main([], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"wslb-controller: {name}={value!r}: expected ")
    assert expected in err
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    assert error.value.name == name


def test_missing_tls_files_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSLB_CONFIG_TLS_DIR", str(tmp_path))
    code, _, err = run_main([], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"wslb-controller: WSLB_CONFIG_TLS_DIR={str(tmp_path)!r}: ")


def test_the_installed_script_exits_2_without_a_traceback() -> None:
    script = Path(sys.executable).with_name("wslb-controller")
    result = subprocess.run(
        [str(script)],
        env={"WSLB_HOLDOFF_SECONDS": "x", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == "wslb-controller: WSLB_HOLDOFF_SECONDS='x': expected a number\n"


def test_environment_table_names_every_setting_and_from_env_reads_them() -> None:
    assert set(ENVIRONMENT) == {field.name for field in dataclasses.fields(Settings)}
    source = Path(main.__file__).with_name("settings.py").read_text()
    for field, name in ENVIRONMENT.items():
        assert f'"{name}"' in source.split("ENVIRONMENT = {")[0], (field, name)


def test_good_environment_is_read() -> None:
    settings = Settings.from_env(
        {
            "WSLB_IMAGE_PULL_SECRETS": "regcred, mirror",
            "WSLB_LEADER_ELECTION": "false",
            "WSLB_LEASE_DURATION_SECONDS": "4",
            "WSLB_LOG_LEVEL": "debug",
            "WSLB_LOG_FORMAT": "JSON",
            "POD_NAME": "controller-0",
        }
    )
    assert settings.image_pull_secrets == ("regcred", "mirror")
    assert settings.leader_election is False
    assert settings.lease_duration_seconds == 4.0
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert Settings.from_env({}).log_format == "text"
    assert settings.pod_name == "controller-0"


def test_log_format_json_makes_every_line_a_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(["wslb-config"])
    (tmp_path / "tls.crt").write_text(cert)
    (tmp_path / "tls.key").write_text(key)
    seen: list[Settings] = []

    async def fake_run(settings: Settings) -> None:
        seen.append(settings)
        logging.getLogger("wslb.controller").info("started %s", "here")

    monkeypatch.setattr(main, "run", fake_run)
    monkeypatch.setenv("WSLB_CONFIG_TLS_DIR", str(tmp_path))
    monkeypatch.setenv("WSLB_LOG_FORMAT", "json")
    try:
        main.main([])
        _, err = capsys.readouterr()
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_wslb_handler", False):
                logging.getLogger().removeHandler(handler)
    assert seen[0].log_format == "json"
    (line,) = [line for line in err.splitlines() if "started" in line]
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == (
        "INFO",
        "wslb.controller",
        "started here",
    )
