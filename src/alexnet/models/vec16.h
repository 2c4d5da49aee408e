// v16: 16 floats, unaligned loads and stores allowed, for the weight-gradient kernels (first_conv_cpu.cpp,
// conv_stage_cpu.cpp).
//
// With AVX-512 it is GCC's vector of 16 floats, one register. Without it, GCC lowers a vector wider than the
// hardware's piecewise through the stack: every v16 lived in memory, and alexnet's conv1 weight gradient ran at
// 9 GFLOP/s built for AVX2 (docs/performance.md, sessions 17 and 18). There it is two vectors of 8 floats, each a
// register of AVX2's (or two of SSE's/NEON's), with the few operators the kernels use.
#pragma once

#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#else
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));
struct __attribute__((may_alias)) v16 {
  v8 lo, hi;
};
inline v16 operator*(float a, const v16& b) { return v16{a * b.lo, a * b.hi}; }
inline v16& operator+=(v16& a, const v16& b) {
  a.lo += b.lo;
  a.hi += b.hi;
  return a;
}
#endif
