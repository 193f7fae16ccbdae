/* admin.c - the admin/stats socket (SPEC section 6): a Unix stream socket
 * served on the daemon's libevent loop, one command table from which
 * `help` is generated, and the runtime controls (pause, weight) that
 * survive reloads.
 *
 * Nothing a client does may hurt routing: every client has a bounded input
 * line (bufferevent read watermark), its pending output is bounded (a
 * client that does not read its replies is dropped), the number of clients
 * is bounded, and nothing blocks the loop. Commands that need Redis (`why`,
 * the cap counters of `dealers`) go through rq_command and answer when the
 * reply comes; a client that left meanwhile is simply not answered. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "leadrouter/admin.h"
#include "leadrouter/config.h"
#include "leadrouter/log.h"
#include "leadrouter/rq.h"
#include "leadrouter/rules.h"
#include "leadrouter/stats.h"

#define ADMIN_MAX_WORDS 8

/* ======================================================== controls === */

/* An ops setting for one dealer id (kept across reloads). */
struct override {
    char *id; /* owned */
    bool paused;
    uint32_t weight; /* 0: the config's */
};

struct admin_controls {
    struct override *ov;
    uint32_t n_ov, cap_ov;
    const struct rules_table *t; /* the last applied table (ref) */
    uint8_t *paused;             /* per dealer of t (owned) */
    uint32_t *weight;            /* per dealer of t (owned) */
};

struct admin_controls *admin_controls_new(void)
{
    return calloc(1, sizeof(struct admin_controls));
}

void admin_controls_free(struct admin_controls *c)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < c->n_ov; i++)
        free(c->ov[i].id);
    free(c->ov);
    free(c->paused);
    free(c->weight);
    free(c);
}

int admin_controls_apply(struct admin_controls *c, const struct rules_table *t)
{
    size_t n = t->n_dealers ? t->n_dealers : 1;
    uint8_t *p = calloc(n, 1);
    uint32_t *w = calloc(n, sizeof *w);
    if (!p || !w) {
        free(p);
        free(w);
        return -1;
    }
    for (uint32_t i = 0; i < t->n_dealers; i++)
        w[i] = (uint32_t)t->dealers[i].weight;
    /* Overrides of dealers the new table lacks are kept: they apply again
     * if the dealer comes back. */
    for (uint32_t k = 0; k < c->n_ov; k++) {
        int di = rules_dealer_find(t, c->ov[k].id, strlen(c->ov[k].id));
        if (di < 0)
            continue;
        p[di] = c->ov[k].paused;
        if (c->ov[k].weight)
            w[di] = c->ov[k].weight;
    }
    free(c->paused);
    free(c->weight);
    c->paused = p;
    c->weight = w;
    c->t = t;
    return 0;
}

const uint8_t *admin_controls_paused(const struct admin_controls *c)
{
    return c->paused;
}

const uint32_t *admin_controls_weight(const struct admin_controls *c)
{
    return c->weight;
}

static struct override *find_override(const struct admin_controls *c, const char *id)
{
    for (uint32_t k = 0; k < c->n_ov; k++)
        if (strcmp(c->ov[k].id, id) == 0)
            return &c->ov[k];
    return NULL;
}

bool admin_controls_weight_overridden(const struct admin_controls *c, uint32_t dealer)
{
    if (!c->t || dealer >= c->t->n_dealers)
        return false;
    const struct override *o = find_override(c, c->t->dealers[dealer].id);
    return o && o->weight;
}

/* The dealer's index in the applied table and its override (created when
 * missing), or -1 with the reason. */
static int control_slot(struct admin_controls *c, const char *dealer, struct override **ov, char *err,
                        size_t errlen)
{
    int di = c->t ? rules_dealer_find(c->t, dealer, strlen(dealer)) : -1;
    if (di < 0) {
        snprintf(err, errlen, "unknown dealer '%.64s'", dealer);
        return -1;
    }
    *ov = find_override(c, dealer);
    if (*ov)
        return di;
    if (c->n_ov == c->cap_ov) {
        uint32_t nc = c->cap_ov ? c->cap_ov * 2 : 8;
        struct override *no = realloc(c->ov, nc * sizeof *no);
        if (!no) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        c->ov = no;
        c->cap_ov = nc;
    }
    struct override *o = &c->ov[c->n_ov];
    o->id = strdup(c->t->dealers[di].id);
    if (!o->id) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    o->paused = false;
    o->weight = 0;
    c->n_ov++;
    *ov = o;
    return di;
}

/* Drops an override that no longer changes anything. */
static void tidy(struct admin_controls *c, struct override *o)
{
    if (o->paused || o->weight)
        return;
    free(o->id);
    *o = c->ov[--c->n_ov];
}

int admin_controls_pause(struct admin_controls *c, const char *dealer, bool paused, char *err, size_t errlen)
{
    struct override *o;
    int di = control_slot(c, dealer, &o, err, errlen);
    if (di < 0)
        return -1;
    o->paused = paused;
    c->paused[di] = paused;
    tidy(c, o);
    return 0;
}

int admin_controls_set_weight(struct admin_controls *c, const char *dealer, uint32_t weight, char *err,
                              size_t errlen)
{
    if (weight > RULES_MAX_WEIGHT) {
        snprintf(err, errlen, "weight must be 1-%d (or \"default\")", RULES_MAX_WEIGHT);
        return -1;
    }
    struct override *o;
    int di = control_slot(c, dealer, &o, err, errlen);
    if (di < 0)
        return -1;
    o->weight = weight;
    c->weight[di] = weight ? weight : (uint32_t)c->t->dealers[di].weight;
    tidy(c, o);
    return 0;
}

/* ========================================================== server === */

struct pending;

struct client {
    struct admin *a;
    struct bufferevent *bev;
    struct client *prev, *next;
    struct pending *pending; /* a reply awaited from Redis, or NULL */
    bool closing;            /* close once the output is flushed */
    bool eof;                /* the client shut down its side: answer, then close */
    int uid, pid;
};

struct admin {
    struct event_base *base;
    struct admin_env env;
    struct evconnlistener *lev;
    struct event *accept_retry; /* re-enables accepting after EMFILE */
    char *path;                 /* the socket file (owned), NULL without socket */
    dev_t dev;
    ino_t ino;
    struct client *clients;
    int n_clients;
    /* Connections, refusals and idle closes are said at most once a
     * second each, with the number of those not said in between. */
    struct said {
        int64_t at_ms;
        unsigned unsaid;
    } said_conn, said_refused, said_idle;
};

/* true when the event may be logged now; *unsaid: how many were not. */
static bool say_now(struct said *s, unsigned *unsaid)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (s->at_ms != 0 && now - s->at_ms < 1000) {
        s->unsaid++;
        return false;
    }
    *unsaid = s->unsaid;
    s->at_ms = now;
    s->unsaid = 0;
    return true;
}

/* One command being run. */
struct req {
    struct admin *a;
    struct client *c; /* NULL in admin_exec: no deferred replies */
    int argc;
    char **argv;      /* argv[0] is the command */
    const char *rest; /* the raw text after the command word */
    size_t rest_len;
    bool json;
    struct evbuffer *body;
    char err[1024];
};

enum { CMD_OK, CMD_ERR, CMD_DEFERRED };

typedef int (*cmd_fn)(struct req *r);

struct command {
    const char *name;
    const char *args; /* usage after the name */
    const char *help;
    int min_args, max_args; /* words after the name */
    bool raw;               /* takes the rest of the line as is */
    cmd_fn fn;
};

static const struct command commands[];
static const size_t n_commands;

/* ---- replies ----------------------------------------------------------- */

/* Appends body to out as reply lines: every line ends with "\n", a line
 * starting with "." gets another "." in front, and the reply ends with a
 * line ".". */
static void frame(struct evbuffer *out, const char *body, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(body + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (body + i)) : len - i;
        if (body[i] == '.')
            evbuffer_add(out, ".", 1);
        evbuffer_add(out, body + i, n);
        evbuffer_add(out, "\n", 1);
        i += n + (nl ? 1 : 0);
    }
    evbuffer_add(out, ".\n", 2);
}

static void frame_evbuffer(struct evbuffer *out, struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    const char *p = len ? (const char *)evbuffer_pullup(body, -1) : "";
    frame(out, p ? p : "", p ? len : 0);
}

/* "ERR <message>" on one line (the message's control bytes made visible). */
static void frame_err(struct evbuffer *out, const char *msg)
{
    evbuffer_add(out, "ERR ", 4);
    for (const char *p = msg; *p; p++) {
        char ch = (*p == '\n' || *p == '\r' || (unsigned char)*p < 0x20) ? ' ' : *p;
        evbuffer_add(out, &ch, 1);
    }
    evbuffer_add(out, "\n.\n", 3);
}

__attribute__((format(printf, 2, 3))) static int fail(struct req *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    return CMD_ERR;
}

static int put_json(struct req *r, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    if (!s)
        return fail(r, "out of memory");
    evbuffer_add_printf(r->body, "%s\n", s);
    free(s);
    return CMD_OK;
}

static int put_string(struct req *r, char *s)
{
    if (!s)
        return fail(r, "out of memory");
    evbuffer_add(r->body, s, strlen(s));
    free(s);
    return CMD_OK;
}

/* A printable copy of hostile bytes for messages: at most max bytes,
 * others than printable ASCII shown as '?'. */
static void visible(const char *s, size_t len, char *out, size_t max)
{
    size_t n = len < max - 1 ? len : max - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[n] = 0;
}

/* ---- aligned tables ---------------------------------------------------- */

struct tbl {
    size_t ncol;
    char **cells; /* row-major (owned) */
    size_t nrows, cap;
    bool failed;
};

__attribute__((format(printf, 3, 4))) static void tbl_cell(struct tbl *t, size_t col, const char *fmt, ...)
{
    if (t->failed)
        return;
    if (col == 0) {
        if (t->nrows == t->cap) {
            size_t nc = t->cap ? t->cap * 2 : 16;
            char **c = realloc(t->cells, nc * t->ncol * sizeof *c);
            if (!c) {
                t->failed = true;
                return;
            }
            t->cells = c;
            t->cap = nc;
        }
        memset(&t->cells[t->nrows * t->ncol], 0, t->ncol * sizeof *t->cells);
        t->nrows++;
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    if (!s)
        t->failed = true;
    t->cells[(t->nrows - 1) * t->ncol + col] = s;
}

static void tbl_print(struct tbl *t, struct evbuffer *out)
{
    size_t w[16] = {0};
    for (size_t i = 0; i < t->nrows * t->ncol; i++)
        if (t->cells[i] && strlen(t->cells[i]) > w[i % t->ncol])
            w[i % t->ncol] = strlen(t->cells[i]);
    for (size_t r = 0; r < t->nrows; r++) {
        for (size_t k = 0; k < t->ncol; k++) {
            const char *s = t->cells[r * t->ncol + k] ? t->cells[r * t->ncol + k] : "";
            if (k + 1 < t->ncol)
                evbuffer_add_printf(out, "%-*s  ", (int)w[k], s);
            else
                evbuffer_add_printf(out, "%s", s);
        }
        evbuffer_add(out, "\n", 1);
    }
}

static void tbl_free(struct tbl *t)
{
    for (size_t i = 0; i < t->nrows * t->ncol; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* ---- simple commands ----------------------------------------------------- */

static int cmd_help(struct req *r)
{
    if (r->json) {
        json_t *a = json_array();
        for (size_t i = 0; i < n_commands; i++)
            json_array_append_new(a, json_pack("{s:s,s:s,s:s}", "command", commands[i].name, "usage",
                                               commands[i].args, "help", commands[i].help));
        return put_json(r, json_pack("{s:o}", "commands", a));
    }
    struct tbl t = {.ncol = 2};
    for (size_t i = 0; i < n_commands; i++) {
        tbl_cell(&t, 0, "%s%s%s", commands[i].name, *commands[i].args ? " " : "", commands[i].args);
        tbl_cell(&t, 1, "%s", commands[i].help);
    }
    tbl_cell(&t, 0, "json COMMAND ...");
    tbl_cell(&t, 1, "the same command, answered with one JSON document");
    int rc = t.failed ? fail(r, "out of memory") : CMD_OK;
    if (rc == CMD_OK)
        tbl_print(&t, r->body);
    tbl_free(&t);
    return rc;
}

static int cmd_stats(struct req *r)
{
    return put_string(r, r->json ? stats_json(r->a->env.stats) : stats_text(r->a->env.stats));
}

static int cmd_metrics(struct req *r)
{
    return put_string(r, r->json ? stats_json(r->a->env.stats) : stats_prometheus(r->a->env.stats));
}

static int cmd_quit(struct req *r)
{
    if (r->c)
        r->c->closing = true;
    if (r->json)
        return put_json(r, json_pack("{s:b}", "ok", 1));
    evbuffer_add_printf(r->body, "OK bye\n");
    return CMD_OK;
}

static const struct cfg *config_of(const struct admin *a)
{
    return a->env.config ? a->env.config(a->env.ctx) : NULL;
}

static void controls_changed(struct admin *a)
{
    if (a->env.controls_changed)
        a->env.controls_changed(a->env.ctx);
}

static int reply_control(struct req *r, const char *dealer)
{
    const struct admin_controls *c = r->a->env.ctl;
    int di = rules_dealer_find(c->t, dealer, strlen(dealer));
    bool paused = di >= 0 && c->paused[di];
    uint32_t w = di >= 0 ? c->weight[di] : 0;
    int cw = di >= 0 ? c->t->dealers[di].weight : 0;
    if (r->json)
        return put_json(r, json_pack("{s:b,s:s,s:b,s:I,s:i}", "ok", 1, "dealer", dealer, "paused", paused,
                                     "weight", (json_int_t)w, "config_weight", cw));
    evbuffer_add_printf(r->body, "OK dealer %s %s, weight %u%s\n", dealer, paused ? "paused" : "active", w,
                        di >= 0 && admin_controls_weight_overridden(c, (uint32_t)di) ? " (set by ops)" : "");
    return CMD_OK;
}

static int cmd_pause_resume(struct req *r)
{
    if (!r->a->env.ctl)
        return fail(r, "no runtime controls here");
    bool pause = strcmp(r->argv[0], "pause") == 0;
    if (admin_controls_pause(r->a->env.ctl, r->argv[1], pause, r->err, sizeof r->err) != 0)
        return CMD_ERR;
    controls_changed(r->a);
    log_info("admin: uid %d: dealer %s %s", r->c ? r->c->uid : -1, r->argv[1], pause ? "paused" : "resumed");
    return reply_control(r, r->argv[1]);
}

static int cmd_weight(struct req *r)
{
    if (!r->a->env.ctl)
        return fail(r, "no runtime controls here");
    const char *s = r->argv[2];
    uint32_t w = 0;
    if (strcmp(s, "default") != 0) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || *end || end == s || v < 1 || v > RULES_MAX_WEIGHT || s[0] == '+' || s[0] == ' ')
            return fail(r, "weight must be an integer 1-%d, or \"default\" for the config's",
                        RULES_MAX_WEIGHT);
        w = (uint32_t)v;
    }
    if (admin_controls_set_weight(r->a->env.ctl, r->argv[1], w, r->err, sizeof r->err) != 0)
        return CMD_ERR;
    controls_changed(r->a);
    log_info("admin: uid %d: dealer %s weight %s", r->c ? r->c->uid : -1, r->argv[1],
             w ? s : "back to the config's");
    return reply_control(r, r->argv[1]);
}

static int cmd_reload(struct req *r)
{
    if (!r->a->env.reload)
        return fail(r, "reload is not available here");
    uint64_t gen = 0;
    log_info("admin: uid %d: reload", r->c ? r->c->uid : -1);
    if (r->a->env.reload(r->a->env.ctx, &gen, r->err, sizeof r->err) != 0)
        return CMD_ERR;
    if (r->json)
        return put_json(r, json_pack("{s:b,s:I}", "ok", 1, "generation", (json_int_t)gen));
    evbuffer_add_printf(r->body, "OK generation %" PRIu64 "\n", gen);
    return CMD_OK;
}

/* ---- niches, sources ----------------------------------------------------- */

struct count_row {
    char *name;
    uint64_t assigned, unassigned;
};

struct count_list {
    struct count_row *v;
    size_t n, cap;
    bool failed;
};

static void collect(void *ctx, const char *name, uint64_t assigned, uint64_t unassigned)
{
    struct count_list *l = ctx;
    if (l->failed)
        return;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 16;
        struct count_row *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            l->failed = true;
            return;
        }
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n].name = strdup(name);
    if (!l->v[l->n].name) {
        l->failed = true;
        return;
    }
    l->v[l->n].assigned = assigned;
    l->v[l->n].unassigned = unassigned;
    l->n++;
}

static void count_list_free(struct count_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].name);
    free(l->v);
}

static const struct count_row *count_find(const struct count_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].name, name) == 0)
            return &l->v[i];
    return NULL;
}

static int cmd_niches(struct req *r)
{
    const struct cfg *c = config_of(r->a);
    struct count_list l = {0};
    stats_each_niche(r->a->env.stats, collect, &l);
    if (l.failed) {
        count_list_free(&l);
        return fail(r, "out of memory");
    }
    json_t *arr = r->json ? json_array() : NULL;
    struct tbl t = {.ncol = 5};
    if (!r->json) {
        tbl_cell(&t, 0, "NICHE");
        tbl_cell(&t, 1, "STRATEGY");
        tbl_cell(&t, 2, "DEALERS");
        tbl_cell(&t, 3, "ASSIGNED");
        tbl_cell(&t, 4, "UNASSIGNED");
    }
    /* The niches in force, in config order, then those only the counters
     * remember (removed by a reload). */
    uint32_t nn = c ? c->rules->n_niches : 0;
    for (uint32_t i = 0; i < nn; i++) {
        const struct rules_niche *n = &c->rules->niches[i];
        const struct count_row *cr = count_find(&l, n->name);
        uint64_t as = cr ? cr->assigned : 0, un = cr ? cr->unassigned : 0;
        if (arr) {
            json_array_append_new(arr, json_pack("{s:s,s:s,s:i,s:I,s:I,s:b}", "niche", n->name, "strategy",
                                                 rules_strategy_str(n->strategy), "dealers",
                                                 (int)n->n_members, "assigned", (json_int_t)as, "unassigned",
                                                 (json_int_t)un, "configured", 1));
        } else {
            tbl_cell(&t, 0, "%s", n->name);
            tbl_cell(&t, 1, "%s", rules_strategy_str(n->strategy));
            tbl_cell(&t, 2, "%u", n->n_members);
            tbl_cell(&t, 3, "%" PRIu64, as);
            tbl_cell(&t, 4, "%" PRIu64, un);
        }
    }
    for (size_t i = 0; i < l.n; i++) {
        if (c && rules_niche_find(c->rules, l.v[i].name, strlen(l.v[i].name)) >= 0)
            continue;
        if (arr) {
            json_array_append_new(arr,
                                  json_pack("{s:s,s:n,s:i,s:I,s:I,s:b}", "niche", l.v[i].name, "strategy",
                                            "dealers", 0, "assigned", (json_int_t)l.v[i].assigned,
                                            "unassigned", (json_int_t)l.v[i].unassigned, "configured", 0));
        } else {
            tbl_cell(&t, 0, "%s", l.v[i].name);
            tbl_cell(&t, 1, "(removed)");
            tbl_cell(&t, 2, "-");
            tbl_cell(&t, 3, "%" PRIu64, l.v[i].assigned);
            tbl_cell(&t, 4, "%" PRIu64, l.v[i].unassigned);
        }
    }
    count_list_free(&l);
    int rc;
    if (arr) {
        rc = put_json(r, arr);
    } else {
        rc = t.failed ? fail(r, "out of memory") : CMD_OK;
        if (rc == CMD_OK)
            tbl_print(&t, r->body);
    }
    tbl_free(&t);
    return rc;
}

static int cmd_sources(struct req *r)
{
    struct count_list l = {0};
    stats_each_source(r->a->env.stats, collect, &l);
    if (l.failed) {
        count_list_free(&l);
        return fail(r, "out of memory");
    }
    int rc;
    if (r->json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < l.n; i++)
            json_array_append_new(arr, json_pack("{s:s,s:I,s:I}", "source", l.v[i].name, "assigned",
                                                 (json_int_t)l.v[i].assigned, "unassigned",
                                                 (json_int_t)l.v[i].unassigned));
        rc = put_json(r, arr);
    } else {
        struct tbl t = {.ncol = 3};
        tbl_cell(&t, 0, "SOURCE");
        tbl_cell(&t, 1, "ASSIGNED");
        tbl_cell(&t, 2, "UNASSIGNED");
        for (size_t i = 0; i < l.n; i++) {
            tbl_cell(&t, 0, "%s", *l.v[i].name ? l.v[i].name : "(none)");
            tbl_cell(&t, 1, "%" PRIu64, l.v[i].assigned);
            tbl_cell(&t, 2, "%" PRIu64, l.v[i].unassigned);
        }
        rc = t.failed ? fail(r, "out of memory") : CMD_OK;
        if (rc == CMD_OK)
            tbl_print(&t, r->body);
        tbl_free(&t);
    }
    count_list_free(&l);
    return rc;
}

/* ---- explain ------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int explain_payload(struct req *r, const char *payload, size_t len)
{
    const struct cfg *c = config_of(r->a);
    if (!c)
        return fail(r, "no config");
    const struct admin_controls *ctl = r->a->env.ctl;
    const uint8_t *paused = ctl && ctl->t == c->rules ? ctl->paused : NULL;
    const uint32_t *weight = ctl && ctl->t == c->rules ? ctl->weight : NULL;
    /* The daemon's live view of rotation and caps (rq follows the config
     * in force: the reload hands both the new table at once). */
    const int64_t *rr = NULL;
    const struct rules_usage *usage = NULL;
    if (r->a->env.rq)
        rq_pick_state(r->a->env.rq, &rr, &usage);
    char *out;
    if (admin_explain(c, paused, weight, rr, usage, payload, len, now_ms(), r->json, &out, r->err,
                      sizeof r->err) != 0)
        return CMD_ERR;
    evbuffer_add(r->body, out, strlen(out));
    if (r->json)
        evbuffer_add(r->body, "\n", 1);
    free(out);
    return CMD_OK;
}

static int cmd_explain(struct req *r)
{
    if (!r->rest_len)
        return fail(r, "usage: explain LEAD-JSON");
    char *mp;
    size_t mplen;
    if (admin_json_to_msgpack(r->rest, r->rest_len, &mp, &mplen, r->err, sizeof r->err) != 0)
        return CMD_ERR;
    int rc = explain_payload(r, mp, mplen);
    free(mp);
    return rc;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int cmd_explain_msgpack(struct req *r)
{
    const char *h = r->argv[1];
    size_t n = strlen(h);
    if (n == 0 || n % 2)
        return fail(r, "usage: explain-msgpack HEX (an even number of hex digits)");
    char *buf = malloc(n / 2);
    if (!buf)
        return fail(r, "out of memory");
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            free(buf);
            return fail(r, "bad hex digit at offset %zu", hi < 0 ? 2 * i : 2 * i + 1);
        }
        buf[i] = (char)(hi << 4 | lo);
    }
    int rc = explain_payload(r, buf, n / 2);
    free(buf);
    return rc;
}

/* ---- deferred replies ------------------------------------------------------ */

static void client_free(struct client *c);
static void process_input(struct client *c);

/* The cap usage and fairness of one dealer, taken when `dealers` ran (the
 * config may be reloaded before Redis answers). */
struct share {
    char *niche; /* owned */
    int tier;
    double entitled; /* < 0: not weight-based (nearest, least_loaded) */
    uint64_t mine, tier_total;
};

struct dealer_row {
    char *id; /* owned */
    bool paused, overridden;
    uint32_t weight;
    int config_weight;
    uint32_t caps[PERIOD_N];
    uint64_t since_start;
    long long used[3];    /* hour, day, month; -1 unknown */
    struct share *shares; /* owned */
    uint32_t n_shares;
};

struct dealers_snap {
    struct dealer_row *rows;
    uint32_t n;
    char **keys; /* MGET keys, 3 per dealer (owned) */
    size_t *keylen;
};

struct pending {
    struct client *c; /* NULL once the client left */
    bool json;
    struct admin_why *why;
    struct dealers_snap *snap;
};

static void snap_free(struct dealers_snap *s)
{
    if (!s)
        return;
    for (uint32_t i = 0; i < s->n; i++) {
        free(s->rows[i].id);
        for (uint32_t k = 0; k < s->rows[i].n_shares; k++)
            free(s->rows[i].shares[k].niche);
        free(s->rows[i].shares);
    }
    if (s->keys)
        for (uint32_t i = 0; i < s->n * 3; i++)
            free(s->keys[i]);
    free(s->keys);
    free(s->keylen);
    free(s->rows);
    free(s);
}

static void pending_free(struct pending *p)
{
    admin_why_free(p->why);
    snap_free(p->snap);
    free(p);
}

/* Delivers a deferred reply (body, or an error when err is set) and lets
 * the client's next commands run. */
static void pending_done(struct pending *p, const char *body, const char *err)
{
    struct client *c = p->c;
    pending_free(p);
    if (!c)
        return;
    c->pending = NULL;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (err)
        frame_err(out, err);
    else
        frame(out, body, strlen(body));
    process_input(c);
}

static void render_dealers(const struct dealers_snap *s, bool json, struct evbuffer *body)
{
    static const char *const pn[] = {"hour", "day", "week", "month"};
    if (json) {
        json_t *arr = json_array();
        for (uint32_t i = 0; i < s->n; i++) {
            const struct dealer_row *d = &s->rows[i];
            json_t *o = json_object(), *caps = json_object(), *sh = json_array();
            json_object_set_new(o, "dealer", json_string(d->id));
            json_object_set_new(o, "paused", json_boolean(d->paused));
            json_object_set_new(o, "weight", json_integer(d->weight));
            json_object_set_new(o, "config_weight", json_integer(d->config_weight));
            json_object_set_new(o, "weight_set_by_ops", json_boolean(d->overridden));
            if (d->used[0] < 0)
                json_object_set_new(o, "assigned", json_null());
            else
                json_object_set_new(o, "assigned",
                                    json_pack("{s:I,s:I,s:I}", "hour", (json_int_t)d->used[0], "day",
                                              (json_int_t)d->used[1], "month", (json_int_t)d->used[2]));
            for (int p = 0; p < PERIOD_N; p++)
                json_object_set_new(caps, pn[p], d->caps[p] ? json_integer(d->caps[p]) : json_null());
            json_object_set_new(o, "caps", caps);
            json_object_set_new(o, "since_start", json_integer((json_int_t)d->since_start));
            for (uint32_t k = 0; k < d->n_shares; k++) {
                const struct share *x = &d->shares[k];
                json_array_append_new(
                    sh, json_pack(
                            "{s:s,s:i,s:o,s:o,s:I,s:I}", "niche", x->niche, "tier", x->tier, "entitled",
                            x->entitled < 0 ? json_null() : json_real(x->entitled), "actual",
                            x->tier_total ? json_real((double)x->mine / (double)x->tier_total) : json_null(),
                            "assigned", (json_int_t)x->mine, "tier_assigned", (json_int_t)x->tier_total));
            }
            json_object_set_new(o, "shares", sh);
            json_array_append_new(arr, o);
        }
        char *txt = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
        json_decref(arr);
        if (txt)
            evbuffer_add_printf(body, "%s\n", txt);
        free(txt);
        return;
    }
    struct tbl t = {.ncol = 9};
    const char *head[] = {"DEALER",       "PAUSED",      "WEIGHT",
                          "HOUR",         "DAY",         "MONTH",
                          "CAPS h/d/w/m", "SINCE_START", "SHARE niche:entitled/actual"};
    for (size_t k = 0; k < 9; k++)
        tbl_cell(&t, k, "%s", head[k]);
    for (uint32_t i = 0; i < s->n; i++) {
        const struct dealer_row *d = &s->rows[i];
        char caps[4][16];
        for (int p = 0; p < PERIOD_N; p++)
            snprintf(caps[p], sizeof caps[p], d->caps[p] ? "%u" : "-", d->caps[p]);
        tbl_cell(&t, 0, "%s", d->id);
        tbl_cell(&t, 1, "%s", d->paused ? "yes" : "no");
        tbl_cell(&t, 2, "%u%s", d->weight, d->overridden ? "*" : "");
        for (int u = 0; u < 3; u++) {
            if (d->used[u] < 0)
                tbl_cell(&t, 3 + (size_t)u, "-");
            else
                tbl_cell(&t, 3 + (size_t)u, "%lld", d->used[u]);
        }
        tbl_cell(&t, 6, "%s/%s/%s/%s", caps[0], caps[1], caps[2], caps[3]);
        tbl_cell(&t, 7, "%" PRIu64, d->since_start);
        char sh[512] = "";
        size_t off = 0;
        for (uint32_t k = 0; k < d->n_shares && off < sizeof sh; k++) {
            const struct share *x = &d->shares[k];
            char ent[16], act[16];
            if (x->entitled < 0)
                snprintf(ent, sizeof ent, "-");
            else
                snprintf(ent, sizeof ent, "%.1f%%", x->entitled * 100);
            if (!x->tier_total)
                snprintf(act, sizeof act, "-");
            else
                snprintf(act, sizeof act, "%.1f%%", 100.0 * (double)x->mine / (double)x->tier_total);
            int n = snprintf(sh + off, sizeof sh - off, "%s%s:%s/%s", k ? "," : "", x->niche, ent, act);
            off = n > 0 ? off + (size_t)n : off;
        }
        tbl_cell(&t, 8, "%s", sh);
    }
    if (!t.failed)
        tbl_print(&t, body);
    tbl_free(&t);
    evbuffer_add_printf(body,
                        "(weight*: set by ops; HOUR/DAY/MONTH: assignments in the dealer's current periods, "
                        "all daemons, counted for the periods its caps name (and the day under least_loaded); SHARE: entitled by weight among the niche's dealers of the same tier "
                        "vs actual since this daemon started)\n");
}

/* A snapshot of every dealer of the config in force, with its fairness
 * ledger: in each of its niches, its weight over the weights of the
 * niche's unpaused dealers of the same tier (weighted: runtime weights;
 * round_robin: equal shares; nearest and least_loaded are not
 * weight-based) against its share of the assignments those dealers got
 * since start. */
static struct dealers_snap *snapshot(struct admin *a, const struct cfg *c)
{
    const struct rules_table *t = c->rules;
    const struct admin_controls *ctl = a->env.ctl && a->env.ctl->t == t ? a->env.ctl : NULL;
    struct dealers_snap *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->rows = calloc(t->n_dealers ? t->n_dealers : 1, sizeof *s->rows);
    s->keys = calloc(t->n_dealers * 3 + 1, sizeof *s->keys);
    s->keylen = calloc(t->n_dealers * 3 + 1, sizeof *s->keylen);
    if (!s->rows || !s->keys || !s->keylen) {
        snap_free(s);
        return NULL;
    }
    time_t now = time(NULL);
    static const enum rules_period per[3] = {PERIOD_HOUR, PERIOD_DAY, PERIOD_MONTH};
    static const char *const pname[3] = {"hour", "day", "month"};
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        const struct rules_dealer *dl = &t->dealers[i];
        struct dealer_row *d = &s->rows[i];
        s->n = i + 1;
        d->id = strdup(dl->id);
        d->paused = ctl && ctl->paused[i];
        d->weight = ctl ? ctl->weight[i] : (uint32_t)dl->weight;
        d->overridden = ctl && admin_controls_weight_overridden(ctl, i);
        d->config_weight = dl->weight;
        memcpy(d->caps, dl->caps, sizeof d->caps);
        d->since_start = stats_dealer_assigned(a->env.stats, dl->id);
        d->used[0] = d->used[1] = d->used[2] = -1;
        d->shares = calloc(dl->n_niches ? dl->n_niches : 1, sizeof *d->shares);
        if (!d->id || !d->shares) {
            snap_free(s);
            return NULL;
        }
        for (int p = 0; p < 3; p++) {
            char bucket[32];
            rules_cap_bucket(t, i, per[p], (int64_t)now, bucket, sizeof bucket);
            if (asprintf(&s->keys[i * 3 + (uint32_t)p], "%s:cap:%s:%s:%s", c->prefix, dl->id, pname[p],
                         bucket) < 0) {
                s->keys[i * 3 + (uint32_t)p] = NULL;
                snap_free(s);
                return NULL;
            }
            s->keylen[i * 3 + (uint32_t)p] = strlen(s->keys[i * 3 + (uint32_t)p]);
        }
        for (uint32_t k = 0; k < dl->n_niches; k++) {
            const struct rules_niche *n = &t->niches[dl->niches[k]];
            struct share *x = &d->shares[d->n_shares++];
            x->niche = strdup(n->name);
            if (!x->niche) {
                snap_free(s);
                return NULL;
            }
            x->tier = dl->tier;
            x->mine = stats_dealer_niche_assigned(a->env.stats, dl->id, n->name);
            double sum = 0, cnt = 0;
            for (uint32_t m = 0; m < n->n_members; m++) {
                uint32_t o = n->members[m];
                if (t->dealers[o].tier != dl->tier)
                    continue;
                x->tier_total += stats_dealer_niche_assigned(a->env.stats, t->dealers[o].id, n->name);
                if (ctl && ctl->paused[o])
                    continue;
                sum += ctl ? ctl->weight[o] : (double)t->dealers[o].weight;
                cnt += 1;
            }
            if (n->strategy == STRAT_WEIGHTED)
                x->entitled = d->paused || sum <= 0 ? 0 : d->weight / sum;
            else if (n->strategy == STRAT_ROUND_ROBIN)
                x->entitled = d->paused || cnt <= 0 ? 0 : 1 / cnt;
            else
                x->entitled = -1;
        }
    }
    return s;
}

static void on_dealers_reply(const struct redisReply *reply, void *priv)
{
    struct pending *p = priv;
    if (!p->c) {
        pending_free(p);
        return;
    }
    struct dealers_snap *s = p->snap;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == (size_t)s->n * 3)
        for (uint32_t i = 0; i < s->n * 3; i++) {
            const redisReply *e = reply->element[i];
            s->rows[i / 3].used[i % 3] = e->type == REDIS_REPLY_STRING ? strtoll(e->str, NULL, 10) : 0;
        }
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        pending_done(p, NULL, "out of memory");
        return;
    }
    render_dealers(s, p->json, body);
    evbuffer_add(body, "", 1);
    pending_done(p, (const char *)evbuffer_pullup(body, -1), NULL);
    evbuffer_free(body);
}

static int cmd_dealers(struct req *r)
{
    const struct cfg *c = config_of(r->a);
    if (!c)
        return fail(r, "no config");
    struct dealers_snap *s = snapshot(r->a, c);
    if (!s)
        return fail(r, "out of memory");
    /* Cap counters come from Redis; without it (or without a client to
     * answer later) the table shows "-". */
    if (r->c && r->a->env.rq && s->n > 0) {
        struct pending *p = calloc(1, sizeof *p);
        const char **argv = calloc((size_t)s->n * 3 + 1, sizeof *argv);
        size_t *len = calloc((size_t)s->n * 3 + 1, sizeof *len);
        if (p && argv && len) {
            argv[0] = "MGET";
            len[0] = 4;
            for (uint32_t i = 0; i < s->n * 3; i++) {
                argv[i + 1] = s->keys[i];
                len[i + 1] = s->keylen[i];
            }
            p->c = r->c;
            p->json = r->json;
            p->snap = s;
            if (rq_command(r->a->env.rq, (int)s->n * 3 + 1, argv, len, on_dealers_reply, p) == 0) {
                r->c->pending = p;
                free(argv);
                free(len);
                return CMD_DEFERRED;
            }
            p->snap = NULL;
        }
        free(p);
        free(argv);
        free(len);
    }
    render_dealers(s, r->json, r->body);
    snap_free(s);
    return CMD_OK;
}

static void on_why_reply(const struct redisReply *reply, void *priv)
{
    struct pending *p = priv;
    if (!p->c) {
        pending_free(p);
        return;
    }
    char err[512];
    if (admin_why_feed(p->why, reply, err, sizeof err) != 0) {
        pending_done(p, NULL, err);
        return;
    }
    int argc;
    const char **argv;
    const size_t *len;
    if (admin_why_command(p->why, &argc, &argv, &len)) {
        if (rq_command(p->c->a->env.rq, argc, argv, len, on_why_reply, p) != 0)
            pending_done(p, NULL,
                         "redis is down: the lookup cannot go on (leadctl why reads Redis directly)");
        return;
    }
    char *out;
    if (admin_why_result(p->why, p->json, &out, err, sizeof err) != 0) {
        pending_done(p, NULL, err);
        return;
    }
    pending_done(p, out, NULL);
    free(out);
}

static int cmd_why(struct req *r)
{
    const struct cfg *c = config_of(r->a);
    if (!c)
        return fail(r, "no config");
    if (!r->c || !r->a->env.rq)
        return fail(r, "why needs Redis, which is not available here");
    struct pending *p = calloc(1, sizeof *p);
    if (!p)
        return fail(r, "out of memory");
    p->why = admin_why_new(c->prefix, r->argv[1], r->err, sizeof r->err);
    if (!p->why) {
        free(p);
        return CMD_ERR;
    }
    p->c = r->c;
    p->json = r->json;
    int argc;
    const char **argv;
    const size_t *len;
    if (!admin_why_command(p->why, &argc, &argv, &len) ||
        rq_command(r->a->env.rq, argc, argv, len, on_why_reply, p) != 0) {
        pending_free(p);
        return fail(r, "redis is down: try `leadctl why`, which reads Redis directly");
    }
    r->c->pending = p;
    return CMD_DEFERRED;
}

/* clang-format off */
static const struct command commands[] = {
    {"help", "", "this list", 0, 0, false, cmd_help},
    {"stats", "", "counters since start: uptime, leads, in flight, redis, config generation, latency", 0, 0, false, cmd_stats},
    {"dealers", "", "per dealer: paused, weight, assignments this hour/day/month, caps, fair share", 0, 0, false, cmd_dealers},
    {"niches", "", "per niche: strategy, dealers, assigned and unassigned since start", 0, 0, false, cmd_niches},
    {"sources", "", "per lead source: assigned and unassigned since start", 0, 0, false, cmd_sources},
    {"pause", "DEALER", "stop routing to DEALER (counts as closed); survives reloads", 1, 1, false, cmd_pause_resume},
    {"resume", "DEALER", "route to DEALER again", 1, 1, false, cmd_pause_resume},
    {"weight", "DEALER N|default", "set DEALER's weight (1-1000000) until reset with \"default\"; survives reloads", 2, 2, false, cmd_weight},
    {"reload", "", "re-read the config: OK generation N, or ERR FILE:LINE: message (the old config stays)", 0, 0, false, cmd_reload},
    {"explain", "LEAD-JSON", "the routing decision for a lead, step by step, without committing it", 0, 0, true, cmd_explain},
    {"explain-msgpack", "HEX", "the same for a msgpack lead given as hex digits", 1, 1, false, cmd_explain_msgpack},
    {"why", "LEAD_ID", "the recorded decision for a lead: when, to whom, by which rule, who else and why not", 1, 1, false, cmd_why},
    {"metrics", "", "Prometheus text exposition", 0, 0, false, cmd_metrics},
    {"quit", "", "close the connection", 0, 0, false, cmd_quit},
};
static const size_t n_commands = sizeof commands / sizeof commands[0];
/* clang-format on */

/* ---- dispatch -------------------------------------------------------------- */

int admin_split(const char *line, size_t len, char *buf, char **words, int max, const char **rest)
{
    int n = 0;
    size_t i = 0, o = 0;
    *rest = line + len;
    for (;;) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i >= len)
            break;
        if (n == 1)
            *rest = line + i;
        if (n == max)
            return -1;
        words[n++] = buf + o;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            buf[o++] = line[i++];
        buf[o++] = 0;
    }
    return n;
}

/* The next blank-separated word of line[*pos..len): its start and
 * length; false at the end of the line. */
static bool next_word(const char *line, size_t len, size_t *pos, size_t *start, size_t *wlen)
{
    size_t i = *pos;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i >= len)
        return false;
    *start = i;
    while (i < len && line[i] != ' ' && line[i] != '\t')
        i++;
    *wlen = i - *start;
    *pos = i;
    return true;
}

static bool word_is(const char *line, size_t start, size_t wlen, const char *s)
{
    return wlen == strlen(s) && memcmp(line + start, s, wlen) == 0;
}

/* Runs one line; the framed reply goes to out unless deferred. */
static void run_line(struct admin *a, struct client *c, const char *line, size_t len, struct evbuffer *out)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
        len--;
    struct req r = {.a = a, .c = c};
    size_t pos = 0, ws, wl;
    if (!next_word(line, len, &pos, &ws, &wl))
        return;                 /* an empty line: nothing to answer */
    if (memchr(line, 0, len)) { /* words are C strings: "d1\0x" must not act on d1 */
        frame_err(out, "the line holds a NUL byte");
        return;
    }
    if (word_is(line, ws, wl, "json")) {
        r.json = true;
        if (!next_word(line, len, &pos, &ws, &wl)) {
            frame_err(out, "usage: json COMMAND ...");
            return;
        }
    }
    const struct command *cmd = NULL;
    for (size_t i = 0; i < n_commands && !cmd; i++)
        if (word_is(line, ws, wl, commands[i].name))
            cmd = &commands[i];
    if (!cmd) {
        char vis[40];
        visible(line + ws, wl, vis, sizeof vis);
        snprintf(r.err, sizeof r.err, "unknown command '%s' (try help)", vis);
        frame_err(out, r.err);
        return;
    }
    /* The arguments: the raw rest of the line, or words. */
    while (pos < len && (line[pos] == ' ' || line[pos] == '\t'))
        pos++;
    r.rest = line + pos;
    r.rest_len = len - pos;
    char *buf = malloc(r.rest_len + 1 + strlen(cmd->name) + 1);
    char *words[ADMIN_MAX_WORDS + 1];
    if (!buf) {
        frame_err(out, "out of memory");
        return;
    }
    strcpy(buf, cmd->name);
    words[0] = buf;
    int n = 0;
    if (!cmd->raw) {
        const char *ignored;
        n = admin_split(r.rest, r.rest_len, buf + strlen(cmd->name) + 1, words + 1, ADMIN_MAX_WORDS,
                        &ignored);
        if (n < cmd->min_args || n > cmd->max_args) {
            snprintf(r.err, sizeof r.err, "usage: %s%s%s", cmd->name, *cmd->args ? " " : "", cmd->args);
            frame_err(out, r.err);
            free(buf);
            return;
        }
    }
    r.argc = n + 1;
    r.argv = words;
    r.body = evbuffer_new();
    int rc = r.body ? cmd->fn(&r) : fail(&r, "out of memory");
    if (rc == CMD_OK)
        frame_evbuffer(out, r.body);
    else if (rc == CMD_ERR)
        frame_err(out, r.err);
    if (r.body)
        evbuffer_free(r.body);
    free(buf);
}

char *admin_exec(struct admin *a, const char *line, size_t len)
{
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return NULL;
    run_line(a, NULL, line, len, out);
    size_t n = evbuffer_get_length(out);
    char *s = malloc(n + 1);
    if (s) {
        evbuffer_remove(out, s, n);
        s[n] = 0;
    }
    evbuffer_free(out);
    return s;
}

/* ---- clients ----------------------------------------------------------------- */

static void client_free(struct client *c)
{
    struct admin *a = c->a;
    if (c->pending)
        c->pending->c = NULL; /* its reply is dropped when it comes */
    if (c->prev)
        c->prev->next = c->next;
    else
        a->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->n_clients--;
    bufferevent_free(c->bev);
    free(c);
}

/* admin.idle_timeout of the config in force. */
static int admin_idle_s(const struct admin *a)
{
    const struct cfg *cf = a->env.config ? a->env.config(a->env.ctx) : NULL;
    return cf ? cf->admin.idle_timeout : 60;
}

/* Closes after the reply in the output buffer has gone out. */
static void close_after_flush(struct client *c)
{
    c->closing = true;
    bufferevent_disable(c->bev, EV_READ);
    /* A peer that never reads must not keep us waiting for the flush. */
    struct timeval tv = {5, 0};
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    struct evbuffer *in = bufferevent_get_input(c->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        client_free(c);
}

/* Runs the complete lines buffered for c, in order, until one waits for
 * Redis. May free c. */
static void process_input(struct client *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev), *out = bufferevent_get_output(c->bev);
    while (!c->pending && !c->closing) {
        /* A client that does not read its replies is dropped before its
         * output grows past the limit by more than one reply. */
        if (evbuffer_get_length(out) > ADMIN_MAX_OUTPUT) {
            log_warn("admin: dropping client uid %d pid %d: %zu reply bytes unread", c->uid, c->pid,
                     evbuffer_get_length(out));
            client_free(c);
            return;
        }
        size_t n;
        char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
        if (!line && c->eof) {
            /* The last line may lack its newline. */
            n = evbuffer_get_length(in);
            line = n ? malloc(n + 1) : NULL;
            if (line) {
                evbuffer_remove(in, line, n);
                line[n] = 0;
            } else {
                close_after_flush(c);
                return;
            }
        }
        if (!line) {
            if (evbuffer_get_length(in) > ADMIN_MAX_LINE) {
                log_warn("admin: client uid %d pid %d sent a line over %d bytes: closing", c->uid, c->pid,
                         ADMIN_MAX_LINE);
                char msg[64];
                snprintf(msg, sizeof msg, "line too long (max %d bytes)", ADMIN_MAX_LINE);
                frame_err(out, msg);
                close_after_flush(c);
            }
            return;
        }
        run_line(c->a, c, line, n, out);
        free(line);
        if (c->closing) {
            close_after_flush(c);
            return;
        }
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    process_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct client *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        client_free(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct client *c = arg;
    if ((what & BEV_EVENT_TIMEOUT) && (what & BEV_EVENT_READING) && !c->closing) {
        unsigned unsaid;
        if (say_now(&c->a->said_idle, &unsaid))
            log_info("admin: closing client uid %d pid %d: silent for %d s (and %u others since the last one said)",
                     c->uid, c->pid, admin_idle_s(c->a), unsaid);
        client_free(c);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !c->closing) {
        /* A half-close (`echo stats | socat - UNIX:...`): answer what was
         * sent, then close. */
        c->eof = true;
        process_input(c);
        return;
    }
    client_free(c);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)lev;
    (void)sa;
    (void)salen;
    struct admin *a = arg;
    struct ucred uc = {.pid = -1, .uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t ul = sizeof uc;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) != 0)
        uc.pid = -1;
    if (a->n_clients >= ADMIN_MAX_CLIENTS) {
        static const char msg[] = "ERR too many admin clients\n.\n";
        unsigned unsaid;
        if (say_now(&a->said_refused, &unsaid))
            log_warn("admin: refusing pid %d uid %d: %d clients already (and %u others refused since the last one "
                     "said)",
                     (int)uc.pid, (int)uc.uid, a->n_clients, unsaid);
        ssize_t w = send(fd, msg, sizeof msg - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)w;
        evutil_closesocket(fd);
        return;
    }
    struct client *c = calloc(1, sizeof *c);
    struct bufferevent *bev = c ? bufferevent_socket_new(a->base, fd, BEV_OPT_CLOSE_ON_FREE) : NULL;
    if (!bev) {
        free(c);
        evutil_closesocket(fd);
        log_error("admin: out of memory accepting a client");
        return;
    }
    c->a = a;
    c->bev = bev;
    c->uid = (int)uc.uid;
    c->pid = (int)uc.pid;
    c->next = a->clients;
    if (a->clients)
        a->clients->prev = c;
    a->clients = c;
    a->n_clients++;
    unsigned unsaid;
    if (say_now(&a->said_conn, &unsaid))
        log_info("admin: client connected: pid %d uid %d gid %d (and %u other connections since the last one said)",
                 (int)uc.pid, (int)uc.uid, (int)uc.gid, unsaid);
    bufferevent_setcb(bev, on_read, on_write, on_event, c);
    /* A client silent this long (also one that sent half a line) goes, so
     * idle clients cannot hold every place. */
    struct timeval idle = {admin_idle_s(a), 0};
    bufferevent_set_timeouts(bev, &idle, NULL);
    /* The input never holds more than one line and a byte: a longer line
     * is refused without reading the rest. */
    bufferevent_setwatermark(bev, EV_READ, 0, ADMIN_MAX_LINE + 1);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct admin *a = arg;
    evconnlistener_enable(a->lev);
}

/* accept() failing (EMFILE, ENFILE, ENOMEM) would fire again at once:
 * pause accepting for a second instead of spinning. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    struct admin *a = arg;
    int e = EVUTIL_SOCKET_ERROR();
    log_error("admin: accept failed: %s; pausing new admin connections for 1 s",
              evutil_socket_error_to_string(e));
    evconnlistener_disable(lev);
    struct timeval tv = {1, 0};
    evtimer_add(a->accept_retry, &tv);
}

/* ---- the socket ------------------------------------------------------------- */

/* Binds path with mode, replacing a stale socket file (one nothing listens
 * on) but nothing else. Returns the listening fd, or -1 with the reason. */
static int listen_unix(const char *path, mode_t mode, struct stat *st, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "admin.socket '%s' is too long (max %zu bytes)", path, sizeof sun.sun_path - 1);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    struct stat old;
    if (lstat(path, &old) == 0) {
        if (!S_ISSOCK(old.st_mode)) {
            snprintf(err, errlen, "admin.socket '%s' exists and is not a socket: not touching it", path);
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (probe < 0) {
            snprintf(err, errlen, "socket: %s", strerror(errno));
            return -1;
        }
        int rc = connect(probe, (struct sockaddr *)&sun, sizeof sun);
        int e = errno;
        close(probe);
        if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
            snprintf(err, errlen, "admin.socket '%s' is in use: another leadrouterd is listening on it",
                     path);
            return -1;
        }
        if (e != ECONNREFUSED) {
            snprintf(err, errlen, "admin.socket '%s': %s", path, strerror(e));
            return -1;
        }
        if (unlink(path) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "cannot remove the stale admin.socket '%s': %s", path, strerror(errno));
            return -1;
        }
        log_info("admin: removed a stale socket file %s", path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    /* The file is created with the umask applied: no window in which it is
     * more open than mode, and never anything for others. */
    mode &= 0770;
    mode_t um = umask((mode_t)(~mode & 0777));
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    int e = errno;
    umask(um);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create admin.socket '%s': %s", path, strerror(e));
        close(fd);
        return -1;
    }
    if (chmod(path, mode) != 0 || stat(path, st) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "admin.socket '%s': %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

struct admin *admin_new(struct event_base *base, const char *path, mode_t mode, const struct admin_env *env,
                        char *err, size_t errlen)
{
    struct admin *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->base = base;
    a->env = *env;
    if (!path)
        return a;
    struct stat st;
    int fd = listen_unix(path, mode, &st, err, errlen);
    if (fd < 0) {
        free(a);
        return NULL;
    }
    a->path = strdup(path);
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    a->accept_retry = evtimer_new(base, on_accept_retry, a);
    a->lev =
        a->path && a->accept_retry
            ? evconnlistener_new(base, on_accept, a, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd)
            : NULL;
    if (!a->lev) {
        close(fd);
        unlink(path);
        snprintf(err, errlen, "out of memory");
        if (a->accept_retry)
            event_free(a->accept_retry);
        free(a->path);
        free(a);
        return NULL;
    }
    evconnlistener_set_error_cb(a->lev, on_accept_error);
    log_info("admin: listening on %s (mode %04o)", path, (unsigned)(mode & 0770));
    return a;
}

void admin_free(struct admin *a)
{
    if (!a)
        return;
    while (a->clients)
        client_free(a->clients);
    if (a->lev)
        evconnlistener_free(a->lev);
    if (a->accept_retry)
        event_free(a->accept_retry);
    if (a->path) {
        /* Only our own file: another daemon may have replaced it since. */
        struct stat st;
        if (lstat(a->path, &st) == 0 && st.st_dev == a->dev && st.st_ino == a->ino)
            unlink(a->path);
        free(a->path);
    }
    free(a);
}
