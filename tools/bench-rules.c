/* bench-rules.c - routing decisions per second of the rules core, in
 * process, on one core, against 10, 1 000 and 10 000 dealers, plus a dense
 * case. See usage() for the synthetic mix. A benchmark, not a test. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadrouter/rules.h"
#include "leadrouter/tzdb.h"

#define N_NICHES 5
#define ZIPS_PER_REGION 20
/* Leads are routed from a ring of two batches in memory that is reused, as
 * the daemon decodes each lead into memory it reuses: while one half is
 * routed, the other holds the next batch, so that prefetching ahead finds
 * it ready; the routed half is then refilled with fresh random leads,
 * untimed. */
#define BATCH 1024
#define RING (2 * BATCH)
#define WARMUP_BATCHES 64

static const char *const niche_names[N_NICHES] = {"home_improvement", "solar", "mortgage", "insurance", "hvac"};
static const enum rules_strategy niche_strat[N_NICHES] = {STRAT_WEIGHTED, STRAT_NEAREST, STRAT_ROUND_ROBIN,
                                                          STRAT_LEAST_LOADED, STRAT_WEIGHTED};
static const int niche_buyers[N_NICHES] = {1, 2, 1, 1, 3};

static void usage(void)
{
    printf("bench-rules: rules_decide + rules_pick per second, one thread.\n"
           "World: dealers are grouped in regions of R dealers (R = 8, dense: 100); every dealer\n"
           "serves all 5 niches (weighted, nearest, round_robin, least_loaded, weighted x3 buyers).\n"
           "A region has its own state code, %d 6-digit postcodes and a 4-digit prefix, and a centre on a\n"
           "0.5-degree lattice. Its dealers cover it by kind in turn: state, exact zips (all %d),\n"
           "zip prefix, 20 km radius; half have business hours (America/Chicago, 24h Mon-Sun),\n"
           "weights 1-4, tiers 1-2, a min_score of 0-20 and a field filter that every lead passes.\n"
           "Leads: a random region, one of its zips, its state, coordinates within 5 km of its\n"
           "centre, a source naming the niche, a score or signals. Leads go to full regions only,\n"
           "so with 10 dealers 8 cover each lead and 2 are idle. Every dealer of the region\n"
           "covers the lead: more dealers means more territory, not more competition.\n"
           "Leads are fresh and random, made in batches of %d into a ring that is reused (the\n"
           "daemon decodes each lead into memory it reuses); making them is not timed.\n",
           ZIPS_PER_REGION, ZIPS_PER_REGION, BATCH);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) {
        perror("strdup");
        exit(70);
    }
    return p;
}

static char **strv1(const char *s)
{
    char **v = malloc(sizeof *v);
    v[0] = xstrdup(s);
    return v;
}

static void region_zip(char *buf, size_t len, uint32_t region, uint32_t k)
{
    snprintf(buf, len, "%04u%02u", 1000 + region, k); /* 6-digit postcode */
}

static void region_centre(uint32_t region, double *lat, double *lon)
{
    *lat = 25.0 + (double)(region / 60) * 0.5;
    *lon = -125.0 + (double)(region % 60) * 0.5;
}

static struct rules_table *build(uint32_t n_dealers, uint32_t per_region, uint32_t *n_regions, size_t *n_entries)
{
    char err[512];
    struct rules_table *t = rules_table_new();
    struct lr_tz *utc = tzdb_load("UTC", err, sizeof err), *chi = tzdb_load("America/Chicago", err, sizeof err);
    if (!utc || !chi) {
        fprintf(stderr, "bench-rules: %s\n", err);
        exit(70);
    }
    t->default_tz = (uint32_t)rules_add_tz(t, utc);
    int chi_tz = rules_add_tz(t, chi);
    strcpy(t->default_country, "US");
    const char *gn[3] = {"A", "B", "C"};
    int gm[3] = {80, 50, 0};
    for (int i = 0; i < 3; i++) {
        struct rules_grade *g = rules_add_grade(t);
        g->name = xstrdup(gn[i]);
        g->min = gm[i];
    }
    const char *sig[3] = {"web", "email", "demo"};
    double sw[3] = {0.5, 0.3, 0.2};
    for (int i = 0; i < 3; i++) {
        struct rules_weight *w = rules_add_weight(t);
        w->signal = xstrdup(sig[i]);
        w->w = sw[i];
    }
    t->hot_grades = 1;
    for (int i = 0; i < N_NICHES; i++) {
        struct rules_niche *n = rules_add_niche(t);
        char src[64];
        snprintf(src, sizeof src, "%s.example", niche_names[i]);
        n->name = xstrdup(niche_names[i]);
        n->sources = strv1(src);
        n->n_sources = 1;
        n->max_buyers = niche_buyers[i];
        n->strategy = niche_strat[i];
    }
    *n_regions = (n_dealers + per_region - 1) / per_region;
    *n_entries = 0;
    for (uint32_t di = 0; di < n_dealers; di++) {
        struct rules_dealer *d = rules_add_dealer(t);
        uint32_t region = di / per_region, kind = di % 4;
        char buf[64];
        snprintf(buf, sizeof buf, "dealer-%05u", di);
        d->id = xstrdup(buf);
        d->name = xstrdup(buf);
        d->n_niches = N_NICHES;
        d->niches = malloc(N_NICHES * sizeof *d->niches);
        for (uint32_t k = 0; k < N_NICHES; k++)
            d->niches[k] = k;
        if (kind == 0) {
            snprintf(buf, sizeof buf, "S%u", region);
            d->states = strv1(buf);
            d->n_states = 1;
        } else if (kind == 1) {
            d->zips = malloc(ZIPS_PER_REGION * sizeof *d->zips);
            for (uint32_t k = 0; k < ZIPS_PER_REGION; k++) {
                region_zip(buf, sizeof buf, region, k);
                d->zips[k] = xstrdup(buf);
            }
            d->n_zips = ZIPS_PER_REGION;
        } else if (kind == 2) {
            snprintf(buf, sizeof buf, "%04u", 1000 + region);
            d->prefixes = strv1(buf);
            d->n_prefixes = 1;
        } else {
            d->has_radius = true;
            region_centre(region, &d->lat, &d->lon);
            d->km = 20.0;
        }
        *n_entries += d->n_zips + d->n_prefixes;
        d->tier = 1 + (di % 7 == 6);
        d->weight = 1 + (int)(di % 4);
        d->min_score = (int)(di % 3) * 10;
        d->tz = (uint32_t)((di & 1) ? chi_tz : (int)t->default_tz);
        if (di & 1) {
            d->hours.set = true;
            d->hours.days = 0x7f;
            d->hours.from = 0;
            d->hours.to = 1440;
        }
        d->filters = calloc(1, sizeof *d->filters);
        d->n_filters = 1;
        d->filters[0].target = FT_FIELD;
        d->filters[0].path = xstrdup("fields.home_owner");
        d->filters[0].key = xstrdup("home_owner");
        d->filters[0].op = FOP_NE;
        d->filters[0].vals = calloc(1, sizeof *d->filters[0].vals);
        d->filters[0].vals[0].type = LEAD_V_BOOL;
        d->filters[0].vals[0].b = false;
        d->filters[0].n_vals = 1;
    }
    if (rules_table_compile(t, err, sizeof err)) {
        fprintf(stderr, "bench-rules: %s\n", err);
        exit(70);
    }
    return t;
}

/* Leads and the strings they point to. */
struct leadset {
    struct lead leads[RING];
    char text[RING][64];
    struct lead_signal sig[RING][2];
    struct lead_field field[RING];
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static struct lr_str S(const char *p, size_t n)
{
    return (struct lr_str){p, (uint32_t)n};
}

/* Fills the batch at ring index `first` with fresh leads (ids from *serial). */
static void make_leads(struct leadset *ls, uint32_t first, uint32_t n_regions, uint64_t *serial)
{
    for (uint32_t i = first; i < first + BATCH; i++) {
        struct lead *l = &ls->leads[i];
        char *t = ls->text[i];
        uint32_t region = rnd() % n_regions, niche = rnd() % N_NICHES;
        memset(l, 0, sizeof *l);
        int o = snprintf(t, 64, "L%llu", (unsigned long long)(*serial)++);
        l->id = S(t, (size_t)o);
        char *src = t + o + 1;
        int so = snprintf(src, 40, "%s.example", niche_names[niche]);
        l->source = S(src, (size_t)so);
        char *zip = src + so + 1;
        region_zip(zip, 16, region, rnd() % ZIPS_PER_REGION);
        l->zip = S(zip, strlen(zip));
        char *st = zip + strlen(zip) + 1;
        int sl = snprintf(st, 8, "S%u", region);
        l->state = S(st, (size_t)sl);
        double lat, lon;
        region_centre(region, &lat, &lon);
        l->lat = lat + ((double)(rnd() % 1000) - 500) / 100000.0 * 9; /* within ~5 km */
        l->lon = lon + ((double)(rnd() % 1000) - 500) / 100000.0 * 9;
        l->has_geo = true;
        if (i & 1) {
            l->score = (int)(rnd() % 101);
            l->has_score = true;
        } else {
            ls->sig[i][0] = (struct lead_signal){S("web", 3), (double)(rnd() % 100)};
            ls->sig[i][1] = (struct lead_signal){S("email", 5), (double)(rnd() % 100)};
            l->signals = ls->sig[i];
            l->n_signals = 2;
        }
        ls->field[i] = (struct lead_field){.key = S("home_owner", 10), .v = {.type = LEAD_V_BOOL, .b = true}};
        l->fields = &ls->field[i];
        l->n_fields = 1;
    }
}

static double now_s(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, dbl_cmp);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* One benchmark case: a table, its working memory and its leads. */
struct bcase {
    uint32_t n_dealers, per_region, regions;
    size_t entries;
    struct rules_table *t;
    struct rules_scratch *s;
    int64_t *rr;
    struct leadset *ls;
    uint32_t lead_regions;                 /* leads go to full regions only */
    uint64_t serial;                       /* the next lead id */
    struct rules_input in;
    uint64_t next;                         /* ring position: a batch boundary between batches */
    uint64_t covered, assigned;            /* dealers covering, leads assigned, every batch routed */
    double cover_per_lead, assigned_share; /* over the warm-up */
};

static double route_batch(struct bcase *c);

static void setup(struct bcase *c, uint32_t n_dealers, uint32_t per_region)
{
    memset(c, 0, sizeof *c);
    c->n_dealers = n_dealers;
    c->per_region = per_region;
    c->t = build(n_dealers, per_region, &c->regions, &c->entries);
    c->s = rules_scratch_new(c->t);
    c->rr = calloc(c->t->n_rr_slots ? c->t->n_rr_slots : 1, sizeof *c->rr);
    c->ls = malloc(sizeof *c->ls);
    if (!c->s || !c->rr || !c->ls) {
        fprintf(stderr, "bench-rules: out of memory\n");
        exit(70);
    }
    c->lead_regions = n_dealers / per_region ? n_dealers / per_region : 1;
    make_leads(c->ls, 0, c->lead_regions, &c->serial);
    make_leads(c->ls, BATCH, c->lead_regions, &c->serial);
    c->in.now_ms = 1795000000000LL;
    for (int b = 0; b < WARMUP_BATCHES; b++) /* warm-up and mix statistics */
        route_batch(c);
    c->cover_per_lead = (double)c->covered / (WARMUP_BATCHES * BATCH);
    c->assigned_share = (double)c->assigned / (WARMUP_BATCHES * BATCH);
}

static void teardown(struct bcase *c)
{
    free(c->ls);
    free(c->rr);
    rules_scratch_free(c->s);
    rules_table_free(c->t);
}

/* Routes the batch at the ring position, then refills it with the batch
 * after the next one; returns the thread CPU time the routing took. */
static double route_batch(struct bcase *c)
{
    struct rules_decision d;
    double t0 = now_s(CLOCK_THREAD_CPUTIME_ID);
    for (uint32_t i = 0; i < BATCH; i++, c->next++) {
        const struct lead *l = &c->ls->leads[c->next & (RING - 1)];
        /* As a caller working through a batch can: start loading what
         * the leads a few places ahead will read (rules_prefetch). */
        rules_prefetch(c->t, c->s, &c->ls->leads[(c->next + 16) & (RING - 1)], 0, c->rr);
        rules_prefetch(c->t, c->s, &c->ls->leads[(c->next + 8) & (RING - 1)], 1, c->rr);
        rules_prefetch(c->t, c->s, &c->ls->leads[(c->next + 2) & (RING - 1)], 2, c->rr);
        c->in.now_ms += 7;
        rules_decide(c->t, c->s, l, &c->in, &d);
        c->covered += d.n_verdicts;
        c->assigned += rules_pick(c->t, &d, &c->in, l, c->rr) > 0;
    }
    double spent = now_s(CLOCK_THREAD_CPUTIME_ID) - t0;
    make_leads(c->ls, (uint32_t)((c->next - BATCH) & (RING - 1)), c->lead_regions, &c->serial);
    return spent;
}

/* Decisions per second of thread CPU time spent routing, over at least
 * `seconds` of it. */
static double measure(struct bcase *c, double seconds)
{
    uint64_t n = 0;
    double spent = 0;
    do {
        spent += route_batch(c);
        n += BATCH;
    } while (spent < seconds);
    return (double)n / spent;
}

int main(int argc, char **argv)
{
    double slice = 0.25;
    int rounds = 15;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            slice = 0.1;
            rounds = 5;
        } else if (!strcmp(argv[i], "--profile") && i + 2 < argc) {
            /* One case, one short run (0.3 s of CPU time unless a third
             * number says otherwise): for perf or callgrind. */
            struct bcase c;
            double secs = i + 3 < argc ? atof(argv[i + 3]) : 0.3;
            setup(&c, (uint32_t)atoi(argv[i + 1]), (uint32_t)atoi(argv[i + 2]));
            printf("dealers=%s per_region=%s dps=%.0f\n", argv[i + 1], argv[i + 2],
                   measure(&c, secs > 0 ? secs : 0.3));
            teardown(&c);
            return 0;
        } else {
            usage();
            printf("usage: bench-rules [--quick | --profile DEALERS PER_REGION [SECONDS]]\n");
            return strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? 1 : 0;
        }
    }
    usage();
    enum { NC = 4 };
    struct bcase cs[NC];
    setup(&cs[0], 10, 8);
    setup(&cs[1], 1000, 8);
    setup(&cs[2], 10000, 8);
    setup(&cs[3], 1000, 100);
    /* This machine is shared and noisy: measure the cases in interleaved
     * rounds, so that each round sees the same conditions, and take medians
     * (growth: the median of the per-round ratios). */
    double rate[NC][64], growth[64];
    for (int r = 0; r < rounds; r++) {
        for (int c = 0; c < NC; c++)
            rate[c][r] = measure(&cs[c], slice);
        growth[r] = rate[0][r] / rate[2][r];
    }
    printf("\n%d interleaved rounds of %.2f s of thread CPU time per case; medians.\n", rounds, slice);
    printf("%-8s %-12s %-8s %-12s %-9s %s\n", "dealers", "cover/lead", "regions", "zip+prefix", "assigned",
           "decisions/s");
    double med[NC];
    for (int c = 0; c < NC; c++) {
        med[c] = median(rate[c], rounds);
        printf("%-8u %-12.1f %-8u %-12zu %-9.3f %.0f%s\n", cs[c].n_dealers, cs[c].cover_per_lead, cs[c].regions,
               cs[c].entries, cs[c].assigned_share, med[c], c == 3 ? "  (dense)" : "");
        teardown(&cs[c]);
    }
    printf("RESULT rules_dps_10=%.0f rules_dps_1000=%.0f rules_dps_10000=%.0f growth=%.2f dense_dps=%.0f\n", med[0],
           med[1], med[2], median(growth, rounds), med[3]);
    return 0;
}
