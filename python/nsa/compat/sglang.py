"""SGLang-compatible entry points: same names, positional signatures, accepted
argument values, results and exception classes as SGLang's NSA kernels, backed
by nsa's ops. A call site changes only its import.

* ``fused_metadata_copy_cuda`` / ``fused_metadata_copy_multi_cuda`` mirror
  ``sglang.jit_kernel.fused_metadata_copy``. No JIT: the kernels are compiled
  into nsa. Destination tables are uploaded once per distinct set of
  destination tensors (and stream) and reused afterwards. Every error is a
  ``RuntimeError`` (what upstream raises and SGLang's replay catches before it
  falls back to per-field copies) and an ``nsa.NsaError``.
* ``get_paged_mqa_logits_metadata`` mirrors DeepGEMM's function of that name
  (which SGLang's NSA indexer calls): the G4 schedule layout, one launch, no
  JIT. Every error is a ``RuntimeError`` (what DeepGEMM's host asserts raise)
  and an ``nsa.NsaError``. In a graph-captured step, prefer the
  ``paged_mqa_schedule`` field of ``nsa.build_metadata`` (no launch of its own).
* ``get_k``, ``get_s``, ``get_k_and_s``, ``set_k_and_s`` mirror the
  ``execute`` methods of ``GetK``, ``GetS``, ``GetKAndS``, ``SetKAndS`` in
  ``sglang.srt.layers.attention.nsa.index_buf_accessor``. Every error is an
  ``AssertionError`` and a ``ValueError`` (upstream asserts, or raises
  ValueError for a bad scale rank) and an ``nsa.NsaError``.

Index arrays are read as upstream's kernels read them: from the first element
with the pitch upstream uses (``page_indices[r * cols + c]``), so a source wider
than the copied columns, or a strided view, gives upstream's bytes.

Arrays may come from torch (CPU or CUDA), numpy or cupy; outputs are
allocated with the framework of ``buf``.
"""

from collections import OrderedDict

from .. import _frameworks, metadata, ops
from ..errors import DTypeError
from ._upstream import as_int64, describe, fail, fp8_e4m3fn_bytes, raising_as, rows_as_upstream_reads


class Int32Required(DTypeError, RuntimeError):
    """Upstream raises RuntimeError "... must have dtype int32"; this is both
    that RuntimeError and nsa's DTypeError."""


# --------------------------------------------------------------------------
# Index buffer accessors
# --------------------------------------------------------------------------

_ACCESSOR_ERROR = AssertionError  # nsa's InvalidArgumentError is already a ValueError


def _check_pool(op, pool):
    page_size = getattr(pool, "page_size", 64)
    head_dim = getattr(pool, "index_head_dim", 128)
    if page_size != 64 or head_dim != 128:
        fail(f"nsa.compat.sglang.{op}", "pool", "page_size 64 and index_head_dim 128 (the DeepSeek-V3.2 indexer "
             "layout; upstream asserts page_size == 64 on CUDA)", f"page_size {page_size}, index_head_dim {head_dim}")


def _pages(op, page_indices, seq_len):
    """The ceil(seq_len / 64) page ids upstream reads: page_indices[t // 64],
    from the first element."""
    return rows_as_upstream_reads(op, "page_indices", page_indices, None, (int(seq_len) + 63) // 64)


def get_k(pool, buf, seq_len, page_indices):
    """Mirrors ``GetK.execute(pool, buf, seq_len, page_indices)``.

    ``buf``: uint8 ``[num_pages, 8448]``; ``seq_len``: host int;
    ``page_indices``: int32/int64, at least ``ceil(seq_len / 64)`` entries
    (extra entries are never read). Returns uint8 ``[seq_len, 128]`` (the fp8
    K bytes of the sequence).
    """
    with raising_as(_ACCESSOR_ERROR):
        _check_pool("get_k", pool)
        return ops.gather_k(buf, int(seq_len), _pages("nsa.compat.sglang.get_k", page_indices, seq_len))


def get_s(pool, buf, seq_len, page_indices):
    """Mirrors ``GetS.execute(pool, buf, seq_len, page_indices)``.

    Returns uint8 ``[seq_len, 4]``: the bytes of each token's fp32 scale.
    """
    with raising_as(_ACCESSOR_ERROR):
        _check_pool("get_s", pool)
        fw = _frameworks.of(buf)
        buf = fw.as_bytes(buf)
        out = fw.empty(buf, (int(seq_len), 4), "uint8")
        return ops.gather_s(buf, int(seq_len), _pages("nsa.compat.sglang.get_s", page_indices, seq_len), out=out)


def get_k_and_s(pool, buf, page_indices, seq_len_tensor, seq_len_sum, max_seq_len):
    """Mirrors ``GetKAndS.execute(pool, buf, page_indices, seq_len_tensor,
    seq_len_sum, max_seq_len)``.

    ``page_indices``: int32/int64 ``[B, P]``, read as upstream reads it (row
    ``b`` starts at element ``b * P``); ``seq_len_tensor``: int32/int64 ``[B]``;
    ``seq_len_sum``: host int, ``sum(seq_len_tensor)``. Returns ``(k uint8
    [seq_len_sum, 128], s uint8 [seq_len_sum, 4])``, request-major.
    ``max_seq_len`` (SGLang passes ``max(seq_len_tensor)``) is accepted for
    signature compatibility: nsa reads each request's length on the device and
    needs no maximum.
    """
    op = "nsa.compat.sglang.get_k_and_s"
    del max_seq_len
    with raising_as(_ACCESSOR_ERROR):
        _check_pool("get_k_and_s", pool)
        shape = tuple(getattr(page_indices, "shape", ()))
        if len(shape) != 2:
            fail(op, "page_indices", "a 2-D [B, pages] array", describe(page_indices))
        lens = tuple(getattr(seq_len_tensor, "shape", ()))
        if len(lens) != 1:
            fail(op, "seq_len_tensor", "a 1-D [B] array", describe(seq_len_tensor))
        table = rows_as_upstream_reads(op, "page_indices", page_indices, lens[0], shape[1])
        fw = _frameworks.of(buf)
        buf = fw.as_bytes(buf)
        total = int(seq_len_sum)
        k = fw.empty(buf, (total, 128), "uint8")
        s = fw.empty(buf, (total, 4), "uint8")
        ops.gather_k_and_s(buf, table, rows_as_upstream_reads(op, "seq_len_tensor", seq_len_tensor, None, lens[0]),
                           out_k=k, out_s=s)
        return k, s


def set_k_and_s(pool, buf, loc, index_k, index_k_scale):
    """Mirrors ``SetKAndS.execute(pool, buf, loc, index_k, index_k_scale)``;
    writes in place, returns None.

    ``loc``: int64 or int32 ``[N]`` token slots (int32 is converted, as upstream
    does); ``index_k``: fp8 e4m3fn ``[N, 128]`` (or its bytes as uint8; any other
    fp8 kind is refused); ``index_k_scale``: float32 ``[N]`` or ``[N, 1]``.
    Everything is checked before anything is written.
    """
    op = "nsa.compat.sglang.set_k_and_s"
    with raising_as(_ACCESSOR_ERROR):
        _check_pool("set_k_and_s", pool)
        k = fp8_e4m3fn_bytes(op, "index_k", index_k)
        ops.store_k_and_s(buf, k, index_k_scale, as_int64(op, "loc", loc))


# --------------------------------------------------------------------------
# Fused metadata copies
# --------------------------------------------------------------------------

_FIELDS = metadata.DESTINATION_FIELDS  # cache_seqlens ... flashmla_metadata
_CACHE_SIZE = 32
_targets_cache = OrderedDict()
_COPY_ERROR = RuntimeError
_MODES = (0, 1, 2)


def _require_int32(named):
    for name, x in named:
        if x is not None:
            dtype = _frameworks.of(x).dtype_name(x)
            if dtype != "int32":
                raise Int32Required(f"{name} must have dtype int32, got {dtype}")


def _require(op, named):
    """Tensors upstream dereferences in this mode and configuration (a None
    there would fault on the device upstream)."""
    for name, x in named:
        if x is None:
            fail(op, name, "a tensor (upstream reads or writes it in this mode)", "None")


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


def _fields(values, *, expanded, real, flashmla):
    """A field dict (MetadataTargets names) without the fields this call does
    not copy."""
    d = dict(zip(_FIELDS, values))
    if not expanded:
        d["seqlens_expanded"] = None
    if not real:
        d["real_page_table"] = None
    if not flashmla:
        d["flashmla_num_splits"] = d["flashmla_metadata"] = None
    return {k: v for k, v in d.items() if v is not None}


def _table_source(op, name, x, rows, pitch):
    """A 2-D int32 source as upstream reads it: ``rows`` rows of ``pitch``
    elements from its first element."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 2:
        fail(op, name, "a 2-D int32 array", describe(x))
    return rows_as_upstream_reads(op, name, x, rows, pitch)


def fused_metadata_copy_cuda(cache_seqlens_src, cu_seqlens_k_src, page_indices_src, nsa_cache_seqlens_src,
                             seqlens_expanded_src, nsa_cu_seqlens_k_src, real_page_table_src,
                             flashmla_num_splits_src, flashmla_metadata_src, cache_seqlens_dst, cu_seqlens_k_dst,
                             page_table_1_dst, nsa_cache_seqlens_dst, seqlens_expanded_dst, nsa_cu_seqlens_k_dst,
                             real_page_table_dst, flashmla_num_splits_dst, flashmla_metadata_dst, forward_mode, bs,
                             max_len, max_seqlen_k, seqlens_expanded_size):
    """Mirrors ``sglang.jit_kernel.fused_metadata_copy.fused_metadata_copy_cuda``.

    Copies precomputed metadata into one destination set: ``forward_mode`` 0
    DECODE, 1 TARGET_VERIFY, 2 DRAFT_EXTEND. Exactly upstream's copies:

    * DECODE: ``bs`` rows x ``max_len`` page-table columns, the source read as
      ``page_indices_src.contiguous()`` with row pitch ``max_len``;
      ``max_seqlen_k``, ``seqlens_expanded_size`` and both ``seqlens_expanded``
      tensors are not used (SGLang passes the aliased ``cache_seqlens`` there).
    * TARGET_VERIFY / DRAFT_EXTEND: ``page_indices_src.shape[0]`` rows (which
      must equal ``seqlens_expanded_size``, as SGLang's precompute gives) x
      ``max_seqlen_k`` columns with row pitch ``max_seqlen_k``; ``max_len`` is
      not used (SGLang's precompute passes -1 there).
    * The real page table (when ``real_page_table_src`` is not None) is read
      with row pitch ``real_page_table_src.shape[1]``, the FlashMLA tensors are
      copied when ``flashmla_num_splits_src`` is not None.

    Destination page tables are written with their real row strides. Every
    tensor must be int32 (else RuntimeError "... must have dtype int32");
    every other error is a RuntimeError too. Returns None.
    """
    op = "nsa.compat.sglang.fused_metadata_copy_cuda"
    args = locals()
    with raising_as(_COPY_ERROR):
        _require_int32((n, args[n]) for n in (
            "cache_seqlens_src", "cu_seqlens_k_src", "page_indices_src", "nsa_cache_seqlens_src",
            "seqlens_expanded_src", "nsa_cu_seqlens_k_src", "real_page_table_src", "flashmla_num_splits_src",
            "flashmla_metadata_src", "cache_seqlens_dst", "cu_seqlens_k_dst", "page_table_1_dst",
            "nsa_cache_seqlens_dst", "seqlens_expanded_dst", "nsa_cu_seqlens_k_dst", "real_page_table_dst",
            "flashmla_num_splits_dst", "flashmla_metadata_dst"))
        mode, bs = int(forward_mode), int(bs)
        if mode not in _MODES:
            fail(op, "forward_mode", "0 (DECODE), 1 (TARGET_VERIFY) or 2 (DRAFT_EXTEND)", repr(forward_mode))
        decode = mode == 0
        has_real = real_page_table_src is not None
        has_flashmla = flashmla_num_splits_src is not None
        _require(op, [(n, args[n]) for n in
                      (["real_page_table_dst"] if has_real else [])
                      + (["flashmla_num_splits_dst"] if has_flashmla else [])
                      + (["flashmla_metadata_dst"] if has_flashmla and flashmla_metadata_src is not None else [])
                      + ([] if decode else ["seqlens_expanded_src", "seqlens_expanded_dst"])])
        if decode:
            rows, cols, max_len, max_seqlen_k, expanded_size = bs, int(max_len), int(max_len), 0, 0
        else:
            rows = int(getattr(page_indices_src, "shape", (0,))[0])
            cols, max_len, max_seqlen_k, expanded_size = int(max_seqlen_k), 0, int(max_seqlen_k), \
                int(seqlens_expanded_size)
            if rows != expanded_size:
                fail(op, "page_indices_src", f"{expanded_size} rows (seqlens_expanded_size: upstream copies "
                     "shape[0] page-table rows and seqlens_expanded_size per-row entries; nsa copies the same count "
                     "of both)", describe(page_indices_src))
        page_src = _table_source(op, "page_indices_src", _contiguous(page_indices_src), rows, cols)
        real_src = None
        if has_real:
            real_src = _table_source(op, "real_page_table_src", real_page_table_src, rows,
                                     int(real_page_table_src.shape[1]))
        sources = _fields(
            (_contiguous(cache_seqlens_src), _contiguous(cu_seqlens_k_src), page_src,
             _contiguous(seqlens_expanded_src), _contiguous(nsa_cache_seqlens_src),
             _contiguous(nsa_cu_seqlens_k_src), real_src, flashmla_num_splits_src, flashmla_metadata_src),
            expanded=not decode, real=has_real, flashmla=has_flashmla)
        dst = _fields(
            (cache_seqlens_dst, cu_seqlens_k_dst, page_table_1_dst, seqlens_expanded_dst, nsa_cache_seqlens_dst,
             nsa_cu_seqlens_k_dst, real_page_table_dst, flashmla_num_splits_dst, flashmla_metadata_dst),
            expanded=not decode, real=has_real, flashmla=has_flashmla)
        targets, stream = _targets_for([dst], None)
        metadata.copy_metadata(targets, sources, mode=mode, batch_size=bs, max_len=max_len,
                               max_seqlen_k=max_seqlen_k, seqlens_expanded_size=expanded_size, stream=stream)


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
    into three destination sets in one launch: ``bs`` rows x ``max_len``
    page-table columns (source row pitch ``max_len``); the real page table when
    ``real_page_table_src`` and ``real_page_table_dst0`` are not None (source
    row pitch ``real_page_table_src.shape[1]``); the FlashMLA tensors when
    ``flashmla_num_splits_src`` is not None. ``seqlens_expanded_size`` is not
    used. Every tensor must be int32 (else RuntimeError "... must have dtype
    int32"); every other error is a RuntimeError too. Returns None. Each
    destination's own row strides are used (upstream takes destination 0's
    for all three). For any other number of destinations use
    nsa.copy_metadata with an nsa.MetadataTargets.
    """
    op = "nsa.compat.sglang.fused_metadata_copy_multi_cuda"
    del seqlens_expanded_size
    args = locals()
    suffixes = ("_src", "_dst0", "_dst1", "_dst2")
    names = ("cache_seqlens", "cu_seqlens_k", "page_table_1", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
             "real_page_table", "flashmla_num_splits", "flashmla_metadata")

    def name_of(field, suffix):
        return ("page_indices" if field == "page_table_1" and suffix == "_src" else field) + suffix

    with raising_as(_COPY_ERROR):
        _require_int32((name_of(n, s), args[name_of(n, s)]) for s in suffixes for n in names)
        bs, max_len = int(bs), int(max_len)
        has_real = real_page_table_src is not None and real_page_table_dst0 is not None
        has_flashmla = flashmla_num_splits_src is not None
        wanted = ((["real_page_table"] if has_real else []) + (["flashmla_num_splits"] if has_flashmla else [])
                  + (["flashmla_metadata"] if has_flashmla and flashmla_metadata_src is not None else []))
        _require(op, [(name_of(n, s), args[name_of(n, s)]) for s in suffixes[1:] for n in wanted])

        def fields(suffix):
            values = {n: args[name_of(n, suffix)] for n in names}
            if suffix == "_src":
                for n in names[:5]:
                    values[n] = _contiguous(values[n])
                values["page_table_1"] = _table_source(op, "page_indices_src", values["page_table_1"], bs, max_len)
                if has_real:
                    values["real_page_table"] = _table_source(op, "real_page_table_src", real_page_table_src, bs,
                                                              int(real_page_table_src.shape[1]))
            return _fields(tuple(values.get(f) for f in _FIELDS), expanded=False, real=has_real,
                           flashmla=has_flashmla)

        targets, stream = _targets_for([fields(s) for s in suffixes[1:]], None)
        metadata.copy_metadata(targets, fields("_src"), mode=0, batch_size=bs, max_len=max_len, max_seqlen_k=0,
                               seqlens_expanded_size=0, stream=stream)


# --------------------------------------------------------------------------
# DeepGEMM paged-MQA schedule
# --------------------------------------------------------------------------

_SCHEDULE_ERROR = RuntimeError
_BLOCK_KV = 64  # the SM90 logits kernel's block (DeepGEMM asserts it)


def get_paged_mqa_logits_metadata(context_lens, block_kv, num_sms):
    """Mirrors ``deep_gemm.get_paged_mqa_logits_metadata(context_lens, block_kv,
    num_sms)``: ``context_lens`` int32 ``[B, next_n]`` (column ``next_n - 1``
    is read; a 1-D ``[B]`` is taken as next_n = 1), ``block_kv`` 64, returns a
    new int32 ``[num_sms + 1, 2]`` schedule in DeepGEMM's current (G4) layout,
    bit for bit (metadata.md §10). Errors are RuntimeErrors."""
    op = "nsa.compat.sglang.get_paged_mqa_logits_metadata"
    with raising_as(_SCHEDULE_ERROR):
        _require_int32((("context_lens", context_lens),))
        if block_kv != _BLOCK_KV:
            fail(op, "block_kv", f"{_BLOCK_KV} (the SM90 logits kernel's block)", repr(block_kv))
        if not isinstance(num_sms, int) or isinstance(num_sms, bool) or num_sms < 1:
            fail(op, "num_sms", "an int >= 1", repr(num_sms))
        return metadata.paged_mqa_schedule(context_lens, num_sms)


__all__ = ["fused_metadata_copy_cuda", "fused_metadata_copy_multi_cuda", "get_k", "get_k_and_s", "get_s",
           "get_paged_mqa_logits_metadata", "set_k_and_s", "Int32Required"]
