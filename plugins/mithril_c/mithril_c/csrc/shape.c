/* Strided copies behind transpose, expand, indexing and concatenation, and their
 * gradients. The last dim is the inner loop; an index counter walks the others. */
#include "mithril_c.h"

#define MC_MAX_DIMS 32

static long mc_numel(int ndim, const long *shape) {
    long n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[d];
    return n;
}

/* Whether two elements of the view share memory (a broadcast dim): scattering into
 * it must then stay in order, on one thread. */
static int mc_overlaps(int ndim, const long *shape, const long *strides) {
    for (int d = 0; d < ndim; ++d)
        if (shape[d] > 1 && strides[d] == 0) return 1;
    return 0;
}

/* Calls ROW (with view_offset ``view`` and contiguous offset ``flat``) for each inner
 * row of the view; rows are split over a team of ``team`` threads, each starting
 * from its first row's multi-index. */
#define MC_WALK(ndim, shape, strides, team, ROW)                                 \
    do {                                                                         \
        long inner = ndim > 0 ? shape[ndim - 1] : 1;                             \
        long step = ndim > 0 ? strides[ndim - 1] : 0;                            \
        long rows = inner > 0 ? mc_numel(ndim, shape) / inner : 0;               \
        int walk_team = rows < (team) ? (rows > 1 ? (int)rows : 1) : (team);     \
        _Pragma("omp parallel for if (walk_team > 1) num_threads(walk_team)")   \
        for (int part = 0; part < walk_team; ++part) {                           \
            long first = mc_split(rows, walk_team, part, 1);                     \
            long last = mc_split(rows, walk_team, part + 1, 1);                  \
            long index[MC_MAX_DIMS] = {0};                                       \
            long view = 0;                                                       \
            for (long left = first, d = ndim - 2; d >= 0; --d) {                 \
                index[d] = left % shape[d];                                      \
                left /= shape[d];                                                \
                view += index[d] * strides[d];                                   \
            }                                                                    \
            for (long r = first; r < last; ++r) {                                \
                long flat = r * inner;                                           \
                ROW;                                                             \
                for (int d = ndim - 2; d >= 0; --d) {                            \
                    view += strides[d];                                          \
                    if (++index[d] < shape[d]) break;                            \
                    view -= strides[d] * shape[d];                               \
                    index[d] = 0;                                                \
                }                                                                \
            }                                                                    \
        }                                                                        \
    } while (0)

MC_DISPATCH void mc_gather(real *out, const real *in, int ndim, const long *shape,
               const long *strides, int accumulate) {
    int team = mc_team(mc_numel(ndim, shape));
    MC_WALK(ndim, shape, strides, team, {
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
    int team = mc_overlaps(ndim, shape, strides) ? 1 : mc_team(mc_numel(ndim, shape));
    MC_WALK(ndim, shape, strides, team, {
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
    int team = mc_team(mc_numel(ndim, shape));
    MC_BYTES_CASES(MC_WALK(ndim, shape, strides, team, {
        const item *src = (const item *)in + view;
        item *dst = (item *)out + flat;
        for (long i = 0; i < inner; ++i) dst[i] = src[i * step];
    }));
}

void mc_scatter_bytes(void *out, const void *in, int size, int ndim, const long *shape,
                      const long *strides) {
    int team = mc_overlaps(ndim, shape, strides) ? 1 : mc_team(mc_numel(ndim, shape));
    MC_BYTES_CASES(MC_WALK(ndim, shape, strides, team, {
        item *dst = (item *)out + view;
        const item *src = (const item *)in + flat;
        for (long i = 0; i < inner; ++i) dst[i * step] = src[i];
    }));
}
