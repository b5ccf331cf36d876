"""The exceptions of inference/.

Every error raised by inference/ is an :class:`InferenceError`; third-party errors (torch's
pickle, zip and runtime errors) are converted at the boundary with ``raise ... from exc``::

    InferenceError
    └── CheckpointError            missing, unreadable, or not fitting the model
        ├── UntrainedModelError    the card says never trained and the caller did not allow it
        ├── ChecksumError          the weights differ from the sha256 on the card
        ├── WeightsMismatchError   keys or shapes do not fit the architecture (lists them)
        └── UnsafePickleError      the file holds pickled Python objects and trust was not given
"""

from __future__ import annotations

from typing import Sequence


class InferenceError(Exception):
    """Base of every error raised by inference/."""


class CheckpointError(InferenceError):
    """The checkpoint is missing, unreadable, or does not fit the model."""


class UntrainedModelError(CheckpointError):
    """The checkpoint's card says it was never trained and the caller did not allow that."""


class ChecksumError(CheckpointError):
    """The weights in the file are not the weights the card's sha256 names (altered or damaged)."""


class WeightsMismatchError(CheckpointError):
    """The weights' keys or shapes do not fit the architecture.

    The message lists the first few of each kind with counts; the attributes hold them all:
    ``missing`` and ``unexpected`` key names, ``mismatched`` as ``(key, file shape, model shape)``.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class UnsafePickleError(CheckpointError):
    """The file holds pickled Python objects (a whole module, say): loading them runs code from
    the file, so it is refused unless the caller trusts it explicitly (``trust_pickle``)."""

    def __init__(self, message: str, *, globals_: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.globals = list(globals_)
