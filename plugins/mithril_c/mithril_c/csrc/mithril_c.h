/* Kernel library of the mithril_c backend.
 *
 * ``real`` is the compiled model's float type: the build defines MC_REAL (float or
 * double). Scalar helpers are static inline so that generated element-wise loops
 * inline (and vectorise) them; array kernels live in <family>.c.
 */
#ifndef MITHRIL_C_H
#define MITHRIL_C_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

#ifndef MC_REAL
#define MC_REAL double
#endif
typedef MC_REAL real;

/* -- threads (linalg.c) ------------------------------------------------------------
 * Kernels and generated loops run on a team of up to mc_set_threads(n) threads of
 * the calling thread (1 until set: a library used from C is serial unless asked).
 * The count is per calling thread, so two models (or two callers) with different
 * counts do not interfere; a loop inside a parallel region runs serially (no nested
 * teams). Work is only ever split over independent outputs: no sum is split over
 * threads. OpenBLAS itself is set to one thread by the first mc_set_threads: matrix
 * products are split here, into column (or row) blocks, which OpenBLAS may round
 * differently from one whole product (its kernels depend on the block size). */
extern __thread int mc_thread_count;
void mc_set_threads(int n);
/* Element operations worth one more thread (a team costs microseconds). */
#define MC_GRAIN 32768L
/* The team size for ``work`` element operations: 1 when small or already inside a
 * parallel region. */
static inline int mc_team(long work) {
#ifdef _OPENMP
    int most = mc_thread_count;
    if (most <= 1 || work < 2 * MC_GRAIN || omp_in_parallel()) return 1;
    long useful = work / MC_GRAIN;
    return useful < most ? (int)useful : most;
#else
    (void)work;
    return 1;
#endif
}
/* Start of part ``p`` of ``t`` of [0, n), on multiples of ``align``. */
static inline long mc_split(long n, int t, int p, long align) {
    if (p >= t) return n;
    long at = n * p / t;
    at = (at + align - 1) / align * align;
    return at < n ? at : n;
}

#define MC_IS_FLOAT (sizeof(real) == sizeof(float))

/* The backend compiles for the widest ISA of its machine (MC_SINGLE_TARGET and
 * -mavx512f or -mavx2; the flags are in its cache keys). Without that (an exported
 * model.c), loops are compiled for AVX-512, AVX2 and baseline x86-64 and picked at
 * load time. FMA contraction is off (-ffp-contract=off), so every ISA computes the
 * same values. */
#if defined(MC_SINGLE_TARGET)
#define MC_DISPATCH /* the backend compiles for this machine's ISA (-mavx512f ...) */
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MC_DISPATCH __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MC_DISPATCH
#endif

/* Math functions of the right precision: float32 models call the f variants. */
#define MC_MATH(name, x) (MC_IS_FLOAT ? (real)name##f((float)(x)) : (real)name((double)(x)))
/* float32 exp and tanh are inline (below) so that element-wise loops vectorise, as
 * NumPy's own float32 SIMD loops do; float64 uses libm. */
#define MC_EXP(x) (MC_IS_FLOAT ? (real)mc_expf((float)(x)) : (real)exp((double)(x)))
#define MC_TANH(x) (MC_IS_FLOAT ? (real)mc_tanhf((float)(x)) : (real)tanh((double)(x)))
#define MC_LOG(x) MC_MATH(log, x)
#define MC_LOG1P(x) MC_MATH(log1p, x)
#define MC_SQRT(x) MC_MATH(sqrt, x)
#define MC_SIN(x) MC_MATH(sin, x)
#define MC_COS(x) MC_MATH(cos, x)
#define MC_ERF(x) MC_MATH(erf, x)
#define MC_FLOOR(x) MC_MATH(floor, x)
#define MC_FABS(x) MC_MATH(fabs, x)
#define MC_POW(x, y) \
    (MC_IS_FLOAT ? (real)powf((float)(x), (float)(y)) : (real)pow((double)(x), (double)(y)))

/* exp(x) = 2^n exp(r), |r| <= ln2/2, Cephes polynomial: about 1 ulp, no branches or
 * calls. The 2^n scale is applied in two halves so that overflow gives inf and the
 * subnormal range is kept. */
static inline float mc_expf(float x) {
    float c = x > 88.8f ? 88.8f : x;
    c = c < -104.0f ? -104.0f : c;
    c = c != c ? 0.0f : c;
    float fx = c * 1.44269504088896341f;
    fx = (fx + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = c - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * (r * r) + r + 1.0f;
    int n = (int)fx;
    int half = n >> 1;
    int bits_a = (half + 127) << 23;
    int bits_b = (n - half + 127) << 23;
    float scale_a, scale_b;
    memcpy(&scale_a, &bits_a, sizeof scale_a);
    memcpy(&scale_b, &bits_b, sizeof scale_b);
    y = y * scale_a * scale_b;
    return x != x ? x : y;
}

/* Cephes tanhf: odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above. */
static inline float mc_tanhf(float x) {
    float a = x < 0 ? -x : x;
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * x + x;
    float big = 1.0f - 2.0f / (mc_expf(2.0f * (a > 10.0f ? 10.0f : a)) + 1.0f);
    big = x < 0 ? -big : big;
    return a < 0.625f ? small : big;
}

/* -- element-wise scalar helpers (elementwise.c documents the array kernels) ------- */
/* NaN propagates (x <= 0 is false for NaN), as in NumPy and torch. */
static inline real mc_relu(real x) { return x <= 0 ? 0 : x; }
static inline real mc_sign(real x) { return (real)((x > 0) - (x < 0)); }
static inline real mc_sigmoid(real x) {
    /* Stable on both sides (exp of a non-positive number only), branch-free. */
    real e = MC_EXP(x < 0 ? x : -x);
    real r = 1 / (1 + e);
    return x >= 0 ? r : e * r;
}
static inline real mc_softplus(real x) {
    return (x > 0 ? x : 0) + MC_LOG1P(MC_EXP(-MC_FABS(x)));
}
static inline real mc_silu_grad(real x, real y) {
    real s = mc_sigmoid(x);
    return s + y * (1 - s);
}
/* A NaN operand wins (the left one first), as NumPy's maximum/minimum. */
static inline real mc_max2(real a, real b) { return (a > b || a != a) ? a : b; }
static inline real mc_min2(real a, real b) { return (a < b || a != a) ? a : b; }
/* Gradient share of one operand of maximum/minimum: 1/2 on ties, 0 where it loses,
 * else 1 (torch: with a NaN operand neither loses, both get the whole gradient). */
static inline real mc_share(int loses, real a, real b) {
    return a == b ? (real)0.5 : (real)!loses;
}
/* PyTorch's derivatives of b ** e: d/db is 0 where e == 0 (not 0 * inf at 0 ** 0),
 * d/de is 0 where b == 0 <= e and y * log(b) elsewhere (NaN for b < 0). */
static inline real mc_power_base_grad(real b, real e) {
    return e == 0 ? 0 : e * MC_POW(b, e - 1);
}
static inline real mc_power_exponent_grad(real b, real e, real y) {
    return (b == 0 && e >= 0) ? 0 : y * MC_LOG(b);
}

/* -- integer scalar helpers (NumPy semantics, no signed overflow) ------------------ */
static inline int64_t mc_abs_int(int64_t a) {
    return a < 0 ? (int64_t)(0 - (uint64_t)a) : a;
}
/* Floor division; x // 0 is 0, as NumPy gives (with a warning). */
static inline int64_t mc_floor_divide_int(int64_t a, int64_t b) {
    if (b == 0) return 0;
    if (b == -1) return (int64_t)(0 - (uint64_t)a);
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}
/* Wrapping integer power; negative exponents give 0 unless the base is 1 or -1. */
static inline int64_t mc_power_int(int64_t base, int64_t exponent) {
    if (exponent < 0) {
        if (base == 1) return 1;
        if (base == -1) return (exponent & 1) ? -1 : 1;
        return 0;
    }
    uint64_t result = 1, b = (uint64_t)base;
    while (exponent) {
        if (exponent & 1) result *= b;
        b *= b;
        exponent >>= 1;
    }
    return (int64_t)result;
}

#define MC_SQRT1_2 0.70710678118654752440
#define MC_INV_SQRT_2PI 0.39894228040143267794
#define MC_SQRT_2_OVER_PI 0.79788456080286535588

static inline real mc_gelu(real x, int approximate) {
    if (approximate) {
        real inner = (real)MC_SQRT_2_OVER_PI * (x + (real)0.044715 * x * x * x);
        return (real)0.5 * x * (1 + MC_TANH(inner));
    }
    return (real)0.5 * x * (1 + MC_ERF(x * (real)MC_SQRT1_2));
}
static inline real mc_gelu_grad(real x, int approximate) {
    if (approximate) {
        real t = MC_TANH((real)MC_SQRT_2_OVER_PI * (x + (real)0.044715 * x * x * x));
        real d_inner = (real)MC_SQRT_2_OVER_PI * (1 + 3 * (real)0.044715 * x * x);
        return (real)0.5 * (1 + t) + (real)0.5 * x * (1 - t * t) * d_inner;
    }
    real cdf = (real)0.5 * (1 + MC_ERF(x * (real)MC_SQRT1_2));
    real pdf = (real)MC_INV_SQRT_2PI * MC_EXP((real)-0.5 * x * x);
    return cdf + x * pdf;
}

/* -- elementwise.c ----------------------------------------------------------------- */
void mc_fill(real *out, long n, real value);
void mc_copy(real *out, const real *in, long n, int accumulate);

/* -- linalg.c ---------------------------------------------------------------------- */
/* C[M,N] = alpha * op(A) op(B) + beta * C, row-major; op transposes when trans_*. */
void mc_gemm(int trans_a, int trans_b, long m, long n, long k, const real *a,
             long lda, const real *b, long ldb, real beta, real *c, long ldc);
/* The same on the calling thread only (k > 0): one OpenBLAS call, never split. */
void mc_gemm_one(int trans_a, int trans_b, long m, long n, long k, const real *a,
                 long lda, const real *b, long ldb, real beta, real *c, long ldc);

/* -- nn.c -------------------------------------------------------------------------- */
/* Along an axis of length n; outer and inner are the products of the dims before and
 * after it. ``accumulate`` adds into the gradient instead of overwriting it. */
void mc_softmax(real *y, const real *x, long outer, long n, long inner);
void mc_softmax_vjp(real *gx, const real *g, const real *y, long outer, long n,
                    long inner, int accumulate);
void mc_log_softmax(real *y, const real *x, long outer, long n, long inner);
void mc_log_softmax_vjp(real *gx, const real *g, const real *y, long outer, long n,
                        long inner, int accumulate);

/* -- reduction.c ------------------------------------------------------------------- */
/* Sum over the middle axis of a [outer, n, inner] array into [outer, inner]. */
void mc_sum_axis(real *out, const real *in, long outer, long n, long inner);

/* -- shape.c ----------------------------------------------------------------------- */
/* Strided views: ``shape`` and ``strides`` (in elements, 0 for broadcast dims) describe
 * the view; the other side is contiguous. mc_gather copies (or adds) the view of ``in``
 * into ``out``; mc_scatter copies (or adds) ``in`` into the view of ``out``. Adding is
 * how broadcast dims are reduced. */
void mc_gather(real *out, const real *in, int ndim, const long *shape,
               const long *strides, int accumulate);
void mc_scatter(real *out, const real *in, int ndim, const long *shape,
                const long *strides, int accumulate);
/* The same for elements of ``size`` bytes (int and bool tensors): copies only. */
void mc_gather_bytes(void *out, const void *in, int size, int ndim, const long *shape,
                     const long *strides);
void mc_scatter_bytes(void *out, const void *in, int size, int ndim, const long *shape,
                      const long *strides);

/* -- nn.c: convolution, pooling, embedding, padding, attention, dropout ----------- */
/* Convolution of x [n, c, h, w] with w [f, c / groups, kh, kw] into y [n, f, oh, ow]
 * (1-d: h = kh = oh = 1). ``d`` holds n, c, h, w, f, kh, kw, oh, ow, stride_h,
 * stride_w, pad_top, pad_left, dilation_h, dilation_w, groups, copies; ``col`` is
 * scratch of copies * (c / groups) * kh * kw * oh * ow: up to ``copies`` images run
 * at once, one per thread (one image: its columns and product are split instead).
 * d[17] > 0: images in chunks of that many, columns side by side (scratch
 * (c kh kw + f) d[17] oh ow). The VJP writes gx and/or gw (NULL: not needed);
 * cols_kept: ``col`` still holds what mc_conv2d wrote there for the same x and the
 * whole batch was one chunk (its columns are not made again). */
void mc_conv2d(real *y, const real *x, const real *w, const long *d, real *col);
void mc_conv2d_vjp(real *gx, real *gw, const real *g, const real *x, const real *w,
                   const long *d, real *col, int accumulate_x, int accumulate_w,
                   int cols_kept);
/* Winograd F(4x4, 3x3) convolution (3x3 kernel, stride 1, dilation 1, one group):
 * ``d`` holds n, c, h, w, f, oh, ow, pad_top, pad_left, tiles_h, tiles_w, block_rows
 * (tiles_* = ceil(o* / 4); a block is block_rows rows of tiles_w output tiles, rows
 * counted over the whole batch). ``u`` is scratch of 36 * f * c (the transformed
 * weights), ``scratch`` of 36 * (c + f) * block_rows * tiles_w. The result does not
 * depend on the thread count. */
void mc_conv2d_winograd(real *y, const real *x, const real *w, const long *d, real *u,
                        real *scratch);
/* Pooling over [n * c] planes; ``d`` holds planes, h, w, oh, ow, kh, kw, stride_h,
 * stride_w, pad_h, pad_w, dilation_h, dilation_w. Max pooling's gradient goes to the
 * first maximum of each window (NaN first), whose index in its plane mc_max_pool2d
 * writes to ``at`` (unless NULL; -1 for a window all padding); average pooling counts
 * padding (count_include_pad). */
void mc_max_pool2d(real *y, const real *x, const long *d, int32_t *at);
void mc_max_pool2d_vjp(real *gx, const real *g, const int32_t *at, const long *d,
                       int accumulate);
void mc_avg_pool2d(real *y, const real *x, const long *d);
void mc_avg_pool2d_vjp(real *gx, const real *g, const long *d, int accumulate);
void mc_adaptive_avg_pool2d(real *y, const real *x, long planes, long h, long w,
                            long oh, long ow);
void mc_adaptive_avg_pool2d_vjp(real *gx, const real *g, long planes, long h, long w,
                                long oh, long ow, int accumulate);
/* Rows of w [rows, dim] at ``count`` indices of ``index_size`` bytes (negative ones
 * count from the end, as NumPy); non-zero when an index is out of range. */
int mc_embedding(real *y, const void *index, int index_size, const real *w, long count,
                 long rows, long dim);
int mc_embedding_vjp(real *gw, const real *g, const void *index, int index_size,
                     long count, long rows, long dim, int accumulate);
/* Padding of an ndim array: mode 0 constant (``value``), 1 reflect, 2 edge. */
void mc_pad(real *y, const real *x, int ndim, const long *in_shape,
            const long *out_shape, const long *before, int mode, real value);
void mc_pad_vjp(real *gx, const real *g, int ndim, const long *in_shape,
                const long *out_shape, const long *before, int mode, int accumulate);
/* Attention of one batch entry: p = softmax(q k^T * scale [+ mask]) [lq, lk],
 * o = p v. ``mask`` is NULL, bool (mask_kind 1) or real (2), read at
 * mask[i * mask_rs + j * mask_cs]; a fully masked row gives zeros. The VJP needs p
 * and a [lq, lk] scratch ``dp``; gq, gk, gv and gmask (a real mask's gradient, always
 * added) may be NULL. */
void mc_sdp(real *o, real *p, const real *q, const real *k, const real *v,
            const void *mask, int mask_kind, long mask_rs, long mask_cs, long lq,
            long lk, long e, long ev, real scale, int causal);
void mc_sdp_vjp(real *gq, real *gk, real *gv, real *gmask, const real *g,
                const real *p, const real *q, const real *k, const real *v, real *dp,
                long mask_rs, long mask_cs, long lq, long lk, long e, long ev,
                real scale, int accumulate_q, int accumulate_k, int accumulate_v);
/* Dropout with drop probability p; ``state`` is the generator (0: not seeded yet,
 * seeded from ``seed``). The VJP keeps the gradient where y != 0 or x == 0. */
void mc_dropout(real *y, const real *x, long n, real p, uint64_t *state,
                uint64_t seed);
void mc_dropout_vjp(real *gx, const real *g, const real *y, const real *x, long n,
                    real p, int accumulate);

/* -- loss.c ------------------------------------------------------------------------ */
/* Cross entropy over the class axis of an [outer, n, inner] input with
 * ``input_type`` 0 logits, 1 probs, 2 log_probs. Categorical targets [outer, inner]
 * of ``target_size``-byte ints (non-zero return: a class out of range); soft targets
 * shaped as the input. */
int mc_cross_entropy(real *y, const real *x, const void *target, int target_size,
                     long outer, long n, long inner, int input_type);
int mc_cross_entropy_vjp(real *gx, const real *g, const real *x, const void *target,
                         int target_size, long outer, long n, long inner,
                         int input_type, int accumulate);
void mc_cross_entropy_soft(real *y, const real *x, const real *t, long outer, long n,
                           long inner, int input_type);
void mc_cross_entropy_soft_vjp(real *gx, real *gt, const real *g, const real *x,
                               const real *t, long outer, long n, long inner,
                               int input_type, int accumulate_x, int accumulate_t);
/* Element-wise binary cross entropy, ``logits`` 0 (probabilities, logs clamped at
 * -100) or 1. */
void mc_binary_cross_entropy(real *y, const real *x, const real *t, long n, int logits);
void mc_binary_cross_entropy_vjp(real *gx, real *gt, const real *g, const real *x,
                                 const real *t, long n, int logits, int accumulate_x,
                                 int accumulate_t);

#endif
