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

static void cell_key(char key[4], int la, int lo)
{
    int16_t a = (int16_t)la, b = (int16_t)lo;
    memcpy(key, &a, 2);
    memcpy(key + 2, &b, 2);
}

/* Adds radius dealer di to every grid cell its circle may touch, or to the
 * niche's wide list when that would be too many cells. */
static int add_radius(struct terr_index *ti, struct smap_builder *cells, uint16_t ns, uint32_t di,
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
        for (long k = 0; k < nlon; k++) {
            char key[4];
            cell_key(key, la, cell_lon(lo0 + (double)k));
            if (smap_builder_add(cells, ns, key, 4, di))
                return -1;
        }
    return 0;
}

int terr_build(struct terr_index *ti, const struct rules_table *t)
{
    struct smap_builder zips = {0}, prefixes = {0}, states = {0}, cells = {0};
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
        smap_build(&ti->states, &states) || smap_build(&ti->cells, &cells))
        goto fail;
    return 0;
fail:
    smap_builder_free(&zips);
    smap_builder_free(&prefixes);
    smap_builder_free(&states);
    smap_builder_free(&cells);
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
    smap_free(&ti->cells);
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
    if (l->has_geo) {
        cell_key(k->cell, cell_lat(l->lat), cell_lon(l->lon));
        add_key(k, TM_CELL, k->cell, 4);
    }
}

static const struct smap *key_map(const struct terr_index *ti, enum terr_map m)
{
    return m == TM_ZIP ? &ti->zips : m == TM_PREFIX ? &ti->prefixes : m == TM_STATE ? &ti->states : &ti->cells;
}

static const char *key_bytes(const struct terr_keys *k, enum terr_map m)
{
    return m == TM_STATE ? k->state : m == TM_CELL ? k->cell : k->zip;
}

void terr_prefetch_slots(const struct terr_index *ti, const struct terr_keys *k)
{
    for (int i = 0; i < k->n; i++)
        smap_prefetch_h(key_map(ti, (enum terr_map)k->map[i]), k->hash[i]);
}

int terr_postings(const struct terr_index *ti, const struct terr_keys *k, struct plist *L)
{
    static const uint8_t match[] = {[TM_ZIP] = MATCH_ZIP, [TM_PREFIX] = MATCH_PREFIX, [TM_STATE] = MATCH_STATE,
                                    [TM_CELL] = MATCH_RADIUS};
    int nl = 0;
    for (int i = 0; i < k->n; i++) {
        enum terr_map m = (enum terr_map)k->map[i];
        uint32_t n;
        const uint32_t *ds = smap_get_h(key_map(ti, m), k->ns, key_bytes(k, m), k->len[i], k->hash[i], &n);
        if (n)
            L[nl++] = (struct plist){ds, n, match[m], m == TM_CELL};
    }
    if (ti->n_wide[k->ns] && k->n && k->map[k->n - 1] == TM_CELL)
        L[nl++] = (struct plist){ti->wide[k->ns], ti->n_wide[k->ns], MATCH_RADIUS, 1};
    return nl;
}

void terr_prefetch_dealers(const struct rules_table *t, const struct plist *L, int nl)
{
    for (int i = 0; i < nl; i++)
        for (uint32_t j = 0; j < L[i].n; j++) {
            uint32_t d = L[i].v[j];
            if (L[i].radius)
                __builtin_prefetch(&t->geo[d]);
            else
                __builtin_prefetch(&t->hot[d]);
        }
}

/* The radius dealers of ds[0..n) whose circle holds the lead, into out. */
static uint32_t radius_filter(const struct rules_table *t, const double *u, const uint32_t *ds, uint32_t n,
                              uint32_t *out)
{
    const float uf[3] = {(float)u[0], (float)u[1], (float)u[2]};
    uint32_t m = 0;
    for (uint32_t i = 0; i < n; i++)
        if (terr_in_radius(t, ds[i], u, uf))
            out[m++] = ds[i];
    return m;
}

void terr_merge(const struct rules_table *t, struct plist *L, int nl, struct terr_hits *h)
{
    /* Grid cells name every radius dealer near the lead: keep those whose
     * circle holds it. */
    uint32_t *rad = h->rad_a, nrad = 0;
    for (int i = 0; i < nl; i++)
        if (L[i].radius) {
            uint32_t m = radius_filter(t, h->u, L[i].v, L[i].n, rad + nrad);
            L[i].v = rad + nrad;
            L[i].n = m;
            nrad += m;
        }
    /* Merge the sorted lists pairwise; a dealer found in several lists
     * becomes one verdict with its most specific match. Entries are packed
     * as dealer << 8 | match, so equal dealers keep the larger match. */
    uint64_t *acc = h->mrg_a, *nxt = h->mrg_b;
    uint32_t na = 0;
    for (int li = 0; li < nl; li++) {
        const uint32_t *v = L[li].v;
        uint32_t nv = L[li].n, i = 0, j = 0, o = 0;
        uint64_t m = L[li].match;
        while (i < na && j < nv) {
            uint64_t a = acc[i], bb = (uint64_t)v[j] << 8 | m;
            if ((a >> 8) < (bb >> 8)) {
                nxt[o++] = a;
                i++;
            } else if ((a >> 8) > (bb >> 8)) {
                nxt[o++] = bb;
                j++;
            } else {
                nxt[o++] = a > bb ? a : bb;
                i++;
                j++;
            }
        }
        while (i < na)
            nxt[o++] = acc[i++];
        while (j < nv)
            nxt[o++] = (uint64_t)v[j++] << 8 | m;
        uint64_t *tmp = acc;
        acc = nxt;
        nxt = tmp;
        na = o;
    }
    uint32_t out = 0;
    for (uint32_t i = 0; i < na; i++) {
        uint32_t d = (uint32_t)(acc[i] >> 8);
        __builtin_prefetch(&h->hot[d]);
        h->v[out++] = (struct rules_verdict){.dealer = d, .rr_slot = h->rr_base + d, .match = (uint8_t)(acc[i] & 0xff)};
    }
    h->n = out;
}
