"""gradcomm: compressed gradient exchange for data-parallel training.

The C++ kernels and compressors live in the extension module ``gradcomm._gradcomm``;
``gradcomm.torch`` holds the PyTorch DDP communication hooks (DGC, 1-bit Adam, L-GreCo)
built on them. Importing ``gradcomm`` does not import torch.
"""

from gradcomm._gradcomm import (  # noqa: F401  (re-exported)
    DGC_PAPER_WARMUP,
    HAVE_MPI,
    Communicator,
    Compressor,
    DenseCompressor,
    DgcCompressor,
    Error,
    InvalidArgumentError,
    LayerSpec,
    LayerWire,
    QuantizeCompressor,
    describe_buffer,
    version,
)

if HAVE_MPI:
    from gradcomm._gradcomm import MpiCommunicator  # noqa: F401

__version__ = version()

__all__ = [
    "DGC_PAPER_WARMUP",
    "HAVE_MPI",
    "Communicator",
    "Compressor",
    "DenseCompressor",
    "DgcCompressor",
    "Error",
    "InvalidArgumentError",
    "LayerSpec",
    "LayerWire",
    "QuantizeCompressor",
    "describe_buffer",
    "version",
]
