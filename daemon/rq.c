/* rq.c - the daemon's Redis side: connections, input consumer, returns,
 * and the atomic commit (daemon/commit.lua). hiredis 0.14 async API on the
 * libevent adapter; see ../shared/REDIS-NOTES.md for the traps avoided. */
#include <errno.h>
#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "leadrouter/codec.h"
#include "leadrouter/commit.h"
#include "leadrouter/log.h"
#include "leadrouter/rq.h"
#include "leadrouter/stats.h"

extern const char lr_commit_lua[];
extern const unsigned long lr_commit_lua_len;

#define READ_BLOCK_MS 1000
#define RETURNS_POLL_MS 200
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

/* A batch of leads (or one return) whose commit awaits its reply. */
struct batch {
    struct rq *q;
    bool busy;       /* sent, no reply yet */
    bool resend;     /* its connection dropped before the reply: send again */
    bool dynamic;    /* a return: freed after the reply */
    bool is_return;
    char ref[64];    /* the first entry id, for logs */
    struct commit_args args;
};

struct rq {
    struct event_base *base;
    const struct cfg *cfg;
    redisAsyncContext *rd, *wr;
    bool rd_up, wr_up;     /* connected and set up */
    int wr_setup;          /* setup replies still awaited on wr */
    bool ready, was_ready, stopping, reading, polling_returns, exited;
    int inflight;
    char consumer[128];
    char proc[256];        /* list mode: this consumer's processing list */
    char sha[41];
    int64_t time_offset_ms; /* Redis TIME - local clock */
    int64_t started_ms;
    int backoff_ms;
    struct event *retry_ev, *returns_ev;
    struct rules_scratch *scratch;
    const struct rules_table *scratch_for;
    struct codec_lead *codec;
    struct batch input;    /* the input batch: one in flight at a time */
    struct batch recov;    /* the recovery batch (may be in flight beside input) */
    struct event *recover_ev;
    bool recovering;       /* an XPENDING/XCLAIM round is under way */
    int n_claim;           /* the last round's ids and their delivery counts */
    char (*claim_ids)[64];
    long long *claim_deliveries;
    struct rq_stats st;
    struct stats *stats;    /* ops statistics, or NULL */
    const uint8_t *paused;  /* runtime controls per dealer of cfg, or NULL */
    const uint32_t *weight;
    void (*on_ready)(void *);
    void (*on_exit)(void *, int);
    void *ctx;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t redis_now_ms(const struct rq *q)
{
    return wall_ms() + q->time_offset_ms;
}

static void finish(struct rq *q, int code)
{
    if (q->exited)
        return;
    q->exited = true;
    q->stopping = true; /* the contexts are freed next: no reconnecting */
    if (q->on_exit)
        q->on_exit(q->ctx, code);
}

static void connect_both(struct rq *q);

static void schedule_reconnect(struct rq *q)
{
    if (q->stopping || q->exited)
        return;
    if (!q->was_ready && wall_ms() - q->started_ms > (int64_t)q->cfg->redis.startup_timeout * 1000) {
        log_error("redis unreachable for %d s at start-up: giving up", q->cfg->redis.startup_timeout);
        finish(q, 2);
        return;
    }
    /* Capped exponential backoff with jitter, so that many daemons do not
     * come back in step. */
    int ms = q->backoff_ms + (int)(random() % (q->backoff_ms / 2 + 1));
    q->backoff_ms = q->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : q->backoff_ms * 2;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(q->retry_ev, &tv);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_both(arg);
}

/* ------------------------------------------------------------ commits --- */

static void read_next(struct rq *q);
static void maybe_finish(struct rq *q);
static void on_commit(redisAsyncContext *ac, void *reply, void *priv);

static void send_commit(struct rq *q, struct batch *b, bool full_script)
{
    struct commit_args *a = &b->args;
    a->argv[0] = full_script ? "EVAL" : "EVALSHA";
    a->len[0] = strlen(a->argv[0]);
    a->argv[1] = full_script ? lr_commit_lua : q->sha;
    a->len[1] = full_script ? lr_commit_lua_len : strlen(q->sha);
    a->argv[2] = "0";
    a->len[2] = 1;
    b->resend = false;
    if (!q->wr_up || redisAsyncCommandArgv(q->wr, on_commit, b, (int)a->argc, a->argv, a->len) != REDIS_OK)
        b->resend = true; /* sent again once the connection is back */
}

static void send_batch(struct rq *q, struct batch *b)
{
    if (commit_end(&b->args, q->weight, redis_now_ms(q)) != 0) {
        q->st.errors++;
        log_error("out of memory finishing a commit: its leads stay pending for recovery");
        if (b->dynamic) {
            commit_args_free(&b->args);
            free(b);
        }
        return;
    }
    b->busy = true;
    q->inflight++;
    send_commit(q, b, false);
}

/* After every reply: finish a stop, or read on once nothing is in flight. */
static void settle(struct rq *q)
{
    if (q->stopping)
        maybe_finish(q);
    else if (q->inflight == 0)
        read_next(q);
}

static void batch_done(struct rq *q, struct batch *b)
{
    b->busy = false;
    q->inflight--;
    if (b->dynamic) {
        commit_args_free(&b->args);
        free(b);
    }
    settle(q);
}

static void tally(struct rq *q, const struct batch *b, const char *res)
{
    if (strncmp(res, "assigned:", 9) == 0) {
        q->st.assigned++;
    } else if (strncmp(res, "unassigned:", 11) == 0) {
        q->st.unassigned++;
    } else if (strcmp(res, "dead") == 0) {
        q->st.dead++;
    } else {
        /* stale / not_owner: committed already, or taken over by another
         * consumer: nothing was written. */
        q->st.stale++;
        log_info("batch at %s: a lead was %s", b->ref, res);
    }
}

static void on_commit(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct batch *b = priv;
    struct rq *q = b->q;
    redisReply *r = reply;
    if (!r) { /* connection lost: the outcome is unknown; the script makes a repeat safe */
        b->resend = true;
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) { /* Redis restarted: EVAL loads it again */
            send_commit(q, b, true);
            return;
        }
        q->st.errors++;
        log_error("commit of the batch at %s failed: %s (its leads stay pending for recovery)", b->ref, r->str);
    } else if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING)
                tally(q, b, r->element[i]->str);
    } else {
        q->st.errors++;
        log_error("batch at %s: unexpected commit reply type %d", b->ref, r->type);
    }
    batch_done(q, b);
}

static bool ensure_scratch(struct rq *q)
{
    if (q->scratch_for != q->cfg->rules) {
        rules_scratch_free(q->scratch);
        q->scratch = rules_scratch_new(q->cfg->rules);
        q->scratch_for = q->scratch ? q->cfg->rules : NULL;
    }
    return q->scratch != NULL;
}

/* Decodes and routes one input entry into the batch being built. */
static int add_entry(struct rq *q, struct batch *b, enum commit_mode mode, const char *ref, const char *payload,
                     size_t len, int64_t now)
{
    const struct cfg *c = q->cfg;
    struct commit_src src = {.ref = ref, .payload = payload, .payload_len = len, .attempt = 1};
    char err[256];
    q->st.received++;
    if (codec_lead_decode(q->codec, payload, len, c->limits.max_lead_bytes, err, sizeof err) != 0) {
        log_info("entry %s: dead letter: %s", ref, err);
        return commit_add_dead(&b->args, &src, err);
    }
    const struct lead *l = codec_lead_get(q->codec);
    struct rules_input in = {.now_ms = now, .paused = q->paused, .weight = q->weight};
    struct rules_decision d;
    rules_decide(c->rules, q->scratch, l, &in, &d);
    return commit_add_route(&b->args, c, mode, &src, l, &d, now);
}

/* Adds stream entries ([id, [field, value...]] each) to the batch. An
 * entry delivered max_deliveries times without a commit is poison: it is
 * dead-lettered instead of routed again. */
static int add_entries(struct rq *q, struct batch *b, const redisReply *entries, int64_t now)
{
    int rc = 0;
    for (size_t i = 0; i < entries->elements && rc == 0; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *f = e->element[1];
        const char *p = "", *id = e->element[0]->str;
        size_t len = 0;
        /* No `lead` field: an empty payload, which dead-letters. */
        for (size_t k = 0; f && f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "lead") == 0) {
                p = f->element[k + 1]->str;
                len = f->element[k + 1]->len;
            }
        if (commit_count(&b->args) == 0)
            snprintf(b->ref, sizeof b->ref, "%s", id);
        long long deliveries = 0;
        for (int k = 0; k < q->n_claim; k++)
            if (strcmp(q->claim_ids[k], id) == 0)
                deliveries = q->claim_deliveries[k] + 1; /* this claim delivers it once more */
        if (deliveries >= q->cfg->input.max_deliveries) {
            struct commit_src src = {.ref = id, .payload = p, .payload_len = len, .attempt = 1};
            char why[96];
            snprintf(why, sizeof why, "max_deliveries: delivered %lld times without a commit", deliveries);
            log_error("entry %s: poison lead, %s", id, why);
            q->st.received++;
            rc = commit_add_dead(&b->args, &src, why);
        } else {
            rc = add_entry(q, b, COMMIT_STREAM, id, p, len, now);
        }
    }
    return rc;
}

/* ------------------------------------------------------------- input --- */

static void on_read(redisAsyncContext *ac, void *reply, void *priv);
static void on_group(redisAsyncContext *ac, void *reply, void *priv);

static void read_next(struct rq *q)
{
    if (q->stopping || q->reading || !q->ready || q->inflight > 0 || q->recovering)
        return;
    const struct cfg *c = q->cfg;
    int rc;
    if (c->input.mode == INPUT_LIST)
        rc = redisAsyncCommand(q->rd, on_read, NULL, "BLMOVE %s:in %s RIGHT LEFT %d", c->prefix, q->proc,
                               READ_BLOCK_MS / 1000);
    else
        rc = redisAsyncCommand(q->rd, on_read, NULL, "XREADGROUP GROUP %s %s COUNT %d BLOCK %d STREAMS %s:in >",
                               c->input.group, q->consumer, c->input.batch, READ_BLOCK_MS, c->prefix);
    q->reading = rc == REDIS_OK;
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    q->reading = false;
    if (!r) { /* disconnected: reading starts again once reconnected */
        maybe_finish(q);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOGROUP", 7) == 0 && q->wr_up) { /* Redis lost the stream: create it again */
            log_warn("input group missing (%s): creating it again", r->str);
            redisAsyncCommand(q->wr, on_group, NULL, "XGROUP CREATE %s:in %s 0 MKSTREAM", q->cfg->prefix,
                              q->cfg->input.group);
        } else {
            log_error("reading the input: %s", r->str);
        }
        struct timeval tv = {0, 200 * 1000};
        evtimer_add(q->retry_ev, &tv); /* on_retry reads again */
        return;
    }
    struct batch *b = &q->input;
    enum commit_mode mode = q->cfg->input.mode == INPUT_LIST ? COMMIT_LIST : COMMIT_STREAM;
    int64_t now = redis_now_ms(q);
    int rc = ensure_scratch(q) ? commit_begin(&b->args, q->cfg, mode, q->consumer, q->proc, now) : -1;
    if (mode == COMMIT_LIST) {
        if (r->type == REDIS_REPLY_STRING && rc == 0) {
            snprintf(b->ref, sizeof b->ref, "list");
            rc = add_entry(q, b, mode, "list", r->str, r->len, now);
        }
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && rc == 0) {
        rc = add_entries(q, b, r->element[0]->element[1], now);
    }
    if (rc != 0) {
        q->st.errors++;
        log_error("out of memory building a commit: its leads stay pending for recovery");
    } else if (commit_count(&b->args) > 0) {
        send_batch(q, b);
    }
    settle(q);
}

/* ----------------------------------------------------------- returns --- */

struct ret {
    struct rq *q;
    char ref[64];
    char lead_id[160];
    char dealer[128];
};

static struct batch *return_batch(struct rq *q, const struct ret *rt)
{
    struct batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->q = q;
    b->dynamic = true;
    b->is_return = true;
    snprintf(b->ref, sizeof b->ref, "%s", rt->ref);
    if (commit_begin(&b->args, q->cfg, COMMIT_RETURN, q->consumer, NULL, redis_now_ms(q)) != 0) {
        commit_args_free(&b->args);
        free(b);
        return NULL;
    }
    return b;
}

static void commit_return_dead(struct rq *q, const struct ret *rt, const char *why)
{
    struct batch *b = return_batch(q, rt);
    struct commit_src src = {.ref = rt->ref, .payload = rt->lead_id, .payload_len = strlen(rt->lead_id),
                             .attempt = 1};
    if (!b || commit_add_dead(&b->args, &src, why) != 0) {
        if (b)
            commit_args_free(&b->args);
        free(b);
        q->st.errors++;
        return;
    }
    send_batch(q, b);
}

static const char *field(const redisReply *h, const char *name, size_t *len)
{
    for (size_t i = 0; h && i + 1 < h->elements; i += 2)
        if (strcmp(h->element[i]->str, name) == 0) {
            if (len)
                *len = h->element[i + 1]->len;
            return h->element[i + 1]->str;
        }
    return NULL;
}

static bool in_list(const char *list, const char *item)
{
    size_t il = strlen(item);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == il && memcmp(p, item, n) == 0)
            return true;
        p += n + (e ? 1 : 0);
    }
    return false;
}

/* Re-routes a returned lead to one dealer that has not had it. */
static void reroute(struct rq *q, const struct ret *rt, const char *dealers, const char *attempt, const char *payload,
                    size_t plen)
{
    const struct cfg *c = q->cfg;
    char err[256];
    if (!ensure_scratch(q) || codec_lead_decode(q->codec, payload, plen, SIZE_MAX, err, sizeof err) != 0) {
        commit_return_dead(q, rt, "bad_return: the recorded lead cannot be decoded");
        return;
    }
    struct batch *b = return_batch(q, rt);
    if (!b) {
        q->st.errors++;
        return;
    }
    uint32_t exclude[64], n_ex = 0;
    for (const char *p = dealers; *p && n_ex < 64;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        int di = rules_dealer_find(c->rules, p, n);
        if (di >= 0)
            exclude[n_ex++] = (uint32_t)di;
        p += n + (e ? 1 : 0);
    }
    int64_t now = redis_now_ms(q);
    struct rules_input in = {
        .now_ms = now, .paused = q->paused, .weight = q->weight, .exclude = exclude, .n_exclude = n_ex};
    struct rules_decision d;
    const struct lead *l = codec_lead_get(q->codec);
    rules_decide(c->rules, q->scratch, l, &in, &d);
    struct commit_src src = {.ref = rt->ref, .payload = payload, .payload_len = plen, .attempt = atoi(attempt) + 1,
                             .had = dealers};
    if (commit_add_route(&b->args, c, COMMIT_RETURN, &src, l, &d, now) != 0) {
        commit_args_free(&b->args);
        free(b);
        q->st.errors++;
        return;
    }
    send_batch(q, b);
}

/* The lead record arrived: route the lead again, or dead-letter a return
 * that names no lead or a dealer that never had it. */
static void on_record(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct ret *rt = priv;
    struct rq *q = rt->q;
    redisReply *r = reply;
    q->inflight--;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        size_t plen = 0;
        const char *dealers = field(r, "dealers", NULL), *attempt = field(r, "attempt", NULL);
        const char *payload = field(r, "payload", &plen);
        if (!payload || !attempt || !dealers)
            commit_return_dead(q, rt, "bad_return: unknown lead");
        else if (!in_list(dealers, rt->dealer))
            commit_return_dead(q, rt, "bad_return: that dealer never had the lead");
        else
            reroute(q, rt, dealers, attempt, payload, plen);
    } /* else disconnected: the return stays pending */
    free(rt);
    settle(q);
}

static void on_returns(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    q->polling_returns = false;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 1) {
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0 && q->wr_up)
            redisAsyncCommand(q->wr, on_group, NULL, "XGROUP CREATE %s:returns %s 0 MKSTREAM", q->cfg->prefix,
                              q->cfg->input.group);
        return;
    }
    redisReply *entries = r->element[0]->element[1];
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i], *f = e->element[1];
        struct ret *rt = calloc(1, sizeof *rt);
        if (!rt)
            continue;
        rt->q = q;
        snprintf(rt->ref, sizeof rt->ref, "%s", e->element[0]->str);
        const char *id = field(f, "lead_id", NULL), *dealer = field(f, "dealer", NULL);
        snprintf(rt->lead_id, sizeof rt->lead_id, "%s", id ? id : "");
        snprintf(rt->dealer, sizeof rt->dealer, "%s", dealer ? dealer : "");
        if (!id || !dealer || !*id || !*dealer) {
            commit_return_dead(q, rt, "bad_return: lead_id and dealer are required");
            free(rt);
            continue;
        }
        q->st.returns++;
        q->inflight++;
        redisAsyncCommand(q->wr, on_record, rt, "HGETALL %s:lead:%s", q->cfg->prefix, rt->lead_id);
    }
}

static void on_returns_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    if (q->ready && q->wr_up && !q->stopping && !q->polling_returns)
        q->polling_returns = redisAsyncCommand(q->wr, on_returns, NULL,
                                               "XREADGROUP GROUP %s %s COUNT 64 STREAMS %s:returns >",
                                               q->cfg->input.group, q->consumer, q->cfg->prefix) == REDIS_OK;
    struct timeval tv = {0, RETURNS_POLL_MS * 1000};
    if (!q->stopping)
        evtimer_add(q->returns_ev, &tv);
}

/* ----------------------------------------------------------- recovery --- */

/* Every few seconds: leads pending longer than input.claim_idle_ms on any
 * consumer (a daemon that died, or one of ours whose commit failed) are
 * claimed (XCLAIM re-checks the idle time atomically, so two daemons never
 * both get one) and routed as a batch of their own. */
static void on_claim(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    q->recovering = false;
    q->inflight--;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && !q->stopping) {
        if ((int)r->elements < q->n_claim)
            log_warn("recovery: %d of %d pending leads were claimed by another consumer first or their entries "
                     "were deleted from the stream",
                     q->n_claim - (int)r->elements, q->n_claim);
        struct batch *b = &q->recov;
        int64_t now = redis_now_ms(q);
        int rc = ensure_scratch(q) ? commit_begin(&b->args, q->cfg, COMMIT_STREAM, q->consumer, NULL, now) : -1;
        if (rc == 0)
            rc = add_entries(q, b, r, now);
        if (rc != 0) {
            q->st.errors++;
            log_error("recovery: out of memory building a commit");
        } else if (commit_count(&b->args) > 0) {
            log_info("recovery: routing %d leads taken over from other consumers", commit_count(&b->args));
            q->st.recovered += (uint64_t)commit_count(&b->args);
            send_batch(q, b);
        }
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("recovery: XCLAIM: %s", r->str);
    }
    q->n_claim = 0;
    settle(q);
}

static void on_pending(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    q->inflight--;
    q->n_claim = 0;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0 || q->stopping || !q->wr_up) {
        if (r && r->type == REDIS_REPLY_ERROR)
            log_error("recovery: XPENDING: %s", r->str);
        q->recovering = false;
        if (q->stopping)
            maybe_finish(q);
        else if (q->inflight == 0)
            read_next(q);
        return;
    }
    const char *argv[6 + 1024];
    size_t len[6 + 1024];
    char idle[32];
    snprintf(idle, sizeof idle, "%d", q->cfg->input.claim_idle_ms);
    char in[160];
    snprintf(in, sizeof in, "%s:in", q->cfg->prefix);
    int argc = 0;
    argv[argc++] = "XCLAIM";
    argv[argc++] = in;
    argv[argc++] = q->cfg->input.group;
    argv[argc++] = q->consumer;
    argv[argc++] = idle;
    for (size_t i = 0; i < r->elements && q->n_claim < 1024; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 4)
            continue;
        snprintf(q->claim_ids[q->n_claim], 64, "%s", e->element[0]->str);
        q->claim_deliveries[q->n_claim] = e->element[3]->integer;
        argv[argc++] = q->claim_ids[q->n_claim++];
    }
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    q->inflight++;
    if (redisAsyncCommandArgv(q->wr, on_claim, NULL, argc, argv, len) != REDIS_OK) {
        q->inflight--;
        q->recovering = false;
    }
}

static void on_recover_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    if (q->ready && q->wr_up && !q->stopping && !q->recovering && !q->recov.busy &&
        q->cfg->input.mode == INPUT_STREAM) {
        int n = q->cfg->input.batch < 1024 ? q->cfg->input.batch : 1024;
        q->recovering = true;
        q->inflight++;
        if (redisAsyncCommand(q->wr, on_pending, NULL, "XPENDING %s:in %s IDLE %d - + %d", q->cfg->prefix,
                              q->cfg->input.group, q->cfg->input.claim_idle_ms, n) != REDIS_OK) {
            q->inflight--;
            q->recovering = false;
        }
    }
    int ms = q->cfg->input.claim_idle_ms / 2;
    ms = ms < 200 ? 200 : ms > 5000 ? 5000 : ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!q->stopping)
        evtimer_add(q->recover_ev, &tv);
}

/* ------------------------------------------------------- connections --- */

static void become_ready(struct rq *q)
{
    if (!q->rd_up || !q->wr_up || q->ready)
        return;
    q->ready = true;
    q->st.redis_up = true;
    if (q->stats)
        stats_set_redis_up(q->stats, true);
    q->backoff_ms = BACKOFF_MIN_MS;
    log_info("redis up: consuming %s:in as %s", q->cfg->prefix, q->consumer);
    /* Commits whose replies were lost with the old connection go again. */
    if (q->input.busy && q->input.resend)
        send_commit(q, &q->input, false);
    if (q->recov.busy && q->recov.resend)
        send_commit(q, &q->recov, false);
    if (!q->was_ready) {
        q->was_ready = true;
        if (q->on_ready)
            q->on_ready(q->ctx);
        struct timeval tv = {0, RETURNS_POLL_MS * 1000};
        evtimer_add(q->returns_ev, &tv);
        on_recover_timer(-1, 0, q);
    }
    read_next(q);
}

static bool fatal_auth(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR &&
           (strncmp(r->str, "WRONGPASS", 9) == 0 || strncmp(r->str, "NOPERM", 6) == 0 ||
            strncmp(r->str, "NOAUTH", 6) == 0 || strstr(r->str, "invalid password") != NULL);
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    if (fatal_auth(r)) {
        log_error("redis refused our credentials: %s (check redis.username / redis.password)", r->str);
        finish(q, 2);
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("redis: %s", r->str);
    }
}

static void setup_done(struct rq *q)
{
    if (--q->wr_setup == 0) {
        q->wr_up = true;
        become_ready(q);
    }
}

static void on_group(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = ac->data;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
        log_error("creating the consumer group: %s", r->str);
    if (priv)
        setup_done(q);
}

static void on_script(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_STRING && r->len == 40)
        memcpy(q->sha, r->str, 41);
    else if (r)
        log_error("loading the commit script: %s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    if (r)
        setup_done(q);
}

static void on_time(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = ac->data;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        int64_t redis_ms = strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000;
        q->time_offset_ms = redis_ms - wall_ms();
    }
    if (r)
        setup_done(q);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rq *q = ac->data;
    bool is_wr = ac == q->wr;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback; no disconnect
         * callback follows. */
        log_warn("redis connection failed: %s", ac->errstr);
        if (is_wr)
            q->wr = NULL;
        else
            q->rd = NULL;
        schedule_reconnect(q);
        return;
    }
    if (!is_wr) {
        q->rd_up = true;
        become_ready(q);
        return;
    }
    const struct cfg *c = q->cfg;
    redisAsyncContext *w = q->wr;
    q->wr_setup = 2;
    redisAsyncCommandArgv(w, on_script, NULL, 3, (const char *[]){"SCRIPT", "LOAD", lr_commit_lua},
                          (const size_t[]){6, 4, lr_commit_lua_len});
    redisAsyncCommand(w, on_time, NULL, "TIME");
    if (c->input.mode == INPUT_STREAM) {
        q->wr_setup++;
        redisAsyncCommand(w, on_group, q, "XGROUP CREATE %s:in %s 0 MKSTREAM", c->prefix, c->input.group);
    }
    q->wr_setup++;
    redisAsyncCommand(w, on_group, q, "XGROUP CREATE %s:returns %s 0 MKSTREAM", c->prefix, c->input.group);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rq *q = ac->data;
    if (ac == q->wr) {
        q->wr = NULL;
        q->wr_up = false;
    } else {
        q->rd = NULL;
        q->rd_up = false;
        q->reading = false;
    }
    q->ready = false;
    q->polling_returns = false;
    q->st.redis_up = false;
    if (q->stats)
        stats_set_redis_up(q->stats, false);
    if (q->stopping) {
        maybe_finish(q);
        return;
    }
    log_warn("redis connection lost (%s): reconnecting", status == REDIS_OK ? "closed" : ac->errstr);
    schedule_reconnect(q);
}

static redisAsyncContext *connect_one(struct rq *q)
{
    const struct cfg *c = q->cfg;
    redisAsyncContext *ac = c->redis.socket ? redisAsyncConnectUnix(c->redis.socket)
                                            : redisAsyncConnect(c->redis.host, c->redis.port);
    if (!ac)
        return NULL;
    if (ac->err) {
        log_warn("redis: %s", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = q;
    redisLibeventAttach(ac, q->base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisEnableKeepAlive(&ac->c);
    /* Commands sent before the connection completes are queued, in order. */
    if (c->redis.password) {
        if (c->redis.username)
            redisAsyncCommand(ac, on_auth, NULL, "AUTH %s %s", c->redis.username, c->redis.password);
        else
            redisAsyncCommand(ac, on_auth, NULL, "AUTH %s", c->redis.password);
    }
    if (c->redis.db)
        redisAsyncCommand(ac, on_auth, NULL, "SELECT %d", c->redis.db);
    return ac;
}

static void connect_both(struct rq *q)
{
    if (q->stopping || q->exited)
        return;
    if (!q->wr)
        q->wr = connect_one(q);
    if (!q->rd)
        q->rd = connect_one(q);
    if (!q->wr || !q->rd)
        schedule_reconnect(q);
    else if (q->ready)
        read_next(q);
}

/* ---------------------------------------------------------- lifecycle --- */

struct rq *rq_new(struct event_base *base, const struct cfg *cfg, char *err, size_t errlen)
{
    struct rq *q = calloc(1, sizeof *q);
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    q->base = base;
    q->cfg = cfg;
    q->input.q = q;
    q->recov.q = q;
    q->codec = codec_lead_new();
    q->retry_ev = evtimer_new(base, on_retry, q);
    q->returns_ev = evtimer_new(base, on_returns_timer, q);
    q->recover_ev = evtimer_new(base, on_recover_timer, q);
    q->claim_ids = calloc(1024, sizeof *q->claim_ids);
    q->claim_deliveries = calloc(1024, sizeof *q->claim_deliveries);
    if (!q->codec || !q->retry_ev || !q->returns_ev || !q->recover_ev || !q->claim_ids || !q->claim_deliveries) {
        rq_free(q);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    srandom((unsigned)(tv.tv_usec ^ getpid()));
    /* Unique per process start (REDIS-NOTES: never reuse a consumer name). */
    snprintf(q->consumer, sizeof q->consumer, "%s:%d:%08lx", host, (int)getpid(), (unsigned long)random());
    snprintf(q->proc, sizeof q->proc, "%s:in:processing:%s", cfg->prefix, q->consumer);
    q->backoff_ms = BACKOFF_MIN_MS;
    return q;
}

void rq_start(struct rq *q, void (*on_ready)(void *), void (*on_exit)(void *, int), void *ctx)
{
    q->on_ready = on_ready;
    q->on_exit = on_exit;
    q->ctx = ctx;
    q->started_ms = wall_ms();
    connect_both(q);
}

static void maybe_finish(struct rq *q)
{
    if (!q->stopping || q->exited)
        return;
    if (q->inflight > 0 && q->wr) /* commits still on their way */
        return;
    if (q->reading && q->rd) /* a read may still deliver leads to us */
        return;
    if (q->inflight > 0)
        log_warn("stopping with %d commits unanswered: they stay pending for recovery", q->inflight);
    finish(q, 0);
}

void rq_stop(struct rq *q)
{
    if (q->stopping)
        return;
    q->stopping = true;
    evtimer_del(q->returns_ev);
    evtimer_del(q->retry_ev);
    evtimer_del(q->recover_ev);
    maybe_finish(q);
}

void rq_set_config(struct rq *q, const struct cfg *cfg)
{
    /* Commits in flight carry their own arguments: nothing refers to the
     * old config after this, except the scratch sized for its table. */
    q->cfg = cfg;
    rules_scratch_free(q->scratch);
    q->scratch = NULL;
    q->scratch_for = NULL;
}

void rq_set_stats(struct rq *q, struct stats *st)
{
    q->stats = st;
    if (st)
        stats_set_redis_up(st, q->st.redis_up);
}

void rq_set_controls(struct rq *q, const uint8_t *paused, const uint32_t *weight)
{
    q->paused = paused;
    q->weight = weight;
}

struct cmd_ctx {
    void (*cb)(const struct redisReply *, void *);
    void *priv;
};

static void on_command(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    struct cmd_ctx *cc = priv;
    cc->cb(reply, cc->priv);
    free(cc);
}

int rq_command(struct rq *q, int argc, const char **argv, const size_t *argvlen,
               void (*cb)(const struct redisReply *reply, void *priv), void *priv)
{
    if (!q->wr_up || q->exited)
        return -1;
    struct cmd_ctx *cc = malloc(sizeof *cc);
    if (!cc)
        return -1;
    cc->cb = cb;
    cc->priv = priv;
    if (redisAsyncCommandArgv(q->wr, on_command, cc, argc, argv, argvlen) != REDIS_OK) {
        free(cc);
        return -1;
    }
    return 0;
}

const struct rq_stats *rq_stats(const struct rq *q)
{
    return &q->st;
}

void rq_free(struct rq *q)
{
    if (!q)
        return;
    /* Never free a context inside its own callback: rq_free runs from main
     * after the loop has ended. */
    if (q->rd)
        redisAsyncFree(q->rd);
    if (q->wr)
        redisAsyncFree(q->wr);
    commit_args_free(&q->input.args);
    commit_args_free(&q->recov.args);
    codec_lead_free(q->codec);
    rules_scratch_free(q->scratch);
    if (q->retry_ev)
        event_free(q->retry_ev);
    if (q->returns_ev)
        event_free(q->returns_ev);
    if (q->recover_ev)
        event_free(q->recover_ev);
    free(q->claim_ids);
    free(q->claim_deliveries);
    free(q);
}
