// Gather + BLAS kernels of the portable path (fp32): each block-row (or block-column) of the BSR
// product is one small dense GEMM once its operand panel is gathered, so it runs on torch's tuned
// GEMM (MKL, oneDNN, OpenBLAS, Accelerate: whatever this torch uses on this CPU) instead of on
// loops tuned for no machine. Threads take whole block-rows; each GEMM runs on one thread.
//   forward      y[:, r]        = X_r · W_rᵀ     X_r [tokens, n_r·bs] gathered columns of x, W_r [bs, n_r·bs]
//   grad_input   grad_x[:, c]   = G_c · W_c      G_c [tokens, n_c·bs] gathered columns of grad_y, W_c [n_c·bs, bs]
//   grad_values  [W_r blocks]   = grad_y[:, r]ᵀ · X_r, then scattered back to the blocks
#include "bsr_blas_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "bsr_cpu_common.h"

namespace tlc_bsr {
namespace {

// Tokens per gathered panel: bounds the per-thread buffer (≤ 4 MiB at in_features 4096) and keeps
// a panel near L2 while its GEMM runs.
constexpr int64_t kTokenChunk = 256;

at::Tensor matrix(float* data, int64_t rows, int64_t cols) {
  return at::from_blob(data, {rows, cols}, at::TensorOptions().dtype(at::kFloat));
}

// panel[t, kk·bs + j] = src[t0 + t, col_of(kk)·bs + j] for kk < n: copy bs-wide column strips.
template <typename ColOf>
void gather_columns(const float* src, int64_t ld, int64_t t0, int64_t tc, int64_t n, int64_t bs, ColOf col_of,
                    float* panel) {
  for (int64_t t = 0; t < tc; ++t) {
    const float* row = src + (t0 + t) * ld;
    float* dst = panel + t * n * bs;
    for (int64_t kk = 0; kk < n; ++kk) std::memcpy(dst + kk * bs, row + col_of(kk) * bs, bs * sizeof(float));
  }
}

}  // namespace

bool use_blas_path(const at::Tensor& dense) {
  return active_isa() == Isa::kPortable && dense.scalar_type() == at::kFloat && dense.size(0) >= kBlasMinTokens;
}

at::Tensor blas_forward(const at::Tensor& x, const at::Tensor& values, const at::Tensor& crow, const at::Tensor& col,
                        const at::Tensor& bias) {
  const int64_t bs = values.size(1), n_tok = x.size(0), ld = x.size(1), rows = crow.numel() - 1, out = rows * bs;
  const float* xp = x.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  const int64_t* cr = crow.data_ptr<int64_t>();
  const int64_t* cl = col.data_ptr<int64_t>();
  at::Tensor y = bias.defined() ? bias.expand({n_tok, out}).contiguous() : at::zeros({n_tok, out}, x.options());
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w_panel, x_panel;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t kb = cr[r], n = cr[r + 1] - kb;
      if (n == 0) continue;
      w_panel.resize(bs * n * bs);  // W_r[i, kk·bs + j] = values[kb + kk][i][j]
      for (int64_t kk = 0; kk < n; ++kk)
        for (int64_t i = 0; i < bs; ++i)
          std::memcpy(&w_panel[i * n * bs + kk * bs], vp + ((kb + kk) * bs + i) * bs, bs * sizeof(float));
      const at::Tensor w_r = matrix(w_panel.data(), bs, n * bs);
      for (int64_t t0 = 0; t0 < n_tok; t0 += kTokenChunk) {
        const int64_t tc = std::min(kTokenChunk, n_tok - t0);
        x_panel.resize(tc * n * bs);
        gather_columns(xp, ld, t0, tc, n, bs, [&](int64_t kk) { return cl[kb + kk]; }, x_panel.data());
        at::Tensor y_tile = y.narrow(0, t0, tc).narrow(1, r * bs, bs);
        at::addmm_out(y_tile, y_tile, matrix(x_panel.data(), tc, n * bs), w_r.t());
      }
    }
  });
  return y;
}

at::Tensor blas_grad_input(const at::Tensor& grad_y, const at::Tensor& values, const at::Tensor& crow,
                           const at::Tensor& col, int64_t in_features) {
  const int64_t bs = values.size(1), n_tok = grad_y.size(0), rows = crow.numel() - 1, out = rows * bs;
  const BsrShape s{n_tok, in_features, rows, values.size(0), static_cast<int>(bs), 1};
  const ColumnView cv = column_view(s, crow.data_ptr<int64_t>(), col.data_ptr<int64_t>());
  const float* gp = grad_y.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  at::Tensor gx = at::empty({n_tok, in_features}, grad_y.options());
  at::parallel_for(0, in_features / bs, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w_panel, g_panel;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t pb = cv.col_ptr[c], n = cv.col_ptr[c + 1] - pb;
      if (n == 0) {
        gx.narrow(1, c * bs, bs).zero_();
        continue;
      }
      w_panel.resize(n * bs * bs);  // W_c: the blocks of block-column c stacked, [n·bs, bs]
      for (int64_t p = 0; p < n; ++p)
        std::memcpy(&w_panel[p * bs * bs], vp + cv.col_block[pb + p] * bs * bs, bs * bs * sizeof(float));
      const at::Tensor w_c = matrix(w_panel.data(), n * bs, bs);
      for (int64_t t0 = 0; t0 < n_tok; t0 += kTokenChunk) {
        const int64_t tc = std::min(kTokenChunk, n_tok - t0);
        g_panel.resize(tc * n * bs);
        gather_columns(gp, out, t0, tc, n, bs, [&](int64_t p) { return cv.block_row[cv.col_block[pb + p]]; },
                       g_panel.data());
        at::Tensor gx_tile = gx.narrow(0, t0, tc).narrow(1, c * bs, bs);
        at::mm_out(gx_tile, matrix(g_panel.data(), tc, n * bs), w_c);
      }
    }
  });
  return gx;
}

at::Tensor blas_grad_values(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& crow,
                            const at::Tensor& col, int64_t bs) {
  const int64_t n_tok = x.size(0), ld = x.size(1), rows = crow.numel() - 1;
  const float* xp = x.data_ptr<float>();
  const int64_t* cr = crow.data_ptr<int64_t>();
  const int64_t* cl = col.data_ptr<int64_t>();
  at::Tensor gv = at::empty({col.numel(), bs, bs}, x.options());
  float* gvp = gv.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> x_panel, acc;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t kb = cr[r], n = cr[r + 1] - kb;
      if (n == 0) continue;
      acc.assign(bs * n * bs, 0.f);  // [bs, n·bs] fp32, summed over token chunks
      at::Tensor acc_t = matrix(acc.data(), bs, n * bs);
      for (int64_t t0 = 0; t0 < n_tok; t0 += kTokenChunk) {
        const int64_t tc = std::min(kTokenChunk, n_tok - t0);
        x_panel.resize(tc * n * bs);
        gather_columns(xp, ld, t0, tc, n, bs, [&](int64_t kk) { return cl[kb + kk]; }, x_panel.data());
        const at::Tensor gy_r = grad_y.narrow(0, t0, tc).narrow(1, r * bs, bs);  // [tc, bs], row stride out
        at::addmm_out(acc_t, acc_t, gy_r.t(), matrix(x_panel.data(), tc, n * bs));
      }
      for (int64_t kk = 0; kk < n; ++kk)  // grad_values[kb + kk][i][j] = acc[i, kk·bs + j]
        for (int64_t i = 0; i < bs; ++i)
          std::memcpy(gvp + ((kb + kk) * bs + i) * bs, &acc[i * n * bs + kk * bs], bs * sizeof(float));
    }
  });
  return gv;
}

}  // namespace tlc_bsr
