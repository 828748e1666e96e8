"""NSA Runtime: the runtime data path of DeepSeek Sparse Attention serving.

Ops take any DLPack-capable arrays (torch CPU/CUDA tensors zero-copy, numpy,
cupy). Outputs are passed in (``out=``) or allocated with the caller's own
framework. CUDA work runs on the caller's current stream or ``stream=``.
See docs/python.md.
"""

from . import _nsa
from .errors import CudaError, DTypeError, InvalidArgumentError, NsaError, UnsupportedError

_nsa._register_errors(InvalidArgumentError, DTypeError, UnsupportedError, CudaError)

from .metadata import (  # noqa: E402  (errors must be registered first)
    ForwardMode,
    MetadataTargets,
    PagedMqaLayout,
    build_metadata,
    copy_metadata,
    paged_mqa_schedule,
    prepare_build_metadata,
    upload_metadata_targets,
)
from .ops import (  # noqa: E402
    ScaleMode,
    gather_k,
    gather_k_and_s,
    gather_s,
    prepare_gather_k_and_s,
    quantize_and_store_k,
    store_k_and_s,
)
from .prepared import PreparedCall  # noqa: E402
from .topk import topk_transform  # noqa: E402
from .indexer import indexer_topk, paged_mqa_logits  # noqa: E402

__version__: str = _nsa.__version__


# Python functions (not the extension's) so that inspect.signature and help() work.
def cuda_built() -> bool:
    """Whether this build has the CUDA backend (nvcc was found when it was configured)."""
    return _nsa.cuda_built()


def cuda_device_count() -> int:
    """CUDA devices visible to the CUDA runtime (0 without a GPU, a usable driver or a CUDA build)."""
    return _nsa.cuda_device_count()


def set_cpu_threads(threads: int) -> None:
    """Threads of the CPU backend (0: one per available core, the default)."""
    _nsa.set_cpu_threads(threads)


PAGE_SIZE = 64
HEAD_DIM = 128
BYTES_PER_PAGE = 8448

__all__ = [
    "BYTES_PER_PAGE", "CudaError", "DTypeError", "ForwardMode", "HEAD_DIM", "InvalidArgumentError",
    "MetadataTargets", "NsaError", "PAGE_SIZE", "PreparedCall", "ScaleMode", "UnsupportedError", "build_metadata",
    "copy_metadata", "cuda_built", "cuda_device_count", "gather_k", "gather_k_and_s", "gather_s",
    "prepare_build_metadata", "prepare_gather_k_and_s", "quantize_and_store_k", "set_cpu_threads", "store_k_and_s",
    "topk_transform", "upload_metadata_targets", "paged_mqa_logits", "indexer_topk", "PagedMqaLayout",
    "paged_mqa_schedule",
]
