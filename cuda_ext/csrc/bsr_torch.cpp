// The four files that use torch's headers, compiled as one translation unit: each of them on its own spent most
// of its compile time parsing the same ATen and torch/library headers (about 14-22 s of CPU each on a 2-core
// EPYC; all four together in this file: 16 s), so a cold build takes about half the CPU time it did.
// The kernel files (bsr_kernels_*.cpp) include no torch header and stay separate: each has its own ISA target.
#include "bsr_ops.cpp"
#include "bsr_cpu.cpp"
#include "bsr_blas_cpu.cpp"
#include "bsr_autograd.cpp"
