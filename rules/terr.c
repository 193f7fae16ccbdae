/* terr.c - the territory index: exact zips, zip prefixes, states and a
 * 1-degree grid for radius territories, each keyed by niche. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GRID_MAX_CELLS 4096
#define KM_PER_DEG 111.195

static int cell_lat(double lat)
{
    int c = (int)floor(lat);
    return c < -90 ? -90 : c > 89 ? 89 : c;
}

static int cell_lon(double lon)
{
    int c = (int)floor(lon);
    return ((c % 360) + 360) % 360;
}

/* A grid cell of a niche as one non-zero integer. */
static uint64_t cell_key(uint32_t ns, int la, int lo)
{
    return (uint64_t)(ns + 1) << 40 | (uint64_t)(uint32_t)(la + 90) << 20 | (uint64_t)(uint32_t)lo;
}

static uint32_t cell_hash(uint64_t key)
{
    uint64_t h = key * 0x9e3779b97f4a7c15ULL;
    return (uint32_t)(h >> 32 ^ h);
}

/* (cell key, dealer) pairs collected before the cell index is built. */
struct cell_pairs {
    struct cell_pair {
        uint64_t key;
        uint32_t dealer;
    } *v;
    size_t n, cap;
};

static int cell_add(struct cell_pairs *cp, uint64_t key, uint32_t di)
{
    if (cp->n == cp->cap) {
        size_t nc = cp->cap ? cp->cap * 2 : 256;
        struct cell_pair *nv = realloc(cp->v, nc * sizeof *nv);
        if (!nv)
            return -1;
        cp->v = nv;
        cp->cap = nc;
    }
    cp->v[cp->n++] = (struct cell_pair){key, di};
    return 0;
}

/* Adds radius dealer di to every grid cell its circle may touch, or to the
 * niche's wide list when that would be too many cells. */
static int add_radius(struct terr_index *ti, struct cell_pairs *cells, uint16_t ns, uint32_t di,
                      const struct rules_dealer *d)
{
    double dlat = d->km / KM_PER_DEG;
    double lo_lat = d->lat - dlat, hi_lat = d->lat + dlat;
    double maxabs = fmin(89.0, fmax(fabs(lo_lat), fabs(hi_lat)));
    double dlon = d->km / (KM_PER_DEG * cos(maxabs * M_PI / 180.0));
    int la0 = cell_lat(lo_lat), la1 = cell_lat(hi_lat);
    long nlon = (long)floor(d->lon + dlon) - (long)floor(d->lon - dlon) + 1;
    if (hi_lat >= 89.0 || lo_lat <= -89.0 || dlon >= 180.0 || (la1 - la0 + 1) * nlon > GRID_MAX_CELLS) {
        uint32_t *w = realloc(ti->wide[ns], (ti->n_wide[ns] + 1) * sizeof *w);
        if (!w)
            return -1;
        w[ti->n_wide[ns]++] = di;
        ti->wide[ns] = w;
        return 0;
    }
    int lo0 = (int)floor(d->lon - dlon);
    for (int la = la0; la <= la1; la++)
        for (long k = 0; k < nlon; k++)
            if (cell_add(cells, cell_key(ns, la, cell_lon(lo0 + (double)k)), di))
                return -1;
    return 0;
}

static int pair_cmp(const void *a, const void *b)
{
    const struct cell_pair *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->dealer > y->dealer) - (x->dealer < y->dealer);
}

/* The cell index from the collected pairs: per cell, its dealers ascending
 * without duplicates, each with a copy of its compact radius. */
static int cells_build(struct terr_index *ti, const struct rules_table *t, struct cell_pairs *cp)
{
    if (cp->n)
        qsort(cp->v, cp->n, sizeof *cp->v, pair_cmp);
    size_t nkeys = 0, nent = 0;
    for (size_t i = 0; i < cp->n; i++) {
        bool newkey = i == 0 || cp->v[i].key != cp->v[i - 1].key;
        nkeys += newkey;
        nent += newkey || cp->v[i].dealer != cp->v[i - 1].dealer;
    }
    uint32_t size = 16;
    while (size < nkeys * 2)
        size <<= 1;
    ti->cslots = smap_alloc_table(size * sizeof *ti->cslots);
    ti->cgeo = smap_alloc_table((nent ? nent : 1) * sizeof *ti->cgeo);
    if (!ti->cslots || !ti->cgeo)
        return -1;
    ti->cmask = size - 1;
    uint32_t o = 0;
    for (size_t i = 0; i < cp->n;) {
        uint64_t key = cp->v[i].key;
        uint32_t off = o;
        for (; i < cp->n && cp->v[i].key == key; i++) {
            uint32_t di = cp->v[i].dealer;
            if (o > off && ti->cgeo[o - 1].dealer == di)
                continue;
            const struct rules_geo *g = &t->geo[di];
            ti->cgeo[o++] = (struct terr_cgeo){g->x, g->y, g->z, g->in, g->out, di};
        }
        uint32_t p = cell_hash(key) & ti->cmask;
        while (ti->cslots[p].key)
            p = (p + 1) & ti->cmask;
        ti->cslots[p] = (struct terr_cslot){key, off, o - off};
    }
    return 0;
}

static const struct terr_cslot *cell_find(const struct terr_index *ti, uint64_t key)
{
    if (!ti->cslots)
        return NULL;
    for (uint32_t p = cell_hash(key) & ti->cmask;; p = (p + 1) & ti->cmask) {
        const struct terr_cslot *c = &ti->cslots[p];
        if (c->key == key)
            return c;
        if (!c->key)
            return NULL;
    }
}

int terr_build(struct terr_index *ti, const struct rules_table *t)
{
    struct smap_builder zips = {0}, prefixes = {0}, states = {0};
    struct cell_pairs cells = {0};
    memset(ti, 0, sizeof *ti);
    uint32_t nn = t->n_niches ? t->n_niches : 1;
    ti->prefix_lens = calloc(nn, sizeof *ti->prefix_lens);
    ti->wide = calloc(nn, sizeof *ti->wide);
    ti->n_wide = calloc(nn, sizeof *ti->n_wide);
    if (!ti->prefix_lens || !ti->wide || !ti->n_wide)
        goto fail;
    ti->n_niches = nn;
    for (uint32_t di = 0; di < t->n_dealers; di++) {
        const struct rules_dealer *d = &t->dealers[di];
        for (uint32_t k = 0; k < d->n_niches; k++) {
            uint16_t ns = (uint16_t)d->niches[k];
            for (uint32_t i = 0; i < d->n_zips; i++)
                if (smap_builder_add(&zips, ns, d->zips[i], strlen(d->zips[i]), di))
                    goto fail;
            for (uint32_t i = 0; i < d->n_prefixes; i++) {
                size_t len = strlen(d->prefixes[i]);
                if (smap_builder_add(&prefixes, ns, d->prefixes[i], len, di))
                    goto fail;
                ti->prefix_lens[ns] |= 1u << (len & 31);
            }
            for (uint32_t i = 0; i < d->n_states; i++)
                if (smap_builder_add(&states, ns, d->states[i], strlen(d->states[i]), di))
                    goto fail;
            if (d->has_radius && add_radius(ti, &cells, ns, di, d))
                goto fail;
        }
    }
    if (smap_build(&ti->zips, &zips) || smap_build(&ti->prefixes, &prefixes) ||
        smap_build(&ti->states, &states) || cells_build(ti, t, &cells))
        goto fail;
    free(cells.v);
    return 0;
fail:
    smap_builder_free(&zips);
    smap_builder_free(&prefixes);
    smap_builder_free(&states);
    free(cells.v);
    terr_free(ti);
    return -1;
}

void terr_free(struct terr_index *ti)
{
    if (!ti)
        return;
    smap_free(&ti->zips);
    smap_free(&ti->prefixes);
    smap_free(&ti->states);
    free(ti->cslots);
    free(ti->cgeo);
    if (ti->wide)
        for (uint32_t i = 0; i < ti->n_niches; i++)
            free(ti->wide[i]);
    free(ti->wide);
    free(ti->n_wide);
    free(ti->prefix_lens);
    memset(ti, 0, sizeof *ti);
}

static void add_key(struct terr_keys *k, enum terr_map map, const char *key, int len)
{
    if (k->n == TERR_MAX_KEYS)
        return;
    k->map[k->n] = (uint8_t)map;
    k->len[k->n] = (uint8_t)len;
    k->hash[k->n] = smap_hash(k->ns, key, (size_t)len);
    k->n++;
}

void terr_keys(const struct terr_index *ti, uint32_t niche, const struct lead *l, struct terr_keys *k)
{
    int len;
    k->ns = (uint16_t)niche;
    k->n = 0;
    if (l->zip.len && (len = smap_fold(k->zip, l->zip.p, l->zip.len, true, true)) > 0) {
        add_key(k, TM_ZIP, k->zip, len);
        uint32_t lens = ti->prefix_lens[niche];
        for (int pl = 1; pl <= len && pl < 32; pl++)
            if (lens & (1u << pl))
                add_key(k, TM_PREFIX, k->zip, pl);
    }
    if (l->state.len && (len = smap_fold(k->state, l->state.p, l->state.len, true, false)) > 0)
        add_key(k, TM_STATE, k->state, len);
    if (l->has_geo && k->n < TERR_MAX_KEYS) {
        k->map[k->n] = TM_CELL;
        k->len[k->n] = 0;
        k->hash[k->n] = cell_key(niche, cell_lat(l->lat), cell_lon(l->lon));
        k->n++;
    }
}

static const struct smap *key_map(const struct terr_index *ti, enum terr_map m)
{
    return m == TM_ZIP ? &ti->zips : m == TM_PREFIX ? &ti->prefixes : &ti->states;
}

void terr_prefetch_slots(const struct terr_index *ti, const struct terr_keys *k)
{
    for (int i = 0; i < k->n; i++) {
        enum terr_map m = (enum terr_map)k->map[i];
        if (m != TM_CELL)
            smap_prefetch_h(key_map(ti, m), k->hash[i]);
        else if (ti->cslots)
            __builtin_prefetch(&ti->cslots[cell_hash(k->hash[i]) & ti->cmask]);
    }
}

int terr_postings(const struct terr_index *ti, const struct terr_keys *k, struct plist *L)
{
    static const uint8_t match[] = {[TM_ZIP] = MATCH_ZIP, [TM_PREFIX] = MATCH_PREFIX, [TM_STATE] = MATCH_STATE};
    int nl = 0;
    for (int i = 0; i < k->n; i++) {
        enum terr_map m = (enum terr_map)k->map[i];
        if (m == TM_CELL) {
            const struct terr_cslot *c = cell_find(ti, k->hash[i]);
            if (c && c->n)
                L[nl++] = (struct plist){ti->cgeo + c->off, c->n, MATCH_RADIUS, PL_CELL};
            continue;
        }
        uint32_t n;
        const uint32_t *ds = smap_get_h(key_map(ti, m), k->ns, m == TM_STATE ? k->state : k->zip, k->len[i],
                                        k->hash[i], &n);
        if (n)
            L[nl++] = (struct plist){ds, n, match[m], PL_PLAIN};
    }
    if (ti->n_wide[k->ns] && k->n && k->map[k->n - 1] == TM_CELL)
        L[nl++] = (struct plist){ti->wide[k->ns], ti->n_wide[k->ns], MATCH_RADIUS, PL_WIDE};
    return nl;
}

void terr_prefetch_dealers(const struct rules_table *t, const struct plist *L, int nl)
{
    for (int i = 0; i < nl; i++) {
        if (L[i].kind == PL_CELL) {
            /* The cell's run: its dealers' lines follow once it is filtered. */
            const char *p = L[i].v, *end = p + L[i].n * sizeof(struct terr_cgeo);
            for (; p < end; p += 64)
                __builtin_prefetch(p);
            continue;
        }
        const uint32_t *v = L[i].v;
        for (uint32_t j = 0; j < L[i].n; j++)
            __builtin_prefetch(L[i].kind == PL_WIDE ? (const void *)&t->geo[v[j]] : (const void *)&t->dhot[v[j]]);
    }
}

static inline void hit(struct terr_hits *h, uint32_t *nw, uint32_t d, uint8_t m)
{
    uint32_t w = d >> 6;
    if (!h->bits[w])
        h->words[(*nw)++] = w;
    h->bits[w] |= 1ULL << (d & 63);
    if (m > h->best[d])
        h->best[d] = m;
}

/* The verdicts of the dealers of bitmap word wi, ascending; clears them. */
static inline void emit_word(struct terr_hits *h, uint32_t wi, uint32_t *out)
{
    uint64_t b = h->bits[wi];
    h->bits[wi] = 0;
    for (; b; b &= b - 1) {
        uint32_t d = wi << 6 | (uint32_t)__builtin_ctzll(b);
        __builtin_prefetch(&h->dhot[d]);
        __builtin_prefetch(&h->dweight[d]);
        h->v[(*out)++] = (struct rules_verdict){.dealer = d, .rr_slot = h->rr_base + d, .match = h->best[d]};
        h->best[d] = 0;
    }
}

void terr_merge(const struct rules_table *t, struct plist *L, int nl, struct terr_hits *h)
{
    /* The union of the lists as a bitmap over the dealers; a dealer found in
     * several lists becomes one verdict with its most specific match. Grid
     * cells name every radius dealer near the lead: keep those whose circle
     * holds it. */
    const double *u = h->u;
    uint32_t nw = 0;
    for (int li = 0; li < nl; li++) {
        uint32_t n = L[li].n;
        uint8_t m = L[li].match;
        float uf[3] = {0};
        if (L[li].kind != PL_PLAIN) /* radius lists come only with coordinates */
            uf[0] = (float)u[0], uf[1] = (float)u[1], uf[2] = (float)u[2];
        if (L[li].kind == PL_CELL) {
            const struct terr_cgeo *g = L[li].v;
            for (uint32_t j = 0; j < n; j++)
                if (terr_in_radius_g(t, g[j].dealer, g[j].x, g[j].y, g[j].z, g[j].in, g[j].out, u, uf))
                    hit(h, &nw, g[j].dealer, m);
        } else if (L[li].kind == PL_WIDE) {
            const uint32_t *v = L[li].v;
            for (uint32_t j = 0; j < n; j++)
                if (terr_in_radius(t, v[j], u, uf))
                    hit(h, &nw, v[j], m);
        } else {
            const uint32_t *v = L[li].v;
            for (uint32_t j = 0; j < n; j++)
                hit(h, &nw, v[j], m);
        }
    }
    /* The words in ascending order: few, usually sorted already; many, a
     * scan of their range. */
    uint32_t *w = h->words, out = 0;
    if (nw <= 32) {
        for (uint32_t i = 1; i < nw; i++) {
            uint32_t x = w[i], j = i;
            for (; j > 0 && w[j - 1] > x; j--)
                w[j] = w[j - 1];
            w[j] = x;
        }
        for (uint32_t i = 0; i < nw; i++)
            emit_word(h, w[i], &out);
    } else {
        uint32_t lo = UINT32_MAX, hi = 0;
        for (uint32_t i = 0; i < nw; i++) {
            lo = w[i] < lo ? w[i] : lo;
            hi = w[i] > hi ? w[i] : hi;
        }
        for (uint32_t i = lo; i <= hi; i++)
            if (h->bits[i])
                emit_word(h, i, &out);
    }
    h->n = out;
}
