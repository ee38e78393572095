// gradcomm._gradcomm: the C++ library as a Python extension module.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "python_communicator.h"

PYBIND11_MODULE(_gradcomm, m) {
  m.doc() = "gradcomm's C++ kernels and compressors (use the `gradcomm` package, not this module)";
  gradcomm::python::bind_core(m);
  gradcomm::python::bind_compressors(m);
  gradcomm::python::bind_dgc(m);
  gradcomm::python::bind_python_communicator(m);
  gradcomm::python::bind_onebit(m);
  gradcomm::python::bind_lgreco(m);
  gradcomm::python::bind_mpi(m);
  gradcomm::python::bind_exchanger(m);
}
