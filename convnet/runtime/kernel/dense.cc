// convnet's dense-layer kernels for CPUs, called by XLA as FFI custom calls:
//
//   ConvnetDenseForward  y = x . w
//   ConvnetDenseSgd      dx = g . w^T  and  w' = w - eta * (x^T . g + decay * w)
//                        (and, asked for, sum(w * w) before the step: the L2 term's)
//
// the inputs' gradient of a dense layer's product x . w (g: the gradient of the product)
// and an SGD step of its weights with the L2 term's gradient decay * w, in one pass; with
// a velocity, SGD with momentum (classical or Nesterov's), the velocity stepped in place.
//
// Why: at the book's mini-batch of 10 each pass over a weight matrix does 10 multiply-adds
// per weight, so it is as fast as the weights (4 MB for 1000 x 1000, more than this core's
// L2) stream through the core. XLA makes four such passes for the backward and the step
// (dx reads w; dw is written; the step reads w and dw and writes w); this kernel reads
// each row of w once, makes that row's gradient in registers, uses it at once and writes
// the row back in place: one pass, and the weights' gradient is never stored.
//
// The forward product streams w once too, 32 rows at a time, into sums held in registers
// for 32 columns of every row of x, asking for the next 32 rows' same columns as it goes
// (~10% faster than the core's own prefetching); XLA's GEMM packs w first, a second pass.
//
// The fused pass reads g from a copy whose rows start on cache lines: rows of n floats
// start in mid line when n is not a multiple of 16, and loads across two lines cost ~30%.
//
// Each dx[i, kk] and y[i, j] is one sum in a fixed order and each weight's gradient one sum
// over i in order, whatever thread takes the row: the results repeat bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "xla_call.h"

namespace {

// The loops' bodies are lambdas; inlined, their set-up is not redone for every block.
#define INLINE __attribute__((always_inline))

#ifdef __AVX512F__
constexpr int kLanes = 16;
typedef __m512 V;
typedef __mmask16 Mask;
inline Mask TailMask(int64_t count) { return static_cast<Mask>((1u << count) - 1); }
inline V Zero() { return _mm512_setzero_ps(); }
inline V Load(const float* p) { return _mm512_loadu_ps(p); }
inline V LoadMasked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline void StoreMasked(float* p, V v, Mask m) { _mm512_mask_storeu_ps(p, m, v); }
inline V Broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V Fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline float Sum(V v) { return _mm512_reduce_add_ps(v); }
inline V _add(V a, V b) { return _mm512_add_ps(a, b); }
inline V _sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V _mul(V a, V b) { return _mm512_mul_ps(a, b); }
#else
constexpr int kLanes = 8;
typedef __m256 V;
typedef __m256i Mask;
inline Mask TailMask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V Zero() { return _mm256_setzero_ps(); }
inline V Load(const float* p) { return _mm256_loadu_ps(p); }
inline V LoadMasked(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline void StoreMasked(float* p, V v, Mask m) { _mm256_maskstore_ps(p, m, v); }
inline V Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V Fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
inline V _add(V a, V b) { return _mm256_add_ps(a, b); }
inline V _sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V _mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline float Sum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// A product rounded to float before it is added: left to itself the compiler may fuse a
// product and a sum into one multiply-add, by a choice that changes with the code around
// it (and the weights with it). Every other product here is an explicit multiply-add.
inline V Rounded(V product) {
  __asm__("" : "+v"(product));
  return product;
}

// The most rows of x (or g) one pass keeps in registers; more are taken in blocks.
constexpr int kRows = 12;
// Rows of w the forward product takes per pass over its sums (32 streams to prefetch;
// 16 was slower, with twice the sums' loads and stores).
constexpr int kBlock = 32;
// Rows of g (and the forward's sums) start on a cache line: strides round up to 16 floats.
constexpr int64_t kLine = 16;

inline int64_t RoundUp(int64_t value, int64_t step) { return (value + step - 1) / step * step; }

// Lanes [0, count) of a vector (all of them from kLanes on, none at 0 or below).
inline Mask LaneMask(int64_t count) {
#ifdef __AVX512F__
  return count >= kLanes ? static_cast<Mask>(0xffff) : TailMask(std::max<int64_t>(count, 0));
#else
  return TailMask(std::max<int64_t>(std::min<int64_t>(count, kLanes), 0));
#endif
}

// 64-byte aligned floats, with the buffer that holds them.
struct Aligned {
  std::vector<float> buffer;
  float* data;
  explicit Aligned(int64_t count) : buffer(count + kLine) {
    const auto at = reinterpret_cast<std::uintptr_t>(buffer.data());
    data = buffer.data() + (RoundUp(at, 64) - at) / sizeof(float);
  }
};

struct Matrix {
  const float* data;
  int64_t rows, cols, stride;
};

// `m`'s rows copied to a row stride of whole cache lines.
std::shared_ptr<Aligned> LineAligned(Matrix* m) {
  const int64_t stride = RoundUp(m->cols, kLine);
  auto copy = std::make_shared<Aligned>(m->rows * stride);
  for (int64_t i = 0; i < m->rows; ++i)
    std::memcpy(copy->data + i * stride, m->data + i * m->stride, m->cols * sizeof(float));
  *m = Matrix{copy->data, m->rows, m->cols, stride};
  return copy;
}

// The step's rule: plain SGD, w' = w - eta * grad, where grad = dw + decay * w; with a
// velocity v (momentum mu), v' = mu * v - eta * grad and w' = w + v' (classical) or
// w' = w + mu * v' - eta * grad (Nesterov's), as convnet.optimizers.SGD writes them; each
// product and the sum after it is one multiply-add (one rounding), mu * v excepted.
struct Rule {
  float eta, decay, mu;
  bool nesterov;
  const float* v;  // nullptr: plain SGD
  float* v_new;
  float* squares;  // sum(w * w) of each row before the step; nullptr: not asked for
};

// out[r * stride] = Sum(v[r]) for r < R, each added in Sum's order (halves, quarters, pairs,
// then the last two), with AVX-512 four vectors per instruction: one at a time, the
// sums of a row were a measurable part of the fused pass.
template <int R>
inline void Sums(const V* v, float* out, int64_t stride) {
#ifdef __AVX512F__
  constexpr int P = (R + 1) / 2, Q = (P + 1) / 2;
  V halves[P], quarters[Q];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {  // [v[2p]'s halves' sums, v[2p + 1]'s]
    const V a = v[2 * p], b = 2 * p + 1 < R ? v[2 * p + 1] : Zero();
    halves[p] = _add(_mm512_shuffle_f32x4(a, b, 0xEE), _mm512_shuffle_f32x4(a, b, 0x44));
  }
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {  // the quarters' sums of four vectors
    const V a = halves[2 * q], b = 2 * q + 1 < P ? halves[2 * q + 1] : Zero();
    quarters[q] = _add(_mm512_shuffle_f32x4(a, b, 0xDD), _mm512_shuffle_f32x4(a, b, 0x88));
  }
#pragma GCC unroll 4
  for (int q = 0; q < Q; ++q) {
    const V pairs = _add(quarters[q], _mm512_permute_ps(quarters[q], 0x4E));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, _add(pairs, _mm512_permute_ps(pairs, 0xB1)));
#pragma GCC unroll 4
    for (int r = 4 * q; r < std::min(R, 4 * q + 4); ++r) out[r * stride] = lanes[(r - 4 * q) * 4];
  }
#else
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) out[r * stride] = Sum(v[r]);
#endif
}

// Row kk of the fused pass, for rows i0..i0+R of x and g: dx[i, kk] for those i, and the
// weights' gradient summed over them into `partial` (n floats); on the last block of rows
// (kLast), the step of row kk (and of its velocity) instead. kFirst: the block of rows
// i0 == 0 (no partial sums yet); kNorm: sum(w * w) of the row asked for. The cases are
// compiled apart: with their tests in the loop, the pass was slower.
template <int R, bool kFirst, bool kLast, bool kNorm>
void SgdRowCase(Matrix x, Matrix g, const float* w, float* dx, float* w_new, float* partial,
                int64_t i0, int64_t kk, const Rule& rule) {
  // U vectors of the row at a time: U chains of the weights' gradient (each a sum over i
  // in order) run side by side; R sums of dx, R of x's values and 2U vectors in registers.
  constexpr int U = R <= 10 ? 4 : 2;
  const int64_t n = g.cols, k = x.stride;
  const float* row = w + kk * n;
  float* out = w_new + kk * n;
  V acc[R], xs[R], squares = Zero();
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    acc[r] = Zero();
    xs[r] = Broadcast(x.data + (i0 + r) * k + kk);
  }
  const V etas = Broadcast(&rule.eta), decays = Broadcast(&rule.decay), mus = Broadcast(&rule.mu);
  const float* vrow = rule.v == nullptr ? nullptr : rule.v + kk * n;
  float* vout = rule.v == nullptr ? nullptr : rule.v_new + kk * n;
  // Columns j.. (`vectors` of them; with `masked`, one vector masked to the row's end).
  auto step = [&](int64_t j, auto masked, auto vectors) INLINE {
    constexpr bool tail = decltype(masked)::value;
    constexpr int count = decltype(vectors)::value;
    V wv[count], dw[count];
    Mask masks[count];
#pragma GCC unroll 4
    for (int u = 0; u < count; ++u) {
      const int64_t at = j + u * kLanes;
      if (tail) masks[u] = LaneMask(n - at);
      wv[u] = tail ? LoadMasked(row + at, masks[u]) : Load(row + at);
      dw[u] = kFirst ? Zero() : (tail ? LoadMasked(partial + at, masks[u]) : Load(partial + at));
      if (kNorm) squares = Fma(wv[u], wv[u], squares);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
      for (int u = 0; u < count; ++u) {
        const float* gr = g.data + (i0 + r) * g.stride + j + u * kLanes;
        V gv = tail ? LoadMasked(gr, masks[u]) : Load(gr);
        // Both products take gv from this register: left to itself the compiler reads it
        // from memory twice, and the loads, not the multiply-adds, set the pace.
        __asm__("" : "+v"(gv));
        acc[r] = Fma(gv, wv[u], acc[r]);
        dw[u] = Fma(xs[r], gv, dw[u]);
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < count; ++u) {
      const int64_t at = j + u * kLanes;
      V result = dw[u];
      float* target = partial + at;
      if (kLast) {
        const V grad = Fma(decays, wv[u], dw[u]);
        if (vrow == nullptr) {
          result = Fnma(etas, grad, wv[u]);
        } else {
          const V v = tail ? LoadMasked(vrow + at, masks[u]) : Load(vrow + at);
          const V velocity = Fnma(etas, grad, Rounded(_mul(mus, v)));
          if (tail)
            StoreMasked(vout + at, velocity, masks[u]);
          else
            Store(vout + at, velocity);
          result = rule.nesterov ? Fnma(etas, grad, Fma(mus, velocity, wv[u]))
                                 : _add(wv[u], velocity);
        }
        target = out + at;
      }
      if (tail)
        StoreMasked(target, result, masks[u]);
      else
        Store(target, result);
    }
  };
  // U vectors at a time, then one at a time, then the masked rest: the same vectors in the
  // same order as U at a time to the end (a masked U-vector tail was slower).
  using Whole = std::false_type;
  using One = std::integral_constant<int, 1>;
  int64_t j = 0;
  for (; j + U * kLanes <= n; j += U * kLanes) step(j, Whole{}, std::integral_constant<int, U>{});
  for (; j + kLanes <= n; j += kLanes) step(j, Whole{}, One{});
  if (j < n) step(j, std::true_type{}, One{});
  Sums<R>(acc, dx + i0 * k + kk, k);
  if (kNorm) rule.squares[kk] = Sum(squares);
}

// SgdRowCase for the block's case.
template <int R>
void SgdRow(Matrix x, Matrix g, const float* w, float* dx, float* w_new, float* partial,
            int64_t i0, int64_t kk, const Rule& rule) {
  const bool first = i0 == 0, last = i0 + R == x.rows, norm = rule.squares != nullptr;
  if (first && last)
    (norm ? SgdRowCase<R, true, true, true> : SgdRowCase<R, true, true, false>)(
        x, g, w, dx, w_new, partial, i0, kk, rule);
  else if (first)
    (norm ? SgdRowCase<R, true, false, true> : SgdRowCase<R, true, false, false>)(
        x, g, w, dx, w_new, partial, i0, kk, rule);
  else
    (last ? SgdRowCase<R, false, true, false> : SgdRowCase<R, false, false, false>)(
        x, g, w, dx, w_new, partial, i0, kk, rule);
}

typedef void (*SgdRowFn)(Matrix, Matrix, const float*, float*, float*, float*, int64_t, int64_t,
                         const Rule&);
constexpr SgdRowFn kSgdRow[kRows + 1] = {
    nullptr,    SgdRow<1>,  SgdRow<2>,  SgdRow<3>, SgdRow<4>, SgdRow<5>, SgdRow<6>,
    SgdRow<7>,  SgdRow<8>,  SgdRow<9>,  SgdRow<10>, SgdRow<11>, SgdRow<12>};

// Rows r0..r1 of the fused SGD pass (`partial`: n floats of scratch).
void Sgd(Matrix x, Matrix g, const float* w, float* dx, float* w_new, float* partial,
         int64_t r0, int64_t r1, const Rule& rule) {
  for (int64_t kk = r0; kk < r1; ++kk)
    for (int64_t i0 = 0; i0 < x.rows; i0 += kRows)
      kSgdRow[std::min<int64_t>(kRows, x.rows - i0)](x, g, w, dx, w_new, partial, i0, kk, rule);
}

// The row stride of the forward's sums for a strip `width` columns wide.
inline int64_t SumsStride(int64_t width) { return RoundUp(width, 32) + kLine; }

// y[i0..i0+R, c0..c1) = x[i0..i0+R] . w[:, c0..c1): for each block of kBlock rows of w, 32
// columns at a time, the sums of R rows come into registers, take the block's products in
// order and go back to `sums` (R lines of the strip's width, aligned); then to y.
template <int R>
void ForwardRows(Matrix x, const float* w, int64_t n, float* y, float* sums, int64_t i0,
                 int64_t c0, int64_t c1) {
  constexpr int U = 2;
  // A line more than the width: rows of sums a multiple of 4 KB apart would alias
  // (a load waits on a store to the other row); measured ~1.3x slower.
  const int64_t k = x.cols, width = c1 - c0, stride = SumsStride(width);
  std::fill(sums, sums + R * stride, 0.0f);
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t block = std::min<int64_t>(kBlock, k - k0);
    auto columns = [&](int64_t j, auto masked) INLINE {
      constexpr bool tail = decltype(masked)::value;
      V acc[R][U];
      Mask masks[U];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u) acc[r][u] = Load(sums + r * stride + j + u * kLanes);
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u)
        if (tail) masks[u] = LaneMask(width - j - u * kLanes);
      for (int64_t q = 0; q < block; ++q) {
        const float* wr = w + (k0 + q) * n + c0 + j;
        if (k0 + kBlock + q < k) {  // the same columns of the next block, into L2
          _mm_prefetch(reinterpret_cast<const char*>(wr + kBlock * n), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(wr + kBlock * n + 16), _MM_HINT_T1);
        }
        V wv[U];
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u)
          wv[u] = tail ? LoadMasked(wr + u * kLanes, masks[u]) : Load(wr + u * kLanes);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          const V xb = Broadcast(x.data + (i0 + r) * x.stride + k0 + q);
#pragma GCC unroll 2
          for (int u = 0; u < U; ++u) acc[r][u] = Fma(xb, wv[u], acc[r][u]);
        }
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
        for (int u = 0; u < U; ++u) Store(sums + r * stride + j + u * kLanes, acc[r][u]);
    };
    int64_t j = 0;
    for (; j + U * kLanes <= width; j += U * kLanes) columns(j, std::false_type{});
    if (j < width) columns(j, std::true_type{});
  }
  for (int r = 0; r < R; ++r)
    std::memcpy(y + (i0 + r) * n + c0, sums + r * stride, width * sizeof(float));
}

typedef void (*ForwardRowsFn)(Matrix, const float*, int64_t, float*, float*, int64_t, int64_t,
                              int64_t);
constexpr ForwardRowsFn kForwardRows[kRows + 1] = {
    nullptr,         ForwardRows<1>, ForwardRows<2>,  ForwardRows<3>,  ForwardRows<4>,
    ForwardRows<5>,  ForwardRows<6>, ForwardRows<7>,  ForwardRows<8>,  ForwardRows<9>,
    ForwardRows<10>, ForwardRows<11>, ForwardRows<12>};

// How finely a pass is shared out: at least this many weights per task.
constexpr int64_t kTaskWeights = 1 << 16;

}  // namespace

// args: w (k, n), x (m, k), g (m, n), eta (), decay () (float32 scalars), and with
// momentum v (k, n), mu (), nesterov () (0 or 1); results: dx (m, k) = g . w^T and w'
// (k, n) by the Rule (and v' (k, n) with momentum).
extern "C" XLA_FFI_Error* ConvnetDenseSgd(XLA_FFI_CallFrame* frame) {
  if (xla_call::Answered(frame)) return nullptr;
  const XLA_FFI_Api* api = frame->api;
  const char* what =
      "dense_sgd: expected float32 w (k, n), x (m, k), g (m, n), eta (), decay () [, v (k, n), "
      "mu (), nesterov ()]; results dx (m, k), w (k, n) [, v (k, n)] [, sum(w * w) ()]";
  const bool momentum = frame->args.size == 8;
  const int64_t steps = momentum ? 3 : 2;  // results before the optional squares
  const bool squares = frame->rets.size == steps + 1;
  if (!(frame->args.size == 5 || momentum) || !(frame->rets.size == steps || squares))
    return xla_call::Fail(api, what);
  auto arg = [&](int64_t i, int64_t rank) {
    return xla_call::Float32Buffer(frame->args.args[i], rank);
  };
  auto ret = [&](int64_t i) { return xla_call::Float32Buffer(frame->rets.rets[i], 2); };
  const XLA_FFI_Buffer *wb = arg(0, 2), *xb = arg(1, 2), *gb = arg(2, 2), *eb = arg(3, 0),
                       *db = arg(4, 0), *dxb = ret(0), *ob = ret(1);
  if (!wb || !xb || !gb || !eb || !db || !dxb || !ob) return xla_call::Fail(api, what);
  const int64_t k = wb->dims[0], n = wb->dims[1], m = xb->dims[0];
  auto is_w = [&](const XLA_FFI_Buffer* b) {
    return b != nullptr && b->dims[0] == k && b->dims[1] == n;
  };
  if (xb->dims[1] != k || gb->dims[0] != m || gb->dims[1] != n || dxb->dims[0] != m ||
      dxb->dims[1] != k || !is_w(ob))
    return xla_call::Fail(api, what);
  Rule rule{*static_cast<const float*>(eb->data), *static_cast<const float*>(db->data), 0.0f,
            false, nullptr, nullptr, nullptr};
  const XLA_FFI_Buffer* sb = squares ? xla_call::Float32Buffer(frame->rets.rets[steps], 0) : nullptr;
  if (squares && sb == nullptr) return xla_call::Fail(api, what);
  // Each row's sum, added in row order once every row is done: the same bits on any threads.
  auto rows_squares = std::make_shared<std::vector<float>>(squares ? k : 0);
  if (squares) rule.squares = rows_squares->data();
  if (momentum) {
    const XLA_FFI_Buffer *vb = arg(5, 2), *mb = arg(6, 0), *nb = arg(7, 0), *vo = ret(2);
    if (!is_w(vb) || !mb || !nb || !is_w(vo)) return xla_call::Fail(api, what);
    rule.mu = *static_cast<const float*>(mb->data);
    rule.nesterov = *static_cast<const float*>(nb->data) != 0.0f;
    rule.v = static_cast<const float*>(vb->data);
    rule.v_new = static_cast<float*>(vo->data);
  }
  const Matrix x{static_cast<const float*>(xb->data), m, k, k};
  Matrix g{static_cast<const float*>(gb->data), m, n, n};
  const std::shared_ptr<Aligned> copy = LineAligned(&g);
  const float* w = static_cast<const float*>(wb->data);
  float* dx = static_cast<float*>(dxb->data);
  float* w_new = static_cast<float*>(ob->data);
  const int64_t rows = std::max<int64_t>(1, kTaskWeights / std::max<int64_t>(1, n));
  auto tasks = std::make_shared<xla_call::Tasks>();
  tasks->n = (k + rows - 1) / rows;
  tasks->scratch = n;
  tasks->item = [=](int64_t p, float* partial) {
    (void)copy;  // held until the last item is done
    Sgd(x, g, w, dx, w_new, partial, p * rows, std::min(k, (p + 1) * rows), rule);
  };
  xla_call::Launch(api, frame->ctx, tasks);
  if (squares) {
    double total = 0.0;
    for (const float row : *rows_squares) total += row;
    *static_cast<float*>(sb->data) = static_cast<float>(total);
  }
  return nullptr;
}

// args: x (m, k), w (k, n); result: y (m, n) = x . w.
extern "C" XLA_FFI_Error* ConvnetDenseForward(XLA_FFI_CallFrame* frame) {
  if (xla_call::Answered(frame)) return nullptr;
  const XLA_FFI_Api* api = frame->api;
  const char* what = "dense_forward: expected float32 x (m, k), w (k, n); result y (m, n)";
  if (frame->args.size != 2 || frame->rets.size != 1) return xla_call::Fail(api, what);
  const XLA_FFI_Buffer* xb = xla_call::Float32Buffer(frame->args.args[0], 2);
  const XLA_FFI_Buffer* wb = xla_call::Float32Buffer(frame->args.args[1], 2);
  const XLA_FFI_Buffer* yb = xla_call::Float32Buffer(frame->rets.rets[0], 2);
  if (!xb || !wb || !yb) return xla_call::Fail(api, what);
  const int64_t m = xb->dims[0], k = xb->dims[1], n = wb->dims[1];
  if (wb->dims[0] != k || yb->dims[0] != m || yb->dims[1] != n) return xla_call::Fail(api, what);
  const Matrix x{static_cast<const float*>(xb->data), m, k, k};
  const float* w = static_cast<const float*>(wb->data);
  float* y = static_cast<float*>(yb->data);
  // One strip of columns per thread (on one thread, one strip): each row of w is read in
  // long runs. A strip's columns are whole 32s, and no sum depends on the strips.
  const int64_t threads = xla_call::Threads(api, frame->ctx);
  const int64_t strips = std::min<int64_t>((n + 31) / 32, threads);
  const int64_t width = RoundUp((n + strips - 1) / strips, 32);
  auto tasks = std::make_shared<xla_call::Tasks>();
  tasks->n = (n + width - 1) / width;
  tasks->scratch = kRows * SumsStride(width) + kLine;
  tasks->item = [=](int64_t p, float* scratch) {
    const auto at = reinterpret_cast<std::uintptr_t>(scratch);
    float* sums = scratch + (RoundUp(at, 64) - at) / sizeof(float);
    const int64_t c0 = p * width, c1 = std::min(n, c0 + width);
    for (int64_t i0 = 0; i0 < m; i0 += kRows)
      kForwardRows[std::min<int64_t>(kRows, m - i0)](x, w, n, y, sums, i0, c0, c1);
  };
  xla_call::Launch(api, frame->ctx, tasks);
  return nullptr;
}
