// The native kernels of int8_cpu.cpp as torch operators (namespace compresslab_native), so a
// decode-sized call pays torch's C++ dispatcher (under 1 us) instead of the Python around a
// ctypes call: argument checks, output allocation, thread counts and the call itself took
// 4-5 us a layer, as much as a 256-wide layer's kernel. The kernels themselves stay in the
// ctypes library, compiled per instruction set; cpu.py hands their addresses to
// set_kernels whenever it loads one, so this file is compiled once per torch version.
// Every operator converts its inputs to the kernel's dtypes and layout (no copy where they
// already are) and computes the same thread counts as cpu.py, from the constants cpu.py
// passes to set_policy.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

namespace {

using Wo8Fn = void (*)(const float*, const int8_t*, const float*, const float*, float*, int64_t,
                       int64_t, int64_t, int);
using Wo4Fn = void (*)(const float*, const uint8_t*, const uint16_t*, const uint8_t*,
                       const float*, float*, int64_t, int64_t, int64_t, int64_t, int64_t, int);
using W8a8Fn = void (*)(const float*, float, const int8_t*, const float*, const float*, float*,
                        int64_t, int64_t, int64_t, int, int);
using LlmFn = int64_t (*)(const float*, float, const int8_t*, const float*, const float*, float*,
                          int64_t, int64_t, int64_t, int, int);

Wo8Fn wo8 = nullptr;
Wo4Fn wo4 = nullptr;
W8a8Fn w8a8 = nullptr;
LlmFn llm = nullptr;
int64_t decode_m = 4, decode_min_weights = 1 << 18, parallel_min_work = 1 << 21;

void set_kernels(int64_t wo8_at, int64_t wo4_at, int64_t w8a8_at, int64_t llm_at) {
  wo8 = reinterpret_cast<Wo8Fn>(wo8_at);
  wo4 = reinterpret_cast<Wo4Fn>(wo4_at);
  w8a8 = reinterpret_cast<W8a8Fn>(w8a8_at);
  llm = reinterpret_cast<LlmFn>(llm_at);
}

void set_policy(int64_t dm, int64_t dmw, int64_t pmw) {
  decode_m = dm, decode_min_weights = dmw, parallel_min_work = pmw;
}

// cpu._threads and cpu._matmul_threads
int threads(int64_t work) {
  return work >= parallel_min_work ? std::max(1, at::get_num_threads()) : 1;
}
int matmul_threads(int64_t m, int64_t n, int64_t k) {
  if (m <= decode_m && n * k >= decode_min_weights) return std::max(1, at::get_num_threads());
  return threads(m * n * k);
}

// ``t`` as a contiguous ``type`` tensor; no dispatcher call where it is one already.
at::Tensor as(const at::Tensor& t, at::ScalarType type) {
  if (t.scalar_type() == type && t.is_contiguous()) return t;
  return t.to(type).contiguous();
}

const float* bias_ptr(const std::optional<at::Tensor>& b, at::Tensor& keep) {
  if (!b.has_value()) return nullptr;
  keep = as(*b, at::kFloat);
  return keep.data_ptr<float>();
}

// x (..., K) as contiguous float32, its rows, and the (..., N) float32 output.
struct Rows {
  at::Tensor x, out;
  int64_t m, k;
};
Rows rows(const at::Tensor& x, int64_t n) {
  TORCH_CHECK(x.device().is_cpu(), "compresslab_native: a CPU tensor is expected");
  Rows r;
  r.x = as(x, at::kFloat);
  r.k = r.x.size(-1);
  r.m = r.k > 0 ? r.x.numel() / r.k : 0;
  auto sizes = r.x.sizes().vec();
  sizes.back() = n;
  r.out = at::empty(sizes, r.x.options());
  return r;
}

// An int8-rows call's tensors: x's rows and output, the int8 weight and its float scales,
// the bias (null or float32), all kept alive for the kernel.
struct Int8Call {
  Rows r;
  at::Tensor w, ws, bias_keep;
  const float* bias;
  int64_t n;
};
Int8Call int8_call(const at::Tensor& x, const at::Tensor& w, const at::Tensor& ws,
                   const std::optional<at::Tensor>& bias) {
  Int8Call c;
  c.n = w.size(0);
  c.r = rows(x, c.n);
  c.w = as(w, at::kChar);
  c.ws = as(ws, at::kFloat);
  c.bias = bias_ptr(bias, c.bias_keep);
  return c;
}

at::Tensor int8_weight_only(const at::Tensor& x, const at::Tensor& w, const at::Tensor& ws,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(wo8 != nullptr, "compresslab_native: kernels not set");
  Int8Call c = int8_call(x, w, ws, bias);
  wo8(c.r.x.data_ptr<float>(), c.w.data_ptr<int8_t>(), c.ws.data_ptr<float>(), c.bias,
      c.r.out.data_ptr<float>(), c.r.m, c.n, c.r.k, matmul_threads(c.r.m, c.n, c.r.k));
  return c.r.out;
}

at::Tensor int4_weight_only(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                            const at::Tensor& zero, int64_t group,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(wo4 != nullptr, "compresslab_native: kernels not set");
  const int64_t n = w.size(0), kp = 2 * w.size(1);
  Rows r = rows(x, n);
  at::Tensor wc = as(w, at::kByte), sc = as(scale, at::kHalf), zc = as(zero, at::kByte), bk;
  wo4(r.x.data_ptr<float>(), wc.data_ptr<uint8_t>(),
      reinterpret_cast<const uint16_t*>(sc.data_ptr<at::Half>()), zc.data_ptr<uint8_t>(),
      bias_ptr(bias, bk), r.out.data_ptr<float>(), r.m, n, r.k, kp, group,
      matmul_threads(r.m, n, r.k));
  return r.out;
}

at::Tensor w8a8_linear(const at::Tensor& x, double static_scale, const at::Tensor& w,
                       const at::Tensor& ws, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(w8a8 != nullptr, "compresslab_native: kernels not set");
  Int8Call c = int8_call(x, w, ws, bias);
  w8a8(c.r.x.data_ptr<float>(), static_cast<float>(static_scale), c.w.data_ptr<int8_t>(),
       c.ws.data_ptr<float>(), c.bias, c.r.out.data_ptr<float>(), c.r.m, c.n, c.r.k,
       threads(16 * c.r.m * c.r.k), matmul_threads(c.r.m, c.n, c.r.k));
  return c.r.out;
}

at::Tensor llm_int8(const at::Tensor& x, double threshold, const at::Tensor& w,
                    const at::Tensor& ws, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(llm != nullptr, "compresslab_native: kernels not set");
  Int8Call c = int8_call(x, w, ws, bias);
  const int64_t done = llm(c.r.x.data_ptr<float>(), static_cast<float>(threshold),
                           c.w.data_ptr<int8_t>(), c.ws.data_ptr<float>(), c.bias,
                           c.r.out.data_ptr<float>(), c.r.m, c.n, c.r.k,
                           threads(16 * c.r.m * c.r.k), matmul_threads(c.r.m, c.n, c.r.k));
  TORCH_CHECK(done >= 0, "the fused LLM.int8() kernel needs AVX-512 VNNI");
  return c.r.out;
}

}  // namespace

TORCH_LIBRARY(compresslab_native, m) {
  m.def("set_kernels(int wo8, int wo4, int w8a8, int llm) -> ()", &set_kernels);
  m.def("set_policy(int decode_m, int decode_min_weights, int parallel_min_work) -> ()",
        &set_policy);
  m.def("int8_weight_only(Tensor x, Tensor w, Tensor ws, Tensor? bias) -> Tensor",
        &int8_weight_only);
  m.def("int4_weight_only(Tensor x, Tensor w, Tensor scale, Tensor zero, int group, "
        "Tensor? bias) -> Tensor",
        &int4_weight_only);
  m.def("w8a8_linear(Tensor x, float static_scale, Tensor w, Tensor ws, Tensor? bias) -> Tensor",
        &w8a8_linear);
  m.def("llm_int8(Tensor x, float threshold, Tensor w, Tensor ws, Tensor? bias) -> Tensor",
        &llm_int8);
}
