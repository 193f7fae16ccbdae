/* main.c - leadctl, the ops client: the admin socket commands of SPEC
 * section 6 (human tables, or --json), `explain FILE`, `why LEAD_ID` (read
 * from Redis directly, so it works while the daemon is down), and the
 * spreadsheet commands (import, export, report) of SPEC section 7, and the
 * suppression list (dnc).
 * Exit status: 0 ok; 1 usage error, bad config or input, or an ERR reply;
 * 2 the daemon or Redis cannot be reached. */
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl.h"
#include "leadctl.h"
#include "leadrouter/admin.h"
#include "leadrouter/config.h"

#define LC_MAX_LEAD_FILE (16 * 1024 * 1024)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: leadctl [-c FILE] [-s SOCKET] [--json] COMMAND [ARGS...]\n"
            "  -c FILE     config (default " LC_DEFAULT_CONFIG "): admin.socket, redis, prefix\n"
            "  -s SOCKET   the admin socket (default: admin.socket of the config)\n"
            "  --json      machine-readable output (one JSON document)\n"
            "commands (admin socket):\n"
            "  help | stats | dealers | niches | sources | metrics | reload\n"
            "  pause DEALER | resume DEALER | weight DEALER N|default\n"
            "  explain FILE        the routing decision for a lead (JSON or msgpack file), not committed\n"
            "commands (Redis):\n"
            "  why LEAD_ID         the recorded decision: when, to whom, by which rule, who else, why not\n"
            "  import FILE.csv|- [--map col=key,...] [--dry-run] [--sep ,|;|tab]\n"
            "  export DEALER [--csv] [--drain] [--sep ,|;|tab]\n"
            "  report [--since 24h|7d|YYYY-MM-DD] [--by source|niche|dealer|reason] [--csv]\n"
            "  dnc add|remove|check PHONE...   the suppression list (stored as the daemon checks it)\n"
            "  dnc import FILE|-   one phone per line; nothing is written unless every line is valid\n"
            "exit status: 0 ok, 1 usage error or ERR reply, 2 daemon or Redis unreachable\n");
}

/* The socket path: -s, else the config's admin.socket. */
static const char *socket_path(struct lc_env *e)
{
    if (e->socket_path)
        return e->socket_path;
    const struct cfg *c = lc_config(e);
    return c ? c->admin.socket : NULL;
}

/* Prints a reply body as it is, or `name value` lines aligned. */
static void print_body(const char *body, bool pairs)
{
    if (pairs)
        lc_print_pairs(body, stdout);
    else
        fputs(body, stdout);
}

static int call(struct lc_env *e, const char *line, bool pairs)
{
    const char *path = socket_path(e);
    if (!path)
        return 1;
    char *body;
    bool is_err;
    int rc = lc_admin_call(path, e->socket_path ? NULL : e->config_path, line, &body, &is_err);
    if (rc != 0)
        return rc;
    if (is_err) {
        fprintf(stderr, "leadctl: ERR %s\n", body);
        free(body);
        return 1;
    }
    print_body(body, pairs && !e->json);
    free(body);
    return 0;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "leadctl: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            if (cap >= LC_MAX_LEAD_FILE) {
                fprintf(stderr, "leadctl: %s: larger than %d bytes: not a lead\n", path, LC_MAX_LEAD_FILE);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                fprintf(stderr, "leadctl: %s: read error\n", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    fclose(f);
    *len = n;
    return buf;
}

static int cmd_explain(struct lc_env *e, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: leadctl explain FILE   (one lead, JSON or msgpack)\n");
        return 1;
    }
    size_t len;
    char *data = read_file(argv[1], &len);
    if (!data)
        return 1;
    char *line, err[512];
    int rc = lc_explain_line(data, len, e->json, &line, err, sizeof err);
    free(data);
    if (rc != 0) {
        fprintf(stderr, "leadctl: %s: %s\n", argv[1], err);
        return 1;
    }
    rc = call(e, line, false);
    free(line);
    return rc;
}

/* `why` reads Redis itself (the same lookup the daemon's `why` makes), so
 * it answers while the daemon is down. */
static int cmd_why(struct lc_env *e, int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: leadctl why LEAD_ID\n");
        return 1;
    }
    const struct cfg *c = lc_config(e);
    if (!c)
        return 1;
    char err[512];
    struct admin_why *w = admin_why_new(c->prefix, argv[1], err, sizeof err);
    if (!w) {
        fprintf(stderr, "leadctl: %s\n", err);
        return 1;
    }
    redisContext *rc = lc_redis(e);
    if (!rc) {
        admin_why_free(w);
        return 2;
    }
    int ac, status = 0;
    const char **av;
    const size_t *al;
    while (status == 0 && admin_why_command(w, &ac, &av, &al)) {
        redisReply *r = redisCommandArgv(rc, ac, av, al);
        if (!r) {
            fprintf(stderr, "leadctl: redis: %s\n", rc->errstr);
            status = 2;
            break;
        }
        if (admin_why_feed(w, r, err, sizeof err) != 0) {
            fprintf(stderr, "leadctl: %s\n", err);
            status = 1;
        }
        freeReplyObject(r);
    }
    if (status == 0) {
        char *out;
        if (admin_why_result(w, e->json, &out, err, sizeof err) != 0) {
            fprintf(stderr, "leadctl: %s\n", err);
            status = 1;
        } else {
            fputs(out, stdout);
            if (e->json)
                fputs("\n", stdout);
            free(out);
        }
    }
    redisFree(rc);
    admin_why_free(w);
    return status;
}

/* Any other admin command: its words joined, "json " in front for --json. */
static int cmd_admin(struct lc_env *e, int argc, char **argv)
{
    size_t n = e->json ? 5 : 0;
    for (int i = 0; i < argc; i++) {
        if (strpbrk(argv[i], "\r\n")) {
            fprintf(stderr, "leadctl: an argument holds a line break\n");
            return 1;
        }
        n += strlen(argv[i]) + 1;
    }
    char *line = malloc(n + 1);
    if (!line) {
        fprintf(stderr, "leadctl: out of memory\n");
        return 1;
    }
    size_t o = 0;
    if (e->json) {
        memcpy(line, "json ", 5);
        o = 5;
    }
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]);
        memcpy(line + o, argv[i], l);
        o += l;
        line[o++] = i + 1 < argc ? ' ' : 0;
    }
    line[o] = 0;
    int rc = call(e, line, strcmp(argv[0], "stats") == 0);
    free(line);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct lc_env e = {.config_path = LC_DEFAULT_CONFIG};
    int opt;
    /* "+": options stop at the command, whose own options follow it. */
    while ((opt = getopt_long(argc, argv, "+c:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            e.config_path = optarg;
            break;
        case 's':
            e.socket_path = optarg;
            break;
        case 'j':
            e.json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("leadctl %s\n", LR_VERSION);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 1;
    }
    int n = argc - optind;
    char **av = argv + optind;
    const char *cmd = av[0];
    int rc;
    if (strcmp(cmd, "import") == 0)
        rc = lc_import(&e, n, av);
    else if (strcmp(cmd, "export") == 0)
        rc = lc_export(&e, n, av);
    else if (strcmp(cmd, "report") == 0)
        rc = lc_report(&e, n, av);
    else if (strcmp(cmd, "dnc") == 0)
        rc = lc_dnc(&e, n, av);
    else if (strcmp(cmd, "explain") == 0)
        rc = cmd_explain(&e, n, av);
    else if (strcmp(cmd, "why") == 0)
        rc = cmd_why(&e, n, av);
    else
        rc = cmd_admin(&e, n, av);
    cfg_free(e.cfg);
    fflush(stdout);
    return rc;
}
