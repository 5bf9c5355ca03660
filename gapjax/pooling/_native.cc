// Native CPU kernels of gapjax.pooling, called from XLA through its FFI (custom calls).
//
// Compiled on first use by gapjax/pooling/_native.py (the system C++ compiler, -O3
// -march=native, XLA's FFI headers from jaxlib) and cached per machine; gapjax falls back to
// its pure-XLA formulations when no compiler is available.
//
// Why: XLA:CPU cannot compute a maximum and its position in one pass (it splits a two-output
// loop into two loops that each read the input), and its reductions over non-contiguous rows
// run well below memory bandwidth. These kernels read the input once, vectorized over the
// contiguous axis, on XLA's intra-op thread pool.
//
// gapjax_extreme / gapjax_extreme_index: x (..., R, Q) -> max (or min) over R, and the int32
// position of the winner: the first maximum in order, or the first NaN (NaN propagates).
// gapjax_sum: x (..., R, Q) float32 or bfloat16 -> the float32 sum over R, divided by an
// attribute (global sum and average pooling).
// gapjax_window_select: the extreme of every window and its winning tap (max/min pooling).
// gapjax_window_gather / gapjax_window_scatter (+ ...Win): window sums and their transposes, the
// forward and backward passes of average pooling, and the backward passes of max pooling and
// of global pooling (one window over all cells).
// Every leading axis is a batch axis (so vmap's "broadcast_all" works unchanged).

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------------------------
// Work splitting on XLA's intra-op thread pool.
// ---------------------------------------------------------------------------------------------

// Below this many input elements a call runs on the calling thread alone.
constexpr int64_t kMinParallelElements = 1 << 16;

// body(begin, end) over [0, n), in chunks claimed from a shared counter by the calling thread
// and by up to num_threads - 1 pool tasks. The caller waits only for chunks that some running
// thread has claimed, so a busy pool cannot deadlock it; the state is shared, so a task that
// starts after the call returned finds no chunk left and exits.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, int64_t elements, const F& body) {
  int64_t threads = elements < kMinParallelElements ? 1 : pool.num_threads();
  if (threads <= 1 || n <= 1) {
    body(0, n);
    return;
  }
  int64_t chunks = std::min<int64_t>(n, threads * 4);
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;
  auto work = [state, n, chunks, fn]() {
    for (;;) {
      int64_t c = state->next.fetch_add(1);
      if (c >= chunks) return;
      (*fn)(c * n / chunks, (c + 1) * n / chunks);
      if (state->done.fetch_add(1) + 1 == chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < std::min(threads, chunks); ++t) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == chunks; });
}

// Outputs of at least this many bytes are advised to the kernel as transparent huge pages.
constexpr size_t kHugeOutputBytes = size_t{8} << 20;

// An output buffer of XLA's is usually fresh memory from mmap, so writing it faults in every
// 4 KB page (on large outputs the faults cost more than the kernel). Advising its 2 MB-aligned
// interior as huge pages (Linux, where transparent huge pages are "madvise" or "always") makes
// those faults 512x fewer; the advice only sets the page size of memory not yet touched.
inline void AdviseHuge(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < kHugeOutputBytes) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// ---------------------------------------------------------------------------------------------
// Element types: a "key" that orders elements, larger key wins, NaN above everything.
// ---------------------------------------------------------------------------------------------

// 16 lanes of 4 bytes (GCC/Clang vector extensions: AVX-512, 2 x AVX2 or 4 x NEON registers).
constexpr int kLanes = 16;
typedef float VF __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
typedef uint16_t VH __attribute__((vector_size(32)));
typedef uint32_t VU __attribute__((vector_size(64)));

template <typename V, typename E>
inline V VLoadRaw(const E* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename E>
inline void VStore(E* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Element loads widened to float32: 16 lanes, or one.
inline VF LoadF(const float* p) { return VLoadRaw<VF>(p); }
inline float LoadF1(const float* p) { return *p; }
inline VF LoadF(const uint16_t* p) {  // bfloat16: its bits are a float32's upper half
#if defined(__AVX512F__)
  // One widening load (the vector-extension conversion took five instructions).
  const __m512i e = _mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  return reinterpret_cast<const VF&>(e);
#else
  VU e = __builtin_convertvector(VLoadRaw<VH>(p), VU) << 16;
  VF f;
  std::memcpy(&f, &e, sizeof(f));
  return f;
#endif
}
inline float LoadF1(const uint16_t* p) {
  uint32_t e = static_cast<uint32_t>(*p) << 16;
  float f;
  std::memcpy(&f, &e, sizeof(f));
  return f;
}

// float32 / float64: the value itself. v replaces the current best m when it is larger, or when
// it is the first NaN (m is not NaN); ties keep the first.
template <typename T, bool kLargestT>
struct FloatKey {
  static constexpr bool kLargest = kLargestT;
  using Elem = T;
  using Key = T;
  static constexpr bool kVector = std::is_same_v<T, float>;
  static constexpr bool kExact = true;  // the best key is the element
  using V = VF;
  static inline Key Load(Elem e) { return e; }
  static inline Elem Value(Key k) { return k; }
  static inline bool Take(Key v, Key m) {
    return kLargest ? (!(v <= m) && m == m) : (!(v >= m) && m == m);
  }
  static inline bool Same(Key a, Key b) { return a == b || (a != a && b != b); }
  static inline VI VSame(V a, V b) { return (a == b) | ((a != a) & (b != b)); }
  static inline V VLoad(const Elem* p) { return VLoadRaw<VF>(reinterpret_cast<const float*>(p)); }
  static inline VI VTake(V v, V m) {
    return kLargest ? (~(v <= m) & (m == m)) : (~(v >= m) & (m == m));
  }
};

// float16 / bfloat16, as their bits: an int32 key in total order with -0 == +0 and every NaN
// above every number (so one integer comparison decides, exactly, without converting).
template <int kInfBits, bool kLargest>
struct HalfKey {
  using Elem = uint16_t;
  using Key = int32_t;
  static constexpr bool kVector = true;
  static constexpr bool kExact = false;  // the element comes from the position of the best
  using V = VI;
  static inline Key Load(Elem e) {
    int32_t mag = e & 0x7fff;
    int32_t key = (e >> 15) ? -mag : mag;
    key = kLargest ? key : -key;
    return mag > kInfBits ? 0x10000 : key;
  }
  static inline bool Take(Key v, Key m) { return v > m; }
  static inline bool Same(Key a, Key b) { return a == b; }
  static inline VI VSame(V a, V b) { return a == b; }
  static inline V VLoad(const Elem* p) {
    VI e = __builtin_convertvector(VLoadRaw<VH>(p), VI);
    VI mag = e & 0x7fff;
    VI neg = -(e >> 15);  // all ones where negative
    VI key = (mag ^ neg) - neg;
    if (!kLargest) key = -key;
    return mag > kInfBits ? VI{} + 0x10000 : key;
  }
  static inline VI VTake(V v, V m) { return v > m; }
};

// bfloat16 as float32: its bits moved to a float32's upper half, which is exact (signed zeros and
// NaN payloads kept) and compares as float32 (half the work of HalfKey's integer keys).
template <bool kLargestT>
struct Bf16Key {
  static constexpr bool kLargest = kLargestT;
  using F = FloatKey<float, kLargest>;
  using Elem = uint16_t;
  using Key = float;
  static constexpr bool kVector = true;
  static constexpr bool kExact = true;
  using V = VF;
  static inline Key Load(Elem e) { return LoadF1(&e); }
  static inline Elem Value(Key k) {
    uint32_t b;
    std::memcpy(&b, &k, sizeof(b));
    return static_cast<Elem>(b >> 16);
  }
  static inline bool Take(Key v, Key m) { return F::Take(v, m); }
  static inline bool Same(Key a, Key b) { return F::Same(a, b); }
  static inline VI VSame(V a, V b) { return F::VSame(a, b); }
  static inline V VLoad(const Elem* p) { return LoadF(p); }
  static inline VI VTake(V v, V m) { return F::VTake(v, m); }
};

// ---------------------------------------------------------------------------------------------
// Global extreme over axis R of (P, R, Q).
// ---------------------------------------------------------------------------------------------

// The inner step of every extreme kernel: m = take(v, m) ? v : m, and with kTrack the same for
// the positions k (rv: v's). With AVX-512, float keys compare straight into a mask register
// (the vector-extension form took twice the instructions: compares, mask inversions, blends).
template <typename K, bool kTrack>
inline void Step(const typename K::V& v, typename K::V& m, VI& k, const VI& rv) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<typename K::V, VF>) {
    const __m512 vv = reinterpret_cast<const __m512&>(v), mm = reinterpret_cast<__m512&>(m);
    __mmask16 t = _mm512_cmp_ps_mask(vv, mm, K::kLargest ? _CMP_NLE_UQ : _CMP_NGE_UQ);
    t = _mm512_mask_cmp_ps_mask(t, mm, mm, _CMP_ORD_Q);  // and m is not NaN
    const __m512 nm = _mm512_mask_mov_ps(mm, t, vv);
    m = reinterpret_cast<const VF&>(nm);
    if constexpr (kTrack) {
      const __m512i nk = _mm512_mask_mov_epi32(reinterpret_cast<__m512i&>(k), t,
                                               reinterpret_cast<const __m512i&>(rv));
      k = reinterpret_cast<const VI&>(nk);
    }
    return;
  }
#endif
  const VI t = K::VTake(v, m);
  m = t ? v : m;
  if constexpr (kTrack) k = t ? rv : k;
}

// Columns are processed in blocks of up to kBlockVectors vectors whose accumulators stay in
// registers across all the terms (accumulators in memory put a store-to-load forwarding delay
// on every term, and per-term loop overhead dominated when blocks were narrow).
#if defined(__AVX512F__)
constexpr int kBlockVectors = 16;
#else
constexpr int kBlockVectors = 4;
#endif
// A select keeps two registers per vector (the extreme and its tap).
constexpr int kSelectVectors = kBlockVectors / 2;

// f(std::integral_constant<int, nv>()) for 1 <= nv <= kMax: a block width known at compile time.
template <int kMax, int N = kMax, typename F>
inline void WithVectors(int nv, const F& f) {
  if constexpr (N >= 1) {
    if (nv == N) return f(std::integral_constant<int, N>());
    WithVectors<kMax, N - 1>(nv, f);
  }
}


// Columns [q0, q0 + w) of one (R, Q) slab, row by row (sequential reads), the running best per
// column kept in L1 (up to 2048 columns: narrower blocks read each row in pieces, slower). The vector body is written out with vector types: left to the
// autovectorizer, the same loop's code varied with the array sizes, and some variants ran much
// slower (stalls on store-to-load forwarding).
constexpr int64_t kColumns = 2048;

template <typename K, bool kIndex>
void ExtremeColumns(const typename K::Elem* x, typename K::Elem* out, int32_t* idx, int64_t R,
                    int64_t Q, int64_t q0, int64_t w) {
  using Key = typename K::Key;
  constexpr bool kKeyed = !K::kExact;  // value = x[winner]
  alignas(64) Key m[kColumns];
  alignas(64) int32_t k[kColumns];
  for (int64_t j = 0; j < w; ++j) {
    m[j] = K::Load(x[q0 + j]);
    k[j] = 0;
  }
  const int64_t nv = K::kVector ? w / kLanes : 0;
  for (int64_t r = 1; r < R; ++r) {
    const typename K::Elem* row = x + r * Q + q0;
    const int32_t rr = static_cast<int32_t>(r);
    if constexpr (K::kVector) {
      const VI rv = VI{} + rr;
      for (int64_t u = 0; u < nv; ++u) {
        typename K::V mv = VLoadRaw<typename K::V>(m + u * kLanes);
        VI kv = kIndex || kKeyed ? VLoadRaw<VI>(k + u * kLanes) : VI{};
        Step<K, kIndex || kKeyed>(K::VLoad(row + u * kLanes), mv, kv, rv);
        VStore(m + u * kLanes, mv);
        if (kIndex || kKeyed) VStore(k + u * kLanes, kv);
      }
    }
    for (int64_t j = nv * kLanes; j < w; ++j) {
      Key v = K::Load(row[j]);
      if (K::Take(v, m[j])) {
        m[j] = v;
        k[j] = rr;
      }
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    if constexpr (kKeyed) {
      out[q0 + j] = x[static_cast<int64_t>(k[j]) * Q + q0 + j];
    } else {
      out[q0 + j] = K::Value(m[j]);
    }
    if (kIndex) idx[q0 + j] = k[j];
  }
}

// A whole (R, Q) slab whose rows are NV vectors (Q = NV kLanes), the running bests (and their
// rows) kept in registers: rows read in order, no L1 round trip per element.
template <typename K, bool kIndex, int NV>
void ExtremeSlab(const typename K::Elem* x, typename K::Elem* out, int32_t* idx, int64_t R) {
  constexpr bool kKeyed = !K::kExact;
  constexpr int64_t Q = NV * kLanes;
  typename K::V m[NV];
  VI k[NV];
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) {
    m[u] = K::VLoad(x + u * kLanes);
    k[u] = VI{};
  }
  for (int64_t r = 1; r < R; ++r) {
    const typename K::Elem* row = x + r * Q;
    [[maybe_unused]] const VI rv = VI{} + static_cast<int32_t>(r);
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) {
      Step<K, kIndex || kKeyed>(K::VLoad(row + u * kLanes), m[u], k[u], rv);
    }
  }
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) {
    for (int l = 0; l < kLanes; ++l) {
      const int64_t j = u * kLanes + l;
      if constexpr (kKeyed) {
        out[j] = x[static_cast<int64_t>(k[u][l]) * Q + j];
      } else {
        out[j] = K::Value(m[u][l]);
      }
    }
    if constexpr (kIndex) VStore(idx + u * kLanes, k[u]);
  }
}

// The most vectors per row that ExtremeSlab keeps in registers (two registers per vector with
// positions).
constexpr int kSlabVectors = kBlockVectors;
constexpr int kSlabIndexVectors = kBlockVectors * 3 / 4;

// v with lane l + W moved to lane l (the upper lanes wrap around; they are not used).
template <int W, typename V, size_t... I>
inline V Down(const V& v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, static_cast<int>((I + W) % kLanes)...);
}

// Lane 0 of (m, k) becomes the best of the lanes [0, 2 W) and its position: pairs of lanes
// merged by halves (the better key, or the earlier position of equal keys), in vector registers
// (a scalar loop over the lanes cost more than the row itself for short rows).
template <typename K, int W>
inline void MergeLanes(typename K::V& m, VI& k) {
  if constexpr (W >= 1) {
    const typename K::V mb = Down<W>(m, std::make_index_sequence<kLanes>());
    const VI kb = Down<W>(k, std::make_index_sequence<kLanes>());
    const VI take = K::VTake(mb, m) | (K::VSame(mb, m) & (kb < k));
    m = take ? mb : m;
    k = take ? kb : k;
    MergeLanes<K, W / 2>(m, k);
  }
}

// One contiguous row of R elements (Q == 1): kLanes interleaved running bests, then merged.
template <typename K>
void ExtremeRow(const typename K::Elem* x, int64_t R, typename K::Elem* out, int32_t* idx) {
  using Key = typename K::Key;
  Key best = K::Load(x[0]);
  int32_t at = 0;
  int64_t r = 1;
  if constexpr (K::kVector) {
    if (R >= 2 * kLanes) {
      typename K::V m = K::VLoad(x);
      VI lane;
      for (int l = 0; l < kLanes; ++l) lane[l] = l;
      VI k = lane;
      const int64_t end = R - R % kLanes;
      for (r = kLanes; r < end; r += kLanes) {
        Step<K, true>(K::VLoad(x + r), m, k, lane + static_cast<int32_t>(r));
      }
      // Each lane holds its own first winner; the row's is the best key, earliest on ties.
      MergeLanes<K, kLanes / 2>(m, k);
      best = m[0];
      at = k[0];
    }
  }
  for (; r < R; ++r) {  // The rest comes after every lane element: plain first-wins order.
    Key v = K::Load(x[r]);
    if (K::Take(v, best)) {
      best = v;
      at = static_cast<int32_t>(r);
    }
  }
  *out = x[at];
  if (idx) *idx = at;
}

template <typename K, bool kIndex>
void Extreme(ffi::ThreadPool& pool, const void* xv, void* ov, int32_t* idx, int64_t P, int64_t R,
             int64_t Q) {
  using E = typename K::Elem;
  const E* x = static_cast<const E*>(xv);
  E* out = static_cast<E*>(ov);
  if (Q == 1) {
    ParallelFor(pool, P, P * R, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        ExtremeRow<K>(x + p * R, R, out + p, kIndex ? idx + p : nullptr);
      }
    });
    return;
  }
  constexpr int kMaxSlab = kIndex || !K::kExact ? kSlabIndexVectors : kSlabVectors;
  if constexpr (K::kVector) {
    if (Q % kLanes == 0 && Q / kLanes <= kMaxSlab) {
      ParallelFor(pool, P, P * R * Q, [&](int64_t b, int64_t e) {
        WithVectors<kMaxSlab>(static_cast<int>(Q / kLanes), [&](auto n) {
          for (int64_t p = b; p < e; ++p) {
            ExtremeSlab<K, kIndex, decltype(n)::value>(x + p * R * Q, out + p * Q,
                                                        kIndex ? idx + p * Q : nullptr, R);
          }
        });
      });
      return;
    }
  }
  int64_t blocks = (Q + kColumns - 1) / kColumns;
  ParallelFor(pool, P * blocks, P * R * Q, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t p = i / blocks, q0 = (i % blocks) * kColumns;
      ExtremeColumns<K, kIndex>(x + p * R * Q, out + p * Q, kIndex ? idx + p * Q : nullptr, R, Q,
                                q0, std::min(kColumns, Q - q0));
    }
  });
}

template <bool kLargest, bool kIndex>
ffi::Error Dispatch(ffi::ThreadPool& pool, ffi::AnyBuffer x, void* out, int32_t* idx) {
  auto dims = x.dimensions();
  int64_t n = dims.size();
  if (n < 3) return ffi::Error::InvalidArgument("gapjax_extreme: x must have rank >= 3");
  int64_t R = dims[n - 2], Q = dims[n - 1], P = 1;
  for (int64_t i = 0; i < n - 2; ++i) P *= dims[i];
  if (P * Q == 0) return ffi::Error::Success();
  if (R == 0) return ffi::Error::InvalidArgument("gapjax_extreme: empty reduction");
  const void* xv = x.untyped_data();
  switch (x.element_type()) {
    case ffi::DataType::F32:
      Extreme<FloatKey<float, kLargest>, kIndex>(pool, xv, out, idx, P, R, Q);
      break;
    case ffi::DataType::F64:
      Extreme<FloatKey<double, kLargest>, kIndex>(pool, xv, out, idx, P, R, Q);
      break;
    case ffi::DataType::BF16:
      Extreme<Bf16Key<kLargest>, kIndex>(pool, xv, out, idx, P, R, Q);
      break;
    case ffi::DataType::F16:
      Extreme<HalfKey<0x7c00, kLargest>, kIndex>(pool, xv, out, idx, P, R, Q);
      break;
    default:
      return ffi::Error::InvalidArgument("gapjax_extreme: unsupported dtype");
  }
  return ffi::Error::Success();
}

ffi::Error ExtremeImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> out,
                       bool largest) {
  void* o = out->untyped_data();
  return largest ? Dispatch<true, false>(pool, x, o, nullptr)
                 : Dispatch<false, false>(pool, x, o, nullptr);
}

ffi::Error ExtremeIndexImpl(ffi::ThreadPool pool, ffi::AnyBuffer x,
                            ffi::Result<ffi::AnyBuffer> out,
                            ffi::Result<ffi::Buffer<ffi::S32>> idx, bool largest) {
  void* o = out->untyped_data();
  int32_t* i = idx->typed_data();
  return largest ? Dispatch<true, true>(pool, x, o, i) : Dispatch<false, true>(pool, x, o, i);
}

// ---------------------------------------------------------------------------------------------
// Global sum over axis R of (P, R, Q), accumulated in float32 (float32 or bfloat16 input),
// divided by `divisor` (the mean; 1 for the sum).
// ---------------------------------------------------------------------------------------------

// Column sums of a (rows, Q) slab, rows read in order (sequential streams; reading a few rows
// interleaved ran markedly slower on large inputs): each group of kSumRows rows is summed in
// order into `part`, which is then added to the running total (the rounding error grows with
// kSumRows + rows / kSumRows, not with rows). Both are kept in L1: at most kSumColumns floats.
constexpr int64_t kSumColumns = 2048;
constexpr int64_t kSumRows = 16;

// acc[0, w) (+)= row[0, w), widened to float32.
template <bool kFirst, typename E>
inline void AddRow(const E* row, int64_t w, float* acc) {
  const int64_t nv = w / kLanes;
  for (int64_t u = 0; u < nv; ++u) {
    VF v = LoadF(row + u * kLanes);
    if (!kFirst) v += VLoadRaw<VF>(acc + u * kLanes);
    VStore(acc + u * kLanes, v);
  }
  for (int64_t j = nv * kLanes; j < w; ++j) acc[j] = kFirst ? LoadF1(row + j) : acc[j] + LoadF1(row + j);
}

// total[0, w) = the sums over rows [0, n) of columns [0, w) of x (row stride Q).
template <typename E>
void SumColumns(const E* x, int64_t n, int64_t Q, int64_t w, float* total) {
  alignas(64) float part[kSumColumns];
  for (int64_t r0 = 0; r0 < n; r0 += kSumRows) {
    const int64_t r1 = std::min(n, r0 + kSumRows);
    float* acc = r0 == 0 ? total : part;
    AddRow<true>(x + r0 * Q, w, acc);
    for (int64_t r = r0 + 1; r < r1; ++r) AddRow<false>(x + r * Q, w, acc);
    if (r0 > 0) AddRow<false>(part, w, total);
  }
}

// SumColumns for rows of exactly NV vectors (w = Q = NV kLanes): each group's partial sums in
// registers, no L1 round trip per element.
template <int NV, typename E>
void SumSlab(const E* x, int64_t n, float* total) {
  constexpr int64_t Q = NV * kLanes;
  for (int64_t r0 = 0; r0 < n; r0 += kSumRows) {
    const int64_t r1 = std::min(n, r0 + kSumRows);
    VF part[NV];
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) part[u] = LoadF(x + r0 * Q + u * kLanes);
    for (int64_t r = r0 + 1; r < r1; ++r) {
#pragma GCC unroll 16
      for (int u = 0; u < NV; ++u) part[u] += LoadF(x + r * Q + u * kLanes);
    }
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) {
      VStore(total + u * kLanes, r0 == 0 ? part[u] : VLoadRaw<VF>(total + u * kLanes) + part[u]);
    }
  }
}

// The 16 lanes of a added pairwise by halves (shuffles: indexing the lanes went through memory).
inline float HorizontalSum(VF a) {
  typedef float V8 __attribute__((vector_size(32)));
  typedef float V4 __attribute__((vector_size(16)));
  V8 b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
         __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  V4 c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  c += __builtin_shufflevector(c, c, 2, 3, 2, 3);
  return c[0] + c[1];
}

// The sum of one contiguous row (Q == 1): 4 x 16 interleaved partial sums, added pairwise.
template <typename E>
float SumContiguous(const E* x, int64_t n) {
  VF a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t r = 0;
  for (; r + 4 * kLanes <= n; r += 4 * kLanes) {
    a0 += LoadF(x + r);
    a1 += LoadF(x + r + kLanes);
    a2 += LoadF(x + r + 2 * kLanes);
    a3 += LoadF(x + r + 3 * kLanes);
  }
  for (; r + kLanes <= n; r += kLanes) a0 += LoadF(x + r);
  float tail = 0.0f;
  for (; r < n; ++r) tail += LoadF1(x + r);
  return HorizontalSum((a0 + a1) + (a2 + a3)) + tail;
}

// Rows of contiguous elements (Q == 1) in parallel; slabs times column pieces (kSumColumns wide)
// otherwise. When there are fewer of those than threads, each thread sums a range of rows into
// a partial total, and the partials are added in order afterwards (so the result does not
// depend on the threads).
template <typename E>
void Sum(ffi::ThreadPool& pool, const E* x, float* out, int64_t P, int64_t R, int64_t Q,
         float divisor) {
  auto finish = [divisor](float v) { return divisor == 1.0f ? v : v / divisor; };
  const int64_t width = Q == 1 ? 1 : std::min(Q, kSumColumns);
  const int64_t pieces = (Q + width - 1) / width;
  const int64_t threads = P * R * Q < kMinParallelElements ? 1 : pool.num_threads();
  int64_t splits = 1;
  if (P * pieces < 2 * threads) {
    splits = std::max<int64_t>(1, std::min(4 * threads / (P * pieces), R / 256));
  }
  if (splits == 1 && Q == 1) {
    ParallelFor(pool, P, P * R, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) out[p] = finish(SumContiguous(x + p * R, R));
    });
    return;
  }
  std::vector<float> partial(splits > 1 ? P * Q * splits : 0);
  ParallelFor(pool, P * pieces * splits, P * R * Q, [&](int64_t b, int64_t e) {
    alignas(64) float total[kSumColumns];
    for (int64_t i = b; i < e; ++i) {
      const int64_t s = i % splits, c = (i / splits) % pieces, p = i / (splits * pieces);
      const int64_t r0 = s * R / splits, r1 = (s + 1) * R / splits;
      const int64_t q0 = c * width, w = std::min(width, Q - q0);
      const E* xs = x + (p * R + r0) * Q + q0;
      if (Q == 1) {
        total[0] = SumContiguous(xs, r1 - r0);
      } else if (Q % kLanes == 0 && Q / kLanes <= kSlabVectors) {
        WithVectors<kSlabVectors>(static_cast<int>(Q / kLanes),
                                  [&](auto n) { SumSlab<decltype(n)::value>(xs, r1 - r0, total); });
      } else {
        SumColumns(xs, r1 - r0, Q, w, total);
      }
      if (splits > 1) {
        std::copy(total, total + w, partial.data() + (s * P + p) * Q + q0);
      } else {
        for (int64_t j = 0; j < w; ++j) out[p * Q + q0 + j] = finish(total[j]);
      }
    }
  });
  if (splits > 1) {
    for (int64_t j = 0; j < P * Q; ++j) {
      float v = partial[j];
      for (int64_t s = 1; s < splits; ++s) v += partial[s * P * Q + j];
      out[j] = finish(v);
    }
  }
}

ffi::Error SumImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::Buffer<ffi::F32>> out,
                   float divisor) {
  auto dims = x.dimensions();
  const int64_t n = dims.size();
  if (n < 3) return ffi::Error::InvalidArgument("gapjax_sum: x must have rank >= 3");
  int64_t R = dims[n - 2], Q = dims[n - 1], P = 1;
  for (int64_t i = 0; i < n - 2; ++i) P *= dims[i];
  if (P * Q == 0) return ffi::Error::Success();
  float* o = out->typed_data();
  if (R == 0) {
    std::fill(o, o + P * Q, 0.0f / divisor);  // 0, or NaN for the mean
    return ffi::Error::Success();
  }
  switch (x.element_type()) {
    case ffi::DataType::F32:
      Sum(pool, static_cast<const float*>(x.untyped_data()), o, P, R, Q, divisor);
      break;
    case ffi::DataType::BF16:
      Sum(pool, static_cast<const uint16_t*>(x.untyped_data()), o, P, R, Q, divisor);
      break;
    default:
      return ffi::Error::InvalidArgument("gapjax_sum: x must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Windows (float32): the extreme of every window and its winning tap (max/min pooling), window
// sums (average pooling, the tangent of max pooling) and their transposes (backward passes).
// ---------------------------------------------------------------------------------------------

// x (P, S, Q) with S = L_1 ... L_k the pooled axes (row-major), Q the contiguous rest. The
// geometry attribute holds k, then L_a, O_a (outputs) and T_a (taps) per axis, then per axis
// the (O_a, T_a) table of the input position each tap of each output reads (-1: padding or
// past the window). Taps are numbered row-major over the axes' taps.
struct Geometry {
  int k = 0;
  int64_t L[3], O[3], T[3];
  const int64_t* src[3];
  int64_t taps = 1, outs = 1, size = 1;
};

bool ParseGeometry(ffi::Span<const int64_t> g, Geometry& geo) {
  if (g.size() < 1) return false;
  geo.k = static_cast<int>(g[0]);
  if (geo.k < 1 || geo.k > 3 || static_cast<int64_t>(g.size()) < 1 + 3 * geo.k) return false;
  int64_t at = 1 + 3 * geo.k;
  for (int a = 0; a < geo.k; ++a) {
    geo.L[a] = g[1 + a];
    geo.O[a] = g[1 + geo.k + a];
    geo.T[a] = g[1 + 2 * geo.k + a];
    geo.src[a] = g.begin() + at;
    at += geo.O[a] * geo.T[a];
    geo.taps *= geo.T[a];
    geo.outs *= geo.O[a];
    geo.size *= geo.L[a];
  }
  return at == static_cast<int64_t>(g.size());
}

// The small setup loops over the pooled axes read index arrays just written by scalar stores;
// vectorized, those reads stall on store-to-load forwarding (they cost more than the sums).
#if defined(__GNUC__) && !defined(__clang__)
#define NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define NO_VECTORIZE
#endif

// Checks a window call's geometry and input x (P..., A, Q): on success fills geo and the sizes
// (P the product of the leading axes); the error names the kernel.
ffi::Error ParseWindowCall(const char* name, ffi::Span<const int64_t> geometry,
                           ffi::Span<const int64_t> dims, Geometry& geo, int64_t& P, int64_t& A,
                           int64_t& Q) {
  if (!ParseGeometry(geometry, geo)) {
    return ffi::Error::InvalidArgument(std::string(name) + ": malformed geometry");
  }
  if (dims.size() < 3) return ffi::Error::InvalidArgument(std::string(name) + ": rank < 3");
  const int64_t n = dims.size();
  Q = dims[n - 1];
  A = dims[n - 2];
  P = 1;
  for (int64_t i = 0; i < n - 2; ++i) P *= dims[i];
  return ffi::Error::Success();
}

// One row of the reduction: a row of a (., Q) array at offset `off`, its tap number, and the
// factor it is scaled by (scatter of a scaled sum).
struct Term {
  int64_t off;
  int32_t tap;
  float scale;
};

// The terms of the output with multi-index oi of a gather: the taps inside x in row-major
// order, at offset pos * Q. Writes them to `terms` (room for geo.taps), returns their count.
// (Fields are stored one by one: a Term built on the stack and copied whole stalls on
// store-to-load forwarding.)
NO_VECTORIZE int64_t GatherTerms(const Geometry& geo, const int64_t* oi, int64_t Q, Term* terms) {
  static const int64_t kZero = 0;
  const int64_t* src[3] = {&kZero, &kZero, &kZero};
  int64_t T[3] = {1, 1, 1}, L[3] = {1, 1, 1};
  for (int a = 0; a < geo.k; ++a) {
    src[a] = geo.src[a] + oi[a] * geo.T[a];
    T[a] = geo.T[a];
    L[a] = geo.L[a];
  }
  int64_t n = 0;
  int32_t tap = 0;
  for (int64_t j0 = 0; j0 < T[0]; ++j0) {
    for (int64_t j1 = 0; j1 < T[1]; ++j1) {
      for (int64_t j2 = 0; j2 < T[2]; ++j2, ++tap) {
        const int64_t s0 = src[0][j0], s1 = src[1][j1], s2 = src[2][j2];
        if ((s0 | s1 | s2) < 0) continue;
        terms[n].off = ((s0 * L[1] + s1) * L[2] + s2) * Q;
        terms[n].tap = tap;
        terms[n].scale = 1.0f;
        ++n;
      }
    }
  }
  return n;
}

// For every input position u of every axis, the (output, tap) pairs that read it, ascending.
struct Readers {
  std::vector<int64_t> start[3];
  std::vector<std::pair<int64_t, int64_t>> pairs[3];
  int64_t most = 1;  // the most (output, tap) pairs that read one input cell
  explicit Readers(const Geometry& geo) {
    for (int a = 0; a < geo.k; ++a) {
      std::vector<int64_t> at(geo.L[a] + 1, 0);
      for (int64_t i = 0; i < geo.O[a] * geo.T[a]; ++i) {
        if (geo.src[a][i] >= 0) ++at[geo.src[a][i] + 1];
      }
      most *= *std::max_element(at.begin(), at.end());
      for (int64_t u = 0; u < geo.L[a]; ++u) at[u + 1] += at[u];
      start[a] = at;
      pairs[a].resize(at[geo.L[a]]);
      for (int64_t o = 0; o < geo.O[a]; ++o) {
        for (int64_t j = 0; j < geo.T[a]; ++j) {
          const int64_t s = geo.src[a][o * geo.T[a] + j];
          if (s >= 0) pairs[a][at[s]++] = {o, j};
        }
      }
    }
  }
};

// The terms of the input cell with multi-index u of a scatter: every (output, tap) that reads
// it, at offset o * Q, scaled by scale[o] where given. Writes them to `terms` (room for
// rd.most), returns their count.
NO_VECTORIZE int64_t ScatterTerms(const Geometry& geo, const Readers& rd, const int64_t* u, int64_t Q,
                     const float* scale, Term* terms) {
  static const std::pair<int64_t, int64_t> kUnit{0, 0};
  const std::pair<int64_t, int64_t>* list[3] = {&kUnit, &kUnit, &kUnit};
  int64_t n[3] = {1, 1, 1}, O[3] = {1, 1, 1}, T[3] = {1, 1, 1};
  for (int a = 0; a < geo.k; ++a) {
    list[a] = rd.pairs[a].data() + rd.start[a][u[a]];
    n[a] = rd.start[a][u[a] + 1] - rd.start[a][u[a]];
    O[a] = geo.O[a];
    T[a] = geo.T[a];
  }
  int64_t count = 0;
  for (int64_t i0 = 0; i0 < n[0]; ++i0) {
    for (int64_t i1 = 0; i1 < n[1]; ++i1) {
      for (int64_t i2 = 0; i2 < n[2]; ++i2) {
        const auto &e0 = list[0][i0], &e1 = list[1][i1], &e2 = list[2][i2];
        const int64_t o = (e0.first * O[1] + e1.first) * O[2] + e2.first;
        terms[count].off = o * Q;
        terms[count].tap = static_cast<int32_t>((e0.second * T[1] + e1.second) * T[2] + e2.second);
        terms[count].scale = scale ? scale[o] : 1.0f;
        ++count;
      }
    }
  }
  return count;
}

// Rows [b, e) of a (P, R) grid whose R rows have the multi-index shape dims[0, k): f(i, p,
// index) for each, the multi-index advanced like an odometer (no division per row).
template <typename F>
inline void ForRows(int64_t b, int64_t e, int64_t R, int k, const int64_t* dims, const F& f) {
  int64_t p = b / R, r = b % R;
  int64_t idx[3] = {0, 0, 0};
  for (int a = k - 1; a >= 0; --a) {
    idx[a] = r % dims[a];
    r /= dims[a];
  }
  for (int64_t i = b; i < e; ++i) {
    f(i, p, idx);
    for (int a = k - 1; a >= 0; --a) {
      if (++idx[a] < dims[a]) break;
      idx[a] = 0;
      if (a == 0) ++p;
    }
  }
}

// The terms of every row of a gather (rows: outputs) or scatter (rows: input cells), computed
// once per call and shared by every slab p; `rows` of them, CSR. Left empty (each row then
// computes its own) when the table would pass kMaxTableTerms.
constexpr int64_t kMaxTableTerms = 1 << 20;

struct TermTable {
  std::vector<Term> terms;
  std::vector<int64_t> start;
  bool empty() const { return start.empty(); }
  // Row r's terms and their count.
  const Term* Row(int64_t r, int64_t* n) const {
    *n = start[r + 1] - start[r];
    return terms.data() + start[r];
  }
};

template <typename Terms>
TermTable MakeTable(int64_t rows, int k, const int64_t* dims, int64_t most, const Terms& fill) {
  TermTable table;
  if (rows * most > kMaxTableTerms) return table;
  table.terms.resize(rows * most);
  table.start.reserve(rows + 1);
  table.start.push_back(0);
  int64_t n = 0;
  ForRows(0, rows, rows, k, dims, [&](int64_t, int64_t, const int64_t* at) {
    n += fill(at, table.terms.data() + n);
    table.start.push_back(n);
  });
  table.terms.resize(n);
  return table;
}

// 16 winners as int32 lanes, from int8 or int32. (GCC's generic int8 -> int32 vector
// conversion goes through scalar registers; the x86 sign-extending loads do it in one step.)
template <typename W>
inline VI LoadWin(const W* p) {
  if constexpr (std::is_same_v<W, int8_t>) {
#if defined(__AVX512F__)
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return reinterpret_cast<VI>(_mm512_cvtepi8_epi32(b));
#elif defined(__AVX2__)
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i lo = _mm256_cvtepi8_epi32(b), hi = _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8));
    VI v;
    std::memcpy(&v, &lo, 32);
    std::memcpy(reinterpret_cast<char*>(&v) + 32, &hi, 32);
    return v;
#else
    typedef int8_t VB __attribute__((vector_size(16)));
    return __builtin_convertvector(VLoadRaw<VB>(p), VI);
#endif
  } else {
    return VLoadRaw<VI>(p);
  }
}

// 16 int32 lanes stored as winners (int8: narrowed, the values fit).
template <typename W>
inline void StoreWin(W* p, VI v) {
  if constexpr (std::is_same_v<W, int8_t>) {
#if defined(__AVX512F__)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(reinterpret_cast<__m512i>(v)));
#else
    for (int l = 0; l < kLanes; ++l) p[l] = static_cast<int8_t>(v[l]);
#endif
  } else {
    VStore(p, v);
  }
}

// For each block of up to kMax whole vectors of the columns [0, Q): f(n, q0), n the block's
// vector count (compile time), q0 its first column. Returns where the columns left over (fewer
// than kLanes) start.
template <int kMax, typename F>
inline int64_t ForBlocks(int64_t Q, const F& f) {
  int64_t q0 = 0;
  while (Q - q0 >= kLanes) {
    const int nv = static_cast<int>(std::min<int64_t>(kMax, (Q - q0) / kLanes));
    WithVectors<kMax>(nv, [&](auto n) { f(n, q0); });
    q0 += nv * kLanes;
  }
  return q0;
}

// Sums of the terms over columns [0, NV kLanes) of a block: out = sum_t (win == tap_t ?
// x[off_t] * scale_t : 0) (no winners: every term; kScale: the terms' own factors), times
// `factor`. With kWinAtTerm the winners sit at each term's offset (scatter), else at `win`.
template <int NV, typename W, bool kScale, bool kWinAtTerm>
inline void SumBlock(const float* x, const W* win, const Term* terms, int64_t nterms, float factor,
                     float* out) {
  VF acc[NV];
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) acc[u] = VF{};
  for (int64_t t = 0; t < nterms; ++t) {
    const Term& term = terms[t];
    const float* row = x + term.off;
    [[maybe_unused]] const VI tv = VI{} + term.tap;
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) {
      VF v = VLoadRaw<VF>(row + u * kLanes);
      if constexpr (kScale) v = v * term.scale;
      if constexpr (!std::is_void_v<W>) {
        const W* wr = kWinAtTerm ? win + term.off : win;
        v = LoadWin(wr + u * kLanes) == tv ? v : VF{};
      }
      acc[u] += v;
    }
  }
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) VStore(out + u * kLanes, acc[u] * factor);
}

// One row of width Q of a gather or scatter: the register blocks, then the columns left over.
template <typename W, bool kScale, bool kWinAtTerm>
void SumRow(const float* x, const W* win, const Term* tp, int64_t nt, int64_t Q, float factor,
            float* out) {
  const int64_t q0 = ForBlocks<kBlockVectors>(Q, [&](auto n, int64_t q) {
    const W* wq = nullptr;
    if constexpr (!std::is_void_v<W>) wq = win + q;
    SumBlock<decltype(n)::value, W, kScale, kWinAtTerm>(x + q, wq, tp, nt, factor, out + q);
  });
  for (int64_t j = q0; j < Q; ++j) {
    float acc = 0.0f;
    for (int64_t t = 0; t < nt; ++t) {
      float v = x[tp[t].off + j];
      if constexpr (kScale) v = v * tp[t].scale;
      if constexpr (!std::is_void_v<W>) {
        const W* wr = kWinAtTerm ? win + tp[t].off : win;
        v = wr[j] == tp[t].tap ? v : 0.0f;
      }
      acc += v;
    }
    out[j] = acc * factor;
  }
}

// The extreme of the terms over columns [0, NV kLanes) and its winning tap: the first tap equal
// to the extreme (strictly better replaces), or the last NaN.
template <int NV, bool kLargest, typename W>
inline void SelectBlock(const float* x, const Term* terms, int64_t nterms, float identity,
                        bool has_floor, float floor, float* best, W* win) {
  VF m[NV];
  VI k[NV];
  const float* first = x + terms[0].off;
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) {
    m[u] = VLoadRaw<VF>(first + u * kLanes);
    k[u] = VI{} + terms[0].tap;
  }
  for (int64_t t = 1; t < nterms; ++t) {
    const float* row = x + terms[t].off;
    const VI tv = VI{} + terms[t].tap;
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) {
      const VF v = VLoadRaw<VF>(row + u * kLanes);
      const VI take = (kLargest ? (v > m[u]) : (v < m[u])) | (v != v);
      m[u] = take ? v : m[u];
      k[u] = take ? tv : k[u];
    }
  }
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) {
    if (has_floor) {
      const VI beyond = kLargest ? (m[u] < floor) : (m[u] > floor);
      m[u] = beyond ? VF{} + floor : m[u];
      k[u] = beyond ? VI{} - 1 : k[u];
    }
    VStore(best + u * kLanes, m[u]);
    StoreWin(win + u * kLanes, k[u]);
  }
}

template <bool kLargest, typename W>
void SelectRow(const float* x, const Term* tp, int64_t nt, int64_t Q, float identity,
               bool has_floor, float floor, float* best, W* win) {
  if (nt == 0) {  // no tap inside x: the identity, no winner (then Caffe's floor, if any)
    for (int64_t j = 0; j < Q; ++j) {
      const bool beyond = has_floor && (kLargest ? identity < floor : identity > floor);
      best[j] = beyond ? floor : identity;
      win[j] = static_cast<W>(-1);
    }
    return;
  }
  const int64_t q0 = ForBlocks<kSelectVectors>(Q, [&](auto n, int64_t q) {
    SelectBlock<decltype(n)::value, kLargest, W>(x + q, tp, nt, identity, has_floor, floor,
                                                 best + q, win + q);
  });
  for (int64_t j = q0; j < Q; ++j) {
    float m = x[tp[0].off + j];
    int32_t k = tp[0].tap;
    for (int64_t t = 1; t < nt; ++t) {
      const float v = x[tp[t].off + j];
      if ((kLargest ? v > m : v < m) || v != v) {
        m = v;
        k = tp[t].tap;
      }
    }
    if (has_floor && (kLargest ? m < floor : m > floor)) {
      m = floor;
      k = -1;
    }
    best[j] = m;
    win[j] = static_cast<W>(k);
  }
}

// (P, S, Q) -> the extreme (P, O, Q) and the winning tap (int8 or int32): the first tap equal to
// the extreme, or the last NaN; for a window without any tap inside x, -1 and the identity
// (-inf for max). With has_floor (Caffe's -FLT_MAX start), an extreme beyond the floor becomes
// the floor, and its winner -1.
ffi::Error SelectImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                      ffi::Result<ffi::Buffer<ffi::F32>> best, ffi::Result<ffi::AnyBuffer> win,
                      ffi::Span<const int64_t> geometry, bool largest, bool has_floor,
                      float floor) {
  Geometry geo;
  int64_t P, S, Q;
  ffi::Error parsed = ParseWindowCall("gapjax_window_select", geometry, x.dimensions(), geo, P, S, Q);
  if (parsed.failure()) return parsed;
  if (S != geo.size) return ffi::Error::InvalidArgument("gapjax_window_select: size mismatch");
  const float* xp = x.typed_data();
  float* bp = best->typed_data();
  AdviseHuge(bp, best->size_bytes());
  AdviseHuge(win->untyped_data(), win->size_bytes());
  const bool narrow = win->element_type() == ffi::DataType::S8;
  void* wp = win->untyped_data();
  const float identity = largest ? -INFINITY : INFINITY;
  const TermTable table = MakeTable(geo.outs, geo.k, geo.O, geo.taps, [&](const int64_t* oi, Term* t) {
    return GatherTerms(geo, oi, Q, t);
  });
  ParallelFor(pool, P * geo.outs, P * S * Q, [&](int64_t b, int64_t e) {
    std::vector<Term> terms(table.empty() ? geo.taps : 0);
    ForRows(b, e, geo.outs, geo.k, geo.O, [&](int64_t i, int64_t p, const int64_t* oi) {
      int64_t nt;
      const Term* tp = table.empty() ? terms.data() : table.Row(i - p * geo.outs, &nt);
      if (table.empty()) nt = GatherTerms(geo, oi, Q, terms.data());
      const float* xs = xp + p * S * Q;
      float* bo = bp + i * Q;
      if (narrow) {
        int8_t* wo = static_cast<int8_t*>(wp) + i * Q;
        largest ? SelectRow<true>(xs, tp, nt, Q, identity, has_floor, floor, bo, wo)
                : SelectRow<false>(xs, tp, nt, Q, identity, has_floor, floor, bo, wo);
      } else {
        int32_t* wo = static_cast<int32_t*>(wp) + i * Q;
        largest ? SelectRow<true>(xs, tp, nt, Q, identity, has_floor, floor, bo, wo)
                : SelectRow<false>(xs, tp, nt, Q, identity, has_floor, floor, bo, wo);
      }
    });
  });
  return ffi::Error::Success();
}

// Gather without winners, by input lines: the windows' sums accumulated line by line of the
// last pooled axis, so that x is read in order (a line is the L_last cells of one position of
// the other pooled axes). The outputs of one position of the other axes (times Q) are a line's
// worth of running sums, kept in L1 (kLineFloats at most: wider lines are split in tiles of
// outputs). Each window still adds its taps in row-major tap order from 0, as the term-table
// path: the same sums, bit for bit. Reading the taps of each window at once instead (several
// lines interleaved) ran slower on large windows.
constexpr int64_t kLineFloats = 4096;
// Windows of more taps than this are gathered by lines; smaller ones (which overlap more, e.g.
// 3x3 stride 1, where a line would be read and its sums stored once per tap row) by terms.
constexpr int64_t kLineMinTaps = 33;

// acc[0, NV kLanes) += the columns at offsets cols[0, nc) of line (in order).
template <int NV>
inline void AddTaps(const float* line, const int64_t* cols, int64_t nc, float* acc) {
  VF r[NV];
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) r[u] = VLoadRaw<VF>(acc + u * kLanes);
  for (int64_t c = 0; c < nc; ++c) {
    const float* at = line + cols[c];
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) r[u] += VLoadRaw<VF>(at + u * kLanes);
  }
#pragma GCC unroll 16
  for (int u = 0; u < NV; ++u) VStore(acc + u * kLanes, r[u]);
}

struct LinePlan {
  int k = 0;
  int64_t lines_out = 1;  // outputs over the other axes (product of O_a, a < k - 1)
  int64_t O = 1, tile = 1, tiles = 1;  // outputs along the last axis, in tiles
  // Per last-axis output: its valid taps' column offsets (cell * Q), CSR.
  std::vector<int64_t> col_start, cols;
  // Per other axis a and output i: its valid taps' cells, CSR.
  std::vector<int64_t> cell_start[2], cells[2];
};

LinePlan MakeLinePlan(const Geometry& geo, int64_t Q) {
  LinePlan lp;
  lp.k = geo.k;
  const int last = geo.k - 1;
  lp.O = geo.O[last];
  lp.tile = std::max<int64_t>(1, std::min(lp.O, kLineFloats / Q));
  lp.tiles = (lp.O + lp.tile - 1) / lp.tile;
  lp.col_start.push_back(0);
  for (int64_t o = 0; o < lp.O; ++o) {
    for (int64_t t = 0; t < geo.T[last]; ++t) {
      const int64_t c = geo.src[last][o * geo.T[last] + t];
      if (c >= 0) lp.cols.push_back(c * Q);
    }
    lp.col_start.push_back(static_cast<int64_t>(lp.cols.size()));
  }
  for (int a = 0; a < last; ++a) {
    lp.lines_out *= geo.O[a];
    lp.cell_start[a].push_back(0);
    for (int64_t i = 0; i < geo.O[a]; ++i) {
      for (int64_t t = 0; t < geo.T[a]; ++t) {
        const int64_t c = geo.src[a][i * geo.T[a] + t];
        if (c >= 0) lp.cells[a].push_back(c);
      }
      lp.cell_start[a].push_back(static_cast<int64_t>(lp.cells[a].size()));
    }
  }
  return lp;
}

// One unit: slab p, outputs `line` over the other axes, tile t of the last axis' outputs.
void GatherLines(const Geometry& geo, const LinePlan& lp, const float* slab, int64_t Q,
                 int64_t line, int64_t t, const float* sc, float* out, float* acc) {
  const int last = geo.k - 1;
  const int64_t o0 = t * lp.tile, o1 = std::min(lp.O, o0 + lp.tile);
  std::fill(acc, acc + (o1 - o0) * Q, 0.0f);
  // The cells of the other axes (at most two) read by output `line`, row-major.
  int64_t i[2] = {0, 0};
  if (last == 2) {
    i[0] = line / geo.O[1];
    i[1] = line % geo.O[1];
  } else if (last == 1) {
    i[0] = line;
  }
  const int64_t* c0 = lp.cells[0].data() + (last > 0 ? lp.cell_start[0][i[0]] : 0);
  const int64_t n0 = last > 0 ? lp.cell_start[0][i[0] + 1] - lp.cell_start[0][i[0]] : 1;
  const int64_t* c1 = lp.cells[1].data() + (last > 1 ? lp.cell_start[1][i[1]] : 0);
  const int64_t n1 = last > 1 ? lp.cell_start[1][i[1] + 1] - lp.cell_start[1][i[1]] : 1;
  const int64_t L1 = last > 1 ? geo.L[1] : 1;
  for (int64_t a = 0; a < n0; ++a) {
    for (int64_t b = 0; b < n1; ++b) {
      const int64_t cell = (last > 0 ? c0[a] : 0) * L1 + (last > 1 ? c1[b] : 0);
      const float* src = slab + cell * geo.L[last] * Q;
      for (int64_t o = o0; o < o1; ++o) {
        const int64_t* cols = lp.cols.data() + lp.col_start[o];
        const int64_t nc = lp.col_start[o + 1] - lp.col_start[o];
        float* ao = acc + (o - o0) * Q;
        const int64_t q0 = ForBlocks<kBlockVectors>(Q, [&](auto n, int64_t q) {
          AddTaps<decltype(n)::value>(src + q, cols, nc, ao + q);
        });
        for (int64_t j = q0; j < Q; ++j) {
          float v = ao[j];
          for (int64_t c = 0; c < nc; ++c) v += src[cols[c] + j];
          ao[j] = v;
        }
      }
    }
  }
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t r = line * lp.O + o;
    const float f = sc ? sc[r] : 1.0f;
    const float* ao = acc + (o - o0) * Q;
    float* dst = out + r * Q;
    for (int64_t j = 0; j < Q; ++j) dst[j] = ao[j] * f;
  }
}

// Gather: in (P, S, Q) -> out (P, O, Q), every window's sum of its taps in row-major tap order,
// starting from 0 (the XLA formulation's order), only the tap win[o] with winners, times
// scale[o] where given. Scatter, its transpose: in (P, O, Q) -> out (P, S, Q).
// Whether the geometry is one window over all cells of one axis, its taps the cells in order
// (global pooling).
bool IsGlobal(const Geometry& geo) {
  if (geo.k != 1 || geo.O[0] != 1 || geo.T[0] != geo.L[0]) return false;
  for (int64_t t = 0; t < geo.T[0]; ++t) {
    if (geo.src[0][t] != t) return false;
  }
  return true;
}

// WindowLinear of a global window over contiguous rows (Q == 1: global pooling, channels
// first), where the generic paths would handle one value per row: the same values, bit for bit
// (sums from 0 in order; 0 + g scale written).
template <bool kScatter, typename W>
void GlobalRows(ffi::ThreadPool& pool, const float* ip, const W* wp, float* op, int64_t P,
                int64_t S, float f) {
  ParallelFor(pool, P, P * S, [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      int64_t w = -1;
      if constexpr (!std::is_void_v<W>) w = static_cast<int64_t>(wp[p]);
      if constexpr (kScatter) {
        float* dst = op + p * S;
        const float g = 0.0f + ip[p] * f;
        if constexpr (std::is_void_v<W>) {
          std::fill(dst, dst + S, g);
        } else {
          std::fill(dst, dst + S, 0.0f);
          if (w >= 0 && w < S) dst[w] = g;
        }
      } else {
        const float* src = ip + p * S;
        float acc = 0.0f;
        if constexpr (std::is_void_v<W>) {
          for (int64_t r = 0; r < S; ++r) acc += src[r];
        } else if (w >= 0 && w < S) {
          acc += src[w];
        }
        op[p] = acc * f;
      }
    }
  });
}

template <bool kScatter, typename W>
ffi::Error WindowLinear(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32> in, const void* win,
                        ffi::Result<ffi::Buffer<ffi::F32>> out,
                        ffi::Span<const int64_t> geometry, ffi::Span<const float> scale) {
  Geometry geo;
  int64_t P, A, Q;
  ffi::Error parsed = ParseWindowCall("gapjax_window", geometry, in.dimensions(), geo, P, A, Q);
  if (parsed.failure()) return parsed;
  const int64_t B = kScatter ? geo.size : geo.outs;
  if (A != (kScatter ? geo.outs : geo.size)) {
    return ffi::Error::InvalidArgument("gapjax_window: size mismatch");
  }
  const float* sc = nullptr;
  if (scale.size() != 0) {
    if (static_cast<int64_t>(scale.size()) != geo.outs) {
      return ffi::Error::InvalidArgument("gapjax_window: scale size mismatch");
    }
    sc = scale.begin();
  }
  const float* ip = in.typed_data();
  float* op = out->typed_data();
  AdviseHuge(op, out->size_bytes());
  const W* wp = static_cast<const W*>(win);
  if (Q == 1 && IsGlobal(geo)) {
    GlobalRows<kScatter, W>(pool, ip, wp, op, P, geo.size, sc ? sc[0] : 1.0f);
    return ffi::Error::Success();
  }
  std::unique_ptr<Readers> rd;
  if (kScatter) rd = std::make_unique<Readers>(geo);
  const int64_t most = kScatter ? rd->most : geo.taps;
  const int64_t* rowdims = kScatter ? geo.L : geo.O;
  auto fill = [&](const int64_t* at, Term* t) {
    return kScatter ? ScatterTerms(geo, *rd, at, Q, sc, t) : GatherTerms(geo, at, Q, t);
  };
  if constexpr (!kScatter && std::is_void_v<W>) {
    if (geo.taps >= kLineMinTaps) {
      const LinePlan lp = MakeLinePlan(geo, Q);
      const int64_t units = lp.lines_out * lp.tiles;
      ParallelFor(pool, P * units, P * (A + B) * Q, [&](int64_t b, int64_t e) {
        std::vector<float> acc(lp.tile * Q);
        for (int64_t u = b; u < e; ++u) {
          const int64_t p = u / units, line = (u % units) / lp.tiles, t = u % lp.tiles;
          GatherLines(geo, lp, ip + p * A * Q, Q, line, t, sc, op + p * B * Q, acc.data());
        }
      });
      return ffi::Error::Success();
    }
  }
  const TermTable table = MakeTable(B, geo.k, rowdims, most, fill);
  ParallelFor(pool, P * B, P * (A + B) * Q, [&](int64_t b, int64_t e) {
    std::vector<Term> terms(table.empty() ? most : 0);
    ForRows(b, e, B, geo.k, rowdims, [&](int64_t i, int64_t p, const int64_t* at) {
      const int64_t r = i - p * B;
      int64_t nt;
      const Term* tp = table.empty() ? terms.data() : table.Row(r, &nt);
      if (table.empty()) nt = fill(at, terms.data());
      const float* slab = ip + p * A * Q;
      const W* wr = nullptr;
      if constexpr (kScatter) {
        if constexpr (!std::is_void_v<W>) wr = wp + p * A * Q;
        if (sc) {
          SumRow<W, true, true>(slab, wr, tp, nt, Q, 1.0f, op + i * Q);
        } else {
          SumRow<W, false, true>(slab, wr, tp, nt, Q, 1.0f, op + i * Q);
        }
      } else {
        if constexpr (!std::is_void_v<W>) wr = wp + i * Q;
        SumRow<W, false, false>(slab, wr, tp, nt, Q, sc ? sc[r] : 1.0f, op + i * Q);
      }
    });
  });
  return ffi::Error::Success();
}

template <bool kScatter>
ffi::Error WindowLinearImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in,
                            ffi::Result<ffi::Buffer<ffi::F32>> out,
                            ffi::Span<const int64_t> geometry, ffi::Span<const float> scale) {
  return WindowLinear<kScatter, void>(pool, in, nullptr, out, geometry, scale);
}

template <bool kScatter>
ffi::Error WindowLinearWinImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> in, ffi::AnyBuffer win,
                               ffi::Result<ffi::Buffer<ffi::F32>> out,
                               ffi::Span<const int64_t> geometry) {
  if (win.dimensions().size() != in.dimensions().size()) {
    return ffi::Error::InvalidArgument("gapjax_window: winners of another rank");
  }
  ffi::Span<const float> none;
  if (win.element_type() == ffi::DataType::S8) {
    return WindowLinear<kScatter, int8_t>(pool, in, win.untyped_data(), out, geometry, none);
  }
  if (win.element_type() == ffi::DataType::S32) {
    return WindowLinear<kScatter, int32_t>(pool, in, win.untyped_data(), out, geometry, none);
  }
  return ffi::Error::InvalidArgument("gapjax_window: winners must be int8 or int32");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GapjaxExtreme, ExtremeImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("largest"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GapjaxExtremeIndex, ExtremeIndexImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<bool>("largest"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GapjaxSum, SumImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("divisor"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GapjaxWindowSelect, SelectImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("geometry")
                                  .Attr<bool>("largest")
                                  .Attr<bool>("has_floor")
                                  .Attr<float>("floor"));

#define GAPJAX_WINDOW_LINEAR(NAME, SCATTER)                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, WindowLinearImpl<SCATTER>,                     \
                                ffi::Ffi::Bind()                                     \
                                    .Ctx<ffi::ThreadPool>()                          \
                                    .Arg<ffi::Buffer<ffi::F32>>()                    \
                                    .Ret<ffi::Buffer<ffi::F32>>()                    \
                                    .Attr<ffi::Span<const int64_t>>("geometry")      \
                                    .Attr<ffi::Span<const float>>("scale"));         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##Win, WindowLinearWinImpl<SCATTER>,             \
                                ffi::Ffi::Bind()                                     \
                                    .Ctx<ffi::ThreadPool>()                          \
                                    .Arg<ffi::Buffer<ffi::F32>>()                    \
                                    .Arg<ffi::AnyBuffer>()                           \
                                    .Ret<ffi::Buffer<ffi::F32>>()                    \
                                    .Attr<ffi::Span<const int64_t>>("geometry"));

GAPJAX_WINDOW_LINEAR(GapjaxWindowGather, false)
GAPJAX_WINDOW_LINEAR(GapjaxWindowScatter, true)
