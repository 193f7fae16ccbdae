/* stats.c - the daemon's statistics since start (SPEC section 6). Every
 * statistic is declared once, in families[] below (name, kind, help,
 * labels), and the three renderings (`name value` text for the admin
 * `stats`, JSON, Prometheus text exposition 0.0.4) walk that one table.
 *
 * Label values partly come from hostile leads (source) or from free text
 * (error reasons), so every label value is sanitized on the way in (valid
 * UTF-8, no control characters, at most STATS_LABEL_MAX bytes) and each
 * label of each family admits a bounded number of distinct values; past
 * the bound, new values count under "other". Memory is therefore bounded
 * whatever the leads carry. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadrouter/stats.h"

#define STATS_LABEL_MAX 128 /* bytes of one label value */
#define STATS_MAX_LABELS 2
#define STATS_OTHER "other"

enum kind { K_COUNTER, K_GAUGE, K_HISTOGRAM, K_INFO };

/* How the text and JSON renderings show a scalar. */
enum show { SHOW_INT, SHOW_UPDOWN, SHOW_STRING };

/* The families, in the order the renderings list them (SPEC section 6's
 * order for the text `stats`). */
enum fam {
    F_UPTIME,
    F_RECEIVED,
    F_ASSIGNED,
    F_UNASSIGNED,
    F_DEAD,
    F_RETURNED,
    F_DUPLICATES,
    F_IN_FLIGHT,
    F_REDIS_UP,
    F_CONFIG_GENERATION,
    F_RELOADS,
    F_RELOAD_FAILURES,
    F_LAST_RELOAD_ERROR,
    F_LATENCY,
    F_BY_NICHE,
    F_BY_SOURCE,
    F_N
};

struct family_def {
    const char *text; /* key in `stats` and JSON; NULL: not in `stats` (see the JSON key) */
    const char *json; /* JSON key */
    const char *prom; /* Prometheus metric name; NULL: not exported */
    enum kind kind;
    enum show show;
    const char *help;
    const char *labels[STATS_MAX_LABELS];
    uint32_t bound[STATS_MAX_LABELS]; /* distinct values admitted per label */
};

/* clang-format off */
static const struct family_def families[F_N] = {
    [F_UPTIME] = {"uptime", "uptime", "leadrouter_uptime_seconds", K_GAUGE, SHOW_INT,
                  "Seconds since the daemon started.", {NULL}, {0}},
    [F_RECEIVED] = {"received", "received", "leadrouter_leads_received_total", K_COUNTER, SHOW_INT,
                    "Leads taken from the input queue (decoded or not).", {NULL}, {0}},
    [F_ASSIGNED] = {"assigned", "assigned", "leadrouter_leads_assigned_total", K_COUNTER, SHOW_INT,
                    "Assignments pushed to dealer queues (a lead sold to k dealers counts k).",
                    {"dealer", "niche"}, {100000, 1000}},
    [F_UNASSIGNED] = {"unassigned", "unassigned", "leadrouter_leads_unassigned_total", K_COUNTER, SHOW_INT,
                      "Leads routed to the unassigned queue, by reason.", {"reason"}, {100}},
    [F_DEAD] = {"dead", "dead", "leadrouter_leads_dead_total", K_COUNTER, SHOW_INT,
                "Leads sent to the dead-letter queue, by reason.", {"reason"}, {100}},
    [F_RETURNED] = {"returns", "returns", "leadrouter_leads_returned_total", K_COUNTER, SHOW_INT,
                    "Leads returned by dealers and routed again.", {NULL}, {0}},
    [F_DUPLICATES] = {"duplicates", "duplicates", "leadrouter_leads_duplicate_total", K_COUNTER, SHOW_INT,
                      "Leads recognised as repeats (dedup hits and duplicate ids).", {NULL}, {0}},
    [F_IN_FLIGHT] = {"in_flight", "in_flight", "leadrouter_leads_in_flight", K_GAUGE, SHOW_INT,
                     "Leads sent to Redis for commit and not answered yet.", {NULL}, {0}},
    [F_REDIS_UP] = {"redis", "redis", "leadrouter_redis_up", K_GAUGE, SHOW_UPDOWN,
                    "1 when both Redis connections are up, else 0.", {NULL}, {0}},
    [F_CONFIG_GENERATION] = {"config_generation", "config_generation", "leadrouter_config_generation", K_GAUGE,
                             SHOW_INT, "Generation of the config in force (1 at start, +1 per successful reload).",
                             {NULL}, {0}},
    [F_RELOADS] = {"reloads", "reloads", "leadrouter_config_reloads_total", K_COUNTER, SHOW_INT,
                   "Successful config reloads.", {NULL}, {0}},
    [F_RELOAD_FAILURES] = {"reload_failures", "reload_failures", "leadrouter_config_reload_failures_total",
                           K_COUNTER, SHOW_INT, "Config reloads refused (the old config stayed).", {NULL}, {0}},
    [F_LAST_RELOAD_ERROR] = {"last_reload_error", "last_reload_error", NULL, K_INFO, SHOW_STRING,
                             "The error of the last refused reload, if the last reload failed.", {NULL}, {0}},
    [F_LATENCY] = {"latency", "latency", "leadrouter_route_latency_seconds", K_HISTOGRAM, SHOW_INT,
                   "Seconds from the lead's created_at (or its receipt) to its commit.", {NULL}, {0}},
    [F_BY_NICHE] = {NULL, "niches", "leadrouter_niche_leads_total", K_COUNTER, SHOW_INT,
                    "Assignments and unassigned leads per niche.", {"niche", "outcome"}, {1000, 4}},
    [F_BY_SOURCE] = {NULL, "sources", "leadrouter_source_leads_total", K_COUNTER, SHOW_INT,
                     "Assignments and unassigned leads per lead source (bounded: past 1000 sources, \"other\").",
                     {"source", "outcome"}, {1000, 4}},
};
/* clang-format on */

/* Prometheus buckets of the latency histogram (seconds, upper bounds). */
static const double prom_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5,   1,      2.5,   5,    10,    30,   60,  300};
#define N_PROM_LE (sizeof prom_le / sizeof prom_le[0])

/* Fine log-scale buckets for the quantiles: 16 per decade from 10 us to
 * 10^4 s (each ~15% wide), plus one below and one above. */
#define FINE_PER_DECADE 16
#define FINE_MIN_EXP (-5)
#define FINE_DECADES 9
#define N_FINE (FINE_PER_DECADE * FINE_DECADES + 2)

/* ---- a string interning map (open addressing) ------------------------ */

struct vset {
    char **vals;      /* interned values, by index (owned) */
    uint64_t *totals; /* per value: the sum of the series holding it */
    uint32_t n, cap;  /* values; slots of vals/totals */
    uint32_t *slots;  /* hash slots: index + 1, 0 = empty */
    uint32_t n_slots;
    uint32_t bound;
    int other; /* index of "other", -1 until needed */
};

static int vset_find(const struct vset *v, const char *s)
{
    if (!v->n_slots)
        return -1;
    size_t n = strlen(s);
    for (uint32_t i = (uint32_t)lr_fnv1a(s, n) & (v->n_slots - 1);; i = (i + 1) & (v->n_slots - 1)) {
        uint32_t x = v->slots[i];
        if (!x)
            return -1;
        if (strcmp(v->vals[x - 1], s) == 0)
            return (int)(x - 1);
    }
}

static int vset_grow(struct vset *v)
{
    if (v->n + 1 > v->cap) {
        uint32_t nc = v->cap ? v->cap * 2 : 16;
        char **nv = realloc(v->vals, nc * sizeof *nv);
        if (!nv)
            return -1;
        v->vals = nv;
        uint64_t *nt = realloc(v->totals, nc * sizeof *nt);
        if (!nt)
            return -1;
        v->totals = nt;
        v->cap = nc;
    }
    if ((v->n + 1) * 2 > v->n_slots) {
        uint32_t ns = v->n_slots ? v->n_slots * 2 : 32;
        uint32_t *sl = calloc(ns, sizeof *sl);
        if (!sl)
            return -1;
        for (uint32_t k = 0; k < v->n; k++) {
            uint32_t i = (uint32_t)lr_fnv1a(v->vals[k], strlen(v->vals[k])) & (ns - 1);
            while (sl[i])
                i = (i + 1) & (ns - 1);
            sl[i] = k + 1;
        }
        free(v->slots);
        v->slots = sl;
        v->n_slots = ns;
    }
    return 0;
}

static int vset_insert(struct vset *v, const char *s)
{
    if (vset_grow(v) != 0)
        return -1;
    char *c = strdup(s);
    if (!c)
        return -1;
    uint32_t idx = v->n++;
    v->vals[idx] = c;
    v->totals[idx] = 0;
    uint32_t i = (uint32_t)lr_fnv1a(s, strlen(s)) & (v->n_slots - 1);
    while (v->slots[i])
        i = (i + 1) & (v->n_slots - 1);
    v->slots[i] = idx + 1;
    return (int)idx;
}

/* The index of s, interned if new; "other" once the bound is reached;
 * -1 when out of memory. */
static int vset_intern(struct vset *v, const char *s)
{
    int i = vset_find(v, s);
    if (i >= 0)
        return i;
    uint32_t used = v->n - (v->other >= 0 ? 1 : 0);
    if (used < v->bound)
        return vset_insert(v, s);
    if (v->other < 0)
        v->other = vset_insert(v, STATS_OTHER);
    return v->other;
}

static void vset_free(struct vset *v)
{
    for (uint32_t i = 0; i < v->n; i++)
        free(v->vals[i]);
    free(v->vals);
    free(v->totals);
    free(v->slots);
}

/* ---- series: label tuples -> counters -------------------------------- */

struct series {
    uint32_t v[STATS_MAX_LABELS]; /* value indexes, one per label */
    uint64_t count;
};

struct sset {
    struct series *s;
    uint32_t n, cap;
    uint32_t *slots; /* index + 1 */
    uint32_t n_slots;
};

static uint32_t series_hash(const uint32_t *v)
{
    uint64_t h = ((uint64_t)v[0] << 32 | v[1]) * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

static const struct series *sset_find(const struct sset *ss, const uint32_t *v)
{
    if (!ss->n_slots)
        return NULL;
    for (uint32_t i = series_hash(v) & (ss->n_slots - 1);; i = (i + 1) & (ss->n_slots - 1)) {
        uint32_t x = ss->slots[i];
        if (!x)
            return NULL;
        const struct series *e = &ss->s[x - 1];
        if (e->v[0] == v[0] && e->v[1] == v[1])
            return e;
    }
}

static struct series *sset_get(struct sset *ss, const uint32_t *v)
{
    const struct series *found = sset_find(ss, v);
    if (found)
        return &ss->s[found - ss->s];
    if (ss->n + 1 > ss->cap) {
        uint32_t nc = ss->cap ? ss->cap * 2 : 16;
        struct series *ns = realloc(ss->s, nc * sizeof *ns);
        if (!ns)
            return NULL;
        ss->s = ns;
        ss->cap = nc;
    }
    if ((ss->n + 1) * 2 > ss->n_slots) {
        uint32_t nn = ss->n_slots ? ss->n_slots * 2 : 32;
        uint32_t *sl = calloc(nn, sizeof *sl);
        if (!sl)
            return NULL;
        for (uint32_t k = 0; k < ss->n; k++) {
            uint32_t i = series_hash(ss->s[k].v) & (nn - 1);
            while (sl[i])
                i = (i + 1) & (nn - 1);
            sl[i] = k + 1;
        }
        free(ss->slots);
        ss->slots = sl;
        ss->n_slots = nn;
    }
    struct series *e = &ss->s[ss->n++];
    e->v[0] = v[0];
    e->v[1] = v[1];
    e->count = 0;
    uint32_t i = series_hash(v) & (ss->n_slots - 1);
    while (ss->slots[i])
        i = (i + 1) & (ss->n_slots - 1);
    ss->slots[i] = ss->n;
    return e;
}

/* ---- the statistics -------------------------------------------------- */

struct fam_state {
    uint64_t value; /* counter total (labelled: the sum of its series) */
    int64_t gauge;
    char *text; /* K_INFO (owned) */
    struct vset labels[STATS_MAX_LABELS];
    struct sset series;
};

struct stats {
    struct timespec start; /* CLOCK_MONOTONIC */
    struct fam_state f[F_N];
    /* latency */
    uint64_t prom_bucket[N_PROM_LE]; /* not cumulative: samples in (le[i-1], le[i]] */
    uint64_t fine[N_FINE];
    uint64_t lat_count;
    double lat_sum;
};

struct stats *stats_new(void)
{
    struct stats *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, &s->start);
    for (int i = 0; i < F_N; i++)
        for (int k = 0; k < STATS_MAX_LABELS; k++) {
            s->f[i].labels[k].bound = families[i].bound[k];
            s->f[i].labels[k].other = -1;
        }
    return s;
}

void stats_free(struct stats *s)
{
    if (!s)
        return;
    for (int i = 0; i < F_N; i++) {
        for (int k = 0; k < STATS_MAX_LABELS; k++)
            vset_free(&s->f[i].labels[k]);
        free(s->f[i].series.s);
        free(s->f[i].series.slots);
        free(s->f[i].text);
    }
    free(s);
}

/* A label value as it is stored: at most STATS_LABEL_MAX bytes of valid
 * UTF-8 without control characters (others become '?'), cut at a
 * character boundary. NULL becomes "". */
static void sanitize(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)(in ? in : "");
    while (*p && o + 1 < cap) {
        unsigned c = *p;
        size_t n = c < 0x80             ? 1
                   : (c & 0xE0) == 0xC0 ? 2
                   : (c & 0xF0) == 0xE0 ? 3
                   : (c & 0xF8) == 0xF0 ? 4
                                        : 0;
        bool ok = n > 0;
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[k] & 0xC0) == 0x80;
        if (ok && n > 1) {
            /* Overlong forms, surrogates and code points past U+10FFFF are
             * invalid UTF-8 (and JSON libraries refuse them). */
            uint32_t cp = n == 2 ? (c & 0x1Fu) : n == 3 ? (c & 0x0Fu) : (c & 0x07u);
            for (size_t k = 1; k < n; k++)
                cp = cp << 6 | (p[k] & 0x3Fu);
            ok = !(n == 2 && cp < 0x80) && !(n == 3 && cp < 0x800) && !(n == 4 && cp < 0x10000) &&
                 !(cp >= 0xD800 && cp <= 0xDFFF) && cp <= 0x10FFFF;
        }
        if (!ok || (n == 1 && (c < 0x20 || c == 0x7F))) {
            out[o++] = '?';
            p++;
            continue;
        }
        if (o + n >= cap)
            break;
        memcpy(out + o, p, n);
        o += n;
        p += n;
    }
    out[o] = 0;
}

/* Counts n under the family's labels (values: one per label). */
static void count(struct stats *s, enum fam f, const char *const *values, uint64_t n)
{
    struct fam_state *st = &s->f[f];
    const struct family_def *d = &families[f];
    st->value += n;
    if (!d->labels[0])
        return;
    uint32_t v[STATS_MAX_LABELS] = {0, 0};
    int idx[STATS_MAX_LABELS] = {-1, -1};
    for (int k = 0; k < STATS_MAX_LABELS && d->labels[k]; k++) {
        /* Values kept are clean: a value found as it is needs no cleaning. */
        idx[k] = values[k] ? vset_find(&st->labels[k], values[k]) : -1;
        if (idx[k] < 0) {
            char clean[STATS_LABEL_MAX + 1];
            sanitize(values[k], clean, sizeof clean);
            idx[k] = vset_intern(&st->labels[k], clean);
        }
        if (idx[k] < 0)
            return; /* out of memory: the total still counts */
        v[k] = (uint32_t)idx[k];
    }
    struct series *e = sset_get(&st->series, v);
    if (!e)
        return;
    e->count += n;
    for (int k = 0; k < STATS_MAX_LABELS && d->labels[k]; k++)
        st->labels[k].totals[idx[k]] += n;
}

void stats_received(struct stats *s, uint64_t n)
{
    if (s)
        count(s, F_RECEIVED, NULL, n);
}

void stats_assigned(struct stats *s, const char *dealer, const char *niche, const char *source)
{
    if (!s)
        return;
    count(s, F_ASSIGNED, (const char *[]){dealer, niche}, 1);
    if (niche && *niche)
        count(s, F_BY_NICHE, (const char *[]){niche, "assigned"}, 1);
    count(s, F_BY_SOURCE, (const char *[]){source, "assigned"}, 1);
}

/* The reason's code: the text before the first ':' ("bad_type: score ..."
 * -> "bad_type"), so that free-text details do not multiply the series. */
static void reason_code(const char *reason, char *out, size_t cap)
{
    const char *r = reason && *reason ? reason : "unknown";
    size_t n = strcspn(r, ":");
    if (n >= cap)
        n = cap - 1;
    memcpy(out, r, n);
    out[n] = 0;
}

void stats_unassigned(struct stats *s, const char *reason, const char *niche, const char *source)
{
    if (!s)
        return;
    char code[STATS_LABEL_MAX + 1];
    reason_code(reason, code, sizeof code);
    count(s, F_UNASSIGNED, (const char *[]){code}, 1);
    if (niche && *niche)
        count(s, F_BY_NICHE, (const char *[]){niche, "unassigned"}, 1);
    count(s, F_BY_SOURCE, (const char *[]){source, "unassigned"}, 1);
}

void stats_dead(struct stats *s, const char *reason)
{
    if (!s)
        return;
    char code[STATS_LABEL_MAX + 1];
    reason_code(reason, code, sizeof code);
    count(s, F_DEAD, (const char *[]){code}, 1);
}

void stats_returned(struct stats *s)
{
    if (s)
        count(s, F_RETURNED, NULL, 1);
}

void stats_duplicate(struct stats *s)
{
    if (s)
        count(s, F_DUPLICATES, NULL, 1);
}

static int fine_index(double sec)
{
    if (sec < 1e-5)
        return 0;
    int i = 1 + (int)floor((log10(sec) - FINE_MIN_EXP) * FINE_PER_DECADE);
    return i < 1 ? 1 : i > N_FINE - 1 ? N_FINE - 1 : i;
}

void stats_latency(struct stats *s, double seconds)
{
    if (!s || isnan(seconds))
        return;
    /* A producer's clock ahead of Redis's gives a negative latency. */
    if (seconds < 0)
        seconds = 0;
    s->lat_count++;
    if (isfinite(seconds))
        s->lat_sum += seconds;
    for (size_t i = 0; i < N_PROM_LE; i++)
        if (seconds <= prom_le[i]) {
            s->prom_bucket[i]++;
            break;
        }
    s->fine[fine_index(seconds)]++;
}

void stats_set_redis_up(struct stats *s, bool up)
{
    if (s)
        s->f[F_REDIS_UP].gauge = up ? 1 : 0;
}

void stats_set_in_flight(struct stats *s, int64_t n)
{
    if (s)
        s->f[F_IN_FLIGHT].gauge = n;
}

void stats_set_config(struct stats *s, uint64_t generation)
{
    if (!s)
        return;
    /* The first config is the start, not a reload. */
    if (s->f[F_CONFIG_GENERATION].gauge != 0 && (uint64_t)s->f[F_CONFIG_GENERATION].gauge != generation)
        s->f[F_RELOADS].value++;
    s->f[F_CONFIG_GENERATION].gauge = (int64_t)generation;
    free(s->f[F_LAST_RELOAD_ERROR].text);
    s->f[F_LAST_RELOAD_ERROR].text = NULL;
}

void stats_reload_failed(struct stats *s)
{
    if (s)
        s->f[F_RELOAD_FAILURES].value++;
}

void stats_set_reload_error(struct stats *s, const char *msg)
{
    if (!s)
        return;
    free(s->f[F_LAST_RELOAD_ERROR].text);
    s->f[F_LAST_RELOAD_ERROR].text = NULL;
    if (msg && *msg) {
        char clean[1024];
        sanitize(msg, clean, sizeof clean);
        s->f[F_LAST_RELOAD_ERROR].text = strdup(clean);
    }
}

/* ---- reads ----------------------------------------------------------- */

static int64_t uptime_s(const struct stats *s)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - s->start.tv_sec);
}

static uint64_t label_total(const struct stats *s, enum fam f, int label, const char *value)
{
    char clean[STATS_LABEL_MAX + 1];
    sanitize(value, clean, sizeof clean);
    int i = vset_find(&s->f[f].labels[label], clean);
    return i < 0 ? 0 : s->f[f].labels[label].totals[i];
}

static uint64_t series_count(const struct stats *s, enum fam f, const char *v0, const char *v1)
{
    char c0[STATS_LABEL_MAX + 1], c1[STATS_LABEL_MAX + 1];
    sanitize(v0, c0, sizeof c0);
    sanitize(v1, c1, sizeof c1);
    int i0 = vset_find(&s->f[f].labels[0], c0), i1 = vset_find(&s->f[f].labels[1], c1);
    if (i0 < 0 || i1 < 0)
        return 0;
    uint32_t v[2] = {(uint32_t)i0, (uint32_t)i1};
    const struct series *e = sset_find(&s->f[f].series, v);
    return e ? e->count : 0;
}

uint64_t stats_dealer_assigned(const struct stats *s, const char *dealer)
{
    return s ? label_total(s, F_ASSIGNED, 0, dealer) : 0;
}

uint64_t stats_dealer_niche_assigned(const struct stats *s, const char *dealer, const char *niche)
{
    return s ? series_count(s, F_ASSIGNED, dealer, niche) : 0;
}

double stats_latency_quantile(const struct stats *s, double q)
{
    if (!s || s->lat_count == 0)
        return 0;
    q = q < 0 ? 0 : q > 1 ? 1 : q;
    double want = q * (double)s->lat_count;
    uint64_t cum = 0;
    for (int i = 0; i < N_FINE; i++) {
        if (s->fine[i] == 0)
            continue;
        if ((double)(cum + s->fine[i]) >= want) {
            if (i == 0)
                return 1e-5;
            /* Geometric interpolation inside the bucket. */
            double lo = pow(10, FINE_MIN_EXP + (double)(i - 1) / FINE_PER_DECADE);
            double hi = lo * pow(10, 1.0 / FINE_PER_DECADE);
            double frac = (want - (double)cum) / (double)s->fine[i];
            frac = frac < 0 ? 0 : frac > 1 ? 1 : frac;
            return lo * pow(hi / lo, frac);
        }
        cum += s->fine[i];
    }
    return pow(10, FINE_MIN_EXP + FINE_DECADES);
}

/* Sorted views of a two-label family, for the per niche / per source
 * lists: each distinct first-label value with its two outcome counts. */
static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void each_outcome(const struct stats *s, enum fam f, stats_each_fn fn, void *ctx)
{
    if (!s)
        return;
    const struct vset *v = &s->f[f].labels[0];
    if (!v->n)
        return;
    char **names = malloc(v->n * sizeof *names);
    if (!names)
        return;
    memcpy(names, v->vals, v->n * sizeof *names);
    qsort(names, v->n, sizeof *names, cmp_str_ptr);
    for (uint32_t i = 0; i < v->n; i++)
        fn(ctx, names[i], series_count(s, f, names[i], "assigned"),
           series_count(s, f, names[i], "unassigned"));
    free(names);
}

void stats_each_niche(const struct stats *s, stats_each_fn fn, void *ctx)
{
    each_outcome(s, F_BY_NICHE, fn, ctx);
}

void stats_each_source(const struct stats *s, stats_each_fn fn, void *ctx)
{
    each_outcome(s, F_BY_SOURCE, fn, ctx);
}

/* ---- rendering helpers ----------------------------------------------- */

/* Renderings are written to a memory stream (open_memstream). */
static FILE *mem_open(char **p, size_t *len)
{
    *p = NULL;
    *len = 0;
    return open_memstream(p, len);
}

/* Closes out and returns its text (*p, set by the close), or NULL when a
 * write, the memory or the caller (failed) failed. */
static char *mem_close(FILE *out, char **p, bool failed)
{
    bool bad = failed || ferror(out) != 0;
    if (fclose(out) != 0 || bad) {
        free(*p);
        return NULL;
    }
    return *p;
}

/* A label value in the exposition format: backslash, double quote and
 * newline escaped (sanitize already removed the other control bytes). */
static void prom_label_value(FILE *out, const char *v)
{
    fputc('"', out);
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            fputs("\\\\", out);
        else if (*p == '"')
            fputs("\\\"", out);
        else if (*p == '\n')
            fputs("\\n", out);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

/* Series of a family ordered by their label values, for stable output. */
static int cmp_series(const void *a, const void *b, void *arg)
{
    const struct series *x = *(const struct series *const *)a, *y = *(const struct series *const *)b;
    const struct fam_state *st = arg;
    for (int k = 0; k < STATS_MAX_LABELS && st->labels[k].n; k++) {
        int c = strcmp(st->labels[k].vals[x->v[k]], st->labels[k].vals[y->v[k]]);
        if (c)
            return c;
    }
    return 0;
}

/* A malloc'ed array of the family's series, sorted; *n its length. NULL
 * with *n = 0 when there are none; NULL with *n = 1 when out of memory. */
static const struct series **sorted(const struct stats *s, enum fam f, uint32_t *n)
{
    const struct sset *ss = &s->f[f].series;
    *n = 0;
    if (!ss->n)
        return NULL;
    const struct series **v = malloc(ss->n * sizeof *v);
    if (!v) {
        *n = 1;
        return NULL;
    }
    for (uint32_t i = 0; i < ss->n; i++)
        v[i] = &ss->s[i];
    qsort_r(v, ss->n, sizeof *v, cmp_series, (void *)&s->f[f]);
    *n = ss->n;
    return v;
}

static int64_t scalar(const struct stats *s, enum fam f)
{
    if (f == F_UPTIME)
        return uptime_s(s);
    if (families[f].kind == K_GAUGE)
        return s->f[f].gauge;
    return (int64_t)s->f[f].value;
}

/* ---- text ------------------------------------------------------------ */

char *stats_text(const struct stats *s)
{
    char *text;
    size_t len;
    FILE *out = mem_open(&text, &len);
    if (!out)
        return NULL;
    for (int f = 0; f < F_N; f++) {
        const struct family_def *d = &families[f];
        if (!d->text)
            continue;
        if (d->kind == K_HISTOGRAM) {
            if (s->lat_count == 0) {
                fprintf(out, "%s_p50_ms -\n%s_p99_ms -\n", d->text, d->text);
            } else {
                fprintf(out, "%s_p50_ms %.3f\n", d->text, stats_latency_quantile(s, 0.5) * 1000);
                fprintf(out, "%s_p99_ms %.3f\n", d->text, stats_latency_quantile(s, 0.99) * 1000);
            }
        } else if (d->show == SHOW_STRING) {
            if (s->f[f].text)
                fprintf(out, "%s %s\n", d->text, s->f[f].text);
        } else if (d->show == SHOW_UPDOWN) {
            fprintf(out, "%s %s\n", d->text, scalar(s, (enum fam)f) ? "up" : "down");
        } else {
            fprintf(out, "%s %" PRId64 "\n", d->text, scalar(s, (enum fam)f));
        }
    }
    return mem_close(out, &text, false);
}

/* ---- JSON ------------------------------------------------------------ */

/* jansson refuses invalid UTF-8; sanitize() made every stored value valid,
 * so a NULL here only means out of memory. */
static json_t *json_family(const struct stats *s, enum fam f)
{
    const struct family_def *d = &families[f];
    if (d->kind == K_HISTOGRAM) {
        json_t *h = json_object(), *bk = json_array();
        if (!h || !bk) {
            json_decref(h);
            json_decref(bk);
            return NULL;
        }
        uint64_t cum = 0;
        for (size_t i = 0; i < N_PROM_LE; i++) {
            cum += s->prom_bucket[i];
            json_array_append_new(bk, json_pack("{s:f,s:I}", "le", prom_le[i], "count", (json_int_t)cum));
        }
        json_object_set_new(h, "count", json_integer((json_int_t)s->lat_count));
        json_object_set_new(h, "sum", json_real(s->lat_sum));
        json_object_set_new(h, "p50_ms",
                            s->lat_count ? json_real(stats_latency_quantile(s, 0.5) * 1000) : json_null());
        json_object_set_new(h, "p99_ms",
                            s->lat_count ? json_real(stats_latency_quantile(s, 0.99) * 1000) : json_null());
        json_object_set_new(h, "buckets", bk);
        return h;
    }
    if (d->show == SHOW_STRING)
        return s->f[f].text ? json_string(s->f[f].text) : json_null();
    if (d->show == SHOW_UPDOWN)
        return json_string(scalar(s, f) ? "up" : "down");
    if (!d->labels[0])
        return json_integer((json_int_t)scalar(s, f));
    json_t *o = json_object(), *arr = json_array();
    if (!o || !arr) {
        json_decref(o);
        json_decref(arr);
        return NULL;
    }
    json_object_set_new(o, "total", json_integer((json_int_t)s->f[f].value));
    uint32_t n;
    const struct series **v = sorted(s, f, &n);
    if (!v && n) {
        json_decref(o);
        json_decref(arr);
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        json_t *e = json_object();
        for (int k = 0; k < STATS_MAX_LABELS && d->labels[k]; k++)
            json_object_set_new(e, d->labels[k], json_string(s->f[f].labels[k].vals[v[i]->v[k]]));
        json_object_set_new(e, "value", json_integer((json_int_t)v[i]->count));
        json_array_append_new(arr, e);
    }
    free(v);
    json_object_set_new(o, "series", arr);
    return o;
}

char *stats_json(const struct stats *s)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    for (int f = 0; f < F_N; f++) {
        json_t *v = json_family(s, (enum fam)f);
        if (!v || json_object_set_new(root, families[f].json, v) != 0) {
            json_decref(root);
            return NULL;
        }
    }
    char *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(root);
    return out;
}

/* ---- Prometheus ------------------------------------------------------ */

char *stats_prometheus(const struct stats *s)
{
    char *text;
    size_t len;
    FILE *out = mem_open(&text, &len);
    if (!out)
        return NULL;
    bool failed = false;
    for (int f = 0; f < F_N; f++) {
        const struct family_def *d = &families[f];
        if (!d->prom)
            continue;
        const char *type = d->kind == K_COUNTER ? "counter" : d->kind == K_GAUGE ? "gauge" : "histogram";
        fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", d->prom, d->help, d->prom, type);
        if (d->kind == K_HISTOGRAM) {
            uint64_t cum = 0;
            for (size_t i = 0; i < N_PROM_LE; i++) {
                cum += s->prom_bucket[i];
                /* %g gives "0.001", "0.0025", "1", "300": valid Go float literals. */
                fprintf(out, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", d->prom, prom_le[i], cum);
            }
            fprintf(out, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", d->prom, s->lat_count);
            fprintf(out, "%s_sum %.15g\n%s_count %" PRIu64 "\n", d->prom, s->lat_sum, d->prom, s->lat_count);
            continue;
        }
        if (!d->labels[0]) {
            fprintf(out, "%s %" PRId64 "\n", d->prom, scalar(s, (enum fam)f));
            continue;
        }
        uint32_t n;
        const struct series **v = sorted(s, (enum fam)f, &n);
        if (!v && n) {
            failed = true;
            break;
        }
        for (uint32_t i = 0; i < n; i++) {
            fprintf(out, "%s{", d->prom);
            for (int k = 0; k < STATS_MAX_LABELS && d->labels[k]; k++) {
                fprintf(out, "%s%s=", k ? "," : "", d->labels[k]);
                prom_label_value(out, s->f[f].labels[k].vals[v[i]->v[k]]);
            }
            fprintf(out, "} %" PRIu64 "\n", v[i]->count);
        }
        free(v);
    }
    return mem_close(out, &text, failed);
}
