"""topk_transform (docs/spec/topk.md): exact top-k of indexer score rows fused
with the index transform, on any DLPack-capable arrays.

Scores are float32 ``[rows, width]`` (or bfloat16, explicitly) with any row
stride and unit column stride. Each row selects the ``k`` largest of its
visible scores; ties at the threshold go to the smallest indices; rows whose
visible length is ``<= k`` give the identity ``0 .. len-1``. Slots past the
valid ones are ``-1``. CUDA calls return after one launch (no sync, no
allocation inside the op) and may be captured in a CUDA graph; all length
decisions are made on the device.
"""

from . import _frameworks, _nsa
from .errors import InvalidArgumentError

MAX_K = 2048

_TRANSFORMS = {"raw": 0, "paged64": 1, "token_table": 2, "ragged": 3}
_ORDERS = {"any": 0, "ascending": 1}


def _choice(op, arg, table, value):
    try:
        return table[value]
    except (KeyError, TypeError):
        names = ", ".join(repr(n) for n in table)
        raise InvalidArgumentError(f"nsa.{op}: argument '{arg}': expected one of {names}, got {value!r}") from None


def topk_transform(scores, lengths, k=MAX_K, *, rows_per_request=None, row_starts=None, row_to_request=None,
                   transform="raw", page_table=None, offsets=None, out=None, out_raw=None, return_raw=False,
                   order="any", stream=None):
    """Top-``k`` indices of every score row, transformed.

    Visible lengths (device values, clamped: negative is 0, windows are cut at
    the width):

    * ``rows_per_request=None``: ``lengths[r]`` per row; with ``row_starts``
      the row sees ``[row_starts[r], row_starts[r] + lengths[r])`` (ragged
      prefill) and raw indices are relative to the window start.
    * ``rows_per_request=N``: ``lengths[b] = L_b`` per request; row
      ``r = b*N + j`` sees ``max(0, L_b - N + 1 + j)`` columns (decode N=1, MTP N>1).

    ``transform``: ``"raw"`` (x), ``"paged64"`` (``page_table[q, x >> 6] * 64 +
    (x & 63)``), ``"token_table"`` (``page_table[q, x]``) or ``"ragged"``
    (``x + offsets[r]``), with ``q = row_to_request[r]`` (default ``r // N``,
    or ``r`` for per-row lengths). Table entries that are negative or out of
    the table give -1.

    ``order="ascending"`` writes the valid prefix sorted by raw index
    (byte-identical on every rank); ``"any"`` leaves it unspecified.

    Returns int32 ``out [rows, k]`` (or the given ``out``, any row stride, at
    least ``k`` columns; columns past ``k`` are untouched), and also the raw
    indices when ``return_raw`` or ``out_raw`` is given.
    """
    fw = _frameworks.of(scores)
    t = _choice("topk_transform", "transform", _TRANSFORMS, transform)
    o = _choice("topk_transform", "order", _ORDERS, order)
    rows = scores.shape[0] if len(scores.shape) == 2 else 0
    if out is None:
        out = fw.empty(scores, (rows, k), "int32")
    if out_raw is None and return_raw:
        out_raw = fw.empty(scores, (rows, k), "int32")
    n = 0 if rows_per_request is None else int(rows_per_request)
    if rows_per_request is not None and n < 1:
        raise InvalidArgumentError(
            f"nsa.topk_transform: argument 'rows_per_request': expected None or >= 1, got {rows_per_request!r}")
    _nsa.topk_transform(scores, k, lengths, n, row_starts, row_to_request, t, page_table, offsets, out, out_raw, o,
                        _frameworks.resolve_stream(fw, scores, stream))
    return (out, out_raw) if out_raw is not None else out
