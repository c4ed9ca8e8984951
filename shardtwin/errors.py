"""The one exception hierarchy of shardtwin.

Rules: every error a user can meet is a ShardtwinError whose str() is one line
saying what is wrong and what is accepted. Library errors (Playwright, aiohttp,
onnxruntime, DuckDB, OS) are translated at the boundary with `raise ... from exc`.
The CLI prints `shardtwin: error: <message>` and exits with `exit_code`.
"""

from __future__ import annotations


class ShardtwinError(Exception):
    """Base of every error shardtwin reports to a user. exit_code: 2 bad input, 1 failure."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # One line, always: a user sees this and nothing else.
        super().__init__(" ".join(str(message).split()))


class InputError(ShardtwinError):
    """The user gave something shardtwin cannot accept (flag, file, field, name)."""

    exit_code = 2


class UnknownNameError(InputError):
    """A name not in a registry; the message lists the known names."""

    def __init__(self, what: str, name: object, known: "list[str] | tuple[str, ...]") -> None:
        super().__init__(f"unknown {what} {name!r}; known: {', '.join(sorted(str(k) for k in known))}")
        self.what, self.name, self.known = what, name, tuple(known)


class ScenarioError(InputError):
    """A scenario field is malformed: names the field, the bad value and what is accepted."""

    def __init__(self, field: str, value: object, accepted: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"scenario field {field!r}: got {shown}; expected {accepted}")
        self.field, self.value, self.accepted = field, value, accepted


class PlanError(InputError):
    """A shard plan that cannot be made (too many shards, shard type not fitting the model)."""


class ConfigError(InputError):
    """A configuration (profile, detector settings, sweep spec) is invalid."""


class StoreError(ShardtwinError):
    """The DuckDB store cannot be opened, read or written."""


class RealRunError(ShardtwinError):
    """A real run could not proceed (browser missing, server failed, worker protocol broken)."""


class BrowserUnavailableError(RealRunError):
    """A browser executable is missing or would not start."""


class ModelAssetError(ShardtwinError):
    """Model weights / ONNX files missing, corrupt or failing verification."""
