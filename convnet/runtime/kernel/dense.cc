// convnet's dense-layer kernel for CPUs, called by XLA as an FFI custom call:
//
//   ConvnetDenseSgd   dx = g . w^T  and  w' = w - eta * (x^T . g + decay * w)
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
// Each dx[i, kk] is one sum over the row in a fixed order and each weight's gradient one
// sum over i in order, whatever thread takes the row: the results repeat bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>

#include "xla_call.h"

namespace {

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
inline V _add(V a, V b) { return _mm256_add_ps(a, b); }
inline V _sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V _mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline float Sum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

// The most rows of x (or g) one pass keeps in registers; more are taken in blocks.
constexpr int kRows = 12;

struct Matrix {
  const float* data;
  int64_t rows, cols;
};

// The step's rule: plain SGD, w' = w - eta * grad, where grad = dw + decay * w; with a
// velocity v (momentum mu), v' = mu * v - eta * grad and w' = w + v' (classical) or
// w' = w + mu * v' - eta * grad (Nesterov's), as convnet.optimizers.SGD writes them.
struct Rule {
  float eta, decay, mu;
  bool nesterov;
  const float* v;  // nullptr: plain SGD
  float* v_new;
};

// Row kk of the fused pass, for rows i0..i0+R of x and g: dx[i, kk] for those i, and the
// weights' gradient summed over them into `partial` (n floats); on the last block of rows,
// the step of row kk (and of its velocity) instead.
template <int R>
void SgdRow(Matrix x, Matrix g, const float* w, float* dx, float* w_new, float* partial,
            int64_t i0, int64_t kk, const Rule& rule) {
  const int64_t n = g.cols, k = x.cols;
  const bool first = i0 == 0, last = i0 + R == x.rows;
  const float* row = w + kk * n;
  float* out = w_new + kk * n;
  const float* xs = x.data + i0 * k + kk;
  V acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = Zero();
  const V etas = Broadcast(&rule.eta), decays = Broadcast(&rule.decay), mus = Broadcast(&rule.mu);
  const float* vrow = rule.v == nullptr ? nullptr : rule.v + kk * n;
  float* vout = rule.v == nullptr ? nullptr : rule.v_new + kk * n;
  // U vectors of the row at a time: U chains of the weights' gradient (each a sum over i
  // in order) run side by side, not one after another.
  auto step = [&](auto width, int64_t j, bool tail, Mask mask) {
    constexpr int U = decltype(width)::value;
    V wv[U], dw[U];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const int64_t at = j + u * kLanes;
      wv[u] = tail ? LoadMasked(row + at, mask) : Load(row + at);
      dw[u] = first ? Zero() : (tail ? LoadMasked(partial + at, mask) : Load(partial + at));
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V xb = Broadcast(xs + r * k);
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const float* gr = g.data + (i0 + r) * n + j + u * kLanes;
        const V gv = tail ? LoadMasked(gr, mask) : Load(gr);
        acc[r] = Fma(gv, wv[u], acc[r]);
        dw[u] = Fma(xb, gv, dw[u]);
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const int64_t at = j + u * kLanes;
      V result = dw[u];
      float* target = partial + at;
      if (last) {
        const V grad = _add(dw[u], _mul(decays, wv[u]));
        if (vrow == nullptr) {
          result = _sub(wv[u], _mul(etas, grad));
        } else {
          const V v = tail ? LoadMasked(vrow + at, mask) : Load(vrow + at);
          const V velocity = _sub(_mul(mus, v), _mul(etas, grad));
          if (tail)
            StoreMasked(vout + at, velocity, mask);
          else
            Store(vout + at, velocity);
          result = rule.nesterov ? _sub(_add(wv[u], _mul(mus, velocity)), _mul(etas, grad))
                                 : _add(wv[u], velocity);
        }
        target = out + at;
      }
      if (tail)
        StoreMasked(target, result, mask);
      else
        Store(target, result);
    }
  };
  using Four = std::integral_constant<int, 4>;
  using One = std::integral_constant<int, 1>;
  int64_t j = 0;
  for (; j + 4 * kLanes <= n; j += 4 * kLanes) step(Four{}, j, false, Mask{});
  for (; j + kLanes <= n; j += kLanes) step(One{}, j, false, Mask{});
  if (j < n) step(One{}, j, true, TailMask(n - j));
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) dx[(i0 + r) * k + kk] = Sum(acc[r]);
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
      "mu (), nesterov ()]; results dx (m, k), w (k, n) [, v (k, n)]";
  const bool momentum = frame->args.size == 8;
  if (!(frame->args.size == 5 && frame->rets.size == 2) && !(momentum && frame->rets.size == 3))
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
            false, nullptr, nullptr};
  if (momentum) {
    const XLA_FFI_Buffer *vb = arg(5, 2), *mb = arg(6, 0), *nb = arg(7, 0), *vo = ret(2);
    if (!is_w(vb) || !mb || !nb || !is_w(vo)) return xla_call::Fail(api, what);
    rule.mu = *static_cast<const float*>(mb->data);
    rule.nesterov = *static_cast<const float*>(nb->data) != 0.0f;
    rule.v = static_cast<const float*>(vb->data);
    rule.v_new = static_cast<float*>(vo->data);
  }
  const Matrix x{static_cast<const float*>(xb->data), m, k};
  const Matrix g{static_cast<const float*>(gb->data), m, n};
  const float* w = static_cast<const float*>(wb->data);
  float* dx = static_cast<float*>(dxb->data);
  float* w_new = static_cast<float*>(ob->data);
  const int64_t rows = std::max<int64_t>(1, kTaskWeights / std::max<int64_t>(1, n));
  auto tasks = std::make_shared<xla_call::Tasks>();
  tasks->n = (k + rows - 1) / rows;
  tasks->scratch = n;
  tasks->item = [=](int64_t p, float* partial) {
    Sgd(x, g, w, dx, w_new, partial, p * rows, std::min(k, (p + 1) * rows), rule);
  };
  xla_call::Launch(api, frame->ctx, tasks);
  return nullptr;
}
