"""Which array library an argument comes from, and what nsa needs from it:
allocate outputs with the caller's own allocator (torch's caching allocator for
torch tensors), find the caller's current CUDA stream, and view fp8 as uint8.

Lookups are cached per Python type so the per-call cost is one dict lookup.
"""

import sys

from . import _nsa

_UINT8, _INT32, _INT64, _FLOAT32 = "uint8", "int32", "int64", "float32"


def stream_handle(stream):
    """An explicit `stream=` as an int cudaStream_t: an int, a torch.cuda.Stream
    (``.cuda_stream``) or a cupy Stream (``.ptr``)."""
    if stream is None or isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"stream: expected an int (cudaStream_t), a torch.cuda.Stream or a cupy Stream, "
                    f"got {type(stream).__name__}")


class _Torch:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.dtypes = {_UINT8: torch.uint8, _INT32: torch.int32, _INT64: torch.int64, _FLOAT32: torch.float32}
        self.fp8 = tuple(getattr(torch, n) for n in
                         ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz") if hasattr(torch, n))
        # The C function behind torch.cuda.current_stream(i).cuda_stream, without
        # building a Stream object (a few hundred ns instead of microseconds).
        self._raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        # Export through torch's C function directly when this torch has it;
        # otherwise nanobind calls Tensor.__dlpack__ (slower, same result).
        to_dlpack = getattr(torch._C, "_to_dlpack", None)
        if to_dlpack is not None:
            _nsa._register_torch(torch.Tensor, to_dlpack)

    def empty(self, like, shape, dtype):
        return self.torch.empty(shape, dtype=self.dtypes[dtype], device=like.device)

    def stream(self, x):
        index = x.get_device()
        if index < 0:
            return None
        if self._raw_stream is not None:
            return self._raw_stream(index)
        return self.torch.cuda.current_stream(index).cuda_stream

    def as_bytes(self, x):
        # float8 tensors cannot cross DLPack on every torch version; the bytes are what we need.
        return x.view(self.torch.uint8) if x.dtype in self.fp8 else x

    def is_host(self, x):
        return x.get_device() < 0

    def to_int(self, x):
        return int(x)

    def contiguous(self, x):
        return x.contiguous()

    def dtype_name(self, x):
        return str(x.dtype).replace("torch.", "")

    def key(self, x):
        return (x.data_ptr(), tuple(x.shape), x.stride(), x.get_device())


class _Numpy:
    name = "numpy"

    def __init__(self):
        import numpy

        self.np = numpy

    def empty(self, like, shape, dtype):
        return self.np.empty(shape, dtype=dtype)

    def stream(self, x):
        return None

    def as_bytes(self, x):
        return x

    def is_host(self, x):
        return True

    def to_int(self, x):
        return int(x)

    def contiguous(self, x):
        return self.np.ascontiguousarray(x)

    def dtype_name(self, x):
        return str(x.dtype)

    def key(self, x):
        return (x.__array_interface__["data"][0], x.shape, x.strides, -1)


class _Cupy:
    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def empty(self, like, shape, dtype):
        with self.cp.cuda.Device(like.device.id):
            return self.cp.empty(shape, dtype=dtype)

    def stream(self, x):
        with self.cp.cuda.Device(x.device.id):
            return self.cp.cuda.get_current_stream().ptr

    def as_bytes(self, x):
        return x

    def is_host(self, x):
        return False

    def to_int(self, x):
        return int(x)

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)

    def dtype_name(self, x):
        return str(x.dtype)

    def key(self, x):
        return (x.data.ptr, x.shape, x.strides, x.device.id)


class _Generic:
    """Any other DLPack producer: usable when outputs are passed in; CUDA work
    goes to `stream=` or the legacy default stream."""

    name = "generic"

    def empty(self, like, shape, dtype):
        raise TypeError(f"nsa cannot allocate outputs for {type(like).__module__}.{type(like).__name__} "
                        f"arrays; pass the output arrays (out=...)")

    def stream(self, x):
        return None

    def as_bytes(self, x):
        return x

    def is_host(self, x):
        dev = getattr(x, "__dlpack_device__", None)
        return dev is None or dev()[0] in (1, 3)

    def to_int(self, x):
        return int(x)

    def contiguous(self, x):
        return x

    def dtype_name(self, x):
        return str(getattr(x, "dtype", "?"))

    def key(self, x):
        return (id(x),)


_by_type = {}
_singletons = {}


def _make(kind):
    if kind not in _singletons:
        _singletons[kind] = {"torch": _Torch, "numpy": _Numpy, "cupy": _Cupy, "generic": _Generic}[kind]()
    return _singletons[kind]


def _classify(tp):
    torch = sys.modules.get("torch")
    if torch is not None and issubclass(tp, torch.Tensor):
        return _make("torch")
    cupy = sys.modules.get("cupy")
    if cupy is not None and issubclass(tp, cupy.ndarray):
        return _make("cupy")
    numpy = sys.modules.get("numpy")
    if numpy is not None and issubclass(tp, numpy.ndarray):
        return _make("numpy")
    return _make("generic")


def of(x):
    """The framework adapter of array `x`."""
    tp = type(x)
    fw = _by_type.get(tp)
    if fw is None:
        fw = _by_type[tp] = _classify(tp)
    return fw


def resolve_stream(fw, x, stream):
    """The cudaStream_t of a call: explicit `stream`, else the framework's current stream."""
    return fw.stream(x) if stream is None else stream_handle(stream)
