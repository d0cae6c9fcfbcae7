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
// The binding uses XLA's plain C API (c_api.h), not its C++ wrapper (ffi.h): the wrapper's
// templates took ~3 s of the ~3.5 s build, which a user's first run would wait for.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/c_api.h"

namespace {

// 8-lane (256-bit) vectors: as fast as 512-bit ones in the products measured here, and
// available on every x86-64 CPU with AVX2 as well.
constexpr int kLanes = 8;
typedef float vec __attribute__((vector_size(4 * kLanes)));
#ifdef __AVX512F__
constexpr int kAccumulators = 24;  // of 32 vector registers
#else
constexpr int kAccumulators = 12;  // of 16
#endif

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

void OneImage(const Shape& s, const int64_t* tap, const float* x, const float* w, float* out,
              float* conv) {
  for (int64_t g = 0; g < s.fpad; g += kMaxVectors * kLanes) {
    const int64_t vectors = std::min<int64_t>(kMaxVectors, (s.fpad - g) / kLanes);
    kConvolve[vectors](x, s.w, s.oh, s.ow, tap, s.K, w + g, conv + g, s.fpad);
  }
  // Max-pooling, vectorised over the filters of each position.
  const int64_t vectors = s.fpad / kLanes;
  for (int64_t i = 0; i < s.qh; ++i)
    for (int64_t j = 0; j < s.qw; ++j) {
      float* best = conv + s.P * s.fpad;  // a spare row after the products
      for (int64_t v = 0; v < vectors; ++v) {
        vec m;
        std::memcpy(&m, conv + (i * s.ph * s.ow + j * s.pw) * s.fpad + v * kLanes, sizeof(vec));
        for (int64_t a = 0; a < s.ph; ++a)
          for (int64_t b = 0; b < s.pw; ++b) {
            vec e;
            std::memcpy(&e, conv + ((i * s.ph + a) * s.ow + j * s.pw + b) * s.fpad + v * kLanes,
                        sizeof(vec));
            m = m > e ? m : e;
          }
        std::memcpy(best + v * kLanes, &m, sizeof(vec));
      }
      for (int64_t f = 0; f < s.f; ++f) out[(f * s.qh + i) * s.qw + j] = best[f];
    }
}

// Images are claimed a chunk at a time by the calling thread and by helpers on XLA's
// thread pool; the caller never waits on a helper that has not started, so a busy or
// single-thread pool cannot deadlock it.
struct Work {
  Shape s;
  const float* images;
  const float* w;
  float* out;
  int64_t n, chunk;
  std::atomic<int64_t> next{0}, done{0};

  std::vector<int64_t> tap;  // offset of each kernel tap (c, a, b) in an image

  void Run() {
    std::vector<float> conv((s.P + 1) * s.fpad);
    for (;;) {
      const int64_t start = next.fetch_add(chunk);
      if (start >= n) return;
      const int64_t stop = std::min(n, start + chunk);
      for (int64_t i = start; i < stop; ++i)
        OneImage(s, tap.data(), images + i * s.c * s.h * s.w, w, out + i * s.f * s.qh * s.qw,
                 conv.data());
      done.fetch_add(stop - start);
    }
  }
};

XLA_FFI_Error* Fail(const XLA_FFI_Api* api, const char* message) {
  XLA_FFI_Error_Create_Args args = {XLA_FFI_Error_Create_Args_STRUCT_SIZE, nullptr, message,
                                    XLA_FFI_Error_Code_INVALID_ARGUMENT};
  return api->XLA_FFI_Error_Create(&args);
}

// The int64 scalar attribute `index` (XLA sorts attributes by name: kh, kw, ph, pw).
bool Attribute(const XLA_FFI_Attrs& attrs, int64_t index, const char* name, int64_t* value) {
  if (index >= attrs.size || attrs.types[index] != XLA_FFI_AttrType_SCALAR) return false;
  const XLA_FFI_ByteSpan* key = attrs.names[index];
  const auto* scalar = static_cast<const XLA_FFI_Scalar*>(attrs.attrs[index]);
  if (key->len != std::strlen(name) || std::memcmp(key->ptr, name, key->len) != 0 ||
      scalar->dtype != XLA_FFI_DataType_S64)
    return false;
  *value = *static_cast<const int64_t*>(scalar->value);
  return true;
}

const XLA_FFI_Buffer* Float32Buffer(void* buffer, int64_t rank) {
  const auto* b = static_cast<const XLA_FFI_Buffer*>(buffer);
  return b->dtype == XLA_FFI_DataType_F32 && b->rank == rank ? b : nullptr;
}

int64_t Threads(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx) {
  int64_t threads = 1;
  XLA_FFI_ThreadPool_NumThreads_Args args = {XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE,
                                             nullptr, ctx, &threads};
  if (XLA_FFI_Error* error = api->XLA_FFI_ThreadPool_NumThreads(&args)) {
    XLA_FFI_Error_Destroy_Args destroy = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, nullptr, error};
    api->XLA_FFI_Error_Destroy(&destroy);
    return 1;
  }
  return std::max<int64_t>(1, threads);
}

// A helper's task: owns one reference to the shared work.
void Help(void* data) {
  auto* work = static_cast<std::shared_ptr<Work>*>(data);
  (*work)->Run();
  delete work;
}

}  // namespace

// args: images (n, c, h, w), weights (c*kh*kw, fpad); result: pooled (n, f, qh, qw).
extern "C" XLA_FFI_Error* ConvnetConvPool(XLA_FFI_CallFrame* frame) {
  const XLA_FFI_Api* api = frame->api;
  if (frame->extension_start != nullptr &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata) {
    auto* metadata = reinterpret_cast<XLA_FFI_Metadata_Extension*>(frame->extension_start)->metadata;
    metadata->api_version = {XLA_FFI_Api_Version_STRUCT_SIZE, nullptr, XLA_FFI_API_MAJOR,
                             XLA_FFI_API_MINOR};
    metadata->traits = 0;
    metadata->state_type_id = XLA_FFI_UNKNOWN_TYPE_ID;
    return nullptr;
  }
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return nullptr;
  if (frame->args.size != 2 || frame->rets.size != 1)
    return Fail(api, "conv_pool: expected 2 arguments and 1 result");
  const XLA_FFI_Buffer* images = Float32Buffer(frame->args.args[0], 4);
  const XLA_FFI_Buffer* weights = Float32Buffer(frame->args.args[1], 2);
  const XLA_FFI_Buffer* pooled = Float32Buffer(frame->rets.rets[0], 4);
  int64_t kh, kw, ph, pw;
  if (images == nullptr || weights == nullptr || pooled == nullptr)
    return Fail(api, "conv_pool: expected float32 images (4-D), weights (2-D), result (4-D)");
  if (frame->attrs.size != 4 || !Attribute(frame->attrs, 0, "kh", &kh) ||
      !Attribute(frame->attrs, 1, "kw", &kw) || !Attribute(frame->attrs, 2, "ph", &ph) ||
      !Attribute(frame->attrs, 3, "pw", &pw))
    return Fail(api, "conv_pool: expected int64 attributes kh, kw, ph, pw");
  const int64_t* d = images->dims;
  const int64_t* od = pooled->dims;
  Shape s{d[1], d[2], d[3], kh, kw, ph, pw, od[1], weights->dims[1], d[2] - kh + 1,
          d[3] - kw + 1, od[2], od[3], weights->dims[0], 0};
  s.P = s.oh * s.ow;
  if (kh < 1 || kw < 1 || ph < 1 || pw < 1 || s.oh < 1 || s.ow < 1 || od[0] != d[0] ||
      s.K != s.c * kh * kw || s.fpad % kLanes || s.fpad < s.f || s.qh != s.oh / ph ||
      s.qw != s.ow / pw)
    return Fail(api, "conv_pool: inconsistent shapes");

  auto work = std::make_shared<Work>();
  work->s = s;
  work->images = static_cast<const float*>(images->data);
  work->w = static_cast<const float*>(weights->data);
  work->out = static_cast<float*>(pooled->data);
  work->n = d[0];
  for (int64_t ch = 0; ch < s.c; ++ch)
    for (int64_t a = 0; a < kh; ++a)
      for (int64_t b = 0; b < kw; ++b) work->tap.push_back((ch * s.h + a) * s.w + b);
  const int64_t threads = Threads(api, frame->ctx);
  work->chunk = std::max<int64_t>(1, work->n / (4 * threads));
  for (int64_t t = 1; t < std::min(threads, work->n); ++t) {
    auto* task = new std::shared_ptr<Work>(work);
    XLA_FFI_ThreadPool_Schedule_Args args = {XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE,
                                             nullptr, frame->ctx, Help, task};
    if (XLA_FFI_Error* error = api->XLA_FFI_ThreadPool_Schedule(&args)) {
      XLA_FFI_Error_Destroy_Args destroy = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, nullptr,
                                            error};
      api->XLA_FFI_Error_Destroy(&destroy);
      delete task;  // no pool: this thread does the work
    }
  }
  work->Run();
  while (work->done.load() < work->n) std::this_thread::yield();
  return nullptr;
}
