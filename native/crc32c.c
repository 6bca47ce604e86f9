/* crc32c.c: CRC32C (Castagnoli), with the CPU instruction where there is one
 * (SSE4.2, ARMv8 CRC) and a slicing-by-8 table otherwise. The choice is made
 * once at load; AOFLITE_CRC32C=software or aof_crc32c_force_software(1)
 * selects the table so tests can prove both paths agree. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aoflite.h"

#define POLY 0x82f63b78u /* reversed Castagnoli polynomial */

static uint32_t table[8][256];
static int use_hw;

static void build_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 1; k < 8; k++)
            table[k][n] = (table[k - 1][n] >> 8) ^ table[0][table[k - 1][n] & 0xff];
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len) {
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        /* the table walk below assumes little-endian loads */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        w ^= crc;
        crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
              table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^
              table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define HAVE_HW 1
/* The instruction has a 3-cycle latency but issues every cycle, so long
 * buffers run as three interleaved streams whose CRCs are then combined:
 * the raw CRC is linear, so crc(s, A|B) = shift_|B|(crc(s, A)) ^ crc(0, B),
 * where shift_n (feeding n zero bytes) is a table lookup per state byte. */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256
static uint32_t shift_long[4][256], shift_short[4][256];

__attribute__((target("sse4.2"))) static void make_shift(uint32_t t[4][256], size_t len) {
    for (int k = 0; k < 4; k++)
        for (uint32_t b = 0; b < 256; b++) {
            uint64_t c = (uint64_t)b << (8 * k);
            for (size_t i = 0; i < len / 8; i++) c = _mm_crc32_u64(c, 0);
            t[k][b] = (uint32_t)c;
        }
}

static inline uint64_t shift(uint32_t t[4][256], uint64_t c) {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][(c >> 24) & 0xff];
}

__attribute__((target("sse4.2"))) static const unsigned char *crc3(uint64_t *crc, const unsigned char *p,
                                                                    size_t *len, size_t block,
                                                                    uint32_t t[4][256]) {
    uint64_t c0 = *crc;
    while (*len >= 3 * block) {
        uint64_t c1 = 0, c2 = 0, w0, w1, w2;
        for (size_t i = 0; i < block; i += 8) {
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + block + i, 8);
            memcpy(&w2, p + 2 * block + i, 8);
            c0 = _mm_crc32_u64(c0, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
        }
        c0 = shift(t, c0) ^ c1;
        c0 = shift(t, c0) ^ c2;
        p += 3 * block;
        *len -= 3 * block;
    }
    *crc = c0;
    return p;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                          size_t len) {
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    p = crc3(&c, p, &len, LONG_BLOCK, shift_long);
    p = crc3(&c, p, &len, SHORT_BLOCK, shift_short);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
static void hw_init(void) {
    make_shift(shift_long, LONG_BLOCK);
    make_shift(shift_short, SHORT_BLOCK);
}
static int hw_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#define HAVE_HW 1
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
__attribute__((target("+crc"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                        size_t len) {
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = __crc32cb(crc, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
        p += 8;
        len -= 8;
    }
    while (len--) crc = __crc32cb(crc, *p++);
    return ~crc;
}
static int hw_available(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
static void hw_init(void) {}
#else
#define HAVE_HW 0
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len) {
    return crc_sw(crc, p, len);
}
static int hw_available(void) { return 0; }
static void hw_init(void) {}
#endif

__attribute__((constructor)) static void crc32c_init(void) {
    build_table();
    const char *env = getenv("AOFLITE_CRC32C");
    if (HAVE_HW && hw_available()) hw_init();
    use_hw = HAVE_HW && hw_available() && !(env && strcmp(env, "software") == 0);
}

uint32_t aof_crc32c(uint32_t crc, const void *data, size_t len) {
    return use_hw ? crc_hw(crc, data, len) : crc_sw(crc, data, len);
}

int aof_crc32c_hardware(void) { return use_hw; }

void aof_crc32c_force_software(int force_software) {
    use_hw = !force_software && HAVE_HW && hw_available();
}
