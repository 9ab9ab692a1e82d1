// AVX-512 building blocks for the BSR kernels: fp32/bf16 loads and stores, a 4×4 dot-product
// tile, a register-blocked rank-1-update tile, and a transposing 16-way horizontal sum.
// Included only when __AVX512F__ is defined (the build uses -march=native).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace tlc_bsr {
namespace simd {

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {  // 16 bf16 → 16 fp32 (exact: bf16 is the top half of fp32)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(uint16_t* p, __m512 v) {  // fp32 → bf16, round to nearest even, NaN stays NaN
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// Lane 4m+n of the result is the sum of the 16 lanes of acc[m][n]. A transpose-and-add tree:
// ~40 shuffles/adds for 16 sums, instead of 16 separate horizontal reductions.
inline __m512 reduce_4x4(const __m512 (&acc)[4][4]) {
  __m512 quad[4];  // quad[m], 128-bit lane L: [sum_L(acc[m][0]) .. sum_L(acc[m][3])]
  for (int m = 0; m < 4; ++m) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(acc[m][0], acc[m][1]), _mm512_unpackhi_ps(acc[m][0], acc[m][1]));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(acc[m][2], acc[m][3]), _mm512_unpackhi_ps(acc[m][2], acc[m][3]));
    quad[m] = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
  }
  const __m512 u01 = _mm512_add_ps(_mm512_shuffle_f32x4(quad[0], quad[1], 0x44), _mm512_shuffle_f32x4(quad[0], quad[1], 0xEE));
  const __m512 u23 = _mm512_add_ps(_mm512_shuffle_f32x4(quad[2], quad[3], 0x44), _mm512_shuffle_f32x4(quad[2], quad[3], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(u01, u23, 0x88), _mm512_shuffle_f32x4(u01, u23, 0xDD));
}

// dst[c][r] = src[r][c] for a 16×16 fp32 tile: unpack pairs, shuffle quads, then transpose the
// 128-bit lanes (64 shuffles, versus 256 scalar strided moves).
inline void transpose_16x16(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  __m512 t[16], u[16];
  for (int k = 0; k < 8; ++k) {
    const __m512 a = _mm512_loadu_ps(src + (2 * k) * src_stride), b = _mm512_loadu_ps(src + (2 * k + 1) * src_stride);
    t[2 * k] = _mm512_unpacklo_ps(a, b);      // lane L: a[4L], b[4L], a[4L+1], b[4L+1]
    t[2 * k + 1] = _mm512_unpackhi_ps(a, b);  // lane L: a[4L+2], b[4L+2], a[4L+3], b[4L+3]
  }
  for (int g = 0; g < 4; ++g) {  // u[4g+e], lane L: rows 4g..4g+3 at column 4L+e
    const __m512* q = t + 4 * g;
    u[4 * g + 0] = _mm512_shuffle_ps(q[0], q[2], 0x44);
    u[4 * g + 1] = _mm512_shuffle_ps(q[0], q[2], 0xEE);
    u[4 * g + 2] = _mm512_shuffle_ps(q[1], q[3], 0x44);
    u[4 * g + 3] = _mm512_shuffle_ps(q[1], q[3], 0xEE);
  }
  for (int e = 0; e < 4; ++e) {  // column 4L+e gathers lane L of u[e], u[4+e], u[8+e], u[12+e]
    const __m512 v0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x44), v1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x44), v3 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xEE);
    _mm512_storeu_ps(dst + (0 + e) * dst_stride, _mm512_shuffle_f32x4(v0, v2, 0x88));
    _mm512_storeu_ps(dst + (4 + e) * dst_stride, _mm512_shuffle_f32x4(v0, v2, 0xDD));
    _mm512_storeu_ps(dst + (8 + e) * dst_stride, _mm512_shuffle_f32x4(v1, v3, 0x88));
    _mm512_storeu_ps(dst + (12 + e) * dst_stride, _mm512_shuffle_f32x4(v1, v3, 0xDD));
  }
}

// acc[m][n] (lane-wise) += x_m[j] · w_n[j] for j in [0, len); w_n = w + n·w_stride. len is a multiple of 16.
// Keeping the reduction in lanes lets one accumulator run over every block of a block-row.
template <typename T>
inline void dot_tile_4x4(const T* const (&xr)[4], const T* w, int64_t w_stride, int64_t len, __m512 (&acc)[4][4]) {
  for (int64_t j = 0; j < len; j += 16) {
    __m512 xv[4], wv[4];
    for (int m = 0; m < 4; ++m) xv[m] = load16(xr[m] + j);
    for (int n = 0; n < 4; ++n) wv[n] = load16(w + n * w_stride + j);
    for (int m = 0; m < 4; ++m)
      for (int n = 0; n < 4; ++n) acc[m][n] = _mm512_fmadd_ps(xv[m], wv[n], acc[m][n]);
  }
}

#if defined(__AVX512BF16__)
// bf16 × bf16 pairs summed into fp32 lanes with VDPBF16PS: half the instructions of convert-then-FMA.
inline void dot_tile_4x4(const uint16_t* const (&xr)[4], const uint16_t* w, int64_t w_stride, int64_t len,
                         __m512 (&acc)[4][4]) {
  for (int64_t j = 0; j < len; j += 32) {
    const __mmask32 mask = len - j >= 32 ? 0xffffffffu : 0x0000ffffu;  // len is a multiple of 16
    __m512i xv[4], wv[4];
    for (int m = 0; m < 4; ++m) xv[m] = _mm512_maskz_loadu_epi16(mask, xr[m] + j);
    for (int n = 0; n < 4; ++n) wv[n] = _mm512_maskz_loadu_epi16(mask, w + n * w_stride + j);
    for (int m = 0; m < 4; ++m)
      for (int n = 0; n < 4; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], (__m512bh)xv[m], (__m512bh)wv[n]);
  }
}
#endif

// acc[m][v] += a_m[p·a_step] · b[p·b_step + 16v .. +16] for p in [0, P): M broadcasts and NV vector
// loads feed M·NV FMAs per step, the register-blocked outer-product form of a small GEMM.
template <int M, int NV, typename T>
inline void rank1_tile(const T* const (&a)[M], int64_t a_step, const T* b, int64_t b_step, int64_t P,
                       __m512 (&acc)[M][NV]) {
  for (int64_t p = 0; p < P; ++p) {
    __m512 bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load16(b + p * b_step + 16 * v);
    for (int m = 0; m < M; ++m) {
      const __m512 am = _mm512_set1_ps(to_f32(a[m][p * a_step]));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(am, bv[v], acc[m][v]);
    }
  }
}

#if defined(__AVX512BF16__)
// Like rank1_tile over P2 pairs of reduction steps with VDPBF16PS: a_m[2p], a_m[2p+1] are broadcast
// as one 32-bit pair and b holds VNNI pairs (b[p·b_step + i] = (W[i][2p], W[i][2p+1])).
template <int M, int NV>
inline void rank2_tile_bf16(const uint16_t* const (&a)[M], const uint32_t* b, int64_t b_step, int64_t P2,
                            __m512 (&acc)[M][NV]) {
  for (int64_t p = 0; p < P2; ++p) {
    __m512i bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_si512(b + p * b_step + 16 * v);
    for (int m = 0; m < M; ++m) {
      uint32_t pair;
      std::memcpy(&pair, a[m] + 2 * p, 4);
      const __m512i am = _mm512_set1_epi32(static_cast<int>(pair));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], (__m512bh)am, (__m512bh)bv[v]);
    }
  }
}
#endif

}  // namespace simd
}  // namespace tlc_bsr
