// CUDA kernels for the block-sparse linear. One CTA (4 warps) owns a 64-token × bs output tile of
// one "segment" — a block-row of y (forward) or a block-column of grad_x (grad_input) — and loops
// over the segment's blocks, staging the activation slice and the weight block in shared memory.
// fp16/bf16 multiply on tensor cores with WMMA 16×16×16 (fp32 accumulate) on sm_80+; fp32 (and
// 16-bit types on older GPUs) use a shared-memory FMA kernel. See bsr_kernels.h for the layout.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "bsr_kernels.h"

namespace tlc_bsr_cuda {
namespace {

constexpr int kTileTokens = 64;
constexpr int kThreads = 128;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

// The blocks that feed one output segment s: entries seg_ptr[s] .. seg_ptr[s+1]-1, block id
// seg_block[p] (or p itself when null), multiplying columns a_block[k]·bs .. +bs of the activation.
// transpose_w: false → out_i = Σ_j a_j W[i][j] (forward); true → out_j = Σ_i a_i W[i][j] (grad_input).
struct Segments {
  const int64_t* seg_ptr;
  const int64_t* seg_block;
  const int64_t* a_block;
  bool transpose_w;
};

template <typename T, int BS>
__global__ void __launch_bounds__(kThreads)
segment_gemm_fma(const T* __restrict__ a, int64_t lda, const T* __restrict__ values, Segments seg,
                 const T* __restrict__ bias, T* __restrict__ out, int64_t ldo, int64_t tokens) {
  __shared__ float as[kTileTokens][BS + 1];
  __shared__ float ws[BS][BS + 1];  // ws[n][k]: output n, reduction index k
  constexpr int kRowStep = kThreads / BS, kPerThread = kTileTokens / kRowStep;
  const int64_t s = blockIdx.x, t0 = int64_t(blockIdx.y) * kTileTokens;
  const int n = threadIdx.x % BS, row0 = threadIdx.x / BS;
  float acc[kPerThread] = {};
  for (int64_t p = seg.seg_ptr[s]; p < seg.seg_ptr[s + 1]; ++p) {
    const int64_t k = seg.seg_block ? seg.seg_block[p] : p;
    const int64_t a_off = seg.a_block[k] * BS;
    for (int e = threadIdx.x; e < kTileTokens * BS; e += kThreads) {
      const int tt = e / BS, j = e % BS;
      as[tt][j] = t0 + tt < tokens ? to_f(a[(t0 + tt) * lda + a_off + j]) : 0.f;
    }
    for (int e = threadIdx.x; e < BS * BS; e += kThreads) {
      const int i = e / BS, j = e % BS;
      const float v = to_f(values[k * BS * BS + e]);
      if (seg.transpose_w) ws[j][i] = v;
      else ws[i][j] = v;
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < BS; ++kk) {
      const float w = ws[n][kk];
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) acc[q] += as[row0 + q * kRowStep][kk] * w;
    }
    __syncthreads();
  }
  const float b = bias ? to_f(bias[s * BS + n]) : 0.f;
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const int64_t t = t0 + row0 + q * kRowStep;
    if (t < tokens) out[t * ldo + s * BS + n] = from_f<T>(acc[q] + b);
  }
}

template <typename T, int BS>
__global__ void __launch_bounds__(kThreads)
segment_gemm_wmma(const T* __restrict__ a, int64_t lda, const T* __restrict__ values, Segments seg,
                  const T* __restrict__ bias, T* __restrict__ out, int64_t ldo, int64_t tokens) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int LDS = BS + 8, LDC = BS + 4;  // padded strides (WMMA needs multiples of 8 / 4 elements)
  __shared__ __align__(32) T as[kTileTokens * LDS];
  __shared__ __align__(32) T ws[BS * LDS];  // ws[n·LDS + k]: read as the col-major K×N operand
  __shared__ __align__(32) float cs[kTileTokens * LDC];
  const int64_t s = blockIdx.x, t0 = int64_t(blockIdx.y) * kTileTokens;
  const int warp = threadIdx.x / 32;  // warp w owns tokens 16w .. 16w+15 of the tile
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[BS / 16];
#pragma unroll
  for (int n = 0; n < BS / 16; ++n) wmma::fill_fragment(acc[n], 0.f);
  for (int64_t p = seg.seg_ptr[s]; p < seg.seg_ptr[s + 1]; ++p) {
    const int64_t k = seg.seg_block ? seg.seg_block[p] : p;
    const int64_t a_off = seg.a_block[k] * BS;
    for (int e = threadIdx.x; e < kTileTokens * BS; e += kThreads) {
      const int tt = e / BS, j = e % BS;
      as[tt * LDS + j] = t0 + tt < tokens ? a[(t0 + tt) * lda + a_off + j] : from_f<T>(0.f);
    }
    for (int e = threadIdx.x; e < BS * BS; e += kThreads) {
      const int i = e / BS, j = e % BS;
      ws[seg.transpose_w ? j * LDS + i : i * LDS + j] = values[k * BS * BS + e];
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BS; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::load_matrix_sync(fa, as + warp * 16 * LDS + kk, LDS);
#pragma unroll
      for (int n = 0; n < BS / 16; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
        wmma::load_matrix_sync(fb, ws + n * 16 * LDS + kk, LDS);
        wmma::mma_sync(acc[n], fa, fb, acc[n]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int n = 0; n < BS / 16; ++n)
    wmma::store_matrix_sync(cs + warp * 16 * LDC + n * 16, acc[n], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTileTokens * BS; e += kThreads) {
    const int tt = e / BS, i = e % BS;
    if (t0 + tt < tokens)
      out[(t0 + tt) * ldo + s * BS + i] = from_f<T>(cs[tt * LDC + i] + (bias ? to_f(bias[s * BS + i]) : 0.f));
  }
#endif
}

// grad_values: one CTA per block, reducing over tokens in staged 64-token slices.
template <typename T, int BS>
__global__ void __launch_bounds__(kThreads)
grad_values_fma(const T* __restrict__ gy, int64_t ldg, const T* __restrict__ x, int64_t ldx,
                const int64_t* __restrict__ block_row, const int64_t* __restrict__ col, T* __restrict__ gv,
                int64_t tokens) {
  __shared__ float gs[kTileTokens][BS + 1];
  __shared__ float xs[kTileTokens][BS + 1];
  constexpr int kPerThread = (BS * BS + kThreads - 1) / kThreads;
  const int64_t k = blockIdx.x, r0 = block_row[k] * BS, c0 = col[k] * BS;
  float acc[kPerThread] = {};
  for (int64_t t0 = 0; t0 < tokens; t0 += kTileTokens) {
    for (int e = threadIdx.x; e < kTileTokens * BS; e += kThreads) {
      const int tt = e / BS, j = e % BS;
      const bool valid = t0 + tt < tokens;
      gs[tt][j] = valid ? to_f(gy[(t0 + tt) * ldg + r0 + j]) : 0.f;
      xs[tt][j] = valid ? to_f(x[(t0 + tt) * ldx + c0 + j]) : 0.f;
    }
    __syncthreads();
    for (int tt = 0; tt < kTileTokens; ++tt)
#pragma unroll
      for (int q = 0; q < kPerThread; ++q) {
        const int e = threadIdx.x + q * kThreads;
        if (e < BS * BS) acc[q] += gs[tt][e / BS] * xs[tt][e % BS];
      }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kPerThread; ++q) {
    const int e = threadIdx.x + q * kThreads;
    if (e < BS * BS) gv[k * BS * BS + e] = from_f<T>(acc[q]);
  }
}

template <typename T, int BS>
__global__ void __launch_bounds__(kThreads)
grad_values_wmma(const T* __restrict__ gy, int64_t ldg, const T* __restrict__ x, int64_t ldx,
                 const int64_t* __restrict__ block_row, const int64_t* __restrict__ col, T* __restrict__ gv,
                 int64_t tokens) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int LDS = BS + 8, LDC = BS + 4, kTiles = (BS / 16) * (BS / 16);
  constexpr int kTilesPerWarp = (kTiles + 3) / 4;
  __shared__ __align__(32) T gs[kTileTokens * LDS];  // gs[t·LDS + i]: the col-major M×K operand (i, t)
  __shared__ __align__(32) T xs[kTileTokens * LDS];  // xs[t·LDS + j]: the row-major K×N operand (t, j)
  __shared__ __align__(32) float cs[BS * LDC];
  const int64_t k = blockIdx.x, r0 = block_row[k] * BS, c0 = col[k] * BS;
  const int warp = threadIdx.x / 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kTilesPerWarp];
#pragma unroll
  for (int q = 0; q < kTilesPerWarp; ++q) wmma::fill_fragment(acc[q], 0.f);
  for (int64_t t0 = 0; t0 < tokens; t0 += kTileTokens) {
    for (int e = threadIdx.x; e < kTileTokens * BS; e += kThreads) {
      const int tt = e / BS, j = e % BS;
      const bool valid = t0 + tt < tokens;
      gs[tt * LDS + j] = valid ? gy[(t0 + tt) * ldg + r0 + j] : from_f<T>(0.f);
      xs[tt * LDS + j] = valid ? x[(t0 + tt) * ldx + c0 + j] : from_f<T>(0.f);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kTilesPerWarp; ++q) {
      const int tile = warp + 4 * q;
      if (tile >= kTiles) break;
      const int i0 = (tile / (BS / 16)) * 16, j0 = (tile % (BS / 16)) * 16;
#pragma unroll
      for (int kk = 0; kk < kTileTokens; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, gs + kk * LDS + i0, LDS);
        wmma::load_matrix_sync(fb, xs + kk * LDS + j0, LDS);
        wmma::mma_sync(acc[q], fa, fb, acc[q]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < kTilesPerWarp; ++q) {
    const int tile = warp + 4 * q;
    if (tile < kTiles)
      wmma::store_matrix_sync(cs + (tile / (BS / 16)) * 16 * LDC + (tile % (BS / 16)) * 16, acc[q], LDC,
                              wmma::mem_row_major);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < BS * BS; e += kThreads) gv[k * BS * BS + e] = from_f<T>(cs[(e / BS) * LDC + e % BS]);
#endif
}

bool tensor_cores_usable() {  // WMMA with bf16 needs sm_80; the kernels are built for it only there
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  return major >= 8;
}

template <typename T, int BS>
void launch_segments(const T* a, int64_t lda, const T* values, Segments seg, int64_t n_segments, const T* bias,
                     T* out, int64_t ldo, int64_t tokens, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(n_segments), static_cast<unsigned>((tokens + kTileTokens - 1) / kTileTokens));
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores_usable()) {
      segment_gemm_wmma<T, BS><<<grid, kThreads, 0, stream>>>(a, lda, values, seg, bias, out, ldo, tokens);
      return;
    }
  }
  segment_gemm_fma<T, BS><<<grid, kThreads, 0, stream>>>(a, lda, values, seg, bias, out, ldo, tokens);
}

template <typename T, int BS>
void launch_grad_values(const T* gy, int64_t ldg, const T* x, int64_t ldx, const int64_t* block_row,
                        const int64_t* col, T* gv, int64_t nnz, int64_t tokens, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(nnz));
  if constexpr (!std::is_same_v<T, float>) {
    if (tensor_cores_usable()) {
      grad_values_wmma<T, BS><<<grid, kThreads, 0, stream>>>(gy, ldg, x, ldx, block_row, col, gv, tokens);
      return;
    }
  }
  grad_values_fma<T, BS><<<grid, kThreads, 0, stream>>>(gy, ldg, x, ldx, block_row, col, gv, tokens);
}

// Calls f with a null pointer of the element type, and the block size as a compile-time constant.
template <typename F>
cudaError_t dispatch(DType dtype, int bs, F&& f) {
  auto by_size = [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    switch (bs) {
      case 16: f(static_cast<T*>(nullptr), std::integral_constant<int, 16>{}); break;
      case 32: f(static_cast<T*>(nullptr), std::integral_constant<int, 32>{}); break;
      case 64: f(static_cast<T*>(nullptr), std::integral_constant<int, 64>{}); break;
      default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
  };
  switch (dtype) {
    case DType::kFloat32: return by_size(float{});
    case DType::kFloat16: return by_size(__half{});
    case DType::kBFloat16: return by_size(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t bsr_forward(DType dtype, const void* x, const void* values, const int64_t* crow, const int64_t* col,
                        const void* bias, void* y, int64_t tokens, int64_t in_features, int64_t block_rows, int bs,
                        cudaStream_t stream) {
  if (tokens == 0 || block_rows == 0) return cudaSuccess;
  return dispatch(dtype, bs, [&](auto* tag, auto size) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int BS = decltype(size)::value;
    const Segments seg{crow, nullptr, col, false};
    launch_segments<T, BS>(static_cast<const T*>(x), in_features, static_cast<const T*>(values), seg, block_rows,
                           static_cast<const T*>(bias), static_cast<T*>(y), block_rows * BS, tokens, stream);
  });
}

cudaError_t bsr_grad_input(DType dtype, const void* grad_y, const void* values, const int64_t* col_ptr,
                           const int64_t* col_block, const int64_t* block_row, void* grad_x, int64_t tokens,
                           int64_t in_features, int64_t out_features, int bs, cudaStream_t stream) {
  if (tokens == 0 || in_features == 0) return cudaSuccess;
  return dispatch(dtype, bs, [&](auto* tag, auto size) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int BS = decltype(size)::value;
    const Segments seg{col_ptr, col_block, block_row, true};
    launch_segments<T, BS>(static_cast<const T*>(grad_y), out_features, static_cast<const T*>(values), seg,
                           in_features / BS, nullptr, static_cast<T*>(grad_x), in_features, tokens, stream);
  });
}

cudaError_t bsr_grad_values(DType dtype, const void* grad_y, const void* x, const int64_t* block_row,
                            const int64_t* col, void* grad_values, int64_t tokens, int64_t in_features,
                            int64_t out_features, int64_t nnz_blocks, int bs, cudaStream_t stream) {
  if (nnz_blocks == 0) return cudaSuccess;
  return dispatch(dtype, bs, [&](auto* tag, auto size) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int BS = decltype(size)::value;
    launch_grad_values<T, BS>(static_cast<const T*>(grad_y), out_features, static_cast<const T*>(x), in_features,
                              block_row, col, static_cast<T*>(grad_values), nnz_blocks, tokens, stream);
  });
}

}  // namespace tlc_bsr_cuda
