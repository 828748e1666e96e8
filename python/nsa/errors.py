"""Exceptions raised by nsa.

Every check runs before anything is written. Messages name the op, the
argument, what was expected and what was given, e.g.
``nsa.gather_k: argument 'out_k': expected dtype uint8, got int32 [4, 128] ...``.
"""


class NsaError(Exception):
    """Base class of every error nsa raises."""


class InvalidArgumentError(NsaError, ValueError):
    """A shape, stride, device, value or missing argument is not acceptable."""


class DTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong dtype (also a ValueError, via InvalidArgumentError)."""


class UnsupportedError(NsaError, RuntimeError):
    """A valid request this build cannot run (e.g. CUDA inputs on a CPU-only build)."""


class CudaError(NsaError, RuntimeError):
    """The CUDA runtime reported an error."""
