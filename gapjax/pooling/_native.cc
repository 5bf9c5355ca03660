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
// Every leading axis is a batch axis (so vmap's "broadcast_all" works unchanged).

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>

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

// ---------------------------------------------------------------------------------------------
// Element types: a "key" that orders elements, larger key wins, NaN above everything.
// ---------------------------------------------------------------------------------------------

// 16 lanes of 4 bytes (GCC/Clang vector extensions: AVX-512, 2 x AVX2 or 4 x NEON registers).
constexpr int kLanes = 16;
typedef float VF __attribute__((vector_size(64)));
typedef int32_t VI __attribute__((vector_size(64)));
typedef uint16_t VH __attribute__((vector_size(32)));

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

// float32 / float64: the value itself. v replaces the current best m when it is larger, or when
// it is the first NaN (m is not NaN); ties keep the first.
template <typename T, bool kLargest>
struct FloatKey {
  using Elem = T;
  using Key = T;
  static constexpr bool kVector = std::is_same_v<T, float>;
  using V = VF;
  static inline Key Load(Elem e) { return e; }
  static inline bool Take(Key v, Key m) {
    return kLargest ? (!(v <= m) && m == m) : (!(v >= m) && m == m);
  }
  static inline bool Same(Key a, Key b) { return a == b || (a != a && b != b); }
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
  using V = VI;
  static inline Key Load(Elem e) {
    int32_t mag = e & 0x7fff;
    int32_t key = (e >> 15) ? -mag : mag;
    key = kLargest ? key : -key;
    return mag > kInfBits ? 0x10000 : key;
  }
  static inline bool Take(Key v, Key m) { return v > m; }
  static inline bool Same(Key a, Key b) { return a == b; }
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

// ---------------------------------------------------------------------------------------------
// Global extreme over axis R of (P, R, Q).
// ---------------------------------------------------------------------------------------------

// Columns [q0, q0 + w) of one (R, Q) slab, row by row (sequential reads), the running best per
// column kept in L1. The vector body is written out with vector types: left to the
// autovectorizer, the same loop's code varied with the array sizes, and some variants ran much
// slower (stalls on store-to-load forwarding).
constexpr int64_t kColumns = 512;

template <typename K, bool kIndex>
void ExtremeColumns(const typename K::Elem* x, typename K::Elem* out, int32_t* idx, int64_t R,
                    int64_t Q, int64_t q0, int64_t w) {
  using Key = typename K::Key;
  constexpr bool kKeyed = !std::is_same_v<Key, typename K::Elem>;  // value = x[winner]
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
        typename K::V v = K::VLoad(row + u * kLanes);
        auto mv = VLoadRaw<typename K::V>(m + u * kLanes);
        VI t = K::VTake(v, mv);
        VStore(m + u * kLanes, t ? v : mv);
        if (kIndex || kKeyed) {
          VI kv = VLoadRaw<VI>(k + u * kLanes);
          VStore(k + u * kLanes, t ? rv : kv);
        }
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
      out[q0 + j] = m[j];
    }
    if (kIndex) idx[q0 + j] = k[j];
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
        typename K::V v = K::VLoad(x + r);
        VI t = K::VTake(v, m);
        m = t ? v : m;
        k = t ? lane + static_cast<int32_t>(r) : k;
      }
      // Each lane holds its own first winner; the row's is the best key, earliest on ties.
      best = m[0];
      at = k[0];
      for (int l = 1; l < kLanes; ++l) {
        if (K::Take(m[l], best) || (K::Same(m[l], best) && k[l] < at)) {
          best = m[l];
          at = k[l];
        }
      }
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
      Extreme<HalfKey<0x7f80, kLargest>, kIndex>(pool, xv, out, idx, P, R, Q);
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
// Window select: the extreme of every window and its winning tap (float32).
// ---------------------------------------------------------------------------------------------

// x (P, S, Q) with S = L_1 ... L_k the pooled axes (row-major), Q the contiguous rest. The
// geometry attribute holds k, then L_a, O_a (outputs) and T_a (taps) per axis, then per axis
// the (O_a, T_a) table of the input position each tap of each output reads (-1: padding or
// past the window). Outputs (P, O_1 ... O_k, Q): the extreme, and the winning tap (row-major
// over the taps) as int8 or int32: the first tap equal to the extreme, or the last NaN; for a
// window without any tap inside x, -1 and the identity (-inf for max). With has_floor (Caffe's
// -FLT_MAX start), an extreme beyond the floor becomes the floor, and its winner -1.
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

template <bool kLargest, typename W>
void SelectRow(const float* x, const Geometry& geo, int64_t o, int64_t Q, float identity,
               bool has_floor, float floor, float* best, W* win) {
  // Multi-index of output o, then the valid taps in row-major order.
  int64_t oi[3] = {0, 0, 0};
  for (int64_t a = geo.k - 1, r = o; a >= 0; --a) {
    oi[a] = r % geo.O[a];
    r /= geo.O[a];
  }
  alignas(64) float m[kColumns];
  alignas(64) int32_t t[kColumns];
  for (int64_t q0 = 0; q0 < Q; q0 += kColumns) {
    const int64_t w = std::min(kColumns, Q - q0);
    const int64_t nv = w / kLanes;
    bool started = false;
    for (int64_t tap = 0; tap < geo.taps; ++tap) {
      int64_t pos = 0;
      bool valid = true;
      for (int64_t a = 0, r = tap, div = geo.taps; a < geo.k; ++a) {
        div /= geo.T[a];
        const int64_t j = r / div;
        r %= div;
        const int64_t s = geo.src[a][oi[a] * geo.T[a] + j];
        if (s < 0) {
          valid = false;
          break;
        }
        pos = pos * geo.L[a] + s;
      }
      if (!valid) continue;
      const float* row = x + pos * Q + q0;
      const int32_t tt = static_cast<int32_t>(tap);
      if (!started) {
        std::memcpy(m, row, w * sizeof(float));
        for (int64_t j = 0; j < w; ++j) t[j] = tt;
        started = true;
        continue;
      }
      const VI tv = VI{} + tt;
      for (int64_t u = 0; u < nv; ++u) {
        VF v = VLoadRaw<VF>(row + u * kLanes);
        VF mv = VLoadRaw<VF>(m + u * kLanes);
        VI take = (kLargest ? (v > mv) : (v < mv)) | (v != v);  // first extreme, last NaN
        VStore(m + u * kLanes, take ? v : mv);
        VStore(t + u * kLanes, take ? tv : VLoadRaw<VI>(t + u * kLanes));
      }
      for (int64_t j = nv * kLanes; j < w; ++j) {
        const float v = row[j];
        if ((kLargest ? v > m[j] : v < m[j]) || v != v) {
          m[j] = v;
          t[j] = tt;
        }
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      float v = started ? m[j] : identity;
      int32_t k = started ? t[j] : -1;
      if (has_floor && (kLargest ? v < floor : v > floor)) {
        v = floor;
        k = -1;
      }
      best[q0 + j] = v;
      win[q0 + j] = static_cast<W>(k);
    }
  }
}

ffi::Error SelectImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Result<ffi::Buffer<ffi::F32>> best,
                      ffi::Result<ffi::AnyBuffer> win, ffi::Span<const int64_t> geometry,
                      bool largest, bool has_floor, float floor) {
  Geometry geo;
  if (!ParseGeometry(geometry, geo)) {
    return ffi::Error::InvalidArgument("gapjax_window_select: malformed geometry");
  }
  auto dims = x.dimensions();
  if (dims.size() < 3) return ffi::Error::InvalidArgument("gapjax_window_select: rank < 3");
  const int64_t n = dims.size(), Q = dims[n - 1], S = dims[n - 2];
  int64_t P = 1;
  for (int64_t i = 0; i < n - 2; ++i) P *= dims[i];
  if (S != geo.size) return ffi::Error::InvalidArgument("gapjax_window_select: size mismatch");
  const float* xp = x.typed_data();
  float* bp = best->typed_data();
  const bool narrow = win->element_type() == ffi::DataType::S8;
  void* wp = win->untyped_data();
  const float identity = largest ? -INFINITY : INFINITY;
  ParallelFor(pool, P * geo.outs, P * S * Q, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t p = i / geo.outs, o = i % geo.outs;
      const float* xs = xp + p * S * Q;
      float* bo = bp + i * Q;
      if (narrow) {
        int8_t* wo = static_cast<int8_t*>(wp) + i * Q;
        largest ? SelectRow<true>(xs, geo, o, Q, identity, has_floor, floor, bo, wo)
                : SelectRow<false>(xs, geo, o, Q, identity, has_floor, floor, bo, wo);
      } else {
        int32_t* wo = static_cast<int32_t*>(wp) + i * Q;
        largest ? SelectRow<true>(xs, geo, o, Q, identity, has_floor, floor, bo, wo)
                : SelectRow<false>(xs, geo, o, Q, identity, has_floor, floor, bo, wo);
      }
    }
  });
  return ffi::Error::Success();
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
