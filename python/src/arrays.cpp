// DLPack import and argument checks of the binding (see arrays.h).
#include "arrays.h"

#include <atomic>
#include <string>

#if defined(NSA_PY_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa_py {

namespace {

std::atomic<int> g_cpu_threads{0};
// Strong references kept for the life of the process (never released: a
// static nb::object would be released after the interpreter is gone).
PyObject* g_torch_tensor_type = nullptr;  // torch.Tensor once registered
PyObject* g_torch_to_dlpack = nullptr;    // torch.utils.dlpack.to_dlpack

DType dtype_of(nb::dlpack::dtype dt) {
  using Code = nb::dlpack::dtype_code;
  if (dt.lanes != 1) return DType::kOther;
  const auto code = static_cast<Code>(dt.code);
  if (code == Code::UInt && dt.bits == 8) return DType::kUint8;
  if (code == Code::UInt && dt.bits == 16) return DType::kUint16;
  if (code == Code::Int && dt.bits == 8) return DType::kInt8;
  if (code == Code::Int && dt.bits == 16) return DType::kInt16;
  if (code == Code::Int && dt.bits == 32) return DType::kInt32;
  if (code == Code::Int && dt.bits == 64) return DType::kInt64;
  if (code == Code::Float && dt.bits == 16) return DType::kFloat16;
  if (code == Code::Float && dt.bits == 32) return DType::kFloat32;
  if (code == Code::Float && dt.bits == 64) return DType::kFloat64;
  if (code == Code::Bfloat && dt.bits == 16) return DType::kBfloat16;
  return DType::kOther;
}

std::string py_type_name(nb::handle obj) {
  return nb::borrow<nb::str>(nb::handle(reinterpret_cast<PyObject*>(Py_TYPE(obj.ptr()))).attr("__qualname__")).c_str();
}

template <class ND>
void fill(Array& a, const ND& nd) {
  a.data = const_cast<void*>(static_cast<const void*>(nd.data()));
  a.dtype = dtype_of(nd.dtype());
  a.ndim = static_cast<int>(nd.ndim());
  for (int i = 0; i < a.ndim && i < Array::kMaxDims; ++i) {
    a.shape[i] = static_cast<int64_t>(nd.shape(i));
    a.stride[i] = nd.stride(i);
  }
  a.device_id = nd.device_id();
  // Pinned host memory is host memory; managed memory is treated as device memory.
  const int type = nd.device_type();
  a.device = (type == nb::device::cuda::value || type == nb::device::cuda_managed::value) ? DeviceKind::kCuda
                                                                                          : DeviceKind::kCpu;
}

bool supported_device(int type) {
  return type == nb::device::cpu::value || type == nb::device::cuda_host::value || type == nb::device::cuda::value ||
         type == nb::device::cuda_managed::value;
}

}  // namespace

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::kUint8: return "uint8";
    case DType::kInt8: return "int8";
    case DType::kInt16: return "int16";
    case DType::kUint16: return "uint16";
    case DType::kBfloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    default: return "an unsupported dtype";
  }
}

int64_t Array::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool Array::contiguous() const {
  if (numel() == 0) return true;  // producers report arbitrary strides for empty arrays
  int64_t expected = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] > 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

// Built from std::string and std::to_string only: std::ostringstream crashed in
// modules linked against a static libstdc++ (its locale facets are not shared
// with the interpreter's), which made every error message about an array a segfault.
std::string Array::describe() const {
  const auto list = [this](const int64_t* v) {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
  };
  return std::string(to_string(dtype)) + " " + list(shape) + " strides " + list(stride) + " on " +
         (device == DeviceKind::kCuda ? "cuda:" + std::to_string(device_id) : std::string("cpu"));
}

void Call::fail(const char* arg, const std::string& expected, const std::string& got) const {
  throw nsa::Error(nsa::ErrorCode::kInvalidArgument,
                   std::string("nsa.") + op_ + ": argument '" + arg + "': expected " + expected + ", got " + got);
}

void Call::fail_dtype(const Array& a, const std::string& expected) const {
  throw DTypeError(std::string("nsa.") + op_ + ": argument '" + a.name + "': expected dtype " + expected + ", got " +
                   a.describe());
}

Array Call::import(nb::handle obj, const char* name, bool writable) {
  Array a;
  a.name = name;
  a.present = true;
  nb::object source = nb::borrow(obj);
  if (g_torch_tensor_type != nullptr && PyObject_TypeCheck(obj.ptr(), (PyTypeObject*)g_torch_tensor_type)) {
    try {
      source = nb::handle(g_torch_to_dlpack)(obj);
    } catch (nb::python_error& e) {
      // e.g. a float8 tensor on a torch without float8 DLPack support
      throw DTypeError(std::string("nsa.") + op_ + ": argument '" + name + "': cannot be exported through DLPack (" +
                       nb::str(e.value()).c_str() + ")");
    }
  }
  bool ok = writable ? nb::try_cast(source, a.keep_rw, false) : nb::try_cast(source, a.keep_ro, false);
  if (!ok) {
    if (!writable) fail(name, "an array supporting DLPack or the buffer protocol", py_type_name(obj));
    if (nb::try_cast(source, a.keep_ro, false))
      fail(name, "a writable array (it is an output)", "a read-only " + py_type_name(obj));
    fail(name, "a writable array supporting DLPack or the buffer protocol", py_type_name(obj));
  }
  if (writable) fill(a, a.keep_rw);
  else fill(a, a.keep_ro);
  const int type = writable ? a.keep_rw.device_type() : a.keep_ro.device_type();
  if (!supported_device(type))
    fail(name, "an array in host or CUDA memory", "DLPack device type " + std::to_string(type));
  if (a.ndim > Array::kMaxDims) fail(name, "at most 4 dimensions", a.describe());
  same_device(a);
  return a;
}

void Call::same_device(const Array& a) {
  if (!have_device_) {
    have_device_ = true;
    device_ = a.device;
    device_id_ = a.device_id;
    device_arg_ = a.name;
    return;
  }
  if (a.device != device_ || (device_ == DeviceKind::kCuda && a.device_id != device_id_)) {
    const std::string where = device_ == DeviceKind::kCuda ? "cuda:" + std::to_string(device_id_) : "cpu";
    fail(a.name, std::string("an array on ") + where + " like '" + device_arg_ + "'", a.describe());
  }
}

Array Call::require(nb::handle obj, const char* name, bool writable) {
  if (obj.is_none()) fail(name, writable ? "an output array" : "an array", "None");
  return import(obj, name, writable);
}

Array Call::optional(nb::handle obj, const char* name, bool writable) {
  if (obj.is_none()) {
    Array a;
    a.name = name;
    return a;
  }
  return import(obj, name, writable);
}

void Call::dtype(const Array& a, std::initializer_list<DType> allowed, const std::string& expected) const {
  for (DType d : allowed)
    if (a.dtype == d) return;
  fail_dtype(a, expected);
}

nsa::IndexType Call::index_type(const Array& a) const {
  if (a.dtype == DType::kInt32) return nsa::IndexType::kInt32;
  if (a.dtype == DType::kInt64) return nsa::IndexType::kInt64;
  fail_dtype(a, "int32 or int64");
}

nsa::Indices Call::indices(const Array& a) const {
  if (!a.present) return {};
  return nsa::Indices(a.data, index_type(a));
}

int64_t Call::vector(const Array& a, int64_t min_len, const char* what, bool exact) const {
  const bool ok_shape = a.ndim == 1 && (exact ? a.shape[0] == min_len : a.shape[0] >= min_len);
  if (!ok_shape)
    fail(a.name, std::string("shape ") + what + " = [" + (exact ? "" : ">= ") + std::to_string(min_len) + "]",
         a.describe());
  if (!a.contiguous()) fail(a.name, "a unit stride", a.describe());
  return a.shape[0];
}

int64_t Call::table(const Array& a, const char* what) const {
  if (a.ndim != 2) fail(a.name, std::string("a 2-D array ") + what, a.describe());
  if (a.numel() == 0) return a.shape[1];  // nothing is read; strides of empty arrays are arbitrary
  if (a.shape[1] > 1 && a.stride[1] != 1) fail(a.name, "a unit column stride", a.describe());
  if (a.shape[0] <= 1) return a.shape[1];  // the row stride of a single row is meaningless
  if (a.stride[0] < a.shape[1]) fail(a.name, "a row stride >= the column count", a.describe());
  return a.stride[0];
}

int64_t Call::rows(const Array& a, int64_t cols, const char* what) const {
  if (a.ndim != 2 || a.shape[1] != cols) fail(a.name, std::string("shape ") + what, a.describe());
  return table(a, what);
}

void Call::dense_rows(const Array& a, int64_t cols, const char* what) const {
  if (a.ndim != 2 || a.shape[1] != cols) fail(a.name, std::string("shape ") + what, a.describe());
  if (!a.contiguous()) fail(a.name, "contiguous rows (strides [" + std::to_string(cols) + ", 1])", a.describe());
}

nsa::Exec Call::exec(nb::handle stream) const {
  if (!on_cuda()) return nsa::Exec::cpu(cpu_threads());
  uintptr_t s = 0;
  if (!stream.is_none()) {
    if (!nb::try_cast(stream, s, false)) {
      throw nsa::Error(nsa::ErrorCode::kInvalidArgument,
                       std::string("nsa.") + op_ + ": argument 'stream': expected an int (cudaStream_t) or None, got " +
                           py_type_name(stream));
    }
  }
  return nsa::Exec::cuda(reinterpret_cast<nsa::cudaStream>(s));
}

DeviceGuard::DeviceGuard(const Call& call) {
#if defined(NSA_PY_WITH_CUDA)
  if (!call.on_cuda()) return;
  int current = 0;
  if (cudaGetDevice(&current) != cudaSuccess) {
    (void)cudaGetLastError();
    return;  // the op itself reports the CUDA problem
  }
  if (current != call.device_id() && cudaSetDevice(call.device_id()) == cudaSuccess) previous_ = current;
#else
  (void)call;
#endif
}

DeviceGuard::~DeviceGuard() {
#if defined(NSA_PY_WITH_CUDA)
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
#endif
}

int cpu_threads() { return g_cpu_threads.load(std::memory_order_relaxed); }
void set_cpu_threads(int threads) {
  if (threads < 0)
    throw nsa::Error(nsa::ErrorCode::kInvalidArgument,
                     "nsa.set_cpu_threads: argument 'threads': expected >= 0, got " + std::to_string(threads));
  g_cpu_threads.store(threads, std::memory_order_relaxed);
}

void register_torch(nb::handle tensor_type, nb::handle to_dlpack) {
  Py_XDECREF(g_torch_tensor_type);
  Py_XDECREF(g_torch_to_dlpack);
  g_torch_tensor_type = tensor_type.inc_ref().ptr();
  g_torch_to_dlpack = to_dlpack.inc_ref().ptr();
}

}  // namespace nsa_py
