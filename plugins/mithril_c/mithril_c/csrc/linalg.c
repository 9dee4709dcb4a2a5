/* Matrix products through OpenBLAS (the scipy-openblas32 wheel, symbols prefixed
 * ``scipy_``). Transposes are gemm flags, never copies. */
#include "mithril_c.h"

#include <cblas.h>

void mc_gemm(int trans_a, int trans_b, long m, long n, long k, const real *a,
             long lda, const real *b, long ldb, real beta, real *c, long ldc) {
    enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    if (m == 0 || n == 0) return;
    if (k == 0) {
        /* BLAS leaves C untouched when k == 0; the product is zero. */
        for (long i = 0; i < m; ++i)
            for (long j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? 0 : c[i * ldc + j];
        return;
    }
    if (MC_IS_FLOAT)
        scipy_cblas_sgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0f,
                          (const float *)a, (blasint)lda, (const float *)b, (blasint)ldb,
                          (float)beta, (float *)c, (blasint)ldc);
    else
        scipy_cblas_dgemm(CblasRowMajor, ta, tb, (blasint)m, (blasint)n, (blasint)k, 1.0,
                          (const double *)a, (blasint)lda, (const double *)b, (blasint)ldb,
                          (double)beta, (double *)c, (blasint)ldc);
}
