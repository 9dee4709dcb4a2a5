/* Element-wise array kernels. Fused element-wise loops are generated per model; these
 * are the few whole-array operations the generated code calls. */
#include "mithril_c.h"

MC_DISPATCH void mc_fill(real *out, long n, real value) {
    int t = mc_team(n / 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long i = 0; i < n; ++i) out[i] = value;
}

MC_DISPATCH void mc_copy(real *out, const real *in, long n, int accumulate) {
    int t = mc_team(n / 4);
    if (accumulate) {
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
        for (long i = 0; i < n; ++i) out[i] += in[i];
    } else if (out != in) {
        if (t <= 1) {
            memcpy(out, in, (size_t)n * sizeof(real));
            return;
        }
#pragma omp parallel for num_threads(t) schedule(static)
        for (int p = 0; p < t; ++p) {
            long lo = mc_split(n, t, p, 16), hi = mc_split(n, t, p + 1, 16);
            if (hi > lo) memcpy(out + lo, in + lo, (size_t)(hi - lo) * sizeof(real));
        }
    }
}
