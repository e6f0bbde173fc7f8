/* The two inner loops of framepipe.ext._preprocess, SSE2 where available (x86-64 baseline,
 * so no -march flags are needed) with a plain C fallback that computes the same numbers.
 *
 * fp_hresample_row: one packed BGR uint8 source row -> n horizontally resampled pixels, each
 *   stored as 4 floats (B, G, R, unused), in fixed point: value * FP_HWEIGHT_ONE.
 * fp_vblend_store: two such rows -> blend vertically with weight wy, pick the channels in
 *   output order, normalise (gain already divided by FP_HWEIGHT_ONE) and store three planes.
 */
#ifndef FRAMEPIPE_PREPROCESS_KERNELS_H
#define FRAMEPIPE_PREPROCESS_KERNELS_H

#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* horizontal weights are 11-bit fixed point, as in cv2's INTER_LINEAR */
#define FP_HWEIGHT_BITS 11
#define FP_HWEIGHT_ONE (1 << FP_HWEIGHT_BITS)

/* Ask for a source row ahead of its use: rows are read at a stride of several rows when
 * downscaling, which the hardware prefetcher does not follow across rows. */
static inline void fp_prefetch_row(const uint8_t *row, intptr_t bytes)
{
    for (intptr_t i = 0; i < bytes; i += 64)
        __builtin_prefetch(row + i, 0, 3);
}

/* weights[x] packs (left weight) | (right weight << 16), the two summing to FP_HWEIGHT_ONE */
static inline void fp_hresample_row(const uint8_t *row, intptr_t row_bytes, int n,
                                    const int32_t *ofs0, const int32_t *ofs1,
                                    const int32_t *weights, float *out4)
{
    int x = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    for (; x < n; x++) {
        /* a 4-byte load reads one byte past the pixel: stop before the row's last pixel */
        if ((intptr_t)ofs1[x] + 4 > row_bytes)
            break;
        uint32_t a, b;
        memcpy(&a, row + ofs0[x], 4);
        memcpy(&b, row + ofs1[x], 4);
        __m128i ab = _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)a), _mm_cvtsi32_si128((int)b));
        ab = _mm_unpacklo_epi8(ab, zero); /* a0 b0 a1 b1 a2 b2 a3 b3 as int16 */
        __m128i sum = _mm_madd_epi16(ab, _mm_set1_epi32(weights[x]));
        _mm_storeu_ps(out4 + 4 * (intptr_t)x, _mm_cvtepi32_ps(sum));
    }
#endif
    for (; x < n; x++) {
        const uint8_t *p = row + ofs0[x];
        const uint8_t *q = row + ofs1[x];
        const int w0 = weights[x] & 0xffff;
        const int w1 = (weights[x] >> 16) & 0xffff;
        float *o = out4 + 4 * (intptr_t)x;
        o[0] = (float)(p[0] * w0 + q[0] * w1);
        o[1] = (float)(p[1] * w0 + q[1] * w1);
        o[2] = (float)(p[2] * w0 + q[2] * w1);
        o[3] = 0.0f;
    }
}

/* Two source rows at once, blended vertically with weight wy after the horizontal taps:
 * the same numbers as two fp_hresample_row calls plus the blend, in one pass (downscaling
 * reads two fresh rows for every destination row, so there is nothing to cache). */
static inline void fp_hresample_rows2(const uint8_t *r0, const uint8_t *r1, intptr_t row_bytes,
                                      int n, const int32_t *ofs0, const int32_t *ofs1,
                                      const int32_t *weights, float wy, float *out4)
{
    int x = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    const __m128 vw = _mm_set1_ps(wy);
    for (; x < n; x++) {
        if ((intptr_t)ofs1[x] + 4 > row_bytes)
            break;
        uint32_t a0, b0, a1, b1;
        memcpy(&a0, r0 + ofs0[x], 4);
        memcpy(&b0, r0 + ofs1[x], 4);
        memcpy(&a1, r1 + ofs0[x], 4);
        memcpy(&b1, r1 + ofs1[x], 4);
        const __m128i w = _mm_set1_epi32(weights[x]);
        __m128i p0 = _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)a0), _mm_cvtsi32_si128((int)b0));
        __m128i p1 = _mm_unpacklo_epi8(_mm_cvtsi32_si128((int)a1), _mm_cvtsi32_si128((int)b1));
        __m128 f0 = _mm_cvtepi32_ps(_mm_madd_epi16(_mm_unpacklo_epi8(p0, zero), w));
        __m128 f1 = _mm_cvtepi32_ps(_mm_madd_epi16(_mm_unpacklo_epi8(p1, zero), w));
        _mm_storeu_ps(out4 + 4 * (intptr_t)x, _mm_add_ps(f0, _mm_mul_ps(vw, _mm_sub_ps(f1, f0))));
    }
#endif
    for (; x < n; x++) {
        const int w0 = weights[x] & 0xffff;
        const int w1 = (weights[x] >> 16) & 0xffff;
        float *o = out4 + 4 * (intptr_t)x;
        for (int c = 0; c < 3; c++) {
            const float f0 = (float)(r0[ofs0[x] + c] * w0 + r0[ofs1[x] + c] * w1);
            const float f1 = (float)(r1[ofs0[x] + c] * w0 + r1[ofs1[x] + c] * w1);
            o[c] = f0 + wy * (f1 - f0);
        }
        o[3] = 0.0f;
    }
}

static inline void fp_vblend_store(const float *h0, const float *h1, float wy, int n,
                                   const int *channel, const float *gain, const float *offset,
                                   float *d0, float *d1, float *d2)
{
    int x = 0;
    const int c0 = channel[0], c1 = channel[1], c2 = channel[2];
#if defined(__SSE2__)
    const __m128 vw = _mm_set1_ps(wy);
    const __m128 g0 = _mm_set1_ps(gain[0]), g1 = _mm_set1_ps(gain[1]), g2 = _mm_set1_ps(gain[2]);
    const __m128 o0 = _mm_set1_ps(offset[0]), o1 = _mm_set1_ps(offset[1]), o2 = _mm_set1_ps(offset[2]);
    for (; x + 4 <= n; x += 4) {
        const float *a = h0 + 4 * (intptr_t)x;
        const float *b = h1 + 4 * (intptr_t)x;
        __m128 p0 = _mm_loadu_ps(a), p1 = _mm_loadu_ps(a + 4);
        __m128 p2 = _mm_loadu_ps(a + 8), p3 = _mm_loadu_ps(a + 12);
        if (wy != 0.0f) {
            p0 = _mm_add_ps(p0, _mm_mul_ps(vw, _mm_sub_ps(_mm_loadu_ps(b), p0)));
            p1 = _mm_add_ps(p1, _mm_mul_ps(vw, _mm_sub_ps(_mm_loadu_ps(b + 4), p1)));
            p2 = _mm_add_ps(p2, _mm_mul_ps(vw, _mm_sub_ps(_mm_loadu_ps(b + 8), p2)));
            p3 = _mm_add_ps(p3, _mm_mul_ps(vw, _mm_sub_ps(_mm_loadu_ps(b + 12), p3)));
        }
        _MM_TRANSPOSE4_PS(p0, p1, p2, p3); /* p0 = B of 4 pixels, p1 = G, p2 = R */
        __m128 ch[3] = {p0, p1, p2};
        _mm_storeu_ps(d0 + x, _mm_add_ps(_mm_mul_ps(ch[c0], g0), o0));
        _mm_storeu_ps(d1 + x, _mm_add_ps(_mm_mul_ps(ch[c1], g1), o1));
        _mm_storeu_ps(d2 + x, _mm_add_ps(_mm_mul_ps(ch[c2], g2), o2));
    }
#endif
    for (; x < n; x++) {
        const float *a = h0 + 4 * (intptr_t)x;
        const float *b = h1 + 4 * (intptr_t)x;
        float v[3];
        for (int c = 0; c < 3; c++)
            v[c] = a[c] + wy * (b[c] - a[c]);
        d0[x] = v[c0] * gain[0] + offset[0];
        d1[x] = v[c1] * gain[1] + offset[1];
        d2[x] = v[c2] * gain[2] + offset[2];
    }
}


/* One row of a YUV 4:2:0 frame to packed BGR, with FFmpeg's swscale integer arithmetic
 * (16-bit lanes: samples scaled by 8 and offset, each term the floored high half of a
 * product with a 13-bit coefficient), so the result is FFmpeg's bit for bit.
 * coef: y_offset, cy, cub, cug, cvg, cvr. u and v point at the row's first chroma sample;
 * uv_step is 1 (I420 planes) or 2 (NV12: u = the UV row, v = u + 1). */
static inline int fp_yuv_mulhi(int a, int b) { return (a * b) >> 16; }

static inline uint8_t fp_yuv_clip(int v) { return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

static inline void fp_yuv_row_to_bgr(const uint8_t *y, const uint8_t *u, const uint8_t *v,
                                     int uv_step, int width, const int *coef, uint8_t *out)
{
    int x = 0;
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128();
    const __m128i yoff = _mm_set1_epi16((short)coef[0]);
    const __m128i cy = _mm_set1_epi16((short)coef[1]);
    const __m128i cub = _mm_set1_epi16((short)coef[2]);
    const __m128i cug = _mm_set1_epi16((short)coef[3]);
    const __m128i cvg = _mm_set1_epi16((short)coef[4]);
    const __m128i cvr = _mm_set1_epi16((short)coef[5]);
    const __m128i c1024 = _mm_set1_epi16(1024);
    const __m128i lo_bytes = _mm_set1_epi16(0x00ff);
    /* x + 16 < width: the interleave below writes one byte past pixel x + 15, which the
     * next pixel (still in the row) overwrites. */
    for (; x + 16 < width; x += 16) {
        __m128i yy = _mm_loadu_si128((const __m128i *)(y + x));
        __m128i ylo = _mm_mulhi_epi16(
            _mm_sub_epi16(_mm_slli_epi16(_mm_unpacklo_epi8(yy, zero), 3), yoff), cy);
        __m128i yhi = _mm_mulhi_epi16(
            _mm_sub_epi16(_mm_slli_epi16(_mm_unpackhi_epi8(yy, zero), 3), yoff), cy);
        __m128i uu, vv;
        if (uv_step == 1) {
            uu = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(u + x / 2)), zero);
            vv = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(v + x / 2)), zero);
        } else {
            __m128i uv = _mm_loadu_si128((const __m128i *)(u + x));
            uu = _mm_and_si128(uv, lo_bytes);
            vv = _mm_srli_epi16(uv, 8);
        }
        uu = _mm_subs_epi16(_mm_slli_epi16(uu, 3), c1024);
        vv = _mm_subs_epi16(_mm_slli_epi16(vv, 3), c1024);
        __m128i bu = _mm_mulhi_epi16(uu, cub);
        __m128i rv = _mm_mulhi_epi16(vv, cvr);
        __m128i guv = _mm_adds_epi16(_mm_mulhi_epi16(uu, cug), _mm_mulhi_epi16(vv, cvg));
        /* each chroma term serves two neighbouring pixels */
        __m128i bb = _mm_packus_epi16(_mm_adds_epi16(ylo, _mm_unpacklo_epi16(bu, bu)),
                                      _mm_adds_epi16(yhi, _mm_unpackhi_epi16(bu, bu)));
        __m128i gg = _mm_packus_epi16(_mm_adds_epi16(ylo, _mm_unpacklo_epi16(guv, guv)),
                                      _mm_adds_epi16(yhi, _mm_unpackhi_epi16(guv, guv)));
        __m128i rr = _mm_packus_epi16(_mm_adds_epi16(ylo, _mm_unpacklo_epi16(rv, rv)),
                                      _mm_adds_epi16(yhi, _mm_unpackhi_epi16(rv, rv)));
        /* B G R X words of 4 pixels each, stored 3 bytes apart (each X is overwritten) */
        __m128i bg_lo = _mm_unpacklo_epi8(bb, gg), bg_hi = _mm_unpackhi_epi8(bb, gg);
        __m128i rx_lo = _mm_unpacklo_epi8(rr, zero), rx_hi = _mm_unpackhi_epi8(rr, zero);
        __m128i quads[4] = {
            _mm_unpacklo_epi16(bg_lo, rx_lo), _mm_unpackhi_epi16(bg_lo, rx_lo),
            _mm_unpacklo_epi16(bg_hi, rx_hi), _mm_unpackhi_epi16(bg_hi, rx_hi),
        };
        uint8_t *o = out + 3 * (intptr_t)x;
        for (int q = 0; q < 4; q++) {
            __m128i w = quads[q];
            for (int k = 0; k < 4; k++) {
                uint32_t word = (uint32_t)_mm_cvtsi128_si32(w);
                memcpy(o + 12 * q + 3 * k, &word, 4);
                w = _mm_srli_si128(w, 4);
            }
        }
    }
#endif
    for (; x < width; x++) {
        int cx = x >> 1;
        int u8 = ((int)u[cx * uv_step] << 3) - 1024;
        int v8 = ((int)v[cx * uv_step] << 3) - 1024;
        int yv = fp_yuv_mulhi(((int)y[x] << 3) - coef[0], coef[1]);
        out[3 * x] = fp_yuv_clip(yv + fp_yuv_mulhi(u8, coef[2]));
        out[3 * x + 1] =
            fp_yuv_clip(yv + fp_yuv_mulhi(u8, coef[3]) + fp_yuv_mulhi(v8, coef[4]));
        out[3 * x + 2] = fp_yuv_clip(yv + fp_yuv_mulhi(v8, coef[5]));
    }
}

#endif
