// The AVX-512 paths, compiled for AVX-512 whatever the build's baseline: the target is switched
// for these functions only (pragma regions, not -march flags), and bsr_kernels_cpu.cpp calls them
// only on a CPU that reports the features. Two builds of the same kernels: "avx512" (AVX-512F/BW/
// DQ/VL) and "avx512-bf16" (adds AVX512_BF16 for the bf16 forward). Standard headers come first,
// so that no library code is compiled for AVX-512 and then shared with the other paths.
#include "bsr_cpu_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#endif
namespace tlc_bsr {
namespace avx512 {
#define TLC_BSR_BF16_DOT 0
#include "bsr_kernels_avx512.inc"
#undef TLC_BSR_BF16_DOT
}  // namespace avx512
}  // namespace tlc_bsr
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c")
#endif
namespace tlc_bsr {
namespace avx512_bf16 {
#define TLC_BSR_BF16_DOT 1
#include "bsr_kernels_avx512.inc"
#undef TLC_BSR_BF16_DOT
}  // namespace avx512_bf16
}  // namespace tlc_bsr
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86
