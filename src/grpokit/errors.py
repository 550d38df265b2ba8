"""The errors grpokit raises for mistakes in the user's input, configuration, environment or I/O.

Every such error derives from :class:`GrpokitError`. The `grpokit` command prints one as one or two
lines, ``grpokit: <kind> error: <message>``, and exits with code 2; ``grpokit --debug`` (or
``GRPOKIT_DEBUG=1``) shows the traceback instead. Any other exception escaping the command is a bug
in grpokit and keeps its traceback.

The concrete classes live next to the code that raises them (``ConfigError`` in
``grpokit.config_schema``, ``DataError`` in ``grpokit.data``, ``RewardError`` in
``grpokit.rewards.api``); the ones without a better home are here.
"""

from __future__ import annotations


class GrpokitError(Exception):
    """Base of every user-facing grpokit error; ``kind`` names it in the CLI's one-line message."""

    kind = "grpokit"


class ModelLoadError(GrpokitError, OSError):
    """A model or tokenizer cannot be loaded: a missing directory, an unknown hub id, a broken file."""

    kind = "model"


class RunDirError(GrpokitError, OSError):
    """The run directory cannot be used: not a directory, read-only, full disk, held by another trainer."""

    kind = "run dir"


class MissingDependencyError(GrpokitError, ImportError):
    """An optional dependency the configuration asks for is not installed (e.g. vLLM); the message says how."""

    kind = "environment"
