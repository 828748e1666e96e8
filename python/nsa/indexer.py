"""paged_mqa_logits (docs/spec/indexer.md): the lightning-indexer logits of
DeepSeek Sparse Attention decode, read straight from the paged fp8 indexer-K
cache, for next_n <= 4 query rows per request.

``logits[b*N + j, t] = kscale[t] * sum_h w[b*N + j, h] * relu(q[b, j, h] . k[t])``
for ``t < max(0, L_b - N + 1 + j)`` (cut at the width); every other column of
``[0, width)`` is ``-inf``, and so is a token whose page-table entry is
negative or outside the cache. The head sum has a fixed order, so results are
bit-identical run to run. CUDA calls return after one launch (no sync, no
allocation inside the op) and may be captured in a CUDA graph.
"""

from . import _frameworks, _nsa

PAGE_SIZE = 64


def _rows(q):
    return q.shape[0] * q.shape[1] if len(q.shape) == 4 else 0


def _logits_buffer(fw, q, page_table, width, page_size):
    """float32 [B*N, width]; width defaults to the table's capacity (columns * page_size)."""
    if width is None:
        width = page_table.shape[1] * page_size if len(page_table.shape) == 2 else 0
    return fw.empty(q, (_rows(q), int(width)), "float32")


def paged_mqa_logits(q, weights, cache, context_lens, page_table, *, width=None, out=None, page_size=PAGE_SIZE,
                     stream=None):
    """Indexer logits of every query row over its request's cached tokens.

    ``q``: fp8 e4m3 ``[B, N, 64, 128]`` (uint8 bytes or a torch float8 tensor);
    ``weights``: float32 ``[B*N, 64]``; ``cache``: the layer's uint8 pages
    (``[num_pages, page_size*132]`` or flat); ``context_lens``: int32/int64
    ``[B]`` (``L_b``, including the N new tokens); ``page_table``: int32/int64
    ``[B, columns]``, any row stride. Returns float32 ``out [B*N, width]``
    (``width`` defaults to the table's capacity ``columns * page_size``; a
    given ``out`` may have any row stride, and its columns set the width).
    """
    fw = _frameworks.of(q)
    q = fw.as_bytes(q)
    cache = _frameworks.of(cache).as_bytes(cache)
    if out is None:
        out = _logits_buffer(fw, q, page_table, width, page_size)
    _nsa.paged_mqa_logits(q, weights, cache, context_lens, page_table, int(page_size), out,
                          _frameworks.resolve_stream(fw, q, stream))
    return out


_ORDERS = {"any": 0, "ascending": 1}


def indexer_topk(q, weights, cache, context_lens, page_table, k=2048, *, width=None, workspace=None, out=None,
                 out_raw=None, return_raw=False, paged_output=True, order="any", stream=None):
    """Top-``k`` KV indices of every query row: exactly
    ``topk_transform(paged_mqa_logits(...), context_lens, k, rows_per_request=N,
    transform="paged64", page_table=page_table)``.

    Unfused for now: the logits go through ``workspace`` (float32
    ``[B*N, width]``, allocated when not given), then the top-k runs: two
    launches. ``paged_output=False`` returns raw token positions. Returns int32
    ``out [B*N, k]`` (and the raw positions when ``return_raw`` or ``out_raw``).
    """
    from .errors import InvalidArgumentError
    fw = _frameworks.of(q)
    q = fw.as_bytes(q)
    cache = _frameworks.of(cache).as_bytes(cache)
    rows = _rows(q)
    if workspace is None:
        workspace = _logits_buffer(fw, q, page_table, width, PAGE_SIZE)
    if out is None:
        out = fw.empty(q, (rows, k), "int32")
    if out_raw is None and return_raw:
        out_raw = fw.empty(q, (rows, k), "int32")
    if order not in _ORDERS:
        raise InvalidArgumentError(f"nsa.indexer_topk: argument 'order': expected 'any' or 'ascending', got {order!r}")
    _nsa.indexer_topk(q, weights, cache, context_lens, page_table, PAGE_SIZE, workspace, int(k), bool(paged_output),
                      out, out_raw, _ORDERS[order], _frameworks.resolve_stream(fw, q, stream))
    return (out, out_raw) if out_raw is not None else out
