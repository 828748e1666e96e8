// CUDA kernels and launchers of the NSA attention metadata ops (spec:
// docs/spec/metadata.md). Header-only so an engine can fuse them into its own code; the
// public API in nsa/metadata.h validates arguments and then calls the
// launchers below.
//
// Both ops are ONE launch for any number of destination sets. The destination
// descriptors (MetadataBuffers) live in a small device array written once at
// setup (upload_metadata_targets); kernels read them through the read-only
// path (every lane of a warp reads the same descriptor: one broadcast L1 hit).
//
// Work split. Page-table rows dominate the bytes; they are cut into warp
// items of kColsPerItem columns (32 lanes x kVecPerLane int4). A warp loads
// its item's source columns ONCE (all vectors first, so several 16-byte loads
// are in flight per lane) and stores them into every query row that repeats
// the request (TARGET_VERIFY / DRAFT_EXTEND) of every destination. A job
// with at most one item per CTA puts item c on CTA c, so even a single
// request's items land on different SMs; larger jobs give each CTA a
// contiguous range of items, so one SM's warps work on the same few rows
// (memory pages) at a time. (build's first item per warp, stored before its
// chunk walk, still interleaves CTAs: warp w of CTA c has item w * CTAs + c.)
//
// Launchers take raw pointers, sizes and a stream, enqueue exactly one kernel
// and return the launch status (cudaGetLastError). They never allocate and
// never synchronise. Index math is 64-bit, except the build kernel's column
// math (32-bit: rows are int32 cache lengths); every grid is 1-D.
//
// Layout (include/nsa/cuda/metadata/):
//   launch_shape.cuh          CTA size and grid size of both kernels
//   rows.cuh                  row-chunk loads and stores (16-byte when aligned)
//   targets.cuh               destination descriptors: staged in shared memory
//   fast_divisor.cuh          division by a per-launch constant
//   copy.cuh                  copy_metadata: kernel + invoke_copy_metadata
//   build.cuh                 build_metadata: kernel (a router over the three
//                             paths below) + policy + invoke_build_metadata
//   build_params.cuh          BuildParams, policies, scan words, shared memory
//   build_inputs.cuh          per-request inputs, query rows, validation
//   build_scalars.cuh         path 1, CTA 0: per-request and per-row scalars
//   build_items_one_pass.cuh  path 2: item CTAs when each warp has <= 1 item
//   build_items_chunked.cuh   path 3: item CTAs walking the batch in chunks
//   build_page_items.cuh      page-table item load/store shared by paths 2, 3
//   build_flashmla.cuh        FlashMLA schedule copies
//   build_schedule.cuh        DeepGEMM paged-MQA schedule: build's optional
//                             last CTA, and paged_mqa_schedule's one-CTA kernel
#pragma once

#include "nsa/cuda/metadata/build.cuh"
#include "nsa/cuda/metadata/copy.cuh"
