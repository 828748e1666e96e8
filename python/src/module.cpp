// The extension module nsa._nsa: error translation, build facts and settings;
// the ops are bound in index_cache_bindings.cpp and metadata_bindings.cpp.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "arrays.h"
#include "nsa/common.h"
#include "nsa/version.h"

namespace nsa_py {

void bind_index_cache(nb::module_& m);
void bind_metadata(nb::module_& m);
void bind_topk(nb::module_& m);     // topk_transform
void bind_indexer(nb::module_& m);  // paged_mqa_logits, indexer_topk

namespace {

// Python classes of nsa/errors.py, registered at import by nsa/__init__.py.
// Kept for the life of the process.
struct ErrorTypes {
  PyObject* invalid_argument = nullptr;  // ValueError subclass
  PyObject* dtype = nullptr;             // TypeError subclass
  PyObject* unsupported = nullptr;       // RuntimeError subclass
  PyObject* cuda = nullptr;              // RuntimeError subclass
} g_errors;

PyObject* or_default(PyObject* registered, PyObject* fallback) { return registered ? registered : fallback; }

void translate(const std::exception_ptr& p, void*) {
  try {
    std::rethrow_exception(p);
  } catch (const DTypeError& e) {
    PyErr_SetString(or_default(g_errors.dtype, PyExc_TypeError), e.what());
  } catch (const nsa::Error& e) {
    switch (e.code()) {
      case nsa::ErrorCode::kInvalidArgument:
        PyErr_SetString(or_default(g_errors.invalid_argument, PyExc_ValueError), e.what());
        break;
      case nsa::ErrorCode::kUnsupported:
        PyErr_SetString(or_default(g_errors.unsupported, PyExc_RuntimeError), e.what());
        break;
      default: PyErr_SetString(or_default(g_errors.cuda, PyExc_RuntimeError), e.what()); break;
    }
  }
}

void register_errors(nb::handle invalid_argument, nb::handle dtype, nb::handle unsupported, nb::handle cuda) {
  g_errors = {invalid_argument.inc_ref().ptr(), dtype.inc_ref().ptr(), unsupported.inc_ref().ptr(),
              cuda.inc_ref().ptr()};
}

}  // namespace
}  // namespace nsa_py

NB_MODULE(_nsa, m) {
  using namespace nsa_py;
  m.doc() = "NSA Runtime native bindings; use the `nsa` package, not this module.";
  nb::register_exception_translator(&translate);

  m.attr("__version__") = NSA_VERSION_STRING;
  m.attr("cuda_architectures") = NSA_CUDA_ARCHITECTURES;
  m.def("cuda_built", &nsa::cuda_built);
  m.def("cuda_device_count", &nsa::cuda_device_count);
  m.def("set_cpu_threads", &set_cpu_threads, nb::arg("threads"));
  m.def("get_cpu_threads", &cpu_threads);
  m.def("_register_errors", &register_errors);
  m.def("_register_torch", &register_torch);

  nb::class_<Prepared>(m, "Prepared")
      .def("run", &Prepared::run, nb::arg("stream").none())
      .def_prop_ro("op", [](const Prepared& p) { return std::string(p.op()); });

  bind_index_cache(m);
  bind_metadata(m);
  bind_topk(m);
  bind_indexer(m);
}
