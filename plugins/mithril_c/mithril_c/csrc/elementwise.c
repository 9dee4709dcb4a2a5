/* Element-wise array kernels. Fused element-wise loops are generated per model; these
 * are the few whole-array operations the generated code calls. */
#include "mithril_c.h"

MC_DISPATCH void mc_fill(real *out, long n, real value) {
    for (long i = 0; i < n; ++i) out[i] = value;
}

MC_DISPATCH void mc_copy(real *out, const real *in, long n, int accumulate) {
    if (accumulate) {
        for (long i = 0; i < n; ++i) out[i] += in[i];
    } else if (out != in) {
        memcpy(out, in, (size_t)n * sizeof(real));
    }
}
