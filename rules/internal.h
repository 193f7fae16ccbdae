/* internal.h - (private to rules/) the compiled indexes and the per-thread
 * scratch shared by decide, pick and explain. */
#ifndef LEADROUTER_RULES_INTERNAL_H
#define LEADROUTER_RULES_INTERNAL_H

#include "leadrouter/rules.h"
#include "smap.h"

/* What a decision reads of every dealer it considers, a quarter of a cache
 * line (rules_hot holds the rest): the 16 bytes of 1 000 dealers stay in
 * L1. Dealers with grades or more than one filter (DHOT_SLOW) have their
 * contract checked on their rules_hot line. flags: RHOT_* and DHOT_*. */
enum { DHOT_FILTER = 16, DHOT_SLOW = 32 };
struct rules_dhot {
    uint32_t rid0;   /* memo id of the first filter, when DHOT_FILTER */
    int16_t min_score;
    uint16_t tier;
    uint16_t tz;
    uint16_t from, to;
    uint8_t days;
    uint8_t flags;
};
_Static_assert(sizeof(struct rules_dhot) == 16, "rules_dhot: a quarter line");

/* Territory index: the cost of a lookup depends on the lead (its zip's
 * length, its grid cell), not on the number of dealers. */
struct terr_index {
    struct smap zips;      /* (niche, exact zip) -> dealers */
    struct smap prefixes;  /* (niche, zip prefix) -> dealers */
    struct smap states;    /* (niche, state) -> dealers */
    /* (niche, grid cell) -> radius dealers, each with its centre
     * and radius inline (struct terr_cgeo), so that the radius checks of a
     * lead read one dense run of memory, not one line per dealer. */
    struct terr_cslot *cslots; /* open addressing, key 0 = empty (owned) */
    uint32_t cmask;
    struct terr_cgeo *cgeo;    /* the cells' dealers, cell by cell (owned) */
    uint32_t *prefix_lens; /* per niche: bit L set when a prefix of length L exists */
    uint32_t **wide;       /* per niche: radius dealers too wide for the grid (owned) */
    uint32_t *n_wide;
    uint32_t n_niches;     /* entries of prefix_lens, wide, n_wide */
    uint32_t scale;        /* grid cells are 1/scale degree on a side */
};

/* A grid cell of one niche: its packed key (terr_cell_key) and its run of
 * radius dealers in cgeo, ascending. */
struct terr_cslot {
    uint64_t key;
    uint32_t off, n;
};

/* A radius dealer of a cell: t->geo[dealer] and the dealer. */
struct terr_cgeo {
    float x, y, z, in, out;
    uint32_t dealer;
};

/* Niche classification lookups. */
struct rules_classify {
    struct smap names;    /* exact niche name -> niche */
    struct smap sources;  /* lower-cased source -> niches (ascending) */
    struct smap keywords; /* lower-cased keyword -> niches (ascending) */
    struct smap dealers;  /* dealer id -> dealer (load, reload and sync look ids up by the thousand) */
};

/* Territory hits collected for one lead: one verdict per dealer, in config
 * order, keeping the most specific match. The union of the posting lists
 * is gathered in a bitmap over the dealers (bits), with the best match of
 * each dealer in best[] and the bitmap words touched in words[]; both are
 * all zero again when terr_merge returns. */
struct terr_hits {
    const double *u; /* the lead's unit vector, when it has coordinates */
    const struct rules_dhot *dhot; /* prefetched for each new hit */
    const uint32_t *dweight;       /* likewise, for rules_pick */
    uint8_t *best;           /* per dealer */
    uint64_t *bits;          /* per 64 dealers */
    uint32_t *words;         /* per 64 dealers */
    uint32_t rr_base;        /* niche * n_dealers */
    struct rules_verdict *v;
    uint32_t n;
};

int terr_build(struct terr_index *ti, const struct rules_table *t);
void terr_free(struct terr_index *ti);
/* Squared chord between dealer di's radius centre and unit vector u. */
static inline double terr_chord2(const struct rules_table *t, uint32_t di, const double u[3])
{
    const struct rules_geo_exact *g = &t->geo_exact[di];
    double dx = g->x - u[0], dy = g->y - u[1], dz = g->z - u[2];
    return dx * dx + dy * dy + dz * dz;
}

/* Is unit vector u within dealer di's radius? Floats first (g: the
 * dealer's t->geo entry or a copy of it); the doubles only when the floats
 * are too close to the edge to tell. */
static inline bool terr_in_radius_g(const struct rules_table *t, uint32_t di, float gx, float gy, float gz,
                                    float gin, float gout, const double u[3], const float uf[3])
{
    float dx = gx - uf[0], dy = gy - uf[1], dz = gz - uf[2];
    float c2 = dx * dx + dy * dy + dz * dz;
    if (c2 < gin)
        return true;
    if (c2 > gout)
        return false;
    return terr_chord2(t, di, u) <= t->geo_exact[di].chord2;
}

static inline bool terr_in_radius(const struct rules_table *t, uint32_t di, const double u[3], const float uf[3])
{
    const struct rules_geo *g = &t->geo[di];
    return terr_in_radius_g(t, di, g->x, g->y, g->z, g->in, g->out, u, uf);
}

/* The index lookups one lead needs: folded keys and their hashes (TM_CELL:
 * the packed cell key instead of a hash). */
enum terr_map { TM_ZIP, TM_PREFIX, TM_STATE, TM_CELL };
#define TERR_MAX_KEYS 36
struct terr_keys {
    uint16_t ns;
    uint8_t n;
    uint8_t map[TERR_MAX_KEYS];  /* enum terr_map */
    uint8_t len[TERR_MAX_KEYS];
    uint64_t hash[TERR_MAX_KEYS];
    char zip[SMAP_MAX_KEY], state[SMAP_MAX_KEY];
};

/* A posting list: dealers ascending (config order), and how they match. */
enum { PL_PLAIN, PL_WIDE, PL_CELL };
struct plist {
    const void *v;  /* PL_PLAIN, PL_WIDE: uint32_t dealers; PL_CELL: struct terr_cgeo */
    uint32_t n;
    uint8_t match;
    uint8_t kind;   /* PL_WIDE, PL_CELL: still to be checked against the radius */
};

void terr_keys(const struct terr_index *ti, uint32_t niche, const struct lead *l, struct terr_keys *k);
void terr_prefetch_slots(const struct terr_index *ti, const struct terr_keys *k);
/* Resolves the keys into posting lists (L: TERR_MAX_KEYS + 1 entries). */
int terr_postings(const struct terr_index *ti, const struct terr_keys *k, struct plist *L);
/* Starts loading the dealer lines the posting lists name; with rr (the
 * rotation values of the lead's niche), their rotation values too. */
void terr_prefetch_dealers(const struct rules_table *t, const struct plist *L, int nl, const int64_t *rr);
/* Runs the radius checks of the lists early: the radius lists become one
 * plain list of the dealers whose circle holds u, in hits (cap entries), and
 * their lines start loading. Returns the new number of lists; nl unchanged
 * when there were no radius lists or more hits than cap. */
int terr_resolve_radius(const struct rules_table *t, struct plist *L, int nl, const double u[3], uint32_t *hits,
                        uint32_t cap, const int64_t *rr, bool nearest);
/* Radius checks and the merge into h->v. */
void terr_merge(const struct rules_table *t, struct plist *L, int nl, struct terr_hits *h);

/* A lead seen by rules_prefetch: what was computed for it, kept for
 * rules_decide so that no work is done twice. */
#define RULES_PRE_RING 32
#define RULES_PRE_HITS 32
struct rules_pre {
    uint64_t id_hash;      /* the lead's id: its memory may hold another lead later */
    int stage;             /* 0: keys; 1: posting lists too; 2: radius checked */
    int niche;
    enum rules_how how;
    struct terr_keys k;
    int nl;
    struct plist L[TERR_MAX_KEYS + 1];
    uint32_t hits[RULES_PRE_HITS]; /* stage 2: the radius dealers that hold the lead */
    double u[3];                   /* stage 2: the lead's unit vector, when it has coordinates */
};

/* Local wall-clock minute and weekday of one zone, cached per minute. */
struct tz_cache {
    int64_t minute; /* unix minute the entry is for; INT64_MIN = empty */
    int wday;       /* 0 = Monday */
    int mod;        /* minute of the day */
};

struct rules_scratch {
    uint32_t n_dealers;
    struct rules_verdict *verdicts;
    uint32_t *cand;
    double *key;      /* per-candidate sort key for pick */
    uint64_t *ord;    /* sort keys */
    uint32_t *cidx;   /* candidates (verdict indexes) before ordering */
    uint8_t *cgrp;    /* their (stage, tier) group */
    uint32_t n_tzs;
    struct tz_cache *tzc;
    uint8_t *best;    /* terr_hits working memory (all zero between decisions) */
    uint64_t *bits;
    uint32_t *words;
    struct rules_pre *pre;    /* RULES_PRE_RING entries */
    const struct lead *pre_l[RULES_PRE_RING]; /* their leads (NULL: free), apart to scan fast */
    uint32_t pre_next;
    /* The lead's value of each interned filter field, looked up at most
     * once per decision (valid when fgen[i] == dgen). */
    uint32_t dgen;
    uint32_t *fgen;
    const struct lead_field **fval;
    uint32_t n_fkeys;
    /* Result of each distinct filter for this lead (valid when rgen[i] == dgen). */
    uint32_t *rgen;
    uint8_t *rval;
    uint32_t n_rids;
};

/* Room for element n of arr, an array of n elements of sz bytes grown only
 * by this: arr itself, or a larger copy (the capacity doubles, implied by
 * n); NULL when out of memory, arr untouched. */
void *rules_grow(void *arr, uint32_t n, size_t sz);

/* The most telling unassigned reason of a decision that picked nobody. */
enum rules_reason rules_most_telling(const struct rules_decision *d);

bool rules_hours_open(const struct rules_hours *h, int wday, int mod);

#endif
