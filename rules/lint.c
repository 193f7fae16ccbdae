/* lint.c - what `leadrouterd -t` warns about: legal but likely wrong.
 * Overlapping exclusive territories in one niche, dealers no lead can reach,
 * niches no dealer serves, caps that contradict each other. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct lint {
    const struct rules_table *t;
    rules_warn_fn warn;
    void *ctx;
    int count;
    uint64_t *pairs; /* reported (niche, a, b) overlaps, to say each once */
    size_t n_pairs, cap_pairs;
};

__attribute__((format(printf, 3, 4))) static void warnf(struct lint *L, const struct rules_where *w,
                                                        const char *fmt, ...)
{
    char msg[512];
    int off = snprintf(msg, sizeof msg, "%s:%d: warning: ", w->file ? w->file : "(config)", w->line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + off, sizeof msg - (size_t)off, fmt, ap);
    va_end(ap);
    L->warn(L->ctx, msg);
    L->count++;
}

static bool seen_pair(struct lint *L, uint32_t niche, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)niche << 58 | (uint64_t)(a < b ? a : b) << 29 | (a < b ? b : a);
    for (size_t i = 0; i < L->n_pairs; i++)
        if (L->pairs[i] == key)
            return true;
    if (L->n_pairs == L->cap_pairs) {
        size_t nc = L->cap_pairs ? L->cap_pairs * 2 : 16;
        uint64_t *np = realloc(L->pairs, nc * sizeof *np);
        if (!np)
            return true; /* out of memory: stay quiet rather than repeat */
        L->pairs = np;
        L->cap_pairs = nc;
    }
    L->pairs[L->n_pairs++] = key;
    return false;
}

/* Warns about every other exclusive dealer of niche ni in ds[0..n). */
static void overlap(struct lint *L, uint32_t ni, uint32_t di, const uint32_t *ds, uint32_t n, const char *what,
                    const char *key)
{
    const struct rules_table *t = L->t;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t dj = ds[i];
        if (dj == di || !t->dealers[dj].exclusive || seen_pair(L, ni, di, dj))
            continue;
        const struct rules_dealer *a = &t->dealers[di], *b = &t->dealers[dj];
        warnf(L, &a->where, "exclusive dealers '%s' and '%s' overlap in niche '%s' (%s %s)", a->id, b->id,
              t->niches[ni].name, what, key);
    }
}

/* Zips and prefixes against the prefixes that contain them. */
static void overlap_prefixes(struct lint *L, uint32_t ni, uint32_t di, const char *z, bool is_prefix)
{
    const struct terr_index *ti = L->t->terr;
    size_t len = strlen(z);
    uint32_t n;
    const uint32_t *ds;
    for (size_t pl = 1; pl <= len && pl < 32; pl++) {
        if (!(ti->prefix_lens[ni] & (1u << pl)))
            continue;
        ds = smap_get(&ti->prefixes, (uint16_t)ni, z, pl, &n);
        overlap(L, ni, di, ds, n, is_prefix ? "zip prefix" : "zip", z);
    }
}

static void lint_exclusive(struct lint *L)
{
    const struct rules_table *t = L->t;
    const struct terr_index *ti = t->terr;
    for (uint32_t di = 0; di < t->n_dealers; di++) {
        const struct rules_dealer *d = &t->dealers[di];
        if (!d->exclusive)
            continue;
        for (uint32_t k = 0; k < d->n_niches; k++) {
            uint32_t ni = d->niches[k], n;
            const uint32_t *ds;
            for (uint32_t i = 0; i < d->n_states; i++) {
                ds = smap_get(&ti->states, (uint16_t)ni, d->states[i], strlen(d->states[i]), &n);
                overlap(L, ni, di, ds, n, "state", d->states[i]);
            }
            for (uint32_t i = 0; i < d->n_zips; i++) {
                ds = smap_get(&ti->zips, (uint16_t)ni, d->zips[i], strlen(d->zips[i]), &n);
                overlap(L, ni, di, ds, n, "zip", d->zips[i]);
                overlap_prefixes(L, ni, di, d->zips[i], false);
            }
            for (uint32_t i = 0; i < d->n_prefixes; i++)
                overlap_prefixes(L, ni, di, d->prefixes[i], true);
            if (!d->has_radius)
                continue;
            for (uint32_t j = di + 1; j < t->n_dealers; j++) {
                const struct rules_dealer *e = &t->dealers[j];
                if (!e->exclusive || !e->has_radius || rules_rr_slot(t, j, ni) < 0)
                    continue;
                if (rules_distance_km(d->lat, d->lon, e->lat, e->lon) < d->km + e->km && !seen_pair(L, ni, di, j))
                    warnf(L, &d->where, "exclusive dealers '%s' and '%s' overlap in niche '%s' (radius)", d->id,
                          e->id, t->niches[ni].name);
            }
        }
    }
}

/* The highest score a dealer's accepted grades allow. */
static int max_score_for(const struct rules_table *t, uint32_t grades)
{
    for (uint32_t g = 0; g < t->n_grades; g++)
        if (!grades || (grades & (1u << g)))
            return g == 0 ? 100 : t->grades[g - 1].min - 1;
    return -1;
}

int rules_lint(const struct rules_table *t, rules_warn_fn warn, void *ctx)
{
    struct lint L = {.t = t, .warn = warn, .ctx = ctx};
    static const char *const pname[PERIOD_N] = {"hour", "day", "week", "month"};
    for (uint32_t i = 0; i < t->n_niches; i++)
        if (t->niches[i].n_members == 0)
            warnf(&L, &t->niches[i].where, "no dealer serves niche '%s'", t->niches[i].name);
    for (uint32_t di = 0; di < t->n_dealers; di++) {
        const struct rules_dealer *d = &t->dealers[di];
        if (!d->n_states && !d->n_zips && !d->n_prefixes && !d->has_radius)
            warnf(&L, &d->where, "dealer '%s' has an empty territory: no lead can reach it", d->id);
        int top = max_score_for(t, d->grades);
        if (d->min_score > top)
            warnf(&L, &d->where, "dealer '%s': min_score %d is above what its grades allow (%d): no lead can reach it",
                  d->id, d->min_score, top);
        for (int p = 0; p + 1 < PERIOD_N; p++)
            for (int q = p + 1; q < PERIOD_N; q++)
                if (d->caps[p] && d->caps[q] && d->caps[p] > d->caps[q]) {
                    warnf(&L, &d->where, "dealer '%s': %s cap %u is larger than its %s cap %u", d->id, pname[p],
                          d->caps[p], pname[q], d->caps[q]);
                    q = PERIOD_N;
                    p = PERIOD_N;
                }
    }
    lint_exclusive(&L);
    free(L.pairs);
    return L.count;
}
