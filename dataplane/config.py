"""Loading a standalone config file into a validated Snapshot.

The file has the snapshot schema of `lbwire.snapshot` (the one the controller pushes),
plus one convenience for people: a certificate may name files (`certificateFile`,
`privateKeyFile`, relative to the config file) instead of carrying PEM inline (one or
the other, never both: which would win is not obvious). A listener may hold several
certificates, each from its own files, chosen by SNI (dataplane/tls.py). Every problem
is reported with the field path and the file; nothing is applied here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lbwire.errors import ConfigError, FieldProblem
from lbwire.snapshot import Snapshot, parse_snapshot


def load_file(path: str | os.PathLike[str]) -> Snapshot:
    """Read, resolve file references, and validate; raise ConfigError naming the file."""
    return load_with_sources(path)[0]


def load_with_sources(path: str | os.PathLike[str]) -> tuple[Snapshot, list[Path]]:
    """Like `load_file`, also naming every certificate and key file the config read, so
    a watcher can reload when one of them changes."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [FieldProblem("(file)", exc.strerror or str(exc))]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(file)"
        raise ConfigError(source, [FieldProblem(where, f"not valid YAML: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [FieldProblem("(root)", "must be a mapping")])
    files: list[Path] = []
    problems = _resolve_certificate_files(data, Path(path).resolve().parent, files)
    if problems:
        raise ConfigError(source, problems)
    return parse_snapshot(data, source), files


def _resolve_certificate_files(
    data: dict[str, Any], base: Path, files: list[Path]
) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    listeners = data.get("listeners")
    if not isinstance(listeners, list):
        return problems
    for i, listener in enumerate(listeners):
        tls = listener.get("tls") if isinstance(listener, dict) else None
        certificates = tls.get("certificates") if isinstance(tls, dict) else None
        if not isinstance(certificates, list):
            continue
        for j, certificate in enumerate(certificates):
            if not isinstance(certificate, dict):
                continue
            for file_key, pem_key in (
                ("certificateFile", "certificatePem"),
                ("privateKeyFile", "privateKeyPem"),
            ):
                if file_key not in certificate:
                    continue
                where = f"listeners[{i}].tls.certificates[{j}].{file_key}"
                name = certificate.pop(file_key)
                if pem_key in certificate:
                    problems.append(FieldProblem(where, f"give {file_key} or {pem_key}, not both"))
                    continue
                if not isinstance(name, str) or not name:
                    problems.append(FieldProblem(where, "must be a file path"))
                    continue
                target = base / os.path.expanduser(name)
                files.append(target)
                try:
                    certificate[pem_key] = target.read_text()
                except OSError as exc:
                    problems.append(FieldProblem(where, f"{target}: {exc.strerror or exc}"))
    return problems
