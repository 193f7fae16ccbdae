/* table.h - the routing table: niches, scoring, grades and dealers with
 * their territory and contract, plus the indexes compiled from them.
 * Built once per config load (rules_table_new, add/fill, compile), then
 * immutable and shared by every decision. No I/O. */
#ifndef LEADROUTER_TABLE_H
#define LEADROUTER_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "leadrouter/common.h"
#include "leadrouter/lead.h"
#include "leadrouter/tz.h"

#define RULES_MAX_NICHES 64
#define RULES_MAX_GRADES 32
#define RULES_MAX_BUYERS 16
#define RULES_MAX_TIER 1000
#define RULES_MAX_WEIGHT 1000000

enum rules_strategy { STRAT_WEIGHTED, STRAT_ROUND_ROBIN, STRAT_NEAREST, STRAT_LEAST_LOADED };
enum rules_overflow { OVERFLOW_RELEASE, OVERFLOW_HOLD };
enum rules_period { PERIOD_HOUR, PERIOD_DAY, PERIOD_WEEK, PERIOD_MONTH, PERIOD_N };
enum rules_filter_op { FOP_EQ, FOP_NE, FOP_IN, FOP_MIN, FOP_MAX, FOP_EXISTS };
enum rules_filter_target { FT_FIELD, FT_SOURCE, FT_CAMPAIGN, FT_COUNTRY, FT_STATE, FT_ZIP, FT_SCORE };

/* Where a setting was written: file (ref, interned in the table) and line. */
struct rules_where {
    const char *file;
    int line;
};

struct rules_niche {
    char *name;                  /* owned */
    char **sources;              /* owned, lower-cased */
    uint32_t n_sources;
    char **keywords;             /* owned, lower-cased */
    uint32_t n_keywords;
    int max_buyers;              /* 1..RULES_MAX_BUYERS */
    enum rules_strategy strategy;
    struct rules_where where;
    /* compiled */
    uint32_t *members;           /* dealers serving the niche, config order (owned) */
    uint32_t n_members;
};

/* One contract filter. The value strings are owned by the filter. */
struct rules_filter {
    enum rules_filter_target target;
    char *path;                  /* as written, e.g. "fields.home_owner" (owned) */
    char *key;                   /* field name when target == FT_FIELD (owned) */
    uint32_t key_len;            /* compiled */
    enum rules_filter_op op;
    struct lead_value *vals;     /* eq/ne: 1, in: n (owned) */
    uint32_t n_vals;
    double num;                  /* min / max bound */
    bool exists;                 /* exists = true|false */
};

struct rules_hours {
    bool set;
    uint8_t days;                /* bit 0 = Monday ... bit 6 = Sunday */
    uint16_t from, to;           /* minutes after midnight, to <= 1440;
                                    from > to spans midnight */
};

struct rules_dealer {
    char *id, *name;             /* owned */
    uint32_t *niches;            /* niche indexes (owned) */
    uint32_t n_niches;
    /* territory */
    char **states;               /* upper-cased (owned) */
    uint32_t n_states;
    char **zips;                 /* exact zips, normalized (owned) */
    uint32_t n_zips;
    char **prefixes;             /* zip prefixes without the '*' (owned) */
    uint32_t n_prefixes;
    bool has_radius;
    double lat, lon, km;
    /* contract */
    bool exclusive;
    enum rules_overflow overflow;
    int tier;                    /* lower first */
    int weight;                  /* >= 1 */
    uint32_t caps[PERIOD_N];     /* 0 = no cap */
    int min_score;               /* 0 = any */
    uint32_t grades;             /* mask of accepted grades, 0 = all */
    struct rules_filter *filters; /* owned */
    uint32_t n_filters;
    uint32_t max_pending;        /* 0 = unlimited */
    struct rules_hours hours;
    uint32_t tz;                 /* index into tzs: hours.timezone, else defaults */
    struct rules_where where;
};

struct rules_grade {
    char *name;                  /* owned */
    int min;
};

struct rules_weight {
    char *signal;                /* owned */
    double w;
    uint32_t signal_len;         /* compiled */
};

/* A filter packed for the hot path (compiled from rules_filter). */
struct rules_cfilter {
    uint8_t target, op, exists;
    uint8_t pad;
    uint32_t fid;                /* FT_FIELD: index of the field name in fkeys */
    uint32_t rid;                /* identical filters share it: evaluated once per lead */
    uint32_t pad2;
    double num;                  /* min / max */
    struct lead_value val;       /* eq / ne */
    const struct rules_filter *src; /* in-lists (ref) */
};

/* What every decision reads of a dealer, in one cache line: contract,
 * hours, caps, and the memo id of its first filter (filters themselves are
 * read only when a lead meets that filter for the first time). Compiled
 * from rules_dealer. */
enum { RHOT_EXCLUSIVE = 1, RHOT_HOLD = 2, RHOT_HOURS = 4, RHOT_RADIUS = 8 };
struct rules_hot {
    uint32_t grades;
    int16_t min_score;
    uint16_t tier;
    uint32_t weight;
    uint16_t tz;
    uint16_t from, to;
    uint8_t days;
    uint8_t flags;               /* RHOT_* */
    uint32_t max_pending;
    uint32_t caps[PERIOD_N];
    uint32_t n_filt;             /* its filters: cfilters[filt_off ... + n_filt) */
    uint32_t filt_off;
    uint32_t rid0;               /* cfilters[filt_off].rid */
} __attribute__((aligned(64)));

/* A radius centre as a unit vector and the squared chord of the radius:
 * "within km" is three multiplications. Compact floats decide every lead
 * clearly inside (squared chord < in) or outside (> out); the doubles
 * decide the few within float error of the edge (tens of metres). */
struct rules_geo {
    float x, y, z, in, out;
};
struct rules_geo_exact {
    double x, y, z, chord2;
};

struct terr_index;
struct rules_classify;
struct rules_dhot;

struct rules_table {
    struct rules_niche *niches;
    uint32_t n_niches;
    struct rules_dealer *dealers;
    uint32_t n_dealers;
    struct rules_grade *grades;  /* descending min, last min 0 */
    uint32_t n_grades;
    struct rules_weight *weights;
    uint32_t n_weights;
    uint32_t hot_grades;         /* mask */
    char default_country[3];
    uint32_t default_tz;         /* index into tzs */
    struct lr_tz **tzs;          /* owned */
    uint32_t n_tzs;
    char **files;                /* interned file names (owned) */
    uint32_t n_files;
    /* compiled */
    bool compiled;
    uint32_t n_rr_slots;         /* rotation state size: n_niches * n_dealers */
    struct rules_hot *hot;       /* per dealer (owned) */
    struct rules_dhot *dhot;     /* per dealer: the part of hot every decision reads, compact (owned) */
    uint32_t *dweight;           /* per dealer: hot[].weight, dense for the rotation (owned) */
    struct rules_cfilter *cfilters; /* every dealer's filters, dealer order (owned) */
    struct rules_geo *geo;       /* per dealer, when it has a radius (owned) */
    struct rules_geo_exact *geo_exact; /* the same in doubles (owned) */
    const char **fkeys;          /* distinct filter field names (owned array, ref strings) */
    uint32_t n_fkeys;
    uint32_t n_rids;             /* distinct filters */
    uint32_t *rid_cf;            /* per distinct filter: the index of one of its cfilters (owned) */
    struct terr_index *terr;     /* owned */
    struct rules_classify *cls;  /* owned */
};

struct rules_table *rules_table_new(void);
void rules_table_free(struct rules_table *t); /* accepts NULL */

/* Appenders return a zeroed entry (pointers into t stay valid only until
 * the next append of the same kind), or NULL when out of memory. */
struct rules_niche *rules_add_niche(struct rules_table *t);
struct rules_dealer *rules_add_dealer(struct rules_table *t);
struct rules_grade *rules_add_grade(struct rules_table *t);
struct rules_weight *rules_add_weight(struct rules_table *t);
/* Takes ownership of tz; returns its index, or -1 when out of memory. */
int rules_add_tz(struct rules_table *t, struct lr_tz *tz);
int rules_find_tz(const struct rules_table *t, const char *name);
/* An interned copy of a file name, owned by t (NULL when out of memory). */
const char *rules_intern_file(struct rules_table *t, const char *path);

int rules_niche_find(const struct rules_table *t, const char *name, size_t len);
int rules_dealer_find(const struct rules_table *t, const char *id, size_t len);
int rules_grade_find(const struct rules_table *t, const char *name, size_t len);

/* A point as a unit vector (for rules_hot radius comparisons). */
void rules_geo_point(double lat, double lon, double out[3]);

/* Cross-checks the whole table (duplicate ids and names, weights, tiers,
 * grades order, empty territories are warnings, not errors) and builds the
 * indexes. Returns 0, or -1 with "FILE:LINE: message" in err. */
int rules_table_compile(struct rules_table *t, char *err, size_t errlen) LR_WUR;

/* Lint (SPEC section 1, `-t`): legal but likely wrong. Calls warn once per
 * finding with "FILE:LINE: warning: ..."; returns the number of findings. */
typedef void (*rules_warn_fn)(void *ctx, const char *msg);
int rules_lint(const struct rules_table *t, rules_warn_fn warn, void *ctx);

#endif
