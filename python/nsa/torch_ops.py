"""The nsa ops as torch custom ops (``torch.ops.nsa.*``), for torch.compile and
CUDA graphs.

A plain ``nsa.gather_k(...)`` is an opaque Python call to torch: under
``torch.compile`` it breaks the graph. Importing this module (it needs torch;
``import nsa`` itself does not) registers every op with ``torch.library`` in
the ``nsa`` namespace, with its mutated arguments declared and a fake
implementation for shape propagation, so a compiled function that calls them
stays one graph (``fullgraph=True``) and CUDA-graph capture (``mode=
"reduce-overhead"``, ``torch.cuda.graph``) records the launches. The functions
below have the signatures of the ``nsa`` functions of the same name, for torch
tensors, and call the custom ops::

    import nsa.torch_ops as nsa_ops

    @torch.compile(fullgraph=True)
    def step(cache, k, slots, table, lens, out_k, out_s):
        nsa_ops.quantize_and_store_k(cache, k, slots)
        return nsa_ops.gather_k_and_s(cache, table, lens, out_k=out_k, out_s=out_s)

Each custom op calls the public ``nsa`` function (the eager path: the same
checks, errors and stream), so an argument added there is added here once.
The metadata ops take their :class:`nsa.MetadataTargets` through a registry
key, with the destination tensors passed as mutated arguments.
"""

from typing import List, Optional, Tuple

import torch

from . import indexer as _indexer
from . import metadata as _metadata
from . import ops as _ops
from . import topk as _topk
from .errors import InvalidArgumentError

_HEAD_DIM = 128

# Enum-like arguments cross the op schema as ints (a schema takes no Python
# objects); each op maps its int back to the public function's value.
# quantize_and_store_k's (mode, scale_formula) pair is the library's mode code.
_SCALE_CODES = {0: (_ops.ScaleMode.FP32, "multiply"), 1: (_ops.ScaleMode.UE8M0, "multiply"),
                2: (_ops.ScaleMode.FP32, "divide")}
_TOPK_TRANSFORMS = {code: name for name, code in _topk._TRANSFORMS.items()}
_TOPK_ORDERS = {code: name for name, code in _topk._ORDERS.items()}


def _writes(*arguments):
    """Registers the decorated eager implementation as the custom op
    ``nsa::<its name without the leading underscore>``, writing ``arguments``
    and returning nothing, so its fake implementation (shape propagation) is
    a no-op. (No argument may be called ``mode``: torch's dispatch of custom
    ops takes that keyword itself.)"""
    def register(fn):
        op = torch.library.custom_op("nsa::" + fn.__name__.lstrip("_"), mutates_args=arguments)(fn)
        op.register_fake(lambda *args, **kwargs: None)
        return op
    return register


# ---------------------------------------------------------------- index cache

@_writes("cache")
def _quantize_and_store_k(cache: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, scale_code: int,
                          page_size: int) -> None:
    scale_mode, scale_formula = _SCALE_CODES[scale_code]
    _ops.quantize_and_store_k(cache, k, slots, scale_mode, page_size=page_size, scale_formula=scale_formula)


@_writes("cache")
def _store_k_and_s(cache: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor,
                   page_size: int) -> None:
    _ops.store_k_and_s(cache, k, scale, slots, page_size=page_size)


@_writes("out")
def _gather_k(cache: torch.Tensor, length: int, page_ids: torch.Tensor, out: torch.Tensor, page_size: int) -> None:
    _ops.gather_k(cache, length, page_ids, out=out, page_size=page_size)


@_writes("out")
def _gather_s(cache: torch.Tensor, length: int, page_ids: torch.Tensor, out: torch.Tensor, page_size: int) -> None:
    _ops.gather_s(cache, length, page_ids, out=out, page_size=page_size)


@_writes("out_k", "out_s")
def _gather_k_and_s(cache: torch.Tensor, page_table: torch.Tensor, seq_lens: Optional[torch.Tensor],
                    cu_seq_lens: Optional[torch.Tensor], out_k: torch.Tensor, out_s: torch.Tensor,
                    page_size: int) -> None:
    _ops.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens=cu_seq_lens, out_k=out_k, out_s=out_s,
                        page_size=page_size)


def quantize_and_store_k(cache: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, mode="fp32", *,
                         page_size: int = 64, scale_formula: str = "multiply") -> None:
    """:func:`nsa.quantize_and_store_k` as ``torch.ops.nsa.quantize_and_store_k``."""
    op = "quantize_and_store_k"
    torch.ops.nsa.quantize_and_store_k(cache, k, slots, _ops._scale_mode(op, mode, scale_formula),
                                       _ops._page_size(op, page_size))


def store_k_and_s(cache: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor, *,
                  page_size: int = 64) -> None:
    """:func:`nsa.store_k_and_s` as ``torch.ops.nsa.store_k_and_s``."""
    torch.ops.nsa.store_k_and_s(cache, k, scale, slots, _ops._page_size("store_k_and_s", page_size))


def gather_k(cache: torch.Tensor, length: int, page_ids: torch.Tensor, *,
             out: Optional[torch.Tensor] = None, page_size: int = 64) -> torch.Tensor:
    """:func:`nsa.gather_k` as ``torch.ops.nsa.gather_k``; allocates ``out`` with torch when not given."""
    if out is None:
        out = torch.empty((length, _HEAD_DIM), dtype=torch.uint8, device=cache.device)
    torch.ops.nsa.gather_k(cache, length, page_ids, out, _ops._page_size("gather_k", page_size))
    return out


def gather_s(cache: torch.Tensor, length: int, page_ids: torch.Tensor, *,
             out: Optional[torch.Tensor] = None, page_size: int = 64) -> torch.Tensor:
    """:func:`nsa.gather_s` as ``torch.ops.nsa.gather_s``; allocates ``out`` with torch when not given."""
    if out is None:
        out = torch.empty((length,), dtype=torch.float32, device=cache.device)
    torch.ops.nsa.gather_s(cache, length, page_ids, out, _ops._page_size("gather_s", page_size))
    return out


def _rows_out(capacity, out_k, out_s, device):
    if out_k is None or out_s is None:
        if capacity is None:
            raise InvalidArgumentError(
                "nsa.torch_ops.gather_k_and_s: argument 'capacity': expected the number of output rows when "
                "out_k/out_s are not given, got None")
        if out_k is None:
            out_k = torch.empty((capacity, _HEAD_DIM), dtype=torch.uint8, device=device)
        if out_s is None:
            out_s = torch.empty((capacity,), dtype=torch.float32, device=device)
    return out_k, out_s


def gather_k_and_s(cache: torch.Tensor, page_table: torch.Tensor, seq_lens: Optional[torch.Tensor] = None, *,
                   cu_seq_lens: Optional[torch.Tensor] = None, capacity: Optional[int] = None,
                   out_k: Optional[torch.Tensor] = None, out_s: Optional[torch.Tensor] = None,
                   page_size: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`nsa.gather_k_and_s` as ``torch.ops.nsa.gather_k_and_s``. Outputs
    not given are allocated with ``capacity`` rows (required here: reading the
    lengths would be a host sync, which a compiled graph cannot have)."""
    out_k, out_s = _rows_out(capacity, out_k, out_s, cache.device)
    torch.ops.nsa.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, out_k, out_s,
                                 _ops._page_size("gather_k_and_s", page_size))
    return out_k, out_s


# ---------------------------------------------------------------- top-k and indexer

def _index_outputs(like: torch.Tensor, rows: int, k: int, out, out_raw, return_raw: bool):
    if out is None:
        out = torch.empty((rows, k), dtype=torch.int32, device=like.device)
    if out_raw is None and return_raw:
        out_raw = torch.empty((rows, k), dtype=torch.int32, device=like.device)
    return out, out_raw


@_writes("out", "out_raw")
def _topk_transform(scores: torch.Tensor, lengths: torch.Tensor, k: int, rows_per_request: int,
                    row_starts: Optional[torch.Tensor], row_to_request: Optional[torch.Tensor], transform: int,
                    page_table: Optional[torch.Tensor], offsets: Optional[torch.Tensor], out: torch.Tensor,
                    out_raw: Optional[torch.Tensor], order: int) -> None:
    # rows_per_request 0 stands for None (per-row lengths)
    _topk.topk_transform(scores, lengths, k, rows_per_request=rows_per_request or None, row_starts=row_starts,
                         row_to_request=row_to_request, transform=_TOPK_TRANSFORMS[transform],
                         page_table=page_table, offsets=offsets, out=out, out_raw=out_raw,
                         order=_TOPK_ORDERS[order])


def topk_transform(scores: torch.Tensor, lengths: torch.Tensor, k: int = _topk.MAX_K, *,
                   rows_per_request: Optional[int] = None, row_starts: Optional[torch.Tensor] = None,
                   row_to_request: Optional[torch.Tensor] = None, transform: str = "raw",
                   page_table: Optional[torch.Tensor] = None, offsets: Optional[torch.Tensor] = None,
                   out: Optional[torch.Tensor] = None, out_raw: Optional[torch.Tensor] = None,
                   return_raw: bool = False, order: str = "any"):
    """:func:`nsa.topk_transform` as ``torch.ops.nsa.topk_transform``; allocates
    the outputs with torch when not given."""
    op = "topk_transform"
    t = _topk._choice(op, "transform", _topk._TRANSFORMS, transform)
    o = _topk._choice(op, "order", _topk._ORDERS, order)
    if rows_per_request is not None and (type(rows_per_request) is not int or rows_per_request < 1):
        raise InvalidArgumentError(
            f"nsa.topk_transform: argument 'rows_per_request': expected None or an int >= 1, got {rows_per_request!r}")
    rows = scores.shape[0] if scores.dim() == 2 else 0
    out, out_raw = _index_outputs(scores, rows, k, out, out_raw, return_raw)
    torch.ops.nsa.topk_transform(scores, lengths, k, rows_per_request or 0, row_starts, row_to_request, t,
                                 page_table, offsets, out, out_raw, o)
    return (out, out_raw) if out_raw is not None else out


def _logits_buffer(q: torch.Tensor, page_table: torch.Tensor, width: Optional[int], page_size: int) -> torch.Tensor:
    """float32 [B*N, width]; width defaults to the table's capacity (columns * page_size)."""
    rows = q.shape[0] * q.shape[1] if q.dim() == 4 else 0
    if width is None:
        width = page_table.shape[1] * page_size if page_table.dim() == 2 else 0
    return torch.empty((rows, width), dtype=torch.float32, device=q.device)


@_writes("out")
def _paged_mqa_logits(q: torch.Tensor, weights: torch.Tensor, cache: torch.Tensor, context_lens: torch.Tensor,
                      page_table: torch.Tensor, out: torch.Tensor, page_size: int) -> None:
    _indexer.paged_mqa_logits(q, weights, cache, context_lens, page_table, out=out, page_size=page_size)


def paged_mqa_logits(q: torch.Tensor, weights: torch.Tensor, cache: torch.Tensor, context_lens: torch.Tensor,
                     page_table: torch.Tensor, *, width: Optional[int] = None, out: Optional[torch.Tensor] = None,
                     page_size: int = _indexer.PAGE_SIZE) -> torch.Tensor:
    """:func:`nsa.paged_mqa_logits` as ``torch.ops.nsa.paged_mqa_logits``;
    allocates ``out`` with torch when not given."""
    if out is None:
        out = _logits_buffer(q, page_table, width, page_size)
    torch.ops.nsa.paged_mqa_logits(q, weights, cache, context_lens, page_table, out, page_size)
    return out


@_writes("workspace", "out", "out_raw")
def _indexer_topk(q: torch.Tensor, weights: torch.Tensor, cache: torch.Tensor, context_lens: torch.Tensor,
                  page_table: torch.Tensor, k: int, workspace: torch.Tensor, out: torch.Tensor,
                  out_raw: Optional[torch.Tensor], paged_output: bool, order: int) -> None:
    _indexer.indexer_topk(q, weights, cache, context_lens, page_table, k, workspace=workspace, out=out,
                          out_raw=out_raw, paged_output=paged_output, order=_TOPK_ORDERS[order])


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, cache: torch.Tensor, context_lens: torch.Tensor,
                 page_table: torch.Tensor, k: int = 2048, *, width: Optional[int] = None,
                 workspace: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
                 out_raw: Optional[torch.Tensor] = None, return_raw: bool = False, paged_output: bool = True,
                 order: str = "any"):
    """:func:`nsa.indexer_topk` as ``torch.ops.nsa.indexer_topk``; allocates
    the workspace and outputs with torch when not given."""
    o = _topk._choice("indexer_topk", "order", _topk._ORDERS, order)
    if workspace is None:
        workspace = _logits_buffer(q, page_table, width, _indexer.PAGE_SIZE)
    rows = q.shape[0] * q.shape[1] if q.dim() == 4 else 0
    out, out_raw = _index_outputs(q, rows, k, out, out_raw, return_raw)
    torch.ops.nsa.indexer_topk(q, weights, cache, context_lens, page_table, k, workspace, out, out_raw,
                               bool(paged_output), o)
    return (out, out_raw) if out_raw is not None else out


# ---------------------------------------------------------------- metadata

# A MetadataTargets reaches the custom op as its id() (registered by
# nsa.MetadataTargets itself, so nothing here mutates state while torch.compile
# traces), with the destination tensors it writes as mutated arguments.

def _destination_tensors(targets) -> List[torch.Tensor]:
    tensors = []  # plain loops: torch.compile traces this
    for d in targets.destinations:
        for name in _metadata.DESTINATION_FIELDS:
            t = d.get(name)
            if isinstance(t, torch.Tensor):
                tensors.append(t)
    return tensors


def _key(targets) -> int:
    if not isinstance(targets, _metadata.MetadataTargets):
        raise InvalidArgumentError(f"nsa.torch_ops: argument 'targets': expected nsa.MetadataTargets, "
                                   f"got {type(targets).__name__}")
    return id(targets)


def _lookup(key: int):
    targets = _metadata._live_targets.get(key)
    if targets is None:
        raise InvalidArgumentError(f"nsa.torch_ops: argument 'targets': no live nsa.MetadataTargets with id {key}")
    return targets


@_writes("destinations")
def _build_metadata(targets: int, destinations: List[torch.Tensor], seq_lens: torch.Tensor,
                    req_pool_indices: torch.Tensor, req_to_token: torch.Tensor, forward_mode: int, draft_tokens: int,
                    extend_lens: Optional[torch.Tensor], topk: int, page_size: int,
                    flashmla_num_splits: Optional[torch.Tensor], flashmla_metadata: Optional[torch.Tensor],
                    paged_mqa_layout: int, paged_mqa_clamp_min_len: bool) -> None:
    _metadata.build_metadata(_lookup(targets), seq_lens, req_pool_indices, req_to_token, mode=forward_mode,
                             draft_tokens=draft_tokens, extend_lens=extend_lens, topk=topk, page_size=page_size,
                             flashmla_num_splits=flashmla_num_splits, flashmla_metadata=flashmla_metadata,
                             paged_mqa_layout=paged_mqa_layout, paged_mqa_clamp_min_len=paged_mqa_clamp_min_len)


@_writes("destinations")
def _copy_metadata(targets: int, destinations: List[torch.Tensor], sources: List[Optional[torch.Tensor]],
                   forward_mode: int, batch_size: int, max_len: int, max_seqlen_k: int, seqlens_expanded_size: int) -> None:
    # sources: one entry per name of SOURCE_FIELDS (None where not given)
    _metadata.copy_metadata(_lookup(targets), dict(zip(_metadata.SOURCE_FIELDS, sources)), mode=forward_mode,
                            batch_size=batch_size,
                            max_len=max_len, max_seqlen_k=max_seqlen_k, seqlens_expanded_size=seqlens_expanded_size)


def build_metadata(targets, seq_lens: torch.Tensor, req_pool_indices: torch.Tensor, req_to_token: torch.Tensor, *,
                   mode=_metadata.ForwardMode.DECODE, draft_tokens: int = 1,
                   extend_lens: Optional[torch.Tensor] = None, topk: int = 2048, page_size: int = 64,
                   flashmla_num_splits: Optional[torch.Tensor] = None,
                   flashmla_metadata: Optional[torch.Tensor] = None,
                   paged_mqa_layout=_metadata.PagedMqaLayout.G4, paged_mqa_clamp_min_len: bool = False) -> None:
    """:func:`nsa.build_metadata` as ``torch.ops.nsa.build_metadata``."""
    torch.ops.nsa.build_metadata(_key(targets), _destination_tensors(targets), seq_lens, req_pool_indices,
                                 req_to_token, _metadata._mode("build_metadata", mode), draft_tokens, extend_lens,
                                 topk, page_size, flashmla_num_splits, flashmla_metadata,
                                 _metadata._layout("build_metadata", paged_mqa_layout), bool(paged_mqa_clamp_min_len))


def copy_metadata(targets, sources: dict, *, mode, batch_size: int, max_len: int = 0, max_seqlen_k: int = 0,
                  seqlens_expanded_size: int = 0) -> None:
    """:func:`nsa.copy_metadata` as ``torch.ops.nsa.copy_metadata``."""
    unknown = set(sources) - set(_metadata.SOURCE_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"nsa.copy_metadata: argument 'sources': unknown fields {sorted(unknown)}; "
                                   f"expected some of {list(_metadata.SOURCE_FIELDS)}")
    torch.ops.nsa.copy_metadata(_key(targets), _destination_tensors(targets),
                                [sources.get(name) for name in _metadata.SOURCE_FIELDS],
                                _metadata._mode("copy_metadata", mode), batch_size, max_len, max_seqlen_k,
                                seqlens_expanded_size)
