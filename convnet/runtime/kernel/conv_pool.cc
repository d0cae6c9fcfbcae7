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

// The sparse gradients' vectors hold one kernel row, or one pixel's channels: 8 lanes even
// with AVX-512, which the book's 5-wide kernels and 20 channels fill twice as well as 16.
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

// One image's convolution into conv[P][fpad] (all filter groups).
void ConvolveImage(const Shape& s, const int64_t* tap, const float* x, const float* w,
                   float* conv) {
  for (int64_t g = 0; g < s.fpad; g += kMaxVectors * kLanes) {
    const int64_t vectors = std::min<int64_t>(kMaxVectors, (s.fpad - g) / kLanes);
    kConvolve[vectors](x, s.w, s.oh, s.ow, tap, s.K, w + g, conv + g, s.fpad);
  }
}

// Max-pooling of conv[P][fpad] into out (f, qh, qw), vectorised over the filters of each
// position; with `ties`, also which places of each window hold its maximum (bit a*pw + b):
// the backward pass sends the gradient to each of them, as Theano's pooling (the book's)
// and PyTensor's max do, so flat regions (ReLU zeros, MNIST's blank border) train alike.
void Pool(const Shape& s, float* conv, float* out, int32_t* ties) {
  typedef int32_t ivec __attribute__((vector_size(4 * kLanes)));
  const int64_t vectors = s.fpad / kLanes;
  float* best = conv + s.P * s.fpad;  // a spare row after the products
  int32_t* bits = reinterpret_cast<int32_t*>(best + s.fpad);
  for (int64_t i = 0; i < s.qh; ++i)
    for (int64_t j = 0; j < s.qw; ++j) {
      const int64_t first = i * s.ph * s.ow + j * s.pw;
      for (int64_t v = 0; v < vectors; ++v) {
        vec m;
        std::memcpy(&m, conv + first * s.fpad + v * kLanes, sizeof(vec));
        for (int64_t a = 0; a < s.ph; ++a)
          for (int64_t b = 0; b < s.pw; ++b) {
            vec e;
            std::memcpy(&e, conv + (first + a * s.ow + b) * s.fpad + v * kLanes, sizeof(vec));
            m = m > e ? m : e;
          }
        std::memcpy(best + v * kLanes, &m, sizeof(vec));
        if (ties == nullptr) continue;
        ivec mask = ivec{};
        for (int64_t a = 0; a < s.ph; ++a)
          for (int64_t b = 0; b < s.pw; ++b) {
            vec e;
            std::memcpy(&e, conv + (first + a * s.ow + b) * s.fpad + v * kLanes, sizeof(vec));
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

// The position of place `bit` of window cell q in an image of `stride` floats a row (in
// the convolution itself, stride s.ow, by default), as corner[q] + within[bit]: tables made
// once, so that the loops over the maxima divide nothing (four divisions a maximum were a
// tenth of the training step).
struct Places {
  std::vector<int64_t> corner, within;

  explicit Places(const Shape& s) : Places(s, s.ow) {}
  Places(const Shape& s, int64_t stride) : corner(s.qh * s.qw), within(s.ph * s.pw) {
    for (int64_t q = 0; q < s.qh * s.qw; ++q)
      corner[q] = q / s.qw * s.ph * stride + q % s.qw * s.pw;
    for (int64_t bit = 0; bit < s.ph * s.pw; ++bit)
      within[bit] = bit / s.pw * stride + bit % s.pw;
  }
  int64_t operator()(int64_t q, int bit) const { return corner[q] + within[bit]; }
};

// The pooled gradient spread back onto the convolution: dconv[P][fpad], zero except at
// each window's maxima.
void Unpool(const Shape& s, const int32_t* ties, const float* grad, float* dconv) {
  std::memset(dconv, 0, sizeof(float) * s.P * s.fpad);
  const int64_t cells = s.qh * s.qw;
  const Places place(s);
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      uint32_t mask = static_cast<uint32_t>(ties[f * cells + q]);
      const float g = grad[f * cells + q];
      while (mask) {
        const int bit = __builtin_ctz(mask);
        mask &= mask - 1;
        dconv[place(q, bit) * s.fpad + f] += g;
      }
    }
}

// dw[k][f] += sum_p image[tap[k] + pos[p]] * dconv[p][f] for R taps and J vectors of
// filters: the weight gradient as a GEMM that reads the image in place (no columns).
template <int R, int J>
inline void BlockW(const float* image, const int64_t* tap, const int64_t* pos, int64_t P,
                   const float* dconv, float* dw, int64_t ld) {
  vec acc[R][J];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) acc[r][j] = vec{};
  const float* taps[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) taps[r] = image + tap[r];
  for (int64_t p = 0; p < P; ++p) {
    vec dv[J];
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) std::memcpy(&dv[j], dconv + p * ld + j * kLanes, sizeof(vec));
    const int64_t at = pos[p];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const float c = taps[r][at];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) acc[r][j] += c * dv[j];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) {
      vec old;
      std::memcpy(&old, dw + r * ld + j * kLanes, sizeof(vec));
      old += acc[r][j];
      std::memcpy(dw + r * ld + j * kLanes, &old, sizeof(vec));
    }
}

template <int J>
__attribute__((noinline)) void WeightGradient(const float* image, const int64_t* tap, int64_t K,
                                              const int64_t* pos, int64_t P, const float* dconv,
                                              float* dw, int64_t ld) {
  constexpr int R = kAccumulators / J;
  int64_t k = 0;
  for (; k + R <= K; k += R) BlockW<R, J>(image, tap + k, pos, P, dconv, dw + k * ld, ld);
  for (; k < K; ++k) BlockW<1, J>(image, tap + k, pos, P, dconv, dw + k * ld, ld);
}

using WeightGradientFn = void (*)(const float*, const int64_t*, int64_t, const int64_t*,
                                  int64_t, const float*, float*, int64_t);
constexpr WeightGradientFn kWeightGradient[] = {
    nullptr,           WeightGradient<1>, WeightGradient<2>, WeightGradient<3>,
    WeightGradient<4>, WeightGradient<5>, WeightGradient<6>};

void AddWeightGradient(const Shape& s, const int64_t* tap, const int64_t* pos, const float* x,
                       const float* dconv, float* dw) {
  for (int64_t g = 0; g < s.fpad; g += kMaxVectors * kLanes) {
    const int64_t vectors = std::min<int64_t>(kMaxVectors, (s.fpad - g) / kLanes);
    kWeightGradient[vectors](x, tap, s.K, pos, s.P, dconv + g, dw + g, s.fpad);
  }
}

// The weight gradient straight from the pooled gradient, for layers whose kernel rows
// fit a vector (kw <= kRowLanes, as the book's 5 x 5 kernels do): dw[(c, a, b)][f] +=
// grad[f][q] * image[c][y + a][x + b] for each window q and each place (y, x) of it holding
// its maximum. The dense GEMM over every conv position spends 3 of 4 of its products on
// places that are not a maximum (dconv is zero there), and with one channel most of its
// lanes on padding; here each maximum costs one vector FMA per kernel row (c, a), and
// windows whose gradient is zero (ReLU's) cost nothing. (WeightGradientSparse, below the
// thread pool's code, puts these pieces together.)

// For R kernel rows at once (a template parameter, so that the R accumulators live in
// registers): the rows start at padded + offset[r], and the maxima of one filter are
// (gain[i], place[i]). Each row's sum is stored as a whole vector, rows[r][kRowLanes].
constexpr int kMaxRows = 8;

template <int R>
__attribute__((noinline)) void SparseRows(const float* padded, const int32_t* offset,
                                          const float* gain, const int32_t* place,
                                          int64_t count, float* rows) {
  row_vec acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = row_vec{};
  for (int64_t i = 0; i < count; ++i) {
    const float* corner = padded + place[i];
    const float g = gain[i];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      row_vec pixels;
      std::memcpy(&pixels, corner + offset[r], sizeof(row_vec));
      acc[r] += g * pixels;
    }
  }
  std::memcpy(rows, acc, sizeof(acc));
}

using SparseRowsFn = void (*)(const float*, const int32_t*, const float*, const int32_t*,
                              int64_t, float*);
constexpr SparseRowsFn kSparseRows[] = {nullptr,       SparseRows<1>, SparseRows<2>,
                                        SparseRows<3>, SparseRows<4>, SparseRows<5>,
                                        SparseRows<6>, SparseRows<7>, SparseRows<8>};

// The image with kRowLanes zeros after each row, so that a row's vector never reads past
// its channel.
int64_t PaddedImageSize(const Shape& s) { return s.c * s.h * (s.w + kRowLanes); }

// Whether n images' weight gradient can be read off the maxima (places are int32 offsets
// into all n padded images).
bool RowsFitVector(const Shape& s, int64_t n) {
  return s.kw <= kRowLanes && n * PaddedImageSize(s) < (int64_t{1} << 31);
}

void PadRows(const Shape& s, const float* image, float* padded) {
  const int64_t stride = s.w + kRowLanes;
  for (int64_t y = 0; y < s.c * s.h; ++y) {
    std::memcpy(padded + y * stride, image + y * s.w, sizeof(float) * s.w);
    std::memset(padded + y * stride + s.w, 0, sizeof(float) * kRowLanes);
  }
}

// The pooled gradient spread onto the convolution, transposed: dconv_t[f][ppad].
void UnpoolTransposed(const Shape& s, int64_t ppad, const int32_t* ties, const float* grad,
                      float* dconv_t) {
  std::memset(dconv_t, 0, sizeof(float) * s.f * ppad);
  const int64_t cells = s.qh * s.qw;
  const Places place(s);
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      uint32_t mask = static_cast<uint32_t>(ties[f * cells + q]);
      const float g = grad[f * cells + q];
      while (mask) {
        const int bit = __builtin_ctz(mask);
        mask &= mask - 1;
        dconv_t[f * ppad + place(q, bit)] += g;
      }
    }
}

// columns[k][p] = sum_f w[k][f] * dconv_t[f][p] for R rows k and J vectors of positions:
// the image gradient's columns (the transpose of im2col), one GEMM.
template <int R, int J>
inline void BlockX(const float* w, int64_t ldw, const float* dconv_t, int64_t ldp, int64_t F,
                   float* columns) {
  vec acc[R][J];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) acc[r][j] = vec{};
  for (int64_t f = 0; f < F; ++f) {
    vec dv[J];
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) std::memcpy(&dv[j], dconv_t + f * ldp + j * kLanes, sizeof(vec));
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const float c = w[r * ldw + f];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) acc[r][j] += c * dv[j];
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < J; ++j) std::memcpy(columns + r * ldp + j * kLanes, &acc[r][j], sizeof(vec));
}

template <int J>
__attribute__((noinline)) void ImageColumns(const float* w, int64_t ldw, int64_t K,
                                            const float* dconv_t, int64_t ldp, int64_t F,
                                            float* columns) {
  constexpr int R = kAccumulators / J;
  int64_t k = 0;
  for (; k + R <= K; k += R) BlockX<R, J>(w + k * ldw, ldw, dconv_t, ldp, F, columns + k * ldp);
  for (; k < K; ++k) BlockX<1, J>(w + k * ldw, ldw, dconv_t, ldp, F, columns + k * ldp);
}

using ImageColumnsFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t,
                                float*);
constexpr ImageColumnsFn kImageColumns[] = {nullptr,         ImageColumns<1>, ImageColumns<2>,
                                            ImageColumns<3>, ImageColumns<4>, ImageColumns<5>,
                                            ImageColumns<6>};

// dx = col2im(columns): each tap's row of columns added onto the image, a run of ow
// neighbouring pixels at a time.
void AddImageGradient(const Shape& s, int64_t ppad, const float* w, const int32_t* ties,
                      const float* grad, float* scratch, float* dx) {
  float* dconv_t = scratch;
  float* columns = scratch + s.f * ppad;
  UnpoolTransposed(s, ppad, ties, grad, dconv_t);
  for (int64_t g = 0; g < ppad; g += kMaxVectors * kLanes) {
    const int64_t vectors = std::min<int64_t>(kMaxVectors, (ppad - g) / kLanes);
    kImageColumns[vectors](w, s.fpad, s.K, dconv_t + g, ppad, s.f, columns + g);
  }
  std::memset(dx, 0, sizeof(float) * s.c * s.h * s.w);
  int64_t k = 0;
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t a = 0; a < s.kh; ++a)
      for (int64_t b = 0; b < s.kw; ++b, ++k) {
        const float* from = columns + k * ppad;
        float* to = dx + (ch * s.h + a) * s.w + b;
        for (int64_t y = 0; y < s.oh; ++y)
          for (int64_t x = 0; x < s.ow; ++x) to[y * s.w + x] += from[y * s.ow + x];
      }
}

// The images' gradient straight from the pooled gradient, vectorised over the channels:
// dx[c][y + a][x + b] += grad * w[(c, a, b)][f] for each filter f whose window maximum is
// at conv position (y, x), and each tap (a, b). A position's maxima are summed in
// registers, a group of taps at a time, and added onto the image cells once per tap; only
// maxima contribute, where the GEMM into columns spends 3 of 4 of its products on zeros
// and col2im adds every column back onto the image. For layers with at least half a
// vector of channels (the book's second layer: 20).
constexpr int64_t kMaxChannelVectors = 6;

int64_t ChannelVectors(const Shape& s) { return (s.c + kRowLanes - 1) / kRowLanes; }

bool ChannelsFitVectors(const Shape& s) {
  return 2 * s.c >= kRowLanes && ChannelVectors(s) <= kMaxChannelVectors &&
         s.f * s.qh * s.qw * s.ph * s.pw < (int64_t{1} << 31);
}

// Taps summed at once: as many channel vectors as there are accumulator registers.
int64_t TapGroup(const Shape& s) { return kAccumulators / ChannelVectors(s); }

int64_t PaddedTaps(const Shape& s) {
  const int64_t group = TapGroup(s);
  return (s.kh * s.kw + group - 1) / group * group;
}

// The weights as wt[f][t][cpad], taps t = (a, b) padded with zeros to whole groups: one
// filter's taps side by side, the layout the loop below reads. Made once per call.
std::vector<float> FilterMajorWeights(const Shape& s, const float* w) {
  const int64_t cpad = ChannelVectors(s) * kRowLanes, taps = s.kh * s.kw, tpad = PaddedTaps(s);
  std::vector<float> wt(s.f * tpad * cpad, 0.0f);
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t f = 0; f < s.f; ++f)
        wt[(f * tpad + t) * cpad + ch] = w[(ch * taps + t) * s.fpad + f];
  return wt;
}

// Where tap t = (a, b) of conv position (0, 0) lands in cells[y][x][cpad].
std::vector<int64_t> TapCells(const Shape& s) {
  std::vector<int64_t> cell(s.kh * s.kw);
  for (int64_t a = 0; a < s.kh; ++a)
    for (int64_t b = 0; b < s.kw; ++b)
      cell[a * s.kw + b] = (a * s.w + b) * ChannelVectors(s) * kRowLanes;
  return cell;
}

// Its scratch: the gradient as cells[y][x][cpad], and each conv position's maxima.
int64_t SparseImageScratch(const Shape& s) {
  const int64_t entries = s.f * s.qh * s.qw * s.ph * s.pw;
  return s.h * s.w * ChannelVectors(s) * kRowLanes + 2 * s.P + 1 + 2 * entries;
}

template <int J>
__attribute__((noinline)) void SpreadImageGradient(const Shape& s, const float* wt,
                                                   const int64_t* tap_cell,
                                                   const int32_t* start, const int32_t* filter,
                                                   const float* gain, float* cells) {
  constexpr int64_t cpad = J * kRowLanes;
  constexpr int T = kAccumulators / J;
  const int64_t taps = s.kh * s.kw, tpad = PaddedTaps(s);
  std::memset(cells, 0, sizeof(float) * s.h * s.w * cpad);
  for (int64_t y = 0; y < s.oh; ++y)
    for (int64_t x = 0; x < s.ow; ++x) {
      const int64_t p = y * s.ow + x;
      if (start[p] == start[p + 1]) continue;
      float* corner = cells + (y * s.w + x) * cpad;
      for (int64_t t0 = 0; t0 < taps; t0 += T) {
        row_vec acc[T][J];
#pragma GCC unroll 24
        for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
          for (int j = 0; j < J; ++j) acc[t][j] = row_vec{};
        for (int32_t e = start[p]; e < start[p + 1]; ++e) {
          const float* wf = wt + (filter[e] * tpad + t0) * cpad;
          const float g = gain[e];
#pragma GCC unroll 24
          for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
            for (int j = 0; j < J; ++j) {
              row_vec wv;
              std::memcpy(&wv, wf + t * cpad + j * kRowLanes, sizeof(row_vec));
              acc[t][j] += g * wv;
            }
        }
        for (int t = 0; t < T && t0 + t < taps; ++t) {
          float* cell = corner + tap_cell[t0 + t];
#pragma GCC unroll 8
          for (int j = 0; j < J; ++j) {
            row_vec old;
            std::memcpy(&old, cell + j * kRowLanes, sizeof(row_vec));
            old += acc[t][j];
            std::memcpy(cell + j * kRowLanes, &old, sizeof(row_vec));
          }
        }
      }
    }
}

using SpreadImageGradientFn = void (*)(const Shape&, const float*, const int64_t*,
                                       const int32_t*, const int32_t*, const float*, float*);
constexpr SpreadImageGradientFn kSpreadImageGradient[] = {
    nullptr, SpreadImageGradient<1>, SpreadImageGradient<2>, SpreadImageGradient<3>,
    SpreadImageGradient<4>, SpreadImageGradient<5>, SpreadImageGradient<6>};

void ImageGradientSparse(const Shape& s, const float* wt, const int64_t* tap_cell,
                         const int32_t* ties, const float* grad, float* scratch, float* dx) {
  const int64_t vectors = ChannelVectors(s), cpad = vectors * kRowLanes, cells = s.qh * s.qw;
  const Places place(s);
  float* gathered = scratch;
  auto* start = reinterpret_cast<int32_t*>(gathered + s.h * s.w * cpad);
  int32_t* next = start + s.P + 1;
  int32_t* filter = next + s.P;
  auto* gain = reinterpret_cast<float*>(filter + s.f * cells * s.ph * s.pw);
  // Each conv position's maxima (filter, gradient), in filter order: counted, then placed.
  std::memset(start, 0, sizeof(int32_t) * (s.P + 1));
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      if (grad[f * cells + q] == 0.0f) continue;
      for (uint32_t mask = ties[f * cells + q]; mask; mask &= mask - 1)
        ++start[place(q, __builtin_ctz(mask)) + 1];
    }
  for (int64_t p = 0; p < s.P; ++p) start[p + 1] += start[p];
  std::memcpy(next, start, sizeof(int32_t) * s.P);
  for (int64_t f = 0; f < s.f; ++f)
    for (int64_t q = 0; q < cells; ++q) {
      const float g = grad[f * cells + q];
      if (g == 0.0f) continue;
      for (uint32_t mask = ties[f * cells + q]; mask; mask &= mask - 1) {
        const int32_t e = next[place(q, __builtin_ctz(mask))]++;
        filter[e] = static_cast<int32_t>(f);
        gain[e] = g;
      }
    }
  kSpreadImageGradient[vectors](s, wt, tap_cell, start, filter, gain, gathered);
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t yx = 0; yx < s.h * s.w; ++yx) dx[ch * s.h * s.w + yx] = gathered[yx * cpad + ch];
}

// An image at a time (`item(i, scratch)` does image i), with the offsets every image's
// loops share.
struct Work : xla_call::Tasks {
  Shape s;
  std::vector<int64_t> tap;  // offset of each kernel tap (c, a, b) in an image
  std::vector<int64_t> pos;  // offset of each output position (y, x) in an image
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
  for (int64_t y = 0; y < s.oh; ++y)
    for (int64_t x = 0; x < s.ow; ++x) work->pos.push_back(y * s.w + x);
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
  work->scratch = (s.P + 2) * s.fpad;  // products, the best row and its positions
  Work* self = work.get();
  work->item = [=](int64_t i, float* conv) {
    ConvolveImage(s, self->tap.data(), x + i * in, w, conv);
    Pool(s, conv, out + i * cells, at == nullptr ? nullptr : at + i * cells);
  };
  Launch(api, frame->ctx, work);
  return nullptr;
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

// The batch's weight gradient read off the maxima, a filter at a time: each filter's sums
// run over the images in order, whatever thread takes the filter, so runs repeat bit for
// bit; and no per-image sums are stored and added up.
void WeightGradientSparse(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                          const Shape& s, int64_t n, const float* images, const int32_t* ties,
                          const float* grad, float* dw) {
  const int64_t in = s.c * s.h * s.w, padded_in = PaddedImageSize(s);
  const int64_t rows = s.c * s.kh, cells = s.qh * s.qw, most = n * cells * s.ph * s.pw;
  std::unique_ptr<float[]> padded_images(new float[std::max<int64_t>(1, n * padded_in)]);
  float* padded = padded_images.get();
  auto pad = std::make_shared<Work>();
  pad->s = s;
  pad->n = n;
  pad->item = [=](int64_t i, float*) { PadRows(s, images + i * in, padded + i * padded_in); };
  Launch(api, ctx, pad);

  std::vector<int32_t> offsets(rows);  // each kernel row (c, a) in a padded image
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t a = 0; a < s.kh; ++a) offsets[ch * s.kh + a] = (ch * s.h + a) * (s.w + kRowLanes);
  const int32_t* offset = offsets.data();
  const Places in_padded(s, s.w + kRowLanes);
  std::memset(dw, 0, sizeof(float) * s.K * s.fpad);
  auto sums = std::make_shared<Work>();
  sums->s = s;
  sums->n = s.f;
  sums->scratch = rows * kRowLanes + 2 * most;
  sums->item = [=](int64_t f, float* scratch) {
    float* sum = scratch;  // sum[(c, a)][kRowLanes]: lanes past kw are dropped below
    float* gain = sum + rows * kRowLanes;
    auto* place = reinterpret_cast<int32_t*>(gain + most);
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float* g = grad + (i * s.f + f) * cells;
      const int32_t* at = ties + (i * s.f + f) * cells;
      for (int64_t q = 0; q < cells; ++q) {
        if (g[q] == 0.0f) continue;
        for (uint32_t mask = at[q]; mask; mask &= mask - 1) {
          gain[count] = g[q];
          place[count++] = static_cast<int32_t>(i * padded_in + in_padded(q, __builtin_ctz(mask)));
        }
      }
    }
    for (int64_t r = 0; r < rows; r += kMaxRows)
      kSparseRows[std::min<int64_t>(kMaxRows, rows - r)](padded, offset + r, gain, place, count,
                                                          sum + r * kRowLanes);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t b = 0; b < s.kw; ++b) dw[(r * s.kw + b) * s.fpad + f] = sum[r * kRowLanes + b];
  };
  Launch(api, ctx, sums);
}

// args: images (n, c, h, w), ties (n, f, qh, qw) int32, grad (n, f, qh, qw) (of pooled);
// result: dw (c*kh*kw, fpad), the gradient of the weights in ConvnetConvPool's layout.
extern "C" XLA_FFI_Error* ConvnetConvPoolGradW(XLA_FFI_CallFrame* frame) {
  const XLA_FFI_Api* api = frame->api;
  if (Answered(frame)) return nullptr;
  if (frame->args.size != 3 || frame->rets.size != 1)
    return Fail(api, "conv_pool_grad_w: expected 3 arguments and 1 result");
  const XLA_FFI_Buffer* images = Float32Buffer(frame->args.args[0], 4);
  const XLA_FFI_Buffer* where = Int32Buffer(frame->args.args[1], 4);
  const XLA_FFI_Buffer* grad = Float32Buffer(frame->args.args[2], 4);
  const XLA_FFI_Buffer* dw = Float32Buffer(frame->rets.rets[0], 2);
  if (images == nullptr || where == nullptr || grad == nullptr || dw == nullptr)
    return Fail(api, "conv_pool_grad_w: expected float32 images, int32 where, float32 grad");
  int64_t kh, kw, ph, pw;
  if (!Window(frame, &kh, &kw, &ph, &pw))
    return Fail(api, "conv_pool_grad_w: expected int64 attributes kh, kw, ph, pw");
  auto work = std::make_shared<Work>();
  if (!Derive(images->dims, grad->dims, kh, kw, ph, pw, dw->dims[1], &work->s) ||
      dw->dims[0] != work->s.K || std::memcmp(where->dims, grad->dims, 4 * sizeof(int64_t)))
    return Fail(api, "conv_pool_grad_w: inconsistent shapes");
  const Shape& s = work->s;
  const float* x = static_cast<const float*>(images->data);
  const int32_t* at = static_cast<const int32_t*>(where->data);
  const float* g = static_cast<const float*>(grad->data);
  float* total = static_cast<float*>(dw->data);
  const int64_t in = s.c * s.h * s.w, cells = s.f * s.qh * s.qw;
  work->n = images->dims[0];
  if (RowsFitVector(s, work->n)) {
    WeightGradientSparse(api, frame->ctx, s, work->n, x, at, g, total);
    return nullptr;
  }
  // Each image's gradient on its own, then summed in image order: the same float sums
  // whatever the number of threads, so runs (and resumed runs) repeat bit for bit.
  const int64_t size = s.K * s.fpad;
  work->scratch = s.P * s.fpad;
  std::vector<float> each(std::max<int64_t>(1, work->n) * size, 0.0f);
  float* own = each.data();
  Work* self = work.get();
  work->item = [=](int64_t i, float* scratch) {
    Unpool(s, at + i * cells, g + i * cells, scratch);
    AddWeightGradient(s, self->tap.data(), self->pos.data(), x + i * in, scratch,
                      own + i * size);
  };
  Launch(api, frame->ctx, work);
  for (int64_t i = 1; i < work->n; ++i)
    for (int64_t k = 0; k < size; ++k) own[k] += own[i * size + k];
  std::memcpy(total, own, sizeof(float) * size);
  return nullptr;
}

// args: weights (c*kh*kw, fpad) as for ConvnetConvPool, ties and grad (n, f, qh, qw);
// result: dx (n, c, h, w), the gradient of the images.
extern "C" XLA_FFI_Error* ConvnetConvPoolGradX(XLA_FFI_CallFrame* frame) {
  const XLA_FFI_Api* api = frame->api;
  if (Answered(frame)) return nullptr;
  if (frame->args.size != 3 || frame->rets.size != 1)
    return Fail(api, "conv_pool_grad_x: expected 3 arguments and 1 result");
  const XLA_FFI_Buffer* weights = Float32Buffer(frame->args.args[0], 2);
  const XLA_FFI_Buffer* ties = Int32Buffer(frame->args.args[1], 4);
  const XLA_FFI_Buffer* grad = Float32Buffer(frame->args.args[2], 4);
  const XLA_FFI_Buffer* dx = Float32Buffer(frame->rets.rets[0], 4);
  if (weights == nullptr || ties == nullptr || grad == nullptr || dx == nullptr)
    return Fail(api, "conv_pool_grad_x: expected float32 weights, int32 ties, float32 grad");
  int64_t kh, kw, ph, pw;
  if (!Window(frame, &kh, &kw, &ph, &pw))
    return Fail(api, "conv_pool_grad_x: expected int64 attributes kh, kw, ph, pw");
  auto work = std::make_shared<Work>();
  if (!Derive(dx->dims, grad->dims, kh, kw, ph, pw, weights->dims[1], &work->s) ||
      weights->dims[0] != work->s.K || std::memcmp(ties->dims, grad->dims, 4 * sizeof(int64_t)))
    return Fail(api, "conv_pool_grad_x: inconsistent shapes");
  const Shape& s = work->s;
  const float* w = static_cast<const float*>(weights->data);
  const int32_t* at = static_cast<const int32_t*>(ties->data);
  const float* g = static_cast<const float*>(grad->data);
  float* out = static_cast<float*>(dx->data);
  const int64_t in = s.c * s.h * s.w, cells = s.f * s.qh * s.qw;
  const int64_t ppad = (s.P + kLanes - 1) / kLanes * kLanes;
  work->n = dx->dims[0];
  if (ChannelsFitVectors(s)) {
    const std::vector<float> wt = FilterMajorWeights(s, w);
    const std::vector<int64_t> taps = TapCells(s);
    const float* filter_major = wt.data();
    const int64_t* tap_cell = taps.data();
    work->scratch = SparseImageScratch(s);
    work->item = [=](int64_t i, float* scratch) {
      ImageGradientSparse(s, filter_major, tap_cell, at + i * cells, g + i * cells, scratch,
                          out + i * in);
    };
    Launch(api, frame->ctx, work);
    return nullptr;
  }
  work->scratch = (s.f + s.K) * ppad;
  work->item = [=](int64_t i, float* scratch) {
    AddImageGradient(s, ppad, w, at + i * cells, g + i * cells, scratch, out + i * in);
  };
  Launch(api, frame->ctx, work);
  return nullptr;
}

// The lanes filters are padded to (the weights' second dimension is a multiple of it).
extern "C" int64_t ConvnetLanes() { return kLanes; }
