"""Index-cache ops (indexer-cache.md §4) on any DLPack-capable arrays.

The cache is one layer's uint8 ``[num_pages, 8448]`` buffer (64 tokens per page:
64 x 128 fp8 K bytes, then 64 fp32 scales). All arrays of a call live on one
device: host memory runs the CPU backend, CUDA memory the CUDA backend on the
caller's current stream (torch/cupy) or on ``stream=``. CUDA calls return after
the launch (no synchronisation) and may be captured in a CUDA graph.
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


_SCALE_MODES = {"fp32": 0, "ue8m0": 1, ScaleMode.FP32: 0, ScaleMode.UE8M0: 1}


def quantize_and_store_k(cache, k, slots, *, mode="fp32", stream=None):
    """Quantize bf16 K ``[n, 128]`` per token to fp8 e4m3 + fp32 scale and write
    row t at slot ``slots[t]`` (int64 ``[n]``; a negative slot is skipped).

    ``k`` is bfloat16, or its raw bits as uint16/int16 (numpy has no bfloat16);
    rows may be strided (row stride >= 128, unit column stride). ``mode`` is
    ``"fp32"`` or ``"ue8m0"`` (or a ScaleMode).
    """
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    try:
        m = _SCALE_MODES[mode]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"nsa.quantize_and_store_k: argument 'mode': expected 'fp32' or 'ue8m0', got {mode!r}") from None
    _nsa.quantize_and_store_k(cache, k, slots, m, _frameworks.resolve_stream(fw, cache, stream))


def store_k_and_s(cache, k, scale, slots, *, stream=None):
    """Write already-quantized fp8 K ``[n, 128]`` and fp32 scales ``[n]`` (or
    ``[n, 1]``) unchanged at ``slots`` (int64 ``[n]``; negative = skip).

    ``k`` may be uint8 or a torch float8 tensor (viewed as uint8).
    """
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    k = _frameworks.of(k).as_bytes(k)
    _nsa.store_k_and_s(cache, k, scale, slots, _frameworks.resolve_stream(fw, cache, stream))


def gather_k(cache, length, page_ids, *, out=None, stream=None):
    """K bytes of one sequence: ``out[t] = K of (page_ids[t // 64], t % 64)``
    for ``t < length``. Returns uint8 ``[length, 128]`` (``out``, or a new array
    of the cache's framework and device)."""
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    if out is None:
        out = fw.empty(cache, (length, _HEAD_DIM), "uint8")
    _nsa.gather_k(cache, length, page_ids, out, _frameworks.resolve_stream(fw, cache, stream))
    return out


def gather_s(cache, length, page_ids, *, out=None, stream=None):
    """Scales of one sequence. Returns float32 ``[length]``; ``out`` may also be
    uint8 ``[length, 4]`` (the same bytes, SGLang's form)."""
    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    if out is None:
        out = fw.empty(cache, (length,), "float32")
    _nsa.gather_s(cache, length, page_ids, out, _frameworks.resolve_stream(fw, cache, stream))
    return out


def _total_length(fw, lengths, cumulative):
    if not fw.is_host(lengths):
        return None
    if cumulative:
        return fw.to_int(lengths[-1]) if len(lengths) else 0
    return fw.to_int(lengths.sum()) if len(lengths) else 0


def gather_k_and_s(cache, page_table, seq_lens=None, *, cu_seq_lens=None, capacity=None, out_k=None, out_s=None,
                   stream=None):
    """Ragged batched gather (request-major): request b, token t < L_b goes to
    row ``sum(L[:b]) + t``. Returns ``(out_k uint8 [T, 128], out_s float32 [T])``.

    Lengths come as ``seq_lens`` ``[B]`` (SGLang form) or ``cu_seq_lens``
    ``[B + 1]`` (vLLM form), int32 or int64; ``page_table`` is ``[B, cols]``
    int32/int64 with any row stride. Outputs passed in bound the call (rows past
    ``sum(L)`` are never written); ``out_s`` may be uint8 ``[T, 4]``. When
    outputs are allocated, ``T`` is ``capacity``, or ``sum(L)`` read from host
    lengths (device lengths need ``capacity``: reading them would synchronize).
    """
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
    # out_k may be a torch float8 tensor (vLLM's K output); the kernel writes its bytes.
    _nsa.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, _frameworks.of(out_k).as_bytes(out_k), out_s,
                        _frameworks.resolve_stream(fw, cache, stream))
    return out_k, out_s


def prepare_gather_k_and_s(cache, page_table, seq_lens=None, *, cu_seq_lens=None, out_k, out_s):
    """:func:`gather_k_and_s` validated once and bound to these arrays (outputs
    required); returns a :class:`nsa.PreparedCall` (``call()`` or
    ``call(stream=...)``) that gathers with the lengths and page ids the arrays
    hold at each call."""
    from .prepared import PreparedCall

    fw = _frameworks.of(cache)
    cache = fw.as_bytes(cache)
    out_k = _frameworks.of(out_k).as_bytes(out_k)
    return PreparedCall(_nsa.prepare_gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, out_k, out_s), fw, cache)
