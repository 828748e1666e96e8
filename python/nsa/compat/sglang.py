"""SGLang-compatible entry points: same names, positional signatures and
return values as SGLang's NSA kernels, backed by nsa's ops.

* ``fused_metadata_copy_cuda`` / ``fused_metadata_copy_multi_cuda`` mirror
  ``sglang.jit_kernel.fused_metadata_copy`` (metadata.md §6.5). No JIT: the
  kernels are compiled into nsa. Destination tables are uploaded once per
  distinct set of destination tensors (and stream) and reused afterwards.
* ``get_k``, ``get_s``, ``get_k_and_s``, ``set_k_and_s`` mirror the
  ``execute`` methods of ``GetK``, ``GetS``, ``GetKAndS``, ``SetKAndS`` in
  ``sglang.srt.layers.attention.nsa.index_buf_accessor`` (indexer-cache.md §4.5).

Arrays may come from torch (CPU or CUDA), numpy or cupy; outputs are
allocated with the framework of ``buf``.
"""

from collections import OrderedDict

from .. import _frameworks, metadata, ops
from ..errors import DTypeError, InvalidArgumentError


class Int32Required(DTypeError, RuntimeError):
    """Upstream raises RuntimeError "... must have dtype int32"; this is both
    that RuntimeError and nsa's DTypeError."""


# --------------------------------------------------------------------------
# Index buffer accessors
# --------------------------------------------------------------------------

def _check_pool(op, pool):
    page_size = getattr(pool, "page_size", 64)
    head_dim = getattr(pool, "index_head_dim", 128)
    if page_size != 64 or head_dim != 128:
        raise InvalidArgumentError(f"nsa.compat.sglang.{op}: argument 'pool': expected page_size 64 and "
                                   f"index_head_dim 128 (the DeepSeek-V3.2 indexer layout), got page_size "
                                   f"{page_size}, index_head_dim {head_dim}")


def get_k(pool, buf, seq_len, page_indices):
    """Mirrors ``GetK.execute(pool, buf, seq_len, page_indices)``.

    ``buf``: uint8 ``[num_pages, 8448]``; ``seq_len``: host int;
    ``page_indices``: int32/int64 ``[ceil(seq_len / 64)]``.
    Returns uint8 ``[seq_len, 128]`` (the fp8 K bytes of the sequence).
    """
    _check_pool("get_k", pool)
    return ops.gather_k(buf, int(seq_len), page_indices)


def get_s(pool, buf, seq_len, page_indices):
    """Mirrors ``GetS.execute(pool, buf, seq_len, page_indices)``.

    Returns uint8 ``[seq_len, 4]``: the bytes of each token's fp32 scale.
    """
    _check_pool("get_s", pool)
    fw = _frameworks.of(buf)
    buf = fw.as_bytes(buf)
    out = fw.empty(buf, (int(seq_len), 4), "uint8")
    return ops.gather_s(buf, int(seq_len), page_indices, out=out)


def get_k_and_s(pool, buf, page_indices, seq_len_tensor, seq_len_sum, max_seq_len):
    """Mirrors ``GetKAndS.execute(pool, buf, page_indices, seq_len_tensor,
    seq_len_sum, max_seq_len)``.

    ``page_indices``: int32/int64 ``[B, pages]`` (one row of page ids per
    request); ``seq_len_tensor``: int32/int64 ``[B]``; ``seq_len_sum``: host
    int, ``sum(seq_len_tensor)``. Returns ``(k uint8 [seq_len_sum, 128],
    s uint8 [seq_len_sum, 4])``, request-major. ``max_seq_len`` is accepted for
    signature compatibility (upstream sizes its grid with it); nsa reads each
    request's length on the device and needs no maximum.
    """
    _check_pool("get_k_and_s", pool)
    del max_seq_len
    fw = _frameworks.of(buf)
    buf = fw.as_bytes(buf)
    total = int(seq_len_sum)
    k = fw.empty(buf, (total, 128), "uint8")
    s = fw.empty(buf, (total, 4), "uint8")
    ops.gather_k_and_s(buf, page_indices, seq_len_tensor, out_k=k, out_s=s)
    return k, s


def set_k_and_s(pool, buf, loc, index_k, index_k_scale):
    """Mirrors ``SetKAndS.execute(pool, buf, loc, index_k, index_k_scale)``;
    writes in place, returns None.

    ``loc``: int64 ``[N]`` token slots; ``index_k``: fp8 e4m3fn (or uint8)
    ``[N, 128]``; ``index_k_scale``: float32 ``[N]`` or ``[N, 1]``.
    """
    _check_pool("set_k_and_s", pool)
    ops.store_k_and_s(buf, index_k, index_k_scale, loc)


# --------------------------------------------------------------------------
# Fused metadata copies
# --------------------------------------------------------------------------

_FIELDS = metadata.DESTINATION_FIELDS  # cache_seqlens ... flashmla_metadata
_CACHE_SIZE = 32
_targets_cache = OrderedDict()


def _require_int32(named):
    for name, x in named:
        if x is not None:
            dtype = _frameworks.of(x).dtype_name(x)
            if dtype != "int32":
                raise Int32Required(f"{name} must have dtype int32, got {dtype}")


def _targets_for(destinations, stream):
    """The uploaded MetadataTargets of these destination tensors on this
    stream, cached: replay after replay passes the same captured tensors."""
    like = destinations[0]["cache_seqlens"]
    fw = _frameworks.of(like)
    stream = _frameworks.resolve_stream(fw, like, stream)
    key = (stream,) + tuple(
        tuple((name, _frameworks.of(x).key(x)) for name, x in d.items() if x is not None) for d in destinations)
    targets = _targets_cache.get(key)
    if targets is None:
        targets = metadata.MetadataTargets(destinations, stream=stream)
        _targets_cache[key] = targets
        if len(_targets_cache) > _CACHE_SIZE:
            _targets_cache.popitem(last=False)
    else:
        _targets_cache.move_to_end(key)
    return targets, stream


def _contiguous(x):
    return None if x is None else _frameworks.of(x).contiguous(x)


def _destination(values, has_real, has_flashmla, with_expanded):
    d = dict(zip(_FIELDS, values))
    if not with_expanded:
        d["seqlens_expanded"] = None
    if not has_real:
        d["real_page_table"] = None
    if not has_flashmla:
        d["flashmla_num_splits"] = d["flashmla_metadata"] = None
    return {k: v for k, v in d.items() if v is not None}


def fused_metadata_copy_cuda(cache_seqlens_src, cu_seqlens_k_src, page_indices_src, nsa_cache_seqlens_src,
                             seqlens_expanded_src, nsa_cu_seqlens_k_src, real_page_table_src,
                             flashmla_num_splits_src, flashmla_metadata_src, cache_seqlens_dst, cu_seqlens_k_dst,
                             page_table_1_dst, nsa_cache_seqlens_dst, seqlens_expanded_dst, nsa_cu_seqlens_k_dst,
                             real_page_table_dst, flashmla_num_splits_dst, flashmla_metadata_dst, forward_mode, bs,
                             max_len, max_seqlen_k, seqlens_expanded_size):
    """Mirrors ``sglang.jit_kernel.fused_metadata_copy.fused_metadata_copy_cuda``.

    Copies precomputed metadata into one destination set (metadata.md §6.2):
    ``forward_mode`` 0 DECODE, 1 TARGET_VERIFY, 2 DRAFT_EXTEND. The real page
    table is copied when ``real_page_table_src`` is not None, the FlashMLA
    tensors when ``flashmla_num_splits_src`` is not None. Every tensor must be
    int32 (else RuntimeError "... must have dtype int32"). Returns None.
    Unlike upstream, the destination page tables' real row strides are used.
    """
    args = locals()
    _require_int32((n, args[n]) for n in (
        "cache_seqlens_src", "cu_seqlens_k_src", "page_indices_src", "nsa_cache_seqlens_src", "seqlens_expanded_src",
        "nsa_cu_seqlens_k_src", "real_page_table_src", "flashmla_num_splits_src", "flashmla_metadata_src",
        "cache_seqlens_dst", "cu_seqlens_k_dst", "page_table_1_dst", "nsa_cache_seqlens_dst", "seqlens_expanded_dst",
        "nsa_cu_seqlens_k_dst", "real_page_table_dst", "flashmla_num_splits_dst", "flashmla_metadata_dst"))
    has_real = real_page_table_src is not None
    has_flashmla = flashmla_num_splits_src is not None
    sources = _destination(
        (_contiguous(cache_seqlens_src), _contiguous(cu_seqlens_k_src), _contiguous(page_indices_src),
         _contiguous(seqlens_expanded_src), _contiguous(nsa_cache_seqlens_src), _contiguous(nsa_cu_seqlens_k_src),
         real_page_table_src, flashmla_num_splits_src, flashmla_metadata_src),
        has_real, has_flashmla, True)
    dst = _destination(
        (cache_seqlens_dst, cu_seqlens_k_dst, page_table_1_dst, seqlens_expanded_dst, nsa_cache_seqlens_dst,
         nsa_cu_seqlens_k_dst, real_page_table_dst, flashmla_num_splits_dst, flashmla_metadata_dst),
        has_real, has_flashmla, True)
    targets, stream = _targets_for([dst], None)
    metadata.copy_metadata(targets, sources, mode=int(forward_mode), batch_size=int(bs), max_len=int(max_len),
                           max_seqlen_k=int(max_seqlen_k), seqlens_expanded_size=int(seqlens_expanded_size),
                           stream=stream)


def fused_metadata_copy_multi_cuda(cache_seqlens_src, cu_seqlens_k_src, page_indices_src, nsa_cache_seqlens_src,
                                   nsa_cu_seqlens_k_src, real_page_table_src, flashmla_num_splits_src,
                                   flashmla_metadata_src,
                                   cache_seqlens_dst0, cu_seqlens_k_dst0, page_table_1_dst0, nsa_cache_seqlens_dst0,
                                   nsa_cu_seqlens_k_dst0, real_page_table_dst0, flashmla_num_splits_dst0,
                                   flashmla_metadata_dst0,
                                   cache_seqlens_dst1, cu_seqlens_k_dst1, page_table_1_dst1, nsa_cache_seqlens_dst1,
                                   nsa_cu_seqlens_k_dst1, real_page_table_dst1, flashmla_num_splits_dst1,
                                   flashmla_metadata_dst1,
                                   cache_seqlens_dst2, cu_seqlens_k_dst2, page_table_1_dst2, nsa_cache_seqlens_dst2,
                                   nsa_cu_seqlens_k_dst2, real_page_table_dst2, flashmla_num_splits_dst2,
                                   flashmla_metadata_dst2,
                                   bs, max_len, seqlens_expanded_size):
    """Mirrors ``sglang.jit_kernel.fused_metadata_copy.fused_metadata_copy_multi_cuda``.

    DECODE only: copies one precomputed source set (no ``seqlens_expanded``)
    into three destination sets in one launch (metadata.md §6.3). Every tensor
    must be int32 (else RuntimeError "... must have dtype int32"). Returns
    None. For any other number of destinations use nsa.copy_metadata with an
    nsa.MetadataTargets.
    """
    args = locals()
    suffixes = ("_src", "_dst0", "_dst1", "_dst2")
    names = ("cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
             "real_page_table", "flashmla_num_splits", "flashmla_metadata")

    def arg(name, suffix):
        return args[("page_indices" if name == "page_table_1" and suffix == "_src" else name) + suffix]

    _require_int32(((n if not (n == "page_table_1" and s == "_src") else "page_indices") + s, arg(n, s))
                   for s in suffixes for n in names)
    has_real = real_page_table_src is not None
    has_flashmla = flashmla_num_splits_src is not None

    def fields(suffix, contiguous):
        fix = _contiguous if contiguous else (lambda x: x)
        values = {n: arg(n, suffix) for n in names}
        for n in names[:5]:
            values[n] = fix(values[n])
        return _destination(tuple(values.get(f) for f in _FIELDS), has_real, has_flashmla, False)

    sources = fields("_src", True)
    targets, stream = _targets_for([fields(s, False) for s in suffixes[1:]], None)
    metadata.copy_metadata(targets, sources, mode=0, batch_size=int(bs), max_len=int(max_len), max_seqlen_k=0,
                           seqlens_expanded_size=int(seqlens_expanded_size), stream=stream)


__all__ = ["fused_metadata_copy_cuda", "fused_metadata_copy_multi_cuda", "get_k", "get_k_and_s", "get_s",
           "set_k_and_s", "Int32Required"]
