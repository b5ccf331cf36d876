"""The exceptions of inference/."""


class InferenceError(Exception):
    """Base of every error raised by inference/."""


class CheckpointError(InferenceError):
    """The checkpoint is missing, unreadable, or does not fit the model."""


class UntrainedModelError(CheckpointError):
    """The checkpoint's card says it was never trained and the caller did not allow that."""
