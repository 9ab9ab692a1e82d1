/* The AVX2/FMA ceiling of one core: how many fp32 FLOP/s 8-lane fused multiply-adds can reach when nothing
 * but FMAs run (12 independent chains, enough to hide the FMA latency on two FMA pipes), by thread CPU time.
 * bench/block_sparse.py's AVX2 rows are judged against it in BENCHMARKS.md: a kernel cannot beat it, so a
 * speedup target that needs more than it is out of reach on that CPU whatever the kernel.
 *
 *   gcc -O2 -mavx2 -mfma bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double thread_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define STEP(x) x = _mm256_fmadd_ps(x, m, c)

int main(void) {
  const __m256 m = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f), a3 = _mm256_set1_ps(3.f),
         a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f), a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f),
         a8 = _mm256_set1_ps(8.f), a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  const long iterations = 50000000;  /* 12 FMAs of 8 lanes each: 9.6 GFLOP a repeat */
  double best = 0.0;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const double start = thread_seconds();
    for (long i = 0; i < iterations; ++i) {
      STEP(a0); STEP(a1); STEP(a2); STEP(a3); STEP(a4); STEP(a5);
      STEP(a6); STEP(a7); STEP(a8); STEP(a9); STEP(a10); STEP(a11);
    }
    const double gflops = iterations * 12.0 * 16.0 / (thread_seconds() - start) / 1e9;
    if (gflops > best) best = gflops;
  }
  /* the sum keeps every chain live, so the compiler cannot drop any */
  __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  printf("AVX2/FMA fp32 peak, 1 thread, best of 5: %.1f GFLOP/s (checksum %g)\n", best, lanes[0]);
  return 0;
}
