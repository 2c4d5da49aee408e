// The weight gradient of a convolution over many input channels when ReLU, an overlapping max-pool and an LRN
// follow it (CaffeNet's and ZFNet's conv2, Zeiler & Fergus Fig. 3), from the pooled maps' gradient, float32, for
// alexnet.models.conv_stage. Built into the same library as lrn_cpu.cpp (alexnet.models.native).
//
// The conv output's gradient is zero except where a pooling window took its maximum and that maximum is above
// zero (the ReLU): at most one pixel in four (AlexNet 3.4: z = 3, s = 2). So each pooled value's gradient is
// added, times the input patch under its maximum's pixel, to its output channel's dW: the dense weight
// gradient's sums in another order, a quarter of its multiply-adds. A patch is KH x KW pixels of the group's CG
// input channels (a multiple of 16: CG / 16 vectors a pixel, contiguous in the channels-last input); up to 24
// vector accumulators take a few of its pixels at a time, over one channel's maxima.

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "vec16.h"

namespace {


// Accumulators of 16 floats: 24 of AVX-512's 32 registers; without AVX-512 (AVX2: 16 registers of 8 floats, a
// v16 takes two, vec16.h) 6, 12 registers (docs/performance.md, session 18).
#if defined(__AVX512F__)
constexpr int kAccumulators = 24;
#else
constexpr int kAccumulators = 6;
#endif

// out[u][16c..] += sum over q of v[q * step] * p[off[q * step] + uoff[u] + 16c], for U pixels of VC vectors
template <int U, int VC>
__attribute__((always_inline)) inline void pixels(const float* __restrict p, const int64_t* uoff, const int32_t* off,
                                                  const float* v, int64_t step, int64_t m, float* __restrict out) {
  v16 acc[U][VC];
  int64_t at[U];
#pragma GCC unroll 24
  for (int u = 0; u < U; ++u) {
    at[u] = uoff[u];
#pragma GCC unroll 8
    for (int c = 0; c < VC; ++c) acc[u][c] = v16{};
  }
  for (int64_t q = 0; q < m; ++q) {
    const float a = v[q * step];
    const float* base = p + off[q * step];
#pragma GCC unroll 24
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
      for (int c = 0; c < VC; ++c) acc[u][c] += a * *(const v16*)(base + at[u] + 16 * c);
  }
#pragma GCC unroll 24
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 8
    for (int c = 0; c < VC; ++c) *(v16*)(out + (u * VC + c) * 16) += acc[u][c];
}

// pixels for `count` patch pixels: U at a time, then the largest instantiation that fits the rest
template <int U, int VC>
void pixels_upto(int64_t count, const float* p, const int64_t* uoff, const int32_t* off, const float* v,
                 int64_t step, int64_t m, float* out) {
  if constexpr (U > 0) {
    if (count >= U) {
      pixels<U, VC>(p, uoff, off, v, step, m, out);
      pixels_upto<U, VC>(count - U, p, uoff + U, off, v, step, m, out + U * VC * 16);
    } else {
      pixels_upto<U - 1, VC>(count, p, uoff, off, v, step, m, out);
    }
  }
}

void all_pixels(int64_t vc, int64_t count, const float* p, const int64_t* uoff, const int32_t* off, const float* v,
                int64_t step, int64_t m, float* out) {
  switch (vc) {
#define ALEXNET_PIXELS_CASE(VC) \
  case VC: pixels_upto<(kAccumulators / VC > 0 ? kAccumulators / VC : 1), VC>(count, p, uoff, off, v, step, m, out); \
    break;
    ALEXNET_PIXELS_CASE(1) ALEXNET_PIXELS_CASE(2) ALEXNET_PIXELS_CASE(3) ALEXNET_PIXELS_CASE(4)
    ALEXNET_PIXELS_CASE(5) ALEXNET_PIXELS_CASE(6) ALEXNET_PIXELS_CASE(7) ALEXNET_PIXELS_CASE(8)
#undef ALEXNET_PIXELS_CASE
  }
}

}  // namespace

extern "C" {

// x: N x H x W x C channels-last (C = groups * CG); the conv output is OH x OW with OC = groups * OG channels;
// g: the gradient of the pooled maps (the LRN's input, `pooled`, N x PH x PW x OC channels-last); idx: where in
// its pk x pk window each maximum was (one byte, row * pk + col, as stage_forward writes it; read unchecked).
// dw is written at dw[o*ws[0] + c*ws[1] + kh*ws[2] + kw*ws[3]] (c within the group), db[o] when db.
// Returns 0, or -1 (nothing written) when CG is not a multiple of 16 or above 128, or offsets exceed 32 bits.
int pooled_weight_grad_f32(const float* x, const float* g, const float* pooled, const uint8_t* idx, float* dw,
                           float* db, int64_t n, int64_t h, int64_t w, int64_t c, int64_t oc, int64_t groups,
                           int64_t oh, int64_t ow, int64_t ph, int64_t pw, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t padh, int64_t padw, int64_t pk, int64_t ps, const int64_t* ws,
                           int threads) {
  if (groups <= 0 || oc <= 0 || c % groups || oc % groups) return -1;
  const int64_t cg = c / groups, og = oc / groups, vc = cg / 16;
  if (cg % 16 || vc < 1 || vc > 8) return -1;
  const int64_t hp = h + 2 * padh, wp = w + 2 * padw;
  const int64_t rows = std::max(hp, (oh - 1) * sh + kh), cols = std::max(wp, (ow - 1) * sw + kw);
  const int64_t ld = cols * c;
  if (rows * ld > INT32_MAX) return -1;
  const bool copy = rows != h || cols != w;  // padding: each image into a zero-framed buffer, else read x itself
  const int64_t taps = kh * kw, per_channel = taps * cg, per_thread = oc * (per_channel + 1);
  // each thread's dW and bias sums, zeroed by the thread itself (in parallel, and where it will use them)
  std::unique_ptr<float[]> partial(new float[per_thread * threads]);
  int team = 1;
  std::vector<int64_t> uoff(taps);  // each patch pixel's offset from the patch's first
  for (int64_t r = 0; r < kh; ++r)
    for (int64_t q = 0; q < kw; ++q) uoff[r * kw + q] = r * ld + q * c;
  int32_t window[256];  // each window offset's conv pixel, as a patch offset from the window's first pixel's
  for (int64_t k = 0; k < 256; ++k) window[k] = int32_t((k / pk) * sh * ld + (k % pk) * sw * c);
  const int64_t col_step = ps * sw * c;
  // a strip of pooled rows at a time, so that its maxima's offsets and gradients stay in the core's L2
  const int64_t strip = pw > 0 ? std::max<int64_t>(1, (32768 / oc + pw - 1) / pw) : 1;
  // fewer images than threads: split each image's output channels too, so that every thread has work
  const int64_t chunks = n <= 0 || n >= threads ? 1 : std::min<int64_t>((threads + n - 1) / n, oc);

#pragma omp parallel num_threads(threads)
  {
    float* mine = partial.get() + per_thread * omp_get_thread_num();
    float* bias = mine + oc * per_channel;
    std::fill(mine, mine + per_thread, 0.0f);
#pragma omp single
    team = omp_get_num_threads();  // the threads OpenMP gave (at most `threads`); single's barrier follows
    std::vector<float> frame(copy ? rows * ld + 16 : 0, 0.0f);
    float* padded = frame.data() + ((64 - reinterpret_cast<uintptr_t>(frame.data()) % 64) % 64) / sizeof(float);
    std::vector<int32_t> off(strip * pw * oc), off1(strip * pw);
    std::vector<float> v(strip * pw * oc), v1(strip * pw);
    int64_t held = -1;  // the image in `padded`
    // static: each thread sums the same items in the same order every call, so the gradients are reproducible
#pragma omp for schedule(static)
    for (int64_t item = 0; item < n * chunks; ++item) {
      const int64_t i = item / chunks, o0 = oc * (item % chunks) / chunks, o1 = oc * (item % chunks + 1) / chunks;
      const float* img = x + i * h * w * c;
      if (copy) {
        if (i != held) {
          for (int64_t r = 0; r < h; ++r)
            std::memcpy(padded + (r + padh) * ld + padw * c, img + r * w * c, sizeof(float) * w * c);
          held = i;
        }
        img = padded;  // 64-byte aligned, as x's pixels are (16 channels a vector)
      }
      const int64_t base = i * ph * pw * oc;
      for (int64_t y0 = 0; y0 < ph; y0 += strip) {
        const int64_t y1 = std::min(ph, y0 + strip), m = (y1 - y0) * pw;
        for (int64_t py = y0, q = 0; py < y1; ++py) {
          const int64_t row_off = py * ps * sh * ld;
          for (int64_t px = 0; px < pw; ++px, ++q) {
            const int64_t at = base + (py * pw + px) * oc, corner = row_off + px * col_step;
            int32_t* oq = off.data() + q * oc;
            float* vq = v.data() + q * oc;
            for (int64_t o = o0; o < o1; ++o) {
              const float gv = pooled[at + o] > 0.0f ? g[at + o] : 0.0f;  // ReLU: none at a maximum <= 0
              oq[o] = int32_t(corner + window[idx[at + o]] + (o / og) * cg);
              vq[o] = gv;
              bias[o] += gv;
            }
          }
        }
        for (int64_t o = o0; o < o1; ++o) {
          // this channel's maxima, contiguous and without the masked ones, for the passes over its patch
          int64_t k = 0;
          for (int64_t q = 0; q < m; ++q) {
            off1[k] = off[q * oc + o];
            v1[k] = v[q * oc + o];
            k += v1[k] != 0.0f;
          }
          all_pixels(vc, taps, img, uoff.data(), off1.data(), v1.data(), 1, k, mine + o * per_channel);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t e = 0; e < oc * (per_channel + 1); ++e) {
      // o outermost: each thread's sums are read in order (and a channels-last dW written in order)
      const int64_t o = e / (per_channel + 1), k = e % (per_channel + 1);  // k: tap * cg + ch, or the bias
      const int64_t src = k < per_channel ? o * per_channel + k : oc * per_channel + o;
      float s = 0.0f;
      for (int th = 0; th < team; ++th) s += partial[per_thread * th + src];
      if (k < per_channel) {
        const int64_t tap = k / cg, ch = k % cg;
        dw[o * ws[0] + ch * ws[1] + (tap / kw) * ws[2] + (tap % kw) * ws[3]] = s;
      } else if (db) {
        db[o] = s;
      }
    }
  }
  return 0;
}

}  // extern "C"
