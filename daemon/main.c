/* main.c - leadrouterd: command line, config check (-t), and the daemon:
 * event loop, signals, reload (SIGHUP and the admin `reload`), the admin
 * socket, statistics and the runtime controls ops set, systemd
 * notifications. Exit codes: 0 ok, 1 bad config or arguments (including an
 * admin socket that cannot be created), 2 Redis unreachable at start-up,
 * 70 internal error. */
#include <event2/event.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "leadrouter/admin.h"
#include "leadrouter/config.h"
#include "leadrouter/log.h"
#include "leadrouter/rq.h"
#include "leadrouter/rules.h"
#include "leadrouter/stats.h"

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

/* -t -v: the routing table as the daemon understood it, for humans. */
static void describe(const struct rules_table *t)
{
    printf("\n%-18s %-12s %-6s %-8s %s\n", "NICHE", "STRATEGY", "BUYERS", "DEALERS", "SOURCES");
    for (uint32_t i = 0; i < t->n_niches; i++) {
        const struct rules_niche *n = &t->niches[i];
        printf("%-18s %-12s %-6d %-8u", n->name, rules_strategy_str(n->strategy), n->max_buyers,
               n->n_members);
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
            o += snprintf(terr + o, sizeof terr - (size_t)o, "%u state%s ", d->n_states,
                          d->n_states > 1 ? "s" : "");
        if (d->n_zips)
            o +=
                snprintf(terr + o, sizeof terr - (size_t)o, "%u zip%s ", d->n_zips, d->n_zips > 1 ? "s" : "");
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

/* The running daemon: the event loop and what steers it. */
struct daemon {
    struct event_base *base;
    struct cfg *cfg;
    const char *path;
    struct rq *q;
    struct stats *stats;
    struct admin *admin;
    struct admin_controls *ctl; /* pause flags and weights, by dealer id */
    uint64_t generation;        /* 1 at start, +1 per successful reload */
    int signals;                /* SIGTERM/SIGINT seen */
    int exit_code;
    struct event *ev_term, *ev_int, *ev_hup, *ev_watchdog;
    uint64_t watchdog_usec;
};

static void on_ready(void *arg)
{
    (void)arg;
    sd_notify(0, "READY=1\nSTATUS=routing leads");
}

static void on_exit_code(void *arg, int code)
{
    struct daemon *dm = arg;
    dm->exit_code = code;
    event_base_loopbreak(dm->base);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct daemon *dm = arg;
    if (++dm->signals > 1) {
        log_warn("second signal %d: exiting at once (uncommitted leads stay pending for recovery)", (int)sig);
        _exit(1);
    }
    log_info("signal %d: no new leads; finishing the commits in flight", (int)sig);
    sd_notify(0, "STOPPING=1");
    rq_stop(dm->q);
}

/* The one reload, for SIGHUP and the admin `reload`: a new config
 * replaces the old one only if it loads cleanly; the runtime controls are
 * carried over by dealer id. */
static int reload(struct daemon *dm, uint64_t *generation, char *err, size_t errlen)
{
    struct cfg *nc = NULL;
    sd_notify(0, "RELOADING=1");
    int rc = cfg_load(dm->path, &nc, err, errlen);
    if (rc == 0 && admin_controls_apply(dm->ctl, nc->rules) != 0) {
        snprintf(err, errlen, "out of memory applying the runtime controls");
        cfg_free(nc);
        rc = -1;
    }
    if (rc != 0) {
        log_error("reload failed, the running config stays: %s", err);
        stats_reload_failed(dm->stats);
        stats_set_reload_error(dm->stats, err);
    } else {
        struct cfg *old = dm->cfg;
        rq_set_config(dm->q, nc);
        rq_set_controls(dm->q, admin_controls_paused(dm->ctl), admin_controls_weight(dm->ctl));
        dm->cfg = nc;
        dm->generation++;
        stats_set_config(dm->stats, dm->generation);
        if (strcmp(old->admin.socket, nc->admin.socket) != 0 || old->admin.mode != nc->admin.mode)
            log_warn("reload: admin.socket and admin.mode changes take effect at the next start");
        cfg_free(old);
        log_info("reloaded %s: generation %llu, %u niches, %u dealers", dm->path,
                 (unsigned long long)dm->generation, nc->rules->n_niches, nc->rules->n_dealers);
        if (generation)
            *generation = dm->generation;
    }
    sd_notify(0, "READY=1");
    return rc;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    char err[1024];
    int rc = reload(arg, NULL, err, sizeof err);
    (void)rc; /* logged by reload */
}

/* ---- what the admin socket acts on ---- */

static const struct cfg *admin_config(void *ctx)
{
    return ((struct daemon *)ctx)->cfg;
}

static int admin_reload(void *ctx, uint64_t *generation, char *err, size_t errlen)
{
    return reload(ctx, generation, err, errlen);
}

static void admin_controls_changed(void *ctx)
{
    struct daemon *dm = ctx;
    rq_set_controls(dm->q, admin_controls_paused(dm->ctl), admin_controls_weight(dm->ctl));
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct daemon *dm = arg;
    sd_notify(0, "WATCHDOG=1");
    struct timeval tv = {(time_t)(dm->watchdog_usec / 2 / 1000000),
                         (suseconds_t)(dm->watchdog_usec / 2 % 1000000)};
    evtimer_add(dm->ev_watchdog, &tv);
}

static void daemon_free(struct daemon *dm)
{
    /* The admin first: replies still awaited from Redis are then dropped
     * when rq_free calls their callbacks. */
    admin_free(dm->admin);
    rq_free(dm->q);
    if (dm->ev_term)
        event_free(dm->ev_term);
    if (dm->ev_int)
        event_free(dm->ev_int);
    if (dm->ev_hup)
        event_free(dm->ev_hup);
    if (dm->ev_watchdog)
        event_free(dm->ev_watchdog);
    if (dm->base)
        event_base_free(dm->base);
    admin_controls_free(dm->ctl);
    stats_free(dm->stats);
    cfg_free(dm->cfg);
}

static int run_daemon(const char *path)
{
    struct daemon dm = {.path = path, .generation = 1};
    char err[1024];
    /* A stop or reload signal that arrives while we start is held until the
     * loop's handlers are in place, then handled like any other (a SIGTERM
     * at start-up still exits 0 after a clean stop). */
    sigset_t ctl_signals;
    sigemptyset(&ctl_signals);
    sigaddset(&ctl_signals, SIGTERM);
    sigaddset(&ctl_signals, SIGINT);
    sigaddset(&ctl_signals, SIGHUP);
    sigprocmask(SIG_BLOCK, &ctl_signals, NULL);
    if (cfg_load(path, &dm.cfg, err, sizeof err) != 0) {
        log_error("%s", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    dm.base = event_base_new();
    dm.stats = stats_new();
    dm.ctl = admin_controls_new();
    if (!dm.base || !dm.stats || !dm.ctl || admin_controls_apply(dm.ctl, dm.cfg->rules) != 0) {
        log_error("cannot start: out of memory");
        daemon_free(&dm);
        return 70;
    }
    stats_set_config(dm.stats, dm.generation);
    dm.q = rq_new(dm.base, dm.cfg, err, sizeof err);
    if (!dm.q) {
        log_error("cannot start: %s", err);
        daemon_free(&dm);
        return 70;
    }
    rq_set_stats(dm.q, dm.stats);
    rq_set_controls(dm.q, admin_controls_paused(dm.ctl), admin_controls_weight(dm.ctl));
    struct admin_env env = {
        .stats = dm.stats,
        .rq = dm.q,
        .ctl = dm.ctl,
        .config = admin_config,
        .reload = admin_reload,
        .controls_changed = admin_controls_changed,
        .ctx = &dm,
    };
    /* Ops must be able to look in before Redis is up, so the socket comes
     * first; one that cannot be created is a configuration problem. */
    dm.admin = admin_new(dm.base, dm.cfg->admin.socket, dm.cfg->admin.mode, &env, err, sizeof err);
    if (!dm.admin) {
        log_error("cannot start: %s", err);
        daemon_free(&dm);
        return 1;
    }
    dm.ev_term = evsignal_new(dm.base, SIGTERM, on_stop_signal, &dm);
    dm.ev_int = evsignal_new(dm.base, SIGINT, on_stop_signal, &dm);
    dm.ev_hup = evsignal_new(dm.base, SIGHUP, on_hup, &dm);
    evsignal_add(dm.ev_term, NULL);
    evsignal_add(dm.ev_int, NULL);
    evsignal_add(dm.ev_hup, NULL);
    sigprocmask(SIG_UNBLOCK, &ctl_signals, NULL);
    if (sd_watchdog_enabled(0, &dm.watchdog_usec) > 0 && dm.watchdog_usec > 0) {
        dm.ev_watchdog = evtimer_new(dm.base, on_watchdog, &dm);
        on_watchdog(-1, 0, &dm);
    }
    log_info("leadrouterd %s starting: %s, %u niches, %u dealers", LR_VERSION, path, dm.cfg->rules->n_niches,
             dm.cfg->rules->n_dealers);
    rq_start(dm.q, on_ready, on_exit_code, &dm);
    event_base_dispatch(dm.base);
    const struct rq_stats *st = rq_stats(dm.q);
    log_info("exiting (%d): received %" PRIu64 ", assigned %" PRIu64 ", unassigned %" PRIu64 ", dead %" PRIu64
             ", returns %" PRIu64 ", errors %" PRIu64,
             dm.exit_code, st->received, st->assigned, st->unassigned, st->dead, st->returns, st->errors);
    int code = dm.exit_code;
    daemon_free(&dm);
    return code;
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
    /* A batch's commit is one command of a few hundred KB, made and freed
     * per batch: served from the heap, not mapped, zeroed and unmapped
     * each time (the default threshold made that a tenth of our CPU). */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
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
    return run_daemon(path);
}
