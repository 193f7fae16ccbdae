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
    fprintf(f, "usage: leadrouterd [-c FILE] [-t] [-f] [--version]\n"
               "  -c FILE    config file (default " DEFAULT_CONFIG ")\n"
               "  -t         validate the config, print warnings, and exit (0 valid, 1 invalid)\n"
               "  -f         stay in the foreground\n"
               "  --version  print the version and exit\n");
}

static void print_warning(void *ctx, const char *msg)
{
    (void)ctx;
    fprintf(stderr, "%s\n", msg);
}

static int check_config(const char *path)
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
    int test_only = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:tfh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
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
        return check_config(path);
    int rc = check_config(path);
    if (rc != 0)
        return rc;
    fprintf(stderr, "leadrouterd: the routing daemon is not built yet (only -t works in this version)\n");
    return 70;
}
