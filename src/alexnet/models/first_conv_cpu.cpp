// The weight gradient of the first convolution (a few image channels, many output channels), float32, for
// alexnet.models.first_conv. Built into the same library as lrn_cpu.cpp (alexnet.models.native).
//
// dW[o][c][kh][kw] = sum over n, oh, ow of x[n][c][oh*SH + kh - PH][ow*SW + kw - PW] * g[n][o][oh][ow]
//
// oneDNN runs this (3 input channels, 110x110 outputs for ZFNet's conv1) at about half the rate of its other
// layers (docs/performance.md, session 8). Here it is one small matrix product per output row, in registers:
// for a block of 4 taps (kh, kw, c) x up to 96 output channels, 24 vector accumulators take one broadcast
// input value and one gradient vector per output pixel, and are added to a per-thread copy of dW once per row.
// Both tensors are channels-last, so a row of the gradient (OW x OC floats) stays in L1 while every tap
// passes over it. Each image is copied once into a zero-padded buffer, so the inner loop has no bounds checks.
// The bias gradient (sum of g) is taken from the same rows.
//
// first_conv_pooled_weight_grad_f32 is the same gradient when ReLU, an overlapping max-pool and an LRN follow the
// conv (CaffeNet's and ZFNet's first stage, Zeiler & Fergus Fig. 3) and the image needs no gradient. The conv
// output's gradient is then zero except where a pooling window took its maximum (ReLU's mask: the maximum > 0):
// at most one pixel in four (z = 3, s = 2; AlexNet 3.4). So instead of writing that mostly-zero map and summing
// over all of it, each pooled value's gradient is added, times the image patch under its maximum's pixel, to
// its output channel's dW: the same sum, in another order, a quarter of the multiply-adds.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vec16.h"

namespace {


// Register blocks. AVX-512 has 32 registers of 16 floats: 4 taps x 6 vectors = 24 accumulators, 6 gradient
// vectors and a broadcast. AVX2 has 16 registers of 8 floats, and a v16 takes two (vec16.h): 6 taps x 1 vector
// there, 12 + 2 + 1 registers (alexnet's conv1: 69-70 ms a step at batch 64, against 86-88 for 2 taps x 2
// vectors and 87-88 for oneDNN; docs/performance.md, session 18).
#if defined(__AVX512F__)
constexpr int kTapBlock = 4, kMaxVectors = 6, kAccumulators = 24, kSingleRows = 16;
#else
constexpr int kTapBlock = 6, kMaxVectors = 1, kAccumulators = 6, kSingleRows = 6;
#endif

// acc[b][v] = sum over ow of x[xo[b] + ow*SWC] * g[ow*ld + 16v], then dw[ko[b]][16v] += acc[b][v]
template <int KB, int V>
__attribute__((always_inline)) inline void tap_block(const float* __restrict x, const int64_t* xo, int64_t swc,
                                                     const float* __restrict g, int64_t ld, int64_t ow_count,
                                                     float* __restrict dw, int64_t dw_ld, int64_t k0) {
  v16 acc[KB][V];
#pragma GCC unroll 8
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[b][v] = v16{};
  const float* xp[KB];
#pragma GCC unroll 8
  for (int b = 0; b < KB; ++b) xp[b] = x + xo[b];
  for (int64_t ow = 0; ow < ow_count; ++ow) {
    v16 gv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      gv[v] = *(const v16*)(g + ow * ld + 16 * v);
#if defined(__AVX512F__)
      // in a register: GCC 12 otherwise folds the load into each of its KB FMAs, and on Zen 4 those KB x V
      // 64-byte loads, not the FMAs, set the pace (172 -> 206-212 GFLOP/s, docs/performance.md, session 17)
      asm("" : "+v"(gv[v]));
#endif
    }
#pragma GCC unroll 8
    for (int b = 0; b < KB; ++b) {
      const float a = xp[b][ow * swc];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[b][v] += a * gv[v];
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) *(v16*)(dw + (k0 + b) * dw_ld + 16 * v) += acc[b][v];
}

// every tap of one output row, for output channels [0, 16V) of g and dw (both offset by the caller)
template <int V>
void row_taps(const float* x, const int64_t* xo, int64_t taps, int64_t swc, const float* g, int64_t ld,
              int64_t ow_count, float* dw, int64_t dw_ld) {
  int64_t k = 0;
  for (; k + kTapBlock <= taps; k += kTapBlock)
    tap_block<kTapBlock, V>(x, xo + k, swc, g, ld, ow_count, dw, dw_ld, k);
  for (; k < taps; ++k) tap_block<1, V>(x, xo + k, swc, g, ld, ow_count, dw, dw_ld, k);
}

void row(const float* x, const int64_t* xo, int64_t taps, int64_t swc, const float* g, int64_t oc,
         int64_t ow_count, float* dw) {
  for (int64_t o = 0; o < oc; o += 16 * kMaxVectors) {
    const int64_t left = (oc - o) / 16 < kMaxVectors ? (oc - o) / 16 : kMaxVectors;
    const float* go = g + o;
    float* d = dw + o;
    switch (left) {
      case 6: if constexpr (kMaxVectors >= 6) row_taps<6>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 5: if constexpr (kMaxVectors >= 5) row_taps<5>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 4: if constexpr (kMaxVectors >= 4) row_taps<4>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 3: if constexpr (kMaxVectors >= 3) row_taps<3>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 2: row_taps<2>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      default: row_taps<1>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
    }
  }
}

template <int T>
struct Vec {  // T floats, unaligned access allowed
  typedef float type __attribute__((vector_size(4 * T), aligned(4)));
};

// A kernel row of `width` floats as F vectors of 16 floats and one of T (0, 4 or 8) for the rest: ZFNet's
// 7 x 3 = 21 floats as 16 + 8, AlexNet's 11 x 3 = 33 as 2 x 16 + 4 (a third vector of 16 would leave 11 and 15 of
// its lanes idle).
//
// acc = sum over q of v[q] * patch(q), R rows of F * 16 + T floats, added to dw's rows (F * 16 + T floats apart).
// patch(q) starts at p + off[q * step] (v[q * step] too); its rows are `ld` floats apart (the caller's buffer has the slack for the lanes
// past the kernel's width, which the caller discards).
template <int R, int F, int T>
__attribute__((always_inline)) inline void patch_rows(const float* __restrict p, int64_t ld, const int32_t* off,
                                                      const float* v, int64_t step, int64_t m,
                                                      float* __restrict dw) {
  typedef typename Vec<(T > 0 ? T : 4)>::type tail_t;
  constexpr int len = 16 * F + T;
  v16 acc[R][F > 0 ? F : 1];
  tail_t rest[R];
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int u = 0; u < F; ++u) acc[r][u] = v16{};
    rest[r] = (tail_t){};
  }
  for (int64_t q = 0; q < m; ++q) {
    const float* at = p + off[q * step];
    const float a = v[q * step];
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int u = 0; u < F; ++u) acc[r][u] += a * *(const v16*)(at + r * ld + 16 * u);
      if constexpr (T > 0) rest[r] += a * *(const tail_t*)(at + r * ld + 16 * F);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int u = 0; u < F; ++u) *(v16*)(dw + r * len + 16 * u) += acc[r][u];
    if constexpr (T > 0) *(tail_t*)(dw + r * len + 16 * F) += rest[r];
  }
}

// patch_rows for `rows` rows: R at a time, then the largest instantiation that fits the rest
template <int R, int F, int T>
void patch_rows_upto(int64_t rows, const float* p, int64_t ld, const int32_t* off, const float* v, int64_t step,
                     int64_t m, float* dw) {
  if constexpr (R > 0) {
    if (rows >= R) {
      patch_rows<R, F, T>(p, ld, off, v, step, m, dw);
      patch_rows_upto<R, F, T>(rows - R, p + R * ld, ld, off, v, step, m, dw + R * (16 * F + T));
    } else {
      patch_rows_upto<R - 1, F, T>(rows, p, ld, off, v, step, m, dw);
    }
  }
}

// every kernel row, with kAccumulators accumulators at most
template <int F, int T>
void patch_all_rows(int64_t rows, const float* p, int64_t ld, const int32_t* off, const float* v, int64_t step,
                    int64_t m, float* dw) {
  constexpr int per_row = F + (T > 0 ? 1 : 0);
  constexpr int block = per_row == 1 ? kSingleRows : kAccumulators / per_row;
  patch_rows_upto<(block > 0 ? block : 1), F, T>(rows, p, ld, off, v, step, m, dw);
}

// a row's F and T (patch_rows) for a kernel row of `width` floats
inline void row_split(int64_t width, int64_t* f, int64_t* t) {
  const int64_t rest = width % 16;
  *f = width / 16 + (rest > 8 ? 1 : 0);
  *t = rest > 8 || rest == 0 ? 0 : rest > 4 ? 8 : 4;
}

void patch_dispatch(int64_t f, int64_t t, int64_t rows, const float* p, int64_t ld, const int32_t* off,
                    const float* v, int64_t step, int64_t m, float* dw) {
  switch (f * 16 + t) {
#define ALEXNET_PATCH_CASE(F, T) \
  case 16 * F + T: patch_all_rows<F, T>(rows, p, ld, off, v, step, m, dw); break;
    ALEXNET_PATCH_CASE(0, 4) ALEXNET_PATCH_CASE(0, 8) ALEXNET_PATCH_CASE(1, 0) ALEXNET_PATCH_CASE(1, 4)
    ALEXNET_PATCH_CASE(1, 8) ALEXNET_PATCH_CASE(2, 0) ALEXNET_PATCH_CASE(2, 4) ALEXNET_PATCH_CASE(2, 8)
    ALEXNET_PATCH_CASE(3, 0)
#undef ALEXNET_PATCH_CASE
  }
}

}  // namespace

extern "C" {

// The vector width the weight-gradient kernels (this file's and conv_stage_cpu.cpp's) were built for, in floats:
// 16 with AVX-512, 8 with AVX2 and FMA (a v16 in two registers, vec16.h), 0 otherwise (not measured: the Python
// side then leaves these gradients to oneDNN, native.weight_grad_kernel).
int weight_grad_lanes() {
#if defined(__AVX512F__)
  return 16;
#elif defined(__AVX2__) && defined(__FMA__)
  return 8;
#else
  return 0;
#endif
}

// x: N x H x W x C (channels-last), g: N x OH x OW x OC (channels-last, OC a multiple of 16).
// dw is written at dw[o*ws[0] + c*ws[1] + kh*ws[2] + kw*ws[3]] (the weight's own strides), db[o] when db.
// Returns 0, or -1 when OC is not a multiple of 16 (nothing written).
int first_conv_weight_grad_f32(const float* x, const float* g, float* dw, float* db, int64_t n, int64_t h,
                               int64_t w, int64_t c, int64_t oc, int64_t oh, int64_t ow, int64_t kh, int64_t kw,
                               int64_t sh, int64_t sw, int64_t ph, int64_t pw, const int64_t* ws, int threads) {
  if (oc % 16 != 0 || oc <= 0) return -1;
  const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
  // rows the windows reach below the padded image (a stride that does not divide it) stay zero
  const int64_t rows = hp > (oh - 1) * sh + kh ? hp : (oh - 1) * sh + kh;
  const int64_t cols = wp > (ow - 1) * sw + kw ? wp : (ow - 1) * sw + kw;
  const int64_t row_stride = cols * c, taps = kh * kw * c, swc = sw * c;
  std::vector<int64_t> xo(taps);  // each tap's offset in the padded image from a window's corner
  for (int64_t i = 0, a = 0; a < kh; ++a)
    for (int64_t b = 0; b < kw * c; ++b, ++i) xo[i] = a * row_stride + b;
  const int64_t per_thread = (taps + 1) * oc;  // dW's rows, then the bias
  std::vector<float> padded(rows * row_stride + 16, 0.0f);
  std::vector<float> partial(per_thread * threads, 0.0f);
  float* xp = padded.data();

#pragma omp parallel num_threads(threads)
  {
    float* mine = partial.data() + per_thread * omp_get_thread_num();
    float* bias = mine + taps * oc;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * h * w * c;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < h; ++r)
        std::memcpy(xp + (r + ph) * row_stride + pw * c, xi + r * w * c, sizeof(float) * w * c);
      const float* gi = g + i * oh * ow * oc;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < oh; ++r) {
        const float* gr = gi + r * ow * oc;
        row(xp + r * sh * row_stride, xo.data(), taps, swc, gr, oc, ow, mine);
        for (int64_t q = 0; q < ow; ++q)
#pragma omp simd
          for (int64_t o = 0; o < oc; ++o) bias[o] += gr[q * oc + o];
      }  // implicit barrier: the next image's copy waits for every row of this one
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < per_thread; ++i) {
      float s = 0.0f;
      for (int t = 0; t < threads; ++t) s += partial[per_thread * t + i];
      const int64_t k = i / oc, o = i % oc;
      if (k < taps) {
        const int64_t a = k / (kw * c), b = (k / c) % kw, ch = k % c;
        dw[o * ws[0] + ch * ws[1] + a * ws[2] + b * ws[3]] = s;
      } else if (db) {
        db[o] = s;
      }
    }
  }
  return 0;
}

// The weight and bias gradients of conv(x) when relu -> max-pool (kernel pk, stride ps, no padding) -> LRN follows
// it, from `g`, the gradient of the pooled maps (the LRN's input, `pooled`, N x PH x PW x OC channels-last), and
// `idx`, where in its pk x pk window each maximum was (one byte, row * pk + col, as stage_forward writes it;
// read unchecked, so an offset must lie inside its window as clipped by the map's edge, as stage_forward's do).
// x: N x H x W x C channels-last; the conv output is OH x OW. dw and db as first_conv_weight_grad_f32.
// Returns 0, or -1 (nothing written) when a kernel row (KW * C floats) is wider than 48 floats, an image's
// offsets would not fit 32 bits, or there are no output channels.
int first_conv_pooled_weight_grad_f32(const float* x, const float* g, const float* pooled, const uint8_t* idx,
                                      float* dw, float* db, int64_t n, int64_t h, int64_t w, int64_t c,
                                      int64_t oc, int64_t oh, int64_t ow, int64_t ph, int64_t pw, int64_t kh,
                                      int64_t kw, int64_t sh, int64_t sw, int64_t padh, int64_t padw, int64_t pk,
                                      int64_t ps, const int64_t* ws, int threads) {
  const int64_t width = kw * c;
  int64_t f, t;
  row_split(width, &f, &t);
  if (width > 48 || oc <= 0) return -1;
  const int64_t hp = h + 2 * padh, wp = w + 2 * padw;
  const int64_t rows = hp > (oh - 1) * sh + kh ? hp : (oh - 1) * sh + kh;
  const int64_t cols = wp > (ow - 1) * sw + kw ? wp : (ow - 1) * sw + kw;
  const int64_t ld = cols * c, row_len = 16 * f + t, per_channel = kh * row_len;
  if (rows * ld + row_len > INT32_MAX) return -1;
  const int64_t per_thread = oc * (per_channel + 1);  // dW's rows (row_len floats each), then the bias
  // a strip of pooled rows at a time, so its gradients, maxima and image rows stay in the core's L2
  const int64_t strip = pw > 0 ? (512 + pw - 1) / pw : 1;
  std::vector<float> partial(per_thread * threads, 0.0f);
  // where in the padded image each window offset's patch starts, relative to the window's first pixel's patch
  int32_t window[256];
  for (int64_t k = 0; k < 256; ++k) window[k] = int32_t((k / pk) * sh * ld + (k % pk) * sw * c);
  const int64_t col_step = ps * sw * c;
  // fewer images than threads: split each image's output channels too, so that every thread has work
  const int64_t groups = n <= 0 || n >= threads ? 1 : std::min<int64_t>((threads + n - 1) / n, oc);

#pragma omp parallel num_threads(threads)
  {
    float* mine = partial.data() + per_thread * omp_get_thread_num();
    std::vector<float> padded(rows * ld + row_len, 0.0f);  // the slack: rows read row_len floats
    std::vector<int32_t> off(strip * pw * oc);
    std::vector<float> v(strip * pw * oc);
    // work items: an image, or with fewer images than threads a group of an image's output channels (each
    // thread then copies the image it works on). static: each thread sums the same items in the same order every
    // call, so the gradients are reproducible.
    int64_t held = -1;  // the image in `padded`
#pragma omp for schedule(static)
    for (int64_t item = 0; item < n * groups; ++item) {
      const int64_t i = item / groups, o0 = oc * (item % groups) / groups, o1 = oc * (item % groups + 1) / groups;
      if (i != held) {
        const float* xi = x + i * h * w * c;
        for (int64_t r = 0; r < h; ++r)
          std::memcpy(padded.data() + (r + padh) * ld + padw * c, xi + r * w * c, sizeof(float) * w * c);
        held = i;
      }
      const int64_t base = i * ph * pw * oc;
      for (int64_t y0 = 0; y0 < ph; y0 += strip) {
        const int64_t y1 = y0 + strip < ph ? y0 + strip : ph, m = (y1 - y0) * pw;
        // every maximum's patch offset and masked gradient, position-major as the maps are (each channel's
        // then `oc` apart): one contiguous pass over the strip's channels
        float* bias = mine + oc * per_channel;
        for (int64_t py = y0, q = 0; py < y1; ++py) {
          const int64_t row_off = py * ps * sh * ld;
          for (int64_t px = 0; px < pw; ++px, ++q) {
            const int64_t at = base + (py * pw + px) * oc, corner = row_off + px * col_step;
            int32_t* oq = off.data() + q * oc;
            float* vq = v.data() + q * oc;
#pragma omp simd
            for (int64_t o = o0; o < o1; ++o) {
              const float gv = pooled[at + o] > 0.0f ? g[at + o] : 0.0f;  // ReLU: none at a maximum <= 0
              oq[o] = int32_t(corner + window[idx[at + o]]);
              vq[o] = gv;
              bias[o] += gv;
            }
          }
        }
        for (int64_t o = o0; o < o1; ++o)
          patch_dispatch(f, t, kh, padded.data(), ld, off.data() + o, v.data() + o, oc, m, mine + o * per_channel);
      }
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < oc * (kh * width + 1); ++e) {
      const int64_t o = e % oc, k = e / oc;  // k: the tap (a, b, ch) in the kernel, or kh * width for the bias
      const int64_t src = k < kh * width ? o * per_channel + (k / width) * row_len + k % width
                                         : oc * per_channel + o;
      float s = 0.0f;
      for (int th = 0; th < threads; ++th) s += partial[per_thread * th + src];
      if (k < kh * width) {
        const int64_t a = k / width, b = (k % width) / c, ch = k % c;
        dw[o * ws[0] + ch * ws[1] + a * ws[2] + b * ws[3]] = s;
      } else if (db) {
        db[o] = s;
      }
    }
  }
  return 0;
}

}  // extern "C"
