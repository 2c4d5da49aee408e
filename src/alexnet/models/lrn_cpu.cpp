// Fused CPU kernels for AlexNet's local response normalisation (Krizhevsky et al. 2012, §3.3):
//
//     d_i = k + alpha * sum_{j in win(i)} a_j^2,   b_i = a_i * d_i^(-beta)
//     dL/da_i = g_i d_i^(-beta) - 2 alpha beta a_i sum_{j: i in win(j)} g_j b_j / d_j
//
// with win(i) = i - before .. i + after, clipped to the channels. One pass over memory for the forward and one
// for the backward, where the PyTorch composition makes about ten (docs/performance.md). beta = 0.75 (the value
// of both papers and of Caffe) is computed as r * sqrt(r) with r = 1 / sqrt(d): two correctly rounded square
// roots and a division, vectorised, instead of a scalar pow. Other betas use std::pow.
//
// Two layouts, both with the channel dimension split out of a dense tensor seen as [outer, C, inner]:
//   planar      (NCHW, inner = H*W > 1): tiles of TILE pixels; the vector dimension is the pixel.
//   interleaved (channels-last or inner == 1): one pixel at a time; the vector dimension is the channel.
// The window sums add the n shifted rows of a zero-padded buffer of squares, in a fixed order: no running sum
// that could drift. Built by alexnet/models/native.py with the system C++ compiler and OpenMP (torch's libgomp,
// which is already loaded); called through ctypes, which releases the GIL.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t TILE = 128;  // pixels per planar tile: buffers of (C + n - 1) * TILE stay in L2

template <typename T>
struct Params {
  int64_t outer, channels, inner;
  int before, after;  // the forward window
  int threads;
  T alpha, beta, k;
};

// out[v] = x[v] * (k + alpha s[v])^-beta  (+= when accumulate); the branch on beta sits outside the loops so
// that each loop vectorises
template <typename T>
inline void scale(const T* __restrict x, const T* __restrict s, T* __restrict out, int64_t len, T alpha, T k,
                  T beta) {
  if (beta == T(0.75)) {
    for (int64_t v = 0; v < len; ++v) {
      const T r = T(1) / std::sqrt(k + alpha * s[v]);
      out[v] = x[v] * (r * std::sqrt(r));
    }
  } else {
    for (int64_t v = 0; v < len; ++v) out[v] = x[v] * std::pow(k + alpha * s[v], -beta);
  }
}

// xy[v] *= (k + alpha s[v])^-beta: the in-place forward (inference), without aliased __restrict pointers
template <typename T>
inline void scale_inplace(T* __restrict xy, const T* __restrict s, int64_t len, T alpha, T k, T beta) {
  if (beta == T(0.75)) {
    for (int64_t v = 0; v < len; ++v) {
      const T r = T(1) / std::sqrt(k + alpha * s[v]);
      xy[v] *= r * std::sqrt(r);
    }
  } else {
    for (int64_t v = 0; v < len; ++v) xy[v] *= std::pow(k + alpha * s[v], -beta);
  }
}

// y = x (k + alpha s)^-beta, in place when y == x (the squares are already in their own buffer)
template <typename T>
inline void apply(const T* x, T* y, const T* s, int64_t len, T alpha, T k, T beta) {
  if (x == y) scale_inplace(y, s, len, alpha, k, beta);
  else scale(x, s, y, len, alpha, k, beta);
}

// t[v] = g[v] y[v] / (k + alpha s[v])
template <typename T>
inline void ratio(const T* __restrict g, const T* __restrict y, const T* __restrict s, T* __restrict t,
                  int64_t len, T alpha, T k) {
  for (int64_t v = 0; v < len; ++v) t[v] = g[v] * y[v] / (k + alpha * s[v]);
}

// out[v] += coef x[v] w[v]
template <typename T>
inline void add_scaled(const T* __restrict x, const T* __restrict w, T* __restrict out, int64_t len, T coef) {
  for (int64_t v = 0; v < len; ++v) out[v] += coef * x[v] * w[v];
}

// s[v] = x[v]^2
template <typename T>
inline void square(const T* __restrict x, T* __restrict s, int64_t len) {
  for (int64_t v = 0; v < len; ++v) s[v] = x[v] * x[v];
}

// acc[v] = sum_{j < n} rows[j * stride + v] for v < len
template <typename T>
inline void window_sum(const T* __restrict rows, int64_t stride, int n, int64_t len, T* __restrict acc) {
  for (int64_t v = 0; v < len; ++v) acc[v] = rows[v];
  for (int j = 1; j < n; ++j) {
    const T* __restrict r = rows + j * stride;
    for (int64_t v = 0; v < len; ++v) acc[v] += r[v];
  }
}

// ---------------------------------------------------------------- planar: vectors run along pixels

template <typename T>
void forward_planar(const T* x, T* y, const Params<T>& p) {
  const int64_t C = p.channels, inner = p.inner, tiles = (inner + TILE - 1) / TILE;
  const int n = p.before + p.after + 1;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> sq((C + n - 1) * TILE, T(0)), acc(TILE);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < p.outer * tiles; ++item) {
      const int64_t o = item / tiles, p0 = (item % tiles) * TILE, len = std::min(TILE, inner - p0);
      const T* xo = x + o * C * inner + p0;
      T* yo = y + o * C * inner + p0;
      for (int64_t c = 0; c < C; ++c) square(xo + c * inner, sq.data() + (c + p.before) * TILE, len);
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data() + c * TILE, TILE, n, len, acc.data());
        apply(xo + c * inner, yo + c * inner, acc.data(), len, p.alpha, p.k, p.beta);
      }
    }
  }
}

template <typename T>
void backward_planar(const T* g, const T* x, const T* y, T* dx, const Params<T>& p) {
  const int64_t C = p.channels, inner = p.inner, tiles = (inner + TILE - 1) / TILE;
  const int n = p.before + p.after + 1;
  const T coef = T(-2) * p.alpha * p.beta;
#pragma omp parallel num_threads(p.threads)
  {
    // sq: squares padded by `before` rows; t = g b / d padded by `after` rows (the transposed window)
    std::vector<T> sq((C + n - 1) * TILE, T(0)), t((C + n - 1) * TILE, T(0)), acc(TILE);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < p.outer * tiles; ++item) {
      const int64_t o = item / tiles, p0 = (item % tiles) * TILE, len = std::min(TILE, inner - p0);
      const int64_t base = o * C * inner + p0;
      for (int64_t c = 0; c < C; ++c) square(x + base + c * inner, sq.data() + (c + p.before) * TILE, len);
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data() + c * TILE, TILE, n, len, acc.data());
        const int64_t at = base + c * inner;
        ratio(g + at, y + at, acc.data(), t.data() + (c + p.after) * TILE, len, p.alpha, p.k);
      }
      for (int64_t c = 0; c < C; ++c) {
        // d^-beta again from the squares (cheaper than a third buffer), then the transposed window of t
        const int64_t at = base + c * inner;
        window_sum(sq.data() + c * TILE, TILE, n, len, acc.data());
        scale(g + at, acc.data(), dx + at, len, p.alpha, p.k, p.beta);
        window_sum(t.data() + c * TILE, TILE, n, len, acc.data());
        add_scaled(x + at, acc.data(), dx + at, len, coef);
      }
    }
  }
}

// ---------------------------------------------------------------- interleaved: vectors run along channels

template <typename T>
void forward_interleaved(const T* x, T* y, const Params<T>& p) {
  const int64_t C = p.channels, pixels = p.outer * p.inner;
  const int n = p.before + p.after + 1;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> sq(C + n - 1, T(0)), acc(C);
#pragma omp for schedule(static)
    for (int64_t px = 0; px < pixels; ++px) {
      square(x + px * C, sq.data() + p.before, C);
      window_sum(sq.data(), 1, n, C, acc.data());
      apply(x + px * C, y + px * C, acc.data(), C, p.alpha, p.k, p.beta);
    }
  }
}

template <typename T>
void backward_interleaved(const T* g, const T* x, const T* y, T* dx, const Params<T>& p) {
  const int64_t C = p.channels, pixels = p.outer * p.inner;
  const int n = p.before + p.after + 1;
  const T coef = T(-2) * p.alpha * p.beta;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> sq(C + n - 1, T(0)), t(C + n - 1, T(0)), s(C), acc(C);
#pragma omp for schedule(static)
    for (int64_t px = 0; px < pixels; ++px) {
      const int64_t at = px * C;
      square(x + at, sq.data() + p.before, C);
      window_sum(sq.data(), 1, n, C, s.data());
      ratio(g + at, y + at, s.data(), t.data() + p.after, C, p.alpha, p.k);
      window_sum(t.data(), 1, n, C, acc.data());
      scale(g + at, s.data(), dx + at, C, p.alpha, p.k, p.beta);
      add_scaled(x + at, acc.data(), dx + at, C, coef);
    }
  }
}

template <typename T>
Params<T> params(int64_t outer, int64_t channels, int64_t inner, int before, int after, double alpha, double beta,
                 double k, int threads) {
  return Params<T>{outer, channels, inner, before, after, std::max(threads, 1), T(alpha), T(beta), T(k)};
}

template <typename T>
void forward(const T* x, T* y, int64_t outer, int64_t channels, int64_t inner, int before, int after,
             double alpha, double beta, double k, int threads) {
  const auto p = params<T>(outer, channels, inner, before, after, alpha, beta, k, threads);
  if (inner == 1) forward_interleaved(x, y, p);
  else forward_planar(x, y, p);
}

template <typename T>
void backward(const T* g, const T* x, const T* y, T* dx, int64_t outer, int64_t channels, int64_t inner,
              int before, int after, double alpha, double beta, double k, int threads) {
  const auto p = params<T>(outer, channels, inner, before, after, alpha, beta, k, threads);
  if (inner == 1) backward_interleaved(g, x, y, dx, p);
  else backward_planar(g, x, y, dx, p);
}

}  // namespace

// Entry points (C ABI for ctypes). A channels-last N×C×H×W tensor is passed as outer = N·H·W, inner = 1.
// The forward may be called with y == x (in place): each tile's squares are taken before any of it is written.
extern "C" {
void lrn_forward_f32(const float* x, float* y, int64_t outer, int64_t channels, int64_t inner, int before,
                     int after, double alpha, double beta, double k, int threads) {
  forward(x, y, outer, channels, inner, before, after, alpha, beta, k, threads);
}
void lrn_forward_f64(const double* x, double* y, int64_t outer, int64_t channels, int64_t inner, int before,
                     int after, double alpha, double beta, double k, int threads) {
  forward(x, y, outer, channels, inner, before, after, alpha, beta, k, threads);
}
void lrn_backward_f32(const float* g, const float* x, const float* y, float* dx, int64_t outer, int64_t channels,
                      int64_t inner, int before, int after, double alpha, double beta, double k, int threads) {
  backward(g, x, y, dx, outer, channels, inner, before, after, alpha, beta, k, threads);
}
void lrn_backward_f64(const double* g, const double* x, const double* y, double* dx, int64_t outer,
                      int64_t channels, int64_t inner, int before, int after, double alpha, double beta,
                      double k, int threads) {
  backward(g, x, y, dx, outer, channels, inner, before, after, alpha, beta, k, threads);
}
}
