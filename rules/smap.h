/* smap.h - (private to rules/) an immutable hash map from (namespace, key
 * bytes) to a sorted list of uint32 values. Built once from a list of
 * (ns, key, value) triples; lookups do no allocation. Used for the
 * territory index (zips, prefixes, states) and for niche
 * classification (names, sources, keywords). */
#ifndef LEADROUTER_RULES_SMAP_H
#define LEADROUTER_RULES_SMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMAP_INLINE_KEY 12
#define SMAP_INLINE_VALS 3
#define SMAP_SPILL 0xff

/* Half a cache line, so that the largest map (every (niche, zip) of the
 * config) stays small enough to share the cache: a lookup usually touches
 * this and nothing else. Keys of up to SMAP_INLINE_KEY bytes and up to
 * SMAP_INLINE_VALS values live in the slot; longer ones in keys[] /
 * vals[]. */
struct smap_slot {
    uint32_t tag; /* the hash's high half, never 0; 0 = empty */
    uint16_t ns;
    uint8_t klen;
    uint8_t n; /* values in inl[], or SMAP_SPILL: vals[out.off], out.n of them */
    union {
        char key[SMAP_INLINE_KEY];
        uint32_t koff; /* key bytes in keys[] when klen > SMAP_INLINE_KEY */
    };
    union {
        uint32_t inl[SMAP_INLINE_VALS];
        struct {
            uint32_t off, n;
        } out;
    };
} __attribute__((aligned(32)));

/* Open addressing with linear probing, at a load of at most 0.5; the
 * hash's low half picks the home slot. */
struct smap {
    struct smap_slot *slots;
    uint32_t mask;
    char *keys;
    uint32_t *vals;
};

/* Collects triples before the build. */
struct smap_builder {
    struct smap_item *items;
    size_t n, cap;
    char *keys;
    size_t klen, kcap;
};

#define SMAP_MAX_KEY 128

int smap_builder_add(struct smap_builder *b, uint16_t ns, const char *key, size_t len, uint32_t val);
/* Builds m from b (values of one key sorted ascending, duplicates dropped)
 * and empties b. 0, or -1 when out of memory. */
int smap_build(struct smap *m, struct smap_builder *b);
void smap_builder_free(struct smap_builder *b);
void smap_free(struct smap *m);

/* Zeroed memory aligned to a cache line; large blocks are aligned to 2 MiB
 * and marked for transparent huge pages, so that random lookups into them
 * do not also miss the TLB (software prefetches are dropped on a TLB
 * miss). Free with free(). */
void *smap_alloc_table(size_t bytes);

/* The values of (ns, key), or NULL with *n = 0. */
const uint32_t *smap_get(const struct smap *m, uint16_t ns, const char *key, size_t len, uint32_t *n);

/* The hash of (ns, key), for the _h variants that take it precomputed. */
uint64_t smap_hash(uint16_t ns, const char *key, size_t len);
const uint32_t *smap_get_h(const struct smap *m, uint16_t ns, const char *key, size_t len, uint64_t h,
                           uint32_t *n);
/* Starts loading the slot of a hash into the cache. */
void smap_prefetch_h(const struct smap *m, uint64_t h);

/* Copies s into buf (SMAP_MAX_KEY bytes) lower- or upper-cased, dropping
 * spaces when strip is set; returns the length, or -1 if too long. */
int smap_fold(char *buf, const char *s, size_t len, bool upper, bool strip);

#endif
