"""Index-cache ops (indexer-cache.md §4) on any DLPack-capable arrays.

The cache is one layer's uint8 buffer of ``num_pages`` pages of ``page_size``
tokens (default 64; 16, 32, 128 and 256 are supported): a page is
``page_size x 128`` fp8 K bytes, then ``page_size`` fp32 scales, i.e.
``page_size * 132`` bytes (8448 at 64). The array may have any contiguous shape
of that many bytes: SGLang's ``[num_pages, 8448]``, vLLM's
``[num_blocks, block_size, 132]``, flat. All arrays of a call live on one
device: host memory runs the CPU backend, CUDA memory the CUDA backend on the
caller's current stream (torch/cupy) or on ``stream=``. CUDA calls return after
the launch (no synchronisation) and may be captured in a CUDA graph. No output
may share memory with an input or another output of the same call.
"""

import enum

from . import _frameworks, _nsa
from .errors import InvalidArgumentError

_L_PAGE = 64
_HEAD_DIM = 128


class ScaleMode(enum.IntEnum):
    """How quantize_and_store_k picks the per-token fp32 scale (spec §3)."""

    FP32 = 0   # s = max(amax, 1e-4) / 448, q = e4m3(x * (1/s))  (SGLang's default fused store)
    UE8M0 = 1  # s rounded up to a power of two                  (DeepSeek reference, vLLM)


# Enum-like arguments take exactly their documented values: True, 1 or 1.0
# compare equal to ScaleMode.UE8M0 in a dict lookup, so the check is by type.
_SCALE_MODES = {"fp32": ScaleMode.FP32, "ue8m0": ScaleMode.UE8M0}
_SCALE_FORMULAS = ("multiply", "divide")
_PAGE_SIZES = (16, 32, 64, 128, 256)


def _invalid(op, arg, expected, got):
    return InvalidArgumentError(f"nsa.{op}: argument '{arg}': expected {expected}, got {got!r}")


def _scale_mode(op, mode, scale_formula):
    """(mode, scale_formula) -> the library's mode code: 0 fp32 x*(1/s), 1 ue8m0, 2 fp32 x/s."""
    if isinstance(mode, ScaleMode):
        m = mode
    elif type(mode) is str and mode in _SCALE_MODES:
        m = _SCALE_MODES[mode]
    else:
        raise _invalid(op, "mode", "'fp32' or 'ue8m0' (or an nsa.ScaleMode)", mode)
    if type(scale_formula) is not str or scale_formula not in _SCALE_FORMULAS:
        raise _invalid(op, "scale_formula", "'multiply' or 'divide'", scale_formula)
    # ue8m0 scales are powers of two: x / s == x * (1/s), one kernel serves both.
    return 2 if (m == ScaleMode.FP32 and scale_formula == "divide") else int(m)


def _page_size(op, page_size):
    if type(page_size) is not int or page_size not in _PAGE_SIZES:
        raise _invalid(op, "page_size", "one of 16, 32, 64, 128, 256 (int)", page_size)
    return page_size


def _fp8_bytes(op, arg, x):
    """uint8 arrays pass; a torch float8_e4m3fn tensor is viewed as uint8; other
    fp8 kinds (e5m2, the fnuz variants) are different bytes and are refused."""
    fw = _frameworks.of(x)
    fp8 = getattr(fw, "fp8", ())
    if fp8 and x.dtype in fp8:
        if x.dtype != fw.torch.float8_e4m3fn:
            raise _invalid(op, arg, "uint8 or torch.float8_e4m3fn", str(x.dtype))
        return fw.as_bytes(x)
    return x


def quantize_and_store_k(cache, k, slots, mode="fp32", *, page_size=64, scale_formula="multiply", stream=None):
    """Quantize K ``[n, 128]`` per token to fp8 e4m3 + fp32 scale and write
    row t at slot ``slots[t]`` (int64 ``[n]``; a negative slot is skipped).

    ``k`` is bfloat16 (or its raw bits as uint16/int16: numpy has no bfloat16),
    float16 or float32; rows may be strided (row stride >= 128, unit column
    stride). ``mode`` is ``"fp32"`` (s = max(amax, 1e-4) / 448) or ``"ue8m0"``
    (s rounded up to a power of two), or an :class:`ScaleMode`.
    ``scale_formula`` picks the quantizing expression of the plain mode:
    ``"multiply"`` = e4m3(x * (1/s)) (SGLang's fused store, DeepGEMM's helper)
    or ``"divide"`` = e4m3(x / s) (vLLM's CUDA kernel); they differ on exact
    e4m3 ties. In ue8m0 mode both give the same bytes.
    """
    op = "quantize_and_store_k"
    m = _scale_mode(op, mode, scale_formula)
    page_size = _page_size(op, page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    _nsa.quantize_and_store_k(cache, k, slots, m, page_size, _frameworks.resolve_stream(fw, cache, stream))


def store_k_and_s(cache, k, scale, slots, *, page_size=64, stream=None):
    """Write already-quantized fp8 K ``[n, 128]`` and fp32 scales ``[n]`` (or
    ``[n, 1]``) unchanged at ``slots`` (int64 ``[n]``; negative = skip).

    ``k`` may be uint8 or a torch float8_e4m3fn tensor (viewed as uint8).
    """
    page_size = _page_size("store_k_and_s", page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    k = _fp8_bytes("store_k_and_s", "k", k)
    _nsa.store_k_and_s(cache, k, scale, slots, page_size, _frameworks.resolve_stream(fw, cache, stream))


def gather_k(cache, length, page_ids, *, out=None, page_size=64, stream=None):
    """K bytes of one sequence: ``out[t] = K of (page_ids[t // page_size],
    t % page_size)`` for ``t < length``. Returns uint8 ``[length, 128]``
    (``out``, which may also be torch float8_e4m3fn, or a new array of the
    cache's framework and device)."""
    page_size = _page_size("gather_k", page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    if out is None:
        out = fw.empty(cache, (length, _HEAD_DIM), "uint8")
    _nsa.gather_k(cache, length, page_ids, _fp8_bytes("gather_k", "out", out), page_size,
                  _frameworks.resolve_stream(fw, cache, stream))
    return out


def gather_s(cache, length, page_ids, *, out=None, page_size=64, stream=None):
    """Scales of one sequence. Returns float32 ``[length]``; ``out`` may also be
    uint8 ``[length, 4]`` (the same bytes, SGLang's form)."""
    page_size = _page_size("gather_s", page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    if out is None:
        out = fw.empty(cache, (length,), "float32")
    _nsa.gather_s(cache, length, page_ids, out, page_size, _frameworks.resolve_stream(fw, cache, stream))
    return out


def _total_length(fw, lengths, cumulative):
    if not fw.is_host(lengths):
        return None
    if cumulative:
        return fw.to_int(lengths[-1]) if len(lengths) else 0
    return fw.to_int(lengths.sum()) if len(lengths) else 0


def gather_k_and_s(cache, page_table, seq_lens=None, *, cu_seq_lens=None, capacity=None, out_k=None, out_s=None,
                   page_size=64, stream=None):
    """Ragged batched gather (request-major): request b, token t < L_b goes to
    row ``sum(L[:b]) + t``. Returns ``(out_k uint8 [T, 128], out_s float32 [T])``.

    Lengths come as ``seq_lens`` ``[B]`` (SGLang form) or ``cu_seq_lens``
    ``[B + 1]`` (vLLM form), int32 or int64; ``page_table`` is ``[B, cols]``
    int32/int64 with any row stride. Outputs passed in bound the call (rows past
    ``sum(L)`` are never written); ``out_s`` may be uint8 ``[T, 4]``. When
    outputs are allocated, ``T`` is ``capacity``, or ``sum(L)`` read from host
    lengths (device lengths need ``capacity``: reading them would synchronize).
    ``out_k`` may be torch float8_e4m3fn (returned as given).
    """
    page_size = _page_size("gather_k_and_s", page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    if out_k is None or out_s is None:
        if capacity is None:
            lengths = seq_lens if seq_lens is not None else cu_seq_lens
            if lengths is None:
                raise InvalidArgumentError("nsa.gather_k_and_s: argument 'seq_lens/cu_seq_lens': expected exactly "
                                           "one of the two, got neither")
            capacity = _total_length(_frameworks.of(lengths), lengths, seq_lens is None)
            if capacity is None:
                raise InvalidArgumentError(
                    "nsa.gather_k_and_s: argument 'capacity': expected the number of output rows (>= sum of "
                    "lengths) when out_k/out_s are not given and the lengths are on the GPU, got None")
        if out_k is None:
            out_k = fw.empty(cache, (capacity, _HEAD_DIM), "uint8")
        if out_s is None:
            out_s = fw.empty(cache, (capacity,), "float32")
    _nsa.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, _fp8_bytes("gather_k_and_s", "out_k", out_k), out_s,
                        page_size, _frameworks.resolve_stream(fw, cache, stream))
    return out_k, out_s


def prepare_gather_k_and_s(cache, page_table, seq_lens=None, *, cu_seq_lens=None, out_k, out_s, page_size=64):
    """:func:`gather_k_and_s` validated once and bound to these arrays (outputs
    required); returns a :class:`nsa.PreparedCall` (``call()`` or
    ``call(stream=...)``) that gathers with the lengths and page ids the arrays
    hold at each call."""
    from .prepared import PreparedCall

    page_size = _page_size("prepare_gather_k_and_s", page_size)
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    out_k = _fp8_bytes("prepare_gather_k_and_s", "out_k", out_k)
    return PreparedCall(_nsa.prepare_gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, out_k, out_s, page_size),
                        fw, cache)
