/* Softmax and log-softmax along one axis of a [outer, n, inner] array. */
#include "mithril_c.h"

/* Rows (o, j) of a [outer, n, inner] array are independent: they split over the team.
 * Sums along a row are in double (a vocabulary of 50,000 is a long float sum). */
static inline real mc_row_max(const real *xr, long n, long inner) {
    real top = xr[0];
    for (long i = 1; i < n; ++i) top = xr[i * inner] > top ? xr[i * inner] : top;
    return top;
}

MC_DISPATCH void mc_softmax(real *y, const real *x, long outer, long n, long inner) {
    int t = mc_team(outer * n * inner * 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long r = 0; r < outer * inner; ++r) {
        long base = r / inner * n * inner + r % inner;
        const real *xr = x + base;
        real *yr = y + base;
        real top = mc_row_max(xr, n, inner);
        double total = 0;
        for (long i = 0; i < n; ++i) {
            real e = MC_EXP(xr[i * inner] - top);
            yr[i * inner] = e;
            total += e;
        }
        real scale = (real)(1 / total);
        for (long i = 0; i < n; ++i) yr[i * inner] *= scale;
    }
}

MC_DISPATCH void mc_softmax_vjp(real *gx, const real *g, const real *y, long outer, long n,
                                long inner, int accumulate) {
    int t = mc_team(outer * n * inner * 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long r = 0; r < outer * inner; ++r) {
        long base = r / inner * n * inner + r % inner;
        double dot = 0;
        for (long i = 0; i < n; ++i) dot += g[base + i * inner] * y[base + i * inner];
        for (long i = 0; i < n; ++i) {
            long at = base + i * inner;
            real value = y[at] * (g[at] - (real)dot);
            gx[at] = accumulate ? gx[at] + value : value;
        }
    }
}

MC_DISPATCH void mc_log_softmax(real *y, const real *x, long outer, long n, long inner) {
    int t = mc_team(outer * n * inner * 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long r = 0; r < outer * inner; ++r) {
        long base = r / inner * n * inner + r % inner;
        const real *xr = x + base;
        real *yr = y + base;
        real top = mc_row_max(xr, n, inner);
        double total = 0;
        for (long i = 0; i < n; ++i) total += MC_EXP(xr[i * inner] - top);
        real shift = top + (real)log(total);
        for (long i = 0; i < n; ++i) yr[i * inner] = xr[i * inner] - shift;
    }
}

MC_DISPATCH void mc_log_softmax_vjp(real *gx, const real *g, const real *y, long outer,
                                    long n, long inner, int accumulate) {
    int t = mc_team(outer * n * inner * 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long r = 0; r < outer * inner; ++r) {
        long base = r / inner * n * inner + r % inner;
        double total = 0;
        for (long i = 0; i < n; ++i) total += g[base + i * inner];
        for (long i = 0; i < n; ++i) {
            long at = base + i * inner;
            real value = g[at] - MC_EXP(y[at]) * (real)total;
            gx[at] = accumulate ? gx[at] + value : value;
        }
    }
}

/* -- convolution: im2col + gemm per image and group --------------------------------- */

/* [lo, hi): the output columns ox < ow whose input column x0 + ox * sw is inside
 * [0, w). */
static inline void mc_inside(long x0, long w, long sw, long ow, long *lo, long *hi) {
    long a = x0 >= 0 ? 0 : (-x0 + sw - 1) / sw;
    long b = x0 >= w ? 0 : (w - 1 - x0) / sw + 1;
    if (b > ow) b = ow;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* mc_im2col_plane of a stride-1 convolution whose output is as wide as its input
 * (ResNet's 3x3, padding 1): each column row is the plane shifted by whole rows and
 * columns, so it is one block copy, then zeros in the columns and rows that fall in
 * the padding (the copy's wrapped-around border elements). */
static inline void mc_im2col_plane_shifted(real *col, long ld, const real *plane, long h,
                                           long w, long kh, long kw, long oh, long ph,
                                           long pw) {
    for (long i = 0; i < kh; ++i) {
        long oy0 = ph - i > 0 ? ph - i : 0, oy1 = h + ph - i < oh ? h + ph - i : oh;
        if (oy1 < oy0) oy1 = oy0;
        for (long j = 0; j < kw; ++j) {
            real *row = col + (i * kw + j) * ld;
            long x0 = j - pw;
            long lo = x0 >= 0 ? 0 : -x0, hi = w - x0 < w ? w - x0 : w;
            if (hi < lo) hi = lo;
            /* dst[oy w + ox] = plane[(oy + i - ph) w + ox + x0] for oy in [oy0, oy1),
             * copied as one block clipped to the plane. */
            long from = oy0 * w, to = oy1 * w, shift = (i - ph) * w + x0;
            long a = from + shift < 0 ? -shift : from;
            long b = to + shift > h * w ? h * w - shift : to;
            if (b > a) memcpy(row + a, plane + a + shift, (size_t)(b - a) * sizeof(real));
            for (long k = from; k < a && k < to; ++k) row[k] = 0;
            for (long k = b > from ? b : from; k < to; ++k) row[k] = 0;
            for (long oy = oy0; oy < oy1; ++oy) {
                real *line = row + oy * w;
                for (long ox = 0; ox < lo; ++ox) line[ox] = 0;
                for (long ox = hi; ox < w; ++ox) line[ox] = 0;
            }
            for (long k = 0; k < oy0 * w; ++k) row[k] = 0;
            for (long k = oy1 * w; k < oh * w; ++k) row[k] = 0;
        }
    }
}

/* The kh * kw column rows (``ld`` apart) of one channel plane (zero where padded). */
static inline void mc_im2col_plane(real *col, long ld, const real *plane, long h, long w,
                                   long kh, long kw, long oh, long ow, long sh, long sw,
                                   long ph, long pw, long dh, long dw) {
    if (sh == 1 && sw == 1 && dh == 1 && dw == 1 && ow == w) {
        mc_im2col_plane_shifted(col, ld, plane, h, w, kh, kw, oh, ph, pw);
        return;
    }
    for (long i = 0; i < kh; ++i) {
        for (long j = 0; j < kw; ++j) {
            real *row = col + (i * kw + j) * ld;
            long x0 = j * dw - pw, lo, hi;
            mc_inside(x0, w, sw, ow, &lo, &hi);
            for (long oy = 0; oy < oh; ++oy) {
                long y = oy * sh - ph + i * dh;
                real *dst = row + oy * ow;
                if (y < 0 || y >= h) {
                    for (long ox = 0; ox < ow; ++ox) dst[ox] = 0;
                    continue;
                }
                const real *src = plane + y * w + x0;
                for (long ox = 0; ox < lo; ++ox) dst[ox] = 0;
                if (sw == 1)
                    for (long ox = lo; ox < hi; ++ox) dst[ox] = src[ox];
                else
                    for (long ox = lo; ox < hi; ++ox) dst[ox] = src[ox * sw];
                for (long ox = hi; ox < ow; ++ox) dst[ox] = 0;
            }
        }
    }
}

/* Adjoint of mc_im2col_plane: add the column rows back into the plane (padding
 * dropped). */
static inline void mc_col2im_plane(real *plane, const real *col, long ld, long h, long w,
                                   long kh, long kw, long oh, long ow, long sh, long sw,
                                   long ph, long pw, long dh, long dw) {
    for (long i = 0; i < kh; ++i) {
        for (long j = 0; j < kw; ++j) {
            const real *row = col + (i * kw + j) * ld;
            long x0 = j * dw - pw, lo, hi;
            mc_inside(x0, w, sw, ow, &lo, &hi);
            for (long oy = 0; oy < oh; ++oy) {
                long y = oy * sh - ph + i * dh;
                if (y < 0 || y >= h) continue;
                const real *src = row + oy * ow;
                real *dst = plane + y * w + x0;
                if (sw == 1)
                    for (long ox = lo; ox < hi; ++ox) dst[ox] += src[ox];
                else
                    for (long ox = lo; ox < hi; ++ox) dst[ox * sw] += src[ox];
            }
        }
    }
}

/* Columns [c * kh * kw, oh * ow] of one image's channel block, rows ``ld`` apart. */
static void mc_im2col(real *col, long ld, const real *x, long c, long h, long w, long kh,
                      long kw, long oh, long ow, long sh, long sw, long ph, long pw,
                      long dh, long dw) {
    int t = mc_team(c * kh * kw * oh * ow);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long ci = 0; ci < c; ++ci)
        mc_im2col_plane(col + ci * kh * kw * ld, ld, x + ci * h * w, h, w, kh, kw, oh, ow,
                        sh, sw, ph, pw, dh, dw);
}

/* Adjoint of mc_im2col: each channel adds into its own plane (split over the team). */
static void mc_col2im(real *x, const real *col, long ld, long c, long h, long w, long kh,
                      long kw, long oh, long ow, long sh, long sw, long ph, long pw,
                      long dh, long dw) {
    int t = mc_team(c * kh * kw * oh * ow);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long ci = 0; ci < c; ++ci)
        mc_col2im_plane(x + ci * h * w, col + ci * kh * kw * ld, ld, h, w, kh, kw, oh, ow,
                        sh, sw, ph, pw, dh, dw);
}

/* A 1x1, stride-1, unpadded convolution reads the image itself as its columns. */
static int mc_conv_is_pointwise(const long *d) {
    return d[5] == 1 && d[6] == 1 && d[9] == 1 && d[10] == 1 && d[11] == 0 &&
           d[12] == 0 && d[2] == d[7] && d[3] == d[8];
}

/* One image (all groups) of a convolution, columns in ``col``. */
static void mc_conv_image(real *y, const real *x, const real *w, const long *d,
                          real *col, long b) {
    long c = d[1], h = d[2], wd = d[3], f = d[4], kh = d[5], kw = d[6];
    long oh = d[7], ow = d[8], groups = d[15];
    long cg = c / groups, fg = f / groups, k = cg * kh * kw, p = oh * ow;
    int pointwise = mc_conv_is_pointwise(d);
    for (long g = 0; g < groups; ++g) {
        const real *image = x + (b * c + g * cg) * h * wd;
        const real *cols = image;
        if (!pointwise) {
            mc_im2col(col, p, image, cg, h, wd, kh, kw, oh, ow, d[9], d[10], d[11],
                      d[12], d[13], d[14]);
            cols = col;
        }
        mc_gemm(0, 0, fg, p, k, w + g * fg * k, k, cols, p, 0, y + (b * f + g * fg) * p,
                p);
    }
}

/* Scratch per image in flight: the columns of one group. */
static long mc_conv_cols(const long *d) {
    return d[1] / d[15] * d[5] * d[6] * d[7] * d[8];
}

/* Threads for whole images: one team over the batch when it has an image per
 * thread (else 1: each image splits its own work). */
static int mc_conv_image_team(const long *d) {
    long n = d[0], copies = d[16];
    int t = mc_team(n * d[4] * d[7] * d[8] * (d[1] / d[15]) * d[5] * d[6] / 4);
    if (t > copies) t = (int)copies;
    return (t > 1 && n >= t) ? t : 1;
}

/* -- convolution over a chunk of images at once ---------------------------------------
 * Small images make thin products (ResNet-18's last stage at 64 x 64: 4 output pixels
 * per image, a [512, 4608] x [4608, 4] gemm) and short sums (the weight gradient sums
 * over an image's pixels). With d[17] = nb > 0 (groups 1), chunks of nb images put
 * their columns side by side ([k, nb p], image j in columns j p ...) and run one
 * product per chunk; outputs and output gradients pass through a [f, nb p] copy. The
 * scratch holds both: (k + f) nb p values. */

/* t[fo][j p + i] = y[j][fo][i] for m images. */
static void mc_conv_gather(real *t, const real *y, long f, long p, long m) {
    int team = mc_team(f * p * m);
#pragma omp parallel for if (team > 1) num_threads(team) schedule(static)
    for (long fo = 0; fo < f; ++fo)
        for (long j = 0; j < m; ++j)
            memcpy(t + fo * m * p + j * p, y + (j * f + fo) * p, (size_t)p * sizeof(real));
}

/* y[j][fo][i] = t[fo][j p + i] for m images. */
static void mc_conv_scatter(real *y, const real *t, long f, long p, long m) {
    int team = mc_team(f * p * m);
#pragma omp parallel for if (team > 1) num_threads(team) schedule(static)
    for (long fo = 0; fo < f; ++fo)
        for (long j = 0; j < m; ++j)
            memcpy(y + (j * f + fo) * p, t + fo * m * p + j * p, (size_t)p * sizeof(real));
}

/* The columns of images b0 .. b0 + m - 1, side by side (rows m p apart): one team
 * over the (image, channel) planes. */
static void mc_conv_chunk_cols(real *cols, const real *x, const long *d, long b0, long m) {
    long c = d[1], h = d[2], wd = d[3], kk = d[5] * d[6], p = d[7] * d[8];
    int t = mc_team(m * c * kk * p);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static) collapse(2)
    for (long j = 0; j < m; ++j)
        for (long ci = 0; ci < c; ++ci)
            mc_im2col_plane(cols + ci * kk * m * p + j * p, m * p,
                            x + ((b0 + j) * c + ci) * h * wd, h, wd, d[5], d[6], d[7],
                            d[8], d[9], d[10], d[11], d[12], d[13], d[14]);
}

/* Adjoint of mc_conv_chunk_cols: add the columns into the images' gradients. */
static void mc_conv_chunk_uncols(real *gx, const real *cols, const long *d, long b0,
                                 long m) {
    long c = d[1], h = d[2], wd = d[3], kk = d[5] * d[6], p = d[7] * d[8];
    int t = mc_team(m * c * kk * p);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static) collapse(2)
    for (long j = 0; j < m; ++j)
        for (long ci = 0; ci < c; ++ci)
            mc_col2im_plane(gx + ((b0 + j) * c + ci) * h * wd,
                            cols + ci * kk * m * p + j * p, m * p, h, wd, d[5], d[6],
                            d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14]);
}

static void mc_conv2d_chunked(real *y, const real *x, const real *w, const long *d,
                              real *scratch) {
    long n = d[0], f = d[4], k = d[1] * d[5] * d[6], p = d[7] * d[8], nb = d[17];
    real *cols = scratch, *yt = scratch + k * nb * p;
    for (long b0 = 0; b0 < n; b0 += nb) {
        long m = n - b0 < nb ? n - b0 : nb, l = m * p;
        mc_conv_chunk_cols(cols, x, d, b0, m);
        mc_gemm(0, 0, f, l, k, w, k, cols, l, 0, yt, l);
        mc_conv_scatter(y + b0 * f * p, yt, f, p, m);
    }
}

/* cols_kept: the forward left the columns of the whole batch (one chunk) in scratch. */
static void mc_conv2d_vjp_chunked(real *gx, real *gw, const real *g, const real *x,
                                  const real *w, const long *d, real *scratch,
                                  int accumulate_x, int accumulate_w, int cols_kept) {
    long n = d[0], c = d[1], h = d[2], wd = d[3], f = d[4], kh = d[5], kw = d[6];
    long oh = d[7], ow = d[8], k = c * kh * kw, p = oh * ow, nb = d[17];
    real *cols = scratch, *gt = scratch + k * nb * p;
    if (gx && !accumulate_x) mc_fill(gx, n * c * h * wd, 0);
    for (long b0 = 0; b0 < n; b0 += nb) {
        long m = n - b0 < nb ? n - b0 : nb, l = m * p;
        mc_conv_gather(gt, g + b0 * f * p, f, p, m);
        if (gw) {
            if (!(cols_kept && m == n)) mc_conv_chunk_cols(cols, x, d, b0, m);
            real beta = (b0 > 0 || accumulate_w) ? 1 : 0;
            mc_gemm(0, 1, f, k, l, gt, l, cols, l, beta, gw, k);
        }
        if (gx) {
            mc_gemm(1, 0, k, l, f, w, k, gt, l, 0, cols, l);
            mc_conv_chunk_uncols(gx, cols, d, b0, m);
        }
    }
}

MC_DISPATCH void mc_conv2d(real *y, const real *x, const real *w, const long *d,
                           real *col) {
    long n = d[0], size = mc_conv_cols(d);
    if (d[17] > 0) {
        mc_conv2d_chunked(y, x, w, d, col);
        return;
    }
    int t = mc_conv_image_team(d);
    if (t <= 1) {
        for (long b = 0; b < n; ++b) mc_conv_image(y, x, w, d, col, b);
        return;
    }
#pragma omp parallel num_threads(t)
    {
        real *own = col + (long)omp_get_thread_num() * size;
#pragma omp for schedule(static)
        for (long b = 0; b < n; ++b) mc_conv_image(y, x, w, d, own, b);
    }
}

/* -- convolution: Winograd F(4x4, 3x3) ---------------------------------------------- */
/* Y = A^T [(G g G^T) . (B^T d B)] A per 6x6 input tile d and 4x4 output tile, with the
 * interpolation points 0, 1, -1, 2, -2 and infinity. The 36 element-wise products of
 * a block of tiles are 36 matrix products [f, c] x [c, tiles]. The transforms run over
 * a row of tiles at once (vectorised across the tiles). */

#define MC_WINO_CHUNK 64 /* tiles per pass of the transforms */

/* G g G^T of the 3x3 kernels (fo, 0..c): u[xi * f * c + fo * c + ci]. Channels go in
 * chunks, vectorised across them. */
static inline __attribute__((always_inline)) void
mc_wino_weights(real *u, const real *w, long f, long c, long fo) {
    const real q = (real)0.25, s6 = (real)1 / 6, s12 = (real)1 / 12, s24 = (real)1 / 24;
    long fc = f * c;
    real g[9][MC_WINO_CHUNK], t[6][3][MC_WINO_CHUNK];
    for (long c0 = 0; c0 < c; c0 += MC_WINO_CHUNK) {
        long nc = c - c0 < MC_WINO_CHUNK ? c - c0 : MC_WINO_CHUNK;
        const real *src = w + (fo * c + c0) * 9;
        for (long i = 0; i < nc; ++i)
            for (int k = 0; k < 9; ++k) g[k][i] = src[i * 9 + k];
        for (int j = 0; j < 3; ++j) {
            for (long i = 0; i < nc; ++i) {
                real g0 = g[j][i], g1 = g[3 + j][i], g2 = g[6 + j][i];
                t[0][j][i] = g0 * q;
                t[1][j][i] = -(g0 + g1 + g2) * s6;
                t[2][j][i] = -(g0 - g1 + g2) * s6;
                t[3][j][i] = g0 * s24 + g1 * s12 + g2 * s6;
                t[4][j][i] = g0 * s24 - g1 * s12 + g2 * s6;
                t[5][j][i] = g2;
            }
        }
        for (int r = 0; r < 6; ++r) {
            real *o = u + r * 6 * fc + fo * c + c0;
            const real *t0 = t[r][0], *t1 = t[r][1], *t2 = t[r][2];
            for (long i = 0; i < nc; ++i) o[i] = t0[i] * q;
            for (long i = 0; i < nc; ++i) o[fc + i] = -(t0[i] + t1[i] + t2[i]) * s6;
            for (long i = 0; i < nc; ++i) o[2 * fc + i] = -(t0[i] - t1[i] + t2[i]) * s6;
            for (long i = 0; i < nc; ++i)
                o[3 * fc + i] = t0[i] * s24 + t1[i] * s12 + t2[i] * s6;
            for (long i = 0; i < nc; ++i)
                o[4 * fc + i] = t0[i] * s24 - t1[i] * s12 + t2[i] * s6;
            for (long i = 0; i < nc; ++i) o[5 * fc + i] = t2[i];
        }
    }
}

/* B^T d of six values (a column or row of a tile). */
#define MC_WINO_BT(d0, d1, d2, d3, d4, d5, r0, r1, r2, r3, r4, r5)                  \
    do {                                                                         \
        real a_ = (d4) - 4 * (d2), b_ = (d3) - 4 * (d1);                         \
        real c_ = (d4) - (d2), e_ = 2 * ((d3) - (d1));                           \
        r0 = 4 * (d0) - 5 * (d2) + (d4);                                         \
        r1 = a_ + b_;                                                            \
        r2 = a_ - b_;                                                            \
        r3 = c_ + e_;                                                            \
        r4 = c_ - e_;                                                            \
        r5 = 4 * (d1) - 5 * (d3) + (d5);                                         \
    } while (0)

/* The input tiles of one row of tiles of one channel plane: rows y0..y0+5, tile tx
 * starting at column x0 + 4 tx (zero outside the plane). v[xi * vs + tx]. */
static inline __attribute__((always_inline)) void
mc_wino_input(real *v, long vs, const real *plane, long h, long w, long y0, long x0,
              long tiles) {
    real in[6][4 * MC_WINO_CHUNK + 2];
    real rt[6][4 * MC_WINO_CHUNK + 2];
    for (long t0 = 0; t0 < tiles; t0 += MC_WINO_CHUNK) {
        long nt = tiles - t0 < MC_WINO_CHUNK ? tiles - t0 : MC_WINO_CHUNK;
        long width = 4 * nt + 2, xs = x0 + 4 * t0;
        for (int i = 0; i < 6; ++i) {
            long yy = y0 + i;
            real *row = in[i];
            if (yy < 0 || yy >= h) {
                for (long j = 0; j < width; ++j) row[j] = 0;
                continue;
            }
            const real *src = plane + yy * w;
            if (xs >= 0 && xs + width <= w) {
                memcpy(row, src + xs, (size_t)width * sizeof(real));
            } else {
                for (long j = 0; j < width; ++j) {
                    long xx = xs + j;
                    row[j] = (xx >= 0 && xx < w) ? src[xx] : 0;
                }
            }
        }
        for (long j = 0; j < width; ++j)
            MC_WINO_BT(in[0][j], in[1][j], in[2][j], in[3][j], in[4][j], in[5][j],
                       rt[0][j], rt[1][j], rt[2][j], rt[3][j], rt[4][j], rt[5][j]);
        for (int k = 0; k < 6; ++k) {
            const real *r = rt[k];
            real *o = v + k * 6 * vs + t0;
            for (long tx = 0; tx < nt; ++tx) {
                const real *e = r + 4 * tx;
                real o0, o1, o2, o3, o4, o5;
                MC_WINO_BT(e[0], e[1], e[2], e[3], e[4], e[5], o0, o1, o2, o3, o4, o5);
                o[tx] = o0;
                o[vs + tx] = o1;
                o[2 * vs + tx] = o2;
                o[3 * vs + tx] = o3;
                o[4 * vs + tx] = o4;
                o[5 * vs + tx] = o5;
            }
        }
    }
}

/* A^T m of six values. */
#define MC_WINO_AT(m0, m1, m2, m3, m4, m5, o0, o1, o2, o3)                          \
    do {                                                                         \
        real a_ = (m1) + (m2), b_ = (m1) - (m2), c_ = (m3) + (m4), e_ = (m3) - (m4); \
        o0 = (m0) + a_ + c_;                                                     \
        o1 = b_ + 2 * e_;                                                        \
        o2 = a_ + 4 * c_;                                                        \
        o3 = b_ + 8 * e_ + (m5);                                                 \
    } while (0)

/* The output tiles of one row of tiles of one output plane from m[xi * ms + tx]:
 * rows y0..y0+3 (those below oh), tile tx at columns 4 tx (those below ow). */
static inline __attribute__((always_inline)) void
mc_wino_output(real *plane, long oh, long ow, long y0, const real *m, long ms,
               long tiles) {
    real s[4][6][MC_WINO_CHUNK];
    real out[4][4 * MC_WINO_CHUNK];
    long rows = oh - y0 < 4 ? oh - y0 : 4;
    for (long t0 = 0; t0 < tiles; t0 += MC_WINO_CHUNK) {
        long nt = tiles - t0 < MC_WINO_CHUNK ? tiles - t0 : MC_WINO_CHUNK;
        for (int j = 0; j < 6; ++j) {
            const real *p = m + j * ms + t0;
            for (long tx = 0; tx < nt; ++tx)
                MC_WINO_AT(p[tx], p[6 * ms + tx], p[12 * ms + tx], p[18 * ms + tx],
                           p[24 * ms + tx], p[30 * ms + tx], s[0][j][tx], s[1][j][tx],
                           s[2][j][tx], s[3][j][tx]);
        }
        for (int l = 0; l < 4; ++l) {
            real *o = out[l];
            for (long tx = 0; tx < nt; ++tx)
                MC_WINO_AT(s[l][0][tx], s[l][1][tx], s[l][2][tx], s[l][3][tx],
                           s[l][4][tx], s[l][5][tx], o[4 * tx], o[4 * tx + 1],
                           o[4 * tx + 2], o[4 * tx + 3]);
        }
        long x0 = 4 * t0, cols = ow - x0 < 4 * nt ? ow - x0 : 4 * nt;
        for (long l = 0; l < rows; ++l)
            memcpy(plane + (y0 + l) * ow + x0, out[l], (size_t)cols * sizeof(real));
    }
}

MC_DISPATCH void mc_conv2d_winograd(real *y, const real *x, const real *w, const long *d,
                                    real *u, real *scratch) {
    long n = d[0], c = d[1], h = d[2], wd = d[3], f = d[4], oh = d[5], ow = d[6];
    long ph = d[7], pw = d[8], th = d[9], tw = d[10], br = d[11];
    long tb = br * tw, rows = n * th;
    real *v = scratch, *m = scratch + 36 * c * tb;
    /* One team for the whole call: weights split by filter, input tiles by channel,
     * the 36 products by position, output tiles by filter; each value is computed
     * the same way on any thread, so the result does not depend on the team. */
    int t = mc_team(n * f * c * oh * ow);
#pragma omp parallel if (t > 1) num_threads(t)
    {
#pragma omp for schedule(static)
        for (long fo = 0; fo < f; ++fo) mc_wino_weights(u, w, f, c, fo);
        for (long r0 = 0; r0 < rows; r0 += br) {
            long nr = rows - r0 < br ? rows - r0 : br, nt = nr * tw;
#pragma omp for schedule(static) collapse(2)
            for (long ci = 0; ci < c; ++ci) {
                for (long r = 0; r < nr; ++r) {
                    long b = (r0 + r) / th, ty = (r0 + r) % th;
                    mc_wino_input(v + ci * tb + r * tw, c * tb, x + (b * c + ci) * h * wd,
                                  h, wd, 4 * ty - ph, -pw, tw);
                }
            }
#pragma omp for schedule(static)
            for (int xi = 0; xi < 36; ++xi)
                mc_gemm_one(0, 0, f, nt, c, u + xi * f * c, c, v + xi * c * tb, tb, 0,
                            m + xi * f * tb, tb);
#pragma omp for schedule(static) collapse(2)
            for (long fo = 0; fo < f; ++fo) {
                for (long r = 0; r < nr; ++r) {
                    long b = (r0 + r) / th, ty = (r0 + r) % th;
                    mc_wino_output(y + (b * f + fo) * oh * ow, oh, ow, 4 * ty,
                                   m + fo * tb + r * tw, f * tb, tw);
                }
            }
        }
    }
}

/* The input gradient of one image: columns of w^T g, added back into the image. */
static void mc_conv_image_vjp_x(real *gx, const real *g, const real *w, const long *d,
                                real *col, long b, int accumulate_x) {
    long c = d[1], h = d[2], wd = d[3], f = d[4], kh = d[5], kw = d[6];
    long oh = d[7], ow = d[8], groups = d[15];
    long cg = c / groups, fg = f / groups, k = cg * kh * kw, p = oh * ow;
    int pointwise = mc_conv_is_pointwise(d);
    for (long grp = 0; grp < groups; ++grp) {
        const real *gout = g + (b * f + grp * fg) * p;
        const real *wg = w + grp * fg * k;
        real *target = gx + (b * c + grp * cg) * h * wd;
        if (pointwise) {
            mc_gemm(1, 0, k, p, fg, wg, k, gout, p, accumulate_x ? 1 : 0, target, p);
            continue;
        }
        mc_gemm(1, 0, k, p, fg, wg, k, gout, p, 0, col, p);
        mc_col2im(target, col, p, cg, h, wd, kh, kw, oh, ow, d[9], d[10], d[11], d[12],
                  d[13], d[14]);
    }
}

MC_DISPATCH void mc_conv2d_vjp(real *gx, real *gw, const real *g, const real *x,
                               const real *w, const long *d, real *col,
                               int accumulate_x, int accumulate_w, int cols_kept) {
    if (d[17] > 0) {
        mc_conv2d_vjp_chunked(gx, gw, g, x, w, d, col, accumulate_x, accumulate_w,
                              cols_kept);
        return;
    }
    long n = d[0], c = d[1], h = d[2], wd = d[3], f = d[4], kh = d[5], kw = d[6];
    long oh = d[7], ow = d[8], groups = d[15];
    long cg = c / groups, fg = f / groups, k = cg * kh * kw, p = oh * ow;
    int pointwise = mc_conv_is_pointwise(d);
    if (gw) {
        /* Images add into one weight gradient, in order: the products are split. */
        for (long b = 0; b < n; ++b) {
            for (long grp = 0; grp < groups; ++grp) {
                const real *image = x + (b * c + grp * cg) * h * wd;
                const real *cols = image;
                if (!pointwise) {
                    mc_im2col(col, p, image, cg, h, wd, kh, kw, oh, ow, d[9], d[10],
                              d[11], d[12], d[13], d[14]);
                    cols = col;
                }
                real beta = (b > 0 || accumulate_w) ? 1 : 0;
                mc_gemm(0, 1, fg, k, p, g + (b * f + grp * fg) * p, p, cols, p, beta,
                        gw + grp * fg * k, k);
            }
        }
    }
    if (!gx) return;
    if (!accumulate_x && !pointwise) mc_fill(gx, n * c * h * wd, 0);
    long size = mc_conv_cols(d);
    int t = mc_conv_image_team(d);
    if (t <= 1) {
        for (long b = 0; b < n; ++b) mc_conv_image_vjp_x(gx, g, w, d, col, b, accumulate_x);
        return;
    }
#pragma omp parallel num_threads(t)
    {
        real *own = col + (long)omp_get_thread_num() * size;
#pragma omp for schedule(static)
        for (long b = 0; b < n; ++b) mc_conv_image_vjp_x(gx, g, w, d, own, b, accumulate_x);
    }
}

/* -- pooling ------------------------------------------------------------------------ */

/* d: planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw. One output row of a plane:
 * the window's rows (i) and columns (j) in row-major order, each a pass over the
 * outputs whose element lies inside the plane (padding never wins), so the inner loop
 * vectorises. A later element wins only if greater, or if it is NaN and the best so
 * far is not: the first maximum, NaN first. at (may be NULL) gets its index in the
 * plane, -1 where the whole window is padding (its output is -inf). */
static inline void mc_max_pool_row(real *out, int32_t *at, const real *plane,
                                   const long *d, long oy) {
    long h = d[1], w = d[2], ow = d[4], kh = d[5], kw = d[6], sw = d[8];
    for (long ox = 0; ox < ow; ++ox) out[ox] = -INFINITY;
    if (at)
        for (long ox = 0; ox < ow; ++ox) at[ox] = -1;
    for (long i = 0; i < kh; ++i) {
        long y = oy * d[7] - d[9] + i * d[11];
        if (y < 0 || y >= h) continue;
        const real *row = plane + y * w;
        for (long j = 0; j < kw; ++j) {
            long x0 = j * d[12] - d[10], lo, hi;
            mc_inside(x0, w, sw, ow, &lo, &hi);
            const real *src = row + x0;
            if (!at) {
#pragma omp simd
                for (long ox = lo; ox < hi; ++ox) {
                    real v = src[ox * sw], top = out[ox];
                    out[ox] = (v > top || (v != v && top == top)) ? v : top;
                }
                continue;
            }
            int32_t base = (int32_t)(y * w + x0);
            for (long ox = lo; ox < hi; ++ox) {
                real v = src[ox * sw], top = out[ox];
                int take = at[ox] < 0 || v > top || (v != v && top == top);
                out[ox] = take ? v : top;
                at[ox] = take ? base + (int32_t)(ox * sw) : at[ox];
            }
        }
    }
}

/* ``at`` (may be NULL): each output's index of its maximum in its plane (what the
 * VJP reads; a training forward keeps it). */
MC_DISPATCH void mc_max_pool2d(real *y, const real *x, const long *d, int32_t *at) {
    long planes = d[0], h = d[1], w = d[2], oh = d[3], ow = d[4];
    int t = mc_team(planes * oh * ow * d[5] * d[6]);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p)
        for (long oy = 0; oy < oh; ++oy) {
            long o = (p * oh + oy) * ow;
            mc_max_pool_row(y + o, at ? at + o : NULL, x + p * h * w, d, oy);
        }
}

MC_DISPATCH void mc_max_pool2d_vjp(real *gx, const real *g, const int32_t *at,
                                   const long *d, int accumulate) {
    long planes = d[0], h = d[1], w = d[2], oh = d[3], ow = d[4];
    int t = mc_team(planes * (h * w + oh * ow));
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p) {
        real *plane = gx + p * h * w;
        if (!accumulate)
            for (long i = 0; i < h * w; ++i) plane[i] = 0;
        for (long o = p * oh * ow; o < (p + 1) * oh * ow; ++o)
            if (at[o] >= 0) plane[at[o]] += g[o];
    }
}

MC_DISPATCH void mc_avg_pool2d(real *y, const real *x, const long *d) {
    long planes = d[0], h = d[1], w = d[2], oh = d[3], ow = d[4], kh = d[5], kw = d[6];
    real scale = (real)1 / (real)(kh * kw);
    int t = mc_team(planes * oh * ow * kh * kw);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p) {
        const real *plane = x + p * h * w;
        for (long oy = 0; oy < oh; ++oy) {
            for (long ox = 0; ox < ow; ++ox) {
                real total = 0;
                for (long i = 0; i < kh; ++i) {
                    long yy = oy * d[7] - d[9] + i;
                    if (yy < 0 || yy >= h) continue;
                    for (long j = 0; j < kw; ++j) {
                        long xx = ox * d[8] - d[10] + j;
                        if (xx >= 0 && xx < w) total += plane[yy * w + xx];
                    }
                }
                y[(p * oh + oy) * ow + ox] = total * scale;
            }
        }
    }
}

MC_DISPATCH void mc_avg_pool2d_vjp(real *gx, const real *g, const long *d,
                                   int accumulate) {
    long planes = d[0], h = d[1], w = d[2], oh = d[3], ow = d[4], kh = d[5], kw = d[6];
    real scale = (real)1 / (real)(kh * kw);
    if (!accumulate) mc_fill(gx, planes * h * w, 0);
    int t = mc_team(planes * oh * ow * kh * kw);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p) {
        real *plane = gx + p * h * w;
        for (long oy = 0; oy < oh; ++oy) {
            for (long ox = 0; ox < ow; ++ox) {
                real share = g[(p * oh + oy) * ow + ox] * scale;
                for (long i = 0; i < kh; ++i) {
                    long yy = oy * d[7] - d[9] + i;
                    if (yy < 0 || yy >= h) continue;
                    for (long j = 0; j < kw; ++j) {
                        long xx = ox * d[8] - d[10] + j;
                        if (xx >= 0 && xx < w) plane[yy * w + xx] += share;
                    }
                }
            }
        }
    }
}

/* PyTorch's cells: [i * n / out, ceil((i + 1) * n / out)). */
static long mc_cell_start(long i, long n, long out) { return i * n / out; }
static long mc_cell_end(long i, long n, long out) { return ((i + 1) * n + out - 1) / out; }

MC_DISPATCH void mc_adaptive_avg_pool2d(real *y, const real *x, long planes, long h,
                                        long w, long oh, long ow) {
    int t = mc_team(planes * h * w);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p) {
        const real *plane = x + p * h * w;
        for (long oy = 0; oy < oh; ++oy) {
            long y0 = mc_cell_start(oy, h, oh), y1 = mc_cell_end(oy, h, oh);
            for (long ox = 0; ox < ow; ++ox) {
                long x0 = mc_cell_start(ox, w, ow), x1 = mc_cell_end(ox, w, ow);
                real total = 0;
                for (long i = y0; i < y1; ++i)
                    for (long j = x0; j < x1; ++j) total += plane[i * w + j];
                y[(p * oh + oy) * ow + ox] = total / (real)((y1 - y0) * (x1 - x0));
            }
        }
    }
}

MC_DISPATCH void mc_adaptive_avg_pool2d_vjp(real *gx, const real *g, long planes, long h,
                                            long w, long oh, long ow, int accumulate) {
    if (!accumulate) mc_fill(gx, planes * h * w, 0);
    int t = mc_team(planes * h * w);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static)
    for (long p = 0; p < planes; ++p) {
        real *plane = gx + p * h * w;
        for (long oy = 0; oy < oh; ++oy) {
            long y0 = mc_cell_start(oy, h, oh), y1 = mc_cell_end(oy, h, oh);
            for (long ox = 0; ox < ow; ++ox) {
                long x0 = mc_cell_start(ox, w, ow), x1 = mc_cell_end(ox, w, ow);
                real share = g[(p * oh + oy) * ow + ox] / (real)((y1 - y0) * (x1 - x0));
                for (long i = y0; i < y1; ++i)
                    for (long j = x0; j < x1; ++j) plane[i * w + j] += share;
            }
        }
    }
}

/* -- embedding ---------------------------------------------------------------------- */

static long mc_load_index(const void *index, int size, long i) {
    switch (size) {
    case 1: return (long)((const uint8_t *)index)[i];
    case 2: return (long)((const int16_t *)index)[i];
    case 4: return (long)((const int32_t *)index)[i];
    default: return (long)((const int64_t *)index)[i];
    }
}

/* The row of index i, or -1 when it is out of range (negative too, as in PyTorch). */
static long mc_row(const void *index, int size, long i, long rows) {
    long r = mc_load_index(index, size, i);
    return (r < 0 || r >= rows) ? -1 : r;
}

int mc_embedding(real *y, const void *index, int index_size, const real *w, long count,
                 long rows, long dim) {
    int bad = 0;
    int t = mc_team(count * dim / 4);
#pragma omp parallel for if (t > 1) num_threads(t) schedule(static) reduction(| : bad)
    for (long i = 0; i < count; ++i) {
        long r = mc_row(index, index_size, i, rows);
        if (r < 0) {
            bad = 1;
            continue;
        }
        memcpy(y + i * dim, w + r * dim, (size_t)dim * sizeof(real));
    }
    return bad;
}

int mc_embedding_vjp(real *gw, const real *g, const void *index, int index_size,
                     long count, long rows, long dim, int accumulate) {
    if (!accumulate) mc_fill(gw, rows * dim, 0);
    for (long i = 0; i < count; ++i) {
        long r = mc_row(index, index_size, i, rows);
        if (r < 0) return 1;
        for (long k = 0; k < dim; ++k) gw[r * dim + k] += g[i * dim + k];
    }
    return 0;
}

/* -- padding ------------------------------------------------------------------------ */

/* Source index along one axis of size n for padded position i (-1: the constant). */
static long mc_pad_source(long i, long n, int mode) {
    if (i >= 0 && i < n) return i;
    if (mode == 0) return -1;
    if (mode == 2) return i < 0 ? 0 : n - 1;
    long period = 2 * (n - 1);
    if (period == 0) return 0;
    long j = (i < 0 ? -i : i) % period;
    return j >= n ? period - j : j;
}

/* Calls ROW(source offset or -1, output offset) for each output element. */
#define MC_PAD_WALK(ROW)                                                      \
    do {                                                                      \
        long index[32] = {0};                                                 \
        long total = 1;                                                       \
        for (int d = 0; d < ndim; ++d) total *= out_shape[d];                 \
        for (long o = 0; o < total; ++o) {                                    \
            long src = 0;                                                     \
            for (int d = 0; d < ndim; ++d) {                                  \
                long s = mc_pad_source(index[d] - before[d], in_shape[d], mode); \
                if (s < 0) { src = -1; break; }                               \
                src = src * in_shape[d] + s;                                  \
            }                                                                 \
            ROW;                                                              \
            for (int d = ndim - 1; d >= 0; --d) {                             \
                if (++index[d] < out_shape[d]) break;                         \
                index[d] = 0;                                                 \
            }                                                                 \
        }                                                                     \
    } while (0)

MC_DISPATCH void mc_pad(real *y, const real *x, int ndim, const long *in_shape,
                        const long *out_shape, const long *before, int mode, real value) {
    MC_PAD_WALK(y[o] = src < 0 ? value : x[src]);
}

MC_DISPATCH void mc_pad_vjp(real *gx, const real *g, int ndim, const long *in_shape,
                            const long *out_shape, const long *before, int mode,
                            int accumulate) {
    if (!accumulate) {
        long n = 1;
        for (int d = 0; d < ndim; ++d) n *= in_shape[d];
        mc_fill(gx, n, 0);
    }
    MC_PAD_WALK(if (src >= 0) gx[src] += g[o]);
}

/* -- scaled dot product attention --------------------------------------------------- */

MC_DISPATCH void mc_sdp(real *o, real *p, const real *q, const real *k, const real *v,
                        const void *mask, int mask_kind, long mask_rs, long mask_cs,
                        long lq, long lk, long e, long ev, real scale, int causal) {
    mc_gemm(0, 1, lq, lk, e, q, e, k, e, 0, p, lk);
    for (long i = 0; i < lq; ++i) {
        real *row = p + i * lk;
        real top = -INFINITY;
        for (long j = 0; j < lk; ++j) {
            real s = row[j] * scale;
            if (causal && j > i) s = -INFINITY;
            if (mask_kind == 1 && !((const unsigned char *)mask)[i * mask_rs + j * mask_cs])
                s = -INFINITY;
            else if (mask_kind == 2)
                s += ((const real *)mask)[i * mask_rs + j * mask_cs];
            row[j] = s;
            top = s > top ? s : top;
        }
        if (top == -INFINITY) { /* every key masked: zeros, as PyTorch */
            for (long j = 0; j < lk; ++j) row[j] = 0;
            continue;
        }
        real total = 0;
        for (long j = 0; j < lk; ++j) {
            real ex = MC_EXP(row[j] - top);
            row[j] = ex;
            total += ex;
        }
        for (long j = 0; j < lk; ++j) row[j] /= total;
    }
    mc_gemm(0, 0, lq, ev, lk, p, lk, v, ev, 0, o, ev);
}

MC_DISPATCH void mc_sdp_vjp(real *gq, real *gk, real *gv, real *gmask, const real *g,
                            const real *p, const real *q, const real *k, const real *v,
                            real *dp, long mask_rs, long mask_cs, long lq, long lk,
                            long e, long ev, real scale, int accumulate_q,
                            int accumulate_k, int accumulate_v) {
    /* In the order q, k, v: when they are one tensor, the first gradient assigns and
     * the later ones add (the code generator hands out the flags in this order). */
    if (gq || gk || gmask) {
        mc_gemm(0, 1, lq, lk, ev, g, ev, v, ev, 0, dp, lk);
        for (long i = 0; i < lq; ++i) {
            const real *pr = p + i * lk;
            real *dr = dp + i * lk;
            real dot = 0;
            for (long j = 0; j < lk; ++j) dot += dr[j] * pr[j];
            for (long j = 0; j < lk; ++j) {
                real ds = pr[j] * (dr[j] - dot);
                if (gmask) gmask[i * mask_rs + j * mask_cs] += ds;
                dr[j] = ds * scale;
            }
        }
        if (gq) mc_gemm(0, 0, lq, e, lk, dp, lk, k, e, accumulate_q ? 1 : 0, gq, e);
        if (gk) mc_gemm(1, 0, lk, e, lq, dp, lk, q, e, accumulate_k ? 1 : 0, gk, e);
    }
    if (gv) mc_gemm(1, 0, lk, ev, lq, p, lk, g, ev, accumulate_v ? 1 : 0, gv, ev);
}

/* -- dropout ------------------------------------------------------------------------ */

/* splitmix64: a small, fast generator with a 64-bit state. */
static uint64_t mc_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void mc_dropout(real *y, const real *x, long n, real p, uint64_t *state, uint64_t seed) {
    if (*state == 0) *state = seed;
    for (long i = 0; i < n; ++i) {
        double u = (double)(mc_next(state) >> 11) * (1.0 / 9007199254740992.0);
        y[i] = u >= (double)p ? x[i] / (1 - p) : 0;
    }
}

MC_DISPATCH void mc_dropout_vjp(real *gx, const real *g, const real *y, const real *x,
                                long n, real p, int accumulate) {
    for (long i = 0; i < n; ++i) {
        real value = (y[i] != 0 || x[i] == 0) ? g[i] / (1 - p) : 0;
        gx[i] = accumulate ? gx[i] + value : value;
    }
}
