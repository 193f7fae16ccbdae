/* test_smap.c - the immutable hash map under the territory index and the
 * niche classification (rules/smap.c): every key built is found with its
 * values ascending and without duplicates, keys and values too long for a
 * slot live outside it, and keys never added are not found, whatever the
 * table's size (its probes wrap around the end of a table that is not a
 * power of two). Checked against a plain list of what was added. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../rules/smap.h"

#define MAX_VALS 8

/* What a test added: one entry per distinct (ns, key). */
struct ref {
    uint16_t ns;
    char key[SMAP_MAX_KEY + 1];
    size_t len;
    uint32_t vals[MAX_VALS]; /* ascending, distinct */
    uint32_t n;
};

static uint64_t rng = 0x2545f4914f6cdd1dULL;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* A key of 1..40 bytes (a third of them longer than a slot holds),
 * distinct from every other by its serial number. */
static size_t make_key(char *buf, uint32_t serial)
{
    int n = snprintf(buf, SMAP_MAX_KEY, "%u-", serial);
    size_t len = 1 + rnd() % 40;
    if (len < (size_t)n)
        return (size_t)n;
    for (size_t i = (size_t)n; i < len; i++)
        buf[i] = (char)('a' + rnd() % 26);
    return len;
}

/* Adds every value of r to b twice: descending, then ascending. */
static void add_all(struct smap_builder *b, const struct ref *r)
{
    for (uint32_t i = 0; i < 2 * r->n; i++) {
        uint32_t j = i < r->n ? r->n - 1 - i : i - r->n;
        cr_assert_eq(smap_builder_add(b, r->ns, r->key, r->len, r->vals[j]), 0);
    }
}

static void check_found(const struct smap *m, const struct ref *r)
{
    uint32_t n = 99;
    const uint32_t *v = smap_get(m, r->ns, r->key, r->len, &n);
    cr_assert_not_null(v, "key '%.*s' (ns %u) not found", (int)r->len, r->key, r->ns);
    cr_assert_eq(n, r->n, "key '%.*s': %u values, want %u", (int)r->len, r->key, n, r->n);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(v[i], r->vals[i], "key '%.*s' value %u", (int)r->len, r->key, i);
}

static void check_absent(const struct smap *m, uint16_t ns, const char *key, size_t len)
{
    uint32_t n = 99;
    cr_assert_null(smap_get(m, ns, key, len, &n), "'%.*s' (ns %u) found", (int)len, key, ns);
    cr_assert_eq(n, 0);
}

Test(smap, maps_of_every_size_find_what_was_added_and_nothing_else)
{
    static struct ref refs[300];
    for (uint32_t nkeys = 0; nkeys <= 300; nkeys += nkeys < 40 ? 1 : 37) {
        struct smap_builder b = {0};
        for (uint32_t k = 0; k < nkeys; k++) {
            struct ref *r = &refs[k];
            r->ns = (uint16_t)(rnd() % 3);
            r->len = make_key(r->key, k);
            r->n = 1 + rnd() % MAX_VALS; /* up to 3 inline, more spill */
            uint32_t v = rnd() % 50;
            for (uint32_t i = 0; i < r->n; i++)
                r->vals[i] = v += 1 + rnd() % 1000;
            add_all(&b, r);
        }
        struct smap m;
        cr_assert_eq(smap_build(&m, &b), 0);
        cr_assert_eq(b.n, 0, "the builder is emptied");
        for (uint32_t k = 0; k < nkeys; k++) {
            check_found(&m, &refs[k]);
            /* The same bytes in another namespace, a byte shorter or longer,
             * or with the last byte changed, are other keys. */
            struct ref *r = &refs[k];
            check_absent(&m, (uint16_t)(r->ns + 3), r->key, r->len);
            if (r->len > 1)
                check_absent(&m, r->ns, r->key, r->len - 1);
            char other[SMAP_MAX_KEY + 1];
            memcpy(other, r->key, r->len);
            other[r->len] = '~';
            check_absent(&m, r->ns, other, r->len + 1);
            other[r->len - 1] = '~';
            check_absent(&m, r->ns, other, r->len);
        }
        smap_free(&m);
    }
}

Test(smap, a_key_of_the_same_bytes_in_two_namespaces_keeps_two_value_lists)
{
    struct smap_builder b = {0};
    cr_assert_eq(smap_builder_add(&b, 1, "50309", 5, 7), 0);
    cr_assert_eq(smap_builder_add(&b, 2, "50309", 5, 9), 0);
    cr_assert_eq(smap_builder_add(&b, 1, "50309", 5, 3), 0);
    struct smap m;
    cr_assert_eq(smap_build(&m, &b), 0);
    uint32_t n;
    const uint32_t *v = smap_get(&m, 1, "50309", 5, &n);
    cr_assert_eq(n, 2);
    cr_assert(v[0] == 3 && v[1] == 7);
    v = smap_get(&m, 2, "50309", 5, &n);
    cr_assert_eq(n, 1);
    cr_assert_eq(v[0], 9);
    check_absent(&m, 0, "50309", 5);
    smap_free(&m);
}

Test(smap, an_empty_map_finds_nothing)
{
    struct smap_builder b = {0};
    struct smap m;
    cr_assert_eq(smap_build(&m, &b), 0);
    check_absent(&m, 0, "", 0);
    check_absent(&m, 0, "IA", 2);
    smap_free(&m);
    struct smap zero = {0}; /* never built: as empty */
    check_absent(&zero, 0, "IA", 2);
}

Test(smap, keys_over_the_limit_are_refused)
{
    struct smap_builder b = {0};
    char key[SMAP_MAX_KEY + 1];
    memset(key, 'k', sizeof key);
    cr_assert_eq(smap_builder_add(&b, 0, key, SMAP_MAX_KEY + 1, 1), -1);
    cr_assert_eq(smap_builder_add(&b, 0, key, SMAP_MAX_KEY, 2), 0);
    struct smap m;
    cr_assert_eq(smap_build(&m, &b), 0);
    uint32_t n;
    const uint32_t *v = smap_get(&m, 0, key, SMAP_MAX_KEY, &n);
    cr_assert(v && n == 1 && v[0] == 2);
    smap_free(&m);
}
