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

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned access allowed

// acc[b][v] = sum over ow of x[xo[b] + ow*SWC] * g[ow*ld + 16v], then dw[ko[b]][16v] += acc[b][v]
template <int KB, int V>
__attribute__((always_inline)) inline void tap_block(const float* __restrict x, const int64_t* xo, int64_t swc,
                                                     const float* __restrict g, int64_t ld, int64_t ow_count,
                                                     float* __restrict dw, int64_t dw_ld, int64_t k0) {
  v16 acc[KB][V];
#pragma GCC unroll 8
  for (int b = 0; b < KB; ++b)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) acc[b][v] = (v16){};
  const float* xp[KB];
#pragma GCC unroll 8
  for (int b = 0; b < KB; ++b) xp[b] = x + xo[b];
  for (int64_t ow = 0; ow < ow_count; ++ow) {
    v16 gv[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) gv[v] = *(const v16*)(g + ow * ld + 16 * v);
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
  for (; k + 4 <= taps; k += 4) tap_block<4, V>(x, xo + k, swc, g, ld, ow_count, dw, dw_ld, k);
  for (; k < taps; ++k) tap_block<1, V>(x, xo + k, swc, g, ld, ow_count, dw, dw_ld, k);
}

void row(const float* x, const int64_t* xo, int64_t taps, int64_t swc, const float* g, int64_t oc,
         int64_t ow_count, float* dw) {
  for (int64_t o = 0; o < oc; o += 96) {
    const int64_t left = (oc - o) / 16 < 6 ? (oc - o) / 16 : 6;
    const float* go = g + o;
    float* d = dw + o;
    switch (left) {
      case 6: row_taps<6>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 5: row_taps<5>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 4: row_taps<4>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 3: row_taps<3>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      case 2: row_taps<2>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
      default: row_taps<1>(x, xo, taps, swc, go, oc, ow_count, d, oc); break;
    }
  }
}

}  // namespace

extern "C" {

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

}  // extern "C"
