"""User-facing error types shared by every package.

Each error carries a one-line message that names the problem and, where it applies, the
accepted values. The job layer turns an ``AdirError`` raised while processing a row into
``status=failed`` with that message; anything else is treated as a crash of the row.
Must not import anything beyond the standard library.
"""


class AdirError(Exception):
    """Base class of the errors this project raises on purpose."""


class InputError(AdirError, ValueError):
    """A bad image, URI, shape or manifest value."""


class ConfigError(AdirError, ValueError):
    """An unknown configuration key or an invalid value."""


class SamplingDivergedError(AdirError):
    """NaN or inf appeared while sampling or optimising; the message names the step."""


class MethodError(AdirError):
    """A method cannot run on this task or model (e.g. non-blind method on a blind task)."""


class ModelLoadError(AdirError):
    """A model, adapter, embedder or index could not be loaded from the given spec."""
