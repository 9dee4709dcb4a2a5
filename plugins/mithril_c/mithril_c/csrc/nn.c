/* Softmax and log-softmax along one axis of a [outer, n, inner] array. */
#include "mithril_c.h"

MC_DISPATCH void mc_softmax(real *y, const real *x, long outer, long n, long inner) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            const real *xr = x + o * n * inner + j;
            real *yr = y + o * n * inner + j;
            real top = xr[0];
            for (long i = 1; i < n; ++i) top = xr[i * inner] > top ? xr[i * inner] : top;
            real total = 0;
            for (long i = 0; i < n; ++i) {
                real e = MC_EXP(xr[i * inner] - top);
                yr[i * inner] = e;
                total += e;
            }
            real scale = 1 / total;
            for (long i = 0; i < n; ++i) yr[i * inner] *= scale;
        }
    }
}

MC_DISPATCH void mc_softmax_vjp(real *gx, const real *g, const real *y, long outer, long n,
                    long inner, int accumulate) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            long base = o * n * inner + j;
            real dot = 0;
            for (long i = 0; i < n; ++i) dot += g[base + i * inner] * y[base + i * inner];
            for (long i = 0; i < n; ++i) {
                long at = base + i * inner;
                real value = y[at] * (g[at] - dot);
                gx[at] = accumulate ? gx[at] + value : value;
            }
        }
    }
}

MC_DISPATCH void mc_log_softmax(real *y, const real *x, long outer, long n, long inner) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            const real *xr = x + o * n * inner + j;
            real *yr = y + o * n * inner + j;
            real top = xr[0];
            for (long i = 1; i < n; ++i) top = xr[i * inner] > top ? xr[i * inner] : top;
            real total = 0;
            for (long i = 0; i < n; ++i) total += MC_EXP(xr[i * inner] - top);
            real shift = top + MC_LOG(total);
            for (long i = 0; i < n; ++i) yr[i * inner] = xr[i * inner] - shift;
        }
    }
}

MC_DISPATCH void mc_log_softmax_vjp(real *gx, const real *g, const real *y, long outer, long n,
                        long inner, int accumulate) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            long base = o * n * inner + j;
            real total = 0;
            for (long i = 0; i < n; ++i) total += g[base + i * inner];
            for (long i = 0; i < n; ++i) {
                long at = base + i * inner;
                real value = g[at] - MC_EXP(y[at]) * total;
                gx[at] = accumulate ? gx[at] + value : value;
            }
        }
    }
}
