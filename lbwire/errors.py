"""The exception tree shared by the controller and the data plane.

    WslbError
    ├── ConfigError          a snapshot or config file failed validation
    ├── ProtocolError        a config-channel peer broke the wire protocol
    └── StartupError         a process cannot start (e.g. its admin port is taken)

Errors carry structured fields so that a nack, a status condition or a log line can
report them without parsing messages.
"""

from __future__ import annotations

from dataclasses import dataclass


class WslbError(Exception):
    """Root of every error this project raises on purpose."""


class StartupError(WslbError):
    """A process cannot start as told; the message names what and why, in one line."""


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: a dotted path such as `listeners[0].port` and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(WslbError):
    """A whole config was refused; `source` names the file or snapshot it came from."""

    def __init__(self, source: str, problems: list[FieldProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "; ".join(str(problem) for problem in problems)
        super().__init__(f"invalid config in {source}: {lines}")

    @property
    def fields(self) -> list[str]:
        return [problem.path for problem in self.problems]


class ProtocolError(WslbError):
    """A config-channel message was malformed or out of order."""
