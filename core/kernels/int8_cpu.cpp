// CompressLab CPU kernels for x86-64 with AVX2 + FMA + F16C (AVX-512 and VNNI versions
// compiled in where the CPU has them): W8A8 linear, LLM.int8(), int8 and int4 weight-only
// linear, per-row activation quantization, GPTQ's column loop.
//
// A plain C ABI (no torch headers): core/kernels/cpu.py compiles this file once with g++
// into a cached shared library (a few seconds, against minutes for a torch extension)
// and calls it through ctypes with the tensors' data pointers. The plain-torch
// references in core/kernels/ref.py define what every function computes;
// tests/test_kernels.py holds them to it.
//
// Why our own code: on an AVX2 CPU without VNNI, torch._int_mm falls back to a slow
// generic loop, and oneDNN / FBGEMM multiply unsigned x signed bytes with vpmaddubsw,
// whose 16-bit pair sums saturate unless activations are cut to 7 bits. Widening both
// int8 operands to int16 and using vpmaddwd (16 multiply-adds, exact int32 sums) keeps
// the full 8-bit range and the result exact.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Blocking: a chunk of NC weight rows x KC columns (NC * KC bytes = 128 KiB) stays in L2
// while every MR-row panel of activations (MR * KC int16 = 16 KiB) sits in L1.
// Decode-sized batches (M <= 4) skip the K blocking: their activation rows fit in L1 anyway
// and one pass over each weight row streams best.
constexpr int64_t NC = 64;
constexpr int64_t KC = 2048;
constexpr int64_t SMALL_M = 4;

inline int64_t k_block(int64_t M, int64_t K) { return M <= SMALL_M ? K : std::min(K, KC); }

// Weight rows per parallel task: NC, or fewer where NC would leave a thread idle (a
// 64-row layer on two threads: two tasks of 32 rows; it had run on one thread).
inline int64_t row_chunk(int64_t N, int nt) {
  const int64_t per = (N + nt - 1) / std::max(1, nt);
  return std::max<int64_t>(8, std::min(NC, (per + 7) / 8 * 8));
}

// body(n0, n1) for every chunk of weight rows [n0, n1), the chunks spread over nt threads.
template <typename Body>
void over_row_chunks(int64_t N, int nt, const Body& body) {
  const int64_t nc = row_chunk(N, nt), chunks = (N + nc - 1) / nc;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) body(ch * nc, std::min(N, ch * nc + nc));
}

// ---------------------------------------------------------------- scratch

// A call's temporaries (codes, row sums, the int4 kernel's reordered x...) live in
// buffers kept per calling thread between calls, one per slot, up to SCRATCH_KEEP bytes
// each (larger ones are the call's own): no allocation, zeroing or first touch per call.
// LLM.int8() in one call at M = 16, K = N = 4096 with 4 outlier columns, old and new
// library in alternation in one process: 1.02 -> 0.82 ms (its copy of x and the codes
// are 256 KiB and 64 KiB); at M = 128, K = 256 no difference.
enum Slot { kCodes, kRowScales, kWeightSums, kOutlierWeights, kShifted, kRegular,
            kOutlierValues, kInt4X, kInt4XSums, kSlots };  // NOLINT
constexpr size_t SCRATCH_KEEP = size_t{16} << 20;

template <class T>
class Scratch {
 public:
  Scratch(Slot slot, size_t n) {
    const size_t bytes = std::max<size_t>(1, n * sizeof(T));
    std::vector<char>& buf = bytes <= SCRATCH_KEEP ? kept()[slot] : own_;
    if (buf.size() < bytes) buf.resize(bytes);
    data_ = reinterpret_cast<T*>(buf.data());
  }
  T* data() const { return data_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  static std::vector<char>* kept() {
    thread_local std::vector<char> bufs[kSlots];
    return bufs;
  }
  std::vector<char> own_;
  T* data_;
};

// ---------------------------------------------------------------- activation quantization

// Symmetric int8 quantization of each row of x (M, K), stored as int16 (the GEMM widens to
// int16 anyway). With static_scale <= 0: scale[m] = max|x_m| / 127 (1 for an all-zero
// row). q = round-half-even(x / scale) clamped to [-127, 127]: the arithmetic of
// ref.quantize_per_token, so both give the same integers.
template <typename T>
void quantize_rows_impl(const float* x, int64_t M, int64_t K, float static_scale, T* q,
                        float* scale, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const float* row = x + m * K;
    float s = static_scale;
    if (!(s > 0.0f)) {
      __m256 amax = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(row + k)));
      alignas(32) float buf[8];
      _mm256_store_ps(buf, amax);
      float a = 0.0f;
      for (float v : buf) a = std::max(a, v);
      for (; k < K; ++k) a = std::max(a, std::fabs(row[k]));
      s = a / 127.0f;
      if (!(s > 0.0f)) s = 1.0f;
    }
    scale[m] = s;
    const __m256 sv = _mm256_set1_ps(s);
    T* qrow = q + m * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      __m256 a = _mm256_div_ps(_mm256_loadu_ps(row + k), sv);
      __m256 b = _mm256_div_ps(_mm256_loadu_ps(row + k + 8), sv);
      a = _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      b = _mm256_round_ps(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      a = _mm256_min_ps(hi, _mm256_max_ps(lo, a));
      b = _mm256_min_ps(hi, _mm256_max_ps(lo, b));
      __m256i p = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
      p = _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));  // packs works per 128-bit lane
      if constexpr (sizeof(T) == 2) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qrow + k), p);
      } else {  // int8: pack again (values are in [-127, 127]), take the low byte halves
        __m256i b8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(p, p), _MM_SHUFFLE(3, 1, 2, 0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qrow + k), _mm256_castsi256_si128(b8));
      }
    }
    for (; k < K; ++k) {
      const float v = std::nearbyint(row[k] / s);
      qrow[k] = static_cast<T>(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
}

// ---------------------------------------------------------------- W8A8 GEMM

struct W8A8Args {
  const int16_t* x;  // (M, K) quantized activations
  const float* xs;   // (M,) activation scales
  const int8_t* w;   // (N, K) weights
  const float* ws;   // (N,) weight scales
  const float* bias; // (N,) or null
  int32_t* c;        // (M, N) partial sums when K is split in blocks, else null
  float* out;        // (M, N)
  int64_t M, N, K;
};

// One MR x NR tile of int32 dot products over columns [k0, k1): each widened weight
// vector is used MR times, each activation vector NR times.
template <int MR, int NR>
inline void w8a8_tile(const W8A8Args& a, int64_t m0, int64_t n0, int64_t k0, int64_t k1) {
  const int16_t* x = a.x + m0 * a.K;
  const int8_t* w = a.w + n0 * a.K;
  __m256i acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_si256();
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    __m256i xv[MR];
    for (int m = 0; m < MR; ++m)
      xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * a.K + k));
    for (int n = 0; n < NR; ++n) {
      const __m256i wv = _mm256_cvtepi8_epi16(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + n * a.K + k)));
      for (int m = 0; m < MR; ++m)
        acc[m][n] = _mm256_add_epi32(acc[m][n], _mm256_madd_epi16(xv[m], wv));
    }
  }
  const bool first = k0 == 0, last = k1 == a.K;
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      int32_t s = hsum_epi32(acc[m][n]);
      for (int64_t kk = k; kk < k1; ++kk)
        s += static_cast<int32_t>(x[m * a.K + kk]) * static_cast<int32_t>(w[n * a.K + kk]);
      const int64_t idx = (m0 + m) * a.N + n0 + n;
      if (!first) s += a.c[idx];
      if (!last) {
        a.c[idx] = s;
        continue;
      }
      const float v = static_cast<float>(s) * a.xs[m0 + m] * a.ws[n0 + n];
      a.out[idx] = a.bias ? v + a.bias[n0 + n] : v;
    }
}

#ifndef W8A8_MR
#define W8A8_MR 2
#endif
#ifndef W8A8_NR
#define W8A8_NR 4
#endif
#ifndef GEMV_NR
#define GEMV_NR 4
#endif

template <int MR, int NR>
inline void w8a8_row_panel(const W8A8Args& a, int64_t m0, int64_t n0, int64_t n1, int64_t k0,
                           int64_t k1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) w8a8_tile<MR, NR>(a, m0, n, k0, k1);
  for (; n < n1; ++n) w8a8_tile<MR, 1>(a, m0, n, k0, k1);
}

void w8a8_impl(const W8A8Args& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    const int64_t kc = k_block(a.M, a.K);
    for (int64_t k0 = 0; k0 < a.K; k0 += kc) {
      const int64_t k1 = std::min(a.K, k0 + kc);
      int64_t m = 0;
      for (; m + W8A8_MR <= a.M; m += W8A8_MR)
        w8a8_row_panel<W8A8_MR, W8A8_NR>(a, m, n0, n1, k0, k1);
      for (; m < a.M; ++m) w8a8_row_panel<1, GEMV_NR>(a, m, n0, n1, k0, k1);
    }
  });
}

// ---------------------------------------------------------------- int8 weight-only

struct WO8Args {
  const float* x;    // (M, K)
  const int8_t* w;   // (N, K)
  const float* ws;   // (N,)
  const float* bias; // (N,) or null
  float* out;        // (M, N)
  int64_t M, N, K;
};

template <int MR, int NR>
inline void wo8_tile(const WO8Args& a, int64_t m0, int64_t n0) {
  const float* x = a.x + m0 * a.K;
  const int8_t* w = a.w + n0 * a.K;
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= a.K; k += 8) {
    for (int n = 0; n < NR; ++n) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + n * a.K + k));
      const __m256 wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      for (int m = 0; m < MR; ++m)
        acc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * a.K + k), wv, acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      float s = hsum_ps(acc[m][n]);
      for (int64_t kk = k; kk < a.K; ++kk)
        s += x[m * a.K + kk] * static_cast<float>(w[n * a.K + kk]);
      s *= a.ws[n0 + n];
      a.out[(m0 + m) * a.N + n0 + n] = a.bias ? s + a.bias[n0 + n] : s;
    }
}

template <int MR>
inline void wo8_row_panel(const WO8Args& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) wo8_tile<MR, 4>(a, m0, n);
  for (; n < n1; ++n) wo8_tile<MR, 1>(a, m0, n);
}

void wo8_impl(const WO8Args& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    for (; m + 2 <= a.M; m += 2) wo8_row_panel<2>(a, m, n0, n1);
    for (; m < a.M; ++m) wo8_row_panel<1>(a, m, n0, n1);
  });
}

// ---------------------------------------------------------------- int4 weight-only

struct WO4Args {
  const float* xp;       // (M, KP) x with each 32-column chunk reordered: 16 even, 16 odd
  const float* xsum;     // (M, G) per-group sums of x (for the zero-point term)
  const uint8_t* w;      // (N, KP / 2) 4-bit codes, low nibble = even column
  const uint16_t* scale; // (N, G) float16 bits
  const uint8_t* zero;   // (N, G) zero points (codes)
  const float* bias;     // (N,) or null
  float* out;            // (M, N)
  int64_t M, N, KP, G, group;
};

// x in the order the kernel reads the codes. Narrow (32-column chunks): the 16 even columns
// first, then the 16 odd ones (the low nibbles of 16 packed bytes are the even columns, the
// high nibbles the odd ones). Wide (128-column chunks, AVX-512 with groups of a multiple of
// 128): 16 columns 8 j + i (j = 0..15) for i = 0..7, nibble i of each of 16 dwords.
void prepare_int4_x(const float* x, int64_t K, int64_t kp, int64_t group, bool wide, float* xp,
                    float* xsum) {
  const int64_t chunk = wide ? 128 : 32, ways = chunk / 16;  // ways: codes per 16 lanes
  for (int64_t c = 0; c + chunk <= kp; c += chunk)  // the kernel reads whole groups only
    for (int64_t i = 0; i < ways; ++i)
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t k = c + ways * j + i;
        xp[c + 16 * i + j] = k < K ? x[k] : 0.0f;
      }
  for (int64_t g = 0; g < kp / group; ++g) {
    float s = 0.0f;
    for (int64_t k = g * group; k < std::min(K, (g + 1) * group); ++k) s += x[k];
    xsum[g] = s;
  }
}

// Per group: integer-valued codes times x in float, then scale and zero applied once per
// group: sum_k (q - z) s x = s * (sum_k q x - z * sum_k x).
template <int MR, int NR>
inline void wo4_tile(const WO4Args& a, int64_t m0, int64_t n0) {
  const __m128i low4 = _mm_set1_epi8(0x0F);
  const int64_t ldw = a.KP / 2;
  float acc[MR][NR] = {};
  for (int64_t g = 0; g < a.G; ++g) {
    __m256 gacc[MR][NR];
    for (int m = 0; m < MR; ++m)
      for (int n = 0; n < NR; ++n) gacc[m][n] = _mm256_setzero_ps();
    for (int64_t c = g * a.group; c < (g + 1) * a.group; c += 32) {
      for (int n = 0; n < NR; ++n) {
        const __m128i b =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.w + (n0 + n) * ldw + c / 2));
        const __m128i lo = _mm_and_si128(b, low4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
        const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
        const __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
        const __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        for (int m = 0; m < MR; ++m) {
          const float* xm = a.xp + (m0 + m) * a.KP + c;
          __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(xm), w0, gacc[m][n]);
          t = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 8), w1, t);
          t = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 16), w2, t);
          gacc[m][n] = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 24), w3, t);
        }
      }
    }
    for (int n = 0; n < NR; ++n) {
      const float s = _cvtsh_ss(a.scale[(n0 + n) * a.G + g]);
      const float z = static_cast<float>(a.zero[(n0 + n) * a.G + g]);
      for (int m = 0; m < MR; ++m)
        acc[m][n] += s * (hsum_ps(gacc[m][n]) - z * a.xsum[(m0 + m) * a.G + g]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      a.out[(m0 + m) * a.N + n0 + n] = a.bias ? acc[m][n] + a.bias[n0 + n] : acc[m][n];
}

template <int MR>
inline void wo4_row_panel(const WO4Args& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) wo4_tile<MR, 2>(a, m0, n);
  for (; n < n1; ++n) wo4_tile<MR, 1>(a, m0, n);
}

void wo4_impl(const WO4Args& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) wo4_row_panel<4>(a, m, n0, n1);
    for (; m < a.M; ++m) wo4_row_panel<1>(a, m, n0, n1);
  });
}

// ---------------------------------------------------------------- AVX-512 weight-only
// Compiled where the CPU has AVX-512 F/BW (cpu.py passes -mavx512* only then); the AVX2
// kernels above stay for every other CPU. Decode-sized batches stream the weight once, so
// what matters is how few instructions turn each stored byte into float products.
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define CL_HAVE_AVX512 1

// int8: 16 codes sign-extended to 16 int32 lanes in one load, converted, one FMA; the
// per-row scale is applied once to the finished dot product. ACC accumulators per (row,
// column) pair hide the FMA latency: two in the small tiles, one in the 4 x 4 tile, whose
// 16 pairs are enough on their own.
template <int MR, int NR, int ACC = 2>
inline void wo8_tile_512(const WO8Args& a, int64_t m0, int64_t n0) {
  const float* x = a.x + m0 * a.K;
  const int8_t* w = a.w + n0 * a.K;
  __m512 acc[MR][NR][ACC];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      for (int j = 0; j < ACC; ++j) acc[m][n][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= a.K; k += 32) {
    for (int n = 0; n < NR; ++n) {
      const int8_t* wr = w + n * a.K + k;
      if ((k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + NR * a.K), _MM_HINT_T0);
      const __m512 w0 = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr))));
      const __m512 w1 = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + 16))));
      for (int m = 0; m < MR; ++m) {
        acc[m][n][0] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * a.K + k), w0, acc[m][n][0]);
        acc[m][n][ACC - 1] =
            _mm512_fmadd_ps(_mm512_loadu_ps(x + m * a.K + k + 16), w1, acc[m][n][ACC - 1]);
      }
    }
  }
  for (; k < a.K; k += 16) {  // the last K % 32 columns, masked (no reads past the row)
    const __mmask16 mk = static_cast<__mmask16>((1u << std::min<int64_t>(16, a.K - k)) - 1);
    for (int n = 0; n < NR; ++n) {
      const __m512 wv = _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, w + n * a.K + k)));
      for (int m = 0; m < MR; ++m)
        acc[m][n][0] =
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, x + m * a.K + k), wv, acc[m][n][0]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      __m512 v = acc[m][n][0];
      if (ACC == 2) v = _mm512_add_ps(v, acc[m][n][ACC - 1]);
      const float s = _mm512_reduce_add_ps(v) * a.ws[n0 + n];
      a.out[(m0 + m) * a.N + n0 + n] = a.bias ? s + a.bias[n0 + n] : s;
    }
}

template <int MR>
inline void wo8_row_panel_512(const WO8Args& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) wo8_tile_512<MR, 4>(a, m0, n);
  for (; n < n1; ++n) wo8_tile_512<MR, 1>(a, m0, n);
}

void wo8_impl_512(const WO8Args& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    // 4 rows of x against 4 weight rows: each converted weight vector feeds 4 rows, not
    // 2 (K = N = 4096: 1.71 against 2.02 ms at M = 16, 3.25 against 4.57 ms at M = 32)
    for (; m + 4 <= a.M; m += 4) {
      int64_t n = n0;
      for (; n + 4 <= n1; n += 4) wo8_tile_512<4, 4, 1>(a, m, n);
      for (; n < n1; ++n) wo8_tile_512<4, 1>(a, m, n);
    }
    for (; m + 2 <= a.M; m += 2) wo8_row_panel_512<2>(a, m, n0, n1);
    for (; m < a.M; ++m) wo8_row_panel_512<1>(a, m, n0, n1);
  });
}

// int4: per group a 16-entry table of the group's dequantized values, (j - zero) * scale
// for j = 0..15 (the reference's float32 arithmetic, so each weight is exactly the
// reference's), built once per group and row; 16 packed bytes widen to 16 int32 lanes and
// vpermps looks up the low nibble (it reads only an index's low 4 bits) and, after a
// 4-bit shift, the high nibble: no mask, no int->float conversion, no per-group sums.
// Both kernels prefetch the rows of a later tile (the hardware prefetcher alone left a
// single thread at about half the bytes ceiling, measured); the int4 kernel its scales and
// zero points too (0.266 -> 0.232 ms at M = 1, K = N = 4096, weights read from memory).
#ifndef WO4_NR1
#define WO4_NR1 8
#endif
// How far ahead the int4 kernel prefetches: two tiles (one tile measured 0.232 ms against
// 0.224 ms at M = 1, K = N = 4096 from memory; three tiles no better).
#ifndef WO4_PF_TILES
#define WO4_PF_TILES 2
#endif

// WIDE (groups of a multiple of 128 columns): 64 packed bytes read as 16 dwords hold 8
// codes each, and vpermps, which reads an index's low 4 bits, looks up code i of all 16
// after a shift by 4 i bits: 8 lookups per 64 bytes and no widening (the narrow steps widen
// 16 bytes to 16 dwords first, and widening shares the shuffle unit with the lookups, the
// bound at M = 1). Code i of every row in turn, so consecutive multiply-adds go to
// different sums. K = N = 4096, two threads, weights in cache (the arithmetic alone), in
// alternation in one process, three runs: M = 1 215/282/387 -> 200/235/338 us, M = 16
// 1.71/1.65/2.27 -> 1.61/1.56/1.98 ms. Looking each row's 8 codes up in a row instead was
// 1.4x slower at M = 1; converting codes to float instead of looking them up (no shuffles,
// the zero point applied per group) no faster than the narrow steps.
template <int MR, int NR, int ACC = 2, bool WIDE = false>
inline void wo4_tile_512(const WO4Args& a, int64_t m0, int64_t n0) {
  const int64_t ldw = a.KP / 2;
  const __m512 iota =
      _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 acc[MR][NR][ACC];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n)
      for (int j = 0; j < ACC; ++j) acc[m][n][j] = _mm512_setzero_ps();
  // the scales and zero points of the rows WO4_PF_TILES tiles ahead (a row's G of each
  // are a cache line or two; left to a demand miss, they stall every tile's first group)
  for (int n = WO4_PF_TILES * NR; n < (WO4_PF_TILES + 1) * NR; ++n)
    for (int64_t g = 0; g < a.G; g += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(a.scale + (n0 + n) * a.G + g), _MM_HINT_T0);
      if (g % 64 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(a.zero + (n0 + n) * a.G + g), _MM_HINT_T0);
    }
  for (int64_t g = 0; g < a.G; ++g) {
    __m512 lut[NR];
    for (int n = 0; n < NR; ++n) {
      const int64_t i = (n0 + n) * a.G + g;
      const __m512 z = _mm512_set1_ps(static_cast<float>(a.zero[i]));
      lut[n] = _mm512_mul_ps(_mm512_sub_ps(iota, z), _mm512_set1_ps(_cvtsh_ss(a.scale[i])));
    }
    if constexpr (WIDE) {
      for (int64_t c = g * a.group; c < (g + 1) * a.group; c += 128) {
        __m512i b[NR];
#pragma GCC unroll 16
        for (int n = 0; n < NR; ++n) {
          const uint8_t* wr = a.w + (n0 + n) * ldw + c / 2;
          _mm_prefetch(reinterpret_cast<const char*>(wr + WO4_PF_TILES * NR * ldw), _MM_HINT_T0);
          b[n] = _mm512_loadu_si512(wr);
        }
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i) {
#pragma GCC unroll 16
          for (int n = 0; n < NR; ++n) {
            const __m512 wv = _mm512_permutexvar_ps(b[n], lut[n]);
            b[n] = _mm512_srli_epi32(b[n], 4);
#pragma GCC unroll 4
            for (int m = 0; m < MR; ++m) {
              const float* xm = a.xp + (m0 + m) * a.KP + c + 16 * i;
              acc[m][n][i % ACC] = _mm512_fmadd_ps(_mm512_loadu_ps(xm), wv, acc[m][n][i % ACC]);
            }
          }
        }
      }
      continue;
    }
    for (int64_t c = g * a.group; c < (g + 1) * a.group; c += 32) {
      for (int n = 0; n < NR; ++n) {
        const uint8_t* wr = a.w + (n0 + n) * ldw + c / 2;
        if ((c & 127) == 0)
          _mm_prefetch(reinterpret_cast<const char*>(wr + WO4_PF_TILES * NR * ldw), _MM_HINT_T0);
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr)));
        const __m512 we = _mm512_permutexvar_ps(b, lut[n]);
        const __m512 wo = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut[n]);
        for (int m = 0; m < MR; ++m) {
          const float* xm = a.xp + (m0 + m) * a.KP + c;
          acc[m][n][0] = _mm512_fmadd_ps(_mm512_loadu_ps(xm), we, acc[m][n][0]);
          acc[m][n][ACC - 1] = _mm512_fmadd_ps(_mm512_loadu_ps(xm + 16), wo, acc[m][n][ACC - 1]);
        }
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      __m512 sum = acc[m][n][0];
      if (ACC == 2) sum = _mm512_add_ps(sum, acc[m][n][ACC - 1]);
      const float v = _mm512_reduce_add_ps(sum);
      a.out[(m0 + m) * a.N + n0 + n] = a.bias ? v + a.bias[n0 + n] : v;
    }
}

template <int MR, int NR, int ACC, bool WIDE>
inline void wo4_row_panel_512(const WO4Args& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) wo4_tile_512<MR, NR, ACC, WIDE>(a, m0, n);
  for (; n < n1; ++n) wo4_tile_512<MR, 1, 2, WIDE>(a, m0, n);
}

template <bool WIDE>
void wo4_run_512(const WO4Args& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    // 4 x 4 tiles, one accumulator per pair: each looked-up weight vector feeds 4 rows of
    // x (K = N = 4096: 1.78 against 2.84 ms at M = 16 with 4 x 2 tiles of two each)
    for (; m + 4 <= a.M; m += 4) wo4_row_panel_512<4, 4, 1, WIDE>(a, m, n0, n1);
    for (; m + 2 <= a.M; m += 2) wo4_row_panel_512<2, 4, 2, WIDE>(a, m, n0, n1);
    // one row: WO4_NR1 weight rows, one accumulator each when WIDE (8 lookups in a row
    // per chunk already give each sum 8 multiply-adds to spread)
    for (; m < a.M; ++m) wo4_row_panel_512<1, WO4_NR1, WIDE ? 1 : 2, WIDE>(a, m, n0, n1);
  });
}

bool wo4_wide_512(int64_t group) { return group % 128 == 0; }

void wo4_impl_512(const WO4Args& a, int nt) {
  if (wo4_wide_512(a.group))
    wo4_run_512<true>(a, nt);
  else
    wo4_run_512<false>(a, nt);
}
#endif  // AVX-512

// ---------------------------------------------------------------- AVX-512 VNNI W8A8
// Compiled where the CPU has AVX-512 VNNI (cpu.py adds -mavx512vnni only then). vpdpbusd
// sums 64 products of unsigned x signed bytes, by fours, into 16 int32 lanes in one
// instruction (vpmaddwd on widened int16 does 16). Activation codes q in [-127, 127] are
// stored as u = q + 128 in [1, 255]: sum_k u w = sum_k q w + 128 sum_k w, so 128 times
// each weight row's sum (vpdpbusd with a vector of ones) is taken away at the end. The
// lanes wrap modulo 2^32 and the true sum fits in int32 (|q w| <= 127^2, K < 2^17), so the
// result is exact: the same int32 sums as the reference, and the same epilogue.
#if defined(CL_HAVE_AVX512) && defined(__AVX512VNNI__)
#define CL_HAVE_VNNI 1

struct VnniArgs {
  const uint8_t* x;   // (M, K) activation codes + 128
  const float* xs;    // (M,) activation scales
  const int8_t* w;    // (N, K) weights
  const float* ws;    // (N,) weight scales
  const float* bias;  // (N,) or null
  int32_t* wsum;      // (N,) scratch: each weight row's sum
  float* out;         // (M, N)
  int64_t M, N, K;
  // LLM.int8(): C outlier input columns multiplied in float in the same pass, while each
  // weight row is in cache: out += sum_j xo[m, j] * (w[n, cols[j]] * ws[n]). C may be 0.
  const int64_t* cols;
  const float* xo;    // (M, C)
  int64_t C;
  float* wo;          // (N, C) scratch: the outlier weight columns dequantized, row by row
};

// The sums of the lanes of up to 16 vectors at once: out[i] = sum of v[i]'s 16 lanes. One
// reduction each costs about eight instructions, as many as the dot products of a whole
// tile over a 256-long row; folded together (adjacent pairs, then 128-bit lanes) the 16
// take 45, and missing vectors count as zeros.
// ``vec(i)`` gives vector i (a lambda, so the accumulators stay in registers).
template <int COUNT, class Vec>
inline void lane_sums(Vec vec, int32_t* out) {
  static_assert(COUNT >= 1 && COUNT <= 16, "up to 16 vectors");
  auto at = [&](int i) { return i < COUNT ? vec(i) : _mm512_setzero_si512(); };
  __m512i q[8], r[4], c[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3]
    q[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(at(2 * i), at(2 * i + 1)),
                            _mm512_unpackhi_epi32(at(2 * i), at(2 * i + 1)));
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: 4 vectors' sums over that lane
    r[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(q[2 * i], q[2 * i + 1]),
                            _mm512_unpackhi_epi64(q[2 * i], q[2 * i + 1]));
  for (int i = 0; i < 2; ++i)  // 128-bit lanes 0 + 1 and 2 + 3 of two of them
    c[i] = _mm512_add_epi32(_mm512_shuffle_i32x4(r[2 * i], r[2 * i + 1], 0x88),
                            _mm512_shuffle_i32x4(r[2 * i], r[2 * i + 1], 0xDD));
  const __m512i all = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x88),
                                       _mm512_shuffle_i32x4(c[0], c[1], 0xDD));
  if (COUNT == 16) {
    _mm512_storeu_si512(out, all);
  } else {
    alignas(64) int32_t tmp[16];
    _mm512_store_si512(tmp, all);
    for (int i = 0; i < COUNT; ++i) out[i] = tmp[i];
  }
}

// ``v`` rounded to float as it is: the compiler may not fuse the product that made it
// with an addition that follows (the reference rounds the product, then adds the bias).
inline float rounded(float v) {
  asm("" : "+v"(v));
  return v;
}
inline __m512 rounded(__m512 v) {
  asm("" : "+v"(v));
  return v;
}

// The outliers' float products of one MR x NR tile: f[m][n] = sum_j xo[m0 + m, j] *
// wo[n0 + n, j], 16 columns at a time (the tail masked), MR x NR independent sums so the
// multiply-adds do not wait on each other.
template <int MR, int NR>
inline void outlier_tile(const VnniArgs& a, int64_t m0, int64_t n0, float (&f)[MR][NR]) {
  __m512 acc[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_setzero_ps();
  const float* xo = a.xo + m0 * a.C;
  const float* wo = a.wo + n0 * a.C;
  for (int64_t j = 0; j < a.C; j += 16) {
    const __mmask16 mk =
        a.C - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (a.C - j)) - 1);
    __m512 wv[NR];
    for (int n = 0; n < NR; ++n) wv[n] = _mm512_maskz_loadu_ps(mk, wo + n * a.C + j);
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mk, xo + m * a.C + j);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_fmadd_ps(xv, wv[n], acc[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) f[m][n] = _mm512_reduce_add_ps(acc[m][n]);
}

// One MR x NR tile over all of K. SUMS: the tile also sums its weight rows (vpdpbusd with
// ones, one more instruction per weight vector) and stores them in wsum; the first panel
// of activations against a chunk of rows does this, the later ones read the sums back.
template <int MR, int NR, bool SUMS>
inline void vnni_tile(const VnniArgs& a, int64_t m0, int64_t n0) {
  __m512i acc[MR][NR], sum[NR];
  for (int n = 0; n < NR; ++n) {
    sum[n] = _mm512_setzero_si512();
    for (int m = 0; m < MR; ++m) acc[m][n] = _mm512_setzero_si512();
  }
  const __m512i ones = _mm512_set1_epi8(1);
  const int8_t* w = a.w + n0 * a.K;
  const uint8_t* x = a.x + m0 * a.K;
  auto step = [&](int64_t k, __mmask64 mk, bool full) __attribute__((always_inline)) {
    __m512i wv[NR];
    for (int n = 0; n < NR; ++n) {
      if (SUMS && full)
        _mm_prefetch(reinterpret_cast<const char*>(w + (n + NR) * a.K + k), _MM_HINT_T0);
      wv[n] = full ? _mm512_loadu_si512(w + n * a.K + k)
                   : _mm512_maskz_loadu_epi8(mk, w + n * a.K + k);
      if (SUMS) sum[n] = _mm512_dpbusd_epi32(sum[n], ones, wv[n]);
    }
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = full ? _mm512_loadu_si512(x + m * a.K + k)
                              : _mm512_maskz_loadu_epi8(mk, x + m * a.K + k);
      for (int n = 0; n < NR; ++n) acc[m][n] = _mm512_dpbusd_epi32(acc[m][n], xv, wv[n]);
    }
  };
  int64_t k = 0;
  for (; k + 64 <= a.K; k += 64) step(k, ~__mmask64{0}, true);
  // the last K % 64 columns masked: zero bytes add nothing, nothing past a row is read
  if (k < a.K) step(k, (__mmask64{1} << (a.K - k)) - 1, false);
  if (SUMS) lane_sums<NR>([&](int i) { return sum[i]; }, a.wsum + n0);
  int32_t dot[MR * NR];
  lane_sums<MR * NR>([&](int i) { return acc[i / NR][i % NR]; }, dot);
  if (SUMS)
    for (int n = 0; n < NR; ++n) {
      const int64_t col = n0 + n;  // its outlier weights, once, while the row is in cache
      for (int64_t j = 0; j < a.C; ++j)
        a.wo[col * a.C + j] = static_cast<float>(a.w[col * a.K + a.cols[j]]) * a.ws[col];
    }
  float fo[MR][NR];  // read only where a.C: outlier_tile fills it
  if (a.C) outlier_tile<MR, NR>(a, m0, n0, fo);
  if constexpr (MR == 4 && NR == 4) {  // the whole tile's epilogue in one vector: lane 4m + n
    const __m512i sums =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.wsum + n0)));
    const __m512i u = _mm512_sub_epi32(_mm512_loadu_si512(dot), _mm512_slli_epi32(sums, 7));
    const __m512i row_of_lane = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512 xs =
        _mm512_permutexvar_ps(row_of_lane, _mm512_castps128_ps512(_mm_loadu_ps(a.xs + m0)));
    const __m512 ws = _mm512_broadcast_f32x4(_mm_loadu_ps(a.ws + n0));
    __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(u), xs), ws);
    if (a.bias) v = _mm512_add_ps(rounded(v), _mm512_broadcast_f32x4(_mm_loadu_ps(a.bias + n0)));
    if (a.C) v = _mm512_add_ps(rounded(v), _mm512_loadu_ps(&fo[0][0]));
    float* o = a.out + m0 * a.N + n0;
    _mm_storeu_ps(o, _mm512_castps512_ps128(v));
    _mm_storeu_ps(o + a.N, _mm512_extractf32x4_ps(v, 1));
    _mm_storeu_ps(o + 2 * a.N, _mm512_extractf32x4_ps(v, 2));
    _mm_storeu_ps(o + 3 * a.N, _mm512_extractf32x4_ps(v, 3));
    return;
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) {
      const int64_t col = n0 + n, row = m0 + m;
      const uint32_t u = static_cast<uint32_t>(dot[m * NR + n]) -
                         128u * static_cast<uint32_t>(a.wsum[col]);
      float v = rounded(static_cast<float>(static_cast<int32_t>(u)) * a.xs[row] * a.ws[col]);
      if (a.bias) v = v + a.bias[col];
      if (a.C) v = v + fo[m][n];
      a.out[row * a.N + col] = v;
    }
}

template <int MR, int NR>
inline void vnni_row_panel(const VnniArgs& a, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (m0 == 0) {
    for (; n + NR <= n1; n += NR) vnni_tile<MR, NR, true>(a, m0, n);
    for (; n < n1; ++n) vnni_tile<MR, 1, true>(a, m0, n);
  } else {
    for (; n + NR <= n1; n += NR) vnni_tile<MR, NR, false>(a, m0, n);
    for (; n < n1; ++n) vnni_tile<MR, 1, false>(a, m0, n);
  }
}

// Chunks of NC weight rows per task (they stay in L2), every MR-row panel of activations
// against each chunk; the first panel also sums the chunk's rows.
void vnni_impl(const VnniArgs& a, int nt) {
  over_row_chunks(a.N, nt, [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    for (; m + 4 <= a.M; m += 4) vnni_row_panel<4, 4>(a, m, n0, n1);
    for (; m + 2 <= a.M; m += 2) vnni_row_panel<2, 6>(a, m, n0, n1);
    for (; m < a.M; ++m) vnni_row_panel<1, 8>(a, m, n0, n1);
  });
}

// x (M, K) float -> codes + 128, then the GEMM: scratch for codes and row sums is the
// caller's vectors.
// The GEMM on activation codes + 128 (u, M x K) with their scales xs, the weight rows'
// sums in a scratch of its own.
void vnni_gemm(const uint8_t* u, const float* xs, const int8_t* w, const float* ws,
               const float* bias, float* out, int64_t M, int64_t N, int64_t K,
               const int64_t* cols, const float* xo, int64_t C, int nt) {
  Scratch<int32_t> wsum(kWeightSums, N);
  Scratch<float> wo(kOutlierWeights, N * C);
  VnniArgs a{u, xs, w, ws, bias, wsum.data(), out, M, N, K, cols, xo, C, wo.data()};
  vnni_impl(a, nt);
}

void vnni_linear_f32(const float* x, float static_scale, const int8_t* w, const float* ws,
                     const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                     const int64_t* cols, const float* xo, int64_t C, int nt_quant, int nt) {
  Scratch<int8_t> q(kCodes, M * K);
  Scratch<float> xs(kRowScales, M);
  quantize_rows_impl(x, M, K, static_scale, q.data(), xs.data(), nt_quant);
  for (int64_t i = 0; i < M * K; ++i)  // q + 128
    q[i] = static_cast<int8_t>(static_cast<uint8_t>(q[i]) ^ 0x80u);
  vnni_gemm(reinterpret_cast<const uint8_t*>(q.data()), xs.data(), w, ws, bias, out, M, N, K,
            cols, xo, C, nt);
}
#endif  // VNNI

// ---------------------------------------------------------------- dequantization to float
// For large batches the weights are reused M times: turning them back into float32 once
// per call (one pass, in parallel) and letting BLAS run beats any integer inner loop on
// a CPU without int8 dot products.

void dequantize_int8_impl(const int8_t* w, const float* ws, float* out, int64_t N, int64_t K,
                          int nt) {
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const __m256 s = _mm256_set1_ps(ws[n]);
    const int8_t* row = w + n * K;
    float* o = out + n * K;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
      _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), s));
    }
    for (; k < K; ++k) o[k] = static_cast<float>(row[k]) * ws[n];
  }
}

void dequantize_int4_impl(const uint8_t* w, const uint16_t* scale, const uint8_t* zero,
                          float* out, int64_t N, int64_t K, int64_t kp, int64_t group, int nt) {
  const int64_t G = kp / group;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = w + n * (kp / 2);
    float* o = out + n * K;
    for (int64_t g = 0; g < G; ++g) {
      const float s = _cvtsh_ss(scale[n * G + g]);
      const float zs = static_cast<float>(zero[n * G + g]) * s;
      const int64_t k1 = std::min(K, (g + 1) * group);
      const __m256 sv = _mm256_set1_ps(s), nzs = _mm256_set1_ps(-zs);
      const __m128i low4 = _mm_set1_epi8(0x0F);
      int64_t k = g * group;
      for (; k + 32 <= k1; k += 32) {  // 16 bytes -> 32 codes, back in column order
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
        const __m128i lo = _mm_and_si128(b, low4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
        const __m128i c0 = _mm_unpacklo_epi8(lo, hi), c1 = _mm_unpackhi_epi8(lo, hi);
        const __m128i parts[4] = {c0, _mm_srli_si128(c0, 8), c1, _mm_srli_si128(c1, 8)};
        for (int p = 0; p < 4; ++p) {
          const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p]));
          _mm256_storeu_ps(o + k + 8 * p, _mm256_fmadd_ps(q, sv, nzs));
        }
      }
      for (; k < k1; ++k) {
        const uint8_t b = row[k / 2];
        const float q = static_cast<float>((k & 1) ? (b >> 4) : (b & 0x0F));
        o[k] = q * s - zs;
      }
    }
  }
}

// LLM.int8()'s outlier columns of x (M, K): those holding some |x| > threshold (none for
// threshold <= 0), in increasing order. Row by row (contiguous reads), one flag per column.
std::vector<int64_t> outlier_columns(const float* x, int64_t M, int64_t K, float threshold) {
  std::vector<int64_t> cols;
  if (!(threshold > 0.0f)) return cols;
  std::vector<uint8_t> hit(K, 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) hit[k] |= std::fabs(x[m * K + k]) > threshold;
  for (int64_t k = 0; k < K; ++k)
    if (hit[k]) cols.push_back(k);
  return cols;
}

}  // namespace

extern "C" {

void cl_dequantize_int8(const int8_t* w, const float* ws, float* out, int64_t N, int64_t K,
                        int nt) {
  dequantize_int8_impl(w, ws, out, N, K, nt);
}

void cl_dequantize_int4(const uint8_t* w, const uint16_t* scale, const uint8_t* zero,
                        float* out, int64_t N, int64_t K, int64_t kp, int64_t group, int nt) {
  dequantize_int4_impl(w, scale, zero, out, N, K, kp, group, nt);
}

// GPTQ's column loop (core/quant/gptq.py, gptq_quantize) over columns i0..i1-1 of one
// lazy block that share their scales, the block held transposed: W1, Q1, E1 are (b, n)
// with row i = column i of W, H1 is the block's (b, b) factor of H^-1. Per column i and
// output row c: q = clamp(round(w / s) + z) (0 + z where pruned), e = (w - (q - z) s) / H1_ii,
// then rows j >= i of W1 -= H1_ij e. Output rows are independent, so each thread runs
// the whole loop on its own rows, without a barrier. Every step rounds as the torch
// loop does (division, round half to even, one product, one difference, one division;
// the rank-1 update one fused multiply-add), so both give the same bits: contraction off.
__attribute__((optimize("fp-contract=off"))) void cl_gptq_columns(
    float* W1, float* Q1, float* E1, const float* H1, int64_t b, int64_t n, int64_t i0,
    int64_t i1, const float* s, const float* z, const uint8_t* pruned, float qmin, float qmax,
    int nt) {
  const int64_t chunk = 256;  // output rows per task: 1 KiB of each row of W1
  const int64_t tasks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t c0 = t * chunk, c1 = std::min(n, c0 + chunk);
    for (int64_t i = i0; i < i1; ++i) {
      const float d = H1[i * b + i];
      float* w = W1 + i * n;
      float* q = Q1 + i * n;
      float* e = E1 + i * n;
      const uint8_t* pr = pruned ? pruned + i * n : nullptr;
      for (int64_t c = c0; c < c1; ++c) {
        float qq = std::nearbyint(w[c] / s[c]);
        if (z) qq = qq + z[c];
        qq = std::min(std::max(qq, qmin), qmax);
        if (pr && pr[c]) qq = z ? z[c] : 0.0f;
        q[c] = qq;
        const float back = (z ? qq - z[c] : qq) * s[c];
        e[c] = (w[c] - back) / d;
      }
      for (int64_t j = i; j < b; ++j) {
        const float h = -H1[i * b + j];
        float* wj = W1 + j * n;
        for (int64_t c = c0; c < c1; ++c) wj[c] = std::fma(h, e[c], wj[c]);
      }
    }
  }
}

// One read over n bytes, split over nt threads as the kernels split their weights (each
// thread a contiguous part): the bytes ceiling of bench/int8_gemm.py. Returns the xor of
// every 64-byte block, so the reads cannot be optimized away.
int64_t cl_read_bytes(const uint8_t* p, int64_t n, int nt) {
  const int64_t blocks = n / 64;
  uint64_t acc = 0;
#pragma omp parallel num_threads(nt) reduction(^ : acc)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
    for (int64_t i = blocks * t / T; i < blocks * (t + 1) / T; ++i) {
      a = _mm256_xor_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * i)));
      b = _mm256_xor_si256(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * i + 32)));
    }
    a = _mm256_xor_si256(a, b);
    acc ^= static_cast<uint64_t>(_mm256_extract_epi64(a, 0) ^ _mm256_extract_epi64(a, 3));
  }
  for (int64_t i = blocks * 64; i < n; ++i) acc ^= p[i];
  return static_cast<int64_t>(acc);
}

// Bumped whenever an entry point's meaning or arguments change (cpu.py checks it).
int cl_abi_version() { return 5; }

// Which vector width the weight-only kernels were compiled for (512 or 256).
int cl_vector_bits() {
#ifdef CL_HAVE_AVX512
  return 512;
#else
  return 256;
#endif
}

void cl_quantize_rows(const float* x, int64_t M, int64_t K, float static_scale, int16_t* q,
                      float* scale, int nt) {
  quantize_rows_impl(x, M, K, static_scale, q, scale, nt);
}

void cl_quantize_rows_i8(const float* x, int64_t M, int64_t K, float static_scale, int8_t* q,
                         float* scale, int nt) {
  quantize_rows_impl(x, M, K, static_scale, q, scale, nt);
}

// The W8A8 epilogue around an int32 GEMM done elsewhere (torch._int_mm):
// out = float(acc) * xs[m] * ws[n] + bias[n], in that order (as ref.int8_linear), one pass;
// no multiply-add contraction, so the bits are those of the reference's float32 ops.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void cl_int32_epilogue(const int32_t* acc, const float* xs, const float* ws, const float* bias,
                       float* out, int64_t M, int64_t N, int nt) {
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* a = acc + m * N;
    float* o = out + m * N;
    const __m256 sv = _mm256_set1_ps(xs[m]);
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
      __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + n)));
      v = _mm256_mul_ps(_mm256_mul_ps(v, sv), _mm256_loadu_ps(ws + n));
      if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
      _mm256_storeu_ps(o + n, v);
    }
    for (; n < N; ++n) {
      float v = static_cast<float>(a[n]) * xs[m] * ws[n];
      o[n] = bias ? v + bias[n] : v;
    }
  }
}

void cl_w8a8_linear(const int16_t* xq, const float* xs, const int8_t* w, const float* ws,
                    const float* bias, int32_t* c, float* out, int64_t M, int64_t N, int64_t K,
                    int nt) {
#ifdef CL_HAVE_VNNI
  Scratch<uint8_t> u(kShifted, M * K);
  for (int64_t i = 0; i < M * K; ++i) u[i] = static_cast<uint8_t>(xq[i] + 128);
  vnni_gemm(u.data(), xs, w, ws, bias, out, M, N, K, nullptr, nullptr, 0, nt);
#else
  W8A8Args a{xq, xs, w, ws, bias, c, out, M, N, K};
  w8a8_impl(a, nt);
#endif
}

// Which integer dot product the native W8A8 kernel uses: 1 = AVX-512 VNNI (vpdpbusd),
// 0 = AVX2 vpmaddwd on int16.
int cl_w8a8_vnni() {
#ifdef CL_HAVE_VNNI
  return 1;
#else
  return 0;
#endif
}

// LLM.int8() in one call (VNNI builds only; returns -1 elsewhere, having done nothing):
// the input columns of x (M, K) holding some |x| > threshold (none if threshold <= 0) are
// the outliers; x with them zeroed goes through W8A8 with per-token scales, and their
// float values times their dequantized weight columns are summed in the same pass over
// the weight, while each row is in cache. Returns how many outlier columns there were.
int64_t cl_llm_int8_linear(const float* x, float threshold, const int8_t* w, const float* ws,
                           const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                           int nt_quant, int nt) {
#ifdef CL_HAVE_VNNI
  const std::vector<int64_t> cols = outlier_columns(x, M, K, threshold);
  const int64_t C = static_cast<int64_t>(cols.size());
  if (C == 0) {
    vnni_linear_f32(x, 0.0f, w, ws, bias, out, M, N, K, nullptr, nullptr, 0, nt_quant, nt);
    return 0;
  }
  Scratch<float> regular(kRegular, M * K), xo(kOutlierValues, M * C);
  std::copy(x, x + M * K, regular.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < C; ++j) {
      xo[m * C + j] = x[m * K + cols[j]];
      regular[m * K + cols[j]] = 0.0f;
    }
  vnni_linear_f32(regular.data(), 0.0f, w, ws, bias, out, M, N, K, cols.data(), xo.data(), C,
                  nt_quant, nt);
  return C;
#else
  (void)x, (void)threshold, (void)w, (void)ws, (void)bias, (void)out, (void)M, (void)N;
  (void)K, (void)nt_quant, (void)nt;
  return -1;
#endif
}

// LLM.int8() for the other paths, whose int8 product runs elsewhere (torch._int_mm, the
// AVX2 kernel): the outlier columns of x (M, K) into cols (room for K); returns how many.
int64_t cl_outlier_columns(const float* x, int64_t M, int64_t K, float threshold,
                           int64_t* cols) {
  const std::vector<int64_t> found = outlier_columns(x, M, K, threshold);
  std::copy(found.begin(), found.end(), cols);
  return static_cast<int64_t>(found.size());
}

// ... and the split around those C columns, in one call: xr = x with them zeroed (the int8
// product's input), xo (M, C) their values, wo (N, C) the weight's columns dequantized as
// w[n, cols[j]] * ws[n] (the float product's weight, row by row in parallel).
void cl_llm_int8_split(const float* x, int64_t M, int64_t K, const int64_t* cols, int64_t C,
                       const int8_t* w, const float* ws, int64_t N, float* __restrict xr,
                       float* __restrict xo, float* __restrict wo, int nt) {
#ifdef CL_HAVE_AVX512
  // 16 columns at a time, `hit` marking a chunk's outlier columns: xr is x blended with
  // zeros there (a blend, not a product: an infinite outlier must leave a zero behind);
  // xo and wo visit only the chunks holding outliers, each packed in order by vcompress.
  std::vector<__mmask16> hit((K + 15) / 16, 0);
  for (int64_t j = 0; j < C; ++j) hit[cols[j] / 16] |= static_cast<__mmask16>(1u << (cols[j] % 16));
  std::vector<int64_t> chunks;
  for (int64_t c = 0; c < static_cast<int64_t>(hit.size()); ++c)
    if (hit[c]) chunks.push_back(c);
  auto in_row = [K](int64_t k) {
    return K - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
  };
  auto put = [](float* dst, __mmask16 sel, __m512 v) {  // the selected lanes, packed
    const int c = _mm_popcnt_u32(sel);
    const __mmask16 first_c = static_cast<__mmask16>((1u << c) - 1);
    _mm512_mask_storeu_ps(dst, first_c, _mm512_maskz_compress_ps(sel, v));
    return c;
  };
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * K;
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 in = in_row(k);
      _mm512_mask_storeu_ps(xr + m * K + k, in, _mm512_maskz_loadu_ps(in & ~hit[k / 16], xm + k));
    }
    float* o = xo + m * C;
    for (const int64_t c : chunks)
      o += put(o, hit[c], _mm512_maskz_loadu_ps(in_row(16 * c), xm + 16 * c));
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* row = w + n * K;
    const __m512 sv = _mm512_set1_ps(ws[n]);
    float* o = wo + n * C;
    for (const int64_t c : chunks) {
      const __m128i b = _mm_maskz_loadu_epi8(in_row(16 * c), row + 16 * c);
      o += put(o, hit[c], _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), sv));
    }
  }
#else
  std::copy(x, x + M * K, xr);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < C; ++j) {
      xo[m * C + j] = x[m * K + cols[j]];
      xr[m * K + cols[j]] = 0.0f;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* row = w + n * K;
    const float s = ws[n];
    for (int64_t j = 0; j < C; ++j) wo[n * C + j] = static_cast<float>(row[cols[j]]) * s;
  }
#endif
}

// Quantize x (M, K) float per row (static_scale <= 0) or with one static scale, then the
// GEMM with its epilogue: one call from Python instead of two, no int16 tensor allocated.
void cl_w8a8_linear_f32(const float* x, float static_scale, const int8_t* w, const float* ws,
                        const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                        int nt_quant, int nt) {
#ifdef CL_HAVE_VNNI
  vnni_linear_f32(x, static_scale, w, ws, bias, out, M, N, K, nullptr, nullptr, 0, nt_quant, nt);
  return;
#endif
  std::vector<int16_t> q(M * K);
  std::vector<float> xs(M);
  std::vector<int32_t> c(k_block(M, K) < K ? M * N : 0);
  quantize_rows_impl(x, M, K, static_scale, q.data(), xs.data(), nt_quant);
  W8A8Args a{q.data(), xs.data(), w, ws, bias, c.empty() ? nullptr : c.data(), out, M, N, K};
  w8a8_impl(a, nt);
}

int64_t cl_w8a8_scratch_needed(int64_t M, int64_t K) { return k_block(M, K) < K ? 1 : 0; }

void cl_int8_weight_only_linear(const float* x, const int8_t* w, const float* ws,
                                const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                                int nt) {
  WO8Args a{x, w, ws, bias, out, M, N, K};
#ifdef CL_HAVE_AVX512
  wo8_impl_512(a, nt);
#else
  wo8_impl(a, nt);
#endif
}

void cl_int4_weight_only_linear(const float* x, const uint8_t* w, const uint16_t* scale,
                                const uint8_t* zero, const float* bias, float* out, int64_t M,
                                int64_t N, int64_t K, int64_t kp, int64_t group, int nt) {
  const int64_t G = kp / group;
#ifdef CL_HAVE_AVX512
  const bool wide = wo4_wide_512(group);
#else
  const bool wide = false;
#endif
  Scratch<float> xp(kInt4X, M * kp), xsum(kInt4XSums, M * G);
  for (int64_t m = 0; m < M; ++m)
    prepare_int4_x(x + m * K, K, kp, group, wide, xp.data() + m * kp, xsum.data() + m * G);
  WO4Args a{xp.data(), xsum.data(), w, scale, zero, bias, out, M, N, kp, G, group};
#ifdef CL_HAVE_AVX512
  wo4_impl_512(a, nt);
#else
  wo4_impl(a, nt);
#endif
}

}  // extern "C"
