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

from . import metadata as _metadata
from . import ops as _ops
from .errors import InvalidArgumentError

_HEAD_DIM = 128


def _scale_mode(mode) -> int:
    try:
        return _ops._SCALE_MODES[mode]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"nsa.quantize_and_store_k: argument 'mode': expected 'fp32' or 'ue8m0', got {mode!r}") from None


# ---------------------------------------------------------------- index cache

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


@_writes("cache")
def _quantize_and_store_k(cache: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, scale_mode: int) -> None:
    _ops.quantize_and_store_k(cache, k, slots, mode=scale_mode)


@_writes("cache")
def _store_k_and_s(cache: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor) -> None:
    _ops.store_k_and_s(cache, k, scale, slots)


@_writes("out")
def _gather_k(cache: torch.Tensor, length: int, page_ids: torch.Tensor, out: torch.Tensor) -> None:
    _ops.gather_k(cache, length, page_ids, out=out)


@_writes("out")
def _gather_s(cache: torch.Tensor, length: int, page_ids: torch.Tensor, out: torch.Tensor) -> None:
    _ops.gather_s(cache, length, page_ids, out=out)


@_writes("out_k", "out_s")
def _gather_k_and_s(cache: torch.Tensor, page_table: torch.Tensor, seq_lens: Optional[torch.Tensor],
                    cu_seq_lens: Optional[torch.Tensor], out_k: torch.Tensor, out_s: torch.Tensor) -> None:
    _ops.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens=cu_seq_lens, out_k=out_k, out_s=out_s)


def quantize_and_store_k(cache: torch.Tensor, k: torch.Tensor, slots: torch.Tensor, *, mode="fp32") -> None:
    """:func:`nsa.quantize_and_store_k` as ``torch.ops.nsa.quantize_and_store_k``."""
    torch.ops.nsa.quantize_and_store_k(cache, k, slots, _scale_mode(mode))


def store_k_and_s(cache: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, slots: torch.Tensor) -> None:
    """:func:`nsa.store_k_and_s` as ``torch.ops.nsa.store_k_and_s``."""
    torch.ops.nsa.store_k_and_s(cache, k, scale, slots)


def gather_k(cache: torch.Tensor, length: int, page_ids: torch.Tensor, *,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`nsa.gather_k` as ``torch.ops.nsa.gather_k``; allocates ``out`` with torch when not given."""
    if out is None:
        out = torch.empty((length, _HEAD_DIM), dtype=torch.uint8, device=cache.device)
    torch.ops.nsa.gather_k(cache, length, page_ids, out)
    return out


def gather_s(cache: torch.Tensor, length: int, page_ids: torch.Tensor, *,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`nsa.gather_s` as ``torch.ops.nsa.gather_s``; allocates ``out`` with torch when not given."""
    if out is None:
        out = torch.empty((length,), dtype=torch.float32, device=cache.device)
    torch.ops.nsa.gather_s(cache, length, page_ids, out)
    return out


def gather_k_and_s(cache: torch.Tensor, page_table: torch.Tensor, seq_lens: Optional[torch.Tensor] = None, *,
                   cu_seq_lens: Optional[torch.Tensor] = None, capacity: Optional[int] = None,
                   out_k: Optional[torch.Tensor] = None,
                   out_s: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`nsa.gather_k_and_s` as ``torch.ops.nsa.gather_k_and_s``. Outputs
    not given are allocated with ``capacity`` rows (required here: reading the
    lengths would be a host sync, which a compiled graph cannot have)."""
    if out_k is None or out_s is None:
        if capacity is None:
            raise InvalidArgumentError(
                "nsa.torch_ops.gather_k_and_s: argument 'capacity': expected the number of output rows when "
                "out_k/out_s are not given, got None")
        if out_k is None:
            out_k = torch.empty((capacity, _HEAD_DIM), dtype=torch.uint8, device=cache.device)
        if out_s is None:
            out_s = torch.empty((capacity,), dtype=torch.float32, device=cache.device)
    torch.ops.nsa.gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, out_k, out_s)
    return out_k, out_s


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
                    flashmla_num_splits: Optional[torch.Tensor], flashmla_metadata: Optional[torch.Tensor]) -> None:
    _metadata.build_metadata(_lookup(targets), seq_lens, req_pool_indices, req_to_token, mode=forward_mode,
                             draft_tokens=draft_tokens, extend_lens=extend_lens, topk=topk, page_size=page_size,
                             flashmla_num_splits=flashmla_num_splits, flashmla_metadata=flashmla_metadata)


@_writes("destinations")
def _copy_metadata(targets: int, destinations: List[torch.Tensor], sources: List[Optional[torch.Tensor]],
                   forward_mode: int, batch_size: int, max_len: int, max_seqlen_k: int, seqlens_expanded_size: int) -> None:
    # sources: one entry per name of DESTINATION_FIELDS (None where not given)
    _metadata.copy_metadata(_lookup(targets), dict(zip(_metadata.DESTINATION_FIELDS, sources)), mode=forward_mode,
                            batch_size=batch_size,
                            max_len=max_len, max_seqlen_k=max_seqlen_k, seqlens_expanded_size=seqlens_expanded_size)


def build_metadata(targets, seq_lens: torch.Tensor, req_pool_indices: torch.Tensor, req_to_token: torch.Tensor, *,
                   mode=_metadata.ForwardMode.DECODE, draft_tokens: int = 1,
                   extend_lens: Optional[torch.Tensor] = None, topk: int = 2048, page_size: int = 64,
                   flashmla_num_splits: Optional[torch.Tensor] = None,
                   flashmla_metadata: Optional[torch.Tensor] = None) -> None:
    """:func:`nsa.build_metadata` as ``torch.ops.nsa.build_metadata``."""
    torch.ops.nsa.build_metadata(_key(targets), _destination_tensors(targets), seq_lens, req_pool_indices,
                                 req_to_token, _metadata._mode("build_metadata", mode), draft_tokens, extend_lens,
                                 topk, page_size, flashmla_num_splits, flashmla_metadata)


def copy_metadata(targets, sources: dict, *, mode, batch_size: int, max_len: int = 0, max_seqlen_k: int = 0,
                  seqlens_expanded_size: int = 0) -> None:
    """:func:`nsa.copy_metadata` as ``torch.ops.nsa.copy_metadata``."""
    unknown = set(sources) - set(_metadata.DESTINATION_FIELDS)
    if unknown:
        raise InvalidArgumentError(f"nsa.copy_metadata: argument 'sources': unknown fields {sorted(unknown)}; "
                                   f"expected some of {list(_metadata.DESTINATION_FIELDS)}")
    torch.ops.nsa.copy_metadata(_key(targets), _destination_tensors(targets),
                                [sources.get(name) for name in _metadata.DESTINATION_FIELDS],
                                _metadata._mode("copy_metadata", mode), batch_size, max_len, max_seqlen_k,
                                seqlens_expanded_size)
