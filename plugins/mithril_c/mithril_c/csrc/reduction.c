/* Reductions over a contiguous block of axes: the input is seen as [outer, n, inner]
 * and reduced over n. Other axis sets use generated loops. Threads split the outputs
 * (rows of outer, else columns of inner); each sum keeps its serial order. */
#include "mithril_c.h"

MC_DISPATCH void mc_sum_axis(real *out, const real *in, long outer, long n, long inner) {
    int t = mc_team(outer * n * inner);
    if (outer == 1 && inner > 1) {
        if (t > inner / 16) t = (int)(inner / 16);
        if (t < 1) t = 1;
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static, 1)
        for (int p = 0; p < t; ++p) {
            long lo = mc_split(inner, t, p, 16), hi = mc_split(inner, t, p + 1, 16);
            for (long j = lo; j < hi; ++j) out[j] = 0;
            for (long i = 0; i < n; ++i)
                for (long j = lo; j < hi; ++j) out[j] += in[i * inner + j];
        }
        return;
    }
    if (t > outer) t = outer > 1 ? (int)outer : 1;
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long o = 0; o < outer; ++o) {
        const real *block = in + o * n * inner;
        real *row = out + o * inner;
        if (inner == 1) {
            real total = 0;
            for (long i = 0; i < n; ++i) total += block[i];
            row[0] = total;
            continue;
        }
        for (long j = 0; j < inner; ++j) row[j] = 0;
        for (long i = 0; i < n; ++i)
            for (long j = 0; j < inner; ++j) row[j] += block[i * inner + j];
    }
}
