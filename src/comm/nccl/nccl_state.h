// NcclCommunicator's handles, and the works it hands out (pooled, each with its event).
// The NCCL communicator is non-blocking (ncclConfig_t::blocking = 0): every call returns
// at once, ncclInProgress included, and settle() polls it to the end under the timeout,
// so that neither the setup nor a collective can hang on a peer that never comes; on a
// timeout or an error the communicator is aborted (ncclCommAbort), and every work not
// yet seen complete fails from then on instead of reporting success on garbage.
#pragma once

#include <nccl.h>

#include <chrono>
#include <string>
#include <vector>

#include "comm/cuda_call.h"
#include "gradcomm/nccl_communicator.h"

namespace gradcomm {

class NcclWork;

struct NcclCommunicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  bool own_stream = false;
  int device = 0;
  int rank = 0;
  int size = 1;
  int* scratch = nullptr;  // a device int for barrier()
  // follow_stream's: recorded on the caller's stream, then waited on by ours. One event
  // serves every call, since cudaStreamWaitEvent takes the record made before it.
  cudaEvent_t follow_event = nullptr;
  std::chrono::milliseconds timeout{};
  bool aborted = false;
  std::string abort_reason;
  // std::uncaught_exceptions() when the communicator was made: more at destruction means
  // an exception is unwinding past it, and peers may never come to a final collective.
  int uncaught_at_construction = 0;
  std::vector<NcclWork*> free_works;

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State();

  // Makes `device` current, and creates the stream (or takes the caller's) and scratch.
  void open(int device, void* caller_stream);
  // Throws kCommunication when the communicator was aborted: called before any NCCL call,
  // so that an aborted communicator is never used again.
  void check_usable(const char* what) const;
  // Waits, under the timeout, until a call on `which` (this communicator, or one being
  // made from it) has finished; any failure aborts and throws naming `what`.
  void settle(ncclResult_t result, ncclComm_t which, const std::string& what);
  void abort_comm(const std::string& reason) noexcept;
};

class NcclWork final : public Work {
 public:
  std::shared_ptr<NcclCommunicator::State> state;  // set while handed out
  const char* what = "";
  cudaEvent_t event = nullptr;  // created once, recorded per collective
  bool complete = false;        // seen complete: stays so after an abort
  // A stream waits on the event (wait_stream): that stream orders whatever reads the
  // buffers, so release() need not hold the host until the collective ends.
  bool stream_ordered = false;

  bool test() override;
  void wait() override;
  void wait_stream(void* cuda_stream) override;
  void release() noexcept override;
};

}  // namespace gradcomm
