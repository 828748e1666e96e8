// CUDA backend of the index-cache ops: page-size and type dispatch onto the
// header-only kernels in nsa/cuda/index_cache.cuh, launch-status check,
// nothing else. `checked` (device memory) non-null selects the checked kernels.
#include "backends.h"
#include "common/dispatch.h"
#include "cuda/cuda_check.h"
#include "nsa/cuda/index_cache.cuh"

namespace nsa {
namespace cuda {

namespace k = ::nsa::kernels;

void quantize_and_store_k(cudaStream stream, DeviceError* checked, IndexCache cache, const void* kv, int64_t n,
                          int64_t k_ld, const int64_t* slots, ScaleMode mode, KDtype k_dtype) {
  const k::StoreChecks checks{checked, cache.num_pages * cache.page_size};
  NSA_DISPATCH_PAGE_SIZE(cache.page_size, kPage, [&] {
    NSA_CUDA_CHECK(k::invoke_quantize_and_store_k<kPage>(cache.data, kv, k_dtype, n, k_ld, slots, mode,
                                                         current_device_sm_count(), stream, checks));
  });
}

void store_k_and_s(cudaStream stream, DeviceError* checked, IndexCache cache, const uint8_t* kv, int64_t n,
                   int64_t k_ld, const float* scale, const int64_t* slots) {
  const k::StoreChecks checks{checked, cache.num_pages * cache.page_size};
  NSA_DISPATCH_PAGE_SIZE(cache.page_size, kPage, [&] {
    NSA_CUDA_CHECK(k::invoke_store_k_and_s<kPage>(cache.data, kv, n, k_ld, scale, slots, current_device_sm_count(),
                                                  stream, checks));
  });
}

template <bool kWriteK, bool kWriteS>
static void gather_single(cudaStream stream, DeviceError* checked, ConstIndexCache cache, int64_t length,
                          Indices page_ids, uint8_t* out_k, float* out_s) {
  if (length == 0) return;
  const int64_t pages = (length + cache.page_size - 1) / cache.page_size;
  NSA_DISPATCH_PAGE_SIZE(cache.page_size, kPage, [&] {
    NSA_DISPATCH_INDEX(page_ids.type, TableT, [&] {
      // One request whose "table row" is the page list.
      k::GatherParams<TableT, int64_t> p{cache.data,
                                         static_cast<const TableT*>(page_ids.data),
                                         pages,
                                         pages,
                                         nullptr,
                                         length,
                                         1,
                                         out_k,
                                         out_s,
                                         length,
                                         cache.num_pages,
                                         checked};
      NSA_CUDA_CHECK((k::invoke_paged_gather<k::LengthForm::kHost, kWriteK, kWriteS, k::DefaultGatherPolicy<kPage>>(
          p, pages, current_device_sm_count(), stream)));
    });
  });
}

void gather_k(cudaStream stream, DeviceError* checked, ConstIndexCache cache, int64_t length, Indices page_ids,
              uint8_t* out_k) {
  gather_single<true, false>(stream, checked, cache, length, page_ids, out_k, nullptr);
}

void gather_s(cudaStream stream, DeviceError* checked, ConstIndexCache cache, int64_t length, Indices page_ids,
              float* out_s) {
  gather_single<false, true>(stream, checked, cache, length, page_ids, nullptr, out_s);
}

void gather_k_and_s(cudaStream stream, DeviceError* checked, ConstIndexCache cache, const PagedBatch& b, uint8_t* out_k,
                    float* out_s, int64_t out_capacity) {
  if (b.batch_size == 0) return;
  if (out_capacity == 0 && checked == nullptr) return;  // sum L <= capacity = 0: nothing to move
  // Items are (request, table column) pairs; columns past a request's pages are skipped in the kernel.
  const int64_t max_items = b.batch_size * b.table_cols;
  const bool cu = static_cast<bool>(b.cu_seq_lens);
  const Indices lens = cu ? b.cu_seq_lens : b.seq_lens;
  NSA_DISPATCH_PAGE_SIZE(cache.page_size, kPage, [&] {
    using Policy = k::DefaultGatherPolicy<kPage>;
    NSA_DISPATCH_INDEX(b.page_table.type, TableT, [&] {
      NSA_DISPATCH_INDEX(lens.type, LenT, [&] {
        k::GatherParams<TableT, LenT> p{cache.data,
                                        static_cast<const TableT*>(b.page_table.data),
                                        b.table_cols,
                                        b.table_ld,
                                        static_cast<const LenT*>(lens.data),
                                        0,
                                        b.batch_size,
                                        out_k,
                                        out_s,
                                        out_capacity,
                                        cache.num_pages,
                                        checked};
        const int sms = current_device_sm_count();
        const cudaError_t err =
            cu ? k::invoke_paged_gather<k::LengthForm::kCuSeqLens, true, true, Policy>(p, max_items, sms, stream)
               : k::invoke_paged_gather<k::LengthForm::kSeqLens, true, true, Policy>(p, max_items, sms, stream);
        NSA_CUDA_CHECK(err);
      });
    });
  });
}

}  // namespace cuda
}  // namespace nsa
