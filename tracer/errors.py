"""Typed errors. The CLI prints `error: <message>` on one line and exits non-zero for any TracerError."""


class TracerError(Exception):
    """Base class of every error a user can cause (bad input, files, settings)."""


class ModelLoadError(TracerError):
    """A model directory or file is missing, corrupt or of an unsupported architecture."""


class TranscoderLoadError(TracerError):
    """A transcoder directory is missing, corrupt, or does not match the model."""


class PromptError(TracerError):
    """A prompt is empty or longer than the model's context window."""


class GraphFileError(TracerError):
    """A graph file is missing, corrupt or fails schema validation."""


class ConfigError(TracerError):
    """A setting is out of range or inconsistent."""


class OutputError(TracerError, OSError):
    """An output path cannot be written (a directory, a read-only folder, a parent that is a file, a full disk).
    Also an OSError, so code that handles file errors keeps working."""


class NonFiniteError(TracerError):
    """A tensor entering the tracer (weights, recorded activations, a sidecar) holds NaN or Inf."""
