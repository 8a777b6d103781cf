"""cxrlab's one exception hierarchy.

Library code raises these; only the CLI turns them into a one-line message and exit code 1.
Every message names what is at fault (file, row, column, value) and what would be valid.
"""

from __future__ import annotations


class CxrError(Exception):
    """Base class of every error cxrlab raises on purpose."""


class DataError(CxrError):
    """Metadata, images, cohort or run-directory contents are missing or malformed."""


class ImageReadError(DataError):
    """One image file could not be decoded (corrupt, truncated, unsupported)."""


class LeakageError(DataError):
    """A patient appears in more than one split."""


class ConfigError(CxrError):
    """An option or config file value is invalid."""


class ModelError(CxrError):
    """A model cannot be built, loaded or run as asked."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights were asked for but none can be had (offline, no file)."""


class EvaluationError(CxrError):
    """Predictions or metrics inputs are inconsistent (NaN, label mismatch, other run)."""


class StageError(CxrError):
    """A stage of `cxrlab run` failed; the message names the stage."""


class BusyError(CxrError):
    """A run directory or model folder is locked by another cxrlab process."""


class Interrupted(CxrError):
    """The process was asked to stop (SIGTERM, Ctrl-C); `exit_code` is 143 or 130.

    The message says what was finished and how to continue (e.g. `--resume`).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
