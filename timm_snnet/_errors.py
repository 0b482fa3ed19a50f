"""The errors the library raises: one family under `SNNetError`, so one `except SNNetError` catches any of them.

`SNNetError` is a ValueError (bad input: a file, a set-up or a request the library refuses); its message says what
was wrong and what to do. The command line turns it into one line and exit status 2. The specific errors below are
raised where their docstrings say; two live beside what they describe: `_serve.RequestError` (an HTTP status) and
`_dense.DenseError`.
"""

__all__ = ['SNNetError', 'SNNetLoadError', 'Mismatch', 'ConversionError', 'UnsafeCheckpointError',
           'AnchorCheckpointError', 'DistillationError']


class SNNetError(ValueError):
    """Base of the library's own errors."""


class SNNetLoadError(SNNetError, RuntimeError):
    """SN-Net weights could not be loaded (`_load`, `_sources`, `_trust`). The message names the repo or folder, the
    file and what to do. Also a RuntimeError, as timm's own loading errors are."""

    def __init__(self, message: str, location: str = '', filename: str = ''):
        super().__init__(message)
        self.location, self.filename = location, filename


class Mismatch(SNNetError):
    """Tensors that do not fit the model (raised by `_models.check_fit`, reworded by `_load.load_errors`)."""


class ConversionError(SNNetError):
    """An official checkpoint that cannot be converted exactly (unreadable, unmapped or missing keys; `_convert`)."""


class UnsafeCheckpointError(SNNetError):
    """A pickled checkpoint holds objects outside the allowlist; nothing in it was built or run (`_pickle`)."""


class AnchorCheckpointError(SNNetError):
    """An anchor checkpoint that cannot be read or does not fit its anchor; no anchor was changed (`_anchors`)."""


class DistillationError(SNNetError):
    """A distillation set-up that would not teach the student, raised before training (`_distill`)."""
