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
#define N_LEADS 65536

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
           "covers the lead: more dealers means more territory, not more competition.\n",
           ZIPS_PER_REGION, ZIPS_PER_REGION);
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
    struct lead leads[N_LEADS];
    char text[N_LEADS][64];
    struct lead_signal sig[N_LEADS][2];
    struct lead_field field[N_LEADS];
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

static void make_leads(struct leadset *ls, uint32_t n_regions)
{
    for (uint32_t i = 0; i < N_LEADS; i++) {
        struct lead *l = &ls->leads[i];
        char *t = ls->text[i];
        uint32_t region = rnd() % n_regions, niche = rnd() % N_NICHES;
        memset(l, 0, sizeof *l);
        int o = snprintf(t, 64, "L%u", i);
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

struct result {
    double dps;
    double eligible; /* mean dealers covering a lead */
    double assigned; /* share of leads assigned */
    size_t entries;
    uint32_t regions;
};

static struct result run(uint32_t n_dealers, uint32_t per_region, double seconds, int reps)
{
    struct result r = {0};
    struct rules_table *t = build(n_dealers, per_region, &r.regions, &r.entries);
    struct rules_scratch *s = rules_scratch_new(t);
    int64_t *rr = calloc(t->n_rr_slots ? t->n_rr_slots : 1, sizeof *rr);
    static struct leadset ls;
    make_leads(&ls, n_dealers / per_region ? n_dealers / per_region : 1); /* full regions only */
    struct rules_input in = {.now_ms = 1795000000000LL};
    struct rules_decision d;
    uint64_t covered = 0, assigned = 0;
    for (uint32_t i = 0; i < N_LEADS; i++) { /* warm-up and mix statistics */
        rules_decide(t, s, &ls.leads[i], &in, &d);
        covered += d.n_verdicts;
        assigned += rules_pick(t, &d, &in, &ls.leads[i], rr) > 0;
    }
    r.eligible = (double)covered / N_LEADS;
    r.assigned = (double)assigned / N_LEADS;
    double rates[16];
    for (int rep = 0; rep < reps; rep++) {
        uint64_t n = 0;
        double t0 = now_s(CLOCK_THREAD_CPUTIME_ID), t1;
        do {
            for (uint32_t i = 0; i < 8192; i++, n++) {
                const struct lead *l = &ls.leads[n & (N_LEADS - 1)];
                rules_prefetch(t, &ls.leads[(n + 4) & (N_LEADS - 1)]); /* as the daemon does in a batch */
                in.now_ms += 7;
                rules_decide(t, s, l, &in, &d);
                rules_pick(t, &d, &in, l, rr);
            }
            t1 = now_s(CLOCK_THREAD_CPUTIME_ID);
        } while (t1 - t0 < seconds);
        rates[rep] = (double)n / (t1 - t0);
    }
    qsort(rates, (size_t)reps, sizeof *rates, dbl_cmp);
    r.dps = rates[reps / 2];
    free(rr);
    rules_scratch_free(s);
    rules_table_free(t);
    return r;
}

int main(int argc, char **argv)
{
    double seconds = 1.0;
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            seconds = 0.2;
            reps = 3;
        } else if (!strcmp(argv[i], "--profile") && i + 2 < argc) {
            /* One case, one short run: for perf or callgrind. */
            struct result r = run((uint32_t)atoi(argv[i + 1]), (uint32_t)atoi(argv[i + 2]), 0.3, 1);
            printf("dealers=%s per_region=%s dps=%.0f\n", argv[i + 1], argv[i + 2], r.dps);
            return 0;
        } else {
            usage();
            printf("usage: bench-rules [--quick | --profile DEALERS PER_REGION]\n");
            return strcmp(argv[i], "-h") && strcmp(argv[i], "--help") ? 1 : 0;
        }
    }
    usage();
    printf("\nEach figure: median of %d runs of %.1f s of thread CPU time.\n", reps, seconds);
    printf("%-8s %-10s %-8s %-14s %-12s %-9s %s\n", "dealers", "per_lead", "regions", "zip+prefix", "assigned",
           "", "decisions/s");
    uint32_t sizes[3] = {10, 1000, 10000};
    struct result res[4];
    for (int i = 0; i < 3; i++) {
        res[i] = run(sizes[i], 8, seconds, reps);
        printf("%-8u %-10.1f %-8u %-14zu %-12.3f %-9s %.0f\n", sizes[i], res[i].eligible, res[i].regions,
               res[i].entries, res[i].assigned, "", res[i].dps);
    }
    res[3] = run(1000, 100, seconds, reps);
    printf("%-8u %-10.1f %-8u %-14zu %-12.3f %-9s %.0f  (dense)\n", 1000u, res[3].eligible, res[3].regions,
           res[3].entries, res[3].assigned, "", res[3].dps);
    printf("RESULT rules_dps_10=%.0f rules_dps_1000=%.0f rules_dps_10000=%.0f growth=%.2f dense_dps=%.0f\n",
           res[0].dps, res[1].dps, res[2].dps, res[0].dps / res[2].dps, res[3].dps);
    return 0;
}
