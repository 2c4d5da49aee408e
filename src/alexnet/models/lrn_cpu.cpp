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
// Storage types float, double and bfloat16; bfloat16 is computed in float (loaded by a shift, stored with
// round-to-nearest-even as PyTorch does), so autocast's bf16 activations take the same single pass.
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
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t TILE = 128;  // pixels per planar tile: buffers of (C + n - 1) * TILE stay in L2

struct bf16 {
  uint16_t bits;
};

// S: how a tensor stores its elements; Compute<S>: the type the arithmetic runs in
template <typename S>
struct Compute {
  using type = S;
};
template <>
struct Compute<bf16> {
  using type = float;
};

inline float load(float v) { return v; }
inline double load(double v) { return v; }
inline float load(bf16 v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename S>
inline S store(typename Compute<S>::type v) {
  return v;
}
template <>
inline bf16 store<bf16>(float v) {  // round to nearest even; NaN → 0x7FC0 (c10::BFloat16's conversion)
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return bf16{uint16_t((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded)};
}

template <typename T>
struct Params {
  int64_t outer, channels, inner;
  int before, after;  // the forward window
  int threads;
  T alpha, beta, k;
};

// d^-0.75 as r·√r with r = 1/√d (vectorises; pow does not)
template <typename T>
inline T pow_minus_075(T d) {
  const T r = T(1) / std::sqrt(d);
  return r * std::sqrt(r);
}

// out[v] = x[v] (k + alpha s[v])^-beta; the branch on beta sits outside the loops so that each loop vectorises
template <typename S, typename T>
inline void scale(const S* __restrict x, const T* __restrict s, S* __restrict out, int64_t len, T alpha, T k,
                  T beta) {
  if (beta == T(0.75)) {
    for (int64_t v = 0; v < len; ++v) out[v] = store<S>(load(x[v]) * pow_minus_075(k + alpha * s[v]));
  } else {
    for (int64_t v = 0; v < len; ++v) out[v] = store<S>(load(x[v]) * std::pow(k + alpha * s[v], -beta));
  }
}

// the same in place (inference), without aliased __restrict pointers
template <typename S, typename T>
inline void scale_inplace(S* __restrict xy, const T* __restrict s, int64_t len, T alpha, T k, T beta) {
  if (beta == T(0.75)) {
    for (int64_t v = 0; v < len; ++v) xy[v] = store<S>(load(xy[v]) * pow_minus_075(k + alpha * s[v]));
  } else {
    for (int64_t v = 0; v < len; ++v) xy[v] = store<S>(load(xy[v]) * std::pow(k + alpha * s[v], -beta));
  }
}

// y = x (k + alpha s)^-beta, in place when y == x (the squares are already in their own buffer)
template <typename S, typename T>
inline void apply(const S* x, S* y, const T* s, int64_t len, T alpha, T k, T beta) {
  if (x == y) scale_inplace(y, s, len, alpha, k, beta);
  else scale(x, s, y, len, alpha, k, beta);
}

// t[v] = g[v] y[v] / (k + alpha s[v])
template <typename S, typename T>
inline void ratio(const S* __restrict g, const S* __restrict y, const T* __restrict s, T* __restrict t,
                  int64_t len, T alpha, T k) {
  for (int64_t v = 0; v < len; ++v) t[v] = load(g[v]) * load(y[v]) / (k + alpha * s[v]);
}

// dx[v] = g[v] (k + alpha s[v])^-beta + coef x[v] w[v]  (w: the transposed window sum of t)
template <typename S, typename T>
inline void gradient(const S* __restrict g, const S* __restrict x, const T* __restrict s, const T* __restrict w,
                     S* __restrict dx, int64_t len, T alpha, T k, T beta, T coef) {
  if (beta == T(0.75)) {
    for (int64_t v = 0; v < len; ++v)
      dx[v] = store<S>(load(g[v]) * pow_minus_075(k + alpha * s[v]) + coef * load(x[v]) * w[v]);
  } else {
    for (int64_t v = 0; v < len; ++v)
      dx[v] = store<S>(load(g[v]) * std::pow(k + alpha * s[v], -beta) + coef * load(x[v]) * w[v]);
  }
}

// s[v] = x[v]^2
template <typename S, typename T>
inline void square(const S* __restrict x, T* __restrict s, int64_t len) {
  for (int64_t v = 0; v < len; ++v) {
    const T a = load(x[v]);
    s[v] = a * a;
  }
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

template <typename S, typename T>
void forward_planar(const S* x, S* y, const Params<T>& p) {
  const int64_t C = p.channels, inner = p.inner, tiles = (inner + TILE - 1) / TILE;
  const int n = p.before + p.after + 1;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> sq((C + n - 1) * TILE, T(0)), acc(TILE);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < p.outer * tiles; ++item) {
      const int64_t o = item / tiles, p0 = (item % tiles) * TILE, len = std::min(TILE, inner - p0);
      const S* xo = x + o * C * inner + p0;
      S* yo = y + o * C * inner + p0;
      for (int64_t c = 0; c < C; ++c) square(xo + c * inner, sq.data() + (c + p.before) * TILE, len);
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data() + c * TILE, TILE, n, len, acc.data());
        apply(xo + c * inner, yo + c * inner, acc.data(), len, p.alpha, p.k, p.beta);
      }
    }
  }
}

template <typename S, typename T>
void backward_planar(const S* g, const S* x, const S* y, S* dx, const Params<T>& p) {
  const int64_t C = p.channels, inner = p.inner, tiles = (inner + TILE - 1) / TILE;
  const int n = p.before + p.after + 1;
  const T coef = T(-2) * p.alpha * p.beta;
#pragma omp parallel num_threads(p.threads)
  {
    // sq: squares padded by `before` rows; t = g b / d padded by `after` rows (the transposed window)
    std::vector<T> sq((C + n - 1) * TILE, T(0)), t((C + n - 1) * TILE, T(0)), s(TILE), w(TILE);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < p.outer * tiles; ++item) {
      const int64_t o = item / tiles, p0 = (item % tiles) * TILE, len = std::min(TILE, inner - p0);
      const int64_t base = o * C * inner + p0;
      for (int64_t c = 0; c < C; ++c) square(x + base + c * inner, sq.data() + (c + p.before) * TILE, len);
      for (int64_t c = 0; c < C; ++c) {
        window_sum(sq.data() + c * TILE, TILE, n, len, s.data());
        const int64_t at = base + c * inner;
        ratio(g + at, y + at, s.data(), t.data() + (c + p.after) * TILE, len, p.alpha, p.k);
      }
      for (int64_t c = 0; c < C; ++c) {
        // the window sum of squares again (cheaper than a third buffer), then the transposed window of t
        const int64_t at = base + c * inner;
        window_sum(sq.data() + c * TILE, TILE, n, len, s.data());
        window_sum(t.data() + c * TILE, TILE, n, len, w.data());
        gradient(g + at, x + at, s.data(), w.data(), dx + at, len, p.alpha, p.k, p.beta, coef);
      }
    }
  }
}

// ---------------------------------------------------------------- interleaved: vectors run along channels

template <typename S, typename T>
void forward_interleaved(const S* x, S* y, const Params<T>& p) {
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

template <typename S, typename T>
void backward_interleaved(const S* g, const S* x, const S* y, S* dx, const Params<T>& p) {
  const int64_t C = p.channels, pixels = p.outer * p.inner;
  const int n = p.before + p.after + 1;
  const T coef = T(-2) * p.alpha * p.beta;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> sq(C + n - 1, T(0)), t(C + n - 1, T(0)), s(C), w(C);
#pragma omp for schedule(static)
    for (int64_t px = 0; px < pixels; ++px) {
      const int64_t at = px * C;
      square(x + at, sq.data() + p.before, C);
      window_sum(sq.data(), 1, n, C, s.data());
      ratio(g + at, y + at, s.data(), t.data() + p.after, C, p.alpha, p.k);
      window_sum(t.data(), 1, n, C, w.data());
      gradient(g + at, x + at, s.data(), w.data(), dx + at, C, p.alpha, p.k, p.beta, coef);
    }
  }
}

template <typename T>
Params<T> params(int64_t outer, int64_t channels, int64_t inner, int before, int after, double alpha, double beta,
                 double k, int threads) {
  return Params<T>{outer, channels, inner, before, after, std::max(threads, 1), T(alpha), T(beta), T(k)};
}

template <typename S>
void forward(const void* x, void* y, int64_t outer, int64_t channels, int64_t inner, int before, int after,
             double alpha, double beta, double k, int threads) {
  using T = typename Compute<S>::type;
  const auto p = params<T>(outer, channels, inner, before, after, alpha, beta, k, threads);
  const S* xs = static_cast<const S*>(x);
  S* ys = static_cast<S*>(y);
  if (inner == 1) forward_interleaved(xs, ys, p);
  else forward_planar(xs, ys, p);
}

template <typename S>
void backward(const void* g, const void* x, const void* y, void* dx, int64_t outer, int64_t channels,
              int64_t inner, int before, int after, double alpha, double beta, double k, int threads) {
  using T = typename Compute<S>::type;
  const auto p = params<T>(outer, channels, inner, before, after, alpha, beta, k, threads);
  const S *gs = static_cast<const S*>(g), *xs = static_cast<const S*>(x), *ys = static_cast<const S*>(y);
  S* ds = static_cast<S*>(dx);
  if (inner == 1) backward_interleaved(gs, xs, ys, ds, p);
  else backward_planar(gs, xs, ys, ds, p);
}


// ---------------------------------------------------------------- inference stages (channels-last)
//
// AlexNet §3.3–3.4: each of conv1 and conv2 is followed by ReLU, LRN and overlapping max-pooling (z = 3, s = 2), in
// the order relu → norm → pool (AlexNet) or relu → pool → norm (CaffeNet; ZFNet, Fig. 3). Without autograd the
// three run here as one pass over the conv's output: the pooled maps are the only thing written, where the
// three modules read and write the full-size maps three times. Each function computes what the three PyTorch
// modules compute, in the same arithmetic: the LRN by the helpers above, max-pooling as max_pool2d does it
// (NaN wins), ReLU as torch.relu (NaN passes). max commutes with ReLU and with rounding to bf16 (both monotone).

struct Pool {
  int64_t N, H, W, C, Ho, Wo;
  int kernel, stride;
};

template <typename T>
inline T relu(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename T>
inline T pool_max(T m, T v) {
  return (v > m || v != v) ? v : m;
}

// The LRN of one pixel's channel vector a (already through the ReLU) into out; sq is padded by before + after.
template <typename T>
inline void lrn_pixel(const T* a, T* sq, T* acc, T* out, int64_t C, const Params<T>& p) {
  square(a, sq + p.before, C);
  window_sum(sq, 1, p.before + p.after + 1, C, acc);
  scale(a, acc, out, C, p.alpha, p.k, p.beta);
}

// Work items: (image, band of output rows), enough of them to keep every thread busy at batch 1 too.
inline int64_t rows_per_band(const Pool& q, int threads) {
  const int64_t want = int64_t(threads) * 4;
  return q.N >= want ? q.Ho : std::max<int64_t>(1, (q.N * q.Ho + want - 1) / want);
}

// relu → LRN → max-pool: LRN'd input rows go to a ring of `kernel` rows, each computed once per band
template <typename S, typename T>
void stage_norm_pool(const S* x, S* y, const Pool& q, const Params<T>& p) {
  const int64_t C = q.C, band = rows_per_band(q, p.threads), bands = (q.Ho + band - 1) / band;
  const int n = p.before + p.after + 1;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> ring(q.kernel * q.W * C), a(C), sq(C + n - 1, T(0)), acc(C), m(C);
    std::vector<int64_t> held(q.kernel);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * bands; ++item) {
      const int64_t img = item / bands, oy0 = (item % bands) * band, oy1 = std::min(q.Ho, oy0 + band);
      const S* xi = x + img * q.H * q.W * C;
      std::fill(held.begin(), held.end(), int64_t(-1));
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const int64_t r0 = oy * q.stride, r1 = std::min(q.H, r0 + q.kernel);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t slot = r % q.kernel;
          if (held[slot] == r) continue;
          held[slot] = r;
          for (int64_t px = 0; px < q.W; ++px) {
            const S* in = xi + (r * q.W + px) * C;
            for (int64_t c = 0; c < C; ++c) a[c] = relu(load(in[c]));
            lrn_pixel(a.data(), sq.data(), acc.data(), ring.data() + (slot * q.W + px) * C, C, p);
          }
        }
        for (int64_t ox = 0; ox < q.Wo; ++ox) {
          const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel);
          std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t col = c0; col < c1; ++col) {
              const T* v = ring.data() + ((r % q.kernel) * q.W + col) * C;
              for (int64_t c = 0; c < C; ++c) m[c] = pool_max(m[c], v[c]);
            }
          S* out = y + ((img * q.Ho + oy) * q.Wo + ox) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = store<S>(m[c]);
        }
      }
    }
  }
}

// relu → max-pool → LRN: pool the raw maps, ReLU the maximum, normalise the pooled vector
template <typename S, typename T>
void stage_pool_norm(const S* x, S* y, const Pool& q, const Params<T>& p) {
  const int64_t C = q.C;
  const int n = p.before + p.after + 1;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> m(C), sq(C + n - 1, T(0)), acc(C), out(C);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * q.Ho; ++item) {
      const int64_t img = item / q.Ho, oy = item % q.Ho;
      const int64_t r0 = oy * q.stride, r1 = std::min(q.H, r0 + q.kernel);
      const S* xi = x + img * q.H * q.W * C;
      for (int64_t ox = 0; ox < q.Wo; ++ox) {
        const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel);
        std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t col = c0; col < c1; ++col) {
            const S* v = xi + (r * q.W + col) * C;
            for (int64_t c = 0; c < C; ++c) m[c] = pool_max(m[c], load(v[c]));
          }
        for (int64_t c = 0; c < C; ++c) m[c] = relu(m[c]);
        lrn_pixel(m.data(), sq.data(), acc.data(), out.data(), C, p);
        S* o = y + ((img * q.Ho + oy) * q.Wo + ox) * C;
        for (int64_t c = 0; c < C; ++c) o[c] = store<S>(out[c]);
      }
    }
  }
}

template <typename S>
void stage(const void* x, void* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo, int kernel,
           int stride, int pool_first, int before, int after, double alpha, double beta, double k, int threads) {
  using T = typename Compute<S>::type;
  const auto p = params<T>(N * H * W, C, 1, before, after, alpha, beta, k, threads);
  const Pool q{N, H, W, C, Ho, Wo, kernel, stride};
  const S* xs = static_cast<const S*>(x);
  S* ys = static_cast<S*>(y);
  if (pool_first) stage_pool_norm(xs, ys, q, p);
  else stage_norm_pool(xs, ys, q, p);
}

}  // namespace

// Entry points (C ABI for ctypes). A channels-last N×C×H×W tensor is passed as outer = N·H·W, inner = 1.
// The forward may be called with y == x (in place): each tile's squares are taken before any of it is written.
// stage_forward: a channels-last N×C×H×W conv output → its ReLU, LRN and max-pool (padding 0) as N×C×Ho×Wo.
#define LRN_ENTRY_POINTS(SUFFIX, S)                                                                           \
  void lrn_forward_##SUFFIX(const void* x, void* y, int64_t outer, int64_t channels, int64_t inner,            \
                            int before, int after, double alpha, double beta, double k, int threads) {         \
    forward<S>(x, y, outer, channels, inner, before, after, alpha, beta, k, threads);                         \
  }                                                                                                           \
  void lrn_backward_##SUFFIX(const void* g, const void* x, const void* y, void* dx, int64_t outer,             \
                             int64_t channels, int64_t inner, int before, int after, double alpha, double beta, \
                             double k, int threads) {                                                          \
    backward<S>(g, x, y, dx, outer, channels, inner, before, after, alpha, beta, k, threads);                 \
  }                                                                                                           \
  void stage_forward_##SUFFIX(const void* x, void* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho,  \
                              int64_t Wo, int kernel, int stride, int pool_first, int before, int after,      \
                              double alpha, double beta, double k, int threads) {                             \
    stage<S>(x, y, N, H, W, C, Ho, Wo, kernel, stride, pool_first, before, after, alpha, beta, k, threads);    \
  }

extern "C" {
LRN_ENTRY_POINTS(f32, float)
LRN_ENTRY_POINTS(f64, double)
LRN_ENTRY_POINTS(bf16, bf16)
}
