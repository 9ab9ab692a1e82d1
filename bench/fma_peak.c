/* The FMA ceiling of one core: how many fp32 FLOP/s fused multiply-adds can reach when nothing but FMAs
 * run (12 independent chains, enough to hide the FMA latency on two FMA pipes), by thread CPU time; 8 lanes
 * (AVX2/FMA) by default, 16 lanes when compiled for AVX-512.
 * bench/block_sparse.py's rows are judged against it in BENCHMARKS.md: a kernel cannot beat it, so a
 * speedup target that needs more than it is out of reach on that CPU whatever the kernel.
 *
 *   gcc -O2 -mavx2 -mfma bench/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *   gcc -O2 -mavx512f bench/fma_peak.c -o /tmp/fma_peak512 && /tmp/fma_peak512
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double thread_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMADD _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define STOREU _mm512_storeu_ps
#define NAME "AVX-512"
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMADD _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define STOREU _mm256_storeu_ps
#define NAME "AVX2/FMA"
#endif

#define STEP(x) x = FMADD(x, m, c)

int main(void) {
  const vec m = SET1(1.0000001f), c = SET1(1e-7f);
  vec a0 = SET1(0.f), a1 = SET1(1.f), a2 = SET1(2.f), a3 = SET1(3.f), a4 = SET1(4.f), a5 = SET1(5.f),
      a6 = SET1(6.f), a7 = SET1(7.f), a8 = SET1(8.f), a9 = SET1(9.f), a10 = SET1(10.f), a11 = SET1(11.f);
  const long iterations = 50000000;  /* 12 FMAs of LANES lanes each: 9.6 GFLOP a repeat at 8 lanes */
  double best = 0.0;
  for (int repeat = 0; repeat < 5; ++repeat) {
    const double start = thread_seconds();
    for (long i = 0; i < iterations; ++i) {
      STEP(a0); STEP(a1); STEP(a2); STEP(a3); STEP(a4); STEP(a5);
      STEP(a6); STEP(a7); STEP(a8); STEP(a9); STEP(a10); STEP(a11);
    }
    const double gflops = iterations * 12.0 * 2.0 * LANES / (thread_seconds() - start) / 1e9;
    if (gflops > best) best = gflops;
  }
  /* the sum keeps every chain live, so the compiler cannot drop any */
  vec sum = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
  sum = ADD(sum, ADD(ADD(a8, a9), ADD(a10, a11)));
  float lanes[LANES];
  STOREU(lanes, sum);
  printf(NAME " fp32 peak, 1 thread, best of 5: %.1f GFLOP/s (checksum %g)\n", best, lanes[0]);
  return 0;
}
