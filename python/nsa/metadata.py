"""Attention metadata ops (metadata.md): build on the device, or copy
precomputed fields, into any number of destination sets in one launch.

Destinations are described once by a :class:`MetadataTargets` (typically the
captured CUDA-graph tensors of each attention backend) and reused every step.
All metadata tensors are int32.
"""

import enum
import weakref

from . import _frameworks, _nsa
from .errors import InvalidArgumentError


class ForwardMode(enum.IntEnum):
    DECODE = 0
    TARGET_VERIFY = 1
    DRAFT_EXTEND = 2


class PagedMqaLayout(enum.IntEnum):
    """Generation of DeepGEMM's paged-MQA schedule layout (metadata.md §10)."""
    G4 = 0  # DeepGEMM >= 88965b0 and sgl-deep-gemm 0.2.5: extra units to the last SMs
    G1 = 1  # DeepGEMM <= 477618c (v2.1.x): extra units to the first SMs


_MODE_NAMES = {"decode": 0, "target_verify": 1, "draft_extend": 2}
_LAYOUT_NAMES = {"g4": 0, "g1": 1}

DESTINATION_FIELDS = ("cache_seqlens", "cu_seqlens_k", "page_table_1", "seqlens_expanded", "nsa_cache_seqlens",
                      "nsa_cu_seqlens_k", "real_page_table", "flashmla_num_splits", "flashmla_metadata",
                      "paged_mqa_schedule")
# What copy_metadata takes: every field but the schedule, which only build_metadata computes.
SOURCE_FIELDS = DESTINATION_FIELDS[:-1]


# Every live MetadataTargets by id(): nsa.torch_ops passes targets to its custom
# ops as that int (an op schema has no opaque objects).
_live_targets = weakref.WeakValueDictionary()


def _mode(op, mode):
    if isinstance(mode, str):
        value = _MODE_NAMES.get(mode.lower())
    elif isinstance(mode, int):
        value = int(mode) if int(mode) in (0, 1, 2) else None
    else:
        value = None
    if value is None:
        raise InvalidArgumentError(f"nsa.{op}: argument 'mode': expected a ForwardMode, 0/1/2 or one of "
                                   f"{sorted(_MODE_NAMES)}, got {mode!r}")
    return value


def _layout(op, layout):
    if isinstance(layout, str):
        value = _LAYOUT_NAMES.get(layout.lower())
    elif isinstance(layout, int):
        value = int(layout) if int(layout) in (0, 1) else None
    else:
        value = None
    if value is None:
        raise InvalidArgumentError(f"nsa.{op}: argument 'paged_mqa_layout': expected a PagedMqaLayout, 0/1 or one "
                                   f"of {sorted(_LAYOUT_NAMES)}, got {layout!r}")
    return value


def _first_array(dicts):
    for d in dicts:
        for name in DESTINATION_FIELDS:
            if d.get(name) is not None:
                return d[name]
    raise InvalidArgumentError("nsa.MetadataTargets: argument 'destinations': expected dicts holding at least "
                               "'cache_seqlens', got no arrays")


class MetadataTargets:
    """Destination sets of build_metadata / copy_metadata, uploaded once.

    ``destinations`` is a list of dicts (or one dict), one per destination set,
    mapping field names to int32 arrays on one device:

    ==========================  ==================================  =========
    field                       shape                               required
    ==========================  ==================================  =========
    ``cache_seqlens``           ``[max_batch]``                     yes
    ``cu_seqlens_k``            ``[max_batch + 1]``                 yes
    ``page_table_1``            ``[max_rows, W]``, any row stride   yes
    ``seqlens_expanded``        ``[max_rows]``                      no
    ``nsa_cache_seqlens``       ``[max_rows]``                      yes
    ``nsa_cu_seqlens_k``        ``[max_rows + 1]``                  yes
    ``real_page_table``         ``[max_rows, C]``, any row stride   no
    ``flashmla_num_splits``     ``[max_rows + 1]``                  no
    ``flashmla_metadata``       any contiguous shape                no
    ``paged_mqa_schedule``      ``[num_sms + 1, 2]``, contiguous    no
    ==========================  ==================================  =========

    ``paged_mqa_schedule`` receives DeepGEMM's paged-MQA schedule for
    ``num_sms`` SMs (what ``get_paged_mqa_logits_metadata`` returns), computed
    by :func:`build_metadata` from the cache lengths; copy_metadata leaves it.

    ``max_rows`` (the row capacity) is the smallest of the per-row capacities
    above, or an int ``"max_rows"`` entry no larger than that; ``max_batch``
    (the request capacity, bs of a call) likewise from the two per-request
    arrays or a ``"max_batch"`` entry. The object keeps every
    array alive and owns the device table (allocated with the arrays' framework,
    e.g. torch's caching allocator), uploaded on ``stream`` (default: current).
    """

    def __init__(self, destinations, *, stream=None):
        if isinstance(destinations, dict):
            destinations = [destinations]
        self._destinations = [dict(d) for d in destinations]
        if not self._destinations:
            raise InvalidArgumentError("nsa.MetadataTargets: argument 'destinations': expected at least one "
                                       "destination dict, got an empty list")
        like = _first_array(self._destinations)
        fw = _frameworks.of(like)
        nbytes = _nsa.metadata_targets_workspace_bytes(len(self._destinations))
        # int64 elements keep the table 8-byte aligned with any allocator.
        self._workspace = fw.empty(like, ((nbytes + 7) // 8,), "int64")
        self._handle = _nsa.upload_metadata_targets(self._destinations, self._workspace,
                                                    _frameworks.resolve_stream(fw, like, stream))
        self._framework = fw
        self._like = like
        _live_targets[id(self)] = self

    @property
    def count(self):
        return self._handle.count

    @property
    def destinations(self):
        return self._destinations

    def max_rows(self, index=0):
        return self._handle.max_rows(index)

    def __len__(self):
        return self.count

    def __repr__(self):
        return f"MetadataTargets(count={self.count}, max_rows={[self.max_rows(i) for i in range(self.count)]})"


def upload_metadata_targets(destinations, *, stream=None):
    """Same as ``MetadataTargets(destinations, stream=stream)``."""
    return MetadataTargets(destinations, stream=stream)


def build_metadata(targets, seq_lens, req_pool_indices, req_to_token, *, mode=ForwardMode.DECODE, draft_tokens=1,
                   extend_lens=None, topk=2048, page_size=64, flashmla_num_splits=None, flashmla_metadata=None,
                   paged_mqa_layout=PagedMqaLayout.G4, paged_mqa_clamp_min_len=False, stream=None):
    """Compute every metadata field of one mode on the device and write all
    destinations of ``targets`` in one launch (metadata.md §4, §5.6).

    ``seq_lens`` and ``req_pool_indices`` are int32/int64 ``[bs]``;
    ``req_to_token`` int32 ``[pool_rows, row_width]``; ``extend_lens`` ``[bs]``
    (DRAFT_EXTEND only); ``draft_tokens`` is N (TARGET_VERIFY query tokens per
    request, DRAFT_EXTEND max e_b). Optional FlashMLA schedule tensors are
    copied unchanged into destinations that have them. No host sync.
    ``real_page_table`` entries are ``slot / page_size`` rounded toward zero (a
    negative, unset slot above ``-page_size`` gives 0); SGLang's torch ``//``
    floors (-1). Rows only read their first ``ceil(L / page_size)`` entries,
    which hold valid (non-negative) slots.

    Destinations with ``paged_mqa_schedule`` get DeepGEMM's paged-MQA schedule
    (metadata.md §10): one row per request with its cache length, next_n = 1
    in DECODE and ``draft_tokens`` otherwise, in ``paged_mqa_layout`` (G4 or
    G1); ``paged_mqa_clamp_min_len`` counts every length as at least 1 (the
    all-zero hazard; clamp the logits kernel's context_lens the same way).
    """
    if not isinstance(targets, MetadataTargets):
        raise InvalidArgumentError(f"nsa.build_metadata: argument 'targets': expected nsa.MetadataTargets, "
                                   f"got {type(targets).__name__}")
    fw = _frameworks.of(seq_lens)
    _nsa.build_metadata(targets._handle, _mode("build_metadata", mode), draft_tokens, topk, page_size, seq_lens,
                        req_pool_indices, req_to_token, extend_lens, flashmla_num_splits, flashmla_metadata,
                        _layout("build_metadata", paged_mqa_layout), bool(paged_mqa_clamp_min_len),
                        _frameworks.resolve_stream(fw, seq_lens, stream))


def prepare_build_metadata(targets, seq_lens, req_pool_indices, req_to_token, *, mode=ForwardMode.DECODE,
                           draft_tokens=1, extend_lens=None, topk=2048, page_size=64, flashmla_num_splits=None,
                           flashmla_metadata=None, paged_mqa_layout=PagedMqaLayout.G4, paged_mqa_clamp_min_len=False):
    """:func:`build_metadata` validated once and bound to these arrays; returns
    a :class:`nsa.PreparedCall` (``call()`` or ``call(stream=...)``) that builds
    from the values the arrays hold at each call. It keeps ``targets`` alive."""
    from .prepared import PreparedCall

    if not isinstance(targets, MetadataTargets):
        raise InvalidArgumentError(f"nsa.build_metadata: argument 'targets': expected nsa.MetadataTargets, "
                                   f"got {type(targets).__name__}")
    native = _nsa.prepare_build_metadata(targets._handle, _mode("build_metadata", mode), draft_tokens, topk,
                                         page_size, seq_lens, req_pool_indices, req_to_token, extend_lens,
                                         flashmla_num_splits, flashmla_metadata,
                                         _layout("build_metadata", paged_mqa_layout), bool(paged_mqa_clamp_min_len))
    return PreparedCall(native, _frameworks.of(seq_lens), seq_lens, keep=targets)


def copy_metadata(targets, sources, *, mode, batch_size, max_len=0, max_seqlen_k=0, seqlens_expanded_size=0,
                  stream=None):
    """Copy precomputed fields (``sources``: a dict with the field names of
    :class:`MetadataTargets`) into every destination of ``targets`` in one
    launch, exactly as SGLang's fused_metadata_copy (metadata.md §6.2) does for
    one: ``max_len`` page-table columns in DECODE, ``max_seqlen_k`` otherwise;
    ``seqlens_expanded_size`` rows of the per-row arrays outside DECODE.
    Each source table is read with its own row stride (upstream reads
    ``page_indices[r * cols + c]`` with ``cols`` the copied columns;
    ``nsa.compat.sglang`` reproduces that).
    """
    if not isinstance(targets, MetadataTargets):
        raise InvalidArgumentError(f"nsa.copy_metadata: argument 'targets': expected nsa.MetadataTargets, "
                                   f"got {type(targets).__name__}")
    if not isinstance(sources, dict):
        raise InvalidArgumentError(f"nsa.copy_metadata: argument 'sources': expected a dict of arrays, "
                                   f"got {type(sources).__name__}")
    sources = {k: v for k, v in sources.items() if v is not None}
    like = sources.get("cache_seqlens")
    if like is None:
        raise InvalidArgumentError("nsa.copy_metadata: argument 'sources.cache_seqlens': expected an array, got None")
    fw = _frameworks.of(like)
    _nsa.copy_metadata(targets._handle, _mode("copy_metadata", mode), batch_size, max_len, max_seqlen_k,
                       seqlens_expanded_size, sources, _frameworks.resolve_stream(fw, like, stream))


def paged_mqa_schedule(context_lens, num_sms, *, out=None, layout=PagedMqaLayout.G4, clamp_min_len=False,
                       stream=None):
    """DeepGEMM's paged-MQA schedule on its own (metadata.md §10.4): what
    :func:`build_metadata` writes into ``paged_mqa_schedule``, from lengths
    given directly. ``context_lens`` is int32 ``[B]`` or ``[B, next_n]`` (any
    row stride; column ``next_n - 1`` is read); returns ``out``, int32
    ``[num_sms + 1, 2]`` (allocated with the framework of ``context_lens``
    when None). One launch on CUDA, no host sync."""
    fw = _frameworks.of(context_lens)
    if out is None:
        if not isinstance(num_sms, int) or isinstance(num_sms, bool) or num_sms < 1:
            raise InvalidArgumentError(f"nsa.paged_mqa_schedule: argument 'num_sms': expected an int >= 1, "
                                       f"got {num_sms!r}")
        out = fw.empty(context_lens, (num_sms + 1, 2), "int32")
    _nsa.paged_mqa_schedule(context_lens, out, _layout("paged_mqa_schedule", layout), bool(clamp_min_len),
                            _frameworks.resolve_stream(fw, context_lens, stream))
    return out
