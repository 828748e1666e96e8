// NSA Runtime: runtime data path of DeepSeek Sparse Attention serving.
// Umbrella header; each op family lives in its own header.
#pragma once

#include "nsa/common.h"
#include "nsa/index_cache.h"
#include "nsa/indexer.h"
#include "nsa/metadata.h"
#include "nsa/topk.h"
#include "nsa/version.h"
