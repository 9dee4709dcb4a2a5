/* Single-precision matrix products with AVX-512F, used by mc_gemm in place of
 * OpenBLAS for float32 when the backend compiles for an AVX-512 machine
 * (-mavx512f, see _build.isa_flags): OpenBLAS's AVX2 kernels (which it runs on CPUs
 * it does not know, or when OPENBLAS_CORETYPE says so) reach about half of this. */
#if defined(__AVX512F__)
/*
 * single-precision GEMM with AVX-512F (row-major, alpha = 1).
 *
 *   C[m x n] = op(A)[m x k] * op(B)[k x n] + beta * C
 *
 * Semantics match cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda,
 * b, ldb, beta, c, ldc).  When beta == 0, C is never read.
 *
 * Design (GotoBLAS / BLIS):
 *
 *   for jc in [0, n) step NC              -- column panel of op(B)/C
 *     for pc in [0, k) step KC            -- depth block (fixed order!)
 *       for ic in [0, m) step MC          -- row block of op(A)/C
 *         pack op(A)[ic:+mc, pc:+kc] -> Ap (mr-tall slices, k-major)
 *         for jr in [0, nc) step NR       -- Bp slice stays in L1
 *           if ic == 0: pack op(B)[pc:+kc, jc+jr:+NR] -> Bp slice (k-major)
 *           for ir in [0, mc) step mr     -- Ap slice streamed from L2
 *             micro-kernel: C[ir:+mr, jr:+NR] (+)= Ap_ir * Bp_jr
 *
 * Micro-kernel: MR x NR = 12 x 32 -> 24 zmm accumulators (2 per row); per k
 * step it loads two B vectors and broadcasts MR values of A into FMAs.
 * Edge tiles use kernels specialised for fewer rows (mr) and one or two
 * vectors (nv), with a lane mask on the last vector of C; a small row
 * remainder is balanced with the previous tile (see tile_rows).
 *
 * Details:
 *  - B slices are packed right before their first use, so they are still
 *    L1-resident when the micro-kernels run; they are kept in a KC x NC
 *    panel only when later row blocks (m > MC) reuse them.
 *  - When the panel is narrow (few NR slices, e.g. n <= 256) packing A costs
 *    more than it saves: the micro-kernel then reads op(A) in place (row or
 *    column strided broadcasts) and A is never copied.
 *  - Packing handles the transposes directly: strided reads are turned into
 *    contiguous panels with 16x16 in-register transposes.
 *  - Packing buffers are thread-local and statically sized, so the routine
 *    is re-entrant and may be called concurrently from several threads
 *    (each on its own block of C).  No heap allocation.
 *
 * Determinism: every element of C is computed as
 *     acc_b = fma-chain over k inside depth block b (in increasing k, from 0)
 *     C     = acc_0 (+ beta*C_old)  then  C = C + acc_b  for b = 1, 2, ...
 * with depth blocks always [0,KC), [KC,2KC), ...  This depends only on k,
 * never on m, n, the tile shape or the code path (packed or in-place A), so
 * computing a sub-block of C gives bit-identical results to computing the
 * whole of C.
 *
 * Compile with: -O3 -mavx512f (only AVX512F intrinsics are used).
 */
#include <immintrin.h>
#include <stddef.h>

/* ---- blocking parameters ------------------------------------------------ */
#ifndef MC_SGEMM_KC
#define MC_SGEMM_KC 256 /* depth block: Bp slice KC*NR*4 = 32 KiB in L1 */
#endif
#ifndef MC_SGEMM_MC
#define MC_SGEMM_MC 240 /* row block:   Ap block MC*KC*4 = 240 KiB in L2 */
#endif
#ifndef MC_SGEMM_NC
#define MC_SGEMM_NC 2048 /* column panel: Bp KC*NC*4 = 2 MiB (L3) */
#endif

#define MR 12                  /* micro-tile rows (broadcast from Ap) */
#define NR 32                  /* micro-tile columns (2 zmm vectors) */
#define KC MC_SGEMM_KC
#define MCB MC_SGEMM_MC        /* must be a multiple of MR */
#define NCB MC_SGEMM_NC        /* must be a multiple of NR */

#if (MCB % MR) != 0 || (NCB % NR) != 0
#error "MC must be a multiple of MR and NC a multiple of NR"
#endif

/* Packing stores write whole 16-lane vectors; the last one of a panel can
 * spill up to 16 floats past its end, hence the padding. */
#define PACK_PAD 32

static __thread float a_pack[MCB * KC + PACK_PAD] __attribute__((aligned(64)));
static __thread float b_pack[NCB * KC + PACK_PAD] __attribute__((aligned(64)));

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE __mmask16 lane_mask(long n) /* first n lanes, 0 <= n <= 16 */
{
    return (__mmask16)(n >= 16 ? 0xFFFF : ((1u << n) - 1u));
}

/* In-register transpose of a 16x16 tile: on return r[i] holds column i. */
ALWAYS_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
        __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int h = 0; h < 16; h += 8) {
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

/* Load up to 16 strided rows of `len` (<= 16) contiguous floats each into
 * r[0..nrows), zero-filling missing lanes/rows, then transpose so that
 * r[c] holds element c of every row. */
ALWAYS_INLINE void load_transpose(__m512 r[16], const float *src, long ld,
                                  long nrows, long len)
{
    __mmask16 km = lane_mask(len);
    for (long i = 0; i < 16; i++)
        r[i] = i < nrows ? _mm512_maskz_loadu_ps(km, src + i * ld)
                         : _mm512_setzero_ps();
    transpose16(r);
}

/* Rows of the next micro-tile when `left` rows of the row block remain:
 * MR, except that a small remainder (< 8 rows, which would leave a
 * latency-bound kernel with few accumulators) is merged with the previous
 * full tile and the two are split evenly, e.g. 16 -> 8 + 8, 13 -> 7 + 6. */
ALWAYS_INLINE long tile_rows(long left)
{
    if (left <= MR) return left;
    if (left < MR + 8) return (left + 1) / 2;
    return MR;
}

/* ---- packing -------------------------------------------------------------
 * Ap layout: the mc rows are cut into slices by tile_rows(); each slice of
 * mr rows is stored as kc groups of mr floats (the slice's rows for one k)
 * and starts at offset (first row of slice) * kc.
 * Bp layout: for each NR-column slice, kc groups of NR floats; columns past
 * the edge are zero.  Slices are kc*MR (resp. kc*NR) floats apart. */

/* op(A)[i][p] = trans ? a[p*lda + i] : a[i*lda + p]; a points at (ic, pc). */
static void pack_a(int trans, long mc, long kc, const float *a, long lda,
                   float *dst)
{
    for (long ir = 0, mr; ir < mc; ir += mr, dst += kc * mr) {
        mr = tile_rows(mc - ir);
        if (trans) {
            const float *src = a + ir;
            __mmask16 mm = lane_mask(mr);
            for (long p = 0; p < kc; p++)
                _mm512_storeu_ps(dst + p * mr,
                                 _mm512_maskz_loadu_ps(mm, src + p * lda));
        } else {
            const float *src = a + ir * lda;
            for (long p0 = 0; p0 < kc; p0 += 16) {
                long len = kc - p0 < 16 ? kc - p0 : 16;
                __m512 r[16];
                load_transpose(r, src + p0, lda, mr, len);
                /* 16-lane stores overlap the next group; lanes >= mr are 0 */
                for (long p = 0; p < len; p++)
                    _mm512_storeu_ps(dst + (p0 + p) * mr, r[p]);
            }
        }
    }
}

/* op(B)[p][j] = trans ? b[j*ldb + p] : b[p*ldb + j]; b points at (pc, jc). */
static void pack_b(int trans, long kc, long nc, const float *b, long ldb,
                   float *dst)
{
    for (long jr = 0; jr < nc; jr += NR, dst += kc * NR) {
        long nr = nc - jr < NR ? nc - jr : NR;
        if (!trans) {
            const float *src = b + jr;
            __mmask16 m0 = lane_mask(nr), m1 = lane_mask(nr > 16 ? nr - 16 : 0);
            for (long p = 0; p < kc; p++) {
                _mm512_store_ps(dst + p * NR,
                                _mm512_maskz_loadu_ps(m0, src + p * ldb));
                _mm512_store_ps(dst + p * NR + 16,
                                _mm512_maskz_loadu_ps(m1, src + p * ldb + 16));
            }
        } else {
            for (long h = 0; h < NR; h += 16) {
                long cols = nr - h; /* columns in this 16-wide half */
                if (cols <= 0) {
                    for (long p = 0; p < kc; p++)
                        _mm512_store_ps(dst + p * NR + h, _mm512_setzero_ps());
                    continue;
                }
                const float *src = b + (jr + h) * ldb;
                for (long p0 = 0; p0 < kc; p0 += 16) {
                    long len = kc - p0 < 16 ? kc - p0 : 16;
                    __m512 r[16];
                    load_transpose(r, src + p0, ldb, cols, len);
                    for (long p = 0; p < len; p++)
                        _mm512_store_ps(dst + (p0 + p) * NR + h, r[p]);
                }
            }
        }
    }
}

/* ---- micro-kernel --------------------------------------------------------
 * acc[i][v] = sum_p A(i,p) * Bp[p*NR + 16v + lane]   (i < mr, v < nv)
 * is written to C (row stride ldc) with lane mask `mlast` on the last
 * vector.  A(i,p) = ap[i*rs + p*cs]: rs = 1, cs = mr for a packed Ap slice,
 * or the strides of op(A) itself when A is used in place (see driver).
 * first: this is depth block 0, so combine with beta*C (or overwrite when
 * beta == 0, without reading C); otherwise accumulate into C. */
ALWAYS_INLINE void kernel_body(const int mr, const int nv, long kc,
                               const float *restrict ap, const long rs,
                               const long cs, const float *restrict bp,
                               float *c, long ldc, __mmask16 mlast, int first,
                               float beta)
{
    __m512 acc[MR][2];
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
    }
    for (long p = 0; p < kc; p++) {
        __m512 b0 = _mm512_load_ps(bp);
        __m512 b1 = nv > 1 ? _mm512_load_ps(bp + 16) : b0;
#pragma GCC unroll 16
        for (int i = 0; i < mr; i++) {
            __m512 av = _mm512_set1_ps(ap[i * rs]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            if (nv > 1)
                acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
        ap += cs;
        bp += NR;
    }
    const __m512 vbeta = _mm512_set1_ps(beta);
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) {
            __mmask16 mk = v == nv - 1 ? mlast : (__mmask16)0xFFFF;
            __m512 r = acc[i][v];
            if (!first) {
                r = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, row + 16 * v), r);
            } else if (beta != 0.0f) {
                __m512 old = _mm512_maskz_loadu_ps(mk, row + 16 * v);
                r = _mm512_add_ps(r, _mm512_mul_ps(vbeta, old));
            }
            _mm512_mask_storeu_ps(row + 16 * v, mk, r);
        }
    }
}

typedef void (*kernel_fn)(long kc, const float *ap, long lda, const float *bp,
                          float *c, long ldc, __mmask16 ml, int first,
                          float beta);

/* Three A access modes per tile shape: packed slice (P), op(A) = A used in
 * place with row stride lda (R), op(A) = A^T used in place (T). */
#define DEF_KERNEL(MRV, NVV)                                                  \
    static void kernel_P##MRV##x##NVV(long kc, const float *ap, long lda,    \
                                      const float *bp, float *c, long ldc,   \
                                      __mmask16 ml, int first, float beta)   \
    {                                                                         \
        (void)lda;                                                            \
        kernel_body(MRV, NVV, kc, ap, 1, MRV, bp, c, ldc, ml, first, beta);  \
    }                                                                         \
    static void kernel_R##MRV##x##NVV(long kc, const float *ap, long lda,    \
                                      const float *bp, float *c, long ldc,   \
                                      __mmask16 ml, int first, float beta)   \
    {                                                                         \
        kernel_body(MRV, NVV, kc, ap, lda, 1, bp, c, ldc, ml, first, beta);  \
    }                                                                         \
    static void kernel_T##MRV##x##NVV(long kc, const float *ap, long lda,    \
                                      const float *bp, float *c, long ldc,   \
                                      __mmask16 ml, int first, float beta)   \
    {                                                                         \
        kernel_body(MRV, NVV, kc, ap, 1, lda, bp, c, ldc, ml, first, beta);  \
    }
#define DEF_KERNELS(MRV) DEF_KERNEL(MRV, 1) DEF_KERNEL(MRV, 2)
DEF_KERNELS(1) DEF_KERNELS(2) DEF_KERNELS(3) DEF_KERNELS(4)
DEF_KERNELS(5) DEF_KERNELS(6) DEF_KERNELS(7) DEF_KERNELS(8)
DEF_KERNELS(9) DEF_KERNELS(10) DEF_KERNELS(11) DEF_KERNELS(12)

#define KROW(M, MRV) { kernel_##M##MRV##x1, kernel_##M##MRV##x2 }
#define KTAB(M)                                                               \
    { { 0, 0 }, KROW(M, 1), KROW(M, 2), KROW(M, 3), KROW(M, 4), KROW(M, 5),   \
      KROW(M, 6), KROW(M, 7), KROW(M, 8), KROW(M, 9), KROW(M, 10),           \
      KROW(M, 11), KROW(M, 12) }
enum { A_PACKED = 0, A_ROWS = 1, A_TRANS = 2 };
static const kernel_fn kernels[3][MR + 1][2] = { KTAB(P), KTAB(R), KTAB(T) };

/* ---- driver --------------------------------------------------------------- */

/* Use op(A) in place (no packing) when a row block meets at most this many
 * NR-wide slices of B: packing A would then cost more than it saves. */
#ifndef MC_SGEMM_DIRECT_A_SLICES
#define MC_SGEMM_DIRECT_A_SLICES 8
#endif

void mc_sgemm_avx512(int trans_a, int trans_b, long m, long n, long k,
                     const float *a, long lda, const float *b, long ldb,
                     float beta, float *c, long ldc)
{
    float *ap = a_pack, *bp = b_pack;
    /* With a single row block each B slice is used right after packing and
     * never again, so one L1-resident slice buffer suffices. */
    const int reuse_b = m > MCB;
    for (long jc = 0; jc < n; jc += NCB) {
        long nc = n - jc < NCB ? n - jc : NCB;
        const int direct_a = (nc + NR - 1) / NR <= MC_SGEMM_DIRECT_A_SLICES;
        const int amode = direct_a ? (trans_a ? A_TRANS : A_ROWS) : A_PACKED;
        for (long pc = 0; pc < k; pc += KC) {
            long kc = k - pc < KC ? k - pc : KC;
            const int first = pc == 0;
            const float *bsrc = trans_b ? b + jc * ldb + pc : b + pc * ldb + jc;
            for (long ic = 0; ic < m; ic += MCB) {
                long mc = m - ic < MCB ? m - ic : MCB;
                const float *asrc = trans_a ? a + pc * lda + ic : a + ic * lda + pc;
                if (!direct_a)
                    pack_a(trans_a, mc, kc, asrc, lda, ap);
                for (long jr = 0; jr < nc; jr += NR) {
                    long nr = nc - jr < NR ? nc - jr : NR;
                    int nv = nr > 16 ? 2 : 1;
                    __mmask16 ml = lane_mask(nr - 16 * (nv - 1));
                    float *bs = reuse_b ? bp + (jr / NR) * kc * NR : bp;
                    /* Pack each B slice just before its first use (ic == 0)
                     * so that it is still in L1; later row blocks reuse it. */
                    if (ic == 0)
                        pack_b(trans_b, kc, nr,
                               trans_b ? bsrc + jr * ldb : bsrc + jr, ldb, bs);
                    for (long ir = 0, mr; ir < mc; ir += mr) {
                        mr = tile_rows(mc - ir);
                        const float *at =
                            !direct_a ? ap + ir * kc
                                      : (trans_a ? asrc + ir : asrc + ir * lda);
                        kernels[amode][mr][nv - 1](
                            kc, at, lda, bs, c + (ic + ir) * ldc + jc + jr,
                            ldc, ml, first, beta);
                    }
                }
            }
        }
    }
}
#else
typedef int mc_gemm_avx512_unused; /* ISO C wants a declaration in every file */
#endif
