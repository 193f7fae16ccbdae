/* terr.c - the territory index: exact zips, zip prefixes, states and a
 * grid for radius territories, each keyed by niche. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GRID_MAX_CELLS 4096      /* per dealer and niche; more: the niche's wide list */
#define GRID_MAX_SCALE 16        /* cells of 1/16 degree at the finest */
#define GRID_MAX_PAIRS (1u << 20) /* (cell, dealer) entries the grid may hold in all */
#define KM_PER_DEG 111.195

/* Grid cells are 1/scale degree on a side. */
static int cell_lat(uint32_t scale, double lat)
{
    int s = (int)scale;
    int c = (int)floor(lat * s);
    return c < -90 * s ? -90 * s : c > 90 * s - 1 ? 90 * s - 1 : c;
}

static long cell_lon(uint32_t scale, double lon)
{
    return (long)floor(lon * scale);
}

/* Column c of the grid, wrapped around the antimeridian. */
static int cell_col(uint32_t scale, long c)
{
    long m = 360L * scale;
    return (int)(((c % m) + m) % m);
}

/* The block of cells dealer d's circle may touch: rows la0..la1, nlon
 * columns from lo0. Returns the number of cells, or 0 when the circle
 * belongs in the wide list (near a pole, or too many cells). */
static long radius_cells(uint32_t scale, const struct rules_dealer *d, int *la0, int *la1, long *lo0, long *nlon)
{
    double dlat = d->km / KM_PER_DEG;
    double lo_lat = d->lat - dlat, hi_lat = d->lat + dlat;
    double maxabs = fmin(89.0, fmax(fabs(lo_lat), fabs(hi_lat)));
    double dlon = d->km / (KM_PER_DEG * cos(maxabs * M_PI / 180.0));
    if (hi_lat >= 89.0 || lo_lat <= -89.0 || dlon >= 180.0)
        return 0;
    *la0 = cell_lat(scale, lo_lat);
    *la1 = cell_lat(scale, hi_lat);
    *lo0 = cell_lon(scale, d->lon - dlon);
    *nlon = cell_lon(scale, d->lon + dlon) - *lo0 + 1;
    long n = (*la1 - *la0 + 1) * *nlon;
    return n > GRID_MAX_CELLS ? 0 : n;
}

static int km_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The grid's scale for these dealers: the finest (up to 1/16 degree) whose
 * cells are still as wide as the median radius, so that a typical circle
 * lands in a few cells and a lead's cell names few dealers whose circle
 * misses it (at 20 km radii, a 1-degree cell holds ~18 times the area of
 * one circle: every lead would test the circles of a whole region). Coarser
 * again while the grid would hold more than GRID_MAX_PAIRS entries, which
 * only a mix of many small and many wide circles comes near. */
static uint32_t grid_scale(const struct rules_table *t)
{
    double *km = malloc((t->n_dealers ? t->n_dealers : 1) * sizeof *km);
    uint32_t n = 0, scale = 1;
    if (!km)
        return 1;
    for (uint32_t di = 0; di < t->n_dealers; di++)
        if (t->dealers[di].has_radius)
            km[n++] = t->dealers[di].km;
    if (n) {
        qsort(km, n, sizeof *km, km_cmp);
        double median = km[n / 2];
        while (scale < GRID_MAX_SCALE && KM_PER_DEG / (scale * 2) >= median)
            scale *= 2;
    }
    free(km);
    for (; scale > 1; scale /= 2) {
        uint64_t pairs = 0;
        for (uint32_t di = 0; di < t->n_dealers; di++) {
            const struct rules_dealer *d = &t->dealers[di];
            int la0, la1;
            long lo0, nlon;
            if (d->has_radius)
                pairs += (uint64_t)radius_cells(scale, d, &la0, &la1, &lo0, &nlon) * d->n_niches;
        }
        if (pairs <= GRID_MAX_PAIRS)
            break;
    }
    return scale;
}

/* A grid cell of a niche as one non-zero integer. */
static uint64_t cell_key(uint32_t scale, uint32_t ns, int la, int lo)
{
    return (uint64_t)(ns + 1) << 40 | (uint64_t)(uint32_t)(la + 90 * (int)scale) << 20 | (uint64_t)(uint32_t)lo;
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
    uint32_t n;
};

static int cell_add(struct cell_pairs *cp, uint64_t key, uint32_t di)
{
    struct cell_pair *nv = rules_grow(cp->v, cp->n, sizeof *nv);
    if (!nv)
        return -1;
    cp->v = nv;
    cp->v[cp->n++] = (struct cell_pair){key, di};
    return 0;
}

/* Adds radius dealer di to every grid cell its circle may touch, or to the
 * niche's wide list when that would be too many cells. */
static int add_radius(struct terr_index *ti, struct cell_pairs *cells, uint16_t ns, uint32_t di,
                      const struct rules_dealer *d)
{
    int la0, la1;
    long lo0, nlon;
    if (!radius_cells(ti->scale, d, &la0, &la1, &lo0, &nlon)) {
        uint32_t *w = realloc(ti->wide[ns], (ti->n_wide[ns] + 1) * sizeof *w);
        if (!w)
            return -1;
        w[ti->n_wide[ns]++] = di;
        ti->wide[ns] = w;
        return 0;
    }
    for (int la = la0; la <= la1; la++)
        for (long k = 0; k < nlon; k++)
            if (cell_add(cells, cell_key(ti->scale, ns, la, cell_col(ti->scale, lo0 + k)), di))
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
    ti->scale = grid_scale(t);
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
        k->hash[k->n] = cell_key(ti->scale, niche, cell_lat(ti->scale, l->lat),
                                 cell_col(ti->scale, cell_lon(ti->scale, l->lon)));
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

/* Entry j of radius list p (PL_CELL or PL_WIDE): its dealer in *d, and
 * whether that dealer's circle holds u. */
static inline bool plist_in_radius(const struct rules_table *t, const struct plist *p, uint32_t j, const double *u,
                                   const float *uf, uint32_t *d)
{
    if (p->kind == PL_CELL) {
        const struct terr_cgeo *g = (const struct terr_cgeo *)p->v + j;
        *d = g->dealer;
        return terr_in_radius_g(t, g->dealer, g->x, g->y, g->z, g->in, g->out, u, uf);
    }
    *d = ((const uint32_t *)p->v)[j];
    return terr_in_radius(t, *d, u, uf);
}

void terr_prefetch_dealers(const struct rules_table *t, const struct plist *L, int nl, const int64_t *rr)
{
    for (int i = 0; i < nl; i++) {
        if (L[i].kind == PL_CELL) {
            /* The cell's run: its dealers' lines follow once it is checked. */
            const char *p = L[i].v, *end = p + L[i].n * sizeof(struct terr_cgeo);
            for (; p < end; p += 64)
                __builtin_prefetch(p);
            continue;
        }
        const uint32_t *v = L[i].v;
        for (uint32_t j = 0; j < L[i].n; j++) {
            if (L[i].kind == PL_WIDE) {
                __builtin_prefetch(&t->geo[v[j]]);
                continue;
            }
            __builtin_prefetch(&t->dhot[v[j]]);
            __builtin_prefetch(&t->dweight[v[j]]);
            if (rr)
                __builtin_prefetch(&rr[v[j]]);
        }
    }
}

int terr_resolve_radius(const struct rules_table *t, struct plist *L, int nl, const double u[3], uint32_t *hits,
                        uint32_t cap, const int64_t *rr, bool nearest)
{
    float uf[3] = {(float)u[0], (float)u[1], (float)u[2]};
    uint32_t n = 0;
    int nrad = 0;
    for (int i = 0; i < nl; i++) {
        if (L[i].kind == PL_PLAIN)
            continue;
        nrad++;
        for (uint32_t j = 0; j < L[i].n; j++) {
            uint32_t d;
            if (!plist_in_radius(t, &L[i], j, u, uf, &d))
                continue;
            if (n == cap)
                return nl; /* many: decide checks them itself */
            hits[n++] = d;
        }
    }
    if (!nrad)
        return nl;
    for (uint32_t j = 0; j < n; j++) {
        __builtin_prefetch(&t->dhot[hits[j]]);
        __builtin_prefetch(&t->dweight[hits[j]]);
        if (rr)
            __builtin_prefetch(&rr[hits[j]]);
        if (nearest)
            __builtin_prefetch(&t->geo_exact[hits[j]]);
    }
    /* The radius lists are last (terr_postings adds them after the others)
     * but need not be: drop them wherever they are, then add the hits. */
    int o = 0;
    for (int i = 0; i < nl; i++)
        if (L[i].kind == PL_PLAIN)
            L[o++] = L[i];
    if (n)
        L[o++] = (struct plist){hits, n, MATCH_RADIUS, PL_PLAIN};
    return o;
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
        if (L[li].kind == PL_PLAIN) {
            const uint32_t *v = L[li].v;
            for (uint32_t j = 0; j < n; j++)
                hit(h, &nw, v[j], m);
            continue;
        }
        float uf[3] = {(float)u[0], (float)u[1], (float)u[2]}; /* radius lists come only with coordinates */
        for (uint32_t j = 0; j < n; j++) {
            uint32_t d;
            if (plist_in_radius(t, &L[li], j, u, uf, &d))
                hit(h, &nw, d, m);
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
