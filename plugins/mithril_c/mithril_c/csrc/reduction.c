/* Reductions over a contiguous block of axes: the input is seen as [outer, n, inner]
 * and reduced over n. Other axis sets use generated loops. Threads split the outputs
 * (rows of outer, else columns of inner); each sum keeps its serial order. Sums are
 * added up in double (float32 running sums of many nearly equal values drift). */
#include "mithril_c.h"

#define MC_SUM_COLUMNS 256

/* out[j] = sum over i < n of in[i * inner + j], for j in [lo, hi). */
static inline void mc_sum_columns(real *out, const real *in, long n, long inner, long lo,
                                  long hi) {
    double acc[MC_SUM_COLUMNS];
    for (long j0 = lo; j0 < hi; j0 += MC_SUM_COLUMNS) {
        long width = hi - j0 < MC_SUM_COLUMNS ? hi - j0 : MC_SUM_COLUMNS;
        for (long j = 0; j < width; ++j) acc[j] = 0;
        for (long i = 0; i < n; ++i) {
            const real *row = in + i * inner + j0;
            for (long j = 0; j < width; ++j) acc[j] += row[j];
        }
        for (long j = 0; j < width; ++j) out[j0 + j] = (real)acc[j];
    }
}

MC_DISPATCH void mc_sum_axis(real *out, const real *in, long outer, long n, long inner) {
    int t = mc_team(outer * n * inner);
    if (outer == 1 && inner > 1) {
        if (t > inner / 16) t = (int)(inner / 16);
        if (t < 1) t = 1;
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static, 1)
        for (int p = 0; p < t; ++p) {
            long lo = mc_split(inner, t, p, 16), hi = mc_split(inner, t, p + 1, 16);
            mc_sum_columns(out, in, n, inner, lo, hi);
        }
        return;
    }
    if (t > outer) t = outer > 1 ? (int)outer : 1;
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long o = 0; o < outer; ++o) {
        const real *block = in + o * n * inner;
        real *row = out + o * inner;
        if (inner == 1) {
            double total = 0;
            for (long i = 0; i < n; ++i) total += block[i];
            row[0] = (real)total;
            continue;
        }
        mc_sum_columns(row, block, n, inner, 0, inner);
    }
}
