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
#define WATCH_MS 1000 /* the hung-server watchdog's tick */
#define HUNG_MS 3000  /* a command unanswered this long (past a read's block time): the server hangs */

/* A batch of leads (or one return) whose commit awaits its reply. */
/* What the reply of a lead's commit needs: statistics labels, and what it
 * takes to decide the lead again ("redo"). */
struct note {
    char ref[64];
    char niche[64];
    char source[64];
    char error[48];   /* dead: the reason's code */
    int attempt;
    int tries;        /* redo rounds so far */
    bool same_done;
    int64_t t0_ms;    /* created_at, or receipt */
    char *had;        /* returns: dealers that had it (owned), or NULL */
};

struct batch {
    struct rq *q;
    bool busy;       /* sent, no reply yet */
    bool resend;     /* its connection dropped before the reply: send again */
    bool dynamic;    /* a return: freed after the reply */
    bool is_return;
    uint64_t gen;    /* the table generation it was decided with */
    char ref[64];    /* the first entry id, for logs */
    struct commit_args args;
    struct note *notes;
    int n_notes, cap_notes;
};

/* A lead to decide again: a picked dealer was full in Redis, or dedup
 * same_dealer named a prior dealer. Still pending in the input. */
struct redo {
    struct redo *next;
    enum commit_mode mode;
    struct note note;
    char same[128];   /* the prior dealer, or "" */
    char *payload;
    size_t len;
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
    struct event *watch_ev;
    /* The pick state of the current table: rotation values and counters,
     * loaded from Redis (sync) and then kept by the commit replies. */
    uint64_t table_gen;
    int64_t *rr;            /* per rotation slot */
    struct rules_usage *usage; /* per dealer */
    int64_t *pending_ms;    /* per dealer: when usage.pending was learned */
    struct { uint32_t slot; int64_t before; } *rrsnap; /* per dealer */
    struct commit_rr *moves;
    uint32_t *mp_dealers;   /* the dealers with max_pending (found at load) */
    uint32_t n_mp;
    uint64_t sync_gen;
    int sync_pending;
    bool synced, syncing;
    int64_t sync_quarter;   /* the quarter hour the counters belong to */
    struct redo *redo_head, **redo_tail;
    int n_redo;
    int64_t heard_ms[2];    /* per connection (rd, wr): last reply, or idle since */
    unsigned long long scan_cursor; /* list mode: the SCAN for processing lists */
    bool list_recovering;
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

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A reply (or the connection) came on ac: the server is alive. */
static struct rq *heard(const redisAsyncContext *ac)
{
    struct rq *q = ac->data;
    q->heard_ms[ac == q->wr] = mono_ms();
    return q;
}

static int64_t redis_now_ms(const struct rq *q)
{
    return wall_ms() + q->time_offset_ms;
}

static bool fatal_auth(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR &&
           (strncmp(r->str, "WRONGPASS", 9) == 0 || strncmp(r->str, "NOPERM", 6) == 0 ||
            strncmp(r->str, "NOAUTH", 6) == 0 || strstr(r->str, "invalid password") != NULL);
}

static void finish(struct rq *q, int code);

/* Redis refuses us (no or wrong password, an ACL user without the rights):
 * retrying cannot help. true when the daemon is on its way out (exit 2). */
static bool refused(struct rq *q, const redisReply *r)
{
    if (!fatal_auth(r))
        return false;
    log_error("redis refused us: %s (check redis.username / redis.password and the user's ACL rights)", r->str);
    finish(q, 2);
    return true;
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

static void batch_free(struct batch *b)
{
    for (int i = 0; i < b->n_notes; i++)
        free(b->notes[i].had);
    b->n_notes = 0;
    if (b->dynamic) {
        commit_args_free(&b->args);
        free(b->notes);
        free(b);
    }
}

static void update_in_flight(struct rq *q)
{
    if (!q->stats)
        return;
    int64_t n = 0;
    if (q->input.busy)
        n += q->input.n_notes;
    if (q->recov.busy)
        n += q->recov.n_notes;
    stats_set_in_flight(q->stats, n + q->n_redo);
}

static void send_batch(struct rq *q, struct batch *b)
{
    if (commit_end(&b->args, redis_now_ms(q)) != 0) {
        q->st.errors++;
        log_error("out of memory finishing a commit: its leads stay pending for recovery");
        batch_free(b);
        return;
    }
    b->busy = true;
    q->inflight++;
    update_in_flight(q);
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
    batch_free(b);
    update_in_flight(q);
    settle(q);
}

/* The lead k of b goes back to be decided again. */
static void queue_redo(struct rq *q, const struct batch *b, int k, const char *same)
{
    const struct note *n = &b->notes[k];
    size_t len = 0;
    const char *pl = commit_payload(&b->args, k, &len);
    struct redo *r = calloc(1, sizeof *r);
    if (!r || !pl || !(r->payload = malloc(len ? len : 1)) || (n->had && !(r->note.had = strdup(n->had)))) {
        if (r)
            free(r->payload);
        free(r);
        q->st.errors++;
        log_error("entry %s: out of memory deciding it again: it stays pending for recovery", n->ref);
        return;
    }
    char *had = r->note.had;
    r->note = *n;
    r->note.had = had;
    r->note.tries++;
    if (same) {
        snprintf(r->same, sizeof r->same, "%s", same);
        r->note.same_done = true;
    }
    memcpy(r->payload, pl, len);
    r->len = len;
    r->mode = b->is_return ? COMMIT_RETURN : q->cfg->input.mode == INPUT_LIST ? COMMIT_LIST : COMMIT_STREAM;
    r->next = NULL;
    *q->redo_tail = r;
    q->redo_tail = &r->next;
    q->n_redo++;
}

static void redo_free(struct redo *r)
{
    free(r->payload);
    free(r->note.had);
    free(r);
}

/* One lead's result: counters, statistics, and a redo when asked. */
static void tally(struct rq *q, struct batch *b, int k, const char *res)
{
    const struct note *n = k < b->n_notes ? &b->notes[k] : NULL;
    struct stats *st = q->stats;
    if (strncmp(res, "assigned:", 9) == 0) {
        q->st.assigned++;
        if (st && n) {
            for (const char *p = res + 9; *p;) {
                const char *e = strchr(p, ',');
                char id[128];
                size_t len = e ? (size_t)(e - p) : strlen(p);
                lr_copy(id, sizeof id, p, len);
                stats_assigned(st, id, n->niche, n->source);
                p += len + (e ? 1 : 0);
            }
            if (b->is_return)
                stats_returned(st);
            double lat = (double)(redis_now_ms(q) - n->t0_ms) / 1000.0;
            stats_latency(st, lat < 0 ? 0 : lat);
        }
    } else if (strncmp(res, "unassigned:", 11) == 0) {
        q->st.unassigned++;
        if (st && n) {
            stats_unassigned(st, res + 11, n->niche, n->source);
            if (strcmp(res + 11, "duplicate") == 0 || strcmp(res + 11, "duplicate_id") == 0)
                stats_duplicate(st);
        }
    } else if (strcmp(res, "dead") == 0) {
        q->st.dead++;
        if (st && n)
            stats_dead(st, n->error);
    } else if (strncmp(res, "redo", 4) == 0 && n) {
        q->st.redone++;
        if (n->tries >= 5)
            log_warn("entry %s: decided %d times and still refused; it stays pending for recovery", n->ref,
                     n->tries + 1);
        else
            queue_redo(q, b, k, strncmp(res, "redo:same:", 10) == 0 ? res + 10 : NULL);
    } else {
        /* stale / not_owner: committed already, or taken over by another
         * consumer: nothing was written. */
        q->st.stale++;
        log_info("batch at %s: a lead was %s", b->ref, res);
    }
}

/* The counters and rotation values the script read or wrote: they replace
 * ours (Redis is the truth; other daemons move them too). */
static void learn(struct rq *q, const struct batch *b, const redisReply *cnt, const redisReply *rrv)
{
    if (b->gen != q->table_gen || !q->usage)
        return;
    int64_t now = mono_ms();
    for (size_t i = 0; cnt->type == REDIS_REPLY_ARRAY && i + 5 < cnt->elements; i += 6) {
        uint32_t d = commit_dealer_at(&b->args, (uint64_t)cnt->element[i]->integer);
        if (d == UINT32_MAX)
            continue;
        for (int p = 0; p < PERIOD_N; p++)
            q->usage[d].used[p] = (uint32_t)cnt->element[i + 1 + p]->integer;
        if (cnt->element[i + 5]->integer >= 0) {
            q->usage[d].pending = (uint32_t)cnt->element[i + 5]->integer;
            q->pending_ms[d] = now;
        }
    }
    for (size_t i = 0; rrv->type == REDIS_REPLY_ARRAY && i + 1 < rrv->elements; i += 2) {
        uint32_t slot = commit_rr_at(&b->args, (uint64_t)rrv->element[i]->integer);
        if (slot != UINT32_MAX)
            q->rr[slot] = rrv->element[i + 1]->integer;
    }
}

static void on_commit(redisAsyncContext *ac, void *reply, void *priv)
{
    heard(ac);
    struct batch *b = priv;
    struct rq *q = b->q;
    redisReply *r = reply;
    if (!r) { /* connection lost: the outcome is unknown; the script makes a repeat safe */
        b->resend = true;
        return;
    }
    if (refused(q, r))
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) { /* Redis restarted: EVAL loads it again */
            send_commit(q, b, true);
            return;
        }
        q->st.errors++;
        log_error("commit of the batch at %s failed: %s (its leads stay pending for recovery)", b->ref, r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
        size_t n = r->elements - 2;
        learn(q, b, r->element[n], r->element[n + 1]);
        for (size_t i = 0; i < n; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING)
                tally(q, b, (int)i, r->element[i]->str);
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

static struct note *new_note(struct batch *b)
{
    if (b->n_notes == b->cap_notes) {
        int nc = b->cap_notes ? b->cap_notes * 2 : 64;
        struct note *nn = realloc(b->notes, (size_t)nc * sizeof *nn);
        if (!nn)
            return NULL;
        b->notes = nn;
        b->cap_notes = nc;
    }
    struct note *n = &b->notes[b->n_notes++];
    memset(n, 0, sizeof *n);
    return n;
}

static void copy_label(char *dst, size_t cap, struct lr_str s)
{
    size_t n = s.len < cap ? s.len : cap - 1;
    if (n) /* an absent string has no pointer */
        memcpy(dst, s.p, n);
    dst[n] = 0;
}

/* Same-dealer dedup settled by the daemon: when the prior dealer is among
 * the lead's candidates, it is the only one considered. */
static void keep_only(struct rules_decision *d, const struct rules_table *t, const char *same)
{
    int di = rules_dealer_find(t, same, strlen(same));
    uint32_t n = d->stage_end[1];
    for (uint32_t i = 0; i < n && di >= 0; i++) {
        uint32_t c = d->cand[i];
        if (d->verdicts[c].dealer != (uint32_t)di)
            continue;
        for (uint32_t j = 0; j < n; j++)
            if (d->cand[j] != c)
                d->verdicts[d->cand[j]].why = WHY_NOT_PICKED;
        d->cand[0] = c;
        d->stage_end[0] = d->verdicts[c].stage == 0 ? 1 : 0;
        d->stage_end[1] = 1;
        return;
    }
}

/* Decides and picks one decoded lead into b, against our counters and
 * rotation state; the script checks the picks against Redis. */
static int route_lead(struct rq *q, struct batch *b, struct note *n, const struct commit_src *src,
                      const struct lead *l, const uint32_t *exclude, uint32_t n_ex, const char *same, int64_t now)
{
    const struct cfg *c = q->cfg;
    const struct rules_table *t = c->rules;
    struct rules_input in = {.now_ms = now,
                             .paused = q->paused,
                             .weight = q->weight,
                             .usage = q->usage,
                             .exclude = exclude,
                             .n_exclude = n_ex,
                             .max_buyers = b->is_return ? 1 : 0};
    struct rules_decision d;
    rules_decide(t, q->scratch, l, &in, &d);
    uint32_t n_mv = 0;
    if (d.reason == REASON_ASSIGNED) {
        if (same && *same)
            keep_only(&d, t, same);
        uint32_t nc = d.stage_end[1];
        for (uint32_t i = 0; i < nc; i++) {
            uint32_t slot = d.verdicts[d.cand[i]].rr_slot;
            q->rrsnap[i].slot = slot;
            q->rrsnap[i].before = q->rr[slot];
        }
        if (rules_pick(t, &d, &in, l, q->rr) > 0) {
            for (uint32_t i = 0; i < nc; i++) {
                int64_t delta = q->rr[q->rrsnap[i].slot] - q->rrsnap[i].before;
                if (delta)
                    q->moves[n_mv++] = (struct commit_rr){q->rrsnap[i].slot, delta};
            }
            /* Counted now, so the rest of the batch sees them. */
            for (uint32_t i = 0; i < d.n_picked; i++) {
                struct rules_usage *u = &q->usage[d.picked[i]];
                for (int p = 0; p < PERIOD_N; p++)
                    u->used[p]++;
                u->pending++;
            }
        }
    }
    if (d.niche >= 0)
        lr_copy(n->niche, sizeof n->niche, t->niches[d.niche].name, SIZE_MAX);
    return commit_add_route(&b->args, c, src, l, &d, q->moves, n_mv);
}

/* Decodes and routes one input entry into the batch being built. */
static int add_entry(struct rq *q, struct batch *b, const char *ref, const char *payload, size_t len, int64_t now)
{
    const struct cfg *c = q->cfg;
    struct commit_src src = {.ref = ref, .payload = payload, .payload_len = len, .attempt = 1};
    struct note *n = new_note(b);
    if (!n)
        return -1;
    lr_copy(n->ref, sizeof n->ref, ref, SIZE_MAX);
    n->attempt = 1;
    n->t0_ms = now;
    char err[256];
    q->st.received++;
    if (q->stats)
        stats_received(q->stats, 1);
    if (codec_lead_decode(q->codec, payload, len, c->limits.max_lead_bytes, err, sizeof err) != 0) {
        log_info("entry %s: dead letter: %s", ref, err);
        snprintf(n->error, sizeof n->error, "%.*s", (int)strcspn(err, ":"), err);
        return commit_add_dead(&b->args, &src, err);
    }
    const struct lead *l = codec_lead_get(q->codec);
    copy_label(n->source, sizeof n->source, l->source);
    if (l->has_created_at && l->created_at > 0 && l->created_at <= now)
        n->t0_ms = l->created_at;
    return route_lead(q, b, n, &src, l, NULL, 0, NULL, now);
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
            rc = add_entry(q, b, id, p, len, now);
        }
    }
    return rc;
}

/* --------------------------------------------------------- pick state --- */

/* Sized for the current table; zeroed. false when out of memory. */
static bool alloc_state(struct rq *q)
{
    const struct rules_table *t = q->cfg->rules;
    size_t nd = t->n_dealers ? t->n_dealers : 1, nr = t->n_rr_slots ? t->n_rr_slots : 1;
    free(q->rr);
    free(q->usage);
    free(q->pending_ms);
    free(q->rrsnap);
    free(q->moves);
    free(q->mp_dealers);
    q->n_mp = 0;
    q->rr = calloc(nr, sizeof *q->rr);
    q->usage = calloc(nd, sizeof *q->usage);
    q->pending_ms = calloc(nd, sizeof *q->pending_ms);
    q->rrsnap = calloc(nd, sizeof *q->rrsnap);
    q->moves = calloc(nd, sizeof *q->moves);
    q->mp_dealers = calloc(nd, sizeof *q->mp_dealers);
    for (uint32_t d = 0; q->mp_dealers && d < t->n_dealers; d++)
        if (t->hot[d].max_pending)
            q->mp_dealers[q->n_mp++] = d;
    return q->rr && q->usage && q->pending_ms && q->rrsnap && q->moves && q->mp_dealers;
}

static const char *const period_name[PERIOD_N] = {"hour", "day", "week", "month"};

struct sync_req {
    struct rq *q;
    uint64_t gen;
    uint32_t niche;     /* HGETALL of a rotation hash */
    uint32_t n;         /* MGET: the dealers asked, 4 counters each */
    uint32_t dealers[];
};

static void sync_step(struct rq *q, struct sync_req *sr, bool ok)
{
    bool mine = sr->gen == q->sync_gen && q->syncing;
    free(sr);
    if (!mine)
        return;
    if (!ok) { /* tried again at the next read */
        q->syncing = false;
        return;
    }
    if (--q->sync_pending == 0) {
        q->syncing = false;
        q->synced = true;
        settle(q);
    }
}

static void on_sync_caps(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    struct sync_req *sr = priv;
    redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)sr->n * PERIOD_N;
    if (ok && sr->gen == q->sync_gen)
        for (uint32_t i = 0; i < sr->n; i++)
            for (int p = 0; p < PERIOD_N; p++) {
                const redisReply *e = r->element[i * PERIOD_N + (uint32_t)p];
                q->usage[sr->dealers[i]].used[p] =
                    e->type == REDIS_REPLY_STRING ? (uint32_t)strtoul(e->str, NULL, 10) : 0;
            }
    sync_step(q, sr, ok);
}

static void on_sync_rr(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    struct sync_req *sr = priv;
    redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (ok && sr->gen == q->sync_gen) {
        const struct rules_table *t = q->cfg->rules;
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            int di = rules_dealer_find(t, r->element[i]->str, r->element[i]->len);
            int slot = di >= 0 ? rules_rr_slot(t, (uint32_t)di, sr->niche) : -1;
            if (slot >= 0)
                q->rr[slot] = strtoll(r->element[i + 1]->str, NULL, 10);
        }
    }
    sync_step(q, sr, ok);
}

static bool sync_send(struct rq *q, struct sync_req *sr, redisCallbackFn *fn, int argc, const char **argv,
                      const size_t *len)
{
    if (redisAsyncCommandArgv(q->wr, fn, sr, argc, argv, len) != REDIS_OK) {
        free(sr);
        return false;
    }
    q->sync_pending++;
    return true;
}

/* Loads the counters behind the caps (in the current buckets) and the
 * rotation state of the current table from Redis; reading waits for it.
 * Runs when Redis comes (back) up, after a reload, and when a quarter hour
 * begins (every zone's hour, day, week and month begin on one). */
static void start_sync(struct rq *q)
{
    const struct rules_table *t = q->cfg->rules;
    if (!q->wr_up || !alloc_state(q)) {
        if (q->wr_up)
            log_error("out of memory loading the pick state");
        return;
    }
    q->sync_gen++;
    q->syncing = true;
    q->synced = false;
    q->sync_pending = 0;
    int64_t now = redis_now_ms(q);
    q->sync_quarter = now / 900000;
    struct sync_req *sr = calloc(1, sizeof *sr + t->n_dealers * sizeof(uint32_t));
    size_t nk = 0;
    for (uint32_t d = 0; sr && d < t->n_dealers; d++)
        if (t->hot[d].caps[0] | t->hot[d].caps[1] | t->hot[d].caps[2] | t->hot[d].caps[3])
            sr->dealers[sr->n++] = d;
    const char **argv = sr ? calloc(1 + (size_t)sr->n * PERIOD_N, sizeof *argv) : NULL;
    size_t *len = sr ? calloc(1 + (size_t)sr->n * PERIOD_N, sizeof *len) : NULL;
    char *keys = sr ? malloc((size_t)sr->n * PERIOD_N * 256 + 1) : NULL;
    bool ok = sr && argv && len && keys;
    if (ok && sr->n > 0) {
        sr->q = q;
        sr->gen = q->sync_gen;
        argv[nk] = "MGET";
        len[nk++] = 4;
        for (uint32_t i = 0; i < sr->n; i++)
            for (int p = 0; p < PERIOD_N; p++) {
                char b[32], *k = keys + (nk - 1) * 256;
                rules_cap_bucket(t, sr->dealers[i], (enum rules_period)p, now / 1000, b, sizeof b);
                int kl = snprintf(k, 256, "%s:cap:%s:%s:%s", q->cfg->prefix, t->dealers[sr->dealers[i]].id,
                                  period_name[p], b);
                argv[nk] = k;
                len[nk++] = kl > 0 && kl < 256 ? (size_t)kl : 0;
            }
        ok = sync_send(q, sr, on_sync_caps, (int)nk, argv, len);
        sr = NULL;
    }
    free(sr);
    free(argv);
    free(len);
    free(keys);
    /* One rotation hash per niche and tier its members are in. */
    for (uint32_t ni = 0; ok && ni < t->n_niches; ni++) {
        int tiers[64], nt = 0;
        for (uint32_t d = 0; d < t->n_dealers && nt < 64; d++) {
            if (rules_rr_slot(t, d, ni) < 0)
                continue;
            int tier = t->dealers[d].tier, k = 0;
            while (k < nt && tiers[k] != tier)
                k++;
            if (k == nt)
                tiers[nt++] = tier;
        }
        for (int k = 0; ok && k < nt; k++) {
            struct sync_req *rr = calloc(1, sizeof *rr);
            char key[256];
            int kl = snprintf(key, sizeof key, "%s:rr:%s:%d", q->cfg->prefix, t->niches[ni].name, tiers[k]);
            const char *av[2] = {"HGETALL", key};
            size_t al[2] = {7, kl > 0 && (size_t)kl < sizeof key ? (size_t)kl : 0};
            ok = rr != NULL;
            if (ok) {
                rr->q = q;
                rr->gen = q->sync_gen;
                rr->niche = ni;
                ok = sync_send(q, rr, on_sync_rr, 2, av, al);
            }
        }
    }
    if (!ok) {
        log_error("could not load the pick state from redis: trying again");
        q->syncing = false;
        return;
    }
    if (q->sync_pending == 0) { /* nothing to load */
        q->syncing = false;
        q->synced = true;
    }
}

/* Queue depths behind max_pending go down as dealers consume: a depth
 * learned more than a second ago is forgotten (the script checks it). */
static void forget_old_depths(struct rq *q)
{
    int64_t now = mono_ms();
    for (uint32_t i = 0; i < q->n_mp; i++)
        if (now - q->pending_ms[q->mp_dealers[i]] > 1000)
            q->usage[q->mp_dealers[i]].pending = 0;
}

/* Ready to decide leads: the pick state is loaded for this quarter hour. */
static bool pick_ready(struct rq *q)
{
    if (q->synced && redis_now_ms(q) / 900000 != q->sync_quarter)
        q->synced = false;
    if (!q->synced) {
        if (!q->syncing)
            start_sync(q);
        return false;
    }
    forget_old_depths(q);
    return ensure_scratch(q);
}

/* ------------------------------------------------------------- input --- */

static void on_read(redisAsyncContext *ac, void *reply, void *priv);
static void on_group(redisAsyncContext *ac, void *reply, void *priv);

static void reroute_lead(struct rq *q, const struct note *n, const char *payload, size_t plen, const char *same);
static int add_redo(struct rq *q, struct batch *b, struct redo *r, int64_t now);

/* Starts a batch in b for the current table. */
static int begin(struct rq *q, struct batch *b, enum commit_mode mode, int64_t now)
{
    /* Before the first load (e.g. recovery at start-up) the view is empty:
     * the script still has the last word on caps. */
    if (!q->usage && !alloc_state(q))
        return -1;
    b->n_notes = 0;
    b->gen = q->table_gen;
    return commit_begin(&b->args, q->cfg, mode, q->consumer, mode == COMMIT_LIST ? q->proc : NULL, now);
}

/* Leads refused by the last commits are decided again first. */
static bool run_redo(struct rq *q)
{
    if (!q->redo_head)
        return false;
    struct batch *b = &q->input;
    int64_t now = redis_now_ms(q);
    enum commit_mode mode = q->cfg->input.mode == INPUT_LIST ? COMMIT_LIST : COMMIT_STREAM;
    int rc = begin(q, b, mode, now);
    struct redo *r;
    while (rc == 0 && (r = q->redo_head)) {
        q->redo_head = r->next;
        if (!q->redo_head)
            q->redo_tail = &q->redo_head;
        q->n_redo--;
        if (r->mode == COMMIT_RETURN)
            reroute_lead(q, &r->note, r->payload, r->len, r->same);
        else
            rc = add_redo(q, b, r, now);
        redo_free(r);
    }
    if (rc != 0) {
        q->st.errors++;
        log_error("out of memory deciding leads again: they stay pending for recovery");
    } else if (commit_count(&b->args) > 0) {
        send_batch(q, b);
    }
    return q->inflight > 0;
}

static void read_next(struct rq *q)
{
    if (q->stopping || q->reading || !q->ready || q->inflight > 0 || q->recovering)
        return;
    if (!pick_ready(q) || run_redo(q))
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
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
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
    int rc = ensure_scratch(q) ? begin(q, b, mode, now) : -1;
    if (mode == COMMIT_LIST) {
        if (r->type == REDIS_REPLY_STRING && rc == 0) {
            snprintf(b->ref, sizeof b->ref, "list");
            rc = add_entry(q, b, "list", r->str, r->len, now);
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

static struct batch *return_batch(struct rq *q, const char *ref)
{
    struct batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->q = q;
    b->dynamic = true;
    b->is_return = true;
    lr_copy(b->ref, sizeof b->ref, ref, SIZE_MAX);
    if (begin(q, b, COMMIT_RETURN, redis_now_ms(q)) != 0) {
        batch_free(b);
        return NULL;
    }
    return b;
}

static void commit_return_dead(struct rq *q, const struct ret *rt, const char *why)
{
    struct batch *b = return_batch(q, rt->ref);
    struct commit_src src = {.ref = rt->ref, .payload = rt->lead_id, .payload_len = strlen(rt->lead_id),
                             .attempt = 1};
    struct note *n = b ? new_note(b) : NULL;
    if (!n || commit_add_dead(&b->args, &src, why) != 0) {
        if (b)
            batch_free(b);
        q->st.errors++;
        return;
    }
    snprintf(n->ref, sizeof n->ref, "%s", rt->ref);
    snprintf(n->error, sizeof n->error, "bad_return");
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

/* Routes a returned lead again (n: its ref, the next attempt and the
 * dealers that had it), to one dealer that has not had it. */
static void reroute_lead(struct rq *q, const struct note *n, const char *payload, size_t plen, const char *same)
{
    const struct cfg *c = q->cfg;
    char err[256];
    struct ret rt = {.q = q};
    snprintf(rt.ref, sizeof rt.ref, "%s", n->ref);
    if (!ensure_scratch(q) || codec_lead_decode(q->codec, payload, plen, SIZE_MAX, err, sizeof err) != 0) {
        commit_return_dead(q, &rt, "bad_return: the recorded lead cannot be decoded");
        return;
    }
    struct batch *b = return_batch(q, n->ref);
    struct note *bn = b ? new_note(b) : NULL;
    if (!bn || (n->had && !(bn->had = strdup(n->had)))) {
        if (b)
            batch_free(b);
        q->st.errors++;
        return;
    }
    char *had = bn->had;
    *bn = *n;
    bn->had = had;
    const char *dealers = had ? had : "";
    uint32_t exclude[64], n_ex = 0;
    for (const char *p = dealers; *p && n_ex < 64;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        int di = rules_dealer_find(c->rules, p, len);
        if (di >= 0)
            exclude[n_ex++] = (uint32_t)di;
        p += len + (e ? 1 : 0);
    }
    const struct lead *l = codec_lead_get(q->codec);
    copy_label(bn->source, sizeof bn->source, l->source);
    struct commit_src src = {.ref = n->ref, .payload = payload, .payload_len = plen, .attempt = n->attempt,
                             .had = dealers, .same_done = n->same_done};
    if (route_lead(q, b, bn, &src, l, exclude, n_ex, same, redis_now_ms(q)) != 0) {
        batch_free(b);
        q->st.errors++;
        return;
    }
    send_batch(q, b);
}

/* A redo of an input lead: decoded and routed again into b. */
static int add_redo(struct rq *q, struct batch *b, struct redo *r, int64_t now)
{
    char err[256];
    struct note *n = new_note(b);
    if (!n)
        return -1;
    *n = r->note;
    n->had = NULL;
    struct commit_src src = {.ref = n->ref, .payload = r->payload, .payload_len = r->len, .attempt = n->attempt,
                             .same_done = n->same_done};
    if (codec_lead_decode(q->codec, r->payload, r->len, SIZE_MAX, err, sizeof err) != 0)
        return commit_add_dead(&b->args, &src, err); /* decoded before: cannot happen */
    return route_lead(q, b, n, &src, codec_lead_get(q->codec), NULL, 0, r->same, now);
}

/* The lead record arrived: route the lead again, or dead-letter a return
 * that names no lead or a dealer that never had it. */
static void on_record(redisAsyncContext *ac, void *reply, void *priv)
{
    heard(ac);
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
        else {
            struct note n = {.attempt = atoi(attempt) + 1, .t0_ms = redis_now_ms(q), .had = (char *)dealers};
            snprintf(n.ref, sizeof n.ref, "%s", rt->ref);
            reroute_lead(q, &n, payload, plen, NULL);
        }
    } /* else disconnected: the return stays pending */
    free(rt);
    settle(q);
}

static void on_returns(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = heard(ac);
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
    if (q->ready && q->wr_up && q->synced && !q->stopping && !q->polling_returns)
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
    struct rq *q = heard(ac);
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
        int rc = ensure_scratch(q) ? begin(q, b, COMMIT_STREAM, now) : -1;
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
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
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

/* List mode: each consumer keeps <p>:alive:<name> (with a TTL) while it
 * runs and is registered in <p>:consumers; a registered consumer without
 * that key is gone, and its processing list goes back to the input, oldest
 * lead first in line. A bounded SCAN step per round registers processing
 * lists nobody registered (left by older versions or by hand). A consumer
 * that was only frozen finds its list gone when it wakes: its commits fail
 * the fence (LPOS) and write nothing. */
static const char list_recover_lua[] =
    "local p, me, ttl, cursor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local reg, pre = p .. ':consumers', p .. ':in:processing:'\n"
    "redis.call('SET', p .. ':alive:' .. me, '1', 'PX', ttl)\n"
    "redis.call('SADD', reg, me)\n"
    "local sc = redis.call('SCAN', cursor, 'MATCH', pre .. '*', 'COUNT', 1000)\n"
    "for _, k in ipairs(sc[2]) do redis.call('SADD', reg, string.sub(k, #pre + 1)) end\n"
    "local moved = 0\n"
    "for _, c in ipairs(redis.call('SMEMBERS', reg)) do\n"
    "  if c ~= me and redis.call('EXISTS', p .. ':alive:' .. c) == 0 then\n"
    "    local pl = pre .. c\n"
    "    for _ = 1, 100000 do\n"
    "      if not redis.call('LMOVE', pl, p .. ':in', 'LEFT', 'RIGHT') then break end\n"
    "      moved = moved + 1\n"
    "    end\n"
    "    if redis.call('EXISTS', pl) == 0 then redis.call('SREM', reg, c) end\n"
    "  end\n"
    "end\n"
    "return {moved, sc[1]}\n";

static void on_list_recover(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = heard(ac);
    redisReply *r = reply;
    q->list_recovering = false;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING) {
        q->scan_cursor = strtoull(r->element[1]->str, NULL, 10);
        if (r->element[0]->integer > 0) {
            log_warn("recovery: %lld leads of stopped consumers' processing lists went back to %s:in",
                     r->element[0]->integer, q->cfg->prefix);
            q->st.recovered += (uint64_t)r->element[0]->integer;
        }
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("recovery of processing lists: %s", r->str);
    }
}

static int recover_period_ms(const struct rq *q)
{
    int ms = q->cfg->input.claim_idle_ms / 2;
    return ms < 200 ? 200 : ms > 5000 ? 5000 : ms;
}

static void recover_lists(struct rq *q)
{
    char ttl[32], cursor[32];
    int t = 3 * recover_period_ms(q);
    snprintf(ttl, sizeof ttl, "%d", t > q->cfg->input.claim_idle_ms ? t : q->cfg->input.claim_idle_ms);
    snprintf(cursor, sizeof cursor, "%llu", q->scan_cursor);
    const char *argv[] = {"EVAL", list_recover_lua, "0", q->cfg->prefix, q->consumer, ttl, cursor};
    size_t len[7];
    for (int i = 0; i < 7; i++)
        len[i] = strlen(argv[i]);
    q->list_recovering = redisAsyncCommandArgv(q->wr, on_list_recover, NULL, 7, argv, len) == REDIS_OK;
}

static void on_recover_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    if (q->ready && q->wr_up && !q->stopping && !q->list_recovering && q->cfg->input.mode == INPUT_LIST)
        recover_lists(q);
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
    int ms = recover_period_ms(q);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!q->stopping)
        evtimer_add(q->recover_ev, &tv);
}

/* The commit (is_wr) or read connection is gone: not ready until both are
 * up again. */
static void forget_conn(struct rq *q, bool is_wr)
{
    if (is_wr) {
        q->wr = NULL;
        q->wr_up = false;
    } else {
        q->rd = NULL;
        q->rd_up = false;
        q->reading = false;
    }
    q->ready = false;
}

/* ----------------------------------------------------------- watchdog --- */

/* hiredis 0.14 has no command timeouts: a server that stops answering
 * (CLIENT PAUSE, DEBUG SLEEP, a stopped process) would stall us forever.
 * Every WATCH_MS, a connection with a command unanswered for longer than
 * HUNG_MS (plus the read's own block time) is freed here, from a timer,
 * never inside its own callback. Freeing calls the pending callbacks with
 * no reply: commits are marked to be sent again, which the script makes
 * safe; then the disconnect path reconnects. */
static void drop_hung(struct rq *q, redisAsyncContext *ac, bool is_wr, int64_t silent)
{
    log_warn("redis: no reply on the %s connection for %lld ms (server hung?): dropping it and reconnecting",
             is_wr ? "commit" : "read", (long long)silent);
    bool connected = (ac->c.flags & REDIS_CONNECTED) != 0;
    redisAsyncFree(ac); /* on_disconnect follows only for a connected context */
    if (!connected) {
        forget_conn(q, is_wr);
        schedule_reconnect(q);
    }
}

static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    int64_t now = mono_ms();
    for (int w = 0; w < 2 && !q->exited; w++) {
        redisAsyncContext *ac = w ? q->wr : q->rd;
        if (!ac || !ac->replies.head) { /* nothing awaited: idle is not hung */
            q->heard_ms[w] = now;
            continue;
        }
        int64_t silent = now - q->heard_ms[w];
        if (silent > HUNG_MS + (w ? 0 : READ_BLOCK_MS))
            drop_hung(q, ac, w == 1, silent);
    }
    struct timeval tv = {WATCH_MS / 1000, (WATCH_MS % 1000) * 1000};
    if (!q->exited)
        evtimer_add(q->watch_ev, &tv);
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
    q->synced = false; /* Redis may have restarted: load the pick state again */
    q->syncing = false;
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
        on_watch(-1, 0, q);
    }
    read_next(q);
}


static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r)) {
        return;
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
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0)
        log_error("creating the consumer group: %s", r->str);
    if (priv)
        setup_done(q);
}

static void on_script(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
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
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
        int64_t redis_ms = strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000;
        q->time_offset_ms = redis_ms - wall_ms();
    }
    if (r)
        setup_done(q);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rq *q = heard(ac);
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
    forget_conn(q, ac == q->wr);
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
    q->watch_ev = evtimer_new(base, on_watch, q);
    q->claim_ids = calloc(1024, sizeof *q->claim_ids);
    q->claim_deliveries = calloc(1024, sizeof *q->claim_deliveries);
    if (!q->codec || !q->retry_ev || !q->returns_ev || !q->recover_ev || !q->watch_ev || !q->claim_ids || !q->claim_deliveries) {
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
    q->redo_tail = &q->redo_head;
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

static int niche_find(const struct rules_table *t, const char *name)
{
    for (uint32_t i = 0; i < t->n_niches; i++)
        if (strcmp(t->niches[i].name, name) == 0)
            return (int)i;
    return -1;
}

void rq_set_config(struct rq *q, const struct cfg *cfg)
{
    /* Commits in flight carry their own arguments: nothing refers to the
     * old config after this, except the scratch and the pick state sized
     * for its table. The pick state carries over by dealer id and niche
     * name (rotation fairness survives a reload), then loads again. */
    const struct rules_table *old = q->cfg->rules;
    int64_t *orr = q->rr;
    struct rules_usage *ousage = q->usage;
    q->rr = NULL;
    q->usage = NULL;
    q->cfg = cfg;
    q->table_gen++;
    q->synced = false;
    q->syncing = false;
    if (orr && ousage && alloc_state(q)) {
        const struct rules_table *t = cfg->rules;
        for (uint32_t d = 0; d < t->n_dealers; d++) {
            int od = rules_dealer_find(old, t->dealers[d].id, strlen(t->dealers[d].id));
            if (od < 0)
                continue;
            q->usage[d] = ousage[od];
            for (uint32_t k = 0; k < t->dealers[d].n_niches; k++) {
                uint32_t ni = t->dealers[d].niches[k];
                int on = niche_find(old, t->niches[ni].name);
                int slot = rules_rr_slot(t, d, ni), oslot = on >= 0 ? rules_rr_slot(old, (uint32_t)od, (uint32_t)on) : -1;
                if (slot >= 0 && oslot >= 0)
                    q->rr[slot] = orr[oslot];
            }
        }
    }
    free(orr);
    free(ousage);
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
    heard(ac);
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

void rq_pick_state(const struct rq *q, const int64_t **rr, const struct rules_usage **usage)
{
    *rr = q->rr;
    *usage = q->usage;
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
    if (q->watch_ev)
        event_free(q->watch_ev);
    free(q->claim_ids);
    free(q->claim_deliveries);
    free(q->input.notes);
    free(q->recov.notes);
    for (struct redo *r = q->redo_head, *nx; r; r = nx) {
        nx = r->next;
        redo_free(r);
    }
    free(q->rr);
    free(q->usage);
    free(q->pending_ms);
    free(q->rrsnap);
    free(q->moves);
    free(q->mp_dealers);
    free(q);
}
