// The umbrella header: everything a C++ trainer needs.
#pragma once

#include "gradcomm/agreement.h"
#include "gradcomm/checkpoint.h"
#include "gradcomm/communicator.h"
#include "gradcomm/compressor.h"
#include "gradcomm/dense.h"
#include "gradcomm/dgc.h"
#include "gradcomm/error.h"
#include "gradcomm/exchange_plan.h"
#include "gradcomm/exchanger.h"
#include "gradcomm/host_communicators.h"
#include "gradcomm/step_engine.h"
#include "gradcomm/layer.h"
#include "gradcomm/lgreco.h"
#include "gradcomm/local_device.h"
#include "gradcomm/onebit.h"
#include "gradcomm/quantize.h"
#include "gradcomm/sparse_allreduce.h"
#include "gradcomm/tensor.h"
#include "gradcomm/thread_communicator.h"
#include "gradcomm/version.h"
#if defined(GRADCOMM_HAVE_MPI)
#include "gradcomm/mpi_communicator.h"
#endif
#if defined(GRADCOMM_HAVE_NCCL)
#include "gradcomm/nccl_communicator.h"
#endif
