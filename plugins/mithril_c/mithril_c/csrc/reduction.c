/* Reductions over a contiguous block of axes: the input is seen as [outer, n, inner]
 * and reduced over n. Other axis sets use generated loops. */
#include "mithril_c.h"

MC_DISPATCH void mc_sum_axis(real *out, const real *in, long outer, long n, long inner) {
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
