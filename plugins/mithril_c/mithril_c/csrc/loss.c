/* Losses: cross entropy (class indices or probabilities) and binary cross entropy.
 * Unreduced, as the primitives; the class axis is the middle one of
 * [outer, n, inner]. */
#include "mithril_c.h"

static long mc_class(const void *target, int size, long i, long n) {
    long t;
    switch (size) {
    case 1: t = (long)((const uint8_t *)target)[i]; break;
    case 2: t = (long)((const int16_t *)target)[i]; break;
    case 4: t = (long)((const int32_t *)target)[i]; break;
    default: t = (long)((const int64_t *)target)[i]; break;
    }
    /* A negative class is out of range, as in PyTorch (NumPy's take would wrap it). */
    return (t < 0 || t >= n) ? -1 : t;
}

/* log(sum(exp(row))) of a strided row. */
static real mc_logsumexp(const real *row, long n, long inner) {
    real top = row[0];
    for (long i = 1; i < n; ++i) top = row[i * inner] > top ? row[i * inner] : top;
    if (top == -INFINITY || top == INFINITY) return top;
    real total = 0;
    for (long i = 0; i < n; ++i) total += MC_EXP(row[i * inner] - top);
    return top + MC_LOG(total);
}

/* log q_i of a row, for input_type 0 logits (lse given), 1 probs, 2 log_probs. */
static real mc_log_q(real x, real lse, int input_type) {
    if (input_type == 0) return x - lse;
    if (input_type == 1) return MC_LOG(x);
    return x;
}

int mc_cross_entropy(real *y, const real *x, const void *target, int target_size,
                     long outer, long n, long inner, int input_type) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            const real *row = x + o * n * inner + j;
            long t = mc_class(target, target_size, o * inner + j, n);
            if (t < 0) return 1;
            real lse = input_type == 0 ? mc_logsumexp(row, n, inner) : 0;
            y[o * inner + j] = -mc_log_q(row[t * inner], lse, input_type);
        }
    }
    return 0;
}

int mc_cross_entropy_vjp(real *gx, const real *g, const real *x, const void *target,
                         int target_size, long outer, long n, long inner,
                         int input_type, int accumulate) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            long base = o * n * inner + j;
            const real *row = x + base;
            real gout = g[o * inner + j];
            long t = mc_class(target, target_size, o * inner + j, n);
            if (t < 0) return 1;
            real lse = input_type == 0 ? mc_logsumexp(row, n, inner) : 0;
            for (long i = 0; i < n; ++i) {
                real value;
                if (input_type == 0)
                    value = (MC_EXP(row[i * inner] - lse) - (i == t)) * gout;
                else if (i != t)
                    value = 0;
                else
                    value = input_type == 1 ? -gout / row[i * inner] : -gout;
                real *at = gx + base + i * inner;
                *at = accumulate ? *at + value : value;
            }
        }
    }
    return 0;
}

MC_DISPATCH void mc_cross_entropy_soft(real *y, const real *x, const real *t, long outer,
                                       long n, long inner, int input_type) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            long base = o * n * inner + j;
            real lse = input_type == 0 ? mc_logsumexp(x + base, n, inner) : 0;
            real total = 0;
            for (long i = 0; i < n; ++i)
                total += t[base + i * inner] * mc_log_q(x[base + i * inner], lse, input_type);
            y[o * inner + j] = -total;
        }
    }
}

MC_DISPATCH void mc_cross_entropy_soft_vjp(real *gx, real *gt, const real *g,
                                           const real *x, const real *t, long outer,
                                           long n, long inner, int input_type,
                                           int accumulate_x, int accumulate_t) {
    for (long o = 0; o < outer; ++o) {
        for (long j = 0; j < inner; ++j) {
            long base = o * n * inner + j;
            real gout = g[o * inner + j];
            real lse = input_type == 0 ? mc_logsumexp(x + base, n, inner) : 0;
            real mass = 0;
            if (gx && input_type == 0)
                for (long i = 0; i < n; ++i) mass += t[base + i * inner];
            for (long i = 0; i < n; ++i) {
                long at = base + i * inner;
                if (gx) {
                    real value;
                    if (input_type == 0)
                        value = (MC_EXP(x[at] - lse) * mass - t[at]) * gout;
                    else if (input_type == 1)
                        value = -t[at] / x[at] * gout;
                    else
                        value = -t[at] * gout;
                    gx[at] = accumulate_x ? gx[at] + value : value;
                }
                if (gt) {
                    real value = -mc_log_q(x[at], lse, input_type) * gout;
                    gt[at] = accumulate_t ? gt[at] + value : value;
                }
            }
        }
    }
}

static real mc_clamped_log(real x) {
    real l = MC_LOG(x);
    return l > (real)-100 ? l : (real)-100;
}

MC_DISPATCH void mc_binary_cross_entropy(real *y, const real *x, const real *t, long n,
                                         int logits) {
    for (long i = 0; i < n; ++i) {
        if (logits)
            y[i] = (x[i] > 0 ? x[i] : 0) - x[i] * t[i] + MC_LOG1P(MC_EXP(-MC_FABS(x[i])));
        else
            y[i] = -(t[i] * mc_clamped_log(x[i]) + (1 - t[i]) * mc_clamped_log(1 - x[i]));
    }
}

MC_DISPATCH void mc_binary_cross_entropy_vjp(real *gx, real *gt, const real *g,
                                             const real *x, const real *t, long n,
                                             int logits, int accumulate_x,
                                             int accumulate_t) {
    for (long i = 0; i < n; ++i) {
        real a, b;
        if (logits) {
            a = g[i] * (mc_sigmoid(x[i]) - t[i]);
            b = -g[i] * x[i];
        } else {
            /* PyTorch's gradients: p * (1 - p) floored at its (float) epsilon, and
             * -logit(p) for the target, unclamped (infinite at p = 0 or 1). */
            real denom = x[i] * (1 - x[i]);
            denom = denom > (real)1e-12f ? denom : (real)1e-12f;
            a = g[i] * (x[i] - t[i]) / denom;
            b = g[i] * (MC_LOG1P(-x[i]) - MC_LOG(x[i]));
        }
        if (gx) gx[i] = accumulate_x ? gx[i] + a : a;
        if (gt) gt[i] = accumulate_t ? gt[i] + b : b;
    }
}
