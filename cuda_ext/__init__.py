"""Block-sparse matmul for block-pruned transformers: BSR linear ops with compiled CPU (and CUDA)
kernels, the BlockSparseLinear module, a model converter and a pure-torch reference.

Imports only torch. The kernels are compiled on first use; `available()` says whether they
loaded (if not, everything still works through the slower pure-torch path). The CPU kernel path
(AVX-512, AVX2 or portable) is chosen at run time from what the CPU reports; the environment
variable TLC_BSR_ISA forces one and `cpu_kernel_isa()` names the one in use. Whether a layer keeps
its blocks or goes dense is measured on the machine (`crossover_density`, cached on disk).
"""

from .bsr_format import BLOCK_SIZES, block_density, bsr_to_dense, dense_to_bsr
from .convert import block_sparse_state_dict, convert_block_sparse, load_block_sparse_state_dict
from .crossover import crossover_density, measure_crossover
from .module import DENSE_CROSSOVER_DENSITY, BlockSparseLinear
from .ops import available, bsr_linear, bsr_linear_grad_input, bsr_linear_grad_values, cpu_kernel_isa, cpu_kernel_isas
from .reference import block_mask, bsr_linear_reference

__all__ = [
    "BLOCK_SIZES",
    "DENSE_CROSSOVER_DENSITY",
    "BlockSparseLinear",
    "available",
    "block_density",
    "block_mask",
    "block_sparse_state_dict",
    "bsr_linear",
    "bsr_linear_grad_input",
    "bsr_linear_grad_values",
    "bsr_linear_reference",
    "bsr_to_dense",
    "convert_block_sparse",
    "cpu_kernel_isa",
    "cpu_kernel_isas",
    "crossover_density",
    "dense_to_bsr",
    "load_block_sparse_state_dict",
    "measure_crossover",
]
