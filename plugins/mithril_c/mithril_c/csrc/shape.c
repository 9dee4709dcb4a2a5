/* Strided copies behind transpose, expand, indexing and concatenation, and their
 * gradients. The last dim is the inner loop; an index counter walks the others. */
#include "mithril_c.h"

#define MC_MAX_DIMS 32

static long mc_numel(int ndim, const long *shape) {
    long n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
}

/* Calls body(view_offset, contiguous_offset) for each inner row of the view. */
#define MC_WALK(ndim, shape, strides, ROW)                                       \
    do {                                                                         \
        long index[MC_MAX_DIMS] = {0};                                           \
        long inner = ndim > 0 ? shape[ndim - 1] : 1;                             \
        long step = ndim > 0 ? strides[ndim - 1] : 0;                            \
        long rows = inner > 0 ? mc_numel(ndim, shape) / inner : 0;               \
        long view = 0;                                                           \
        for (long r = 0; r < rows; ++r) {                                        \
            long flat = r * inner;                                               \
            ROW;                                                                 \
            for (int d = ndim - 2; d >= 0; --d) {                                \
                view += strides[d];                                              \
                if (++index[d] < shape[d]) break;                                \
                view -= strides[d] * shape[d];                                   \
                index[d] = 0;                                                    \
            }                                                                    \
        }                                                                        \
    } while (0)

MC_DISPATCH void mc_gather(real *out, const real *in, int ndim, const long *shape,
               const long *strides, int accumulate) {
    MC_WALK(ndim, shape, strides, {
        const real *src = in + view;
        real *dst = out + flat;
        if (accumulate)
            for (long i = 0; i < inner; ++i) dst[i] += src[i * step];
        else
            for (long i = 0; i < inner; ++i) dst[i] = src[i * step];
    });
}

MC_DISPATCH void mc_scatter(real *out, const real *in, int ndim, const long *shape,
                const long *strides, int accumulate) {
    MC_WALK(ndim, shape, strides, {
        real *dst = out + view;
        const real *src = in + flat;
        if (accumulate)
            for (long i = 0; i < inner; ++i) dst[i * step] += src[i];
        else
            for (long i = 0; i < inner; ++i) dst[i * step] = src[i];
    });
}

/* Element copies of 1, 2, 4 or 8 bytes (int and bool tensors). */
#define MC_BYTES_CASES(BODY)                                         \
    switch (size) {                                                  \
    case 1: { typedef uint8_t item; BODY; break; }                   \
    case 2: { typedef uint16_t item; BODY; break; }                  \
    case 4: { typedef uint32_t item; BODY; break; }                  \
    default: { typedef uint64_t item; BODY; break; }                 \
    }

void mc_gather_bytes(void *out, const void *in, int size, int ndim, const long *shape,
                     const long *strides) {
    MC_BYTES_CASES(MC_WALK(ndim, shape, strides, {
        const item *src = (const item *)in + view;
        item *dst = (item *)out + flat;
        for (long i = 0; i < inner; ++i) dst[i] = src[i * step];
    }));
}

void mc_scatter_bytes(void *out, const void *in, int size, int ndim, const long *shape,
                      const long *strides) {
    MC_BYTES_CASES(MC_WALK(ndim, shape, strides, {
        item *dst = (item *)out + view;
        const item *src = (const item *)in + flat;
        for (long i = 0; i < inner; ++i) dst[i * step] = src[i];
    }));
}
