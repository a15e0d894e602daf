/* mcdrop's fused MC-dropout kernel for dropout MLPs (see mcdrop/core/kernels.py for how it is built and called).

   mlp_rows computes sampled outputs of a dropout MLP
       h_0 = z,  a_l = (h_{l-1} * m_l / (1 - p_l)) W_l^T + b_l,  h_l = relu(a_l),  output a_L
   for "pairs" p0..p1 of a chunk of B rows: pair p is (sample sample0 + p / B, row p % B), its mask m_l the keyed
   SplitMix64 lanes of mcdrop.sampling.functional.keep_mask for the key of mcdrop.sampling.rng.stream_keys.

   It never multiplies a zero: every layer is a sum of rows of W_l^T over the units that are nonzero in its input,
       a_l = b_l + sum_{i : h_{l-1,i} m_{l,i} != 0} (h_{l-1,i} / (1 - p_l)) W_l^T[i, :],
   which after a ReLU and a dropout is a small share of the units (the density). The first layer's input z is
   dense, so with input dropout at rate p <= 1/2 it is computed by correction from base = z W_1^T (one product per
   row, shared by the samples):
       a_1 = (base - sum_{i dropped} z_i W_1^T[i, :]) / (1 - p) + b_1,
   and at p > 1/2 as the sum over the kept inputs.  Exact in arithmetic; float32 rounding differs from a matrix
   product's (README "Reproducibility").

   Speed: rows of W^T are summed in column tiles of NV vectors held in registers, tile by tile over a block of
   pairs so the tile stays in L2 across the block; the lists of surviving units are built with AVX-512 compress
   where available (a scalar, branch-free loop elsewhere). */

#include <stdint.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define GOLDEN 0x9E3779B97F4A7C15ULL

/* VW floats per vector register; NV accumulators per tile (independent FMA chains, within the register file). */
#if defined(__AVX512F__)
#define VW 16
#define NV 16
#elif defined(__AVX__)
#define VW 8
#define NV 12
#else
#define VW 4
#define NV 8
#endif
#define PREFETCH 2 /* rows ahead */

typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vecu __attribute__((vector_size(VW * 4), aligned(4)));

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* mcdrop.sampling.rng.stream_keys for one (row, sample): the call key (one, or one per row) mixed with the stream. */
static inline uint64_t pair_key(const int64_t *row_keys, uint64_t key, uint64_t stream, const int64_t *rows,
                                int64_t b, uint64_t sample) {
    uint64_t k = mix64((row_keys ? (uint64_t)row_keys[b] : key) ^ stream);
    return mix64(mix64((((uint64_t)rows[b]) << 32 | sample) ^ k));
}

static void fill_words(uint64_t key, int64_t n_words, uint64_t *restrict words) {
    for (int64_t w = 0; w < n_words; ++w) words[w] = mix64(key + (uint64_t)(w + 1) * GOLDEN);
}

/* A unit that is NaN, or +infinity (-infinity too without the ReLU), is always listed, kept or dropped: the
   generic path's relu(NaN) = NaN and NaN * 0 = inf * 0 = NaN carry it to the output, and so does the listing, so
   an overflowing input gives a non-finite output here too (the predictor's OutputOverflow), never finite logits. */
#define NONFINITE(v, relu) (!(((relu) ? (v) : __builtin_fabsf(v)) < __builtin_inff())) /* one unordered compare */

/* (idx, val) of the units f < n that survive: v = relu ? y*alpha + bias : -y, a candidate when v > 0 (relu) or
   v != 0, and its lane s (bits wide, little-endian in the words, signed) says keep (s >= t) when keep = 1, dropped
   (s < t) when keep = 0, with t = threshold - 2^(bits-1).  val = v * scale.  Returns the count. */
#define LIST_LOOP(LANE)                                                                                              \
    for (int64_t f = f0; f < n; ++f) {                                                                               \
        float v = relu ? y[f] * alpha + bias[f] : -y[f];                                                             \
        int32_t s = (LANE);                                                                                          \
        idx[c] = (int32_t)f;                                                                                         \
        val[c] = v * scale;                                                                                          \
        c += ((relu ? v > 0.0f : v != 0.0f) & ((s >= t) == keep)) | NONFINITE(v, relu);                             \
    }

static int32_t list_units(const float *restrict y, float alpha, const float *restrict bias, int relu,
                          const uint64_t *restrict words, int bits, int32_t threshold, int keep, float scale,
                          int64_t n, int32_t *restrict idx, float *restrict val) {
    int32_t c = 0;
    const int32_t t = threshold - (1 << (bits - 1));
    int64_t f0 = 0;
#if defined(__AVX512F__)
    if (bits == 16 || bits == 8) { /* 16 units at a time: compare, compress, store (c <= f0, so within n) */
        const __m512 va = _mm512_set1_ps(alpha), vs = _mm512_set1_ps(relu ? scale : -scale);
        const __m512 zero = _mm512_setzero_ps(), inf = _mm512_set1_ps(__builtin_inff());
        const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
        const __m512i vt = _mm512_set1_epi32(t), step = _mm512_set1_epi32(16);
        __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for (; f0 + 16 <= n; f0 += 16, iota = _mm512_add_epi32(iota, step)) {
            __m512 v = _mm512_loadu_ps(y + f0);
            if (relu) v = _mm512_fmadd_ps(v, va, _mm512_loadu_ps(bias + f0));
            __m512i s = bits == 16
                ? _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)((const int16_t *)words + f0)))
                : _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)words + f0)));
            __mmask16 m = relu ? _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ) : _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
            m &= keep ? _mm512_cmpge_epi32_mask(s, vt) : _mm512_cmplt_epi32_mask(s, vt);
            /* NONFINITE: not (v < inf), NaN included, on |v| without the ReLU (one compare) */
            m |= _mm512_cmp_ps_mask(relu ? v : _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), magnitude)),
                                    inf, _CMP_NLT_UQ);
            _mm512_storeu_ps(val + c, _mm512_maskz_compress_ps(m, _mm512_mul_ps(v, vs)));
            _mm512_storeu_si512(idx + c, _mm512_maskz_compress_epi32(m, iota));
            c += __builtin_popcount(m);
        }
    }
#endif
    if (bits == 16) {
        const int16_t *lanes = (const int16_t *)words;
        LIST_LOOP(lanes[f])
    } else if (bits == 8) {
        const int8_t *lanes = (const int8_t *)words;
        LIST_LOOP(lanes[f])
    } else {
        const int per = 64 / bits, half = 1 << (bits - 1);
        const uint64_t m = (1ULL << bits) - 1;
        LIST_LOOP(((int32_t)((words[f / per] >> (bits * (f % per))) & m) ^ half) - half)
    }
    return c;
}

/* y[q, :] = init[q] (or 0) + sum_k val[q, k] * wt[idx[q, k], :] for the nq pairs of a block. */
static void accumulate(int64_t nq, const float *const *init, const int32_t *idx, const float *val,
                       const int32_t *cnt, int64_t stride, const float *restrict wt, int64_t h, float *restrict y) {
    int64_t j0 = 0;
    for (; j0 + VW * NV <= h; j0 += VW * NV) {
        for (int64_t q = 0; q < nq; ++q) {
            vec a[NV];
#pragma GCC unroll 16
            for (int u = 0; u < NV; ++u) a[u] = init[q] ? *(const vecu *)(init[q] + j0 + VW * u) : (vec){0};
            const int32_t *ix = idx + q * stride;
            const float *vl = val + q * stride;
            const int32_t n = cnt[q];
            for (int32_t k = 0; k < n; ++k) {
                const float *r = wt + (int64_t)ix[k] * h + j0;
                if (k + PREFETCH < n) {
                    const float *next = wt + (int64_t)ix[k + PREFETCH] * h + j0;
#pragma GCC unroll 16
                    for (int u = 0; u < NV; u += 64 / (VW * 4) > 0 ? 64 / (VW * 4) : 1)
                        __builtin_prefetch(next + VW * u);
                }
                const float v = vl[k];
#pragma GCC unroll 16
                for (int u = 0; u < NV; ++u) a[u] += v * *(const vecu *)(r + VW * u);
            }
            float *o = y + q * h + j0;
#pragma GCC unroll 16
            for (int u = 0; u < NV; ++u) *(vecu *)(o + VW * u) = a[u];
        }
    }
    for (; j0 + VW <= h; j0 += VW) { /* narrower layers: one vector per tile */
        for (int64_t q = 0; q < nq; ++q) {
            vec a = init[q] ? *(const vecu *)(init[q] + j0) : (vec){0};
            const int32_t *ix = idx + q * stride;
            const float *vl = val + q * stride;
            for (int32_t k = 0; k < cnt[q]; ++k) a += vl[k] * *(const vecu *)(wt + (int64_t)ix[k] * h + j0);
            *(vecu *)(y + q * h + j0) = a;
        }
    }
    if (j0 < h) { /* the last h mod VW columns (the whole of a 10-class output layer without AVX-512) */
        for (int64_t q = 0; q < nq; ++q) {
            float *o = y + q * h;
            for (int64_t j = j0; j < h; ++j) o[j] = init[q] ? init[q][j] : 0.0f;
            const int32_t *ix = idx + q * stride;
            const float *vl = val + q * stride;
            for (int32_t k = 0; k < cnt[q]; ++k) {
                const float *r = wt + (int64_t)ix[k] * h;
                const float v = vl[k];
                for (int64_t j = j0; j < h; ++j) o[j] += v * r[j];
            }
        }
    }
}

/* Pairs p0..p1 of a chunk of `batch` rows through n_layers linear layers of widths dims[0..n_layers].
   wt[l]: W_{l+1}^T, (dims[l], dims[l+1]) row-major; bias[l]: (dims[l+1],).
   Dropout l (0: before the first layer, 1..n_layers-1: after hidden layer l) has stream word stream[l], lane width
   bits[l], threshold[l] and scale[l] = 1 / (1 - p_used); input_mode 0: no input dropout, 1: correction (drop list),
   2: kept list.  Keys: row_keys (batch,) or, when NULL, key for every row; rows (batch,) the rows' positions.
   z: (batch, dims[0]) standardised inputs; base: (batch, dims[1]) = z W_1^T (modes 0 and 1).
   out: (p1 - p0 pairs of the whole chunk, dims[n_layers]), written at rows p0..p1.
   Workspace (per thread): ybuf (block, max width), idx and val (block, stride), cnt (block), init (block pointers),
   words (max words of a mask).  nnz[l] += the surviving inputs of layer l over these pairs. */
static void mlp_rows(int64_t p0, int64_t p1, int64_t batch, int64_t n_layers, const int64_t *dims, const float *const *wt,
              const float *const *bias, const uint64_t *stream, const int32_t *bits, const int32_t *threshold,
              const float *scale, int32_t input_mode, const int64_t *row_keys, uint64_t key, const int64_t *rows,
              int64_t sample0, const float *z, const float *base, float *out, float *ybuf, int32_t *idx,
              float *val, int32_t *cnt, const float **init, uint64_t *words, int64_t block, int64_t stride,
              int64_t *nnz) {
    for (int64_t q0 = p0; q0 < p1; q0 += block) {
        const int64_t nq = q0 + block < p1 ? block : p1 - q0;
        const int64_t d = dims[0];
        int64_t total = 0;
        for (int64_t q = 0; q < nq; ++q) {
            const int64_t p = q0 + q, b = p % batch;
            init[q] = input_mode == 2 ? 0 : base + b * dims[1];
            cnt[q] = 0;
            if (input_mode) {
                fill_words(pair_key(row_keys, key, stream[0], rows, b, (uint64_t)(sample0 + p / batch)),
                           (d * bits[0] + 63) / 64, words);
                /* correction: the dropped inputs with -z; kept: the kept inputs with +z (relu=0 negates) */
                cnt[q] = list_units(z + b * d, 1.0f, 0, 0, words, bits[0], threshold[0], input_mode == 2,
                                    input_mode == 2 ? -1.0f : 1.0f, d, idx + q * stride, val + q * stride);
                total += cnt[q];
            }
        }
        nnz[0] += total;
        accumulate(nq, init, idx, val, cnt, stride, wt[0], dims[1], ybuf);
        float alpha = input_mode ? scale[0] : 1.0f;
        for (int64_t l = 1; l < n_layers; ++l) {
            const int64_t hin = dims[l];
            total = 0;
            for (int64_t q = 0; q < nq; ++q) {
                const int64_t p = q0 + q, b = p % batch;
                fill_words(pair_key(row_keys, key, stream[l], rows, b, (uint64_t)(sample0 + p / batch)),
                           (hin * bits[l] + 63) / 64, words);
                cnt[q] = list_units(ybuf + q * hin, alpha, bias[l - 1], 1, words, bits[l], threshold[l], 1, scale[l],
                                    hin, idx + q * stride, val + q * stride);
                total += cnt[q];
                init[q] = 0;
            }
            nnz[l] += total;
            accumulate(nq, init, idx, val, cnt, stride, wt[l], dims[l + 1],
                       l + 1 == n_layers ? out + q0 * dims[l + 1] : ybuf);
            alpha = 1.0f;
        }
        const int64_t h = dims[n_layers];
        const float *bl = bias[n_layers - 1];
        for (int64_t q = 0; q < nq; ++q)
            for (int64_t j = 0; j < h; ++j) out[(q0 + q) * h + j] += bl[j];
    }
}

/* 1 when built with OpenMP: mlp_sample then runs on the OpenMP threads that torch itself uses (the same libgomp
   is loaded once per process), so they are not left spinning while other threads do the work. */
int mcdrop_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* Part t of nt of mlp_sample's work: pairs [t * step, (t + 1) * step) with step = ceil(pairs / nt), workspace t;
   adds that part's counts to nnz (atomically when `atomic`). */
static void sample_part(int t, int nt, int atomic, int64_t pairs, int64_t batch, int64_t n_layers, const int64_t *dims,
                        const float *const *wt, const float *const *bias, const uint64_t *stream, const int32_t *bits,
                        const int32_t *threshold, const float *scale, int32_t input_mode, const int64_t *row_keys,
                        uint64_t key, const int64_t *rows, int64_t sample0, const float *z, const float *base, float *out,
                        float *ybuf, int32_t *idx, float *val, int32_t *cnt, const float **init, uint64_t *words,
                        int64_t block, int64_t stride, int64_t ybuf_stride, int64_t words_stride, int64_t *nnz) {
    const int64_t step = (pairs + nt - 1) / nt, p0 = t * step, p1 = p0 + step < pairs ? p0 + step : pairs;
    int64_t counts[64] = {0};
    if (p0 < p1)
        mlp_rows(p0, p1, batch, n_layers, dims, wt, bias, stream, bits, threshold, scale, input_mode, row_keys,
                 key, rows, sample0, z, base, out, ybuf + t * ybuf_stride, idx + t * block * stride,
                 val + t * block * stride, cnt + t * block, init + t * block, words + t * words_stride, block,
                 stride, counts);
    for (int64_t l = 0; l < n_layers && l < 64; ++l) {
        if (atomic) {
#if defined(_OPENMP)
#pragma omp atomic
#endif
            nnz[l] += counts[l];
        } else {
            nnz[l] += counts[l];
        }
    }
}

/* mlp_rows over pairs 0..pairs split in `threads` contiguous ranges; thread t uses workspace t (ybuf, idx, val,
   cnt, init, words at t times their given strides) and adds its counts to nnz. Without OpenMP: one thread. */
void mlp_sample(int32_t threads, int64_t pairs, int64_t batch, int64_t n_layers, const int64_t *dims,
                const float *const *wt, const float *const *bias, const uint64_t *stream, const int32_t *bits,
                const int32_t *threshold, const float *scale, int32_t input_mode, const int64_t *row_keys, uint64_t key,
                const int64_t *rows, int64_t sample0, const float *z, const float *base, float *out, float *ybuf,
                int32_t *idx, float *val, int32_t *cnt, const float **init, uint64_t *words, int64_t block,
                int64_t stride, int64_t ybuf_stride, int64_t words_stride, int64_t *nnz) {
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
        int t = 0, nt = 1;
#if defined(_OPENMP)
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        sample_part(t, nt, 1, pairs, batch, n_layers, dims, wt, bias, stream, bits, threshold, scale, input_mode,
                    row_keys, key, rows, sample0, z, base, out, ybuf, idx, val, cnt, init, words, block, stride,
                    ybuf_stride, words_stride, nnz);
    }
    (void)threads;
}

/* Part `part` of `parts` of mlp_sample (the same split, the same arguments), on the calling thread: how a build
   without OpenMP still uses several cores, the caller running the parts on its own threads (ctypes releases the
   GIL).  nnz must be the part's own array (no atomics). */
void mlp_sample_part(int32_t part, int32_t parts, int64_t pairs, int64_t batch, int64_t n_layers, const int64_t *dims,
                     const float *const *wt, const float *const *bias, const uint64_t *stream, const int32_t *bits,
                     const int32_t *threshold, const float *scale, int32_t input_mode, const int64_t *row_keys,
                     uint64_t key, const int64_t *rows, int64_t sample0, const float *z, const float *base, float *out,
                     float *ybuf, int32_t *idx, float *val, int32_t *cnt, const float **init, uint64_t *words,
                     int64_t block, int64_t stride, int64_t ybuf_stride, int64_t words_stride, int64_t *nnz) {
    sample_part(part, parts, 0, pairs, batch, n_layers, dims, wt, bias, stream, bits, threshold, scale, input_mode,
                row_keys, key, rows, sample0, z, base, out, ybuf, idx, val, cnt, init, words, block, stride,
                ybuf_stride, words_stride, nnz);
}
