// The book's sigmoid networks (network.py, network2.py): an epoch of SGD and a forward
// pass, called once per epoch or per data set from Python (convnet/book/sigmoid_kernel.py).
//
// The arithmetic is the book's, operation by operation: z = w . a + b, sigmoid(z) =
// 1 / (1 + exp(-z)), the output error a - y (cross-entropy) or (a - y) * (a * (1 - a))
// (quadratic), each gradient summed over the mini-batch's examples in their order, and the
// update w = decay * w - rate * nabla_w. Built with -ffp-contract=off, so that no
// multiply-add is fused where NumPy would round twice; only the order of the terms inside
// each dot product differs from NumPy's. The first layer reads each image's non-zero
// pixels only (a product by a zero pixel adds nothing) and keeps its weights transposed,
// one input's weights to every hidden neuron side by side, padded to whole vectors.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int kBytes = 64;  // one vector: 8 doubles or 16 floats (two AVX2 registers)
constexpr int kAhead = 12;   // how many pixels ahead the first layer prefetches weights

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes), aligned(sizeof(T))));
  static constexpr int lanes = kBytes / sizeof(T);
};

// acc + w * v in one rounding where the CPU has FMA: the first layer's dot products, as a
// BLAS kernel computes them (every other product here is rounded before its sum).
inline Vec<double>::type fused(Vec<double>::type acc, Vec<double>::type w, double v) {
#if defined(__AVX512F__)
  return (Vec<double>::type)_mm512_fmadd_pd((__m512d)w, _mm512_set1_pd(v), (__m512d)acc);
#else
  return acc + w * v;
#endif
}

inline Vec<float>::type fused(Vec<float>::type acc, Vec<float>::type w, float v) {
#if defined(__AVX512F__)
  return (Vec<float>::type)_mm512_fmadd_ps((__m512)w, _mm512_set1_ps(v), (__m512)acc);
#else
  return acc + w * v;
#endif
}

// A mini-batch's non-zero pixels regrouped by input: for each input k that some example
// of the batch lit, in increasing k, the examples (in their order) and values. Each lit
// input's gradient is then summed, and its weights updated, in one pass.
template <typename T>
struct ByInput {
  std::vector<int32_t> count, inputs, example;
  std::vector<int64_t> start;
  std::vector<T> value;

  explicit ByInput(int64_t n_in) : count(n_in, 0) {}

  void fill(const int64_t* indptr, const int32_t* indices, const T* values, const int64_t* rows,
            int64_t m) {
    inputs.clear();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = indptr[rows[i]]; p < indptr[rows[i] + 1]; ++p) ++count[indices[p]];
    const int64_t n_in = static_cast<int64_t>(count.size());
    for (int64_t k = 0; k < n_in; ++k)  // in increasing order, without sorting
      if (count[k]) inputs.push_back(static_cast<int32_t>(k));
    start.resize(inputs.size() + 1);
    start[0] = 0;
    for (size_t q = 0; q < inputs.size(); ++q) {
      start[q + 1] = start[q] + count[inputs[q]];
      count[inputs[q]] = static_cast<int32_t>(q);  // now: the input's place in `inputs`
    }
    example.resize(start.back());
    value.resize(start.back());
    std::vector<int64_t>& next = scratch;
    next.assign(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = indptr[rows[i]]; p < indptr[rows[i] + 1]; ++p) {
        const int64_t at = next[count[indices[p]]]++;
        example[at] = static_cast<int32_t>(i);
        value[at] = values[p];
      }
    for (int32_t k : inputs) count[k] = 0;
  }

 private:
  std::vector<int64_t> scratch;
};

// z (width hp) = the first layer's sums for one example, NB vectors from column j0 held in
// registers while its non-zero pixels (in increasing order) stream their weights.
template <typename T, int NB>
void first_row_blocks(const T* w0t, int64_t hp, int64_t j0, const int64_t* indptr,
                      const int32_t* indices, const T* values, int64_t row, T* z) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  V acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = V{};
  const int64_t end = indptr[row + 1];
  for (int64_t p = indptr[row]; p < end; ++p) {
    if (p + kAhead < end) {  // the rows of pixels to come: their addresses are known
      const T* next = w0t + static_cast<int64_t>(indices[p + kAhead]) * hp + j0;
      for (int b = 0; b < NB; ++b) __builtin_prefetch(next + b * L);
    }
    const T* w = w0t + static_cast<int64_t>(indices[p]) * hp + j0;
    const T v = values[p];
    for (int b = 0; b < NB; ++b) {
      V wv;
      std::memcpy(&wv, w + b * L, sizeof(V));
      acc[b] = fused(acc[b], wv, v);
    }
  }
  for (int b = 0; b < NB; ++b) std::memcpy(z + j0 + b * L, &acc[b], sizeof(V));
}

template <typename T>
void first_row(const T* w0t, int64_t hp, const int64_t* indptr, const int32_t* indices,
               const T* values, int64_t row, T* z) {
  constexpr int L = Vec<T>::lanes;
  int64_t j0 = 0;
  for (; j0 + 4 * L <= hp; j0 += 4 * L)
    first_row_blocks<T, 4>(w0t, hp, j0, indptr, indices, values, row, z);
  switch ((hp - j0) / L) {
    case 3: first_row_blocks<T, 3>(w0t, hp, j0, indptr, indices, values, row, z); break;
    case 2: first_row_blocks<T, 2>(w0t, hp, j0, indptr, indices, values, row, z); break;
    case 1: first_row_blocks<T, 1>(w0t, hp, j0, indptr, indices, values, row, z); break;
    default: break;
  }
}

// z[i] (rows of width hp) = the first layer's sums for each example of the block: for each
// lit input in increasing order, its weights times each example's value.
// The first layer's update for the lit inputs' weights, NB vectors from column j0:
// g = sum over the examples (in order) of delta * value; w = decay * w - rate * g.
template <typename T, int NB>
void first_update_blocks(T* w0t, int64_t hp, int64_t j0, const ByInput<T>& block,
                         const T* delta, T decay, T rate) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  for (size_t q = 0; q < block.inputs.size(); ++q) {
    V g[NB];
    for (int b = 0; b < NB; ++b) g[b] = V{};
    for (int64_t at = block.start[q]; at < block.start[q + 1]; ++at) {
      const T* d = delta + block.example[at] * hp + j0;
      const T v = block.value[at];
      for (int b = 0; b < NB; ++b) {
        V dv;
        std::memcpy(&dv, d + b * L, sizeof(V));
        g[b] = g[b] + dv * v;
      }
    }
    T* w = w0t + static_cast<int64_t>(block.inputs[q]) * hp + j0;
    for (int b = 0; b < NB; ++b) {
      V wv;
      std::memcpy(&wv, w + b * L, sizeof(V));
      if (decay == T(1)) wv = wv - g[b] * rate;  // decay * w == w
      else wv = wv * decay - g[b] * rate;
      std::memcpy(w + b * L, &wv, sizeof(V));
    }
  }
}

template <typename T>
void first_update(T* w0t, int64_t hp, const ByInput<T>& block, const T* delta, T decay,
                  T rate) {
  constexpr int L = Vec<T>::lanes;
  int64_t j0 = 0;
  for (; j0 + 4 * L <= hp; j0 += 4 * L)
    first_update_blocks<T, 4>(w0t, hp, j0, block, delta, decay, rate);
  switch ((hp - j0) / L) {
    case 3: first_update_blocks<T, 3>(w0t, hp, j0, block, delta, decay, rate); break;
    case 2: first_update_blocks<T, 2>(w0t, hp, j0, block, delta, decay, rate); break;
    case 1: first_update_blocks<T, 1>(w0t, hp, j0, block, delta, decay, rate); break;
    default: break;
  }
}

template <typename T>
inline T sigmoid(T z) { return T(1) / (T(1) + std::exp(-z)); }

#if defined(CONVNET_MVEC) && defined(__AVX512F__)
// glibc's vector exp and log (libmvec), 8 doubles or 16 floats at once.
extern "C" __m512d _ZGVeN8v_exp(__m512d);
extern "C" __m512 _ZGVeN16v_expf(__m512);
extern "C" __m512d _ZGVeN8v_log(__m512d);
extern "C" __m512 _ZGVeN16v_logf(__m512);
inline Vec<double>::type exp_v(Vec<double>::type x) {
  return (Vec<double>::type)_ZGVeN8v_exp((__m512d)x);
}
inline Vec<float>::type exp_v(Vec<float>::type x) {
  return (Vec<float>::type)_ZGVeN16v_expf((__m512)x);
}
inline Vec<double>::type log_v(Vec<double>::type x) {
  return (Vec<double>::type)_ZGVeN8v_log((__m512d)x);
}
inline Vec<float>::type log_v(Vec<float>::type x) {
  return (Vec<float>::type)_ZGVeN16v_logf((__m512)x);
}
constexpr bool kVectorExp = true;
#else
template <typename V>
inline V exp_v(V x) {
  constexpr int n = sizeof(V) / sizeof(x[0]);
  for (int i = 0; i < n; ++i) x[i] = std::exp(x[i]);
  return x;
}
template <typename V>
inline V log_v(V x) {
  constexpr int n = sizeof(V) / sizeof(x[0]);
  for (int i = 0; i < n; ++i) x[i] = std::log(x[i]);
  return x;
}
constexpr bool kVectorExp = false;
#endif

// out[j] = ln(x[j]) for j < n, whole vectors at a time, then one at a time.
template <typename T>
inline void log_into(const T* x, int64_t n, T* out) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  int64_t j = 0;
  if (kVectorExp) {
    for (; j + L <= n; j += L) {
      V v;
      std::memcpy(&v, x + j, sizeof(V));
      v = log_v(v);
      std::memcpy(out + j, &v, sizeof(V));
    }
  }
  for (; j < n; ++j) out[j] = std::log(x[j]);
}

// a[j] = sigmoid(z[j] + b[j]) for j < n, whole vectors at a time, then one at a time.
template <typename T>
inline void sigmoid_add(const T* z, const T* b, int64_t n, T* a) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  int64_t j = 0;
  if (kVectorExp) {
    const V one = V{} + T(1);
    for (; j + L <= n; j += L) {
      V zv, bv;
      std::memcpy(&zv, z + j, sizeof(V));
      std::memcpy(&bv, b + j, sizeof(V));
      const V out = one / (one + exp_v(-(zv + bv)));
      std::memcpy(a + j, &out, sizeof(V));
    }
  }
  for (; j < n; ++j) a[j] = sigmoid<T>(z[j] + b[j]);
}

// The network as the kernel sees it.
template <typename T>
struct Net {
  int64_t layers;        // weight layers
  const int64_t* sizes;  // layers + 1 sizes
  int64_t hp;            // the first hidden layer padded to whole vectors
  T* const* w;           // w[0]: (sizes[0], hp) transposed; w[l]: (sizes[l+1], sizes[l])
  T* const* b;           // b[l]: sizes[l+1]
  // wt[l], l >= 1: w[l] transposed, so that the forward pass sums each input's weights
  // into every neuron's total at once, in the order of the inputs.
  std::vector<std::vector<T>> wt;

  Net(int64_t layers_, const int64_t* sizes_, int64_t hp_, T* const* w_, T* const* b_)
      : layers(layers_), sizes(sizes_), hp(hp_), w(w_), b(b_), wt(layers_) {
    for (int64_t l = 1; l < layers; ++l) transpose(l);
  }

  void transpose(int64_t l) {
    const int64_t rows = sizes[l + 1], cols = sizes[l];
    wt[l].resize(rows * cols);
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t k = 0; k < cols; ++k) wt[l][k * rows + j] = w[l][j * cols + k];
  }

  // act[l]: the activations of layer l + 1, for `count` examples, rows of width(l).
  int64_t width(int64_t l) const { return l == 0 ? hp : sizes[l + 1]; }

  // The activations of a block of m examples (the first layer's sums already in act[0]).
  void forward(int64_t m, std::vector<std::vector<T>>& act) const {
    std::vector<T> sums(*std::max_element(sizes + 1, sizes + layers + 1));
    for (int64_t i = 0; i < m; ++i) {
      T* a0 = act[0].data() + i * hp;
      sigmoid_add<T>(a0, b[0], sizes[1], a0);
      for (int64_t l = 1; l < layers; ++l) {
        const T* in = act[l - 1].data() + i * width(l - 1);
        const int64_t rows = sizes[l + 1], cols = sizes[l];
        std::fill(sums.begin(), sums.begin() + rows, T(0));
        for (int64_t k = 0; k < cols; ++k) {
          const T x = in[k];
          const T* column = wt[l].data() + k * rows;
          for (int64_t j = 0; j < rows; ++j) sums[j] += column[j] * x;
        }
        sigmoid_add<T>(sums.data(), b[l], rows, act[l].data() + i * width(l));
      }
    }
  }
};

template <typename T>
void epoch(Net<T>& net, const int64_t* indptr, const int32_t* indices, const T* values,
           const T* targets, const int64_t* rows, int64_t n, int64_t mini_batch, T eta,
           T decay, int64_t quadratic) {
  const int64_t L = net.layers, hp = net.hp, n_in = net.sizes[0], n_out = net.sizes[L];
  std::vector<std::vector<T>> act(L), delta(L);
  for (int64_t l = 0; l < L; ++l) {
    act[l].assign(mini_batch * net.width(l), T(0));
    delta[l].assign(mini_batch * net.width(l), T(0));  // padded lanes stay 0
  }
  ByInput<T> block(n_in);
  std::vector<char> lit(n_in, 0);
  std::vector<T> gradient(*std::max_element(net.sizes + 1, net.sizes + L + 1));
  for (int64_t start = 0; start < n; start += mini_batch) {
    const int64_t m = std::min(mini_batch, n - start);
    const T rate = eta / T(m);
    block.fill(indptr, indices, values, rows + start, m);
    for (int64_t i = 0; i < m; ++i)
      first_row<T>(net.w[0], hp, indptr, indices, values, rows[start + i], act[0].data() + i * hp);
    net.forward(m, act);
    for (int64_t i = 0; i < m; ++i) {  // the output error
      const T* a = act[L - 1].data() + i * net.width(L - 1);
      const T* y = targets + rows[start + i] * n_out;
      T* d = delta[L - 1].data() + i * net.width(L - 1);
      for (int64_t j = 0; j < n_out; ++j) {
        T e = a[j] - y[j];
        if (quadratic) e = e * (a[j] * (T(1) - a[j]));
        d[j] = e;
      }
    }
    for (int64_t l = L - 1; l > 0; --l) {  // each hidden layer's error
      const T* wl = net.w[l];
      const int64_t rows_l = net.sizes[l + 1], cols_l = net.sizes[l];
      for (int64_t i = 0; i < m; ++i) {
        const T* above = delta[l].data() + i * net.width(l);
        const T* a = act[l - 1].data() + i * net.width(l - 1);
        T* d = delta[l - 1].data() + i * net.width(l - 1);
        std::fill(d, d + cols_l, T(0));
        for (int64_t j = 0; j < rows_l; ++j) {  // w . delta, summed in the order of j
          const T e = above[j];
          const T* row = wl + j * cols_l;
          for (int64_t k = 0; k < cols_l; ++k) d[k] += row[k] * e;
        }
        for (int64_t k = 0; k < cols_l; ++k) d[k] = d[k] * (a[k] * (T(1) - a[k]));
      }
    }
    for (int64_t l = L - 1; l > 0; --l) {  // the dense layers' updates
      T* wl = net.w[l];
      T* bl = net.b[l];
      const int64_t rows_l = net.sizes[l + 1], cols_l = net.sizes[l];
      std::vector<T>& g = gradient;
      for (int64_t j = 0; j < rows_l; ++j) {
        std::fill(g.begin(), g.begin() + cols_l, T(0));
        T gb = 0;
        for (int64_t i = 0; i < m; ++i) {  // summed over the examples in their order
          const T e = delta[l][i * net.width(l) + j];
          const T* a = act[l - 1].data() + i * net.width(l - 1);
          for (int64_t k = 0; k < cols_l; ++k) g[k] += e * a[k];
          gb += e;
        }
        T* row = wl + j * cols_l;
        for (int64_t k = 0; k < cols_l; ++k) row[k] = decay * row[k] - rate * g[k];
        bl[j] = bl[j] - rate * gb;
      }
      net.transpose(l);
    }
    T* w0 = net.w[0];  // the first layer: each lit input's gradient, then its update
    first_update<T>(w0, hp, block, delta[0].data(), decay, rate);
    if (decay != T(1)) {  // decay * w - rate * 0 for the inputs no example lit
      for (int32_t k : block.inputs) lit[k] = 1;
      for (int64_t k = 0; k < n_in; ++k) {
        if (lit[k]) { lit[k] = 0; continue; }
        for (int64_t j = 0; j < hp; ++j) w0[k * hp + j] = decay * w0[k * hp + j];
      }
    }
    for (int64_t j = 0; j < net.sizes[1]; ++j) {
      T g = 0;
      for (int64_t i = 0; i < m; ++i) g += delta[0][i * hp + j];
      net.b[0][j] = net.b[0][j] - rate * g;
    }
  }
}

// numpy.nan_to_num: NaN -> 0, infinities -> the largest finite values.
template <typename T>
inline T finite(T v) {
  if (std::isnan(v)) return T(0);
  if (std::isinf(v)) return v > 0 ? std::numeric_limits<T>::max() : std::numeric_limits<T>::lowest();
  return v;
}

// One example's cost as the book's cost classes' fn compute it (`logs`: room for 3 n).
template <typename T>
T example_cost(const T* a, const T* y, int64_t n, int64_t quadratic, T* logs) {
  T total = 0;
  if (!quadratic) {  // sum(nan_to_num(-y ln a - (1 - y) ln(1 - a)))
    T* ln_a = logs;
    T* ln_1ma = logs + n;
    T* one_minus = logs + 2 * n;
    for (int64_t j = 0; j < n; ++j) one_minus[j] = T(1) - a[j];
    log_into<T>(a, n, ln_a);
    log_into<T>(one_minus, n, ln_1ma);
    for (int64_t j = 0; j < n; ++j)
      total += finite<T>(-y[j] * ln_a[j] - (T(1) - y[j]) * ln_1ma[j]);
    return total;
  }
  for (int64_t j = 0; j < n; ++j) total += (a[j] - y[j]) * (a[j] - y[j]);
  const T norm = std::sqrt(total);  // 0.5 * ||a - y|| ** 2
  return T(0.5) * (norm * norm);
}

// The output layer's activations for each of `rows` into `out`, the index of each one's
// largest (the first, as numpy.argmax) into `guess`, and, given one-hot `targets` and a
// cost (0 cross-entropy, 1 quadratic), each example's cost into `cost`.
template <typename T>
void outputs(const Net<T>& net, const int64_t* indptr, const int32_t* indices, const T* values,
             const int64_t* rows, int64_t count, T* out, int64_t* guess, const T* targets,
             int64_t quadratic, T* cost) {
  const int64_t L = net.layers, n_out = net.sizes[L];
  std::vector<std::vector<T>> act(L);
  for (int64_t l = 0; l < L; ++l) act[l].assign(net.width(l), T(0));
  std::vector<T> logs(3 * n_out);
  for (int64_t r = 0; r < count; ++r) {
    first_row<T>(net.w[0], net.hp, indptr, indices, values, rows[r], act[0].data());
    net.forward(1, act);
    const T* a = act[L - 1].data();
    std::memcpy(out + r * n_out, a, n_out * sizeof(T));
    int64_t best = 0;
    for (int64_t j = 0; j < n_out; ++j) {
      if (std::isnan(a[j])) { best = j; break; }
      if (a[j] > a[best]) best = j;
    }
    guess[r] = best;
    if (targets)
      cost[r] = example_cost<T>(a, targets + rows[r] * n_out, n_out, quadratic, logs.data());
  }
}

}  // namespace

#define CONVNET_BOOK_EXPORTS(T, SUFFIX)                                                    \
  extern "C" void ConvnetBookEpoch##SUFFIX(                                                \
      int64_t layers, const int64_t* sizes, int64_t hp, T* const* w, T* const* b,          \
      const int64_t* indptr, const int32_t* indices, const T* values, const T* targets,    \
      const int64_t* rows, int64_t n, int64_t mini_batch, double eta, double decay,        \
      int64_t quadratic) {                                                                 \
    Net<T> net(layers, sizes, hp, w, b);                                                   \
    epoch<T>(net, indptr, indices, values, targets, rows, n, mini_batch, T(eta), T(decay), \
             quadratic);                                                                   \
  }                                                                                        \
  extern "C" void ConvnetBookOutputs##SUFFIX(                                              \
      int64_t layers, const int64_t* sizes, int64_t hp, T* const* w, T* const* b,          \
      const int64_t* indptr, const int32_t* indices, const T* values, const int64_t* rows, \
      int64_t count, T* out, int64_t* guess, const T* targets, int64_t quadratic,          \
      T* cost) {                                                                           \
    const Net<T> net(layers, sizes, hp, w, b);                                             \
    outputs<T>(net, indptr, indices, values, rows, count, out, guess, targets, quadratic,  \
               cost);                                                                      \
  }

CONVNET_BOOK_EXPORTS(double, F64)
CONVNET_BOOK_EXPORTS(float, F32)

extern "C" int64_t ConvnetBookLanes(int64_t bytes) { return kBytes / bytes; }
