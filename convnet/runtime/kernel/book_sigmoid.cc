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
#include <utility>
#include <vector>

namespace {

constexpr int kBytes = 64;  // one vector: 8 doubles or 16 floats (two AVX2 registers)
// A forward pass over a data set takes the first layer's inputs in chunks of at most this
// many bytes of weights, kBlock examples at a time: each chunk is read from L2 once per
// block, and larger chunks make fewer, longer tasks (benchmarks/RESULTS.md, issue 29).
constexpr int64_t kChunkBytes = 64 * 1024;
constexpr int64_t kBlock = 64;
constexpr int kGroup = 4;  // examples whose dense layers are summed at once

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

// One example's pixels p..end of one chunk of inputs, to be added to its sums z.
struct Task {
  int64_t p, end;
  int64_t z;  // the example's row of sums
};

// The tasks' terms added to their sums, NB vectors from column j0, G tasks in flight at
// once: each sum is one chain of dependent multiply-adds (in its pixels' order), so G
// independent chains keep the core's multiply-add units busy while each waits for its
// last result. A slot whose task ends takes the next; the last few run alone. (Every
// slot's index is a constant, so that its sums stay in registers.)
template <typename T, int NB, int G>
struct Streamer {
  typedef typename Vec<T>::type V;
  static constexpr int L = Vec<T>::lanes;
  const T* const* weights;  // weights[k]: input k's weights from column j0
  int64_t hp, j0;
  const int32_t* indices;
  const T* values;
  const Task* tasks;
  int64_t n;
  T* z;
  int64_t next = 0;

  template <int g>
  void load(V (&acc)[G][NB], int64_t (&p)[G], int64_t (&end)[G], int64_t (&row)[G]) {
    p[g] = tasks[next].p;
    end[g] = tasks[next].end;
    row[g] = tasks[next].z * hp + j0;
    ++next;
    for (int b = 0; b < NB; ++b) std::memcpy(&acc[g][b], z + row[g] + b * L, sizeof(V));
  }

  template <int g>
  void store(const V (&acc)[G][NB], const int64_t (&row)[G]) {
    for (int b = 0; b < NB; ++b) std::memcpy(z + row[g] + b * L, &acc[g][b], sizeof(V));
  }

  template <int g>
  void step(V (&acc)[G][NB], int64_t (&p)[G]) {
    const T* w = weights[indices[p[g]]];
    const T v = values[p[g]];
    for (int b = 0; b < NB; ++b) {
      V wv;
      std::memcpy(&wv, w + b * L, sizeof(V));
      acc[g][b] = fused(acc[g][b], wv, v);
    }
    ++p[g];
  }

  // One step of slot g; false once the slot's task ended and no task is left.
  template <int g>
  bool advance(V (&acc)[G][NB], int64_t (&p)[G], int64_t (&end)[G], int64_t (&row)[G]) {
    step<g>(acc, p);
    if (__builtin_expect(p[g] < end[g], 1)) return true;
    store<g>(acc, row);
    if (next < n) {
      load<g>(acc, p, end, row);
      return true;
    }
    end[g] = -1;  // idle
    return false;
  }

  template <int g>
  void finish(V (&acc)[G][NB], int64_t (&p)[G], int64_t (&end)[G], int64_t (&row)[G]) {
    if (end[g] < 0) return;
    while (p[g] < end[g]) step<g>(acc, p);
    store<g>(acc, row);
  }

  template <size_t... g>
  void run(std::index_sequence<g...>) {
    V acc[G][NB];
    int64_t p[G], end[G], row[G];
    if (n >= G) {
      (load<g>(acc, p, end, row), ...);
      bool full = true;
      while (full) full = (advance<g>(acc, p, end, row) & ...);
      (finish<g>(acc, p, end, row), ...);
    }
    while (next < n) {  // fewer tasks than slots
      load<0>(acc, p, end, row);
      finish<0>(acc, p, end, row);
    }
  }
};

// The tasks' terms for every column of the sums; `weights[jb][k]`: input k's weights from
// column jb * 4 vectors (a table, so that a step reads an address, not computes one).
template <typename T, int G>
void stream(const std::vector<std::vector<const T*>>& weights, int64_t hp,
            const int32_t* indices, const T* values, const Task* tasks, int64_t n, T* z) {
  constexpr int L = Vec<T>::lanes;
  int64_t j0 = 0;
  size_t jb = 0;
  for (; j0 + 4 * L <= hp; j0 += 4 * L, ++jb)
    Streamer<T, 4, G>{weights[jb].data(), hp, j0, indices, values, tasks, n, z}.run(std::make_index_sequence<G>());
  switch ((hp - j0) / L) {
    case 3: Streamer<T, 3, G>{weights[jb].data(), hp, j0, indices, values, tasks, n, z}.run(std::make_index_sequence<G>()); break;
    case 2: Streamer<T, 2, G>{weights[jb].data(), hp, j0, indices, values, tasks, n, z}.run(std::make_index_sequence<G>()); break;
    case 1: Streamer<T, 1, G>{weights[jb].data(), hp, j0, indices, values, tasks, n, z}.run(std::make_index_sequence<G>()); break;
    default: break;
  }
}

// How many inputs (a power of two, as a shift) a chunk of the first layer's weights holds.
inline int64_t chunk_shift(int64_t row_bytes) {
  int64_t shift = 0;
  while ((row_bytes << (shift + 1)) <= kChunkBytes) ++shift;
  return shift;
}

// z (m rows of width hp) = the first layer's sums for m examples, the inputs taken in
// chunks (kChunkBytes): each chunk's weights are read from L2 once per
// block of examples, not once per lit pixel. `bounds[r * chunks + c]` is where row r's
// pixels of chunk c start (the next entry: where they end). Each sum still adds its
// pixels in increasing order.
template <typename T>
void first_rows(const std::vector<std::vector<const T*>>& weights, int64_t hp,
                const int64_t* bounds, int64_t chunks, const int32_t* indices, const T* values,
                const int64_t* rows, int64_t m, std::vector<Task>& tasks, T* z) {
  std::fill(z, z + m * hp, T(0));
  for (int64_t c = 0; c < chunks; ++c) {
    tasks.clear();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t* at = bounds + rows[i] * chunks + c;
      if (at[1] > at[0]) tasks.push_back(Task{at[0], at[1], i});
    }
    stream<T, 4>(weights, hp, indices, values, tasks.data(), static_cast<int64_t>(tasks.size()), z);
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

  // Each input's column of wt[l] padded to whole vectors (zeros), so that a layer's sums
  // stay in registers while its inputs stream by.
  static int64_t padded(int64_t n) { return (n + Vec<T>::lanes - 1) / Vec<T>::lanes * Vec<T>::lanes; }

  void transpose(int64_t l) {
    const int64_t rows = sizes[l + 1], cols = sizes[l], rp = padded(rows);
    wt[l].assign(rp * cols, T(0));
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t k = 0; k < cols; ++k) wt[l][k * rp + j] = w[l][j * cols + k];
  }

  // The address of each input's weights in w[0], from column 0, 4 vectors, 8 vectors, ...
  std::vector<std::vector<const T*>> first_rows() const {
    std::vector<std::vector<const T*>> weights;
    for (int64_t j0 = 0; j0 < hp; j0 += 4 * Vec<T>::lanes) {
      weights.emplace_back(sizes[0]);
      for (int64_t k = 0; k < sizes[0]; ++k) weights.back()[k] = w[0] + k * hp + j0;
    }
    return weights;
  }

  // act[l]: the activations of layer l + 1, for `count` examples, rows of width(l).
  int64_t width(int64_t l) const { return l == 0 ? hp : sizes[l + 1]; }

  // The activations of a block of m examples (the first layer's sums already in act[0]).
  void forward(int64_t m, std::vector<std::vector<T>>& act) const {
    std::vector<T> sums(kGroup * padded(*std::max_element(sizes + 1, sizes + layers + 1)));
    for (int64_t i = 0; i < m; ++i) {
      T* a0 = act[0].data() + i * hp;
      sigmoid_add<T>(a0, b[0], sizes[1], a0);
    }
    for (int64_t l = 1; l < layers; ++l) {
      const int64_t rows = sizes[l + 1], rp = padded(rows), in = width(l - 1);
      for (int64_t i = 0; i < m; i += kGroup) {
        const T* x = act[l - 1].data() + i * in;
        if (i + kGroup <= m) dense<kGroup>(l, x, in, sums.data());
        else for (int64_t e = i; e < m; ++e) dense<1>(l, x + (e - i) * in, in, sums.data() + (e - i) * rp);
        for (int64_t e = i; e < std::min(m, i + kGroup); ++e)
          sigmoid_add<T>(sums.data() + (e - i) * rp, b[l], rows, act[l].data() + e * width(l));
      }
    }
  }

  // The sums of layer l for G examples (inputs x, rows of width `in`) into sums (rows of
  // the padded width), G examples at once so that their chains of additions overlap.
  template <int G>
  void dense(int64_t l, const T* x, int64_t in, T* sums) const {
    constexpr int L = Vec<T>::lanes;
    const int64_t rp = padded(sizes[l + 1]);
    int64_t j0 = 0;
    for (; j0 + 2 * L <= rp; j0 += 2 * L) dense_sums<2, G>(wt[l].data(), rp, j0, x, in, sizes[l], sums);
    if (j0 < rp) dense_sums<1, G>(wt[l].data(), rp, j0, x, in, sizes[l], sums);
  }

  // sums[g][j0 ..] = sum over k in order of wt column k times x[g][k], NB vectors of G
  // examples in registers (each product rounded before its sum, as NumPy's dot does).
  template <int NB, int G>
  static void dense_sums(const T* wt, int64_t rp, int64_t j0, const T* x, int64_t in,
                         int64_t cols, T* sums) {
    typedef typename Vec<T>::type V;
    constexpr int L = Vec<T>::lanes;
    V acc[G][NB];
    for (int g = 0; g < G; ++g)
      for (int b = 0; b < NB; ++b) acc[g][b] = V{};
    for (int64_t k = 0; k < cols; ++k) {
      const T* column = wt + k * rp + j0;
      V wv[NB];
      for (int b = 0; b < NB; ++b) std::memcpy(&wv[b], column + b * L, sizeof(V));
      for (int g = 0; g < G; ++g) {
        const T xk = x[g * in + k];
        for (int b = 0; b < NB; ++b) acc[g][b] = acc[g][b] + wv[b] * xk;
      }
    }
    for (int g = 0; g < G; ++g)
      for (int b = 0; b < NB; ++b) std::memcpy(sums + g * rp + j0 + b * L, &acc[g][b], sizeof(V));
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
  std::vector<Task> tasks;
  const std::vector<std::vector<const T*>> weights = net.first_rows();
  std::vector<char> lit(n_in, 0);
  std::vector<T> gradient(*std::max_element(net.sizes + 1, net.sizes + L + 1));
  for (int64_t start = 0; start < n; start += mini_batch) {
    const int64_t m = std::min(mini_batch, n - start);
    const T rate = eta / T(m);
    block.fill(indptr, indices, values, rows + start, m);
    tasks.clear();
    for (int64_t i = 0; i < m; ++i) {
      const int64_t row = rows[start + i];
      if (indptr[row + 1] > indptr[row]) tasks.push_back(Task{indptr[row], indptr[row + 1], i});
    }
    std::fill(act[0].begin(), act[0].begin() + m * hp, T(0));
    stream<T, 4>(weights, hp, indices, values, tasks.data(), static_cast<int64_t>(tasks.size()),
                 act[0].data());
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

// One example's results: its output activations `a` into out row r, the index of the
// largest (the first, as numpy.argmax) into guess[r], and, given one-hot `targets`, its
// cost into cost[r] (`logs`: room for 3 n_out).
template <typename T>
void output_row(const T* a, int64_t n_out, int64_t r, const int64_t* rows, T* out,
                int64_t* guess, const T* targets, int64_t quadratic, T* cost, T* logs) {
  std::memcpy(out + r * n_out, a, n_out * sizeof(T));
  int64_t best = 0;
  for (int64_t j = 0; j < n_out; ++j) {
    if (std::isnan(a[j])) { best = j; break; }
    if (a[j] > a[best]) best = j;
  }
  guess[r] = best;
  if (targets) cost[r] = example_cost<T>(a, targets + rows[r] * n_out, n_out, quadratic, logs);
}

// The output layer's activations for each of `rows` into `out`, the index of each one's
// largest into `guess`, and, given one-hot `targets` and a cost (0 cross-entropy, 1
// quadratic), each example's cost into `cost`; kBlock examples at a time.
template <typename T>
void outputs(const Net<T>& net, const int64_t* bounds, int64_t chunks, const int32_t* indices,
             const T* values, const int64_t* rows, int64_t count, T* out, int64_t* guess,
             const T* targets, int64_t quadratic, T* cost) {
  const int64_t L = net.layers, n_out = net.sizes[L], width = net.width(L - 1);
  std::vector<std::vector<T>> act(L);
  for (int64_t l = 0; l < L; ++l) act[l].assign(kBlock * net.width(l), T(0));
  std::vector<T> logs(3 * n_out);
  std::vector<Task> tasks;
  const std::vector<std::vector<const T*>> weights = net.first_rows();
  for (int64_t r0 = 0; r0 < count; r0 += kBlock) {
    const int64_t m = std::min(kBlock, count - r0);
    first_rows<T>(weights, net.hp, bounds, chunks, indices, values, rows + r0, m, tasks,
                  act[0].data());
    net.forward(m, act);
    for (int64_t i = 0; i < m; ++i)
      output_row<T>(act[L - 1].data() + i * width, n_out, r0 + i, rows, out, guess, targets,
                    quadratic, cost, logs.data());
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
      const int64_t* bounds, int64_t chunks, const int32_t* indices, const T* values,      \
      const int64_t* rows, int64_t count, T* out, int64_t* guess, const T* targets,        \
      int64_t quadratic, T* cost) {                                                        \
    const Net<T> net(layers, sizes, hp, w, b);                                             \
    outputs<T>(net, bounds, chunks, indices, values, rows, count, out, guess, targets,     \
               quadratic, cost);                                                           \
  }

CONVNET_BOOK_EXPORTS(double, F64)
CONVNET_BOOK_EXPORTS(float, F32)

extern "C" int64_t ConvnetBookLanes(int64_t bytes) { return kBytes / bytes; }

// log2 of the inputs per chunk in a forward pass over a data set, for rows of `row_bytes`.
extern "C" int64_t ConvnetBookChunkShift(int64_t row_bytes) { return chunk_shift(row_bytes); }
