/* Exact ranks of each row's relevant gallery items in one pass over the row (sketchquant, docs/method.md §C).
 *
 * The order is (key ascending, column ascending). For a row with R relevant items sorted in that order
 * (r_0 … r_{R-1}), every item i gets p(i) = the number of relevant items strictly before it; then
 * rank(r_j) = #{i : p(i) <= j} (1-based): the relevant item itself and everything before it.
 * p(i) comes from 16·R buckets over [r_0, r_{R-1}] (a monotone map key -> bucket, the same arithmetic
 * for every key): an item in a bucket without relevant items is only counted there (p = the relevant
 * items of the lower buckets, from one prefix sum); an item sharing a bucket with relevant items is
 * compared with them exactly under (key, column). About 2.1-2.4 ns per item on one core: a radix sort
 * of the relevant keys, one vectorised bucket pass, one branch-free counting pass that also lists the
 * items of flagged buckets (about 12 % of them), then the exact comparisons of those items, branch-free
 * when the bucket holds one relevant item (a data-dependent branch per item cost more than the rest
 * together).
 * sq_rank_metrics then turns a row's ranks into its AP / P@k values, summing in rank order as the torch
 * path does. Plain C, no Python API: loaded with ctypes, the GIL released while it runs
 * (sketchquant/core/retrieval/native.py compiles it on first use).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef SQ_BUCKETS_PER_RELEVANT
/* 32 (fewer items to compare, a histogram twice the size) was 2-5 % slower */
#define SQ_BUCKETS_PER_RELEVANT 16
#endif

/* float -> uint32 with the same order (-0.0 and +0.0 equal: the caller adds +0.0f first) */
static inline uint32_t mono_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* the monotone key -> bucket map, in float and in double: items and relevant keys go through the same one */
static inline int32_t bucket_f(float x, float lo, float scale, float top) {
    float t = (x - lo) * scale + 1.0f;
    t = t < 0.0f ? 0.0f : t;
    t = t > top ? top : t;
    return (int32_t)t;
}

static inline int32_t bucket_d(float x, double lo, double scale, double top) {
    double t = ((double)x - lo) * scale + 1.0;
    t = t < 0.0 ? 0.0 : t;
    t = t > top ? top : t;
    return (int32_t)t;
}

/* the key of item i: offset[i] - raw[i] (the product the caller left unfinished: one pass over the
 * keys fewer), or raw[i] itself without an offset */
static inline float key_of(const float *raw, const float *offset, int64_t i) {
    return offset ? offset[i] - raw[i] : raw[i];
}

/* whether relevant item p (key rkey[p], column rcol[p]) comes before item i of key x: the order
 * (key, column), branch-free */
static inline int before(const float *rkey, const int64_t *rcol, int32_t p, float x, int64_t i) {
    return (rkey[p] < x) | ((rkey[p] == x) & (rcol[p] < i));
}

/* Stable LSD radix sort of n uint64 by their bits from `from` up (11 bits a pass; passes whose digit is
 * the same everywhere are skipped); tmp holds n more. The sorted values end in a. */
static void radix_sort_u64(uint64_t *a, uint64_t *tmp, int64_t n, int from) {
    uint64_t *src = a, *dst = tmp;
    int64_t count[2049];
    for (int shift = from; shift < 64; shift += 11) {
        memset(count, 0, sizeof count);
        for (int64_t i = 0; i < n; i++) count[((src[i] >> shift) & 0x7FF) + 1]++;
        if (count[((src[0] >> shift) & 0x7FF) + 1] == n) continue;
        for (int d = 0; d < 2048; d++) count[d + 1] += count[d];
        for (int64_t i = 0; i < n; i++) dst[count[(src[i] >> shift) & 0x7FF]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a) memcpy(a, src, sizeof(uint64_t) * (size_t)n);
}

/* keys: m rows of n float32 (row stride ld); with an offset (n float32, else NULL) the key of item i of
 * a row is offset[i] - keys[row * ld + i], the same float as torch.sub gives. cols: m rows of L int64
 * (the first n_rel[row] used, each in 0 .. n - 1, n < 2^32); ranks: m rows of L int64, ascending,
 * padded with n + 1. Returns 0, -1 when out of memory, or -2 when a used column lies outside 0 .. n - 1
 * (checked before anything is read there). */
int sq_relevant_ranks(const float *keys, const float *offset, int64_t m, int64_t n, int64_t ld,
                      const int64_t *cols, const int64_t *n_rel, int64_t L, int64_t *ranks) {
    const int64_t nb_cap = 4 * n + 8; /* more buckets than items buy nothing */
    const int64_t nb_max = (SQ_BUCKETS_PER_RELEVANT * L < nb_cap ? SQ_BUCKETS_PER_RELEVANT * L : nb_cap) + 8;
    uint64_t *packed = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(2 * L + 2));
    float *rkey = (float *)malloc(sizeof(float) * (size_t)(L > 0 ? L : 1));
    int64_t *rcol = (int64_t *)malloc(sizeof(int64_t) * (size_t)(L > 0 ? L : 1));
    int64_t *hist = (int64_t *)malloc(sizeof(int64_t) * (size_t)(L + 1));
    int32_t *bucket = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    int32_t *cand = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    int32_t *hist_b = (int32_t *)malloc(sizeof(int32_t) * (size_t)(nb_max + 3));
    int32_t *rbucket = (int32_t *)malloc(sizeof(int32_t) * (size_t)(L + 1));
    int32_t *stop = (int32_t *)malloc(sizeof(int32_t) * (size_t)(nb_max + 3));
    int status = packed && rkey && rcol && hist && bucket && cand && hist_b && rbucket && stop ? 0 : -1;
    for (int64_t row = 0; status == 0 && row < m; row++) {
        const float *k = keys + row * ld;
        const int64_t *c = cols + row * L;
        int64_t *out = ranks + row * L;
        int64_t R = n_rel[row];
        if (R > L) R = L;
        for (int64_t j = R; j < L; j++) out[j] = n + 1;
        if (R <= 0) continue;
        int in_range = 1;
        for (int64_t j = 0; j < R; j++) in_range &= (uint64_t)c[j] < (uint64_t)n;
        if (!in_range) {
            status = -2;
            break;
        }
        /* the relevant items in (key, column) order */
        for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(k + i);
        int ascending = 1;
        for (int64_t j = 0; j < R; j++) {
            const uint64_t bits = mono_bits(key_of(k, offset, c[j]) + 0.0f);
            packed[j] = (bits << 32) | (uint64_t)(uint32_t)c[j];
            ascending &= j == 0 || c[j] > c[j - 1];
        }
        /* stable: columns already ascending need only the key's 32 bits sorted */
        radix_sort_u64(packed, packed + L + 1, R, ascending ? 32 : 0);
        for (int64_t j = 0; j < R; j++) {
            rcol[j] = (int64_t)(packed[j] & 0xFFFFFFFFu);
            rkey[j] = key_of(k, offset, rcol[j]) + 0.0f;
        }
        /* a monotone map key -> bucket 0 .. nb + 1: below the relevant range, nb buckets over it, above.
         * Every step (subtract, multiply, add, clamp, truncate) is monotone, so a lower bucket never
         * holds a farther item, whatever the rounding. float when the scale fits, double otherwise
         * (a relevant range too narrow or too wide for float). */
        const float lo = rkey[0], hi = rkey[R - 1];
        const int64_t nb = SQ_BUCKETS_PER_RELEVANT * R < nb_cap ? SQ_BUCKETS_PER_RELEVANT * R : nb_cap;
        const double dscale = hi > lo ? (double)(nb - 1) / ((double)hi - (double)lo) : 1.0;
        const int use_float = dscale < 1.0e30 && dscale > 1.0e-30;
        if (use_float) {
            const float fs = (float)dscale, ftop = (float)(nb + 1);
            if (offset) { /* vectorised */
                for (int64_t i = 0; i < n; i++) bucket[i] = bucket_f(offset[i] - k[i], lo, fs, ftop);
            } else {
                for (int64_t i = 0; i < n; i++) bucket[i] = bucket_f(k[i], lo, fs, ftop);
            }
            for (int64_t j = 0; j < R; j++) rbucket[j] = bucket_f(rkey[j], lo, fs, ftop);
        } else {
            const double dlo = (double)lo, dtop = (double)(nb + 1);
            for (int64_t i = 0; i < n; i++) bucket[i] = bucket_d(key_of(k, offset, i), dlo, dscale, dtop);
            for (int64_t j = 0; j < R; j++) rbucket[j] = bucket_d(rkey[j], dlo, dscale, dtop);
        }
        /* per bucket, one int32: the count of its items, or -1 - (index of its first relevant item) for a
         * bucket that holds relevant items (their range ends at stop[b]) */
        memset(hist_b, 0, sizeof(int32_t) * (size_t)(nb + 2));
        for (int64_t j = R - 1; j >= 0; j--) {
            const int32_t rb = rbucket[j];
            if (hist_b[rb] == 0) stop[rb] = (int32_t)(j + 1);
            hist_b[rb] = (int32_t)(-1 - j);
        }
        /* p(i) = #relevant items strictly before item i; rank of the q-th relevant = #{i : p(i) <= q}.
         * An item in a bucket without relevant items has p = #relevant items in lower buckets: it is
         * only counted per bucket. Items sharing a bucket with relevant items are compared exactly under
         * (key, column). */
        memset(hist, 0, sizeof(int64_t) * (size_t)(R + 1));
        int64_t nc = 0;
        for (int64_t i = 0; i < n; i++) { /* branchless: count, or note the item as a candidate */
            const int32_t b = bucket[i];
            const int32_t v = hist_b[b];
            cand[nc] = (int32_t)i;
            nc += v < 0;
            hist_b[b] = v + (v >= 0);
        }
        for (int64_t t = 0; t < nc; t++) {
            const int64_t i = cand[t];
            const int32_t b = bucket[i];
            const float x = key_of(k, offset, i) + 0.0f;
            int32_t p = -1 - hist_b[b];
            const int32_t end = stop[b];
            if (end - p == 1) { /* one relevant item in the bucket (the usual case): no branch */
                p += before(rkey, rcol, p, x, i);
            } else {
                while (p < end && before(rkey, rcol, p, x, i)) p++;
            }
            hist[p]++;
        }
        for (int64_t j = 0; j < R; j++) hist_b[rbucket[j]] = 0; /* flagged buckets count nothing here */
        { /* prefix counts C(b) in place; the items with p = j sit in buckets rbucket[j-1] < b <= rbucket[j] */
            int64_t acc = 0;
            for (int64_t q = 0; q < nb + 2; q++) {
                acc += hist_b[q];
                hist_b[q] = (int32_t)acc;
            }
            int64_t prev = 0;
            for (int64_t j = 0; j < R; j++) {
                const int64_t cur = hist_b[rbucket[j]];
                hist[j] += cur - prev;
                prev = cur;
            }
            hist[R] += acc - prev;
        }
        int64_t cum = 0;
        for (int64_t q = 0; q < R; q++) {
            cum += hist[q];
            out[q] = cum;
        }
    }
    free(packed);
    free(rkey);
    free(rcol);
    free(hist);
    free(stop);
    free(bucket);
    free(cand);
    free(hist_b);
    free(rbucket);
    return status;
}

/* Per-query metric values from the ranks above (m rows of L, ascending, padded beyond n_rel[row] with
 * a rank past every cut-off). For each of the nk cut-offs kk[t] (1 .. N) the value of kind[t]:
 *   0  SAKE's VOC AP: precision j / r_j made monotone from the end, summed, / max(1, min(#relevant, kk))
 *   1  the standard AP: j / r_j summed, the same denominator
 *   2  DeepHash's AP: j / r_j summed over the h relevant items in the top kk, / h (0 when h = 0)
 *   3  P@kk: h / kk
 * The sums run in rank order, each term rounded alone, as torch.cumsum does on the CPU: the torch path
 * (engine.per_query_metrics) gives the same bits. out: m rows of nk. Returns 0, or -1 when out of memory. */
int sq_rank_metrics(const int64_t *ranks, int64_t m, int64_t L, const int64_t *n_rel, int64_t nk,
                    const int64_t *kk, const int32_t *kind, double *out) {
    double *interp = (double *)malloc(sizeof(double) * (size_t)(L > 0 ? L : 1));
    if (!interp) return -1;
    for (int64_t row = 0; row < m; row++) {
        const int64_t *r = ranks + row * L;
        double *o = out + row * nk;
        for (int64_t t = 0; t < nk; t++) {
            const int64_t k = kk[t], cols = k < L ? k : L;
            int64_t h = 0;
            while (h < cols && r[h] <= k) h++; /* the ranks ascend: those in the top k are a prefix */
            double acc = 0.0;
            if (kind[t] == 0) {
                double run = 0.0;
                for (int64_t j = h - 1; j >= 0; j--) {
                    const double v = (double)(j + 1) / (double)r[j];
                    run = v > run ? v : run;
                    interp[j] = run;
                }
                for (int64_t j = 0; j < h; j++) acc += interp[j];
            } else if (kind[t] != 3) {
                for (int64_t j = 0; j < h; j++) acc += (double)(j + 1) / (double)r[j];
            }
            if (kind[t] == 3) {
                o[t] = (double)h / (double)k;
            } else if (kind[t] == 2) {
                o[t] = h > 0 ? acc / (double)h : 0.0;
            } else {
                double d = (double)n_rel[row] < (double)k ? (double)n_rel[row] : (double)k;
                o[t] = acc / (d < 1.0 ? 1.0 : d);
            }
        }
    }
    free(interp);
    return 0;
}
