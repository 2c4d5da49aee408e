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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// The same sum at one position for a window known at compile time, in window_sum's order: a loop over v that
// calls it makes one pass over memory where window_sum makes n (interleaved layout, where the window runs along
// the vector). Used for the papers' n = 5 with beta = 0.75; other windows take the general loops.
template <int N, typename T>
inline T window_at(const T* rows, int64_t v) {
  T acc = rows[v];
  for (int j = 1; j < N; ++j) acc += rows[v + j];
  return acc;
}

template <typename T>
inline bool paper_window(const Params<T>& p) {
  return p.before + p.after + 1 == 5 && p.beta == T(0.75);
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
      if (paper_window(p)) {  // one pass; in place is safe (the squares are in their own buffer)
        const S* xp = x + px * C;
        S* yp = y + px * C;
        for (int64_t c = 0; c < C; ++c)
          yp[c] = store<S>(load(xp[c]) * pow_minus_075(p.k + p.alpha * window_at<5>(sq.data(), c)));
        continue;
      }
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
      if (paper_window(p)) {  // the same arithmetic as below, two passes instead of twelve
        for (int64_t c = 0; c < C; ++c) {
          s[c] = window_at<5>(sq.data(), c);
          t[c + p.after] = load(g[at + c]) * load(y[at + c]) / (p.k + p.alpha * s[c]);
        }
        for (int64_t c = 0; c < C; ++c)
          dx[at + c] = store<S>(load(g[at + c]) * pow_minus_075(p.k + p.alpha * s[c]) +
                                coef * load(x[at + c]) * window_at<5>(t.data(), c));
        continue;
      }
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

// ---------------------------------------------------------------- conv stages (channels-last)
//
// AlexNet §3.3–3.4: each of conv1 and conv2 is followed by ReLU, LRN and overlapping max-pooling (z = 3, s = 2), in
// the order relu → norm → pool (AlexNet) or relu → pool → norm (CaffeNet; ZFNet, Fig. 3). Here the three run as
// one pass over the conv's output: the pooled maps are the only thing written, where the three modules read and
// write the full-size maps three times. The functions compute what the three PyTorch modules compute, in the same
// arithmetic: the LRN by the helpers above, max-pooling as max_pool2d does it (the first maximum in scan order
// wins; NaN wins), ReLU as torch.relu (NaN passes). max commutes with ReLU (monotone); LRN outputs are rounded to
// the storage type before they are pooled, as the LRN module stores them, so that bf16 ties pool alike.
//
// For training the forward also writes, per pooled value, where in its window the maximum was (uint8, an offset
// in the k×k window: max_pool2d's index) and, for relu → pool → norm, the pooled maps before the LRN (the LRN's
// input). The backward gathers each input pixel's gradient from the windows that hold it (at most ⌈k/s⌉² of
// them, in max_pool2d_backward's order), so nothing is zero-filled or scattered, and applies the ReLU's mask.

struct Pool {
  int64_t N, H, W, C, Ho, Wo;
  int kernel, stride;
};

template <typename T>
inline T relu(T v) {
  return v < T(0) ? T(0) : v;
}

template <typename T>
inline bool takes(T m, T v) {  // max_pool2d's update rule
  return v > m || v != v;
}

// The pooled positions whose window holds input position r: lo .. hi
inline void windows_of(int64_t r, int64_t out, const Pool& q, int64_t& lo, int64_t& hi) {
  lo = r < q.kernel ? 0 : (r - q.kernel) / q.stride + 1;
  hi = std::min(out - 1, r / q.stride);
}

// The LRN of one pixel's channel vector a (already through the ReLU) into out; sq is padded by before + after.
template <typename T>
inline void lrn_pixel(const T* a, T* sq, T* acc, T* out, int64_t C, const Params<T>& p) {
  square(a, sq + p.before, C);
  if (paper_window(p)) {
    for (int64_t c = 0; c < C; ++c) out[c] = a[c] * pow_minus_075(p.k + p.alpha * window_at<5>(sq, c));
    return;
  }
  window_sum(sq, 1, p.before + p.after + 1, C, acc);
  scale(a, acc, out, C, p.alpha, p.k, p.beta);
}

// m[c] = max over the window of rows r0..r1, cols c0..c1 of at(r, col)[c]; where[c] = its offset in the window
template <typename T, typename At>
inline void window_max(At at, int64_t r0, int64_t r1, int64_t c0, int64_t c1, int kernel, T* m, uint8_t* where,
                       int64_t C) {
  std::fill(m, m + C, -std::numeric_limits<T>::infinity());
  if (where) std::fill(where, where + C, uint8_t(0));  // max_pool2d's index when nothing beats -inf
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t col = c0; col < c1; ++col) {
      const auto* v = at(r, col);
      if (where) {
        const uint8_t off = uint8_t((r - r0) * kernel + (col - c0));
        for (int64_t c = 0; c < C; ++c) {
          const T x = load(v[c]);
          const bool take = takes(m[c], x);
          m[c] = take ? x : m[c];
          where[c] = take ? off : where[c];
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T x = load(v[c]);
          m[c] = takes(m[c], x) ? x : m[c];
        }
      }
    }
}

// Work items: (image, band of output rows), enough of them to keep every thread busy at batch 1 too.
inline int64_t rows_per_band(int64_t images, int64_t rows, int threads) {
  const int64_t want = int64_t(threads) * 4;
  return images >= want ? rows : std::max<int64_t>(1, (images * rows + want - 1) / want);
}

// relu → LRN → max-pool: LRN'd input rows go to a ring of `kernel` rows, each computed once per band
template <typename S, typename T>
void stage_norm_pool(const S* x, S* y, uint8_t* idx, const Pool& q, const Params<T>& p) {
  const int64_t C = q.C, band = rows_per_band(q.N, q.Ho, p.threads), bands = (q.Ho + band - 1) / band;
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
            T* out = ring.data() + (slot * q.W + px) * C;
            lrn_pixel(a.data(), sq.data(), acc.data(), out, C, p);
            // rounded as the LRN module stores it, so that bf16 ties pick the maximum max_pool2d picks
            for (int64_t c = 0; c < C; ++c) out[c] = load(store<S>(out[c]));
          }
        }
        const auto at = [&](int64_t r, int64_t col) { return ring.data() + ((r % q.kernel) * q.W + col) * C; };
        for (int64_t ox = 0; ox < q.Wo; ++ox) {
          const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel), o = (img * q.Ho + oy) * q.Wo + ox;
          window_max(at, r0, r1, c0, c1, q.kernel, m.data(), idx ? idx + o * C : nullptr, C);
          for (int64_t c = 0; c < C; ++c) y[o * C + c] = store<S>(m[c]);
        }
      }
    }
  }
}

// relu → max-pool → LRN: pool the raw maps, ReLU the maximum, normalise the pooled vector
template <typename S, typename T>
void stage_pool_norm(const S* x, S* y, S* pooled, uint8_t* idx, const Pool& q, const Params<T>& p) {
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
      const auto at = [&](int64_t r, int64_t col) { return xi + (r * q.W + col) * C; };
      for (int64_t ox = 0; ox < q.Wo; ++ox) {
        const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel), o = (img * q.Ho + oy) * q.Wo + ox;
        window_max(at, r0, r1, c0, c1, q.kernel, m.data(), idx ? idx + o * C : nullptr, C);
        for (int64_t c = 0; c < C; ++c) m[c] = relu(m[c]);
        if (pooled)  // the LRN's input, stored as the modules store it (bf16 values are exact: a max of bf16s)
          for (int64_t c = 0; c < C; ++c) pooled[o * C + c] = store<S>(m[c]);
        lrn_pixel(m.data(), sq.data(), acc.data(), out.data(), C, p);
        for (int64_t c = 0; c < C; ++c) y[o * C + c] = store<S>(out[c]);
      }
    }
  }
}

// g[c] = the gradient that max-pooling routes to input pixel (r, col): the sum over the windows whose maximum it
// was (where == its offset) of grad, in max_pool2d_backward's order; with `pooled`, only where pooled > 0 (ReLU)
template <typename S, typename T>
inline void gather(const S* grad, const S* pooled, const uint8_t* where, int64_t img, int64_t r, int64_t col,
                   const Pool& q, T* g) {
  const int64_t C = q.C;
  std::fill(g, g + C, T(0));
  int64_t y0, y1, x0, x1;
  windows_of(r, q.Ho, q, y0, y1);
  windows_of(col, q.Wo, q, x0, x1);
  for (int64_t oy = y0; oy <= y1; ++oy)
    for (int64_t ox = x0; ox <= x1; ++ox) {
      const uint8_t off = uint8_t((r - oy * q.stride) * q.kernel + (col - ox * q.stride));
      const int64_t o = ((img * q.Ho + oy) * q.Wo + ox) * C;
      if (pooled) {
        for (int64_t c = 0; c < C; ++c)
          g[c] += (where[o + c] == off && load(pooled[o + c]) > T(0)) ? load(grad[o + c]) : T(0);
      } else {
        for (int64_t c = 0; c < C; ++c) g[c] += where[o + c] == off ? load(grad[o + c]) : T(0);
      }
    }
}

// backward of relu → LRN → max-pool, from the conv output x: gather, the LRN's gradient, the ReLU's mask
template <typename S, typename T>
void stage_norm_pool_backward(const S* grad, const S* x, const uint8_t* idx, S* dx, const Pool& q,
                              const Params<T>& p) {
  const int64_t C = q.C;
  const int n = p.before + p.after + 1;
  const T coef = T(-2) * p.alpha * p.beta;
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<T> g(C), a(C), sq(C + n - 1, T(0)), s(C), pw(C), t(C + n - 1, T(0)), w(C);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * q.H; ++item) {
      const int64_t img = item / q.H, r = item % q.H;
      for (int64_t col = 0; col < q.W; ++col) {
        const int64_t at = ((img * q.H + r) * q.W + col) * C;
        gather(grad, static_cast<const S*>(nullptr), idx, img, r, col, q, g.data());
        for (int64_t c = 0; c < C; ++c) a[c] = relu(load(x[at + c]));
        square(a.data(), sq.data() + p.before, C);
        if (paper_window(p)) {  // the same arithmetic as below, two passes instead of twelve
          for (int64_t c = 0; c < C; ++c) {
            const T d = p.k + p.alpha * window_at<5>(sq.data(), c);
            pw[c] = pow_minus_075(d);
            t[c + p.after] = g[c] * load(store<S>(a[c] * pw[c])) / d;
          }
          S* out = dx + at;
          for (int64_t c = 0; c < C; ++c) {
            const T d = g[c] * pw[c] + coef * a[c] * window_at<5>(t.data(), c);
            out[c] = store<S>(load(x[at + c]) > T(0) ? d : T(0));
          }
          continue;
        }
        window_sum(sq.data(), 1, n, C, s.data());
        if (p.beta == T(0.75)) {
          for (int64_t c = 0; c < C; ++c) pw[c] = pow_minus_075(p.k + p.alpha * s[c]);
        } else {
          for (int64_t c = 0; c < C; ++c) pw[c] = std::pow(p.k + p.alpha * s[c], -p.beta);
        }
        // t = g b / d with b = a d^-beta, the LRN's output (stored by the modules, recomputed and rounded here)
        for (int64_t c = 0; c < C; ++c)
          t[c + p.after] = g[c] * load(store<S>(a[c] * pw[c])) / (p.k + p.alpha * s[c]);
        window_sum(t.data(), 1, n, C, w.data());
        for (int64_t c = 0; c < C; ++c) {
          const T d = g[c] * pw[c] + coef * a[c] * w[c];
          dx[at + c] = store<S>(load(x[at + c]) > T(0) ? d : T(0));
        }
      }
    }
  }
}

// backward of max-pool with the ReLU before it, given the gradient of the pooled maps (relu → pool → norm)
template <typename S, typename T>
void unpool_relu(const S* grad, const S* pooled, const uint8_t* idx, S* dx, const Pool& q, int threads) {
  const int64_t C = q.C;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> g(C);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * q.H; ++item) {
      const int64_t img = item / q.H, r = item % q.H;
      for (int64_t col = 0; col < q.W; ++col) {
        gather(grad, pooled, idx, img, r, col, q, g.data());
        S* out = dx + ((img * q.H + r) * q.W + col) * C;
        for (int64_t c = 0; c < C; ++c) out[c] = store<S>(g[c]);
      }
    }
  }
}

template <typename S>
struct Stage {
  using T = typename Compute<S>::type;
  Pool q;
  Params<T> p;
  Stage(int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo, int kernel, int stride, int before,
        int after, double alpha, double beta, double k, int threads)
      : q{N, H, W, C, Ho, Wo, kernel, stride}, p(params<T>(N * H * W, C, 1, before, after, alpha, beta, k, threads)) {}
};


// ---------------------------------------------------------------- conv stages: float32 and bfloat16, AVX-512
//
// The stages above in float32 and bfloat16 with explicit 512-bit vectors, for C a multiple of 16 and the
// papers' LRN (n = 5, beta = 0.75): both forwards (window offsets and the LRN's input too, for training) and
// both backwards; and the LRN alone on channels-last maps (forward_interleaved, backward_interleaved). The
// arithmetic is the generic code's, operation for operation (squares summed in window_at<5>'s order, d^-0.75 as
// r·√r with r = 1/√d, max_pool2d's rule for the maximum and its offset, gather's order; bfloat16 is computed in
// float32 and rounded where the generic code rounds it), so the outputs are the same numbers bit for bit
// (tests/test_fused_avx512.py); the schedule is what changes (docs/performance.md, sessions 9 and 10: GCC's
// vectorisation of the generic loops took 1.2–2.0× as long in float32, more in bfloat16):
//   * a channel vector's window sum takes its neighbours from registers (valignd), not from a buffer;
//   * pooling reads through row pointers set once per output row, with no modulo per pixel;
//   * inference: max_pool2d lets a NaN win where _mm512_max_ps drops it, so a mask of the NaNs seen is kept;
//   * the gathers compare 16 window offsets at once and add under the mask.
#if defined(__AVX512F__)
// 16 elements in and out of float32 registers; bfloat16 as load() and store<bf16>() convert one element
inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 ld16(const bf16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void st16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline __m512i bf16_bits16(__m512 v) {  // store<bf16>: round to nearest even, NaN → 0x7FC0
  const __m512i u = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), one), _mm512_set1_epi32(0x7FFF));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}
inline void st16(bf16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits16(v)));
}
// load(store<S>(v)): v as S holds it
template <typename S>
inline __m512 as16(__m512 v) {
  return v;
}
template <>
inline __m512 as16<bf16>(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits16(v), 16));
}

inline __m512 relu16(__m512 v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }  // NaN passes (2nd operand)

inline __m512 pow_minus_075_16(__m512 d) {  // pow_minus_075, vector for vector
  const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(d));
  return _mm512_mul_ps(r, _mm512_sqrt_ps(r));
}

// the sums of squares over channels c-2 .. c+2 for the 16 channels of `cur`, given the vectors before and after
inline __m512 window5_16(__m512 prev, __m512 cur, __m512 next) {
  const __m512i p = _mm512_castps_si512(prev), c = _mm512_castps_si512(cur), n = _mm512_castps_si512(next);
  const __m512 m2 = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 14));
  const __m512 m1 = _mm512_castsi512_ps(_mm512_alignr_epi32(c, p, 15));
  const __m512 p1 = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 1));
  const __m512 p2 = _mm512_castsi512_ps(_mm512_alignr_epi32(n, c, 2));
  return _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(m2, m1), cur), p1), p2);
}

// out = the LRN of one pixel's C = 16 V channels `a` (through the ReLU already), rounded as R holds it; out may
// be a (each vector is read before the one before it is written)
template <typename R, typename In, typename Out>
inline void lrn_pixel16(const In* a, Out* out, int64_t V, __m512 alpha, __m512 k) {
  __m512 prev = _mm512_setzero_ps(), av = ld16(a), cur = _mm512_mul_ps(av, av);
  for (int64_t v = 0; v < V; ++v) {
    __m512 an = _mm512_setzero_ps(), next = _mm512_setzero_ps();
    if (v + 1 < V) {
      an = ld16(a + 16 * (v + 1));
      next = _mm512_mul_ps(an, an);
    }
    const __m512 d = _mm512_fmadd_ps(alpha, window5_16(prev, cur, next), k);
    st16(out + 16 * v, as16<R>(_mm512_mul_ps(av, pow_minus_075_16(d))));
    prev = cur;
    cur = next;
    av = an;
  }
}

// max over the window (rows[0 .. nr), columns c0 .. c1, pixel stride C) of the 16 values at `at`; NaN if one is
template <typename E>
inline __m512 window_max16(const E* const* rows, int64_t nr, int64_t c0, int64_t c1, int64_t C, int64_t at) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t col = c0; col < c1; ++col) {
      const __m512 e = ld16(rows[r] + col * C + at);
      m = _mm512_max_ps(e, m);
      nan |= _mm512_cmp_ps_mask(e, e, _CMP_UNORD_Q);
    }
  return _mm512_mask_mov_ps(m, nan, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
}

// window_max16 for training: max_pool2d's rule (a later value wins if greater or NaN), and where in the window
// the maximum was, written as 16 bytes to `where` (window_max's offsets)
template <typename E>
inline __m512 window_argmax16(const E* const* rows, int64_t nr, int64_t c0, int64_t c1, int64_t C, int64_t at,
                              int kernel, uint8_t* where) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i w = _mm512_setzero_si512();
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t col = c0; col < c1; ++col) {
      const __m512 e = ld16(rows[r] + col * C + at);
      const __mmask16 take = _mm512_cmp_ps_mask(e, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(e, e, _CMP_UNORD_Q);
      m = _mm512_mask_mov_ps(m, take, e);
      w = _mm512_mask_mov_epi32(w, take, _mm512_set1_epi32(int(r * kernel + (col - c0))));
    }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(where), _mm512_cvtepi32_epi8(w));
  return m;
}

// relu → LRN → max-pool: stage_norm_pool (idx: training, else null); the ring holds the LRN's output in float32,
// rounded as S holds it (so the maxima are S's, and their store exact)
template <typename S>
void stage_norm_pool16(const S* x, S* y, uint8_t* idx, const Pool& q, const Params<float>& p) {
  const int64_t C = q.C, V = C / 16, row = q.W * C;
  const int64_t band = rows_per_band(q.N, q.Ho, p.threads), bands = (q.Ho + band - 1) / band;
  const __m512 alpha = _mm512_set1_ps(p.alpha), k = _mm512_set1_ps(p.k);
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<float> ring(q.kernel * row), a(C);
    std::vector<int64_t> held(q.kernel);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * bands; ++item) {
      const int64_t img = item / bands, oy0 = (item % bands) * band, oy1 = std::min(q.Ho, oy0 + band);
      const S* xi = x + img * q.H * row;
      std::fill(held.begin(), held.end(), int64_t(-1));
      for (int64_t oy = oy0; oy < oy1; ++oy) {
        const int64_t r0 = oy * q.stride, r1 = std::min(q.H, r0 + q.kernel);
        const float* rows[16];  // kernel <= 16 (stage_forward16)
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t slot = r % q.kernel;
          float* ring_row = ring.data() + slot * row;
          rows[r - r0] = ring_row;
          if (held[slot] == r) continue;
          held[slot] = r;
          for (int64_t px = 0; px < q.W; ++px) {
            const S* in = xi + r * row + px * C;
            for (int64_t v = 0; v < V; ++v) st16(&a[16 * v], relu16(ld16(in + 16 * v)));
            lrn_pixel16<S>(a.data(), ring_row + px * C, V, alpha, k);
          }
        }
        for (int64_t ox = 0; ox < q.Wo; ++ox) {
          const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel);
          const int64_t o = ((img * q.Ho + oy) * q.Wo + ox) * C;
          for (int64_t v = 0; v < V; ++v) {
            const int64_t at = o + 16 * v;
            const __m512 m = idx ? window_argmax16(rows, r1 - r0, c0, c1, C, 16 * v, q.kernel, idx + at)
                                 : window_max16(rows, r1 - r0, c0, c1, C, 16 * v);
            st16(y + at, m);
          }
        }
      }
    }
  }
}

// relu → max-pool → LRN: stage_pool_norm (idx and pooled: training, else null)
template <typename S>
void stage_pool_norm16(const S* x, S* y, S* pooled, uint8_t* idx, const Pool& q, const Params<float>& p) {
  const int64_t C = q.C, V = C / 16, row = q.W * C;
  const __m512 alpha = _mm512_set1_ps(p.alpha), k = _mm512_set1_ps(p.k);
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<float> m(C);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * q.Ho; ++item) {
      const int64_t img = item / q.Ho, oy = item % q.Ho;
      const int64_t r0 = oy * q.stride, r1 = std::min(q.H, r0 + q.kernel);
      const S* rows[16];
      for (int64_t r = r0; r < r1; ++r) rows[r - r0] = x + (img * q.H + r) * row;
      for (int64_t ox = 0; ox < q.Wo; ++ox) {
        const int64_t c0 = ox * q.stride, c1 = std::min(q.W, c0 + q.kernel), o = ((img * q.Ho + oy) * q.Wo + ox) * C;
        for (int64_t v = 0; v < V; ++v) {
          const __m512 mv = idx ? window_argmax16(rows, r1 - r0, c0, c1, C, 16 * v, q.kernel, idx + o + 16 * v)
                                : window_max16(rows, r1 - r0, c0, c1, C, 16 * v);
          st16(&m[16 * v], relu16(mv));
        }
        if (pooled)  // the LRN's input (a maximum of S values: exact)
          for (int64_t v = 0; v < V; ++v) st16(pooled + o + 16 * v, ld16(&m[16 * v]));
        lrn_pixel16<S>(m.data(), y + o, V, alpha, k);
      }
    }
  }
}

// gather for 16 channels (from `at` on): the sum, over the windows y0..y1 × x0..x1 that hold input pixel (r, col),
// of grad where the window's maximum was there (and, with `pooled`, where pooled > 0), in gather's order; a
// masked add where gather adds a zero
template <typename S>
inline __m512 gather16(const S* grad, const S* pooled, const uint8_t* idx, int64_t img, int64_t r, int64_t col,
                       int64_t y0, int64_t y1, int64_t x0, int64_t x1, int64_t at, const Pool& q) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 g = zero;
  for (int64_t oy = y0; oy <= y1; ++oy)
    for (int64_t ox = x0; ox <= x1; ++ox) {
      const __m512i off = _mm512_set1_epi32(int((r - oy * q.stride) * q.kernel + (col - ox * q.stride)));
      const int64_t o = ((img * q.Ho + oy) * q.Wo + ox) * q.C + at;
      const __m512i where = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(idx + o)));
      __mmask16 take = _mm512_cmpeq_epi32_mask(where, off);
      if (pooled) take &= _mm512_cmp_ps_mask(ld16(pooled + o), zero, _CMP_GT_OQ);
      g = _mm512_mask_add_ps(g, take, g, ld16(grad + o));
    }
  return g;
}

// unpool_relu (the backward of relu → max-pool, before an LRN): each input pixel's gradient gathered from the
// windows that hold it
template <typename S>
void unpool_relu16(const S* grad, const S* pooled, const uint8_t* idx, S* dx, const Pool& q, int threads) {
  const int64_t C = q.C, V = C / 16;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t item = 0; item < q.N * q.H; ++item) {
    const int64_t img = item / q.H, r = item % q.H;
    int64_t y0, y1;
    windows_of(r, q.Ho, q, y0, y1);
    for (int64_t col = 0; col < q.W; ++col) {
      int64_t x0, x1;
      windows_of(col, q.Wo, q, x0, x1);
      S* out = dx + ((img * q.H + r) * q.W + col) * C;
      for (int64_t v = 0; v < V; ++v)
        st16(out + 16 * v, gather16(grad, pooled, idx, img, r, col, y0, y1, x0, x1, 16 * v, q));
    }
  }
}

// stage_norm_pool_backward for the papers' LRN: gather (no ReLU mask on the pooled maps), the LRN's gradient in
// its two passes over the channels, the ReLU's mask; g, pw and t per pixel in small buffers
template <typename S>
void stage_norm_pool_backward16(const S* grad, const S* x, const uint8_t* idx, S* dx, const Pool& q,
                                const Params<float>& p) {
  const int64_t C = q.C, V = C / 16;
  const __m512 zero = _mm512_setzero_ps(), alpha = _mm512_set1_ps(p.alpha), k = _mm512_set1_ps(p.k);
  const __m512 coef = _mm512_set1_ps(float(-2) * p.alpha * p.beta);
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<float> g(C), pw(C), t(C);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < q.N * q.H; ++item) {
      const int64_t img = item / q.H, r = item % q.H;
      int64_t y0, y1;
      windows_of(r, q.Ho, q, y0, y1);
      for (int64_t col = 0; col < q.W; ++col) {
        int64_t x0, x1;
        windows_of(col, q.Wo, q, x0, x1);
        const int64_t at = ((img * q.H + r) * q.W + col) * C;
        for (int64_t v = 0; v < V; ++v)
          st16(&g[16 * v], gather16(grad, static_cast<const S*>(nullptr), idx, img, r, col, y0, y1, x0, x1,
                                    16 * v, q));
        const S* xp = x + at;
        // t = g b / d with b = a d^-0.75 (gradient's first pass)
        __m512 prev = zero, a = relu16(ld16(xp)), cur = _mm512_mul_ps(a, a);
        for (int64_t v = 0; v < V; ++v) {
          __m512 an = zero, next = zero;
          if (v + 1 < V) {
            an = relu16(ld16(xp + 16 * (v + 1)));
            next = _mm512_mul_ps(an, an);
          }
          const __m512 d = _mm512_fmadd_ps(alpha, window5_16(prev, cur, next), k);
          const __m512 pv = pow_minus_075_16(d);
          st16(&pw[16 * v], pv);
          const __m512 b = as16<S>(_mm512_mul_ps(a, pv));  // the LRN's output, as the modules store it
          st16(&t[16 * v], _mm512_div_ps(_mm512_mul_ps(ld16(&g[16 * v]), b), d));
          prev = cur;
          cur = next;
          a = an;
        }
        // dx = g d^-0.75 + coef a (window sum of t), where x > 0
        S* out = dx + at;
        prev = zero;
        cur = ld16(&t[0]);
        for (int64_t v = 0; v < V; ++v) {
          const __m512 next = v + 1 < V ? ld16(&t[16 * (v + 1)]) : zero;
          const __m512 xv = ld16(xp + 16 * v);
          const __m512 ca = _mm512_mul_ps(coef, relu16(xv));
          const __m512 gp = _mm512_mul_ps(ld16(&g[16 * v]), ld16(&pw[16 * v]));
          const __m512 dv = _mm512_fmadd_ps(ca, window5_16(prev, cur, next), gp);
          st16(out + 16 * v, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(xv, zero, _CMP_GT_OQ), dv));
          prev = cur;
          cur = next;
        }
      }
    }
  }
}

// The LRN alone on channels-last maps (forward_interleaved and backward_interleaved for the papers' window):
// the modules' path, and the LRN's backward on the pooled maps of relu → pool → norm (CaffeNet, ZFNet)
template <typename S>
void lrn_forward16(const S* x, S* y, const Params<float>& p) {
  const int64_t C = p.channels, V = C / 16;
  const __m512 alpha = _mm512_set1_ps(p.alpha), k = _mm512_set1_ps(p.k);
#pragma omp parallel for schedule(static) num_threads(p.threads)
  for (int64_t px = 0; px < p.outer; ++px) lrn_pixel16<S>(x + px * C, y + px * C, V, alpha, k);  // y may be x
}

template <typename S>
void lrn_backward16(const S* g, const S* x, const S* y, S* dx, const Params<float>& p) {
  const int64_t C = p.channels, V = C / 16;
  const __m512 zero = _mm512_setzero_ps(), alpha = _mm512_set1_ps(p.alpha), k = _mm512_set1_ps(p.k);
  const __m512 coef = _mm512_set1_ps(float(-2) * p.alpha * p.beta);
#pragma omp parallel num_threads(p.threads)
  {
    std::vector<float> pw(C), t(C);
#pragma omp for schedule(static)
    for (int64_t px = 0; px < p.outer; ++px) {
      const S *gp = g + px * C, *xp = x + px * C, *yp = y + px * C;
      // t = g y / d (the first pass), d^-0.75 kept for the second
      __m512 prev = zero, xv = ld16(xp), cur = _mm512_mul_ps(xv, xv);
      for (int64_t v = 0; v < V; ++v) {
        __m512 next = zero;
        if (v + 1 < V) {
          const __m512 xn = ld16(xp + 16 * (v + 1));
          next = _mm512_mul_ps(xn, xn);
        }
        const __m512 d = _mm512_fmadd_ps(alpha, window5_16(prev, cur, next), k);
        st16(&pw[16 * v], pow_minus_075_16(d));
        const __m512 gy = _mm512_mul_ps(ld16(gp + 16 * v), ld16(yp + 16 * v));
        st16(&t[16 * v], _mm512_div_ps(gy, d));
        prev = cur;
        cur = next;
      }
      // dx = g d^-0.75 + coef x (window sum of t): two products and a sum, as GCC compiles the generic line
      prev = zero;
      cur = ld16(&t[0]);
      for (int64_t v = 0; v < V; ++v) {
        const __m512 next = v + 1 < V ? ld16(&t[16 * (v + 1)]) : zero;
        const __m512 cx = _mm512_mul_ps(coef, ld16(xp + 16 * v));
        const __m512 gd = _mm512_mul_ps(ld16(gp + 16 * v), ld16(&pw[16 * v]));
        st16(dx + px * C + 16 * v, _mm512_add_ps(gd, _mm512_mul_ps(cx, window5_16(prev, cur, next))));
        prev = cur;
        cur = next;
      }
    }
  }
}
#endif

// A stage's forward in float32 or bfloat16 on AVX-512 when it fits the code above; false: the caller takes the
// generic path
template <typename S>
bool stage_forward16(const S* x, S* y, S* pooled, uint8_t* idx, bool pool_first, const Stage<S>& st) {
#if defined(__AVX512F__)
  // the papers' window c-2 .. c+2 and beta; kernel <= 16 rows (fused.stage_at keeps kernel² <= 256)
  if (st.q.C == 0 || st.q.C % 16 != 0 || !paper_window(st.p) || st.p.before != 2 || st.q.kernel > 16) return false;
  if (pool_first) stage_pool_norm16(x, y, pooled, idx, st.q, st.p);
  else stage_norm_pool16(x, y, idx, st.q, st.p);
  return true;
#else
  (void)x, (void)y, (void)pooled, (void)idx, (void)pool_first, (void)st;
  return false;
#endif
}

// A stage's backward in float32 or bfloat16 on AVX-512 when it fits the code above; false: the caller takes the
// generic path
template <typename S>
bool stage_backward16(const S* grad, const S* x, const S* pooled, const uint8_t* idx, S* dx, bool pool_first,
                      const Stage<S>& st) {
#if defined(__AVX512F__)
  if (st.q.C == 0 || st.q.C % 16 != 0) return false;
  if (pool_first) {
    unpool_relu16(grad, pooled, idx, dx, st.q, st.p.threads);
    return true;
  }
  if (!paper_window(st.p) || st.p.before != 2) return false;
  stage_norm_pool_backward16(grad, x, idx, dx, st.q, st.p);
  return true;
#else
  (void)grad, (void)x, (void)pooled, (void)idx, (void)dx, (void)pool_first, (void)st;
  return false;
#endif
}

// The LRN of channels-last maps (inner == 1) on AVX-512 when it fits the code above
bool lrn16_fits(int64_t channels, int64_t inner, const Params<float>& p) {
#if defined(__AVX512F__)
  return inner == 1 && channels > 0 && channels % 16 == 0 && paper_window(p) && p.before == 2;
#else
  (void)channels, (void)inner, (void)p;
  return false;
#endif
}

template <typename S>
int lrn_forward16_entry(const void* x, void* y, int64_t outer, int64_t channels, int64_t inner, int before,
                        int after, double alpha, double beta, double k, int threads) {
  const auto p = params<float>(outer, channels, inner, before, after, alpha, beta, k, threads);
  if (!lrn16_fits(channels, inner, p)) return 0;
#if defined(__AVX512F__)
  lrn_forward16(static_cast<const S*>(x), static_cast<S*>(y), p);
#endif
  return 1;
}

template <typename S>
int lrn_backward16_entry(const void* g, const void* x, const void* y, void* dx, int64_t outer, int64_t channels,
                         int64_t inner, int before, int after, double alpha, double beta, double k, int threads) {
  const auto p = params<float>(outer, channels, inner, before, after, alpha, beta, k, threads);
  if (!lrn16_fits(channels, inner, p)) return 0;
#if defined(__AVX512F__)
  lrn_backward16(static_cast<const S*>(g), static_cast<const S*>(x), static_cast<const S*>(y), static_cast<S*>(dx),
                 p);
#endif
  return 1;
}

}  // namespace

// Entry points (C ABI for ctypes). A channels-last N×C×H×W tensor is passed as outer = N·H·W, inner = 1.
// The forward may be called with y == x (in place): each tile's squares are taken before any of it is written.
// stage_forward: a channels-last N×C×H×W conv output → its ReLU, LRN and max-pool (padding 0) as N×C×Ho×Wo; idx
// (N·Ho·Wo·C bytes) and pooled (relu → pool → norm only: the LRN's input) are written when not null (training).
// stage_backward: the conv output's gradient from the pooled maps' (grad), the conv output x (relu → norm → pool)
// or the pooled maps before the LRN (relu → pool → norm: grad is then the gradient of those), and idx.
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
  void stage_forward_##SUFFIX(const void* x, void* y, void* pooled, uint8_t* idx, int64_t N, int64_t H,       \
                              int64_t W, int64_t C, int64_t Ho, int64_t Wo, int kernel, int stride,            \
                              int pool_first, int before, int after, double alpha, double beta, double k,      \
                              int threads) {                                                                    \
    const Stage<S> st(N, H, W, C, Ho, Wo, kernel, stride, before, after, alpha, beta, k, threads);             \
    if (pool_first)                                                                                           \
      stage_pool_norm(static_cast<const S*>(x), static_cast<S*>(y), static_cast<S*>(pooled), idx, st.q, st.p); \
    else                                                                                                      \
      stage_norm_pool(static_cast<const S*>(x), static_cast<S*>(y), idx, st.q, st.p);                        \
  }                                                                                                           \
  void stage_backward_##SUFFIX(const void* grad, const void* x, const void* pooled, const uint8_t* idx,       \
                               void* dx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo,   \
                               int kernel, int stride, int pool_first, int before, int after, double alpha,    \
                               double beta, double k, int threads) {                                           \
    const Stage<S> st(N, H, W, C, Ho, Wo, kernel, stride, before, after, alpha, beta, k, threads);             \
    if (pool_first)                                                                                           \
      unpool_relu<S, Stage<S>::T>(static_cast<const S*>(grad), static_cast<const S*>(pooled), idx,             \
                                  static_cast<S*>(dx), st.q, st.p.threads);                                   \
    else                                                                                                      \
      stage_norm_pool_backward(static_cast<const S*>(grad), static_cast<const S*>(x), idx,                     \
                               static_cast<S*>(dx), st.q, st.p);                                              \
  }

extern "C" {
// 1 when the library was built with the AVX-512 stages (the compiling CPU has AVX-512F), else 0
int stages_avx512() {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}

// The AVX-512 code's entry points, float32 and bfloat16: 1 when it took the work, else 0 (nothing written: the
// caller runs the generic lrn_forward_*, lrn_backward_*, stage_forward_* or stage_backward_*)
#define VECTOR_ENTRY_POINTS(SUFFIX, S)                                                                        \
  int lrn_forward16_##SUFFIX(const void* x, void* y, int64_t outer, int64_t channels, int64_t inner,          \
                             int before, int after, double alpha, double beta, double k, int threads) {        \
    return lrn_forward16_entry<S>(x, y, outer, channels, inner, before, after, alpha, beta, k, threads);       \
  }                                                                                                           \
  int lrn_backward16_##SUFFIX(const void* g, const void* x, const void* y, void* dx, int64_t outer,           \
                              int64_t channels, int64_t inner, int before, int after, double alpha,            \
                              double beta, double k, int threads) {                                            \
    return lrn_backward16_entry<S>(g, x, y, dx, outer, channels, inner, before, after, alpha, beta, k,         \
                                   threads);                                                                   \
  }                                                                                                           \
  int stage_forward16_##SUFFIX(const void* x, void* y, void* pooled, uint8_t* idx, int64_t N, int64_t H,      \
                               int64_t W, int64_t C, int64_t Ho, int64_t Wo, int kernel, int stride,           \
                               int pool_first, int before, int after, double alpha, double beta, double k,     \
                               int threads) {                                                                   \
    const Stage<S> st(N, H, W, C, Ho, Wo, kernel, stride, before, after, alpha, beta, k, threads);             \
    return stage_forward16(static_cast<const S*>(x), static_cast<S*>(y), static_cast<S*>(pooled), idx,        \
                           pool_first != 0, st)                                                               \
               ? 1                                                                                            \
               : 0;                                                                                           \
  }                                                                                                           \
  int stage_backward16_##SUFFIX(const void* grad, const void* x, const void* pooled, const uint8_t* idx,      \
                                void* dx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo,  \
                                int kernel, int stride, int pool_first, int before, int after, double alpha,   \
                                double beta, double k, int threads) {                                          \
    const Stage<S> st(N, H, W, C, Ho, Wo, kernel, stride, before, after, alpha, beta, k, threads);             \
    return stage_backward16(static_cast<const S*>(grad), static_cast<const S*>(x),                            \
                            static_cast<const S*>(pooled), idx, static_cast<S*>(dx), pool_first != 0, st)     \
               ? 1                                                                                            \
               : 0;                                                                                           \
  }

VECTOR_ENTRY_POINTS(f32, float)
VECTOR_ENTRY_POINTS(bf16, bf16)

LRN_ENTRY_POINTS(f32, float)
LRN_ENTRY_POINTS(f64, double)
LRN_ENTRY_POINTS(bf16, bf16)
}
