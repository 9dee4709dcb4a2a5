/* Matrix products through OpenBLAS (the scipy-openblas32 wheel, symbols prefixed
 * ``scipy_``). Transposes are gemm flags, never copies. Large products are split into
 * column (or row) blocks, one single-threaded gemm per thread of the team. */
#include "mithril_c.h"

#include <cblas.h>
#include <pthread.h>

__thread int mc_thread_count = 1;

static pthread_once_t mc_blas_once = PTHREAD_ONCE_INIT;

/* OpenBLAS's own pool would nest inside (or compete with) the OpenMP teams, and its
 * thread count is one global: the products are split here instead. */
static void mc_blas_serial(void) { scipy_openblas_set_num_threads(1); }

void mc_set_threads(int n) {
    pthread_once(&mc_blas_once, mc_blas_serial);
    mc_thread_count = n > 0 ? n : 1;
}

#if defined(__AVX512F__)
void mc_sgemm_avx512(int trans_a, int trans_b, long m, long n, long k, const float *a,
                     long lda, const float *b, long ldb, float beta, float *c, long ldc);
#endif

static void mc_gemm_serial(int trans_a, int trans_b, long m, long n, long k,
                           const real *a, long lda, const real *b, long ldb, real beta,
                           real *c, long ldc) {
#if defined(__AVX512F__)
    if (MC_IS_FLOAT) { /* gemm_avx512.c: each element's sum does not depend on m, n */
        mc_sgemm_avx512(trans_a, trans_b, m, n, k, (const float *)a, lda,
                        (const float *)b, ldb, (float)beta, (float *)c, ldc);
        return;
    }
#endif
    enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    if (MC_IS_FLOAT)
        scipy_cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0f,
                          (const float *)a, (blasint)lda, (const float *)b, (blasint)ldb,
                          (float)beta, (float *)c, (blasint)ldc);
    else
        scipy_cblas_dgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0,
                          (const double *)a, (blasint)lda, (const double *)b, (blasint)ldb,
                          (double)beta, (double *)c, (blasint)ldc);
}

void mc_gemm_one(int trans_a, int trans_b, long m, long n, long k, const real *a,
                 long lda, const real *b, long ldb, real beta, real *c, long ldc) {
    if (m == 0 || n == 0) return;
    mc_gemm_serial(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

void mc_gemm(int trans_a, int trans_b, long m, long n, long k, const real *a,
             long lda, const real *b, long ldb, real beta, real *c, long ldc) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        /* BLAS leaves C untouched when k == 0; the product is zero. */
        for (long i = 0; i < m; ++i)
            for (long j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? 0 : c[i * ldc + j];
        return;
    }
    /* Split the longer side of C into blocks of at least 16; every element of C is
     * still one whole dot product, as in a serial call. */
    int columns = n >= m;
    long side = columns ? n : m;
    int t = mc_team(m * n * (k / 4 + 1));
    if (t > side / 16) t = (int)(side / 16);
    if (t <= 1) {
        mc_gemm_serial(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#pragma omp parallel for num_threads(t) schedule(static, 1)
    for (int p = 0; p < t; ++p) {
        long lo = mc_split(side, t, p, 16), hi = mc_split(side, t, p + 1, 16);
        if (hi <= lo) continue;
        if (columns)
            mc_gemm_serial(trans_a, trans_b, m, hi - lo, k, a, lda,
                           trans_b ? b + lo * ldb : b + lo, ldb, beta, c + lo, ldc);
        else
            mc_gemm_serial(trans_a, trans_b, hi - lo, n, k,
                           trans_a ? a + lo : a + lo * lda, lda, b, ldb, beta,
                           c + lo * ldc, ldc);
    }
}
