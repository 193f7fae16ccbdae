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

/* Mirrors terr_lookup's keys; touches only the slots' cache lines. */
void terr_prefetch(const struct terr_index *ti, uint32_t niche, const struct lead *l)
{
    uint16_t ns = (uint16_t)niche;
    char buf[SMAP_MAX_KEY];
    int len;
    if (l->zip.len && (len = smap_fold(buf, l->zip.p, l->zip.len, true, true)) > 0) {
        smap_prefetch(&ti->zips, ns, buf, (size_t)len);
        uint32_t lens = ti->prefix_lens[ns];
        for (int pl = 1; pl <= len && pl < 32; pl++)
            if (lens & (1u << pl))
                smap_prefetch(&ti->prefixes, ns, buf, (size_t)pl);
    }
    if (l->state.len && (len = smap_fold(buf, l->state.p, l->state.len, true, false)) > 0)
        smap_prefetch(&ti->states, ns, buf, (size_t)len);
    if (l->has_geo) {
        char key[4];
        cell_key(key, cell_lat(l->lat), cell_lon(l->lon));
        smap_prefetch(&ti->cells, ns, key, 4);
    }
}

/* A posting list to merge: dealers ascending (config order). */
struct plist {
    const uint32_t *v;
    uint32_t n;
    uint8_t match;
};

static void add_list(struct plist *L, int *nl, const uint32_t *v, uint32_t n, enum rules_match m)
{
    if (n)
        L[(*nl)++] = (struct plist){v, n, (uint8_t)m};
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

void terr_lookup(const struct terr_index *ti, const struct rules_table *t, uint32_t niche, const struct lead *l,
                 struct terr_hits *h)
{
    uint16_t ns = (uint16_t)niche;
    char buf[SMAP_MAX_KEY];
    struct plist L[36];
    int nl = 0, len;
    const uint32_t *ds;
    uint32_t n;
    if (l->zip.len && (len = smap_fold(buf, l->zip.p, l->zip.len, true, true)) > 0) {
        ds = smap_get(&ti->zips, ns, buf, (size_t)len, &n);
        add_list(L, &nl, ds, n, MATCH_ZIP);
        uint32_t lens = ti->prefix_lens[ns];
        for (int pl = 1; pl <= len && pl < 32; pl++)
            if (lens & (1u << pl)) {
                ds = smap_get(&ti->prefixes, ns, buf, (size_t)pl, &n);
                add_list(L, &nl, ds, n, MATCH_PREFIX);
            }
    }
    if (l->state.len && (len = smap_fold(buf, l->state.p, l->state.len, true, false)) > 0) {
        ds = smap_get(&ti->states, ns, buf, (size_t)len, &n);
        add_list(L, &nl, ds, n, MATCH_STATE);
    }
    if (l->has_geo) {
        char key[4];
        cell_key(key, cell_lat(l->lat), cell_lon(l->lon));
        ds = smap_get(&ti->cells, ns, key, 4, &n);
        add_list(L, &nl, h->rad_a, radius_filter(t, h->u, ds, n, h->rad_a), MATCH_RADIUS);
        add_list(L, &nl, h->rad_b, radius_filter(t, h->u, ti->wide[ns], ti->n_wide[ns], h->rad_b), MATCH_RADIUS);
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
