/* SPDX-License-Identifier: MIT */
/*
 * crc32: zlib's CRC-32 (the envelope's checksum), computed faster than
 * Debian's zlib 1.2.13 does: ~100 ns for 100 bytes and ~720 ns for 4 KiB
 * there, which was 15-18 % of kcached's CPU per GET (perf, bench/compare's
 * 50 x 16 case). Folding with carry-less multiplication (PCLMULQDQ, checked at
 * run time) for 64 bytes and more, a table for the rest and on CPUs without
 * it. The same values as zlib's crc32_z() for every input (test-envelope
 * compares them).
 */
#ifndef KCACHE_CRC32_H
#define KCACHE_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* As zlib's crc32_z(crc, p, n): start with crc 0, chain by passing the last result. */
uint32_t crc32_fast(uint32_t crc, const void *p, size_t n);

#endif
