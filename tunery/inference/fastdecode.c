/* Decode passes of a Llama-family decoder with int4 weights, one call per pass.
 *
 * tunery/inference/fastlane.py compiles this file on first use and calls `fd_forward` for every
 * decode step of the engine: embeddings, every layer (RMSNorm, q/k/v, rotary embedding, cache
 * append, attention, o, RMSNorm, gate/up, SiLU, down), the final norm and the int8 output head
 * (a scale per group of 32 inputs, GGUF's Q8_0),
 * with LoRA deltas where a row's adapter has them. The weights are the tensors of the quantized
 * torch model itself (tunery/inference/quant.py), read in place; only the per-group scales are
 * copied (as fp16, row-major). Up to FD_MAX_ROWS rows go through in one pass while the weights are
 * read once: one token each of several sequences, or a speculative draft of one sequence.
 *
 * Activations are fp32, quantized per group of 32 where they meet the int4 weights, to two int8
 * codes each (the value and its rounding error, about 15 bits together), so the products are integer
 * dot products (VNNI where the CPU has it) without int8's rounding of the activations. With AVX2 the weight loops are
 * vectorized by hand; without it, the same arithmetic runs as plain C. Keys and values are cached
 * as fp16. The output rows of each matrix, the attention's (row, kv head, chunk) units and the
 * SiLU are split between the calling thread and `threads - 1` workers.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#define FD_MAX_ROWS 16
#define FD_GROUP 32
#define FD_MAX_THREADS 64
#define FD_ATTENTION_CHUNK 256 /* positions per unit of attention work */

enum { Q_PROJ, K_PROJ, V_PROJ, O_PROJ, GATE_PROJ, UP_PROJ, DOWN_PROJ, N_PROJ };

typedef struct {
    const uint8_t *codes;   /* [n][k/2]: two codes a byte, groups in pairs (see pair_byte) */
    const uint16_t *scales; /* fp16 [n][k/32]: w = q * scale + min, q in 0..15 */
    const uint16_t *mins;   /* fp16 [n][k/32] */
    const float *bias;      /* [n] or NULL */
    int32_t n, k;
} fd_q4;

typedef struct {
    const float *a; /* [r][k] */
    const float *b; /* [n][r] */
    float scale;
    int32_t r;
} fd_lora;

typedef struct {
    const float *input_norm, *post_norm; /* [hidden] */
    fd_q4 proj[N_PROJ];
} fd_layer;

typedef struct {
    int32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, max_pos;
    float eps;
    const float *embed;        /* [vocab][hidden] */
    const float *final_norm;   /* [hidden] */
    const int8_t *head;        /* [vocab][hidden], w = q * head_scales[row][input / 32] */
    const float *head_scales;  /* [vocab][hidden / 32]: the fp16 scales, widened exactly */
    const float *rope_cos;     /* [max_pos][head_dim] */
    const float *rope_sin;
    const fd_layer *layers;    /* [n_layers] */
} fd_model;

static int imax(int a, int b) { return a > b ? a : b; }
static int imin(int a, int b) { return a < b ? a : b; }

/* max without fmaxf's NaN rules, which keep it a library call; inputs here are never NaN */
static inline float fmax_plain(float a, float b) { return a > b ? a : b; }

static float max_of(const float *x, int count) {
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int i = 0; i < count; i++) top = fmax_plain(top, x[i]);
    return top;
}

/* Floats of workspace `fd_forward` needs for `rows` tokens, caches of up to `cap` positions and
 * LoRA ranks up to `rank`. */
size_t fd_workspace_floats(const fd_model *m, int rows, int cap, int rank) {
    size_t qd = (size_t)m->n_heads * m->head_dim, kvd = (size_t)m->n_kv_heads * m->head_dim;
    size_t widest = (size_t)imax(imax(m->hidden, m->intermediate), (int)qd), quads = (widest / 32 + 3) / 4;
    /* residual, normed, block output, q, k, v, attention, gate, up, LoRA scratch; the quantized
     * inputs' scales, sums, lane scales and their two int8 codes; attention: partial softmaxes, and
     * scores per thread */
    const size_t chunks = ((size_t)cap + FD_ATTENTION_CHUNK - 1) / FD_ATTENTION_CHUNK;
    return (size_t)rows * (3 * (size_t)m->hidden + 2 * qd + 2 * kvd + 2 * (size_t)m->intermediate + (size_t)rank
                           + 2 * (widest / 32) + quads * 16 + 2 * quads * 32
                           + (size_t)m->n_heads * chunks * (m->head_dim + 2))
           + (size_t)FD_MAX_THREADS * (m->n_heads * FD_ATTENTION_CHUNK + m->head_dim) + 64;
}

static void rms_norm(const float *x, const float *w, float eps, int d, float *out) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int i = 0; i < d; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = 0; i < d; i++) out[i] = w[i] * (x[i] * r);
}

/* Int4 codes (quant.Int4Linear.codes) go in pairs of groups, 32 bytes per 64 inputs. Input i of a
 * group sits in the low nibble for i < 16, the high nibble for i >= 16, of byte
 * ((t / 4) * 2 + first_or_second) * 4 + t % 4 with t = i % 16: so int32 lane j of a dot product over
 * the pair belongs to the pair's first group for even j and its second for odd j, and one 64-bit
 * broadcast of the two groups' scales lines up with the lanes. */
static inline int pair_byte(int g, int i) { int t = i % 16; return ((t / 4) * 2 + (g % 2)) * 4 + t % 4; }

/* Activations quantized per group of 32 inputs, symmetric, as 256 * q + lo: q the int8 code of the
 * value (|q| <= 127), lo the int8 code of what q leaves, in 256ths of q's step. One int8 code alone
 * (an error of half a step, 1/254 of the group's largest input) moved the default model's top token
 * at 4% of positions; the pair computes as the fp32 activations do, for two more dot products per
 * pair of weight groups (the weights are unpacked once for both). Codes go in the weights' order,
 * four groups (two pairs, 128 bytes) at a time: the low-nibble inputs of both pairs, then their
 * high-nibble inputs, so that one 512-bit load meets two pairs' low (or high) nibbles and one 256-bit
 * load one pair's; with AVX-512, whole octets of groups go in octet_slot's order instead (below).
 * Rows are padded to a multiple of 128 inputs. */
typedef struct {
    int8_t *q;      /* [rows][stride] */
    int8_t *lo;     /* [rows][stride], in the same order */
    float *scale;   /* [rows][k/32]: one unit of 256 * q + lo */
    float *sum;     /* [rows][k/32]: scale * sum of the group's 256 * q + lo (meets the weights' min) */
    float *lanes;   /* [rows][quads][16]: the scales as a 512-bit dot product's lanes meet them */
    int rows, k, stride;
} fd_qx;

static inline int x_slot(int g, int i) { return (g / 4) * 128 + (i / 16) * 64 + ((g / 2) % 2) * 32 + pair_byte(g, i); }

#if defined(__AVX2__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
#define FD_OCTETS 1
#else
#define FD_OCTETS 0
#endif

/* With AVX-512, eight groups (four pairs, 128 code bytes, 256 inputs) go through at a time: their
 * two 512-bit loads of codes are shuffled by 128-bit quarters (see q4_rows) so that every 32-bit lane
 * of the four nibble vectors belongs to one group, lane j to group 2 * (j / 4) + j % 2. A lane then
 * sums 16 products of one group instead of 8, and the fp32 scaling that follows each integer dot
 * product runs once per eight groups instead of once per four. The slot of input i of group g (0..7)
 * of such an octet, in 256 bytes: vector (low nibbles, then high; first shuffle, then second),
 * lane, byte. The groups past the last whole octet keep the quad layout of x_slot. */
static inline int octet_slot(int g, int i) {
    const int lane = ((i % 16) / 4) * 2 + g % 2; /* the code byte's 32-bit lane within its pair */
    const int vector = (i / 16) * 2 + lane / 4, j = (g / 4) * 8 + ((g / 2) % 2) * 4 + lane % 4;
    return vector * 64 + j * 4 + i % 4;
}

/* Where input i of group g of a row of `groups` groups sits in the quantized row. */
static inline int x_at(int groups, int g, int i) {
    return FD_OCTETS && g < groups / 8 * 8 ? (g / 8) * 256 + octet_slot(g % 8, i) : x_slot(g, i);
}

/* Where group g's scale goes among a row's lane scales: two lanes of its octet's 16, or four of its
 * quad's (lane pairs, as a pair of groups meets a 512-bit dot product). */
static inline void place_lanes(float *lanes, int groups, int g, float scale) {
    if (FD_OCTETS && g < groups / 8 * 8) {
        const int j = 4 * ((g % 8) / 2) + g % 2;
        lanes[(g / 8) * 32 + j] = lanes[(g / 8) * 32 + j + 2] = scale;
        return;
    }
    for (int j = 0; j < 4; j++) lanes[(g / 4) * 16 + ((g / 2) % 2) * 8 + 2 * j + g % 2] = scale;
}

/* One group's two codes per input (hq: the value, hl: its residual), in input order; returns the sum
 * of 256 * hq + hl. `inv` takes an input to steps of hq. */
static int quantize_group(const float *xg, float inv, int8_t *hq, int8_t *hl) {
#if FD_OCTETS
    /* cvtps2dq rounds as lrintf does (to nearest even, in the default mode): the same codes */
    __m512i total = _mm512_setzero_si512();
    for (int half = 0; half < 2; half++) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xg + 16 * half), _mm512_set1_ps(inv));
        const __m512i high = _mm512_cvtps_epi32(v);
        const __m512 rest = _mm512_mul_ps(_mm512_sub_ps(v, _mm512_cvtepi32_ps(high)), _mm512_set1_ps(256.0f));
        const __m512i low = _mm512_min_epi32(_mm512_set1_epi32(127),
                                             _mm512_max_epi32(_mm512_set1_epi32(-127), _mm512_cvtps_epi32(rest)));
        _mm_storeu_si128((__m128i *)(hq + 16 * half), _mm512_cvtepi32_epi8(high));
        _mm_storeu_si128((__m128i *)(hl + 16 * half), _mm512_cvtepi32_epi8(low));
        total = _mm512_add_epi32(total, _mm512_add_epi32(_mm512_slli_epi32(high, 8), low));
    }
    return _mm512_reduce_add_epi32(total);
#else
    int total = 0;
    for (int i = 0; i < FD_GROUP; i++) {
        const float v = xg[i] * inv; /* in steps of hq: |v| <= 127 */
        const int high = (int)lrintf(v), low = imin(127, imax(-127, (int)lrintf((v - (float)high) * 256.0f)));
        hq[i] = (int8_t)high;
        hl[i] = (int8_t)low;
        total += 256 * high + low;
    }
    return total;
#endif
}

static void quantize_rows(const float *x, int rows, int k, fd_qx *out) {
    const int groups = k / FD_GROUP, quads = (groups + 3) / 4;
    out->rows = rows;
    out->k = k;
    out->stride = quads * 128;
    for (int m = 0; m < rows; m++) {
        int8_t *q = out->q + (size_t)m * out->stride, *lo = out->lo + (size_t)m * out->stride;
        float *lanes = out->lanes + (size_t)m * quads * 16;
        memset(q + (size_t)groups * FD_GROUP, 0, (size_t)(out->stride - groups * FD_GROUP));
        memset(lo + (size_t)groups * FD_GROUP, 0, (size_t)(out->stride - groups * FD_GROUP));
        memset(lanes, 0, sizeof(float) * 16 * quads);
        for (int g = 0; g < groups; g++) {
            const float *xg = x + (size_t)m * k + g * FD_GROUP;
            float top = 0.0f;
#pragma omp simd reduction(max : top)
            for (int i = 0; i < FD_GROUP; i++) top = fmax_plain(top, fabsf(xg[i]));
            const float scale = top / (127.0f * 256.0f), inv = top > 0.0f ? 127.0f / top : 0.0f;
            int8_t hq[FD_GROUP], hl[FD_GROUP];
            const int total = quantize_group(xg, inv, hq, hl);
            for (int i = 0; i < FD_GROUP; i += 4) { /* four inputs in a row stay together in both layouts */
                memcpy(q + x_at(groups, g, i), hq + i, 4);
                memcpy(lo + x_at(groups, g, i), hl + i, 4);
            }
            out->scale[(size_t)m * groups + g] = scale;
            out->sum[(size_t)m * groups + g] = scale * (float)total;
            place_lanes(lanes, groups, g, scale);
        }
    }
}

#if defined(__AVX2__)
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for 8 floats (Cephes' polynomial, ~1e-7 relative): what expf gives, at a vector's cost. */
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
}
#endif

/* x[i] = e^(x[i] - shift); returns their sum. */
static float exp_shifted(float *x, int count, float shift) {
    float total = 0.0f;
    int i = 0;
#if defined(__AVX2__)
    __m256 sum = _mm256_setzero_ps();
    for (; i + 8 <= count; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(shift)));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    total = hsum256(sum);
#endif
    for (; i < count; i++) {
        x[i] = expf(x[i] - shift);
        total += x[i];
    }
    return total;
}

/* gate[i] = silu(gate[i]) * up[i] */
static void silu_mul(float *gate, const float *up, size_t count) {
    size_t i = 0;
#if defined(__AVX2__)
    for (; i + 8 <= count; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                                 _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < count; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 1023;
    float value;
    if (exponent == 0) {
        value = ldexpf((float)mantissa, -24);
    } else if (exponent == 31) {
        value = mantissa ? NAN : INFINITY;
    } else {
        const uint32_t bits = ((exponent + 112) << 23) | (mantissa << 13);
        memcpy(&value, &bits, 4);
    }
    return sign ? -value : value;
}

/* fp32 -> fp16, rounding to nearest even (as F16C and torch do). */
static inline uint16_t float_to_half(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    const uint32_t sign = (bits >> 16) & 0x8000, magnitude = bits & 0x7fffffff;
    if (magnitude >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (magnitude > 0x7f800000 ? 0x200 : 0));
    if (magnitude >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds past the largest half */
    if (magnitude < 0x38800000) { /* below the smallest normal half: a subnormal or zero */
        if (magnitude < 0x33000000) return (uint16_t)sign;
        /* value / 2^-24 = mantissa * 2^(exponent - 126): shift right by 126 - exponent (14 to 24) */
        const uint32_t mantissa = (magnitude & 0x7fffff) | 0x800000, shift = 126 - (magnitude >> 23);
        uint32_t half = mantissa >> shift;
        const uint32_t rest = mantissa & ((1u << shift) - 1), midpoint = 1u << (shift - 1);
        if (rest > midpoint || (rest == midpoint && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((magnitude >> 13) - (112u << 10)), rest = magnitude & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return (uint16_t)(sign | half);
}

/* out[i] = fp16(x[i]) */
static void to_half(const float *x, uint16_t *out, int count) {
    int i = 0;
#if defined(__F16C__)
    for (; i + 8 <= count; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < count; i++) out[i] = float_to_half(x[i]);
}

/* out[i] = float(h[i]) */
static void from_half(const uint16_t *h, float *out, int count) {
    int i = 0;
#if defined(__F16C__)
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < count; i++) out[i] = half_to_float(h[i]);
}

/* The weights' min term of one output: sum over groups of min[g] * (sum of the group's inputs). */
static inline float min_term(const uint16_t *mins, const float *sums, int groups) {
    float acc = 0.0f;
    int g = 0;
#if defined(__AVX2__) && defined(__F16C__)
    __m256 vacc = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8)
        vacc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mins + g))), _mm256_loadu_ps(sums + g),
                               vacc);
    acc = hsum256(vacc);
#endif
    for (; g < groups; g++) acc += half_to_float(mins[g]) * sums[g];
    return acc;
}

#if defined(__AVX2__)
/* Sum of u8 * s8 products into 8 int32 lanes. */
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}


/* A pair's 32 code bytes as two u8 operands: low nibbles, high nibbles. */
static inline void unpack_pair(const uint8_t *codes, __m256i *low, __m256i *high) {
    const __m256i c = _mm256_loadu_si256((const __m256i *)codes), low4 = _mm256_set1_epi8(15);
    *low = _mm256_and_si256(c, low4);
    *high = _mm256_and_si256(_mm256_srli_epi16(c, 4), low4);
}

/* The quantized inputs meeting pair p's low nibbles (its high ones are 64 bytes further). */
static inline const int8_t *pair_inputs(const int8_t *xq, int p) { return xq + (p / 2) * 128 + (p % 2) * 32; }

/* One pair of groups against one row of quantized inputs (xq: q, xl: lo, at the same offset), scaled
 * by the inputs' pair of scales: lanes still to be scaled by the weights' pair of scales. The lanes
 * hold 256 * (codes . q) + (codes . lo): at most 8 * 15 * 127 * 257, far inside int32. */
static inline __m256 pair_dot(__m256i low, __m256i high, const int8_t *xq, const int8_t *xl, const float *x_scales) {
    __m256i d = dot_u8s8(_mm256_setzero_si256(), low, _mm256_loadu_si256((const __m256i *)xq));
    d = _mm256_slli_epi32(dot_u8s8(d, high, _mm256_loadu_si256((const __m256i *)(xq + 64))), 8);
    d = dot_u8s8(d, low, _mm256_loadu_si256((const __m256i *)xl));
    d = dot_u8s8(d, high, _mm256_loadu_si256((const __m256i *)(xl + 64)));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_castpd_ps(_mm256_broadcast_sd((const double *)x_scales)));
}

/* A pair's two fp16 scales spread over the lanes: first, second, first, second, ... */
static inline __m256 pair_scales(const uint16_t *scales) {
#if defined(__F16C__)
    int32_t both;
    memcpy(&both, scales, 4);
    return _mm256_cvtph_ps(_mm_set1_epi32(both));
#else
    const float a = half_to_float(scales[0]), b = half_to_float(scales[1]);
    return _mm256_setr_ps(a, b, a, b, a, b, a, b);
#endif
}
#endif

#if defined(__AVX2__)
/* Several input rows against output rows [n0, n1): each pair of groups is unpacked once for all.
 * With AVX-512 (BW, VNNI) two pairs go through each instruction, an octet of groups (four pairs) to
 * one fp32 scaling per row; a quad left over takes one 512-bit step, an odd last pair 256 bits.
 * Every row count runs the same steps, so a row's numbers do not depend on the rows beside it. */
static inline __attribute__((always_inline)) void q4_rows(const fd_q4 *w, const fd_qx *x, float *y, int ldy, int n0,
                                                          int n1, const int rows) {
    const int k = w->k, groups = k / FD_GROUP, half = k / 2, pairs = groups / 2;
    for (int n = n0; n < n1; n++) {
        const uint8_t *codes = w->codes + (size_t)n * half;
        const uint16_t *scales = w->scales + (size_t)n * groups;
        __m256 acc[FD_MAX_ROWS];
        for (int m = 0; m < rows; m++) acc[m] = _mm256_setzero_ps();
        int p = 0;
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
        __m512 wide[FD_MAX_ROWS];
        for (int m = 0; m < rows; m++) wide[m] = _mm512_setzero_ps();
        const __m512i low4 = _mm512_set1_epi8(15);
        const __m256i spread_pairs = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        const __m512i spread_octet = _mm512_setr_epi32(0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7);
        for (; p + 4 <= pairs; p += 4) { /* an octet of groups: lane j of every vector is group 2 * (j / 4) + j % 2 */
            const __m512i c1 = _mm512_loadu_si512((const void *)(codes + p * 32)),
                          c2 = _mm512_loadu_si512((const void *)(codes + p * 32 + 64));
            const __m512i first = _mm512_shuffle_i32x4(c1, c2, 0x88), second = _mm512_shuffle_i32x4(c1, c2, 0xdd);
            const __m512i low1 = _mm512_and_si512(first, low4), low2 = _mm512_and_si512(second, low4);
            const __m512i high1 = _mm512_and_si512(_mm512_srli_epi16(first, 4), low4),
                          high2 = _mm512_and_si512(_mm512_srli_epi16(second, 4), low4);
            const __m512 s = _mm512_permutexvar_ps(spread_octet, _mm512_castps256_ps512(
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + 2 * p)))));
            for (int m = 0; m < rows; m++) {
                const size_t at = (size_t)m * x->stride + (p / 4) * 256;
                const int8_t *xq = x->q + at, *xl = x->lo + at;
                __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low1, _mm512_loadu_si512((const void *)xq));
                d = _mm512_dpbusd_epi32(d, low2, _mm512_loadu_si512((const void *)(xq + 64)));
                d = _mm512_dpbusd_epi32(d, high1, _mm512_loadu_si512((const void *)(xq + 128)));
                d = _mm512_slli_epi32(_mm512_dpbusd_epi32(d, high2, _mm512_loadu_si512((const void *)(xq + 192))), 8);
                d = _mm512_dpbusd_epi32(d, low1, _mm512_loadu_si512((const void *)xl));
                d = _mm512_dpbusd_epi32(d, low2, _mm512_loadu_si512((const void *)(xl + 64)));
                d = _mm512_dpbusd_epi32(d, high1, _mm512_loadu_si512((const void *)(xl + 128)));
                d = _mm512_dpbusd_epi32(d, high2, _mm512_loadu_si512((const void *)(xl + 192)));
                const __m512 xs = _mm512_loadu_ps(x->lanes + ((size_t)m * ((groups + 3) / 4) + p / 2) * 16);
                wide[m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), xs), s, wide[m]);
            }
        }
        for (; p + 2 <= pairs; p += 2) {
            const __m512i c = _mm512_loadu_si512((const void *)(codes + p * 32));
            const __m512i low = _mm512_and_si512(c, low4), high = _mm512_and_si512(_mm512_srli_epi16(c, 4), low4);
            const __m512 s = _mm512_cvtph_ps(_mm256_permutevar8x32_epi32(
                _mm256_castsi128_si256(_mm_loadl_epi64((const __m128i *)(scales + 2 * p))), spread_pairs));
            for (int m = 0; m < rows; m++) {
                const size_t at = (size_t)m * x->stride + (p / 2) * 128;
                const int8_t *xq = x->q + at, *xl = x->lo + at;
                __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512((const void *)xq));
                d = _mm512_slli_epi32(_mm512_dpbusd_epi32(d, high, _mm512_loadu_si512((const void *)(xq + 64))), 8);
                d = _mm512_dpbusd_epi32(d, low, _mm512_loadu_si512((const void *)xl));
                d = _mm512_dpbusd_epi32(d, high, _mm512_loadu_si512((const void *)(xl + 64)));
                const __m512 xs = _mm512_loadu_ps(x->lanes + ((size_t)m * ((groups + 3) / 4) + p / 2) * 16);
                wide[m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), xs), s, wide[m]);
            }
        }
        for (int m = 0; m < rows; m++)
            acc[m] = _mm256_add_ps(_mm512_castps512_ps256(wide[m]), _mm256_castpd_ps(
                _mm512_extractf64x4_pd(_mm512_castps_pd(wide[m]), 1)));
#endif
        for (; p < pairs; p++) {
            __m256i low, high;
            unpack_pair(codes + p * 32, &low, &high);
            const __m256 s = pair_scales(scales + 2 * p);
            for (int m = 0; m < rows; m++)
                acc[m] = _mm256_fmadd_ps(pair_dot(low, high, pair_inputs(x->q + (size_t)m * x->stride, p),
                                                  pair_inputs(x->lo + (size_t)m * x->stride, p),
                                                  x->scale + (size_t)m * groups + 2 * p), s, acc[m]);
        }
        for (int m = 0; m < rows; m++)
            y[(size_t)m * ldy + n] = hsum256(acc[m]) + min_term(w->mins + (size_t)n * groups,
                                                                x->sum + (size_t)m * groups, groups);
    }
}
#endif

/* y[m][n] = x[m] . W[n] (+ bias) for output rows [n0, n1) of the int4 matrix; y rows of stride ldy.
 * In features are a multiple of 64 (pairs of groups). */
static void q4_matmul(const fd_q4 *w, const fd_qx *x, float *y, int ldy, int n0, int n1) {
    const int k = w->k, groups = k / FD_GROUP, half = k / 2, rows = x->rows;
    int n = n0;
#if defined(__AVX2__)
#if defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__F16C__)
    const int narrow = 0; /* one row takes the 512-bit loop too: two pairs of groups an instruction */
#else
    const int narrow = rows == 1;
#endif
    if (narrow) {
        for (; n + 2 <= n1; n += 2) { /* two outputs at a time share the input loads */
            const uint8_t *c0 = w->codes + (size_t)n * half, *c1 = c0 + half;
            const uint16_t *s0 = w->scales + (size_t)n * groups, *s1 = s0 + groups;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int p = 0; p < groups / 2; p++) {
                const int8_t *xq = pair_inputs(x->q, p), *xl = pair_inputs(x->lo, p);
                __m256i low, high;
                unpack_pair(c0 + p * 32, &low, &high);
                a0 = _mm256_fmadd_ps(pair_dot(low, high, xq, xl, x->scale + 2 * p), pair_scales(s0 + 2 * p), a0);
                unpack_pair(c1 + p * 32, &low, &high);
                a1 = _mm256_fmadd_ps(pair_dot(low, high, xq, xl, x->scale + 2 * p), pair_scales(s1 + 2 * p), a1);
            }
            y[n] = hsum256(a0) + min_term(w->mins + (size_t)n * groups, x->sum, groups);
            y[n + 1] = hsum256(a1) + min_term(w->mins + (size_t)(n + 1) * groups, x->sum, groups);
        }
    } else {
        switch (rows) { /* a constant row count keeps the accumulators in registers */
        case 1: q4_rows(w, x, y, ldy, n, n1, 1); break;
        case 2: q4_rows(w, x, y, ldy, n, n1, 2); break;
        case 3: q4_rows(w, x, y, ldy, n, n1, 3); break;
        case 4: q4_rows(w, x, y, ldy, n, n1, 4); break;
        case 5: q4_rows(w, x, y, ldy, n, n1, 5); break;
        case 6: q4_rows(w, x, y, ldy, n, n1, 6); break;
        case 7: q4_rows(w, x, y, ldy, n, n1, 7); break;
        case 8: q4_rows(w, x, y, ldy, n, n1, 8); break;
        case 9: q4_rows(w, x, y, ldy, n, n1, 9); break;
        case 10: q4_rows(w, x, y, ldy, n, n1, 10); break;
        case 11: q4_rows(w, x, y, ldy, n, n1, 11); break;
        case 12: q4_rows(w, x, y, ldy, n, n1, 12); break;
        case 13: q4_rows(w, x, y, ldy, n, n1, 13); break;
        case 14: q4_rows(w, x, y, ldy, n, n1, 14); break;
        case 15: q4_rows(w, x, y, ldy, n, n1, 15); break;
        default: q4_rows(w, x, y, ldy, n, n1, 16); break;
        }
        n = n1;
    }
#endif
    for (; n < n1; n++) {
        const uint8_t *codes = w->codes + (size_t)n * half;
        for (int m = 0; m < rows; m++) {
            const int8_t *q = x->q + (size_t)m * x->stride, *lo = x->lo + (size_t)m * x->stride;
            float acc = 0.0f;
            for (int g = 0; g < groups; g++) {
                int dot = 0;
                for (int i = 0; i < FD_GROUP; i++) {
                    const int at = (g / 2) * 32 + pair_byte(g, i), code = i < 16 ? codes[at] & 15 : codes[at] >> 4;
                    dot += code * (256 * q[x_at(groups, g, i)] + lo[x_at(groups, g, i)]);
                }
                acc += half_to_float(w->scales[(size_t)n * groups + g]) * x->scale[(size_t)m * groups + g] * (float)dot;
            }
            y[(size_t)m * ldy + n] = acc + min_term(w->mins + (size_t)n * groups, x->sum + (size_t)m * groups, groups);
        }
    }
    if (w->bias)
        for (int m = 0; m < rows; m++)
            for (n = n0; n < n1; n++) y[(size_t)m * ldy + n] += w->bias[n];
}

/* y += scale * B (A x) for one row */
static void lora_add(const fd_lora *l, const float *x, int k, int n, float *y, float *t) {
    if (!l || !l->a) return;
    for (int j = 0; j < l->r; j++) {
        const float *a = l->a + (size_t)j * k;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int i = 0; i < k; i++) acc += a[i] * x[i];
        t[j] = acc * l->scale;
    }
    for (int o = 0; o < n; o++) {
        const float *b = l->b + (size_t)o * l->r;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < l->r; j++) acc += b[j] * t[j];
        y[o] += acc;
    }
}

#ifdef __AVX512F__
/* 16 weights of the head as fp32: int8 codes times their group's scale (exact: 7 bits times 11). */
static inline __m512 head_weights(const int8_t *codes, float scale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)codes))),
                         _mm512_set1_ps(scale));
}

static inline __attribute__((always_inline)) void head_rows(const fd_model *mw, const float *x, float *logits, int n0,
                                                            int n1, const int rows) {
    const int d = mw->hidden, vocab = mw->vocab;
    for (int n = n0; n < n1; n++) {
        __m512 acc[FD_MAX_ROWS];
        for (int m = 0; m < rows; m++) acc[m] = _mm512_setzero_ps();
        const int8_t *row = mw->head + (size_t)n * d;
        const float *scales = mw->head_scales + (size_t)n * (d / FD_GROUP);
        for (int i = 0; i < d; i += 16) {
            const __m512 wv = head_weights(row + i, scales[i / FD_GROUP]);
            for (int m = 0; m < rows; m++) acc[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (size_t)m * d + i), acc[m]);
        }
        for (int m = 0; m < rows; m++) logits[(size_t)m * vocab + n] = _mm512_reduce_add_ps(acc[m]);
    }
}
#endif

/* logits[m][v] = (head[v] * its group scales) . x[m] for vocabulary rows [n0, n1) */
static void head_matmul(const fd_model *mw, const float *x, int rows, float *logits, int n0, int n1) {
    const int d = mw->hidden, vocab = mw->vocab;
    int n = n0;
#ifdef __AVX512F__
    if (d % 16 == 0) {
        if (rows == 1) {
            for (; n + 4 <= n1; n += 4) {
                __m512 acc[4];
                for (int r = 0; r < 4; r++) acc[r] = _mm512_setzero_ps();
                for (int i = 0; i < d; i += 16) {
                    const __m512 xv = _mm512_loadu_ps(x + i);
                    for (int r = 0; r < 4; r++) {
                        const size_t at = (size_t)(n + r) * d + i;
                        acc[r] = _mm512_fmadd_ps(head_weights(mw->head + at, mw->head_scales[at / FD_GROUP]), xv, acc[r]);
                    }
                }
                for (int r = 0; r < 4; r++) logits[n + r] = _mm512_reduce_add_ps(acc[r]);
            }
        } else {
            switch (rows) {
            case 2: head_rows(mw, x, logits, n, n1, 2); break;
            case 3: head_rows(mw, x, logits, n, n1, 3); break;
            case 4: head_rows(mw, x, logits, n, n1, 4); break;
            case 5: head_rows(mw, x, logits, n, n1, 5); break;
            case 6: head_rows(mw, x, logits, n, n1, 6); break;
            case 7: head_rows(mw, x, logits, n, n1, 7); break;
            case 8: head_rows(mw, x, logits, n, n1, 8); break;
            case 9: head_rows(mw, x, logits, n, n1, 9); break;
            case 10: head_rows(mw, x, logits, n, n1, 10); break;
            case 11: head_rows(mw, x, logits, n, n1, 11); break;
            case 12: head_rows(mw, x, logits, n, n1, 12); break;
            case 13: head_rows(mw, x, logits, n, n1, 13); break;
            case 14: head_rows(mw, x, logits, n, n1, 14); break;
            case 15: head_rows(mw, x, logits, n, n1, 15); break;
            default: head_rows(mw, x, logits, n, n1, 16); break;
            }
            n = n1;
        }
    }
#endif
    for (; n < n1; n++) {
        const int8_t *row = mw->head + (size_t)n * d;
        const float *scales = mw->head_scales + (size_t)n * (d / FD_GROUP);
        for (int m = 0; m < rows; m++) {
            float acc = 0.0f;
            for (int g = 0; g < d / FD_GROUP; g++) {
                const int8_t *codes = row + g * FD_GROUP;
                const float *xg = x + (size_t)m * d + g * FD_GROUP, scale = scales[g];
#pragma omp simd reduction(+ : acc)
                for (int i = 0; i < FD_GROUP; i++) acc += ((float)codes[i] * scale) * xg[i];
            }
            logits[(size_t)m * vocab + n] = acc;
        }
    }
}

/* ---- threads: the main thread and its workers split a matrix's output rows ------------------ */

typedef void (*fd_part_fn)(void *job, int part, int parts);

static struct {
    pthread_t threads[FD_MAX_THREADS];
    int started;               /* workers running */
    int created_at;            /* the generation when the latest worker was created */
    atomic_int generation;     /* bumped for every job */
    atomic_int finished;       /* workers done with the current job */
    atomic_int sleeping;
    int parts;
    fd_part_fn fn;
    void *job;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

#define FD_SPINS 200000 /* a worker spins this long for the next job (decode passes come back to back), then sleeps */

static void *worker_main(void *arg) {
    const int index = (int)(intptr_t)arg;
    int seen = pool.created_at; /* a job posted before this thread ran still counts */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen) {
            if (++spins < FD_SPINS) {
#if defined(__AVX2__)
                _mm_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleeping, 1);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = atomic_load(&pool.generation);
        if (index < pool.parts) pool.fn(pool.job, index, pool.parts);
        atomic_fetch_add_explicit(&pool.finished, 1, memory_order_release);
    }
    return NULL;
}

/* One caller at a time uses the workers; a concurrent caller (a second engine) runs on its own thread. */
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER;

/* A forked child has none of the parent's workers. */
static void forget_workers(void) {
    pool.started = 0;
    pthread_mutex_init(&pool_owner, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
}

/* Run fn(job, part, parts) for parts 0..parts-1: part 0 here, the others on workers. */
static void run_parts(fd_part_fn fn, void *job, int parts) {
    if (parts > 1) {
        if (pool.started == 0) {
            static int registered;
            if (!registered) registered = !pthread_atfork(NULL, NULL, forget_workers);
        }
        while (pool.started < parts - 1 && pool.started < FD_MAX_THREADS) {
            pool.created_at = atomic_load(&pool.generation);
            if (pthread_create(&pool.threads[pool.started], NULL, worker_main, (void *)(intptr_t)(pool.started + 1)))
                break;
            pthread_detach(pool.threads[pool.started]);
            pool.started++;
        }
        if (parts > pool.started + 1) parts = pool.started + 1;
    }
    if (parts <= 1) {
        fn(job, 0, 1);
        return;
    }
    pool.fn = fn;
    pool.job = job;
    pool.parts = parts;
    atomic_store(&pool.finished, 0);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    fn(job, 0, parts);
    while (atomic_load_explicit(&pool.finished, memory_order_acquire) < pool.started) {
#if defined(__AVX2__)
        _mm_pause();
#endif
    }
}

/* Rows [start, end) of `total` for one part, in multiples of 16 (outputs go in pairs). */
static void part_range(int total, int part, int parts, int *start, int *end) {
    const int chunk = ((total + parts - 1) / parts + 15) / 16 * 16;
    *start = part * chunk < total ? part * chunk : total;
    *end = *start + chunk < total ? *start + chunk : total;
}

typedef struct {
    const fd_q4 *w[3];
    float *y[3];
    int count;
    const fd_qx *x;
} fd_matmul_job;

/* Part of up to three matrices that share an input, their output rows taken as one range. */
static void matmul_part(void *arg, int part, int parts) {
    const fd_matmul_job *job = arg;
    int total = 0, start, end;
    for (int i = 0; i < job->count; i++) total += job->w[i]->n;
    part_range(total, part, parts, &start, &end);
    for (int i = 0, base = 0; i < job->count; base += job->w[i]->n, i++) {
        const int a = start > base ? start - base : 0, b = end - base < job->w[i]->n ? end - base : job->w[i]->n;
        if (a < b) q4_matmul(job->w[i], job->x, job->y[i], job->w[i]->n, a, b);
    }
}

typedef struct {
    const fd_model *mw;
    const float *x;
    int rows;
    float *logits;
} fd_head_job;

static void head_part(void *arg, int part, int parts) {
    const fd_head_job *job = arg;
    int start, end;
    part_range(job->mw->vocab, part, parts, &start, &end);
    head_matmul(job->mw, job->x, job->rows, job->logits, start, end);
}

static float dot(const float *a, const float *b, int d) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

typedef struct {
    const fd_model *mw;
    int layer, rows, chunks; /* chunks: of the longest row */
    const int32_t *positions, *caps;
    uint16_t *const *k_caches, *const *v_caches; /* fp16 */
    const float *q;
    float *scores;  /* per part: [heads per kv head][FD_ATTENTION_CHUNK], then one key and one value row */
    float *partial; /* [rows][heads][chunks][head_dim + 2]: a chunk's max, sum and unnormalized output */
} fd_attention_job;

#if defined(__AVX512F__) && defined(__F16C__)
static inline __m512 load_half16(const uint16_t *h) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h)); }

/* One chunk of positions for the `group` query heads of a kv head with head_dim 64: queries and
 * outputs stay in registers, each key and value row is loaded once for all of them. */
static inline __attribute__((always_inline)) void attend_chunk_512(const float *qh, const uint16_t *kh,
                                                                   const uint16_t *vh,
                                                                   int j0, int j1, float scaling, float *scores,
                                                                   float *partial, size_t stride, const int group) {
    __m512 q[4][4], out[4][4];
    for (int g = 0; g < group; g++)
        for (int v = 0; v < 4; v++) {
            q[g][v] = _mm512_mul_ps(_mm512_loadu_ps(qh + g * 64 + v * 16), _mm512_set1_ps(scaling));
            out[g][v] = _mm512_setzero_ps();
        }
    for (int j = j0; j < j1; j++) {
        const uint16_t *kj = kh + (size_t)j * 64;
        const __m512 k0 = load_half16(kj), k1 = load_half16(kj + 16), k2 = load_half16(kj + 32),
                     k3 = load_half16(kj + 48);
        for (int g = 0; g < group; g++) {
            __m512 acc = _mm512_fmadd_ps(q[g][1], k1, _mm512_mul_ps(q[g][0], k0));
            acc = _mm512_fmadd_ps(q[g][3], k3, _mm512_fmadd_ps(q[g][2], k2, acc));
            scores[g * FD_ATTENTION_CHUNK + j - j0] = _mm512_reduce_add_ps(acc);
        }
    }
    float top[4], total[4];
    for (int g = 0; g < group; g++) {
        float *sc = scores + g * FD_ATTENTION_CHUNK;
        top[g] = max_of(sc, j1 - j0);
        total[g] = exp_shifted(sc, j1 - j0, top[g]);
    }
    for (int j = j0; j < j1; j++) {
        const uint16_t *vj = vh + (size_t)j * 64;
        const __m512 v0 = load_half16(vj), v1 = load_half16(vj + 16), v2 = load_half16(vj + 32),
                     v3 = load_half16(vj + 48);
        for (int g = 0; g < group; g++) {
            const __m512 p = _mm512_set1_ps(scores[g * FD_ATTENTION_CHUNK + j - j0]);
            out[g][0] = _mm512_fmadd_ps(p, v0, out[g][0]);
            out[g][1] = _mm512_fmadd_ps(p, v1, out[g][1]);
            out[g][2] = _mm512_fmadd_ps(p, v2, out[g][2]);
            out[g][3] = _mm512_fmadd_ps(p, v3, out[g][3]);
        }
    }
    for (int g = 0; g < group; g++) {
        float *dst = partial + g * stride;
        dst[0] = top[g];
        dst[1] = total[g];
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(dst + 2 + v * 16, out[g][v]);
    }
}
#endif

/* Attention, split into (row, kv head, chunk of positions) units: the query heads sharing a kv
 * head read its keys and values once; each unit leaves a partial softmax for the merge. */
static void attention_part(void *arg, int part, int parts) {
    const fd_attention_job *job = arg;
    const fd_model *mw = job->mw;
    const int hd = mw->head_dim, nh = mw->n_heads, nkv = mw->n_kv_heads, qd = nh * hd, group = nh / nkv;
    const float scaling = 1.0f / sqrtf((float)hd);
    float *scores = job->scores + (size_t)part * (nh * FD_ATTENTION_CHUNK + hd);
    const int units = job->rows * nkv * job->chunks;
    for (int unit = part; unit < units; unit += parts) {
        const int m = unit / (nkv * job->chunks), kvh = unit / job->chunks % nkv, chunk = unit % job->chunks;
        const int len = job->positions[m] + 1, mc = job->caps[m]; /* causal: the sequence so far and this token */
        const int j0 = chunk * FD_ATTENTION_CHUNK, j1 = imin(len, j0 + FD_ATTENTION_CHUNK);
        if (j0 >= len) continue;
        const uint16_t *kh = job->k_caches[m] + ((size_t)job->layer * nkv + kvh) * mc * hd;
        const uint16_t *vh = job->v_caches[m] + ((size_t)job->layer * nkv + kvh) * mc * hd;
        const float *qh = job->q + (size_t)m * qd + (size_t)kvh * group * hd;
        float *partial = job->partial + ((size_t)m * nh + kvh * group) * job->chunks * (hd + 2) + (size_t)chunk * (hd + 2);
        const size_t stride = (size_t)job->chunks * (hd + 2); /* from one query head's partials to the next's */
#if defined(__AVX512F__) && defined(__F16C__)
        if (hd == 64 && group <= 4) {
            switch (group) {
            case 1: attend_chunk_512(qh, kh, vh, j0, j1, scaling, scores, partial, stride, 1); break;
            case 2: attend_chunk_512(qh, kh, vh, j0, j1, scaling, scores, partial, stride, 2); break;
            case 3: attend_chunk_512(qh, kh, vh, j0, j1, scaling, scores, partial, stride, 3); break;
            default: attend_chunk_512(qh, kh, vh, j0, j1, scaling, scores, partial, stride, 4); break;
            }
            continue;
        }
#endif
        float *row = scores + (size_t)group * FD_ATTENTION_CHUNK;
        for (int j = j0; j < j1; j++) {
            from_half(kh + (size_t)j * hd, row, hd);
            for (int g = 0; g < group; g++)
                scores[g * FD_ATTENTION_CHUNK + j - j0] = dot(qh + (size_t)g * hd, row, hd) * scaling;
        }
        for (int g = 0; g < group; g++) {
            float *sc = scores + g * FD_ATTENTION_CHUNK, *out = partial + g * stride, top = max_of(sc, j1 - j0);
            out[0] = top;
            out[1] = exp_shifted(sc, j1 - j0, top);
            for (int i = 0; i < hd; i++) out[2 + i] = 0.0f;
            for (int j = j0; j < j1; j++) {
                const float p = sc[j - j0];
                from_half(vh + (size_t)j * hd, row, hd);
#pragma omp simd
                for (int i = 0; i < hd; i++) out[2 + i] += p * row[i];
            }
        }
    }
}

/* att[m][head] from the chunks' partial softmaxes. */
static void attention_merge(const fd_attention_job *job, float *att) {
    const fd_model *mw = job->mw;
    const int hd = mw->head_dim, nh = mw->n_heads;
    for (int m = 0; m < job->rows; m++) {
        const int used = (job->positions[m] + FD_ATTENTION_CHUNK) / FD_ATTENTION_CHUNK;
        for (int head = 0; head < nh; head++) {
            const float *parts = job->partial + ((size_t)m * nh + head) * job->chunks * (hd + 2);
            float top = -INFINITY, total = 0.0f, *out = att + ((size_t)m * nh + head) * hd;
            for (int c = 0; c < used; c++) top = fmax_plain(top, parts[(size_t)c * (hd + 2)]);
            for (int i = 0; i < hd; i++) out[i] = 0.0f;
            for (int c = 0; c < used; c++) {
                const float *p = parts + (size_t)c * (hd + 2), w = expf(p[0] - top);
                total += w * p[1];
                for (int i = 0; i < hd; i++) out[i] += w * p[2 + i];
            }
            for (int i = 0; i < hd; i++) out[i] /= total;
        }
    }
}

typedef struct {
    float *gate;
    const float *up;
    size_t count;
} fd_silu_job;

static void silu_part(void *arg, int part, int parts) {
    const fd_silu_job *job = arg;
    const size_t chunk = (job->count + parts - 1) / parts / 8 * 8 + 8;
    const size_t start = (size_t)part * chunk < job->count ? (size_t)part * chunk : job->count;
    const size_t end = start + chunk < job->count ? start + chunk : job->count;
    silu_mul(job->gate + start, job->up + start, end - start);
}

/* Matrices `which[0..count)` of a layer on one input (x float, xq quantized), plus each row's LoRA
 * deltas (loras[m]: that row's table for every layer and matrix, or NULL). */
static void project(int layer_index, const fd_layer *layer, const fd_lora *const *loras, const int *which,
                    float *const *y, int count, const float *x, const fd_qx *xq, float *t, int threads) {
    fd_matmul_job job = {.count = count, .x = xq};
    for (int i = 0; i < count; i++) {
        job.w[i] = &layer->proj[which[i]];
        job.y[i] = y[i];
    }
    run_parts(matmul_part, &job, threads);
    for (int m = 0; m < xq->rows; m++) {
        if (!loras || !loras[m]) continue;
        const fd_lora *table = loras[m] + (size_t)layer_index * N_PROJ;
        for (int i = 0; i < count; i++)
            lora_add(&table[which[i]], x + (size_t)m * job.w[i]->k, job.w[i]->k, job.w[i]->n,
                     y[i] + (size_t)m * job.w[i]->n, t);
    }
}

static void rope(float *v, int heads, int hd, const float *cos, const float *sin) {
    const int h2 = hd / 2;
    for (int h = 0; h < heads; h++) {
        float *x = v + (size_t)h * hd;
        for (int i = 0; i < h2; i++) {
            float a = x[i], b = x[i + h2];
            x[i] = a * cos[i] - b * sin[i];
            x[i + h2] = b * cos[i + h2] + a * sin[i + h2];
        }
    }
}

/* ---- the boundary: what Python hands over is checked here, once per load or per pass ---- */

#define FD_ABI 3 /* bumped whenever a structure or an entry point changes */

/* Error codes of fd_forward, fd_check_model and fd_check_lora (fastlane.py names them). */
enum { FD_OK, FD_E_ROWS, FD_E_TOKEN, FD_E_POSITION, FD_E_CACHE, FD_E_LORA, FD_E_WORKSPACE, FD_E_LOGITS, FD_E_MODEL };

int fd_abi(void) { return FD_ABI; }

/* Sizes and field offsets of the structures, for the caller to compare with its mirror of them.
 * Writes up to `n` numbers into `out`; returns how many there are. */
int fd_layout(int64_t *out, int n) {
    const int64_t layout[] = {
        sizeof(fd_q4), offsetof(fd_q4, codes), offsetof(fd_q4, scales), offsetof(fd_q4, mins), offsetof(fd_q4, bias),
        offsetof(fd_q4, n), offsetof(fd_q4, k),
        sizeof(fd_lora), offsetof(fd_lora, a), offsetof(fd_lora, b), offsetof(fd_lora, scale), offsetof(fd_lora, r),
        sizeof(fd_layer), offsetof(fd_layer, input_norm), offsetof(fd_layer, post_norm), offsetof(fd_layer, proj),
        sizeof(fd_model), offsetof(fd_model, n_layers), offsetof(fd_model, hidden), offsetof(fd_model, n_heads),
        offsetof(fd_model, n_kv_heads), offsetof(fd_model, head_dim), offsetof(fd_model, intermediate),
        offsetof(fd_model, vocab), offsetof(fd_model, max_pos), offsetof(fd_model, eps), offsetof(fd_model, embed),
        offsetof(fd_model, final_norm), offsetof(fd_model, head), offsetof(fd_model, head_scales),
        offsetof(fd_model, rope_cos), offsetof(fd_model, rope_sin), offsetof(fd_model, layers)};
    const int count = (int)(sizeof(layout) / sizeof(layout[0]));
    for (int i = 0; i < count && i < n; i++) out[i] = layout[i];
    return count;
}

/* Check the model's shapes and the length of every buffer it points to, in elements, in this order:
 * embed, final_norm, head, head_scales, rope_cos, rope_sin, then per layer input_norm, post_norm and
 * per projection codes (bytes), scales, mins, bias (0: none). `count` is the number of lengths. */
int fd_check_model(const fd_model *mw, const int64_t *lens, int count) {
    const int64_t d = mw->hidden, hd = mw->head_dim, v = mw->vocab, pos = mw->max_pos;
    if (mw->n_layers < 1 || d < 64 || d % 64 || mw->n_heads < 1 || mw->n_kv_heads < 1 || hd < 2 || hd % 2
        || mw->n_heads % mw->n_kv_heads || mw->intermediate < 64 || mw->intermediate % 64 || v < 1 || pos < 1
        || count != 6 + mw->n_layers * (2 + 4 * N_PROJ) || !mw->layers)
        return FD_E_MODEL;
    const int64_t want[] = {v * d, d, v * d, v * d / FD_GROUP, pos * hd, pos * hd};
    for (int i = 0; i < 6; i++) /* the embedding may hold padding rows past the vocabulary */
        if (i == 0 ? lens[i] < want[i] : lens[i] != want[i]) return FD_E_MODEL;
    const int64_t qd = mw->n_heads * hd, kvd = mw->n_kv_heads * hd, inter = mw->intermediate;
    const int64_t shape[N_PROJ][2] = {{qd, d}, {kvd, d}, {kvd, d}, {d, qd}, {inter, d}, {inter, d}, {d, inter}};
    for (int l = 0; l < mw->n_layers; l++) {
        const int64_t *ll = lens + 6 + (size_t)l * (2 + 4 * N_PROJ);
        if (ll[0] != d || ll[1] != d) return FD_E_MODEL;
        for (int j = 0; j < N_PROJ; j++) {
            const fd_q4 *w = &mw->layers[l].proj[j];
            const int64_t n = shape[j][0], k = shape[j][1], *pl = ll + 2 + 4 * j;
            if (w->n != n || w->k != k || k % 64 || pl[0] != n * k / 2 || pl[1] != n * k / FD_GROUP
                || pl[2] != n * k / FD_GROUP || pl[3] != (w->bias ? n : 0))
                return FD_E_MODEL;
        }
    }
    return FD_OK;
}

/* Check a LoRA table of `entries` ([n_layers][N_PROJ]) against the model: a_lens[i] / b_lens[i] are
 * the lengths of entry i's A and B (0 for an entry without an adapter). */
int fd_check_lora(const fd_model *mw, const fd_lora *table, int entries, const int64_t *a_lens, const int64_t *b_lens) {
    if (entries != mw->n_layers * N_PROJ) return FD_E_LORA;
    for (int i = 0; i < entries; i++) {
        const fd_q4 *w = &mw->layers[i / N_PROJ].proj[i % N_PROJ];
        if (!table[i].a && !table[i].b && a_lens[i] == 0 && b_lens[i] == 0) continue;
        if (!table[i].a || !table[i].b || table[i].r < 1 || a_lens[i] != (int64_t)table[i].r * w->k
            || b_lens[i] != (int64_t)w->n * table[i].r)
            return FD_E_LORA;
    }
    return FD_OK;
}

/* Run `rows` tokens through the model. Row m is token tokens[m] at position positions[m] of the
 * sequence whose cache is k_caches[m] / v_caches[m] (fp16, per layer [kv_heads][caps[m]][head_dim],
 * cache_lens[m] halves each), holding that sequence's positions 0..positions[m]-1; its keys and
 * values go in at positions[m]. Rows may share a sequence (a speculative draft: consecutive
 * positions, one cache) or not (a batch of sequences). loras[m] is row m's LoRA table
 * (`lora_entries` = [n_layers][N_PROJ], checked by fd_check_lora) or NULL; `loras` may be NULL.
 * logits (logits_len floats) get rows logits_from..rows-1; ws holds ws_len floats. Returns FD_OK,
 * or the code of the first argument that does not fit (nothing is written then). */
int fd_forward(const fd_model *mw, int rows, const int64_t *tokens, const int32_t *positions,
               uint16_t *const *k_caches, uint16_t *const *v_caches, const int32_t *caps, const int64_t *cache_lens,
               const fd_lora *const *loras, int lora_entries, float *logits, int64_t logits_len, float *ws,
               int64_t ws_len, int max_rank, int logits_from, int threads) {
    const int d = mw->hidden, hd = mw->head_dim, nh = mw->n_heads, nkv = mw->n_kv_heads, inter = mw->intermediate;
    const int qd = nh * hd, kvd = nkv * hd;
    if (threads < 1) threads = 1;
    if (threads > FD_MAX_THREADS) threads = FD_MAX_THREADS;
    if (rows < 1 || rows > FD_MAX_ROWS || logits_from < 0 || logits_from >= rows) return FD_E_ROWS;
    if (loras && lora_entries != mw->n_layers * N_PROJ) return FD_E_LORA;
    int cap = 0;
    for (int m = 0; m < rows; m++) {
        if (tokens[m] < 0 || tokens[m] >= mw->vocab) return FD_E_TOKEN;
        if (positions[m] < 0 || positions[m] >= caps[m] || positions[m] >= mw->max_pos) return FD_E_POSITION;
        if (!k_caches[m] || !v_caches[m] || cache_lens[m] < (int64_t)mw->n_layers * nkv * caps[m] * hd)
            return FD_E_CACHE;
        if (loras && loras[m])
            for (int i = 0; i < mw->n_layers * N_PROJ; i++)
                if (loras[m][i].a && (loras[m][i].r > max_rank || loras[m][i].r < 1)) return FD_E_LORA;
        cap = imax(cap, caps[m]);
    }
    if (max_rank < 0 || ws_len < (int64_t)fd_workspace_floats(mw, rows, cap, max_rank)) return FD_E_WORKSPACE;
    if (logits_len < (int64_t)(rows - logits_from) * mw->vocab) return FD_E_LOGITS;
    const int owner = threads > 1 && pthread_mutex_trylock(&pool_owner) == 0;
    if (!owner) threads = 1;
    const int widest = imax(imax(d, inter), qd);
    float *h = ws, *xn = h + (size_t)rows * d, *tmp = xn + (size_t)rows * d, *q = tmp + (size_t)rows * d;
    float *kb = q + (size_t)rows * qd, *vb = kb + (size_t)rows * kvd, *att = vb + (size_t)rows * kvd;
    float *gate = att + (size_t)rows * qd, *up = gate + (size_t)rows * inter, *t = up + (size_t)rows * inter;
    const int quads = (widest / FD_GROUP + 3) / 4;
    float *xs = t + (size_t)rows * max_rank, *xsum = xs + (size_t)rows * (widest / FD_GROUP);
    const int chunks = (cap + FD_ATTENTION_CHUNK - 1) / FD_ATTENTION_CHUNK;
    float *lanes = xsum + (size_t)rows * (widest / FD_GROUP), *partial = lanes + (size_t)rows * quads * 16;
    float *scores = partial + (size_t)rows * nh * chunks * (hd + 2);
    int8_t *codes = (int8_t *)(scores + (size_t)FD_MAX_THREADS * (nh * FD_ATTENTION_CHUNK + hd));
    fd_qx xq = {codes, codes + (size_t)rows * quads * 128, xs, xsum, lanes, rows, 0, 0};
    int longest = 0;
    for (int m = 0; m < rows; m++) longest = imax(longest, positions[m] + 1);

    for (int m = 0; m < rows; m++) memcpy(h + (size_t)m * d, mw->embed + (size_t)tokens[m] * d, sizeof(float) * d);
    for (int l = 0; l < mw->n_layers; l++) {
        const fd_layer *layer = &mw->layers[l];
        for (int m = 0; m < rows; m++) rms_norm(h + (size_t)m * d, layer->input_norm, mw->eps, d, xn + (size_t)m * d);
        quantize_rows(xn, rows, d, &xq);
        project(l, layer, loras, (const int[]){Q_PROJ, K_PROJ, V_PROJ}, (float *const[]){q, kb, vb}, 3, xn, &xq, t, threads);
        for (int m = 0; m < rows; m++) { /* every row's keys and values go in before any row attends */
            const int pos = positions[m], mc = caps[m];
            uint16_t *kc = k_caches[m] + (size_t)l * nkv * mc * hd, *vc = v_caches[m] + (size_t)l * nkv * mc * hd;
            const float *cos = mw->rope_cos + (size_t)pos * hd, *sin = mw->rope_sin + (size_t)pos * hd;
            rope(q + (size_t)m * qd, nh, hd, cos, sin);
            rope(kb + (size_t)m * kvd, nkv, hd, cos, sin);
            for (int j = 0; j < nkv; j++) {
                to_half(kb + (size_t)m * kvd + (size_t)j * hd, kc + ((size_t)j * mc + pos) * hd, hd);
                to_half(vb + (size_t)m * kvd + (size_t)j * hd, vc + ((size_t)j * mc + pos) * hd, hd);
            }
        }
        fd_attention_job attention = {mw, l, rows, (longest + FD_ATTENTION_CHUNK - 1) / FD_ATTENTION_CHUNK,
                                      positions, caps, k_caches, v_caches, q, scores, partial};
        run_parts(attention_part, &attention, threads);
        attention_merge(&attention, att);
        quantize_rows(att, rows, qd, &xq);
        project(l, layer, loras, (const int[]){O_PROJ}, (float *const[]){tmp}, 1, att, &xq, t, threads);
        for (size_t i = 0; i < (size_t)rows * d; i++) h[i] += tmp[i];
        for (int m = 0; m < rows; m++) rms_norm(h + (size_t)m * d, layer->post_norm, mw->eps, d, xn + (size_t)m * d);
        quantize_rows(xn, rows, d, &xq);
        project(l, layer, loras, (const int[]){GATE_PROJ, UP_PROJ}, (float *const[]){gate, up}, 2, xn, &xq, t, threads);
        fd_silu_job silu = {gate, up, (size_t)rows * inter};
        run_parts(silu_part, &silu, threads);
        quantize_rows(gate, rows, inter, &xq);
        project(l, layer, loras, (const int[]){DOWN_PROJ}, (float *const[]){tmp}, 1, gate, &xq, t, threads);
        for (size_t i = 0; i < (size_t)rows * d; i++) h[i] += tmp[i];
    }
    for (int m = 0; m < rows; m++) rms_norm(h + (size_t)m * d, mw->final_norm, mw->eps, d, xn + (size_t)m * d);
    /* Logits only for rows logits_from.. (a prefill needs its last row's): logits[0] is that row's. */
    fd_head_job head = {mw, xn + (size_t)logits_from * d, rows - logits_from, logits};
    run_parts(head_part, &head, threads);
    if (owner) pthread_mutex_unlock(&pool_owner);
    return FD_OK;
}
