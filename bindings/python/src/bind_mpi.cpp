// gradcomm's MpiCommunicator, for jobs started by mpirun that want the hooks' collectives
// on MPI rather than on torch's process group. Present only in builds with MPI
// (GRADCOMM_WITH_MPI=ON); gradcomm.HAVE_MPI says which this is.
#include <pybind11/pybind11.h>

#include <memory>

#include "bindings.h"
#if defined(GRADCOMM_HAVE_MPI)
#include "gradcomm/mpi_communicator.h"
#endif

namespace py = pybind11;

namespace gradcomm::python {

void bind_mpi(py::module_& m) {
#if defined(GRADCOMM_HAVE_MPI)
  m.attr("HAVE_MPI") = true;
  py::class_<MpiCommunicator, Communicator>(
      m, "MpiCommunicator",
      "Collectives over a duplicate of MPI_COMM_WORLD (MPI is initialized if nobody has, and "
      "finalized when the communicator goes).")
      .def(py::init([](bool verify_sizes) {
             MpiCommunicatorOptions o;
             o.verify_sizes = verify_sizes;
             return std::make_unique<MpiCommunicator>(o);
           }),
           py::arg("verify_sizes") = false,
           "verify_sizes: agree on every collective's size first (one extra small allreduce "
           "per call; for debugging).");
#else
  m.attr("HAVE_MPI") = false;
#endif
}

}  // namespace gradcomm::python
