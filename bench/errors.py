"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class BenchError(Exception):
    """A problem the user can fix; the message names the file or name and the fix."""


class DataError(BenchError):
    """Malformed, missing or empty input data."""

    def __init__(self, message: str, path: object = None, line: int | None = None, fix: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        text = where + message
        if fix:
            text += f" ({fix})"
        super().__init__(text)
        self.path = path
        self.line = line


class UnknownNameError(BenchError):
    """An unknown model, dataset or preset name."""


class ConfigError(BenchError):
    """A bad configuration value or override."""


class NotApplicable(BenchError):
    """A model cannot run on this dataset by design (e.g. S3Rec needs item attributes).

    The runner records the job as not applicable, with the reason, instead of failed."""


class NotEnoughMemory(BenchError):
    """A job whose estimated memory need exceeds what this machine has available, refused before
    it allocates anything big (`bench.memory.require`). The message names the need and the
    setting that lowers it; the runner records the job as failed and runs the rest."""
