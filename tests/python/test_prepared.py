"""Prepared calls (nsa.prepare_*): validated once, replayed with whatever the
bound arrays hold at each call, equal to the plain op; bad arguments raise at
prepare time; the prepared call keeps its arrays alive."""

import gc
import weakref

import numpy as np
import pytest

import nsa
import nsa_reference as ref
from conftest import POISON, random_cache
from test_metadata import SENTINEL, check_destination, make_destination, page_aligned_req_to_token


def test_prepared_gather_reads_current_contents(rng):
    cache = random_cache(rng, 8)
    lengths = np.array([5, 64, 0, 70], np.int32)
    table = np.zeros((4, 3), np.int32)
    capacity = 4 * 3 * 64 + 5
    out_k = np.full((capacity, 128), POISON, np.uint8)
    out_s = np.full(capacity, np.nan, np.float32)
    call = nsa.prepare_gather_k_and_s(cache, table, lengths, out_k=out_k, out_s=out_s)
    assert isinstance(call, nsa.PreparedCall) and call.op == "gather_k_and_s"
    for _ in range(3):  # new lengths, page ids and cache bytes in place, then replay
        lengths[:] = rng.integers(0, 3 * 64 + 1, size=4)
        table[:] = rng.integers(0, 8, size=table.shape)
        cache[:] = random_cache(rng, 8)
        out_k.fill(POISON)
        call()
        total = int(lengths.sum())
        ek, es = ref.gather_k_and_s(cache, table, lengths)
        np.testing.assert_array_equal(out_k[:total], ek)
        np.testing.assert_array_equal(out_s[:total].view(np.uint32), es.view(np.uint32))
        assert (out_k[total:] == POISON).all()


def test_prepared_gather_validates_at_prepare_time(rng):
    cache = random_cache(rng, 2)
    out_k = np.zeros((4, 128), np.uint8)
    with pytest.raises(nsa.InvalidArgumentError, match="'out_s'"):
        nsa.prepare_gather_k_and_s(cache, np.zeros((1, 1), np.int32), np.ones(1, np.int32), out_k=out_k,
                                   out_s=np.zeros((4, 3), np.float32))
    with pytest.raises(nsa.InvalidArgumentError, match="exactly one of the two"):
        nsa.prepare_gather_k_and_s(cache, np.zeros((1, 1), np.int32), out_k=out_k, out_s=np.zeros(4, np.float32))


def test_prepared_gather_checks_contents_at_each_call(rng):
    cache = random_cache(rng, 2)
    lengths = np.array([64], np.int32)
    out_k = np.full((64, 128), POISON, np.uint8)
    call = nsa.prepare_gather_k_and_s(cache, np.array([[1, 0]], np.int32), lengths, out_k=out_k,
                                      out_s=np.zeros(64, np.float32))
    lengths[0] = 65  # past the outputs' 64 rows: rejected by the call, nothing written
    with pytest.raises(nsa.InvalidArgumentError, match="out_capacity"):
        call()
    assert (out_k == POISON).all()


def test_prepared_call_keeps_arrays_alive(rng):
    cache = random_cache(rng, 2)
    expected = ref.gather_k_and_s(cache, np.array([[1]], np.int32), np.array([64], np.int32))
    out_k = np.zeros((64, 128), np.uint8)
    bound_cache = cache.copy()
    cache_ref = weakref.ref(bound_cache)
    call = nsa.prepare_gather_k_and_s(bound_cache, np.array([[1]], np.int32), np.array([64], np.int32),
                                      out_k=out_k, out_s=np.zeros(64, np.float32))
    del cache, bound_cache
    gc.collect()
    assert cache_ref() is not None  # held by the prepared call, not by this test
    call()
    np.testing.assert_array_equal(out_k, expected[0])
    del call
    gc.collect()
    assert cache_ref() is None  # and released with it


@pytest.mark.parametrize("mode", list(nsa.ForwardMode))
def test_prepared_build_metadata_equals_reference_every_replay(rng, mode):
    bs, n, width, topk = 5, 3, 300, 128
    pool_rows = bs + 2
    req_to_token = page_aligned_req_to_token(rng, pool_rows, width)
    seq_lens = np.zeros(bs, np.int64)
    rpi = np.zeros(bs, np.int64)
    extend = np.zeros(bs, np.int64) if mode == nsa.ForwardMode.DRAFT_EXTEND else None
    max_rows = bs if mode == nsa.ForwardMode.DECODE else bs * n
    # The destinations are reached only through the targets, which only the prepared call holds.
    targets = nsa.MetadataTargets([make_destination(rng, max_rows, bs, width, pad=1, real_cols=-(-width // 64))
                                   for _ in range(2)])
    dests = targets._destinations
    call = nsa.prepare_build_metadata(targets, seq_lens, rpi, req_to_token, mode=mode, draft_tokens=n,
                                      extend_lens=extend, topk=topk)
    targets_ref = weakref.ref(targets)
    del targets
    gc.collect()
    assert targets_ref() is not None  # kept alive by the prepared call
    for _ in range(3):
        seq_lens[:] = rng.integers(1, width - n + 1, size=bs)
        rpi[:] = rng.permutation(pool_rows)[:bs]
        if extend is not None:
            extend[:] = rng.integers(0, n + 1, size=bs)
        for d in dests:
            for v in d.values():
                v.fill(SENTINEL)
        call()
        fields = ref.build_fields(int(mode), seq_lens, rpi, req_to_token, draft_tokens=n, extend_lens=extend,
                                  topk=topk)
        for d in dests:
            check_destination(d, fields, mode)
