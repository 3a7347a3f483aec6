/* SPDX-License-Identifier: MIT */
/*
 * crc32: see crc32.h. The folding follows "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ Instruction" (Gopal, Ozturk et al., Intel,
 * 2009), with the bit-reflected constants of its appendix for the CRC-32
 * polynomial 0x04C11DB7, as Chromium's zlib uses them (crc32_simd.c).
 */
#include "daemon/crc32.h"

#include <stdbool.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CRC32_HAVE_CLMUL 1
#endif

/* Byte-wise table of the reflected polynomial 0xEDB88320, built once. */
static uint32_t crc_table[8][256];
static bool crc_ready;
#ifdef CRC32_HAVE_CLMUL
static bool crc_clmul;
#endif

static void
crc_init(void)
{
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
                crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
                for (int t = 1; t < 8; t++)
                        crc_table[t][i] =
                                crc_table[0][crc_table[t - 1][i] & 0xff] ^ (crc_table[t - 1][i] >> 8);
#ifdef CRC32_HAVE_CLMUL
        __builtin_cpu_init();
        crc_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
        crc_ready = true;
}

/* Slicing by 8 on the inverted crc. */
static uint32_t
crc_table_run(uint32_t c, const unsigned char *p, size_t n)
{
        while (n >= 8) {
                uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                   (uint32_t)p[3] << 24);
                uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                              (uint32_t)p[7] << 24;
                c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
                    crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
                    crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
                    crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
                p += 8;
                n -= 8;
        }
        while (n-- > 0)
                c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
        return c;
}

#ifdef CRC32_HAVE_CLMUL
/* The inverted crc of p[0..n), n >= 64 and a multiple of 16, from the inverted crc c. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t
crc_clmul_run(uint32_t c, const unsigned char *p, size_t n)
{
        const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
        const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
        const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
        const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
        const __m128i mask32 = _mm_setr_epi32(~0, 0, ~0, 0);
        __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;

        x1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 0x00));
        x2 = _mm_loadu_si128((const __m128i *)(const void *)(p + 0x10));
        x3 = _mm_loadu_si128((const __m128i *)(const void *)(p + 0x20));
        x4 = _mm_loadu_si128((const __m128i *)(const void *)(p + 0x30));
        x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
        x0 = k1k2;
        p += 64;
        n -= 64;
        /* Four folds in parallel, 64 bytes a turn. */
        while (n >= 64) {
                x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
                x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
                x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
                x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
                x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
                x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
                x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
                x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
                x1 = _mm_xor_si128(_mm_xor_si128(x1, x5),
                                   _mm_loadu_si128((const __m128i *)(const void *)(p + 0x00)));
                x2 = _mm_xor_si128(_mm_xor_si128(x2, x6),
                                   _mm_loadu_si128((const __m128i *)(const void *)(p + 0x10)));
                x3 = _mm_xor_si128(_mm_xor_si128(x3, x7),
                                   _mm_loadu_si128((const __m128i *)(const void *)(p + 0x20)));
                x4 = _mm_xor_si128(_mm_xor_si128(x4, x8),
                                   _mm_loadu_si128((const __m128i *)(const void *)(p + 0x30)));
                p += 64;
                n -= 64;
        }
        /* Fold the four into one 128-bit value. */
        x0 = k3k4;
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);
        /* Then 16 bytes a turn. */
        while (n >= 16) {
                x2 = _mm_loadu_si128((const __m128i *)(const void *)p);
                x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
                x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
                x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
                p += 16;
                n -= 16;
        }
        /* 128 bits to 64. */
        x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
        x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
        x0 = k5k0;
        x2 = _mm_srli_si128(x1, 4);
        x1 = _mm_and_si128(x1, mask32);
        x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x00), x2);
        /* Barrett reduction to 32 bits. */
        x0 = poly;
        x2 = _mm_and_si128(x1, mask32);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
        x2 = _mm_and_si128(x2, mask32);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x1 = _mm_xor_si128(x1, x2);
        return (uint32_t)_mm_extract_epi32(x1, 1);
}
#endif

uint32_t
crc32_fast(uint32_t crc, const void *buf, size_t n)
{
        const unsigned char *p = buf;
        uint32_t c = ~crc;

        if (!crc_ready)
                crc_init();
#ifdef CRC32_HAVE_CLMUL
        if (crc_clmul && n >= 64) {
                size_t chunk = n & ~(size_t)15;
                c = crc_clmul_run(c, p, chunk);
                p += chunk;
                n -= chunk;
        }
#endif
        return ~crc_table_run(c, p, n);
}
