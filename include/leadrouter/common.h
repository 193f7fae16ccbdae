/* common.h - tiny shared definitions: string slices, attribute macros, the
 * byte hash of the daemon's small hash tables and the UTF-8 check. */
#ifndef LEADROUTER_COMMON_H
#define LEADROUTER_COMMON_H

#include <stdint.h>
#include <string.h>

/* Results that must be checked. */
#define LR_WUR __attribute__((warn_unused_result))

/* A byte string that is not NUL-terminated. It never owns its bytes: it
 * points into whatever buffer holds the data (a decoded lead, a table). */
struct lr_str {
    const char *p;
    uint32_t len;
};

static inline int lr_str_eq(struct lr_str a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && (n == 0 || memcmp(a.p, s, n) == 0);
}

/* Copies at most n bytes of src (stopping at a NUL) into dst of cap > 0
 * bytes, truncated to fit, always terminated; snprintf's result without
 * its format parsing, for hot paths. */
static inline void lr_copy(char *dst, size_t cap, const char *src, size_t n)
{
    size_t len = strnlen(src, n < cap - 1 ? n : cap - 1);
    memcpy(dst, src, len);
    dst[len] = 0;
}

/* FNV-1a over n bytes: the hash of the daemon's small in-memory tables
 * (the in-flight set, a batch's stats fields, the stats label sets). */
static inline uint64_t lr_fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* n bytes of well-formed UTF-8 (RFC 3629: no overlong forms, no UTF-16
 * surrogates, nothing past U+10FFFF). */
static inline int lr_utf8_valid(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
        if (c >= 0xc2 && c <= 0xdf)
            k = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* past U+10FFFF */
        } else
            return 0;
        if (n - i <= k || p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t j = 2; j <= k; j++)
            if ((p[i + j] & 0xc0) != 0x80)
                return 0;
        i += k + 1;
    }
    return 1;
}

#endif
