/* float32 -> IEEE half (binary16), round to nearest even, without F16C so the build stays
 * portable (SSE2 baseline). After F. Giesen's float_to_half_fast3_rtne (public domain). */
#ifndef FRAMEPIPE_PREPROCESS_HALF_H
#define FRAMEPIPE_PREPROCESS_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint16_t fp_float_to_half(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    const uint32_t f32_infinity = 255u << 23;
    const uint32_t f16_max = (127u + 16u) << 23;
    const uint32_t denorm_magic_bits = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    const uint32_t sign = bits & 0x80000000u;
    uint16_t out;
    bits ^= sign;
    if (bits >= f16_max) {
        out = (bits > f32_infinity) ? 0x7e00 : 0x7c00; /* NaN stays NaN, overflow -> inf */
    } else if (bits < (113u << 23)) {
        /* result is subnormal or zero: let the FPU round by adding a magic number */
        float magic, shifted;
        memcpy(&magic, &denorm_magic_bits, sizeof magic);
        memcpy(&shifted, &bits, sizeof shifted);
        shifted += magic;
        memcpy(&bits, &shifted, sizeof bits);
        out = (uint16_t)(bits - denorm_magic_bits);
    } else {
        const uint32_t mantissa_odd = (bits >> 13) & 1u;
        bits += ((uint32_t)(15 - 127) << 23) + 0xfffu;
        bits += mantissa_odd;
        out = (uint16_t)(bits >> 13);
    }
    return (uint16_t)(out | (sign >> 16));
}

#endif
