"""vLLM-compatible entry points: the two indexer-cache ops of
``vllm._custom_ops`` with vLLM's names, argument order, dtypes and in-place
semantics, on vLLM's cache tensor ``uint8 [num_blocks, block_size, 132]``, and
the bytes vLLM's CUDA kernels write. A call site changes only its import.

* ``indexer_k_quant_and_cache(k, kv_cache, slot_mapping, quant_block_size,
  kv_cache_dtype)`` quantizes K per token into the cache.
* ``cp_gather_indexer_k_quant_cache(kv_cache, dst_k, dst_scale, block_table,
  cu_seq_lens)`` gathers K bytes and scales of a ragged batch.

A block of ``block_size`` tokens is ``block_size x 128`` fp8 K bytes, then
``block_size`` fp32 scales (at block size 64 this is the 8448-byte page SGLang,
DeepGEMM and nsa's own ops use). Block sizes 16, 32, 64, 128 and 256 are
supported. Arrays vLLM's kernels address by raw pointer arithmetic (``k``,
``slot_mapping``, ``block_table``, ``cu_seq_lens``) are read the same way, from
their first element. Every error is a ``RuntimeError`` (what vLLM's
``TORCH_CHECK`` raises) and an ``nsa.NsaError``, raised before anything is
written.
"""

from .. import _frameworks, ops
from ..errors import DTypeError, UnsupportedError
from ._upstream import describe, fail, raising_as, rows_as_upstream_reads

HEAD_DIM = 128
TOKEN_BYTES = HEAD_DIM + 4  # 128 fp8 bytes + one fp32 scale per token
_K_DTYPES = ("bfloat16", "float16", "float32", "uint16", "int16")  # 16-bit integers: raw bf16 bits (numpy)


def _shape(x):
    return tuple(int(n) for n in getattr(x, "shape", ()))


def _require_dtype(op, arg, x, dtypes, what):
    if _frameworks.of(x).dtype_name(x) not in dtypes:
        fail(op, arg, what, describe(x), DTypeError)


def _block_size(op, kv_cache):
    """vLLM's cache: uint8 [num_blocks, block_size, 132]; returns block_size."""
    shape = _shape(kv_cache)
    if len(shape) != 3 or shape[2] != TOKEN_BYTES:
        fail(op, "kv_cache", f"a [num_blocks, block_size, {TOKEN_BYTES}] array (128 fp8 bytes + 4 scale bytes "
             "per token)", describe(kv_cache))
    _require_dtype(op, "kv_cache", kv_cache, ("uint8",), "dtype uint8")
    if shape[1] not in (16, 32, 64, 128, 256):
        fail(op, "kv_cache", "block size (shape[1]) 16, 32, 64, 128 or 256", describe(kv_cache), UnsupportedError)
    return shape[1]


def indexer_k_quant_and_cache(k, kv_cache, slot_mapping, quant_block_size, kv_cache_dtype):
    """Mirrors ``vllm._custom_ops.indexer_k_quant_and_cache``; writes in
    place, returns None.

    ``k``: bf16, fp16 or fp32 ``[num_tokens, 128]`` (numpy: bf16 as uint16
    bits), read as contiguous rows from its first element as vLLM's kernel
    does; ``kv_cache``: uint8 ``[num_blocks, block_size, 132]``;
    ``slot_mapping``: int64, its first ``num_tokens`` entries are the token
    slots (``block * block_size + offset``; negative = padding, skipped);
    ``quant_block_size``: 128 (vLLM's kernel takes the amax of each 128-element
    warp whatever this is, and only uses it to place the scale; 128 is the one
    value that gives 132-byte tokens); ``kv_cache_dtype``: the scale format
    vLLM's indexer passes there (vLLM's kernel compares it with ``"ue8m0"`` and
    ignores it otherwise): ``"ue8m0"`` rounds each scale up to a power of two,
    any other value keeps the plain scale ``max(amax, 1e-4) / 448`` and stores
    ``e4m3(x / s)``, as vLLM's CUDA kernel does.

    Differences: vLLM computes the ue8m0 scale as ``exp2f(ceilf(log2f(s)))``,
    nsa on the bits; the two agree for every bf16 and fp16 K (no amax of those
    types gives an ``s`` within a few fp32 ulps above a power of two, where
    ``log2f`` rounds to the integer below). For fp32 K such an ``s`` can occur;
    there vLLM's scale is one power of two too small and the largest element
    saturates, while nsa's is not.
    """
    op = "nsa.compat.vllm.indexer_k_quant_and_cache"
    with raising_as(RuntimeError):
        block_size = _block_size(op, kv_cache)
        shape = _shape(k)
        if len(shape) != 2 or shape[1] != HEAD_DIM:
            fail(op, "k", f"a [num_tokens, {HEAD_DIM}] array", describe(k))
        _require_dtype(op, "k", k, _K_DTYPES, "dtype bfloat16, float16 or float32")
        if int(quant_block_size) != HEAD_DIM:
            fail(op, "quant_block_size", f"{HEAD_DIM} (one fp32 scale per 128-element token)",
                 repr(quant_block_size), UnsupportedError)
        _require_dtype(op, "slot_mapping", slot_mapping, ("int64",), "dtype int64")
        n = shape[0]
        slots = rows_as_upstream_reads(op, "slot_mapping", slot_mapping, None, n)
        rows = rows_as_upstream_reads(op, "k", k, n, HEAD_DIM)
        ue8m0 = kv_cache_dtype == "ue8m0"
        ops.quantize_and_store_k(_frameworks.of(kv_cache).as_bytes(kv_cache), rows, slots,
                                 mode="ue8m0" if ue8m0 else "fp32", page_size=block_size,
                                 scale_formula="multiply" if ue8m0 else "divide")


def cp_gather_indexer_k_quant_cache(kv_cache, dst_k, dst_scale, block_table, cu_seq_lens):
    """Mirrors ``vllm._custom_ops.cp_gather_indexer_k_quant_cache``; writes
    ``dst_k`` and ``dst_scale`` in place, returns None.

    ``kv_cache``: uint8 ``[num_blocks, block_size, 132]``; ``dst_k``: uint8 or
    float8_e4m3fn ``[num_tokens, 128]`` with contiguous rows; ``dst_scale``:
    uint8 ``[>= num_tokens, 4]`` contiguous (the fp32 scale bytes);
    ``block_table``: int32 ``[batch, max_blocks]``, row ``b`` read at element
    ``b * max_blocks`` from the first element (as vLLM does);
    ``cu_seq_lens``: int32 ``[batch + 1]``, starting at 0. Request ``b``'s token
    ``t`` goes to row ``cu_seq_lens[b] + t``. ``num_tokens`` may exceed
    ``cu_seq_lens[batch]`` (an allocation bound): rows past it are not written.
    """
    op = "nsa.compat.vllm.cp_gather_indexer_k_quant_cache"
    with raising_as(RuntimeError):
        block_size = _block_size(op, kv_cache)
        shape_k, shape_s, shape_t = _shape(dst_k), _shape(dst_scale), _shape(block_table)
        if len(shape_k) != 2 or shape_k[1] != HEAD_DIM:
            fail(op, "dst_k", f"a [num_tokens, {HEAD_DIM}] array", describe(dst_k))
        _require_dtype(op, "dst_k", dst_k, ("uint8", "float8_e4m3fn"), "dtype uint8 or float8_e4m3fn")
        if len(shape_s) != 2 or shape_s[1] != 4:
            fail(op, "dst_scale", "a [num_tokens, 4] array (head_dim * 4 / dst_scale.size(1) is vLLM's "
                 "quant_block_size; nsa stores one scale per 128-element token)", describe(dst_scale),
                 UnsupportedError)
        _require_dtype(op, "dst_scale", dst_scale, ("uint8",), "dtype uint8")
        if shape_s[0] < shape_k[0]:
            fail(op, "dst_scale", f"at least {shape_k[0]} rows (dst_k's)", describe(dst_scale))
        if len(shape_t) != 2:
            fail(op, "block_table", "a 2-D [batch, max_blocks] array", describe(block_table))
        _require_dtype(op, "block_table", block_table, ("int32",), "dtype int32")
        _require_dtype(op, "cu_seq_lens", cu_seq_lens, ("int32",), "dtype int32")
        batch = shape_t[0]
        table = rows_as_upstream_reads(op, "block_table", block_table, batch, shape_t[1])
        cu = rows_as_upstream_reads(op, "cu_seq_lens", cu_seq_lens, None, batch + 1)
        out_k = _frameworks.of(dst_k).as_bytes(dst_k)
        ops.gather_k_and_s(_frameworks.of(kv_cache).as_bytes(kv_cache), table, cu_seq_lens=cu, out_k=out_k,
                           out_s=dst_scale[:shape_k[0]], page_size=block_size)


__all__ = ["cp_gather_indexer_k_quant_cache", "indexer_k_quant_and_cache"]
