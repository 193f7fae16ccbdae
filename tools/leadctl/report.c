/* report.c - `leadctl report [--since 24h|7d|YYYY-MM-DD] [--by
 * niche|source|dealer|reason] [--csv]`: what happened to the leads, from
 * the hourly counters the commit script keeps in <p>:stats:<YYYYMMDDHH>
 * (UTC hours; shared by every daemon, kept 400 days).
 *
 * The hash fields read: received, assigned, unassigned, unassigned:<reason>,
 * dead, returned, dealer:<id>:assigned, niche:<n>:assigned|unassigned,
 * source:<s>:assigned|unassigned. A niche's or source's received is its
 * assigned + unassigned (dead letters and unknown niches have no niche: the
 * "(none)" row holds them, so the rows add up to the total); duplicates are
 * unassigned:duplicate + unassigned:duplicate_id. One pipelined HGETALL per
 * hour. */
#include "csv.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadctl.h"
#include "leadrouter/config.h"

#define REPORT_MAX_HOURS (400 * 24) /* the counters' lifetime */
#define REPORT_WINDOW 500           /* HGETALLs in flight */
#define REPORT_NAME_WIDTH 40        /* longest group name a table shows */

enum report_by { BY_NICHE, BY_SOURCE, BY_DEALER, BY_REASON };
static const char *const by_names[] = {"niche", "source", "dealer", "reason"};

/* One group's counters, summed over the hours. */
struct grp {
    char *name; /* (owned) */
    long long assigned, unassigned;
};

/* Groups as read, merged by name once all hours are read. */
struct grps {
    struct grp *g; /* (owned) */
    size_t n, cap;
};

struct report {
    enum report_by by;
    bool csv;
    struct grps by_group; /* niche, source or dealer */
    struct grps reasons;  /* unassigned by reason */
    long long received, assigned, unassigned, dead, returned, duplicates;
    long long hours_with_data;
};

/* Adds counts to the group named p[0..len) (duplicates merged later). */
static int grp_add(struct grps *r, const char *p, size_t len, long long a, long long u)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct grp *ng = realloc(r->g, cap * sizeof *ng);
        if (!ng)
            return -1;
        r->g = ng;
        r->cap = cap;
    }
    char *name = malloc(len + 1);
    if (!name)
        return -1;
    memcpy(name, p, len);
    name[len] = 0;
    r->g[r->n++] = (struct grp){name, a, u};
    return 0;
}

static void grps_free(struct grps *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->g[i].name);
    free(r->g);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct grp *)a)->name, ((const struct grp *)b)->name);
}

static long long grp_total(const struct grp *g)
{
    return g->assigned + g->unassigned;
}

static int cmp_total(const void *a, const void *b)
{
    const struct grp *x = a, *y = b;
    long long tx = grp_total(x), ty = grp_total(y);
    if (tx != ty)
        return tx > ty ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Sums the groups of the same name, then orders them by size. */
static void grp_merge(struct grps *r)
{
    if (r->n == 0)
        return;
    qsort(r->g, r->n, sizeof *r->g, cmp_name);
    size_t w = 0;
    for (size_t i = 1; i < r->n; i++) {
        if (strcmp(r->g[i].name, r->g[w].name) == 0) {
            r->g[w].assigned += r->g[i].assigned;
            r->g[w].unassigned += r->g[i].unassigned;
            free(r->g[i].name);
        } else {
            r->g[++w] = r->g[i];
        }
    }
    r->n = w + 1;
    qsort(r->g, r->n, sizeof *r->g, cmp_total);
}

static bool starts(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && memcmp(s, prefix, n) == 0;
}

static bool ends(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

/* One field of an hour's hash. */
static int take(struct report *r, const char *f, size_t len, long long v)
{
    static const char *const prefixes[] = {"niche:", "source:", "dealer:"};
    if (len == 8 && memcmp(f, "received", 8) == 0)
        r->received += v;
    else if (len == 8 && memcmp(f, "assigned", 8) == 0)
        r->assigned += v;
    else if (len == 10 && memcmp(f, "unassigned", 10) == 0)
        r->unassigned += v;
    else if (len == 4 && memcmp(f, "dead", 4) == 0)
        r->dead += v;
    else if (len == 8 && memcmp(f, "returned", 8) == 0)
        r->returned += v;
    else if (starts(f, len, "unassigned:")) {
        size_t pl = strlen("unassigned:");
        if ((len - pl == 9 && memcmp(f + pl, "duplicate", 9) == 0) ||
            (len - pl == 12 && memcmp(f + pl, "duplicate_id", 12) == 0))
            r->duplicates += v;
        return grp_add(&r->reasons, f + pl, len - pl, 0, v);
    } else if (r->by != BY_REASON && starts(f, len, prefixes[r->by])) {
        size_t pl = strlen(prefixes[r->by]);
        if (ends(f, len, ":unassigned") && len > pl + 11)
            return grp_add(&r->by_group, f + pl, len - pl - 11, 0, v);
        if (ends(f, len, ":assigned") && len > pl + 9)
            return grp_add(&r->by_group, f + pl, len - pl - 9, v, 0);
    }
    return 0;
}

/* ---- the period -------------------------------------------------------- */

/* The first hour (unix s, on the hour) of the period --since names, given
 * now. -1 with the reason otherwise. */
static long long period_start(const char *since, long long now, char *err, size_t errlen)
{
    long long hour = now - now % 3600;
    char *end;
    if (since[0] >= '0' && since[0] <= '9' && strlen(since) <= 6) {
        long long n = strtoll(since, &end, 10);
        long long hours = *end == 'h' ? n : *end == 'd' ? n * 24 : -1;
        if (end[0] == 0 || end[1] != 0 || hours < 1 || hours > REPORT_MAX_HOURS) {
            snprintf(err, errlen, "--since %s: use Nh or Nd (at most %d days), or YYYY-MM-DD", since,
                     REPORT_MAX_HOURS / 24);
            return -1;
        }
        return hour - (hours - 1) * 3600;
    }
    struct tm tm = {0};
    end = strptime(since, "%Y-%m-%d", &tm);
    if (!end || *end) {
        snprintf(err, errlen, "--since %s: use Nh or Nd, or a UTC date YYYY-MM-DD", since);
        return -1;
    }
    int mday = tm.tm_mday;
    long long t = (long long)timegm(&tm);
    if (tm.tm_mday != mday) {
        snprintf(err, errlen, "--since %s: no such date", since);
        return -1;
    }
    if (t > now) {
        snprintf(err, errlen, "--since %s: that is in the future (UTC)", since);
        return -1;
    }
    if ((hour - t) / 3600 + 1 > REPORT_MAX_HOURS) {
        snprintf(err, errlen, "--since %s: the counters are kept %d days", since, REPORT_MAX_HOURS / 24);
        return -1;
    }
    return t;
}

static void hour_key(const char *prefix, long long t, char *out, size_t len)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, len, "%s:stats:%04d%02d%02d%02d", prefix, tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour);
}

static void hour_text(long long t, char *out, size_t len)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, len, "%04d-%02d-%02d %02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min);
}

/* Reads the hashes of hours [from, to] (pipelined). 0, or -1 (printed). */
static int read_hours(struct report *r, redisContext *rc, const char *prefix, long long from, long long to)
{
    for (long long t = from; t <= to;) {
        long long batch = 0;
        for (; t <= to && batch < REPORT_WINDOW; t += 3600, batch++) {
            char key[200];
            hour_key(prefix, t, key, sizeof key);
            if (redisAppendCommand(rc, "HGETALL %s", key) != REDIS_OK) {
                fprintf(stderr, "leadctl: out of memory\n");
                return -1;
            }
        }
        for (long long k = 0; k < batch; k++) {
            redisReply *h = NULL;
            if (redisGetReply(rc, (void **)&h) != REDIS_OK || !h) {
                fprintf(stderr, "leadctl: lost the connection to redis: %s\n", rc->errstr);
                return -2;
            }
            int bad = h->type != REDIS_REPLY_ARRAY;
            if (bad)
                fprintf(stderr, "leadctl: redis HGETALL failed: %s\n",
                        h->type == REDIS_REPLY_ERROR ? h->str : "unexpected reply");
            r->hours_with_data += !bad && h->elements > 0;
            for (size_t i = 0; !bad && i + 1 < h->elements; i += 2) {
                const redisReply *f = h->element[i], *v = h->element[i + 1];
                if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                    continue;
                char *end;
                long long n = strtoll(v->str, &end, 10);
                if (*end || n < 0)
                    continue; /* not a counter: not ours */
                if (take(r, f->str, f->len, n) < 0) {
                    fprintf(stderr, "leadctl: out of memory\n");
                    bad = 1;
                }
            }
            freeReplyObject(h);
            if (bad) {
                /* read the rest of the window so the connection stays usable */
                for (k++; k < batch; k++)
                    if (redisGetReply(rc, (void **)&h) == REDIS_OK && h)
                        freeReplyObject(h);
                return -1;
            }
        }
    }
    return 0;
}

/* ---- output ------------------------------------------------------------ */

struct row {
    const char *name;
    long long received, assigned, unassigned, returned, duplicates; /* -1: not counted per group */
    double share;                                                   /* -1: none */
};

static void pct(double num, double den, char *out, size_t len)
{
    if (den <= 0 || num < 0)
        snprintf(out, len, "-");
    else
        snprintf(out, len, "%.1f", 100.0 * num / den);
}

static void num(long long v, char *out, size_t len)
{
    if (v < 0)
        snprintf(out, len, "-");
    else
        snprintf(out, len, "%lld", v);
}

/* The cells of a row, as text ("-": not applicable), in column order:
 * received, assigned, unassigned, returned, duplicates, share %, assigned %. */
#define ROW_CELLS 7
static void row_cells(const struct row *x, char cell[ROW_CELLS][32])
{
    num(x->received, cell[0], 32);
    num(x->assigned, cell[1], 32);
    num(x->unassigned, cell[2], 32);
    num(x->returned, cell[3], 32);
    num(x->duplicates, cell[4], 32);
    if (x->share < 0)
        snprintf(cell[5], 32, "-");
    else
        snprintf(cell[5], 32, "%.1f", x->share);
    pct((double)x->assigned, (double)x->received, cell[6], 32);
}

/* A name safe for an aligned terminal table. */
/* A group name as shown (a source or campaign is the producer's text):
 * control bytes become '?', and at most width bytes, "..." marking a cut. */
static void shown_name_w(const char *s, char *out, size_t len, size_t width)
{
    size_t n = 0;
    for (; s[n] && n + 1 < len && n < width; n++)
        out[n] = (unsigned char)s[n] < 0x20 || s[n] == 0x7f ? '?' : s[n];
    out[n] = 0;
    if (s[n] && n >= 3)
        memcpy(out + n - 3, "...", 3);
}

static void shown_name(const char *s, char *out, size_t len)
{
    shown_name_w(s, out, len, REPORT_NAME_WIDTH);
}

static void print_rows(enum report_by by, const struct row *rows, size_t n)
{
    static const char *const heads[] = {"RECEIVED",   "ASSIGNED", "UNASSIGNED", "RETURNED",
                                        "DUPLICATES", "SHARE%",   "ASSIGNED%"};
    enum { NC = ROW_CELLS };
    /* the columns that mean something for this grouping */
    static const bool shown[4][NC] = {
        [BY_NICHE] = {1, 1, 1, 1, 1, 1, 1},
        [BY_SOURCE] = {1, 1, 1, 1, 1, 1, 1},
        [BY_DEALER] = {0, 1, 0, 0, 0, 1, 0},
        [BY_REASON] = {0, 0, 1, 0, 0, 1, 0},
    };
    char cell[NC][32], name[REPORT_NAME_WIDTH + 8];
    int w0 = by == BY_REASON ? 17 : (int)strlen(by_names[by]);
    int w[NC];
    for (int i = 0; i < NC; i++)
        w[i] = (int)strlen(heads[i]);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            printf("%-*s", w0, by == BY_REASON ? "UNASSIGNED REASON" : by_names[by]);
            for (int i = 0; i < NC; i++)
                if (shown[by][i])
                    printf("  %*s", w[i], heads[i]);
            printf("\n");
        }
        for (size_t k = 0; k < n; k++) {
            const struct row *x = &rows[k];
            row_cells(x, cell);
            shown_name(x->name, name, sizeof name);
            if (pass == 0) {
                if ((int)strlen(name) > w0)
                    w0 = (int)strlen(name);
                for (int i = 0; i < NC; i++)
                    if ((int)strlen(cell[i]) > w[i])
                        w[i] = (int)strlen(cell[i]);
                continue;
            }
            printf("%-*s", w0, name);
            for (int i = 0; i < NC; i++)
                if (shown[by][i])
                    printf("  %*s", w[i], cell[i]);
            printf("\n");
        }
    }
}

static void csv_rows(enum report_by by, const struct row *rows, size_t n)
{
    printf("%s,received,assigned,unassigned,returned,duplicates,share_pct,assigned_pct\r\n", by_names[by]);
    for (size_t k = 0; k < n; k++) {
        const struct row *x = &rows[k];
        char c[ROW_CELLS][32];
        row_cells(x, c);
        char name[1024];
        shown_name_w(x->name, name, sizeof name, sizeof name - 1);
        csv_write_field(stdout, name, strlen(name), ',');
        for (int i = 0; i < ROW_CELLS; i++)
            printf(",%s", strcmp(c[i], "-") == 0 ? "" : c[i]);
        printf("\r\n");
    }
}

/* The rows of the chosen grouping, then "(none)" for what has no group,
 * then the total. */
static int build_rows(const struct report *r, enum report_by by, struct row **out, size_t *n_out)
{
    const struct grps *gs = by == BY_REASON ? &r->reasons : &r->by_group;
    struct row *rows = calloc(gs->n + 2, sizeof *rows);
    if (!rows)
        return -1;
    size_t n = 0;
    long long sum_a = 0, sum_u = 0, assignments = 0;
    for (size_t i = 0; i < gs->n; i++)
        assignments += gs->g[i].assigned;
    for (size_t i = 0; i < gs->n; i++) {
        const struct grp *g = &gs->g[i];
        struct row *x = &rows[n++];
        x->name = g->name;
        x->returned = x->duplicates = -1;
        sum_a += g->assigned;
        sum_u += g->unassigned;
        switch (by) {
        case BY_DEALER: /* a lead sold to k dealers is k assignments */
            x->received = x->unassigned = -1;
            x->assigned = g->assigned;
            x->share = assignments ? 100.0 * (double)g->assigned / (double)assignments : -1;
            break;
        case BY_REASON:
            x->received = x->assigned = -1;
            x->unassigned = g->unassigned;
            x->share = r->unassigned ? 100.0 * (double)g->unassigned / (double)r->unassigned : -1;
            break;
        default:
            x->received = g->assigned + g->unassigned;
            x->assigned = g->assigned;
            x->unassigned = g->unassigned;
            x->share = r->received ? 100.0 * (double)x->received / (double)r->received : -1;
        }
    }
    if (by == BY_NICHE || by == BY_SOURCE) {
        long long rest_a = r->assigned - sum_a, rest_u = r->unassigned - sum_u;
        long long rest = r->received - sum_a - sum_u;
        if (rest > 0 || rest_a > 0 || rest_u > 0) {
            struct row *x = &rows[n++];
            x->name = "(none)";
            x->received = rest;
            x->assigned = rest_a;
            x->unassigned = rest_u;
            x->returned = x->duplicates = -1;
            x->share = r->received ? 100.0 * (double)rest / (double)r->received : -1;
        }
    }
    struct row *t = &rows[n++];
    t->name = "(total)";
    t->received = r->received;
    t->assigned = by == BY_DEALER ? assignments : r->assigned;
    t->unassigned = r->unassigned;
    t->returned = r->returned;
    t->duplicates = r->duplicates;
    t->share = r->received || (by == BY_DEALER && assignments) ? 100.0 : -1;
    *out = rows;
    *n_out = n;
    return 0;
}

static const char report_usage[] =
    "usage: leadctl report [--since 24h|7d|YYYY-MM-DD] [--by niche|source|dealer|reason] [--csv]\n"
    "  From the hourly counters <p>:stats:* (UTC hours). Default: --since 24h --by niche.\n";

int lc_report(struct lc_env *e, int argc, char **argv)
{
    struct report r = {.by = BY_NICHE};
    const char *since = "24h";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = NULL;
        if (strcmp(a, "--csv") == 0) {
            r.csv = true;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(report_usage, stdout);
            return 0;
        }
        bool is_since = strncmp(a, "--since", 7) == 0 && (a[7] == 0 || a[7] == '=');
        bool is_by = strncmp(a, "--by", 4) == 0 && (a[4] == 0 || a[4] == '=');
        if (!is_since && !is_by) {
            fprintf(stderr, "leadctl report: unknown argument %s\n%s", a, report_usage);
            return 1;
        }
        const char *eq = strchr(a, '=');
        v = eq ? eq + 1 : i + 1 < argc ? argv[++i] : NULL;
        if (!v || !*v) {
            fprintf(stderr, "leadctl report: %s needs a value\n%s", a, report_usage);
            return 1;
        }
        if (is_since) {
            since = v;
            continue;
        }
        size_t k = 0;
        while (k < 4 && strcmp(v, by_names[k]) != 0)
            k++;
        if (k == 4) {
            fprintf(stderr, "leadctl report: --by %s: use niche, source, dealer or reason\n", v);
            return 1;
        }
        r.by = (enum report_by)k;
    }

    const struct cfg *c = lc_config(e);
    if (!c)
        return 1;
    redisContext *rc = lc_redis(e);
    if (!rc)
        return 2;
    int status = 0;
    /* Redis's clock: the one the daemons' counters and caps agree on. */
    redisReply *tr = redisCommand(rc, "TIME");
    if (!tr || tr->type != REDIS_REPLY_ARRAY || tr->elements != 2) {
        fprintf(stderr, "leadctl: redis TIME failed: %s\n", tr ? "unexpected reply" : rc->errstr);
        if (tr)
            freeReplyObject(tr);
        redisFree(rc);
        return 2;
    }
    long long now = strtoll(tr->element[0]->str, NULL, 10);
    freeReplyObject(tr);
    char err[200];
    long long from = period_start(since, now, err, sizeof err);
    if (from < 0) {
        fprintf(stderr, "leadctl report: %s\n", err);
        redisFree(rc);
        return 1;
    }
    long long to = now - now % 3600;
    int rd = read_hours(&r, rc, c->prefix, from, to);
    redisFree(rc);
    if (rd < 0) {
        status = rd == -2 ? 2 : 1;
        goto done;
    }
    grp_merge(&r.by_group);
    grp_merge(&r.reasons);
    struct row *rows = NULL;
    size_t n = 0;
    if (build_rows(&r, r.by, &rows, &n) < 0) {
        fprintf(stderr, "leadctl: out of memory\n");
        status = 70;
        goto done;
    }
    if (r.csv) {
        csv_rows(r.by, rows, n);
    } else {
        char a[64], b[64];
        hour_text(from, a, sizeof a);
        hour_text(now, b, sizeof b);
        printf("leads from %s to %s UTC, by %s (%s:stats:*, %lld of %lld hours with data)\n\n", a, b,
               by_names[r.by], c->prefix, r.hours_with_data, (to - from) / 3600 + 1);
        print_rows(r.by, rows, n);
        char ap[16];
        pct((double)r.assigned, (double)r.received, ap, sizeof ap);
        printf("\nreceived %lld: assigned %lld (%s%%), unassigned %lld, dead letters %lld; returned %lld, "
               "duplicates %lld\n",
               r.received, r.assigned, ap, r.unassigned, r.dead, r.returned, r.duplicates);
        if (r.by == BY_DEALER)
            printf(
                "(a lead sold to several dealers counts once per dealer: SHARE%% is of the assignments)\n");
        else if (r.by != BY_REASON)
            printf("(returned and duplicates are counted in total only)\n");
        if (r.by != BY_REASON && r.unassigned > 0) {
            free(rows);
            rows = NULL;
            if (build_rows(&r, BY_REASON, &rows, &n) == 0) {
                printf("\n");
                print_rows(BY_REASON, rows, n);
            }
        }
    }
    free(rows);
    if (fflush(stdout) != 0)
        status = 1;
done:
    grps_free(&r.by_group);
    grps_free(&r.reasons);
    return status;
}
