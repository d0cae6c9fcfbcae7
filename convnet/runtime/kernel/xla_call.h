// What every convnet kernel called by XLA (its FFI, plain C API) needs: errors, buffers,
// attributes, the stages other than execution, and work shared over XLA's thread pool.
//
// The binding uses XLA's plain C API (c_api.h), not its C++ wrapper (ffi.h): the wrapper's
// templates took ~3 s of the ~3.5 s build, which a user's first run would wait for.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/c_api.h"

namespace xla_call {

inline XLA_FFI_Error* Fail(const XLA_FFI_Api* api, const char* message) {
  XLA_FFI_Error_Create_Args args = {XLA_FFI_Error_Create_Args_STRUCT_SIZE, nullptr, message,
                                    XLA_FFI_Error_Code_INVALID_ARGUMENT};
  return api->XLA_FFI_Error_Create(&args);
}

// The int64 scalar attribute `index` (XLA sorts attributes by name).
inline bool Attribute(const XLA_FFI_Attrs& attrs, int64_t index, const char* name,
                      int64_t* value) {
  if (index >= attrs.size || attrs.types[index] != XLA_FFI_AttrType_SCALAR) return false;
  const XLA_FFI_ByteSpan* key = attrs.names[index];
  const auto* scalar = static_cast<const XLA_FFI_Scalar*>(attrs.attrs[index]);
  if (key->len != std::strlen(name) || std::memcmp(key->ptr, name, key->len) != 0 ||
      scalar->dtype != XLA_FFI_DataType_S64)
    return false;
  *value = *static_cast<const int64_t*>(scalar->value);
  return true;
}

inline const XLA_FFI_Buffer* Float32Buffer(void* buffer, int64_t rank) {
  const auto* b = static_cast<const XLA_FFI_Buffer*>(buffer);
  return b->dtype == XLA_FFI_DataType_F32 && b->rank == rank ? b : nullptr;
}

inline const XLA_FFI_Buffer* Int32Buffer(void* buffer, int64_t rank) {
  const auto* b = static_cast<const XLA_FFI_Buffer*>(buffer);
  return b->dtype == XLA_FFI_DataType_S32 && b->rank == rank ? b : nullptr;
}

// The metadata query and the stages other than execution: nothing to do. Returns true
// when the call is answered.
inline bool Answered(XLA_FFI_CallFrame* frame) {
  if (frame->extension_start != nullptr &&
      frame->extension_start->type == XLA_FFI_Extension_Metadata) {
    auto* metadata = reinterpret_cast<XLA_FFI_Metadata_Extension*>(frame->extension_start)->metadata;
    metadata->api_version = {XLA_FFI_Api_Version_STRUCT_SIZE, nullptr, XLA_FFI_API_MAJOR,
                             XLA_FFI_API_MINOR};
    metadata->traits = 0;
    metadata->state_type_id = XLA_FFI_UNKNOWN_TYPE_ID;
    return true;
  }
  return frame->stage != XLA_FFI_ExecutionStage_EXECUTE;
}

inline int64_t Threads(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx) {
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

// Items are claimed a chunk at a time by the calling thread and by helpers on XLA's
// thread pool; the caller never waits on a helper that has not started, so a busy or
// single-thread pool cannot deadlock it. `item(i, scratch)` does item i, writing only
// item i's own outputs: results never depend on which thread did what.
struct Tasks {
  int64_t n = 0, chunk = 1, scratch = 0;
  std::function<void(int64_t, float*)> item;
  std::atomic<int64_t> next{0}, done{0};

  virtual ~Tasks() = default;

  void Run() {
    std::vector<float> buffer(scratch);
    for (;;) {
      const int64_t start = next.fetch_add(chunk);
      if (start >= n) return;
      const int64_t stop = std::min(n, start + chunk);
      for (int64_t i = start; i < stop; ++i) item(i, buffer.data());
      done.fetch_add(stop - start);
    }
  }

  void Wait() {
    while (done.load() < n) std::this_thread::yield();
  }
};

// A helper's task: owns one reference to the shared work.
inline void Help(void* data) {
  auto* tasks = static_cast<std::shared_ptr<Tasks>*>(data);
  (*tasks)->Run();
  delete tasks;
}

// Share the items out over XLA's thread pool, take part, and wait for all of them.
inline void Launch(const XLA_FFI_Api* api, XLA_FFI_ExecutionContext* ctx,
                   std::shared_ptr<Tasks> tasks) {
  const int64_t threads = Threads(api, ctx);
  tasks->chunk = std::max<int64_t>(1, tasks->n / (4 * threads));
  for (int64_t t = 1; t < std::min(threads, tasks->n); ++t) {
    auto* task = new std::shared_ptr<Tasks>(tasks);
    XLA_FFI_ThreadPool_Schedule_Args args = {XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE,
                                             nullptr, ctx, Help, task};
    if (XLA_FFI_Error* error = api->XLA_FFI_ThreadPool_Schedule(&args)) {
      XLA_FFI_Error_Destroy_Args destroy = {XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, nullptr,
                                            error};
      api->XLA_FFI_Error_Destroy(&destroy);
      delete task;  // no pool: this thread does the work
    }
  }
  tasks->Run();
  tasks->Wait();
}

}  // namespace xla_call
