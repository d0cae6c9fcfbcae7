// convnet's convolution + max-pooling kernel for CPUs, called by XLA as an FFI custom call.
//
// pooled[n, f, i, j] = max over pool window (i, j) of
//                      sum over (c, a, b) of images[n, c, y + a, x + b] * weights[(c, a, b), f]
// that is network3's conv2d (stride 1, "valid"; the Python side flips the kernels) followed
// by non-overlapping max-pooling that drops a ragged border.
//
// Why: under XLA a conv layer is three passes over memory (im2col's columns, a GEMM, the
// pooling). Here the GEMM reads each image in place (a kernel tap is an offset into the
// image, so no columns are built), the products of one image stay in cache, and only the
// pooled values are written. Images are shared out over XLA's CPU thread pool.
//
// How XLA calls it: xla_call.h.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla_call.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

// Vectors over the filters as wide as the CPU's: 16 lanes (512-bit) with AVX-512, else 8
// (AVX2). Filters are padded to whole vectors; ConvnetLanes() tells the Python side how far.
#ifdef __AVX512F__
constexpr int kLanes = 16;
constexpr int kAccumulators = 24;  // of 32 vector registers
#else
constexpr int kLanes = 8;
constexpr int kAccumulators = 12;  // of 16
#endif
typedef float vec __attribute__((vector_size(4 * kLanes)));

// The gradients' vectors for kernel rows of at most 8 floats (the book's first layer: 5 x 1
// channel): 8 lanes even with AVX-512, which such a row fills twice as well as 16.
constexpr int kRowLanes = 8;
typedef float row_vec __attribute__((vector_size(4 * kRowLanes)));

// conv[p][f] = sum_k image[tap[k] + p0 + r] * w[k][f] for R neighbouring positions of one
// output row (p = p0 + r) and J vectors of filters: the image is read in place, no im2col.
template <int R, int J>
inline void Block(const float* image, const int64_t* tap, int64_t K, const float* w,
                  float* conv, int64_t ld) {
  // Fully unrolled over r and j, so that the R*J accumulators live in registers.
  vec acc[R][J];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) acc[r][j] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    const float* pixels = image + tap[k];
    vec wv[J];
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) std::memcpy(&wv[j], w + k * ld + j * kLanes, sizeof(vec));
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const float c = pixels[r];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) acc[r][j] += c * wv[j];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) std::memcpy(conv + r * ld + j * kLanes, &acc[r][j], sizeof(vec));
}

// One image's convolution, conv[oh*ow][ld], for filters in J vectors starting at w.
template <int J>
__attribute__((noinline)) void Convolve(const float* image, int64_t width, int64_t oh,
                                        int64_t ow, const int64_t* tap, int64_t K,
                                        const float* w, float* conv, int64_t ld) {
  constexpr int R = kAccumulators / J;
  for (int64_t y = 0; y < oh; ++y) {
    const float* row = image + y * width;
    float* out = conv + y * ow * ld;
    int64_t x = 0;
    for (; x + R <= ow; x += R) Block<R, J>(row + x, tap, K, w, out + x * ld, ld);
    for (; x < ow; ++x) Block<1, J>(row + x, tap, K, w, out + x * ld, ld);
  }
}

using ConvolveFn = void (*)(const float*, int64_t, int64_t, int64_t, const int64_t*, int64_t,
                            const float*, float*, int64_t);
constexpr ConvolveFn kConvolve[] = {nullptr,     Convolve<1>, Convolve<2>, Convolve<3>,
                                    Convolve<4>, Convolve<5>, Convolve<6>};
constexpr int64_t kMaxVectors = 6;

struct Shape {
  int64_t c, h, w, kh, kw, ph, pw, f, fpad, oh, ow, qh, qw, K, P;
};

// Max-pooling of pooled row i from `band` (conv rows i * ph.. of conv[P][fpad], ow
// positions a row) into out (f, qh, qw), vectorised over the filters of each position;
// with `ties`, also which places of each window hold its maximum (bit a*pw + b): the
// backward pass sends the gradient to each of them, as Theano's pooling (the book's) and
// PyTensor's max do, so flat regions (ReLU zeros, MNIST's blank border) train alike.
void PoolRow(const Shape& s, float* band, int64_t i, float* out, int32_t* ties) {
  typedef int32_t ivec __attribute__((vector_size(4 * kLanes)));
  const int64_t vectors = s.fpad / kLanes;
  float* best = band + s.ph * s.ow * s.fpad;  // a spare row after the products
  int32_t* bits = reinterpret_cast<int32_t*>(best + s.fpad);
  for (int64_t j = 0; j < s.qw; ++j) {
    const int64_t first = j * s.pw;
    for (int64_t v = 0; v < vectors; ++v) {
      vec m;
      std::memcpy(&m, band + first * s.fpad + v * kLanes, sizeof(vec));
      for (int64_t a = 0; a < s.ph; ++a)
        for (int64_t b = 0; b < s.pw; ++b) {
          vec e;
          std::memcpy(&e, band + (first + a * s.ow + b) * s.fpad + v * kLanes, sizeof(vec));
          m = m > e ? m : e;
        }
      std::memcpy(best + v * kLanes, &m, sizeof(vec));
      if (ties == nullptr) continue;
      ivec mask = ivec{};
      for (int64_t a = 0; a < s.ph; ++a)
        for (int64_t b = 0; b < s.pw; ++b) {
          vec e;
          std::memcpy(&e, band + (first + a * s.ow + b) * s.fpad + v * kLanes, sizeof(vec));
          mask |= (e == m) & static_cast<int32_t>(1u << (a * s.pw + b));
        }
      std::memcpy(bits + v * kLanes, &mask, sizeof(ivec));
    }
    for (int64_t f = 0; f < s.f; ++f) {
      out[(f * s.qh + i) * s.qw + j] = best[f];
      if (ties != nullptr) ties[(f * s.qh + i) * s.qw + j] = bits[f];
    }
  }
}

// One image's convolution and pooling, a band of ph conv rows (a pooled row) at a time:
// the band's products (6 KB for the book's first layer) are pooled from L1, where the
// whole image's (73 KB) went to L2 and back (pooling took about what the convolution
// took). Conv rows past the last window (qh * ph and on) are not computed.
void ConvolvePool(const Shape& s, const int64_t* tap, const float* x, const float* w,
                  float* band, float* out, int32_t* ties) {
  for (int64_t i = 0; i < s.qh; ++i) {
    for (int64_t g = 0; g < s.fpad; g += kMaxVectors * kLanes) {
      const int64_t vectors = std::min<int64_t>(kMaxVectors, (s.fpad - g) / kLanes);
      kConvolve[vectors](x + i * s.ph * s.w, s.w, s.ph, s.ow, tap, s.K, w + g, band + g, s.fpad);
    }
    PoolRow(s, band, i, out, ties);
  }
}

#ifdef __AVX512F__
// -- The forward of layers with few filters and wide rows (the book's first layer: 20 filters
// in two vectors of 16, 37% of their lanes padding), vectorised over conv positions ------
// A band of conv rows is one run of the image's flat positions (y * w + x, the columns past
// ow computed and dropped: 14% for the book's 28-pixel rows), in at most kBandVectors
// vectors; each filter's sums over the taps, in tap order, are the filters path's bit for
// bit. The products land channels-first, as the pooled result is laid out, so a pooled
// row is pooled by vector (pw <= 2, qw <= 16: a window row's places are lanes 2j and
// 2j + 1 of two vectors) and stored whole.
constexpr int64_t kBandVectors = 7;
// Floats a filter's products take in a band: two vectors more than the band, which the
// pooling's second vector of a window row may read past its last row.
constexpr int64_t kBandStride = (kBandVectors + 2) * kLanes;

// Filters summed at once: NV vectors of positions times NF filters of accumulators, the NF
// weights and a vector of pixels in 32 registers.
constexpr int64_t FiltersAtOnce(int64_t vectors) { return vectors <= 3 ? 8 : 3; }

struct PositionsPlan {
  int64_t rows;     // pooled rows a band
  int64_t filters;  // summed at once (FiltersAtOnce of a whole band's vectors)
  int64_t groups;   // of `filters` filters, the last one padded with zero weights
  int64_t padded;   // floats of an image's copy, zeros past its pixels
  int64_t width() const { return groups * filters; }
};

// prod[t][v * 16 + l] = sum over k of pixels[tap[k] + v * 16 + l] * w[k][t], t < NF.
template <int NV, int NF>
__attribute__((noinline)) void SumPositions(const float* pixels, const int64_t* tap, int64_t K,
                                            const float* w, int64_t ld, float* prod) {
  __m512 acc[NV][NF];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v)
#pragma GCC unroll 8
    for (int t = 0; t < NF; ++t) acc[v][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* at = pixels + tap[k];
    __m512 wv[NF];
#pragma GCC unroll 8
    for (int t = 0; t < NF; ++t) wv[t] = _mm512_set1_ps(w[k * ld + t]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m512 x = _mm512_loadu_ps(at + v * kLanes);
      asm("" : "+v"(x));  // one load a vector (most straddle two cache lines), not NF
#pragma GCC unroll 8
      for (int t = 0; t < NF; ++t) acc[v][t] = _mm512_fmadd_ps(x, wv[t], acc[v][t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NF; ++t)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(prod + t * kBandStride + v * kLanes, acc[v][t]);
}

using SumPositionsFn = void (*)(const float*, const int64_t*, int64_t, const float*, int64_t,
                                float*);
constexpr SumPositionsFn kSumPositions[2][kBandVectors + 1] = {
    {nullptr, SumPositions<1, 3>, SumPositions<2, 3>, SumPositions<3, 3>, SumPositions<4, 3>,
     SumPositions<5, 3>, SumPositions<6, 3>, SumPositions<7, 3>},
    {nullptr, SumPositions<1, 8>, SumPositions<2, 8>, SumPositions<3, 8>}};

// Whether a layer takes the positions path, and its plan: only where it computes fewer
// products than the filters path (padding and dropped columns counted).
bool PlanPositions(const Shape& s, PositionsPlan* plan) {
  if (s.pw > 2 || s.qw > kLanes || s.ph * s.w > kBandVectors * kLanes) return false;
  plan->rows = std::min(s.qh, kBandVectors * kLanes / (s.ph * s.w));
  plan->filters = FiltersAtOnce((plan->rows * s.ph * s.w + kLanes - 1) / kLanes);
  plan->groups = (s.f + plan->filters - 1) / plan->filters;
  plan->padded = s.c * s.h * s.w + 2 * kLanes + s.kw;
  int64_t positions = 0;
  for (int64_t i0 = 0; i0 < s.qh; i0 += plan->rows)
    positions += (std::min(plan->rows, s.qh - i0) * s.ph * s.w + kLanes - 1) / kLanes;
  return positions * kLanes * plan->width() < s.qh * s.ph * s.ow * s.fpad;
}

// The weights for the positions path: [K][width], zeros past the filters.
std::vector<float> PositionsWeights(const Shape& s, const PositionsPlan& plan, const float* w) {
  std::vector<float> wpos(s.K * plan.width(), 0.0f);
  for (int64_t k = 0; k < s.K; ++k)
    std::memcpy(wpos.data() + k * plan.width(), w + k * s.fpad, sizeof(float) * s.f);
  return wpos;
}

// Pooled rows [i0, i0 + rows) of filters [f0, f0 + count) from the band's products (conv
// row r of filter t at prod + t * kBandStride + r * w), as PoolRow pools them: the same
// maxima in the same order, the same ties. PH and PW: the window's, compiled in (the
// book's 2 x 2), or 0 for any.
template <int PH, int PW>
void PoolBand(const Shape& s, const float* prod, int64_t i0, int64_t rows, int64_t f0,
              int64_t count, float* out, int32_t* ties) {
  const int64_t ph = PH ? PH : s.ph, pw = PW ? PW : s.pw, places = ph * pw;
  alignas(64) static constexpr int32_t kEven[16] = {0,  2,  4,  6,  8,  10, 12, 14,
                                                    16, 18, 20, 22, 24, 26, 28, 30};
  const __m512i pick[2] = {_mm512_load_si512(kEven),
                           _mm512_add_epi32(_mm512_load_si512(kEven), _mm512_set1_epi32(1))};
  const __mmask16 keep = static_cast<__mmask16>((1u << s.qw) - 1);
  for (int64_t t = 0; t < count; ++t)
    for (int64_t i = 0; i < rows; ++i) {
      __m512 place[32];  // the candidates of window row a, column b: place[a * pw + b]
      for (int64_t a = 0; a < ph; ++a) {
        const float* row = prod + t * kBandStride + (i * ph + a) * s.w;
        const __m512 lo = _mm512_loadu_ps(row), hi = _mm512_loadu_ps(row + kLanes);
        for (int64_t b = 0; b < pw; ++b)
          place[a * pw + b] = pw == 1 ? lo : _mm512_permutex2var_ps(lo, pick[b], hi);
      }
      __m512 m = place[0];
      for (int64_t p = 0; p < places; ++p) m = _mm512_max_ps(m, place[p]);
      const int64_t at = ((f0 + t) * s.qh + i0 + i) * s.qw;
      _mm512_mask_storeu_ps(out + at, keep, m);
      if (ties == nullptr) continue;
      __m512i bits = _mm512_setzero_si512();
      for (int64_t p = 0; p < places; ++p)
        bits = _mm512_mask_or_epi32(bits, _mm512_cmp_ps_mask(place[p], m, _CMP_EQ_OQ), bits,
                                    _mm512_set1_epi32(static_cast<int32_t>(1u << p)));
      _mm512_mask_storeu_epi32(ties + at, keep, bits);
    }
}

// One image's convolution and pooling by positions, a band of plan.rows pooled rows at a
// time; scratch holds the image's padded copy and the band's products.
void ConvolvePoolByPositions(const Shape& s, const PositionsPlan& plan, const int64_t* tap,
                             const float* x, const float* wpos, float* scratch, float* out,
                             int32_t* ties) {
  float* pixels = scratch;
  float* prod = scratch + plan.padded;
  const int64_t in = s.c * s.h * s.w;
  std::memcpy(pixels, x, sizeof(float) * in);
  std::memset(pixels + in, 0, sizeof(float) * (plan.padded - in));
  for (int64_t i0 = 0; i0 < s.qh; i0 += plan.rows) {
    const int64_t rows = std::min(plan.rows, s.qh - i0);
    const int64_t nv = (rows * s.ph * s.w + kLanes - 1) / kLanes;
    const float* band = pixels + i0 * s.ph * s.w;
    for (int64_t g = 0; g < plan.groups; ++g) {
      const int64_t f0 = g * plan.filters;
      kSumPositions[plan.filters == 8][nv](band, tap, s.K, wpos + f0, plan.width(), prod);
      const auto pool = s.ph == 2 && s.pw == 2 ? PoolBand<2, 2> : PoolBand<0, 0>;
      pool(s, prod, i0, rows, f0, std::min(plan.filters, s.f - f0), out, ties);
    }
  }
}
#endif

// -- The gradients, read off each window's maxima ---------------------------------------
// Only the places of a window holding its maximum get the window's gradient (all of them
// on a tie, as Theano's pooling, the book's, and PyTensor's max do, so flat regions such
// as ReLU's zeros and MNIST's blank border train alike), and windows whose gradient is
// zero (behind ReLU's zeros or dropout) cost nothing: a quarter or less of a dense
// GEMM's products. Both gradients (but the weight gradient of layers with short kernel
// rows, further below) work on channels-last images (y, x, c), where kernel row a of the
// window at conv position (y, x) is one run of kw * c floats from ((y + a) * w + x) * c,
// so a maximum costs kh runs of vector FMAs whatever c is.

// Where place `bit` of window cell q is, as corner[q] + within[bit], in units of `unit`
// floats in rows of `stride` units: conv positions (stride ow, unit 1) or channels-last
// images (stride w, unit c). Tables made once, so that the loops over the maxima divide
// nothing; within[] has 32 entries, the unused ones 0, so that ctz(mask | 1 << 31) is a
// place for any mask, the empty one included (the loops below are branch-free for it).
struct Places {
  std::vector<int64_t> corner, within;

  Places(const Shape& s, int64_t stride, int64_t unit) : corner(s.qh * s.qw), within(32, 0) {
    for (int64_t q = 0; q < s.qh * s.qw; ++q)
      corner[q] = (q / s.qw * s.ph * stride + q % s.qw * s.pw) * unit;
    for (int64_t bit = 0; bit < s.ph * s.pw; ++bit)
      within[bit] = (bit / s.pw * stride + bit % s.pw) * unit;
  }
  int64_t operator()(int64_t q, uint32_t mask) const {
    return corner[q] + within[__builtin_ctz(mask | (1u << 31))];
  }
};

// A window's kernel rows as runs of whole vectors ("segments"): of 8 lanes when a run fits
// 8 (the book's first layer: 5 floats), else of the CPU's widest. A segment's lanes past
// its run read the next pixels, or the image's padding; their sums are dropped (weights)
// or are zeros (images).
struct Runs {
  int64_t length;   // kw * c floats
  int64_t lanes;    // a segment's
  int64_t vectors;  // segments a run
  int64_t pad;      // vectors * lanes
  int64_t row;      // floats a channels-last image row (w * c)
  int64_t image;    // floats a channels-last image, with a vector of padding
};

Runs RunsOf(const Shape& s) {
  Runs r;
  r.length = s.kw * s.c;
  r.lanes = r.length <= kRowLanes ? kRowLanes : kLanes;
  r.vectors = (r.length + r.lanes - 1) / r.lanes;
  r.pad = r.vectors * r.lanes;
  r.row = s.w * s.c;
  r.image = s.h * r.row + kLanes;
  return r;
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols: the gradients'
// changes of layout (channels-first to channels-last and back, filters to places). With
// AVX-512, 16 x 16 tiles in registers, their off-diagonal blocks swapped at 8, 4, 2 and 1
// lanes (a two-register permute each): element by element, the stores were strided.
// Moves bits only, so it serves int32 arrays too.
void Transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
               int64_t dst_stride) {
#ifdef __AVX512F__
  __m512i low[4], high[4];  // per block size 8, 4, 2, 1: lane j's source in (a, b)
  for (int stage = 0; stage < 4; ++stage) {
    const int size = 8 >> stage;
    alignas(64) int32_t lo[16], hi[16];
    for (int j = 0; j < 16; ++j) {
      lo[j] = (j & size) ? 16 + j - size : j;
      hi[j] = (j & size) ? 16 + j : j + size;
    }
    low[stage] = _mm512_load_si512(lo);
    high[stage] = _mm512_load_si512(hi);
  }
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nr = std::min<int64_t>(16, rows - r0), nc = std::min<int64_t>(16, cols - c0);
      const __mmask16 in_cols = static_cast<__mmask16>((1u << nc) - 1);
      const __mmask16 in_rows = static_cast<__mmask16>((1u << nr) - 1);
      __m512 m[16];
      for (int i = 0; i < 16; ++i)
        m[i] = i < nr ? _mm512_maskz_loadu_ps(in_cols, src + (r0 + i) * src_stride + c0)
                      : _mm512_setzero_ps();
      for (int stage = 0; stage < 4; ++stage) {
        const int size = 8 >> stage;
        for (int i = 0; i < 16; ++i) {
          if (i & size) continue;
          const __m512 a = m[i], b = m[i + size];
          m[i] = _mm512_permutex2var_ps(a, low[stage], b);
          m[i + size] = _mm512_permutex2var_ps(a, high[stage], b);
        }
      }
      for (int64_t c = 0; c < nc; ++c)
        _mm512_mask_storeu_ps(dst + (c0 + c) * dst_stride + r0, in_rows, m[c]);
    }
#else
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = src[r * src_stride + c];
#endif
}

void ChannelsLast(const Shape& s, const float* image, float* hwc) {
  const int64_t hw = s.h * s.w;
  Transpose(image, hw, s.c, hw, hwc, s.c);
  std::memset(hwc + hw * s.c, 0, sizeof(float) * kLanes);
}

// Segments summed at once: at most 8 vectors of a run and 8 rows, within the registers.
constexpr int kMaxRunVectors = 8;
constexpr int RowsAtOnce(int vectors) {
  return std::min(8, std::max(1, kAccumulators / vectors));
}

// out[a * out_row + v * L] goes on summing gain[e] * table[base[e] + a * row + v * L] over
// the entries e in order (out = out + e0 + e1 + ...), for rows a < rows <= RowsAtOnce(V) and
// V segments of L lanes: the sums live in registers while the entries stream by, so runs
// repeat bit for bit.
template <typename Vec, int V>
__attribute__((noinline)) void SumRuns(const float* table, int64_t row, int64_t rows,
                                       const int64_t* base, const float* gain, int64_t count,
                                       float* out, int64_t out_row) {
  constexpr int L = sizeof(Vec) / sizeof(float);
  constexpr int R = RowsAtOnce(V);
  Vec acc[R][V];
#pragma GCC unroll 8
  for (int a = 0; a < R; ++a)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      acc[a][v] = Vec{};
      if (a < rows) std::memcpy(&acc[a][v], out + a * out_row + v * L, sizeof(Vec));
    }
  for (int64_t e = 0; e < count; ++e) {
    const float* at = table + base[e];
    const float g = gain[e];
#pragma GCC unroll 8
    for (int a = 0; a < R; ++a) {
      if (a >= rows) break;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) {
        Vec x;
        std::memcpy(&x, at + a * row + v * L, sizeof(Vec));
        acc[a][v] += g * x;
      }
    }
  }
  for (int a = 0; a < rows; ++a)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) std::memcpy(out + a * out_row + v * L, &acc[a][v], sizeof(Vec));
}

using SumRunsFn = void (*)(const float*, int64_t, int64_t, const int64_t*, const float*,
                           int64_t, float*, int64_t);

SumRunsFn SumRunsFor(const Runs& r, int vectors) {
  static constexpr SumRunsFn kSums[] = {
      nullptr,          SumRuns<vec, 1>, SumRuns<vec, 2>, SumRuns<vec, 3>, SumRuns<vec, 4>,
      SumRuns<vec, 5>,  SumRuns<vec, 6>, SumRuns<vec, 7>, SumRuns<vec, 8>};
  return r.lanes == kLanes ? kSums[vectors] : SumRuns<row_vec, 1>;
}

// All kh runs of the entries' windows (table rows `row` floats apart) summed on into out
// (rows out_row apart), a block of segments at a time.
void SumAllRuns(const Runs& r, int64_t kh, const float* table, int64_t row, const int64_t* base,
                const float* gain, int64_t count, float* out, int64_t out_row) {
  for (int64_t v0 = 0; v0 < r.vectors; v0 += kMaxRunVectors) {
    const int vectors = static_cast<int>(std::min<int64_t>(kMaxRunVectors, r.vectors - v0));
    const SumRunsFn sum = SumRunsFor(r, vectors);
    const int64_t rows = RowsAtOnce(vectors);
    for (int64_t a0 = 0; a0 < kh; a0 += rows)
      sum(table + a0 * row + v0 * r.lanes, row, std::min(rows, kh - a0), base, gain, count,
          out + a0 * out_row + v0 * r.lanes, out_row);
  }
}

// The mask of a window's maxima, or 0 where its gradient is zero, without a branch (which
// ReLU's and dropout's zeros would make a coin toss).
inline uint32_t MaximaWithGradient(float grad, int32_t ties) {
  uint32_t bits;
  std::memcpy(&bits, &grad, sizeof(bits));
  return static_cast<uint32_t>(ties) & (0u - static_cast<uint32_t>((bits << 1) != 0));
}

// Kernel row a of the images' gradient: for every conv position p, its maxima's sums
// sum over e in [start[p], start[p + 1]) of gain[e] * wt_row[base[e] + v * L] added onto
// the image at out + ((y * w + x) * c + v * L), V segments of L lanes. One call a row, so
// that the few maxima of a position (a filter in five, behind dropout and ReLU) do not
// each pay for a call; a position without any adds zeros, with no branch to mispredict.
// The positions go column by column (x outer): a position's run overlaps its left
// neighbour's, and read back right after that neighbour's stores it waited for them to
// reach the cache (a failed store forwarding) at every position. Positions of one column
// write different image rows, so each cell still gets its sums in position order.
template <typename Vec, int V>
__attribute__((noinline)) void AddRowOfPositions(const float* wt_row, const int64_t* start,
                                                 const int64_t* base, const float* gain,
                                                 int64_t oh, int64_t ow, int64_t w, int64_t c,
                                                 float* out) {
  constexpr int L = sizeof(Vec) / sizeof(float);
  for (int64_t x = 0; x < ow; ++x)
    for (int64_t y = 0; y < oh; ++y) {
      const int64_t p = y * ow + x;
      Vec acc[V];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) acc[v] = Vec{};
      for (int64_t e = start[p]; e < start[p + 1]; ++e) {
        const float* at = wt_row + base[e];
        const float g = gain[e];
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) {
          Vec x_;
          std::memcpy(&x_, at + v * L, sizeof(Vec));
          acc[v] += g * x_;
        }
      }
      float* to = out + (y * w + x) * c;
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) {
        Vec old;
        std::memcpy(&old, to + v * L, sizeof(Vec));
        old += acc[v];
        std::memcpy(to + v * L, &old, sizeof(Vec));
      }
    }
}

using AddRowFn = void (*)(const float*, const int64_t*, const int64_t*, const float*, int64_t,
                          int64_t, int64_t, int64_t, float*);

AddRowFn AddRowFor(const Runs& r, int vectors) {
  static constexpr AddRowFn kAdd[] = {
      nullptr,                      AddRowOfPositions<vec, 1>, AddRowOfPositions<vec, 2>,
      AddRowOfPositions<vec, 3>,    AddRowOfPositions<vec, 4>, AddRowOfPositions<vec, 5>,
      AddRowOfPositions<vec, 6>,    AddRowOfPositions<vec, 7>, AddRowOfPositions<vec, 8>};
  return r.lanes == kLanes ? kAdd[vectors] : AddRowOfPositions<row_vec, 1>;
}

// The filters as wt[f][a][pad]: filter f's kernel row a (flipped, as the convolution reads
// it) as the run (b, c) of a channels-last window, zeros after it. Made once per call from
// the filters' own layout (f, c, kh, kw), a filter at a time within L1.
std::vector<float> FilterMajorWeights(const Shape& s, const Runs& r, const float* filters) {
  std::vector<float> wt(s.f * s.kh * r.pad, 0.0f);
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t ch = 0; ch < s.c; ++ch)
      for (int64_t a = 0; a < s.kh; ++a) {
        const float* from = filters + ((f * s.c + ch) * s.kh + s.kh - 1 - a) * s.kw + s.kw - 1;
        float* to = wt.data() + (f * s.kh + a) * r.pad + ch;
        for (int64_t b = 0; b < s.kw; ++b) to[b * s.c] = from[-b];
      }
  return wt;
}

// Per image: the entries' starts per conv position (P + 2), their next free slots (P + 1),
// bases and gains (a slot more than the maxima, for the branch-free writes), and the
// gradient channels-last.
int64_t ImageScratch(const Shape& s, const Runs& r) {
  const int64_t most = s.f * s.qh * s.qw * s.ph * s.pw;
  return 2 * (2 * s.P + 3) + 3 * (most + 1) + s.h * r.row + kLanes;
}

// dx[c][y + a][x + b] += grad * w[(c, a, b)][f] for each filter f whose window maximum is
// at conv position (y, x): each position's maxima are listed in filter order (a counting
// sort), summed in registers run by run, and added onto the image once per position.
void ImageGradient(const Shape& s, const Runs& r, const Places& places, const float* wt,
                   const int32_t* ties, const float* grad, float* scratch, float* dx) {
  // Locals, not s's fields, in the loops: their stores to int64 arrays could alias them.
  const int64_t cells = s.qh * s.qw, most = s.f * cells * s.ph * s.pw, P = s.P;
  const int64_t filters = s.f, size = s.kh * r.pad;
  const int64_t* corner = places.corner.data();
  const int64_t* within = places.within.data();
  const auto place = [=](int64_t q, uint32_t mask) {
    return corner[q] + within[__builtin_ctz(mask | (1u << 31))];
  };
  auto* start = reinterpret_cast<int64_t*>(scratch);
  int64_t* next = start + P + 2;
  int64_t* base = next + P + 1;
  auto* gain = reinterpret_cast<float*>(base + most + 1);
  float* image = gain + most + 1;
  // A maximum with a zero gradient counts at, and is written to, position P: a trash slot.
  std::memset(start, 0, sizeof(int64_t) * (P + 2));
  for (int64_t f = 0; f < filters; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      uint32_t mask = MaximaWithGradient(grad[f * cells + q], ties[f * cells + q]);
      start[(mask ? place(q, mask) : P) + 1] += 1;
      for (mask &= mask - 1; mask; mask &= mask - 1) ++start[place(q, mask) + 1];
    }
  for (int64_t p = 0; p < P; ++p) start[p + 1] += start[p];
  std::memcpy(next, start, sizeof(int64_t) * P);
  next[P] = start[P];
  for (int64_t f = 0; f < filters; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      const float g = grad[f * cells + q];
      uint32_t mask = MaximaWithGradient(g, ties[f * cells + q]);
      const int64_t p = mask ? place(q, mask) : P;
      base[next[p]] = f * size;
      gain[next[p]] = g;
      next[p] += p < P;
      for (mask &= mask - 1; mask; mask &= mask - 1) {
        const int64_t e = next[place(q, mask)]++;
        base[e] = f * size;
        gain[e] = g;
      }
    }
  // A kernel row at a time, so that the filters' rows read (wt[.][a]: 18 KB for the book's
  // second layer, where all of wt is 90 KB) stay in L1. The rows go from the last to the
  // first, so that each image cell still gets its positions' sums in position order.
  std::memset(image, 0, sizeof(float) * (s.h * r.row + kLanes));
  for (int64_t a = s.kh - 1; a >= 0; --a)
    for (int64_t v0 = 0; v0 < r.vectors; v0 += kMaxRunVectors) {
      const int vectors = static_cast<int>(std::min<int64_t>(kMaxRunVectors, r.vectors - v0));
      AddRowFor(r, vectors)(wt + a * r.pad + v0 * r.lanes, start, base, gain, s.oh, s.ow, s.w,
                            s.c, image + a * r.row + v0 * r.lanes);
    }
  Transpose(image, s.c, s.h * s.w, s.c, dx, s.h * s.w);
}

// An image at a time (`item(i, scratch)` does image i), with the offsets every image's
// loops share.
struct Work : xla_call::Tasks {
  Shape s;
  std::vector<int64_t> tap;  // offset of each kernel tap (c, a, b) in an image
};

using xla_call::Answered;
using xla_call::Attribute;
using xla_call::Fail;
using xla_call::Float32Buffer;
using xla_call::Int32Buffer;

// Share the images out over XLA's thread pool, with the layer's offsets.
void Launch(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx, std::shared_ptr<Work> work) {
  const Shape& s = work->s;
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t a = 0; a < s.kh; ++a)
      for (int64_t b = 0; b < s.kw; ++b) work->tap.push_back((ch * s.h + a) * s.w + b);
  xla_call::Launch(api, ctx, work);
}

// The window attributes; a pooling window has at most 31 places (one bit each in `ties`).
bool Window(const XLA_FFI_CallFrame* frame, int64_t* kh, int64_t* kw, int64_t* ph, int64_t* pw) {
  return frame->attrs.size == 4 && Attribute(frame->attrs, 0, "kh", kh) &&
         Attribute(frame->attrs, 1, "kw", kw) && Attribute(frame->attrs, 2, "ph", ph) &&
         Attribute(frame->attrs, 3, "pw", pw) && *kh > 0 && *kw > 0 && *ph > 0 && *pw > 0 &&
         *ph * *pw <= 31;
}

// The layer's shape from the image (n, c, h, w), the window and the pooled (n, f, qh, qw).
bool Derive(const int64_t* image, const int64_t* pooled, int64_t kh, int64_t kw, int64_t ph,
            int64_t pw, int64_t fpad, Shape* s) {
  *s = Shape{image[1], image[2], image[3], kh, kw, ph, pw, pooled[1], fpad, image[2] - kh + 1,
             image[3] - kw + 1, pooled[2], pooled[3], image[1] * kh * kw, 0};
  s->P = s->oh * s->ow;
  return s->oh >= 1 && s->ow >= 1 && pooled[0] == image[0] && s->fpad % kLanes == 0 &&
         s->fpad >= s->f && s->qh == s->oh / ph && s->qw == s->ow / pw;
}

// Forward: pooled (and, for training, where each window's maxima are).
XLA_FFI_Error* Forward(XLA_FFI_CallFrame* frame, bool train) {
  const XLA_FFI_Api* api = frame->api;
  if (Answered(frame)) return nullptr;
  const int64_t results = train ? 2 : 1;
  if (frame->args.size != 2 || frame->rets.size != results)
    return Fail(api, "conv_pool: expected 2 arguments and 1 result (2 for training)");
  const XLA_FFI_Buffer* images = Float32Buffer(frame->args.args[0], 4);
  const XLA_FFI_Buffer* weights = Float32Buffer(frame->args.args[1], 2);
  const XLA_FFI_Buffer* pooled = Float32Buffer(frame->rets.rets[0], 4);
  const XLA_FFI_Buffer* where = train ? Int32Buffer(frame->rets.rets[1], 4) : nullptr;
  if (images == nullptr || weights == nullptr || pooled == nullptr || (train && where == nullptr))
    return Fail(api, "conv_pool: expected float32 images (4-D), weights (2-D), result (4-D)");
  int64_t kh, kw, ph, pw;
  if (!Window(frame, &kh, &kw, &ph, &pw))
    return Fail(api, "conv_pool: expected int64 attributes kh, kw, ph, pw");
  auto work = std::make_shared<Work>();
  if (!Derive(images->dims, pooled->dims, kh, kw, ph, pw, weights->dims[1], &work->s) ||
      weights->dims[0] != work->s.K)
    return Fail(api, "conv_pool: inconsistent shapes");
  const Shape& s = work->s;
  const float* x = static_cast<const float*>(images->data);
  const float* w = static_cast<const float*>(weights->data);
  float* out = static_cast<float*>(pooled->data);
  int32_t* at = train ? static_cast<int32_t*>(where->data) : nullptr;
  const int64_t in = s.c * s.h * s.w, cells = s.f * s.qh * s.qw;
  work->n = images->dims[0];
  work->scratch = (s.ph * s.ow + 2) * s.fpad;  // a band's products, the best row, its places
  Work* self = work.get();
#ifdef __AVX512F__
  PositionsPlan plan;
  if (PlanPositions(s, &plan)) {
    const std::vector<float> weights_by_filter = PositionsWeights(s, plan, w);
    const float* wpos = weights_by_filter.data();
    work->scratch = plan.padded + plan.filters * kBandStride;
    work->item = [=](int64_t i, float* scratch) {
      ConvolvePoolByPositions(s, plan, self->tap.data(), x + i * in, wpos, scratch,
                              out + i * cells, at == nullptr ? nullptr : at + i * cells);
    };
    Launch(api, frame->ctx, work);
    return nullptr;
  }
#endif
  work->item = [=](int64_t i, float* band) {
    ConvolvePool(s, self->tap.data(), x + i * in, w, band, out + i * cells,
                 at == nullptr ? nullptr : at + i * cells);
  };
  Launch(api, frame->ctx, work);
  return nullptr;
}

// -- The weight gradient of layers with short kernel rows (kw * c <= 8: the book's first
// layer), as a GEMM over the window places ----------------------------------------------
// With one channel a maximum's run is 5 floats, and most windows have a gradient (no
// dropout before the first layer) and, over MNIST's blank border, four maxima: listing
// the maxima costs more than it saves. Here every place of every window is a row j,
// taken in the order of the maxima lists (window by window, place by place), and
// dw[k][f] = sum over rows j of image[tap[k] + position[j]] * gain[j's window][f]
// over the filters whose maximum is at j's place, by multiply-adds masked to those filters
// (a masked lane keeps its sum), vectorised over the filters, a block of taps at a time:
// the maxima lists' sums exactly. Only with AVX-512 (16 lanes, mask registers): with 8
// lanes a maximum's run fits one vector, and the lists are the faster form.
constexpr int kTapAccumulators = kAccumulators + 2;  // and J vectors of gain, a broadcast

constexpr int TapsAtOnce(int vectors) { return std::max(1, kTapAccumulators / vectors); }

#ifdef __AVX512F__
// One image's gains (window q's gradient, [q][fpad]) and, for row j = q * places + bit and
// filter vector v, the lanes whose maximum is at place `bit`: masks[j * vectors + v].
struct TapRows {
  const float* gain;
  const __mmask16* masks;
  int64_t masks_per_row;
};

// dw[r][v] (running sums, rows `ld` floats apart) += sum over rows j of
// image[tap[r] + position[j]] * gain[j / places][v], lanes masked, for taps r < taps <=
// TapsAtOnce(J), over `cells` windows of `places` rows.
template <int J>
__attribute__((noinline)) void SumTaps(const float* image, const int64_t* tap, int64_t taps,
                                       const int64_t* position, TapRows rows, int64_t cells,
                                       int64_t places, int64_t fpad, float* dw) {
  constexpr int R = TapsAtOnce(J);
  __m512 acc[R][J];
  const float* at[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    at[r] = image + tap[std::min<int64_t>(r, taps - 1)];
#pragma GCC unroll 8
    for (int v = 0; v < J; ++v)
      acc[r][v] = _mm512_loadu_ps(dw + std::min<int64_t>(r, taps - 1) * fpad + v * kLanes);
  }
  const __mmask16* mask = rows.masks;
  for (int64_t q = 0; q < cells; ++q) {
    __m512 g[J];
#pragma GCC unroll 8
    for (int v = 0; v < J; ++v) g[v] = _mm512_loadu_ps(rows.gain + q * fpad + v * kLanes);
    for (int64_t bit = 0; bit < places; ++bit, mask += rows.masks_per_row) {
      const int64_t p = *position++;
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {  // all R: a short block's last tap is taken again, unkept
        const __m512 pixel = _mm512_set1_ps(at[r][p]);
#pragma GCC unroll 8
        for (int v = 0; v < J; ++v) acc[r][v] = _mm512_mask3_fmadd_ps(pixel, g[v], acc[r][v], mask[v]);
      }
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < J; ++v)
      if (r < taps) _mm512_storeu_ps(dw + r * fpad + v * kLanes, acc[r][v]);
}

using SumTapsFn = void (*)(const float*, const int64_t*, int64_t, const int64_t*, TapRows,
                           int64_t, int64_t, int64_t, float*);
constexpr SumTapsFn kSumTaps[] = {nullptr,    SumTaps<1>, SumTaps<2>, SumTaps<3>,
                                  SumTaps<4>, SumTaps<5>, SumTaps<6>};
constexpr int64_t kMaxTapVectors = 6;

bool ShortRows(const Shape& s) { return s.kw * s.c <= kRowLanes; }

// One image's TapRows: grad and ties transposed to [q][fpad], then each row's masks.
void TapRowsOf(const Shape& s, const int32_t* ties, const float* grad, float* scratch,
               float* gain, __mmask16* masks) {
  const int64_t cells = s.qh * s.qw, places = s.ph * s.pw, vectors = s.fpad / kLanes;
  auto* t = reinterpret_cast<int32_t*>(scratch);
  std::memset(gain, 0, sizeof(float) * cells * s.fpad);
  std::memset(t, 0, sizeof(float) * cells * s.fpad);
  Transpose(grad, cells, s.f, cells, gain, s.fpad);
  Transpose(reinterpret_cast<const float*>(ties), cells, s.f, cells, reinterpret_cast<float*>(t),
            s.fpad);
  for (int64_t q = 0; q < cells; ++q)
    for (int64_t bit = 0; bit < places; ++bit)
      for (int64_t v = 0; v < vectors; ++v)
        *masks++ = _mm512_test_epi32_mask(_mm512_loadu_si512(t + q * s.fpad + v * kLanes),
                                          _mm512_set1_epi32(static_cast<int32_t>(1u << bit)));
}

// The batch's weight gradient by taps: each image's TapRows first (over the images), then
// each block of taps sums over the images in order (over the blocks), so runs repeat bit
// for bit on any number of threads.
void WeightGradientByTaps(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                          const Shape& s, int64_t n, const float* images, const int32_t* ties,
                          const float* grad, std::shared_ptr<Work> work, float* dw) {
  const int64_t in = s.c * s.h * s.w, cells = s.qh * s.qw, places = s.ph * s.pw;
  const int64_t rows = cells * places, vectors = s.fpad / kLanes;
  std::unique_ptr<float[]> gains(new float[std::max<int64_t>(1, n * cells * s.fpad)]);
  std::unique_ptr<__mmask16[]> all_masks(new __mmask16[std::max<int64_t>(1, n * rows * vectors)]);
  float* gain = gains.get();
  __mmask16* masks = all_masks.get();
  work->n = n;
  work->scratch = cells * s.fpad;
  work->item = [=](int64_t i, float* scratch) {
    TapRowsOf(s, ties + i * s.f * cells, grad + i * s.f * cells, scratch,
              gain + i * cells * s.fpad, masks + i * rows * vectors);
  };
  Launch(api, ctx, work);  // also fills work->tap

  std::vector<int64_t> positions(rows);  // row j's place in an image
  for (int64_t q = 0; q < cells; ++q)
    for (int64_t bit = 0; bit < places; ++bit)
      positions[q * places + bit] = (q / s.qw * s.ph + bit / s.pw) * s.w + q % s.qw * s.pw + bit % s.pw;
  std::vector<float> sums(s.K * s.fpad, 0.0f);  // [tap][fpad], running over the images
  float* sum = sums.data();
  const int64_t* position = positions.data();
  const int64_t* tap = work->tap.data();
  // Blocks of taps and of filter vectors, each summing over all images.
  std::vector<std::pair<int64_t, int64_t>> blocks;  // (first tap, first filter vector)
  for (int64_t v0 = 0; v0 < vectors; v0 += kMaxTapVectors) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxTapVectors, vectors - v0));
    for (int64_t k0 = 0; k0 < s.K; k0 += TapsAtOnce(count)) blocks.emplace_back(k0, v0);
  }
  auto sums_work = std::make_shared<Work>();
  sums_work->s = s;
  sums_work->n = static_cast<int64_t>(blocks.size());
  const std::pair<int64_t, int64_t>* block = blocks.data();
  sums_work->item = [=](int64_t b, float*) {
    const auto [k0, v0] = block[b];
    const int count = static_cast<int>(std::min<int64_t>(kMaxTapVectors, vectors - v0));
    const int64_t taps = std::min<int64_t>(TapsAtOnce(count), s.K - k0);
    for (int64_t i = 0; i < n; ++i) {
      // Row j's masks for this block's vectors start at j * vectors + v0.
      const TapRows these{gain + i * cells * s.fpad + v0 * kLanes, masks + i * rows * vectors + v0,
                          vectors};
      kSumTaps[count](images + i * in, tap + k0, taps, position, these, cells, places, s.fpad,
                      sum + k0 * s.fpad + v0 * kLanes);
    }
  };
  xla_call::Launch(api, ctx, sums_work);
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t ch = 0; ch < s.c; ++ch)
      for (int64_t a = 0; a < s.kh; ++a)
        for (int64_t b = 0; b < s.kw; ++b)
          dw[((f * s.c + ch) * s.kh + s.kh - 1 - a) * s.kw + s.kw - 1 - b] =
              sum[((ch * s.kh + a) * s.kw + b) * s.fpad + f];
}
#else
bool ShortRows(const Shape&) { return false; }
void WeightGradientByTaps(const XLA_FFI_Api*, XLA_FFI_ExecutionContext*, const Shape&, int64_t,
                          const float*, const int32_t*, const float*, std::shared_ptr<Work>,
                          float*) {}
#endif

// The batch's weight gradient read off the maxima: dw[f][c][a][b] += grad *
// image[c][y + kh - 1 - a][x + kw - 1 - b] for each maximum (y, x) of filter f's windows (the
// filters' own layout: the kernel's weights are flipped). A group of filters at a time; for
// each, its images' maxima in image order, whatever thread takes the group, so runs repeat
// bit for bit. The images go by a block at a time, each block's channels-last copy read
// from L1 by every filter of the group.
void WeightGradient(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx, const Shape& s,
                    int64_t n, const float* images, const int32_t* ties, const float* grad,
                    float* dw) {
  const Runs r = RunsOf(s);
  const int64_t in = s.c * s.h * s.w, cells = s.qh * s.qw;
  std::unique_ptr<float[]> channels_last(new float[std::max<int64_t>(1, n * r.image)]);
  float* hwc = channels_last.get();
  auto transpose = std::make_shared<Work>();
  transpose->s = s;
  transpose->n = n;
  transpose->item = [=](int64_t i, float*) { ChannelsLast(s, images + i * in, hwc + i * r.image); };
  xla_call::Launch(api, ctx, transpose);

  constexpr int64_t kGroup = 4;                   // filters an item
  const int64_t block = std::max<int64_t>(1, 8192 / r.image);  // images within 32 KB
  const int64_t most = block * cells * s.ph * s.pw, size = s.kh * r.pad;
  const Places place(s, s.w, s.c);
  auto sums = std::make_shared<Work>();
  sums->s = s;
  sums->n = (s.f + kGroup - 1) / kGroup;
  sums->scratch = 3 * (most + 1) + kGroup * size;
  sums->item = [=](int64_t item, float* scratch) {
    auto* base = reinterpret_cast<int64_t*>(scratch);
    auto* gain = reinterpret_cast<float*>(base + most + 1);
    float* sum = gain + most + 1;  // sum[f][a][pad]: lanes past the run are dropped below
    const int64_t first = item * kGroup, last = std::min(s.f, first + kGroup);
    std::memset(sum, 0, sizeof(float) * kGroup * size);
    for (int64_t i0 = 0; i0 < n; i0 += block)
      for (int64_t f = first; f < last; ++f) {
        int64_t count = 0;
        for (int64_t i = i0; i < std::min(n, i0 + block); ++i) {
          const float* g = grad + (i * s.f + f) * cells;
          const int32_t* at = ties + (i * s.f + f) * cells;
          const int64_t image = i * r.image;
          for (int64_t q = 0; q < cells; ++q) {
            // Branch-free for the common windows: one maximum, or a zero gradient.
            uint32_t mask = MaximaWithGradient(g[q], at[q]);
            base[count] = image + place(q, mask);
            gain[count] = g[q];
            count += mask != 0;
            for (mask &= mask - 1; mask; mask &= mask - 1) {
              base[count] = image + place(q, mask);
              gain[count++] = g[q];
            }
          }
        }
        SumAllRuns(r, s.kh, hwc, r.row, base, gain, count, sum + (f - first) * size, r.pad);
      }
    for (int64_t f = first; f < last; ++f) {
      const float* from = sum + (f - first) * size;
      float* to = dw + f * s.K;
      for (int64_t ch = 0; ch < s.c; ++ch)
        for (int64_t a = 0; a < s.kh; ++a)
          for (int64_t b = 0; b < s.kw; ++b)
            to[((ch * s.kh + s.kh - 1 - a) * s.kw + s.kw - 1 - b)] = from[a * r.pad + b * s.c + ch];
    }
  };
  xla_call::Launch(api, ctx, sums);
}

}  // namespace

// args: images (n, c, h, w), weights (c*kh*kw, fpad); result: pooled (n, f, qh, qw).
extern "C" XLA_FFI_Error* ConvnetConvPool(XLA_FFI_CallFrame* frame) {
  return Forward(frame, false);
}

// As ConvnetConvPool, and a second result: ties (n, f, qh, qw) int32, the places of each
// window holding its maximum (bit a * pw + b).
extern "C" XLA_FFI_Error* ConvnetConvPoolTrain(XLA_FFI_CallFrame* frame) {
  return Forward(frame, true);
}

// args: images (n, c, h, w), ties (n, f, qh, qw) int32, grad (n, f, qh, qw) (of pooled);
// result: dw (f, c, kh, kw), the gradient of the filters, in their own layout (unflipped).
extern "C" XLA_FFI_Error* ConvnetConvPoolGradW(XLA_FFI_CallFrame* frame) {
  const XLA_FFI_Api* api = frame->api;
  if (Answered(frame)) return nullptr;
  if (frame->args.size != 3 || frame->rets.size != 1)
    return Fail(api, "conv_pool_grad_w: expected 3 arguments and 1 result");
  const XLA_FFI_Buffer* images = Float32Buffer(frame->args.args[0], 4);
  const XLA_FFI_Buffer* where = Int32Buffer(frame->args.args[1], 4);
  const XLA_FFI_Buffer* grad = Float32Buffer(frame->args.args[2], 4);
  const XLA_FFI_Buffer* dw = Float32Buffer(frame->rets.rets[0], 4);
  if (images == nullptr || where == nullptr || grad == nullptr || dw == nullptr)
    return Fail(api, "conv_pool_grad_w: expected float32 images, int32 where, float32 grad");
  int64_t kh, kw, ph, pw;
  if (!Window(frame, &kh, &kw, &ph, &pw))
    return Fail(api, "conv_pool_grad_w: expected int64 attributes kh, kw, ph, pw");
  auto work = std::make_shared<Work>();
  const int64_t fpad = (grad->dims[1] + kLanes - 1) / kLanes * kLanes;  // unused here
  const int64_t filters[4] = {grad->dims[1], images->dims[1], kh, kw};
  if (!Derive(images->dims, grad->dims, kh, kw, ph, pw, fpad, &work->s) ||
      std::memcmp(dw->dims, filters, sizeof(filters)) ||
      std::memcmp(where->dims, grad->dims, 4 * sizeof(int64_t)))
    return Fail(api, "conv_pool_grad_w: inconsistent shapes");
  const Shape& s = work->s;
  const float* x = static_cast<const float*>(images->data);
  const int32_t* at = static_cast<const int32_t*>(where->data);
  const float* g = static_cast<const float*>(grad->data);
  float* total = static_cast<float*>(dw->data);
  if (ShortRows(s))
    WeightGradientByTaps(api, frame->ctx, s, images->dims[0], x, at, g, work, total);
  else
    WeightGradient(api, frame->ctx, s, images->dims[0], x, at, g, total);
  return nullptr;
}

// args: filters (f, c, kh, kw) in their own layout (unflipped), ties and grad (n, f, qh, qw);
// result: dx (n, c, h, w), the gradient of the images.
extern "C" XLA_FFI_Error* ConvnetConvPoolGradX(XLA_FFI_CallFrame* frame) {
  const XLA_FFI_Api* api = frame->api;
  if (Answered(frame)) return nullptr;
  if (frame->args.size != 3 || frame->rets.size != 1)
    return Fail(api, "conv_pool_grad_x: expected 3 arguments and 1 result");
  const XLA_FFI_Buffer* weights = Float32Buffer(frame->args.args[0], 4);
  const XLA_FFI_Buffer* ties = Int32Buffer(frame->args.args[1], 4);
  const XLA_FFI_Buffer* grad = Float32Buffer(frame->args.args[2], 4);
  const XLA_FFI_Buffer* dx = Float32Buffer(frame->rets.rets[0], 4);
  if (weights == nullptr || ties == nullptr || grad == nullptr || dx == nullptr)
    return Fail(api, "conv_pool_grad_x: expected float32 weights, int32 ties, float32 grad");
  int64_t kh, kw, ph, pw;
  if (!Window(frame, &kh, &kw, &ph, &pw))
    return Fail(api, "conv_pool_grad_x: expected int64 attributes kh, kw, ph, pw");
  auto work = std::make_shared<Work>();
  const int64_t fpad = (grad->dims[1] + kLanes - 1) / kLanes * kLanes;  // unused here
  const int64_t filters[4] = {grad->dims[1], dx->dims[1], kh, kw};
  if (!Derive(dx->dims, grad->dims, kh, kw, ph, pw, fpad, &work->s) ||
      std::memcmp(weights->dims, filters, sizeof(filters)) ||
      std::memcmp(ties->dims, grad->dims, 4 * sizeof(int64_t)))
    return Fail(api, "conv_pool_grad_x: inconsistent shapes");
  const Shape& s = work->s;
  const float* w = static_cast<const float*>(weights->data);
  const int32_t* at = static_cast<const int32_t*>(ties->data);
  const float* g = static_cast<const float*>(grad->data);
  float* out = static_cast<float*>(dx->data);
  const int64_t in = s.c * s.h * s.w, cells = s.f * s.qh * s.qw;
  const Runs r = RunsOf(s);
  const std::vector<float> wt = FilterMajorWeights(s, r, w);
  const float* filter_major = wt.data();
  work->n = dx->dims[0];
  work->scratch = ImageScratch(s, r);
  const auto places = std::make_shared<Places>(s, s.ow, 1);  // conv positions
  work->item = [=](int64_t i, float* scratch) {
    ImageGradient(s, r, *places, filter_major, at + i * cells, g + i * cells, scratch,
                  out + i * in);
  };
  Launch(api, frame->ctx, work);
  return nullptr;
}

// The lanes filters are padded to (the weights' second dimension is a multiple of it).
extern "C" int64_t ConvnetLanes() { return kLanes; }
