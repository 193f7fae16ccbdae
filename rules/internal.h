/* internal.h - (private to rules/) the compiled indexes and the per-thread
 * scratch shared by decide, pick and explain. */
#ifndef LEADROUTER_RULES_INTERNAL_H
#define LEADROUTER_RULES_INTERNAL_H

#include "leadrouter/rules.h"
#include "smap.h"

/* Territory index: the cost of a lookup depends on the lead (its zip's
 * length, its grid cell), not on the number of dealers. */
struct terr_index {
    struct smap zips;      /* (niche, exact zip) -> dealers */
    struct smap prefixes;  /* (niche, zip prefix) -> dealers */
    struct smap states;    /* (niche, state) -> dealers */
    struct smap cells;     /* (niche, 1-degree grid cell) -> radius dealers */
    uint32_t *prefix_lens; /* per niche: bit L set when a prefix of length L exists */
    uint32_t **wide;       /* per niche: radius dealers too wide for the grid (owned) */
    uint32_t *n_wide;
    uint32_t n_niches;     /* entries of prefix_lens, wide, n_wide */
};

/* Niche classification lookups. */
struct rules_classify {
    struct smap names;    /* exact niche name -> niche */
    struct smap sources;  /* lower-cased source -> niches (ascending) */
    struct smap keywords; /* lower-cased keyword -> niches (ascending) */
};

/* Territory hits collected for one lead: one verdict per dealer, keeping the
 * most specific match. */
struct terr_hits {
    uint32_t *stamp; /* per dealer: == gen when already hit */
    uint32_t gen;
    uint32_t *pos;   /* per dealer: index into v */
    struct rules_verdict *v;
    uint32_t n;
};

int terr_build(struct terr_index *ti, const struct rules_table *t);
void terr_free(struct terr_index *ti);
void terr_lookup(const struct terr_index *ti, const struct rules_table *t, uint32_t niche, const struct lead *l,
                 struct terr_hits *h);
/* Does dealer d's radius contain (lat, lon)? */
bool terr_in_radius(const struct rules_dealer *d, double lat, double lon);

/* Local wall-clock minute and weekday of one zone, cached per minute. */
struct tz_cache {
    int64_t minute; /* unix minute the entry is for; INT64_MIN = empty */
    int wday;       /* 0 = Monday */
    int mod;        /* minute of the day */
};

struct rules_scratch {
    uint32_t n_dealers;
    uint32_t gen;
    uint32_t *stamp;
    uint32_t *pos;
    struct rules_verdict *verdicts;
    uint32_t *cand;
    double *key;      /* per-candidate sort key for pick */
    uint64_t *ord;    /* sort keys */
    struct rules_verdict *tmpv;
    uint32_t n_tzs;
    struct tz_cache *tzc;
};

/* The most telling unassigned reason of a decision that picked nobody. */
enum rules_reason rules_most_telling(const struct rules_decision *d);

bool rules_hours_open(const struct rules_hours *h, int wday, int mod);

#endif
