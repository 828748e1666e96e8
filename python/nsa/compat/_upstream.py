"""What the compat adapters share: reading an array the way an upstream kernel
reads it, dtype conversions upstream performs itself, and raising errors of the
classes upstream callers catch.

Upstream kernels address most index arrays by raw pointer arithmetic from the
first element (``src[r * pitch + c]``), whatever the tensor's real strides.
:func:`rows_as_upstream_reads` builds the view with exactly those addresses, so
a call through nsa reads the same elements as the kernel it replaces.
"""

from .. import _frameworks
from ..errors import DTypeError, InvalidArgumentError, NsaError


_made_classes = {}


def upstream_class(cls, base):
    """A subclass of nsa error class ``cls`` that is also ``base`` (the class
    upstream callers catch: RuntimeError, AssertionError, ...)."""
    if issubclass(cls, base):
        return cls
    key = (cls, base)
    made = _made_classes.get(key)
    if made is None:
        doc = f"{cls.__doc__} Also a {base.__name__}, as upstream raises."
        made = type(cls.__name__, (cls, base), {"__module__": __name__, "__doc__": doc})
        _made_classes[key] = made
    return made


class raising_as:
    """``with raising_as(base):`` re-raises every nsa error of the block as an
    instance of ``base`` too (same class name, same message). A class, not a
    generator context manager: it sits on every call's path."""

    __slots__ = ("base",)

    def __init__(self, base):
        self.base = base

    def __enter__(self):
        return self

    def __exit__(self, tp, e, tb):
        if tp is None or not issubclass(tp, NsaError) or isinstance(e, self.base):
            return False
        raise upstream_class(tp, self.base)(*e.args).with_traceback(tb) from None


def fail(op, arg, expected, got, cls=InvalidArgumentError):
    raise cls(f"{op}: argument '{arg}': expected {expected}, got {got}")


def describe(x):
    fw = _frameworks.of(x)
    return f"{fw.dtype_name(x)} {list(getattr(x, 'shape', ()))}"


def _is_c_contiguous(x):
    is_contiguous = getattr(x, "is_contiguous", None)  # torch
    if callable(is_contiguous):
        return bool(is_contiguous())
    flags = getattr(x, "flags", None)  # numpy, cupy
    return bool(flags is not None and flags.c_contiguous)


def rows_as_upstream_reads(op, arg, x, rows, pitch):
    """``x`` read as upstream's kernel reads it: element ``[r, c]`` of the
    result is element ``r * pitch + c`` counted in memory order from ``x``'s
    first element (``rows`` x ``pitch``; pass ``rows=None`` for a flat vector of
    ``pitch`` elements). A contiguous ``x`` gives a view of its own elements;
    a strided torch tensor a view of the memory upstream reads (torch checks
    the storage bounds). Raises when the elements are not there."""
    shape = (pitch,) if rows is None else (rows, pitch)
    need = pitch if rows is None else rows * pitch
    numel = 1
    for n in getattr(x, "shape", ()):
        numel *= int(n)
    if _is_c_contiguous(x):
        if len(shape) == len(x.shape) and x.shape[-1] == pitch and numel >= need:
            return x  # already addressed as upstream does: the op reads only the leading rows
        if need > numel:
            fail(op, arg, f"at least {need} elements (upstream reads it as {list(shape)} from its first element)",
                 describe(x))
        return x.reshape(-1)[:need].reshape(shape)
    if _frameworks.of(x).name == "torch":
        strides = (1,) if rows is None else (pitch, 1)
        try:
            return x.as_strided(shape, strides)
        except RuntimeError as e:
            fail(op, arg, f"memory for {list(shape)} from its first element (upstream reads it so)",
                 f"{describe(x)} ({e})")
    fail(op, arg, "a contiguous array (upstream reads it from its first element as if contiguous)",
         f"{describe(x)} with strides {getattr(x, 'strides', '?')}")


def as_int64(op, arg, x):
    """``x`` as int64, converting int32 the way upstream's ``x.to(int64)`` does."""
    fw = _frameworks.of(x)
    dtype = fw.dtype_name(x)
    if dtype == "int64":
        return x
    if dtype != "int32":
        fail(op, arg, "dtype int64 or int32", describe(x), DTypeError)
    if fw.name == "torch":
        return x.to(fw.torch.int64)
    if fw.name in ("numpy", "cupy"):
        return x.astype("int64")
    fail(op, arg, "dtype int64 (int32 is converted only for torch, numpy and cupy arrays)", describe(x), DTypeError)


def fp8_e4m3fn_bytes(op, arg, x):
    """The bytes of fp8 e4m3fn K (or of a uint8 array holding them); every
    other dtype, e5m2 and e4m3fnuz included, is refused before anything is
    written."""
    fw = _frameworks.of(x)
    dtype = fw.dtype_name(x)
    if dtype == "uint8":
        return x
    if dtype != "float8_e4m3fn":
        fail(op, arg, "dtype float8_e4m3fn (or uint8 holding its bytes)", describe(x), DTypeError)
    if fw.name == "torch":
        return fw.as_bytes(x)
    return x.view("uint8")
