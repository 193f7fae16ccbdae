/* main.c - leadrouterd: command line, config check (-t), and (next) the
 * daemon itself. Exit codes: 0 ok, 1 bad config or arguments, 2 Redis
 * unreachable at start-up, 70 internal error. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "leadrouter/config.h"

#define DEFAULT_CONFIG "/etc/leadrouter/leadrouter.conf"

static void usage(FILE *f)
{
    fprintf(f, "usage: leadrouterd [-c FILE] [-t [-v]] [-f] [--version]\n"
               "  -c FILE    config file (default " DEFAULT_CONFIG ")\n"
               "  -t         validate the config, print warnings, and exit (0 valid, 1 invalid)\n"
               "  -v         with -t: also print the niches and dealers as understood\n"
               "  -f         stay in the foreground\n"
               "  --version  print the version and exit\n");
}

static void print_warning(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

static const char *strategy_name(enum rules_strategy s)
{
    static const char *const names[] = {"weighted", "round_robin", "nearest", "least_loaded"};
    return names[s];
}

/* -t -v: the routing table as the daemon understood it, for humans. */
static void describe(const struct rules_table *t)
{
    printf("\n%-18s %-12s %-6s %-8s %s\n", "NICHE", "STRATEGY", "BUYERS", "DEALERS", "SOURCES");
    for (uint32_t i = 0; i < t->n_niches; i++) {
        const struct rules_niche *n = &t->niches[i];
        printf("%-18s %-12s %-6d %-8u", n->name, strategy_name(n->strategy), n->max_buyers, n->n_members);
        for (uint32_t k = 0; k < n->n_sources; k++)
            printf("%s%s", k ? "," : "", n->sources[k]);
        printf("\n");
    }
    printf("\n%-24s %-10s %-4s %-6s %-16s %-24s %s\n", "DEALER", "CONTRACT", "TIER", "WEIGHT", "CAPS h/d/w/m",
           "TERRITORY", "HOURS");
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        const struct rules_dealer *d = &t->dealers[i];
        char caps[64], terr[128] = "", hours[64] = "always";
        int o = 0;
        snprintf(caps, sizeof caps, "%u/%u/%u/%u", d->caps[0], d->caps[1], d->caps[2], d->caps[3]);
        if (d->n_states)
            o += snprintf(terr + o, sizeof terr - (size_t)o, "%u state%s ", d->n_states, d->n_states > 1 ? "s" : "");
        if (d->n_zips)
            o += snprintf(terr + o, sizeof terr - (size_t)o, "%u zip%s ", d->n_zips, d->n_zips > 1 ? "s" : "");
        if (d->n_prefixes && o < (int)sizeof terr)
            o += snprintf(terr + o, sizeof terr - (size_t)o, "%u prefix ", d->n_prefixes);
        if (d->has_radius && o < (int)sizeof terr)
            snprintf(terr + o, sizeof terr - (size_t)o, "%.0fkm", d->km);
        if (d->hours.set)
            snprintf(hours, sizeof hours, "%02d:%02d-%02d:%02d %s", d->hours.from / 60, d->hours.from % 60,
                     d->hours.to / 60, d->hours.to % 60, t->tzs[d->tz]->name);
        printf("%-24s %-10s %-4d %-6d %-16s %-24s %s\n", d->id,
               d->exclusive ? (d->overflow == OVERFLOW_HOLD ? "excl/hold" : "excl/rel") : "shared", d->tier,
               d->weight, caps, terr, hours);
    }
}

static int check_config(const char *path, int verbose)
{
    struct cfg *c = NULL;
    char err[1024];
    if (cfg_load(path, &c, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int warnings = rules_lint(c->rules, print_warning, NULL);
    printf("%s: configuration OK: %u niches, %u dealers, %d warning%s\n", path, c->rules->n_niches,
           c->rules->n_dealers, warnings, warnings == 1 ? "" : "s");
    if (verbose)
        describe(c->rules);
    cfg_free(c);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = DEFAULT_CONFIG;
    int test_only = 0, verbose = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:tfvh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'v':
            verbose = 1;
            break;
        case 'f':
            break; /* the daemon never detaches itself; systemd supervises it */
        case 'V':
            printf("leadrouterd %s\n", LR_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "leadrouterd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }
    if (test_only)
        return check_config(path, verbose);
    int rc = check_config(path, 0);
    if (rc != 0)
        return rc;
    fprintf(stderr, "leadrouterd: the routing daemon is not built yet (only -t works in this version)\n");
    return 70;
}
