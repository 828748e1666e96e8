"""Bad arguments raise a Python exception naming the argument and what was
expected, before anything is written."""

import numpy as np
import pytest

import nsa
from conftest import POISON, random_cache


def raises(exc, *fragments):
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self.ctx.__exit__(*a)
            for f in fragments:
                assert f in str(self.info.value), f"{f!r} not in {self.info.value}"
            return handled

    return _Check()


def test_error_classes():
    assert issubclass(nsa.DTypeError, TypeError) and issubclass(nsa.DTypeError, ValueError)
    assert issubclass(nsa.InvalidArgumentError, ValueError)
    assert issubclass(nsa.UnsupportedError, RuntimeError) and issubclass(nsa.CudaError, RuntimeError)
    assert all(issubclass(e, nsa.NsaError) for e in (nsa.DTypeError, nsa.UnsupportedError, nsa.CudaError))


def test_wrong_dtypes_name_the_argument(rng):
    cache = random_cache(rng, 2)
    out = np.full((10, 128), POISON, np.uint8)
    with raises(nsa.DTypeError, "gather_k", "'page_ids'", "int32 or int64", "float32"):
        nsa.gather_k(cache, 10, np.zeros(1, np.float32), out=out)
    with raises(nsa.DTypeError, "'out'", "uint8"):
        nsa.gather_k(cache, 10, np.zeros(1, np.int32), out=np.zeros((10, 128), np.int32))
    with raises(nsa.DTypeError, "'cache'", "uint8"):
        nsa.gather_k(cache.view(np.int32), 10, np.zeros(1, np.int32), out=out)
    with raises(nsa.DTypeError, "'slots'", "int64"):
        nsa.store_k_and_s(cache, np.zeros((3, 128), np.uint8), np.zeros(3, np.float32), np.zeros(3, np.int32))
    with raises(nsa.DTypeError, "'k'", "bfloat16"):
        nsa.quantize_and_store_k(cache, np.zeros((3, 128), np.float64), np.zeros(3, np.int64))
    assert (out == POISON).all()


def test_wrong_shapes_and_strides(rng):
    cache = random_cache(rng, 2)
    before = cache.copy()
    with raises(nsa.InvalidArgumentError, "'cache'", "8448"):
        nsa.gather_k(cache[:, :8000], 1, np.zeros(1, np.int32))
    with raises(nsa.InvalidArgumentError, "'page_ids'", "[>= 2]"):
        nsa.gather_k(cache, 65, np.zeros(1, np.int32))
    with raises(nsa.InvalidArgumentError, "'page_ids'", "unit stride"):
        nsa.gather_k(cache, 65, np.zeros(4, np.int32)[::2])
    with raises(nsa.InvalidArgumentError, "'k'", "[n, 128]"):
        nsa.store_k_and_s(cache, np.zeros((3, 64), np.uint8), np.zeros(3, np.float32), np.zeros(3, np.int64))
    with raises(nsa.InvalidArgumentError, "'k'", "unit column stride"):
        nsa.store_k_and_s(cache, np.zeros((3, 256), np.uint8)[:, ::2], np.zeros(3, np.float32), np.zeros(3, np.int64))
    with raises(nsa.InvalidArgumentError, "'scale'", "k.shape[0] = 3"):
        nsa.store_k_and_s(cache, np.zeros((3, 128), np.uint8), np.zeros(4, np.float32), np.zeros(3, np.int64))
    with raises(nsa.InvalidArgumentError, "'slots'", "[k.shape[0]] = [3]"):
        nsa.quantize_and_store_k(cache, np.zeros((3, 128), np.uint16), np.zeros(2, np.int64))
    with raises(nsa.InvalidArgumentError, "'out'", "contiguous"):
        nsa.gather_k(cache, 2, np.zeros(1, np.int32), out=np.zeros((2, 256), np.uint8)[:, :128])
    with raises(nsa.InvalidArgumentError, "'length'", ">= 0"):
        nsa.gather_k(cache, -1, np.zeros(1, np.int32), out=np.zeros((1, 128), np.uint8))
    with raises(nsa.InvalidArgumentError, "'mode'"):
        nsa.quantize_and_store_k(cache, np.zeros((3, 128), np.uint16), np.zeros(3, np.int64), mode="fp16")
    np.testing.assert_array_equal(cache, before)


def test_gather_k_and_s_arguments(rng):
    cache = random_cache(rng, 2)
    table = np.zeros((2, 2), np.int32)
    lens = np.array([3, 4], np.int32)
    with raises(nsa.InvalidArgumentError, "seq_lens/cu_seq_lens", "exactly one"):
        nsa.gather_k_and_s(cache, table, capacity=7)
    with raises(nsa.InvalidArgumentError, "seq_lens/cu_seq_lens", "neither"):  # not 'capacity'
        nsa.gather_k_and_s(cache, table)
    with raises(nsa.InvalidArgumentError, "seq_lens/cu_seq_lens", "both"):
        nsa.gather_k_and_s(cache, table, lens, cu_seq_lens=np.array([0, 3, 7], np.int32), capacity=7)
    with raises(nsa.InvalidArgumentError, "'page_table'", "batch_size = 3"):
        nsa.gather_k_and_s(cache, table, np.array([1, 1, 1], np.int32))
    with raises(nsa.InvalidArgumentError, "'out_s'"):
        nsa.gather_k_and_s(cache, table, lens, out_k=np.zeros((7, 128), np.uint8), out_s=np.zeros((7, 3), np.uint8))


def test_read_only_output_and_non_arrays(rng):
    cache = random_cache(rng, 1)
    out = np.zeros((4, 128), np.uint8)
    out.flags.writeable = False
    with raises(nsa.InvalidArgumentError, "'out'", "writable"):
        nsa.gather_k(cache, 4, np.zeros(1, np.int32), out=out)
    with raises(nsa.InvalidArgumentError, "'page_ids'", "DLPack"):
        nsa.gather_k(cache, 4, "not an array", out=np.zeros((4, 128), np.uint8))
    # read-only inputs are fine
    ids = np.zeros(1, np.int32)
    ids.flags.writeable = False
    nsa.gather_k(cache, 4, ids)


def test_cuda_stream_type_is_checked(rng):
    cache = random_cache(rng, 1)
    with pytest.raises(TypeError, match="stream"):
        nsa.gather_k(cache, 1, np.zeros(1, np.int32), stream="default")


def test_metadata_targets_errors():
    def dest(**over):
        d = {"cache_seqlens": np.zeros(4, np.int32), "cu_seqlens_k": np.zeros(5, np.int32),
             "page_table_1": np.zeros((4, 8), np.int32), "nsa_cache_seqlens": np.zeros(4, np.int32),
             "nsa_cu_seqlens_k": np.zeros(5, np.int32)}
        d.update(over)
        return {k: v for k, v in d.items() if v is not None}

    with raises(nsa.InvalidArgumentError, "destinations[0].cu_seqlens_k", "None"):
        nsa.MetadataTargets([dest(cu_seqlens_k=None)])
    with raises(nsa.InvalidArgumentError, "destinations[1].cache_seqlen", "unknown field"):
        nsa.MetadataTargets([dest(), dest(cache_seqlen=np.zeros(4, np.int32))])
    with raises(nsa.DTypeError, "destinations[0].page_table_1", "int32"):
        nsa.MetadataTargets([dest(page_table_1=np.zeros((4, 8), np.int64))])
    with raises(nsa.InvalidArgumentError, "destinations[0].max_rows"):
        nsa.MetadataTargets([dest(max_rows=99)])
    with raises(nsa.InvalidArgumentError, "destinations"):
        nsa.MetadataTargets([])

    d = dest()
    targets = nsa.MetadataTargets([d])
    r2t = np.zeros((2, 16), np.int32)
    with raises(nsa.InvalidArgumentError, "cache_seqlens", "batch size = 5"):
        nsa.build_metadata(targets, np.ones(5, np.int32), np.zeros(5, np.int32), r2t)
    with raises(nsa.InvalidArgumentError, "'req_pool_indices'", "[2]"):
        nsa.build_metadata(targets, np.ones(2, np.int32), np.zeros(3, np.int32), r2t)
    with raises(nsa.DTypeError, "'req_to_token'", "int32"):
        nsa.build_metadata(targets, np.ones(2, np.int32), np.zeros(2, np.int32), r2t.astype(np.int64))
    with raises(nsa.InvalidArgumentError, "'extend_lens'", "draft_extend"):
        nsa.build_metadata(targets, np.ones(2, np.int32), np.zeros(2, np.int32), r2t, mode="draft_extend",
                           draft_tokens=2)
    with raises(nsa.InvalidArgumentError, "'mode'"):
        nsa.build_metadata(targets, np.ones(2, np.int32), np.zeros(2, np.int32), r2t, mode="prefill")
    # the library's own checks come through too (max_rows 4 < bs * N = 8 rows)
    with raises(nsa.InvalidArgumentError, "max_rows"):
        nsa.build_metadata(targets, np.ones(2, np.int32), np.zeros(2, np.int32), r2t, mode="target_verify",
                           draft_tokens=4)
    assert (d["cache_seqlens"] == 0).all()
    src = {"cache_seqlens": np.ones(2, np.int32), "cu_seqlens_k": np.ones(3, np.int32),
           "page_table_1": np.ones((2, 8), np.int32), "nsa_cache_seqlens": np.ones(2, np.int32),
           "nsa_cu_seqlens_k": np.ones(3, np.int32)}
    with raises(nsa.InvalidArgumentError, "sources.page_table_1", "[2, 9]"):
        nsa.copy_metadata(targets, src, mode=0, batch_size=2, max_len=9)
    with raises(nsa.DTypeError, "sources.nsa_cache_seqlens", "int32"):
        nsa.copy_metadata(targets, dict(src, nsa_cache_seqlens=np.ones(2, np.int64)), mode=0, batch_size=2, max_len=8)
    assert (d["cache_seqlens"] == 0).all() and (d["page_table_1"] == 0).all()
    # two destinations sharing their arrays: the library rejects the call before writing
    twins = nsa.MetadataTargets([d, dict(d)])
    with raises(nsa.InvalidArgumentError, "'targets[1].", "expected no overlap with 'targets[0]."):
        nsa.build_metadata(twins, np.ones(2, np.int32), np.zeros(2, np.int32), r2t)
    assert (d["cache_seqlens"] == 0).all() and (d["page_table_1"] == 0).all()
