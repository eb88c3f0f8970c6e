"""Errors that carry a message a user can act on.

Every error that reaches a client is an ``AvatarError``: it has a stable ``code`` (for programs) and a
``message`` that says what went wrong and what to do about it (for people).
"""


class AvatarError(Exception):
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ModelMissingError(AvatarError):
    """A model's weights are not installed or are corrupt."""

    code = "model_missing"


class ConfigError(AvatarError):
    code = "bad_config"


class ProtocolError(AvatarError):
    """A client sent something the protocol does not allow."""

    code = "bad_message"


class FaceError(AvatarError):
    """A portrait cannot be used (unreadable, no face, several faces, face too small)."""

    code = "bad_face"


class StageError(AvatarError):
    """A pipeline stage (ASR, LLM, TTS, renderer) failed while serving a turn."""

    code = "stage_failed"
