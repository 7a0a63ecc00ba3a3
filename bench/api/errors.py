"""User-facing errors.

Everything a user can get wrong (a name, a file, a field) raises :class:`BenchError` with a
message that names the offending thing and what was expected; the CLI prints it without a
traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class BenchError(Exception):
    """An error caused by user input (names, files, configuration)."""


class ConfigError(BenchError):
    """A configuration value or override is invalid."""


class RecordError(BenchError):
    """A result record or results folder is malformed."""
