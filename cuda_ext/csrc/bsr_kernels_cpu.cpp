// Run-time choice of the CPU kernel path: the best one this CPU can run, or the one named by the
// environment variable TLC_BSR_ISA (read once, at the first kernel call). Each path lives in its own
// file, compiled for its instruction set by target regions, so one build runs on any CPU of the
// architecture and uses what it finds (no -march=native object that breaks on another machine).
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "bsr_cpu_common.h"

namespace tlc_bsr {
namespace {

struct Path {
  Isa isa;
  const char* name;
};
// Best first: the first one the CPU supports is the default.
constexpr Path kPaths[] = {
    {Isa::kAvx512Bf16, "avx512-bf16"}, {Isa::kAvx512, "avx512"}, {Isa::kAvx2, "avx2"}, {Isa::kPortable, "portable"}};

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // the checks include the OS's support for the wider registers (XCR0)
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  switch (isa) {
    case Isa::kAvx512Bf16: return avx512 && __builtin_cpu_supports("avx512bf16");
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    case Isa::kPortable: return true;
  }
  return false;
#else
  return isa == Isa::kPortable;
#endif
}

std::string supported_list() {
  std::string names;
  for (const Path& p : kPaths)
    if (cpu_supports(p.isa)) names += (names.empty() ? "" : ", ") + std::string(p.name);
  return names;
}

const Path& choose_path() {
  const char* forced = std::getenv("TLC_BSR_ISA");
  if (forced == nullptr || *forced == '\0' || std::string(forced) == "auto") {
    for (const Path& p : kPaths)
      if (cpu_supports(p.isa)) return p;
  }
  for (const Path& p : kPaths) {
    if (std::string(forced) != p.name) continue;
    if (!cpu_supports(p.isa))
      throw std::runtime_error("TLC_BSR_ISA=" + std::string(forced) + " names a kernel path this CPU cannot run; " +
                               "it can run: " + supported_list() + " (or unset TLC_BSR_ISA to pick the best)");
    return p;
  }
  throw std::runtime_error("TLC_BSR_ISA=" + std::string(forced) +
                           " is not a kernel path; valid: auto, avx512-bf16, avx512, avx2, portable");
}

const Path& active() {
  static const Path& path = choose_path();  // a throw leaves it unset, so the next call reports again
  return path;
}

const KernelTable& table() {
  switch (active().isa) {
#if defined(__x86_64__) || defined(__i386__)
    case Isa::kAvx512Bf16: return avx512_bf16::kernels();
    case Isa::kAvx512: return avx512::kernels();
    case Isa::kAvx2: return avx2::kernels();
#endif
    default: return portable::kernels();
  }
}

// One or two tokens make the forward a matrix-vector product bound by reading W; the AVX2 kernel
// for it (whole blocks in order, 8-row horizontal sums) reads as fast as 512-bit code could, so
// the AVX-512 paths use it too (every CPU with the AVX-512 paths has AVX2).
const KernelTable& forward_table(int64_t tokens) {
#if defined(__x86_64__) || defined(__i386__)
  const Isa isa = active().isa;
  if (tokens <= 2 && (isa == Isa::kAvx512 || isa == Isa::kAvx512Bf16)) return avx2::kernels();
#endif
  return table();
}

}  // namespace

Isa active_isa() { return active().isa; }
const char* cpu_kernel_isa() { return active().name; }

std::vector<std::string> cpu_kernel_isas() {
  std::vector<std::string> names;
  for (const Path& p : kPaths)
    if (cpu_supports(p.isa)) names.emplace_back(p.name);
  return names;
}

void bsr_forward_f32(const BsrShape& s, const float* x, const float* values, const int64_t* crow, const int64_t* col,
                     const float* bias, float* y) {
  forward_table(s.tokens).forward_f32(s, x, values, crow, col, bias, y);
}
void bsr_forward_bf16(const BsrShape& s, const uint16_t* x, const uint16_t* values, const int64_t* crow,
                      const int64_t* col, const uint16_t* bias, uint16_t* y) {
  forward_table(s.tokens).forward_bf16(s, x, values, crow, col, bias, y);
}
void bsr_grad_input_f32(const BsrShape& s, const float* grad_y, const float* values, const int64_t* crow,
                        const int64_t* col, float* grad_x) {
  table().grad_input_f32(s, grad_y, values, crow, col, grad_x);
}
void bsr_grad_input_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* values, const int64_t* crow,
                         const int64_t* col, uint16_t* grad_x) {
  table().grad_input_bf16(s, grad_y, values, crow, col, grad_x);
}
void bsr_grad_values_f32(const BsrShape& s, const float* grad_y, const float* x, const int64_t* crow,
                         const int64_t* col, float* grad_values) {
  table().grad_values_f32(s, grad_y, x, crow, col, grad_values);
}
void bsr_grad_values_bf16(const BsrShape& s, const uint16_t* grad_y, const uint16_t* x, const int64_t* crow,
                          const int64_t* col, uint16_t* grad_values) {
  table().grad_values_bf16(s, grad_y, x, crow, col, grad_values);
}

}  // namespace tlc_bsr
