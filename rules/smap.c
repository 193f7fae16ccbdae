/* smap.c - immutable open-addressing hash map, see smap.h. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "smap.h"

_Static_assert(sizeof(struct smap_slot) == 32, "smap_slot: half a cache line");

struct smap_item {
    uint16_t ns;
    uint16_t klen;
    uint32_t koff;
    uint32_t val;
    uint64_t hash;
};

/* A word-at-a-time multiplicative hash of (ns, key); never 0 (0 marks an
 * empty slot). Keys are short, so a few multiplications. */
uint64_t smap_hash(uint16_t ns, const char *key, size_t len)
{
    const uint64_t k = 0x9fb21c651e98df25ULL;
    uint64_t h = (0x243f6a8885a308d3ULL ^ ns) * k ^ len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, key, 8);
        h = (h ^ w) * k;
        h ^= h >> 31;
        key += 8;
        len -= 8;
    }
    if (len) {
        /* The last 1-7 bytes in one word without a byte loop: two
         * overlapping 4-byte loads, or bytes 0, len/2 and len-1 (with the
         * length mixed in above, either way every byte counts). */
        uint64_t w;
        if (len >= 4) {
            uint32_t a, b;
            memcpy(&a, key, 4);
            memcpy(&b, key + len - 4, 4);
            w = a | (uint64_t)b << 32;
        } else {
            w = (uint64_t)(unsigned char)key[0] | (uint64_t)(unsigned char)key[len / 2] << 8 |
                (uint64_t)(unsigned char)key[len - 1] << 16;
        }
        h = (h ^ w) * k;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h ? h : 1;
}

/* What a slot keeps of the hash: its high half, never 0. */
static inline uint32_t slot_tag(uint64_t h)
{
    uint32_t t = (uint32_t)(h >> 32);
    return t ? t : 1;
}

int smap_builder_add(struct smap_builder *b, uint16_t ns, const char *key, size_t len, uint32_t val)
{
    if (len > SMAP_MAX_KEY)
        return -1;
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        struct smap_item *ni = realloc(b->items, nc * sizeof *ni);
        if (!ni)
            return -1;
        b->items = ni;
        b->cap = nc;
    }
    if (b->klen + len > b->kcap) {
        size_t nc = b->kcap ? b->kcap * 2 : 1024;
        while (nc < b->klen + len)
            nc *= 2;
        char *nk = realloc(b->keys, nc);
        if (!nk)
            return -1;
        b->keys = nk;
        b->kcap = nc;
    }
    memcpy(b->keys + b->klen, key, len);
    b->items[b->n++] = (struct smap_item){.ns = ns, .klen = (uint16_t)len, .koff = (uint32_t)b->klen,
                                          .val = val, .hash = smap_hash(ns, key, len)};
    b->klen += len;
    return 0;
}

#define HUGE_PAGE (2u << 20)

void *smap_alloc_table(size_t bytes)
{
    void *p;
    if (bytes < HUGE_PAGE / 2) {
        p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    } else {
        bytes = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
        p = aligned_alloc(HUGE_PAGE, bytes);
        if (p)
            (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: failure is harmless */
    }
    if (p)
        memset(p, 0, bytes);
    return p;
}

static const char *sort_keys; /* only during smap_build's qsort */

static int item_cmp(const void *a, const void *b)
{
    const struct smap_item *x = a, *y = b;
    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    if (x->ns != y->ns)
        return x->ns < y->ns ? -1 : 1;
    if (x->klen != y->klen)
        return x->klen < y->klen ? -1 : 1;
    int c = memcmp(sort_keys + x->koff, sort_keys + y->koff, x->klen);
    if (c)
        return c;
    return x->val < y->val ? -1 : x->val > y->val;
}

static bool same_key(const struct smap_item *x, const struct smap_item *y, const char *keys)
{
    return x->hash == y->hash && x->ns == y->ns && x->klen == y->klen &&
           memcmp(keys + x->koff, keys + y->koff, x->klen) == 0;
}

int smap_build(struct smap *m, struct smap_builder *b)
{
    memset(m, 0, sizeof *m);
    sort_keys = b->keys;
    if (b->n)
        qsort(b->items, b->n, sizeof *b->items, item_cmp);
    size_t nkeys = 0;
    for (size_t i = 0; i < b->n; i++)
        if (i == 0 || !same_key(&b->items[i - 1], &b->items[i], b->keys))
            nkeys++;
    uint32_t size = 16;
    while (size < nkeys * 2)
        size <<= 1;
    m->slots = smap_alloc_table(size * sizeof *m->slots);
    m->vals = malloc((b->n ? b->n : 1) * sizeof *m->vals);
    m->keys = malloc(b->klen ? b->klen : 1);
    if (!m->slots || !m->vals || !m->keys) {
        smap_free(m);
        return -1;
    }
    m->mask = size - 1;
    if (b->klen)
        memcpy(m->keys, b->keys, b->klen);
    uint32_t nv = 0;
    for (size_t i = 0; i < b->n;) {
        size_t j = i;
        const struct smap_item *it = &b->items[i];
        struct smap_slot s = {.tag = slot_tag(it->hash), .klen = (uint8_t)it->klen, .ns = it->ns};
        if (it->klen > SMAP_INLINE_KEY)
            s.koff = it->koff;
        else
            memcpy(s.key, b->keys + it->koff, it->klen);
        uint32_t off = nv;
        for (; j < b->n && same_key(it, &b->items[j], b->keys); j++)
            if (j == i || b->items[j].val != b->items[j - 1].val)
                m->vals[nv++] = b->items[j].val;
        if (nv - off <= SMAP_INLINE_VALS) {
            s.n = (uint8_t)(nv - off);
            memcpy(s.inl, m->vals + off, s.n * sizeof *s.inl);
            nv = off;
        } else {
            s.n = SMAP_SPILL;
            s.out.off = off;
            s.out.n = nv - off;
        }
        uint32_t p = (uint32_t)it->hash & m->mask;
        while (m->slots[p].tag)
            p = (p + 1) & m->mask;
        m->slots[p] = s;
        i = j;
    }
    smap_builder_free(b);
    return 0;
}

void smap_builder_free(struct smap_builder *b)
{
    free(b->items);
    free(b->keys);
    memset(b, 0, sizeof *b);
}

void smap_free(struct smap *m)
{
    free(m->slots);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static inline bool key_eq(const char *a, const char *b, size_t len)
{
    /* Keys are short: a plain loop beats a call to memcmp. */
    for (size_t i = 0; i < len; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

const uint32_t *smap_get(const struct smap *m, uint16_t ns, const char *key, size_t len, uint32_t *n)
{
    return smap_get_h(m, ns, key, len, smap_hash(ns, key, len), n);
}

const uint32_t *smap_get_h(const struct smap *m, uint16_t ns, const char *key, size_t len, uint64_t h,
                           uint32_t *n)
{
    *n = 0;
    if (!m->slots)
        return NULL;
    uint32_t tag = slot_tag(h);
    for (uint32_t p = (uint32_t)h & m->mask;; p = (p + 1) & m->mask) {
        const struct smap_slot *s = &m->slots[p];
        if (!s->tag)
            return NULL;
        if (s->tag == tag && s->ns == ns && s->klen == len &&
            key_eq(len > SMAP_INLINE_KEY ? m->keys + s->koff : s->key, key, len)) {
            if (s->n != SMAP_SPILL) {
                *n = s->n;
                return s->inl;
            }
            *n = s->out.n;
            return m->vals + s->out.off;
        }
    }
}

void smap_prefetch_h(const struct smap *m, uint64_t h)
{
    if (!m->slots)
        return;
    /* The home slot's line, and the next slot's (the same line, or the one
     * a probe past the home slot reads next). */
    uint32_t p = (uint32_t)h & m->mask;
    __builtin_prefetch(&m->slots[p]);
    __builtin_prefetch(&m->slots[(p + 1) & m->mask]);
}

int smap_fold(char *buf, const char *s, size_t len, bool upper, bool strip)
{
    /* Branch-free ASCII case folding: flip bit 5 of letters of the other case. */
    unsigned char lo = upper ? 'a' : 'A';
    if (len <= SMAP_MAX_KEY) {
        /* Usually no space to strip: one straight pass. */
        bool space = false;
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)s[i];
            space |= c == ' ';
            buf[i] = (char)(c ^ (((unsigned)(c - lo) < 26u) << 5));
        }
        if (!strip || !space)
            return (int)len;
    } else if (!strip) {
        return -1;
    }
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ')
            continue;
        if (o == SMAP_MAX_KEY)
            return -1;
        buf[o++] = (char)(c ^ (((unsigned)(c - lo) < 26u) << 5));
    }
    return (int)o;
}
