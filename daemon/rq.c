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
#include "leadrouter/commit_contract.h"
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
#define CONNECT_MS 3000 /* a TCP connect not done this long is given up (hiredis 0.14 has no connect timeout) */
#define STOP_MS 10000   /* SIGTERM: the longest we wait for the commits in flight (README: shutdown) */

#define IFL_BUCKETS 4096

/* A lead of a batch: everything its decision, commit, reply and a second
 * decision need, in one place. */
struct entry {
    char ref[64];        /* stream entry id ("list" in list mode) */
    char *payload;       /* owned copy */
    size_t len;
    char *dead;          /* a dead letter: its error text (owned), or NULL */
    int attempt, tries;
    int64_t t0_ms;       /* created_at, or receipt */
    /* what the pre-read asks about */
    char id[160];
    char dnc[41];        /* the phone's DNC member, or "" */
    char dig[2][41];     /* dedup digests */
    int ndig;
    bool decoded;
    /* what it found */
    bool rec_exists, suppressed;
    char *seen[2];       /* raw digest values (owned), or NULL */
    /* the decision, for the tallies */
    char niche[64], source[64], outcome[48], dealers[512];
    /* a return: the record it was decided from, the returning dealer */
    char *expect;
    size_t expect_len;
    char rdealer[128];
};

/* A batch: read, pre-read, decided, sent, answered. */
struct batch {
    struct rq *q;
    struct batch *next;  /* in the busy FIFO, or the free list */
    struct batch *bnext; /* in the building list */
    enum commit_mode mode;
    bool resend;         /* its connection dropped before the reply: send again */
    uint64_t gen, seq;
    char ref[64];        /* the first entry id, for logs */
    struct commit_args args;
    struct entry *e;
    int n, cap;
    int pre_wait;        /* pre-read replies still awaited */
    bool pre_failed;
};

/* An id or digest written by a batch still in flight. */
struct ifl {
    struct ifl *next;
    uint64_t seq;
    char *val;
    char key[];
};

/* A lead to decide again, in order. */
struct redo {
    struct redo *next;
    enum commit_mode mode;
    struct entry e;
};

struct rq {
    struct event_base *base;
    const struct cfg *cfg;
    redisAsyncContext *rd, *wr;
    bool rd_up, wr_up;     /* connected and set up */
    int wr_setup;          /* setup replies still awaited on wr */
    bool ready, was_ready, stopping, reading, polling_returns, exited;
    int inflight;          /* commands whose reply the lifecycle waits for */
    char consumer[128];
    char proc[256];        /* list mode: this consumer's processing list */
    char inkey[160];
    char sha[41];
    int64_t time_offset_ms; /* Redis TIME - local clock */
    int64_t started_ms;
    int backoff_ms;
    struct event *retry_ev, *returns_ev, *fail_ev;
    struct rules_scratch *scratch;
    const struct rules_table *scratch_for;
    struct codec_lead *codec;
    struct batch *busy_head, **busy_tail; /* sent, in order */
    int n_busy;
    struct batch *pool;    /* finished batches, kept for their buffers */
    struct batch *building; /* read, their pre-reads out (a list by bnext) */
    int n_building;
    uint64_t seq, last_sent;
    bool draining;         /* a commit was refused: decide again once all are answered */
    bool failing;          /* commits fail: wait for fail_ev before sending again */
    int fail_ms;
    int64_t fail_logged_ms;
    int64_t sync_logged_ms;  /* the last sync error said */
    int64_t setup_logged_ms; /* the last setup error said */
    int64_t read_logged_ms;  /* the last read error said, and those since */
    unsigned read_unsaid;
    int read_fail_ms;        /* the pause before reading again while reads fail */
    bool wr_setup_failed;    /* a setup command of this connection failed */
    bool redis_loading;      /* ... because Redis is loading its data (LOADING) */
    bool quiet_disconnect;   /* we closed it after a failed setup */
    struct event *recover_ev;
    bool recovering;       /* an XPENDING/XCLAIM round is under way (or the next one is due) */
    bool recover_more;     /* a recovery round comes before new input (the last was full, or Redis came up) */
    int n_claim;           /* the last round's ids and their delivery counts */
    char (*claim_ids)[64];
    long long *claim_deliveries;
    struct event *watch_ev;
    /* The pick state of the current table: what Redis said (base), what
     * the commits in flight add (infl), and their sum, the view that
     * routing reads (rr, usage). */
    uint64_t table_gen;
    int64_t *rr, *rr_base, *rr_infl;
    struct rules_usage *usage, *ubase;
    uint32_t *infl;
    struct { uint32_t slot; int64_t before; } *rrsnap; /* per dealer */
    struct commit_rr *moves;
    uint32_t *mp_dealers;   /* the dealers with max_pending (found at load) */
    uint32_t n_mp;
    uint64_t sync_gen;
    int sync_pending;
    bool synced, syncing;
    int64_t sync_quarter;   /* the quarter hour the counters belong to */
    int depth_wait;         /* queue depth refresh replies awaited */
    struct ifl *ifl[IFL_BUCKETS];
    struct redo *redo_head, **redo_tail;
    int n_redo;
    int64_t heard_ms[2];    /* per connection (rd, wr): last reply, or idle since */
    int64_t watch_last_ms;  /* the watchdog's last tick (a late one: the loop was busy) */
    int64_t connect_ms[2];  /* per connection (rd, wr): when its connect began */
    struct event *stop_ev;  /* the bound of a stop */
    unsigned long long scan_cursor; /* list mode: the SCAN for processing lists */
    bool list_recovering;
    int64_t trim_ms;        /* the last trim of the input stream */
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
    /* A Redis loading its data is reachable: it may take minutes. */
    if (!q->was_ready && !q->redis_loading &&
        wall_ms() - q->started_ms > (int64_t)q->cfg->redis.startup_timeout * 1000) {
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

/* ------------------------------------------------- the in-flight set --- */

static size_t ifl_hash(const char *s)
{
    return (size_t)(lr_fnv1a(s, strlen(s)) & (IFL_BUCKETS - 1));
}

static struct ifl *ifl_get(struct rq *q, const char *key)
{
    for (struct ifl *x = q->ifl[ifl_hash(key)]; x; x = x->next)
        if (strcmp(x->key, key) == 0)
            return x;
    return NULL;
}

static int ifl_put(struct rq *q, const char *key, const char *val, uint64_t seq)
{
    struct ifl *x = ifl_get(q, key);
    char *v = strdup(val);
    if (!v)
        return -1;
    if (!x) {
        size_t kl = strlen(key);
        x = malloc(sizeof *x + kl + 1);
        if (!x) {
            free(v);
            return -1;
        }
        memcpy(x->key, key, kl + 1);
        size_t h = ifl_hash(key);
        x->next = q->ifl[h];
        q->ifl[h] = x;
    } else {
        free(x->val);
    }
    x->val = v;
    x->seq = seq;
    return 0;
}

static void ifl_drop(struct rq *q, const char *key, uint64_t seq)
{
    for (struct ifl **p = &q->ifl[ifl_hash(key)]; *p; p = &(*p)->next)
        if (strcmp((*p)->key, key) == 0) {
            struct ifl *x = *p;
            if (x->seq == seq) {
                *p = x->next;
                free(x->val);
                free(x);
            }
            return;
        }
}

static void ifl_clear(struct rq *q)
{
    for (size_t h = 0; h < IFL_BUCKETS; h++)
        for (struct ifl *x = q->ifl[h], *nx; x; x = nx) {
            nx = x->next;
            free(x->val);
            free(x);
        }
    memset(q->ifl, 0, sizeof q->ifl);
}

/* ------------------------------------------------------------ batches --- */

static void entry_clear(struct entry *e)
{
    free(e->payload);
    free(e->dead);
    free(e->seen[0]);
    free(e->seen[1]);
    free(e->expect);
    memset(e, 0, sizeof *e);
}

static struct batch *batch_get(struct rq *q, enum commit_mode mode)
{
    struct batch *b = q->pool;
    if (b)
        q->pool = b->next;
    else if (!(b = calloc(1, sizeof *b)))
        return NULL;
    b->q = q;
    b->next = NULL;
    b->mode = mode;
    b->resend = false;
    b->n = 0;
    b->pre_wait = 0;
    b->pre_failed = false;
    b->ref[0] = 0;
    return b;
}

static void batch_put(struct rq *q, struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        entry_clear(&b->e[i]);
    b->n = 0;
    b->next = q->pool;
    q->pool = b;
}

static void batch_destroy(struct batch *b)
{
    for (int i = 0; i < b->n; i++)
        entry_clear(&b->e[i]);
    free(b->e);
    commit_args_free(&b->args);
    free(b);
}

static struct entry *new_entry(struct batch *b)
{
    if (b->n == b->cap) {
        int nc = b->cap ? b->cap * 2 : 64;
        struct entry *ne = realloc(b->e, (size_t)nc * sizeof *ne);
        if (!ne)
            return NULL;
        b->e = ne;
        b->cap = nc;
    }
    struct entry *e = &b->e[b->n++];
    memset(e, 0, sizeof *e);
    e->attempt = 1;
    return e;
}

static void update_in_flight(struct rq *q)
{
    if (!q->stats)
        return;
    int64_t n = 0;
    for (struct batch *b = q->busy_head; b; b = b->next)
        n += b->n;
    for (struct batch *b = q->building; b; b = b->bnext)
        n += b->n;
    stats_set_in_flight(q->stats, n + q->n_redo);
}

/* ------------------------------------------------------------ commits --- */

static void read_next(struct rq *q);
static void recover_round(struct rq *q);
static void maybe_finish(struct rq *q);
static void on_stop_bound(evutil_socket_t fd, short what, void *arg);
static bool alloc_state(struct rq *q);
static void on_commit(redisAsyncContext *ac, void *reply, void *priv);
static void return_again(struct rq *q, struct entry *e);

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

/* After every reply: finish a stop, or read on. */
static void settle(struct rq *q)
{
    if (q->stopping)
        maybe_finish(q);
    else
        read_next(q);
}

/* The view of dealer d: what Redis said plus the commits in flight. */
static void view_dealer(struct rq *q, uint32_t d)
{
    for (int p = 0; p < PERIOD_N; p++)
        q->usage[d].used[p] = q->ubase[d].used[p] + q->infl[d];
    q->usage[d].pending = q->ubase[d].pending + q->infl[d];
}

/* The batch's reply (or its end without one): its picks leave the
 * in-flight part of the view; what Redis said replaces the base. */
static void learn(struct rq *q, struct batch *b, const redisReply *cnt, const redisReply *rrv)
{
    if (b->gen != q->table_gen || !q->usage)
        return;
    struct commit_args *a = &b->args;
    size_t k = 0;
    for (uint32_t i = 0; i < a->nd; i++) {
        const struct commit_dealer *cd = &a->dlist[i];
        q->infl[cd->di] -= cd->delta < q->infl[cd->di] ? cd->delta : q->infl[cd->di];
        if (cnt && cnt->type == REDIS_REPLY_ARRAY && k + cd->nk < cnt->elements) {
            for (int j = 0; j < cd->nk; j++)
                q->ubase[cd->di].used[cd->period[j]] = (uint32_t)cnt->element[k + (size_t)j]->integer;
            long long ql = cnt->element[k + cd->nk]->integer;
            if (ql >= 0)
                q->ubase[cd->di].pending = (uint32_t)ql;
        }
        k += (size_t)cd->nk + 1;
        view_dealer(q, cd->di);
    }
    for (uint32_t i = 0; i < a->nrr; i++) {
        uint32_t slot = a->rrlist[i];
        q->rr_infl[slot] -= a->rrdelta[i];
        if (rrv && rrv->type == REDIS_REPLY_ARRAY && i < rrv->elements)
            q->rr_base[slot] = rrv->element[i]->integer;
        q->rr[slot] = q->rr_base[slot] + q->rr_infl[slot];
    }
}

/* The ids and digests the batch writes leave the in-flight set. */
static void forget_batch(struct rq *q, struct batch *b)
{
    char key[200];
    for (int i = 0; i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->dead)
            continue;
        snprintf(key, sizeof key, "i:%s", e->id);
        ifl_drop(q, key, b->seq);
        for (int j = 0; j < e->ndig; j++) {
            snprintf(key, sizeof key, "d:%s", e->dig[j]);
            ifl_drop(q, key, b->seq);
        }
    }
}

/* One committed lead: counters and statistics. */
static void tally(struct rq *q, struct batch *b, struct entry *e)
{
    struct stats *st = q->stats;
    if (e->dead) {
        q->st.dead++;
        if (st)
            stats_dead(st, e->outcome);
    } else if (strcmp(e->outcome, "assigned") == 0) {
        q->st.assigned++;
        if (st) {
            for (const char *p = e->dealers; *p;) {
                const char *c = strchr(p, ',');
                char id[128];
                size_t len = c ? (size_t)(c - p) : strlen(p);
                lr_copy(id, sizeof id, p, len);
                stats_assigned(st, id, e->niche, e->source);
                p += len + (c ? 1 : 0);
            }
            if (b->mode == COMMIT_RETURN)
                stats_returned(st);
            double lat = (double)(redis_now_ms(q) - e->t0_ms) / 1000.0;
            stats_latency(st, lat < 0 ? 0 : lat);
        }
    } else {
        q->st.unassigned++;
        if (st) {
            stats_unassigned(st, e->outcome, e->niche, e->source);
            if (strcmp(e->outcome, "duplicate") == 0 || strcmp(e->outcome, "duplicate_id") == 0)
                stats_duplicate(st);
        }
    }
}

/* Lead e of a refused batch goes back to be decided again (it moves). */
static void queue_redo(struct rq *q, enum commit_mode mode, struct entry *e, bool counts)
{
    if (counts && ++e->tries > 5) {
        log_warn("entry %s: decided %d times and still refused; it stays pending for recovery", e->ref, e->tries);
        entry_clear(e);
        return;
    }
    struct redo *r = malloc(sizeof *r);
    if (!r) {
        q->st.errors++;
        log_error("entry %s: out of memory deciding it again: it stays pending for recovery", e->ref);
        entry_clear(e);
        return;
    }
    r->mode = mode;
    r->e = *e;
    /* what the pre-read found is asked again */
    free(r->e.seen[0]);
    free(r->e.seen[1]);
    r->e.seen[0] = r->e.seen[1] = NULL;
    r->e.rec_exists = r->e.suppressed = false;
    memset(e, 0, sizeof *e);
    r->next = NULL;
    *q->redo_tail = r;
    q->redo_tail = &r->next;
    q->n_redo++;
    q->st.redone++;
}

static void batch_done(struct rq *q, struct batch *b)
{
    /* b is the head of the busy FIFO: replies come in order. */
    struct batch **p = &q->busy_head;
    while (*p && *p != b)
        p = &(*p)->next;
    if (*p) {
        *p = b->next;
        if (!q->busy_head)
            q->busy_tail = &q->busy_head;
        else if (q->busy_tail == &b->next)
            q->busy_tail = p;
        q->n_busy--;
        q->inflight--;
    }
    forget_batch(q, b);
    batch_put(q, b);
    if (q->n_busy == 0)
        q->draining = false;
    update_in_flight(q);
    settle(q);
}

static void on_fail_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    q->failing = false;
    settle(q);
}

/* A commit failed for a reason of Redis's (out of memory, a wrong key
 * type, a script error): nothing was written; the leads are decided and
 * sent again after a pause that grows while the failures last, and no new
 * input is read meanwhile. These attempts are not the leads' fault: they
 * do not count toward anything. */
static void commit_failed(struct rq *q, struct batch *b, const char *err)
{
    q->st.errors++;
    int64_t now = mono_ms();
    bool persistent = strncmp(err, "WRONGTYPE", 9) == 0 || strstr(err, "leadrouter commit") != NULL;
    if (now - q->fail_logged_ms > 5000 || q->fail_logged_ms == 0) {
        log_error("commit of the batch at %s failed: %s (%s; nothing was written, the leads are kept and sent "
                  "again in %d ms)",
                  b->ref, err, persistent ? "this will not go away by itself: fix Redis" : "retrying",
                  q->fail_ms ? q->fail_ms : BACKOFF_MIN_MS);
        q->fail_logged_ms = now;
    }
    for (int i = 0; i < b->n; i++)
        queue_redo(q, b->mode, &b->e[i], false);
    b->n = 0;
    q->draining = true;
    if (!q->failing) {
        q->fail_ms = q->fail_ms ? q->fail_ms * 2 : BACKOFF_MIN_MS;
        int cap = q->cfg->input.claim_idle_ms / 2 < BACKOFF_MAX_MS ? q->cfg->input.claim_idle_ms / 2 : BACKOFF_MAX_MS;
        if (q->fail_ms > cap)
            q->fail_ms = cap < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : cap;
        q->failing = true;
        struct timeval tv = {q->fail_ms / 1000, (q->fail_ms % 1000) * 1000};
        evtimer_add(q->fail_ev, &tv);
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
        learn(q, b, NULL, NULL);
        forget_batch(q, b);
        commit_failed(q, b, r->str);
        batch_done(q, b);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len != (size_t)b->n) {
        learn(q, b, NULL, NULL);
        forget_batch(q, b);
        commit_failed(q, b, "unexpected reply to the commit script");
        batch_done(q, b);
        return;
    }
    q->fail_ms = 0;
    learn(q, b, r->element[2], r->element[3]);
    forget_batch(q, b);
    const char *codes = r->element[0]->str, *why = r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
    if (!*why) {
        for (int i = 0; i < b->n; i++)
            tally(q, b, &b->e[i]);
    } else {
        /* Refused whole: nothing was written. An order refusal is not the
         * leads' fault (an earlier batch was refused). */
        bool counts = strcmp(why, "order") != 0;
        if (counts)
            log_info("batch at %s refused by Redis (%s): its leads are decided again", b->ref, why);
        for (int i = 0; i < b->n; i++) {
            if (codes[i] == LR_CODE_REDO) {
                if (b->mode == COMMIT_RETURN)
                    return_again(q, &b->e[i]);
                else
                    queue_redo(q, b->mode, &b->e[i], counts);
            } else {
                q->st.stale++;
                log_info("entry %s: %s", b->e[i].ref,
                         codes[i] == LR_CODE_STALE ? "stale (committed already)"
                                                   : "not_owner (taken over by another consumer)");
                entry_clear(&b->e[i]);
            }
        }
        b->n = 0;
        q->draining = true;
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

static void copy_label(char *dst, size_t cap, struct lr_str s)
{
    size_t n = s.len < cap ? s.len : cap - 1;
    if (n) /* an absent string has no pointer */
        memcpy(dst, s.p, n);
    dst[n] = 0;
}

/* Same-dealer dedup: the prior dealer, if it is among the lead's
 * candidates, is the only one considered. false when it is not one. */
static bool keep_only(struct rules_decision *d, const struct rules_table *t, const char *same)
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
        return true;
    }
    return false;
}

/* Picks among d's candidates against the view; the rotation moves go to
 * q->moves. Returns the number of moves. */
static uint32_t pick(struct rq *q, struct rules_decision *d, const struct rules_input *in, const struct lead *l)
{
    const struct rules_table *t = q->cfg->rules;
    uint32_t nc = d->stage_end[1], n_mv = 0;
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t slot = d->verdicts[d->cand[i]].rr_slot;
        q->rrsnap[i].slot = slot;
        q->rrsnap[i].before = q->rr[slot];
    }
    if (rules_pick(t, d, in, l, q->rr) == 0) {
        for (uint32_t i = 0; i < nc; i++) /* nothing picked: nothing moved */
            q->rr[q->rrsnap[i].slot] = q->rrsnap[i].before;
        return 0;
    }
    for (uint32_t i = 0; i < nc; i++) {
        int64_t delta = q->rr[q->rrsnap[i].slot] - q->rrsnap[i].before;
        if (delta) {
            bool seen = false;
            for (uint32_t k = 0; k < n_mv; k++)
                seen |= q->moves[k].slot == q->rrsnap[i].slot;
            if (!seen)
                q->moves[n_mv++] = (struct commit_rr){q->rrsnap[i].slot, delta};
        }
    }
    return n_mv;
}

/* The digest value that is current for e's digest j: an earlier batch
 * still in flight (or an earlier lead of this one) wrote it, else what the
 * pre-read found. */
static const char *seen_now(struct rq *q, const struct entry *e, int j)
{
    char key[64];
    snprintf(key, sizeof key, "d:%s", e->dig[j]);
    const struct ifl *x = ifl_get(q, key);
    return x ? x->val : e->seen[j];
}

/* Decides one lead of b (SPEC 5, in its order of checks) against the view,
 * counts its picks in the view, and adds it to the commit. */
static int route_entry(struct rq *q, struct batch *b, struct entry *e, const uint32_t *exclude, uint32_t n_ex,
                       const char *had, const char *returned)
{
    const struct cfg *c = q->cfg;
    const struct rules_table *t = c->rules;
    char err[256];
    struct commit_src src = {.ref = e->ref, .payload = e->payload, .payload_len = e->len, .attempt = e->attempt,
                             .had = had, .returned = returned};
    if (e->dead) {
        snprintf(e->outcome, sizeof e->outcome, "%.*s", (int)strcspn(e->dead, ":"), e->dead);
        return commit_add_dead(&b->args, &src, e->dead);
    }
    if (codec_lead_decode(q->codec, e->payload, e->len, SIZE_MAX, err, sizeof err) != 0) {
        e->dead = strdup(err); /* decoded before: cannot happen */
        snprintf(e->outcome, sizeof e->outcome, "malformed");
        return e->dead ? commit_add_dead(&b->args, &src, e->dead) : -1;
    }
    const struct lead *l = codec_lead_get(q->codec);
    copy_label(e->source, sizeof e->source, l->source);
    struct rules_input in = {.now_ms = b->args.now_ms,
                             .paused = q->paused,
                             .weight = q->weight,
                             .usage = q->usage,
                             .exclude = exclude,
                             .n_exclude = n_ex,
                             .max_buyers = b->mode == COMMIT_RETURN ? 1 : 0};
    struct rules_decision d;
    char idkey[200], exist_key[300];
    snprintf(idkey, sizeof idkey, "i:%s", e->id);
    const struct ifl *prior_id = b->mode == COMMIT_RETURN ? NULL : ifl_get(q, idkey);
    /* 1. duplicate_id: routed before (Redis holds its record, or a batch
     * in flight or an earlier lead of this batch writes it). */
    if (b->mode != COMMIT_RETURN && (e->rec_exists || prior_id)) {
        src.refusal = "duplicate_id";
        if (!prior_id || prior_id->seq != b->seq) {
            snprintf(exist_key, sizeof exist_key, "%s:lead:%s", c->prefix, e->id);
            src.exist_key = exist_key;
        }
        rules_decide(t, q->scratch, l, &in, &d);
    } else {
        rules_decide(t, q->scratch, l, &in, &d);
        if (d.reason != REASON_UNKNOWN_NICHE) {
            const char *prior = NULL;
            char prior_dealer[128];
            int64_t best = -1;
            for (int j = 0; j < e->ndig; j++) {
                const char *v = seen_now(q, e, j);
                int64_t ms;
                char dl[128];
                if (v && commit_seen_parse(v, strlen(v), dl, sizeof dl, &ms) &&
                    b->args.now_ms - ms < c->dedup.window * 1000 && ms > best) {
                    best = ms;
                    lr_copy(prior_dealer, sizeof prior_dealer, dl, SIZE_MAX);
                    prior = prior_dealer;
                }
            }
            if (e->suppressed) {
                src.refusal = "suppressed";
            } else if (prior && c->dedup.action == DEDUP_REJECT) {
                src.refusal = "duplicate";
            } else if (d.reason == REASON_ASSIGNED) {
                uint32_t n_mv = 0;
                bool done = false;
                if (prior && c->dedup.action == DEDUP_SAME_DEALER && keep_only(&d, t, prior)) {
                    /* the most recent dealer alone, when it can take it */
                    n_mv = pick(q, &d, &in, l);
                    done = d.n_picked > 0 && d.reason == REASON_ASSIGNED;
                    if (!done)
                        rules_decide(t, q->scratch, l, &in, &d); /* else routed as new */
                }
                if (!done)
                    n_mv = pick(q, &d, &in, l);
                if (d.reason == REASON_ASSIGNED && d.n_picked > 0) {
                    size_t o = 0;
                    e->dealers[0] = 0;
                    for (uint32_t i = 0; i < d.n_picked; i++) {
                        uint32_t di = d.picked[i];
                        q->infl[di]++;
                        view_dealer(q, di);
                        int n = snprintf(e->dealers + o, sizeof e->dealers - o, "%s%s", o ? "," : "",
                                         t->dealers[di].id);
                        if (n > 0 && (size_t)n < sizeof e->dealers - o)
                            o += (size_t)n;
                    }
                    for (uint32_t i = 0; i < n_mv; i++)
                        q->rr_infl[q->moves[i].slot] += q->moves[i].delta;
                    /* the digests this lead writes */
                    char v[200], key[64];
                    commit_seen_value(t->dealers[d.picked[0]].id, b->args.now_ms, v, sizeof v);
                    for (int j = 0; j < e->ndig; j++) {
                        src.digest[src.n_digests] = e->dig[j];
                        src.digest_now[src.n_digests++] = seen_now(q, e, j);
                    }
                    int rc = 0;
                    if (d.niche >= 0)
                        lr_copy(e->niche, sizeof e->niche, t->niches[d.niche].name, SIZE_MAX);
                    snprintf(e->outcome, sizeof e->outcome, "assigned");
                    rc = commit_add_route(&b->args, c, &src, l, &d, q->moves, n_mv);
                    for (int j = 0; j < e->ndig && rc == 0; j++) {
                        snprintf(key, sizeof key, "d:%s", e->dig[j]);
                        rc = ifl_put(q, key, v, b->seq);
                    }
                    if (rc == 0 && b->mode != COMMIT_RETURN)
                        rc = ifl_put(q, idkey, "", b->seq);
                    return rc;
                }
            }
            /* unassigned: the digests are checked, not written */
            for (int j = 0; j < e->ndig && !src.refusal; j++) {
                src.digest[src.n_digests] = e->dig[j];
                src.digest_now[src.n_digests++] = seen_now(q, e, j);
            }
        }
    }
    if (d.niche >= 0)
        lr_copy(e->niche, sizeof e->niche, t->niches[d.niche].name, SIZE_MAX);
    snprintf(e->outcome, sizeof e->outcome, "%s", src.refusal ? src.refusal : rules_reason_str(d.reason));
    d.n_picked = 0;
    int rc = commit_add_route(&b->args, c, &src, l, &d, NULL, 0);
    if (rc == 0 && b->mode != COMMIT_RETURN && (!src.refusal || strcmp(src.refusal, "duplicate_id") != 0))
        rc = ifl_put(q, idkey, "", b->seq);
    return rc;
}

static void send_batch(struct rq *q, struct batch *b)
{
    uint64_t prev = q->n_busy > 0 ? q->last_sent : 0;
    if (commit_end(&b->args, b->seq, prev) != 0) {
        q->st.errors++;
        log_error("out of memory finishing a commit: its leads stay pending for recovery");
        forget_batch(q, b);
        batch_put(q, b);
        return;
    }
    q->last_sent = b->seq;
    b->next = NULL;
    *q->busy_tail = b;
    q->busy_tail = &b->next;
    q->n_busy++;
    q->inflight++;
    update_in_flight(q);
    send_commit(q, b, false);
}

/* Decides every lead of b (its pre-read done) and sends its commit. */
static void route_batch(struct rq *q, struct batch *b)
{
    int64_t now = redis_now_ms(q);
    const char *inkey = b->mode == COMMIT_LIST ? q->proc : q->inkey;
    b->gen = q->table_gen;
    b->seq = ++q->seq;
    /* Before the first load (recovery at start-up) the view is empty: the
     * script still has the last word on caps. */
    int rc = (q->usage || alloc_state(q)) && ensure_scratch(q) ? commit_begin(&b->args, q->cfg, b->mode, q->consumer, inkey, now) : -1;
    for (int i = 0; i < b->n && rc == 0; i++)
        rc = route_entry(q, b, &b->e[i], NULL, 0, NULL, NULL);
    if (rc != 0) {
        q->st.errors++;
        log_error("out of memory building a commit: its leads stay pending for recovery");
        learn(q, b, NULL, NULL);
        forget_batch(q, b);
        batch_put(q, b);
        return;
    }
    send_batch(q, b);
}

/* ----------------------------------------------------------- pre-read --- */

/* What SPEC 5 checks before routing, asked for the whole batch at once:
 * the records (duplicate_id), suppression, dedup digests. */
struct pre {
    struct batch *b;
    int what; /* 0 records, 1 dnc, 2 seen cur, 3 seen prev */
};

static void pre_done(struct rq *q, struct batch *b)
{
    if (--b->pre_wait > 0)
        return;
    for (struct batch **p = &q->building; *p; p = &(*p)->bnext)
        if (*p == b) {
            *p = b->bnext;
            break;
        }
    q->n_building--;
    q->inflight--;
    /* A stopping daemon still commits what it has read (SIGTERM leaves
     * nothing pending that a restart would route out of order). */
    if (b->pre_failed || (q->stopping && (!q->wr_up || q->draining))) { /* the leads stay pending for recovery */
        batch_put(q, b);
    } else {
        route_batch(q, b);
    }
    settle(q);
}

static void on_pre(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    struct pre *p = priv;
    struct batch *b = p->b;
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR)
            log_error("reading what the leads' checks need: %s", r->str);
        b->pre_failed = true;
    } else {
        size_t k = 0;
        for (int i = 0; i < b->n; i++) {
            struct entry *e = &b->e[i];
            if (e->dead || !e->decoded)
                continue;
            if (p->what == 0) {
                if (k < r->elements)
                    e->rec_exists = r->element[k]->type == REDIS_REPLY_STRING;
                k++;
            } else if (p->what == 1) {
                if (e->dnc[0]) {
                    if (k < r->elements)
                        e->suppressed = r->element[k]->integer == 1;
                    k++;
                }
            } else {
                for (int j = 0; j < e->ndig; j++, k++) {
                    if (k >= r->elements || r->element[k]->type != REDIS_REPLY_STRING)
                        continue;
                    /* the current bucket wins over the one before */
                    if (p->what == 2 || !e->seen[j]) {
                        free(e->seen[j]);
                        e->seen[j] = strdup(r->element[k]->str);
                    }
                }
            }
        }
    }
    free(p);
    pre_done(q, b);
}

static int pre_send(redisAsyncContext *ac, struct batch *b, int what, const char **argv,
                    const size_t *len, size_t argc)
{
    struct pre *p = ac ? malloc(sizeof *p) : NULL; /* no connection: the leads stay pending */
    if (!p)
        return -1;
    p->b = b;
    p->what = what;
    if (redisAsyncCommandArgv(ac, on_pre, p, (int)argc, argv, len) != REDIS_OK) {
        free(p);
        return -1;
    }
    b->pre_wait++;
    return 0;
}

/* Decodes b's leads for their ids and digests, and asks Redis about them
 * on ac. Routing follows in pre_done. */
static void pre_read(struct rq *q, struct batch *b, redisAsyncContext *ac)
{
    const struct cfg *c = q->cfg;
    char err[256];
    bool dedup = c->dedup.action != DEDUP_IGNORE && c->dedup.window > 0 && (c->dedup.phone || c->dedup.email);
    size_t cap = (size_t)b->n * 2 + 4, nrec = 0, ndnc = 0, ndig = 0;
    const char **av[3];
    size_t *al[3];
    char *keys = malloc((size_t)b->n * 200 + 1);
    for (int w = 0; w < 3; w++) {
        av[w] = malloc(cap * sizeof *av[w]);
        al[w] = malloc(cap * sizeof *al[w]);
    }
    bool ok = keys && av[0] && av[1] && av[2] && al[0] && al[1] && al[2];
    char dnckey[160], cur[256], prev[256];
    int64_t expireat;
    snprintf(dnckey, sizeof dnckey, "%s:dnc", c->prefix);
    commit_seen_keys(c, redis_now_ms(q), cur, prev, sizeof cur, &expireat);
    if (ok) {
        av[0][0] = "MGET";
        av[1][0] = "SMISMEMBER";
        av[1][1] = dnckey;
        av[2][0] = "HMGET";
        nrec = 1;
        ndnc = 2;
        ndig = 2;
    }
    for (int i = 0; ok && i < b->n; i++) {
        struct entry *e = &b->e[i];
        if (e->dead)
            continue;
        if (codec_lead_decode(q->codec, e->payload, e->len, c->limits.max_lead_bytes, err, sizeof err) != 0) {
            log_info("entry %s: dead letter: %s", e->ref, err);
            e->dead = strdup(err);
            ok = e->dead != NULL;
            continue;
        }
        const struct lead *l = codec_lead_get(q->codec);
        e->decoded = true;
        e->ndig = 0;
        e->dnc[0] = 0;
        lr_copy(e->id, sizeof e->id, l->id.p, l->id.len);
        if (l->has_created_at && l->created_at > 0 && l->created_at <= e->t0_ms)
            e->t0_ms = l->created_at;
        /* SPEC 5: normalized under defaults.country, as `leadctl dnc` does */
        char phone[64], email[256];
        size_t pl = commit_norm_phone(l->phone, c->rules->default_country, phone, sizeof phone);
        size_t el = commit_norm_email(l->email, email, sizeof email);
        if (pl) {
            commit_sha1_hex("", phone, pl, e->dnc);
            av[1][ndnc] = e->dnc;
            al[1][ndnc++] = 40;
        }
        if (dedup && pl && c->dedup.phone)
            commit_sha1_hex("phone:", phone, pl, e->dig[e->ndig++]);
        if (dedup && el && c->dedup.email)
            commit_sha1_hex("email:", email, el, e->dig[e->ndig++]);
        for (int j = 0; j < e->ndig; j++) {
            av[2][ndig] = e->dig[j];
            al[2][ndig++] = 40;
        }
        char *k = keys + (size_t)i * 200;
        int kl = snprintf(k, 200, "%s:lead:%s", c->prefix, e->id);
        av[0][nrec] = k;
        al[0][nrec++] = kl > 0 && kl < 200 ? (size_t)kl : 0;
    }
    al[0][0] = 4;
    al[1][0] = 10;
    al[1][1] = strlen(dnckey);
    al[2][0] = 5;
    b->bnext = q->building;
    q->building = b;
    q->n_building++;
    q->inflight++;
    b->pre_wait = 1; /* held until every command is sent */
    if (ok && b->mode != COMMIT_RETURN && nrec > 1)
        ok = pre_send(ac, b, 0, av[0], al[0], nrec) == 0;
    if (ok && ndnc > 2)
        ok = pre_send(ac, b, 1, av[1], al[1], ndnc) == 0;
    if (ok && ndig > 2) {
        av[2][1] = cur;
        al[2][1] = strlen(cur);
        ok = pre_send(ac, b, 2, av[2], al[2], ndig) == 0;
        av[2][1] = prev;
        al[2][1] = strlen(prev);
        ok = ok && pre_send(ac, b, 3, av[2], al[2], ndig) == 0;
    }
    if (!ok) {
        q->st.errors++;
        log_error("out of memory (or no connection) reading what the leads' checks need: they stay pending");
        b->pre_failed = true;
    }
    free(keys);
    for (int w = 0; w < 3; w++) {
        free(av[w]);
        free(al[w]);
    }
    pre_done(q, b);
}

/* Adds one input entry to b: its ref and a copy of its payload. */
static int add_input(struct rq *q, struct batch *b, const char *ref, const char *payload, size_t len,
                     const char *dead)
{
    struct entry *e = new_entry(b);
    if (!e || !(e->payload = malloc(len ? len : 1)) || (dead && !(e->dead = strdup(dead))))
        return -1;
    memcpy(e->payload, payload, len);
    e->len = len;
    lr_copy(e->ref, sizeof e->ref, ref, SIZE_MAX);
    e->t0_ms = redis_now_ms(q);
    if (!b->ref[0])
        lr_copy(b->ref, sizeof b->ref, ref, SIZE_MAX);
    q->st.received++;
    if (q->stats)
        stats_received(q->stats, 1);
    return 0;
}

/* Adds stream entries ([id, [field, value...]] each) to the batch. An
 * entry delivered max_deliveries times without a commit is poison: it is
 * dead-lettered instead of routed again. */
static int add_entries(struct rq *q, struct batch *b, const redisReply *entries)
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
            if (f->element[k]->type == REDIS_REPLY_STRING && strcmp(f->element[k]->str, "lead") == 0 &&
                f->element[k + 1]->type == REDIS_REPLY_STRING) {
                p = f->element[k + 1]->str;
                len = f->element[k + 1]->len;
            }
        long long deliveries = 0;
        for (int k = 0; k < q->n_claim; k++)
            if (strcmp(q->claim_ids[k], id) == 0)
                deliveries = q->claim_deliveries[k] + 1; /* this claim delivers it once more */
        if (deliveries >= q->cfg->input.max_deliveries) {
            char why[96];
            snprintf(why, sizeof why, "max_deliveries: delivered %lld times without a commit", deliveries);
            log_error("entry %s: poison lead, %s", id, why);
            rc = add_input(q, b, id, p, len, why);
        } else {
            rc = add_input(q, b, id, p, len, NULL);
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
    free(q->rr_base);
    free(q->rr_infl);
    free(q->usage);
    free(q->ubase);
    free(q->infl);
    free(q->rrsnap);
    free(q->moves);
    free(q->mp_dealers);
    q->n_mp = 0;
    q->rr = calloc(nr, sizeof *q->rr);
    q->rr_base = calloc(nr, sizeof *q->rr_base);
    q->rr_infl = calloc(nr, sizeof *q->rr_infl);
    q->usage = calloc(nd, sizeof *q->usage);
    q->ubase = calloc(nd, sizeof *q->ubase);
    q->infl = calloc(nd, sizeof *q->infl);
    q->rrsnap = calloc(nd, sizeof *q->rrsnap);
    q->moves = calloc(nd, sizeof *q->moves);
    q->mp_dealers = calloc(nd, sizeof *q->mp_dealers);
    for (uint32_t d = 0; q->mp_dealers && d < t->n_dealers; d++)
        if (t->hot[d].max_pending)
            q->mp_dealers[q->n_mp++] = d;
    return q->rr && q->rr_base && q->rr_infl && q->usage && q->ubase && q->infl && q->rrsnap && q->moves &&
           q->mp_dealers;
}

static const char *const period_name[PERIOD_N] = {"hour", "day", "week", "month"};

struct sync_req {
    struct rq *q;
    uint64_t gen;
    char key[200];      /* the key asked (MGET: the first), for the error report */
    uint32_t niche;     /* HGETALL of a rotation hash */
    uint32_t n;         /* MGET: the dealers asked, 4 counters each; LLEN: 1 */
    bool depth;         /* LLEN of one dealer's queue */
    uint32_t dealers[];
};

/* A sync reply that is an error: said with the key and the fix, at most
 * every 5 s, and counted in stats; a key of the wrong type will not cure
 * itself, so it stops the daemon (exit 2) instead of a silent retry loop. */
static void sync_error(struct rq *q, const struct sync_req *sr, const redisReply *r, const char *want)
{
    if (!r || r->type != REDIS_REPLY_ERROR || q->exited || refused(q, r))
        return;
    q->st.errors++;
    if (strncmp(r->str, "WRONGTYPE", 9) == 0) {
        log_error("loading the pick state: %s is not a %s (%s): leadrouter keeps its %s there; delete or rename "
                  "that key (or change `prefix`), then start again",
                  sr->key, want, r->str, want);
        finish(q, 2);
        return;
    }
    int64_t now = mono_ms();
    if (q->sync_logged_ms == 0 || now - q->sync_logged_ms > 5000) {
        log_error("loading the pick state: %s: %s (nothing is routed until it loads; trying again)", sr->key, r->str);
        q->sync_logged_ms = now;
    }
}

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
    sync_error(q, sr, r, "string (a counter)");
    if (ok && sr->gen == q->sync_gen)
        for (uint32_t i = 0; i < sr->n; i++) {
            for (int p = 0; p < PERIOD_N; p++) {
                const redisReply *e = r->element[i * PERIOD_N + (uint32_t)p];
                q->ubase[sr->dealers[i]].used[p] =
                    e->type == REDIS_REPLY_STRING ? (uint32_t)strtoul(e->str, NULL, 10) : 0;
            }
            view_dealer(q, sr->dealers[i]);
        }
    sync_step(q, sr, ok);
}

static void on_sync_rr(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    struct sync_req *sr = priv;
    redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    sync_error(q, sr, r, "hash (the rotation state)");
    if (ok && sr->gen == q->sync_gen) {
        const struct rules_table *t = q->cfg->rules;
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            int di = rules_dealer_find(t, r->element[i]->str, r->element[i]->len);
            int slot = di >= 0 ? rules_rr_slot(t, (uint32_t)di, sr->niche) : -1;
            if (slot >= 0)
                q->rr[slot] = q->rr_base[slot] = strtoll(r->element[i + 1]->str, NULL, 10);
        }
    }
    sync_step(q, sr, ok);
}

/* A queue depth behind max_pending: the sync's, or the periodic refresh's
 * (its reply follows the replies of every commit sent before it, so the
 * depth it gives is the base the commits in flight add to). */
static void on_depth(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    struct sync_req *sr = priv;
    redisReply *r = reply;
    bool ok = r && r->type == REDIS_REPLY_INTEGER;
    sync_error(q, sr, r, "list (a dealer queue)");
    /* the refresh belongs to a table, the sync's request to a sync */
    bool current = sr->depth ? sr->gen == q->table_gen : sr->gen == q->sync_gen && q->syncing;
    if (ok && current && q->ubase) {
        q->ubase[sr->dealers[0]].pending = (uint32_t)r->integer;
        view_dealer(q, sr->dealers[0]);
    }
    if (!sr->depth) {
        sync_step(q, sr, ok);
        return;
    }
    q->depth_wait--;
    free(sr);
}

static bool sync_send(struct rq *q, struct sync_req *sr, redisCallbackFn *fn, int argc, const char **argv,
                      const size_t *len)
{
    if (redisAsyncCommandArgv(q->wr, fn, sr, argc, argv, len) != REDIS_OK) {
        free(sr);
        return false;
    }
    if (!sr->depth)
        q->sync_pending++;
    return true;
}

/* Asks for the queue depth of every dealer with max_pending. */
static bool send_depths(struct rq *q, bool periodic)
{
    bool ok = true;
    for (uint32_t i = 0; ok && i < q->n_mp; i++) {
        struct sync_req *sr = calloc(1, sizeof *sr + sizeof(uint32_t));
        char key[256];
        int kl = snprintf(key, sizeof key, "%s:dealer:%s", q->cfg->prefix, q->cfg->rules->dealers[q->mp_dealers[i]].id);
        const char *av[2] = {"LLEN", key};
        size_t al[2] = {4, kl > 0 && (size_t)kl < sizeof key ? (size_t)kl : 0};
        ok = sr != NULL;
        if (ok) {
            lr_copy(sr->key, sizeof sr->key, key, al[1]);
            sr->q = q;
            sr->gen = periodic ? q->table_gen : q->sync_gen;
            sr->n = 1;
            sr->depth = periodic;
            sr->dealers[0] = q->mp_dealers[i];
            ok = sync_send(q, sr, on_depth, 2, av, al);
            if (ok && periodic)
                q->depth_wait++;
        }
    }
    return ok;
}

/* Loads the counters behind the caps and least_loaded (in the current
 * buckets), the queue depths behind max_pending and the rotation state of
 * the current table from Redis; reading waits for it. Runs when Redis
 * comes (back) up, after a reload, and when a quarter hour begins (every
 * zone's hour, day, week and month begin on one), once no commit is in
 * flight. */
static void start_sync(struct rq *q)
{
    const struct rules_table *t = q->cfg->rules;
    if (!q->wr_up || !alloc_state(q)) {
        if (q->wr_up)
            log_error("out of memory loading the pick state");
        return;
    }
    ifl_clear(q); /* nothing is in flight */
    q->sync_gen++;
    q->syncing = true;
    q->synced = false;
    q->sync_pending = 0;
    int64_t now = redis_now_ms(q);
    q->sync_quarter = now / 900000;
    struct sync_req *sr = calloc(1, sizeof *sr + t->n_dealers * sizeof(uint32_t));
    uint8_t *count_day = calloc(t->n_dealers ? t->n_dealers : 1, 1);
    for (uint32_t d = 0; count_day && d < t->n_dealers; d++)
        for (uint32_t k = 0; k < t->dealers[d].n_niches; k++)
            if (t->niches[t->dealers[d].niches[k]].strategy == STRAT_LEAST_LOADED)
                count_day[d] = 1;
    size_t nk = 0;
    for (uint32_t d = 0; sr && count_day && d < t->n_dealers; d++)
        if (t->hot[d].caps[0] | t->hot[d].caps[1] | t->hot[d].caps[2] | t->hot[d].caps[3] | count_day[d])
            sr->dealers[sr->n++] = d;
    free(count_day);
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
        snprintf(sr->key, sizeof sr->key, "MGET %.*s (%u counters)", (int)len[1], argv[1], sr->n * PERIOD_N);
        ok = sync_send(q, sr, on_sync_caps, (int)nk, argv, len);
        sr = NULL;
    }
    free(sr);
    free(argv);
    free(len);
    free(keys);
    ok = ok && send_depths(q, false);
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
                lr_copy(rr->key, sizeof rr->key, key, al[1]);
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

/* Ready to decide leads: the pick state is loaded for this quarter hour. */
static bool pick_ready(struct rq *q)
{
    if (q->synced && redis_now_ms(q) / 900000 != q->sync_quarter)
        q->synced = false;
    if (!q->synced) {
        /* The load replaces the view: only once no commit is in flight. */
        if (!q->syncing && q->n_busy == 0 && !q->building)
            start_sync(q);
        return false;
    }
    return ensure_scratch(q);
}

/* ------------------------------------------------------------- input --- */

static void on_read(redisAsyncContext *ac, void *reply, void *priv);
static void on_group(redisAsyncContext *ac, void *reply, void *priv);
static void reroute(struct rq *q, struct entry *e);

/* List mode: up to input.batch leads from the input to this consumer's
 * processing list in one atomic step, oldest first. */
static const char list_take_lua[] =
    "local items = redis.call('RPOP', KEYS[1], ARGV[1])\n"
    "if not items then return {} end\n"
    "for c = 1, #items, 1000 do\n"
    "  redis.call('LPUSH', KEYS[2], unpack(items, c, math.min(c + 999, #items)))\n"
    "end\n"
    "return items\n";

/* Leads refused by the last commits are decided again first, in order,
 * once every commit sent after them is answered. */
static bool run_redo(struct rq *q)
{
    if (!q->redo_head)
        return false;
    if (q->draining || q->failing || q->n_busy > 0 || q->building)
        return true;
    struct batch *b = NULL;
    struct redo *r;
    while ((r = q->redo_head) && (!b || (r->mode == b->mode && b->n < q->cfg->input.batch))) {
        q->redo_head = r->next;
        if (!q->redo_head)
            q->redo_tail = &q->redo_head;
        q->n_redo--;
        if (r->mode == COMMIT_RETURN) {
            reroute(q, &r->e);
            entry_clear(&r->e);
            free(r);
            continue;
        }
        if (!b && !(b = batch_get(q, r->mode))) {
            entry_clear(&r->e);
            free(r);
            continue;
        }
        struct entry *e = new_entry(b);
        if (e) {
            *e = r->e;
            if (!b->ref[0])
                lr_copy(b->ref, sizeof b->ref, e->ref, SIZE_MAX);
        } else {
            entry_clear(&r->e);
        }
        free(r);
    }
    if (b && b->n > 0) {
        for (int i = 0; i < b->n; i++)
            b->e[i].decoded = false;
        pre_read(q, b, q->wr);
    } else if (b) {
        batch_put(q, b);
    }
    return true;
}

static void read_next(struct rq *q)
{
    /* What a dead consumer left pending comes before newer input, in
     * stream order, and only once the pick state is loaded, so that it is
     * decided from the counts (the same answer as if it had not died). */
    if (q->recover_more && !q->building && !q->stopping && q->ready && q->wr_up && q->synced) {
        q->recover_more = false;
        recover_round(q);
    }
    if (q->stopping || q->reading || !q->ready || q->recovering)
        return;
    if (!pick_ready(q) || run_redo(q))
        return;
    /* Reads go ahead of the commits: a read and its pre-read wait behind
     * the commits in Redis's one thread, so up to in_flight batches are
     * committing and one more is being read and decided. */
    if (q->draining || q->failing || q->n_busy + q->n_building > q->cfg->input.in_flight)
        return;
    const struct cfg *c = q->cfg;
    int rc;
    if (c->input.mode == INPUT_LIST) {
        char n[16];
        snprintf(n, sizeof n, "%d", c->input.batch);
        const char *av[] = {"EVAL", list_take_lua, "2", q->inkey, q->proc, n};
        size_t al[6];
        for (int i = 0; i < 6; i++)
            al[i] = strlen(av[i]);
        rc = redisAsyncCommandArgv(q->rd, on_read, (void *)1, 6, av, al);
    } else {
        rc = redisAsyncCommand(q->rd, on_read, NULL, "XREADGROUP GROUP %s %s COUNT %d BLOCK %d STREAMS %s >",
                               c->input.group, q->consumer, c->input.batch, READ_BLOCK_MS, q->inkey);
    }
    q->reading = rc == REDIS_OK;
}

static void on_read(redisAsyncContext *ac, void *reply, void *priv)
{
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
            redisAsyncCommand(q->wr, on_group, NULL, "XGROUP CREATE %s %s 0 MKSTREAM", q->inkey,
                              q->cfg->input.group);
        } else {
            /* e.g. OOM (list mode's take writes): said once per 10 s with
             * a count, read again after a pause that grows while it lasts */
            q->st.errors++;
            int64_t now = mono_ms();
            if (q->read_logged_ms == 0 || now - q->read_logged_ms > 10000) {
                log_error("reading the input: %s (%u more since the last one said; trying again in %d ms)", r->str,
                          q->read_unsaid, q->read_fail_ms ? q->read_fail_ms * 2 : 200);
                q->read_logged_ms = now;
                q->read_unsaid = 0;
            } else {
                q->read_unsaid++;
            }
        }
        q->read_fail_ms = q->read_fail_ms ? q->read_fail_ms * 2 : 200;
        if (q->read_fail_ms > BACKOFF_MAX_MS)
            q->read_fail_ms = BACKOFF_MAX_MS;
        struct timeval tv = {q->read_fail_ms / 1000, (q->read_fail_ms % 1000) * 1000};
        evtimer_add(q->retry_ev, &tv); /* on_retry reads again */
        return;
    }
    /* A read that answered: the pause ends (not list mode's empty take,
     * which is followed by the blocking move that may be what fails). */
    if (!(q->cfg->input.mode == INPUT_LIST && priv && r->type == REDIS_REPLY_ARRAY && r->elements == 0))
        q->read_fail_ms = 0;
    bool list = q->cfg->input.mode == INPUT_LIST;
    struct batch *b = batch_get(q, list ? COMMIT_LIST : COMMIT_STREAM);
    int rc = b ? 0 : -1;
    if (list && r->type == REDIS_REPLY_ARRAY && priv) {
        for (size_t i = 0; i < r->elements && rc == 0; i++)
            if (r->element[i]->type == REDIS_REPLY_STRING)
                rc = add_input(q, b, "list", r->element[i]->str, r->element[i]->len, NULL);
        if (rc == 0 && b->n == 0) { /* empty: wait for one lead, then take batches again */
            batch_put(q, b);
            q->reading = redisAsyncCommand(q->rd, on_read, NULL, "BLMOVE %s %s RIGHT LEFT %d", q->inkey, q->proc,
                                           READ_BLOCK_MS / 1000) == REDIS_OK;
            return;
        }
    } else if (list && r->type == REDIS_REPLY_STRING && rc == 0) {
        rc = add_input(q, b, "list", r->str, r->len, NULL);
    } else if (!list && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && rc == 0) {
        rc = add_entries(q, b, r->element[0]->element[1]);
    }
    if (rc != 0) {
        q->st.errors++;
        log_error("out of memory building a commit: its leads stay pending for recovery");
    }
    /* On the commit connection: the answers follow every commit sent
     * before them (those after are in the in-flight view). */
    if (b && b->n > 0 && rc == 0)
        pre_read(q, b, q->wr_up ? q->wr : q->rd);
    else if (b)
        batch_put(q, b);
    settle(q);
}

/* ----------------------------------------------------------- returns --- */

struct ret {
    struct rq *q;
    struct entry e; /* ref: the return entry; rdealer: who returns it; id */
};

static void commit_return_dead(struct rq *q, struct entry *re, const char *why)
{
    struct batch *b = batch_get(q, COMMIT_RETURN);
    struct entry *e = b ? new_entry(b) : NULL;
    if (!e || !(e->dead = strdup(why)) || !(e->payload = strdup(re->id))) {
        if (b)
            batch_put(q, b);
        q->st.errors++;
        return;
    }
    e->len = strlen(re->id);
    lr_copy(e->ref, sizeof e->ref, re->ref, SIZE_MAX);
    lr_copy(b->ref, sizeof b->ref, re->ref, SIZE_MAX);
    b->gen = q->table_gen;
    b->seq = ++q->seq;
    char returns[160];
    snprintf(returns, sizeof returns, "%s:returns", q->cfg->prefix);
    if ((!q->usage && !alloc_state(q)) || commit_begin(&b->args, q->cfg, COMMIT_RETURN, q->consumer, returns, redis_now_ms(q)) != 0 ||
        route_entry(q, b, e, NULL, 0, NULL, NULL) != 0) {
        batch_put(q, b);
        q->st.errors++;
        return;
    }
    send_batch(q, b);
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

static void on_record(redisAsyncContext *ac, void *reply, void *priv);

/* Reads the lead's record again and decides the return from it. */
static void return_again(struct rq *q, struct entry *e)
{
    struct ret *rt = calloc(1, sizeof *rt);
    if (!rt) {
        q->st.errors++;
        return;
    }
    rt->q = q;
    rt->e = *e;
    memset(e, 0, sizeof *e);
    q->inflight++;
    if (!q->wr_up ||
        redisAsyncCommand(q->wr, on_record, rt, "GET %s:lead:%s", q->cfg->prefix, rt->e.id) != REDIS_OK) {
        q->inflight--;
        entry_clear(&rt->e);
        free(rt);
    }
}

/* The record arrived: route the returned lead again, or dead-letter a
 * return that names no lead, a dealer that never had it, or one that
 * returned it already. The commit checks the record is still this one. */
static void on_record(redisAsyncContext *ac, void *reply, void *priv)
{
    heard(ac);
    struct ret *rt = priv;
    struct rq *q = rt->q;
    redisReply *r = reply;
    q->inflight--;
    struct entry *re = &rt->e;
    struct commit_record rec;
    if (r && (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING)) {
        if (r->type == REDIS_REPLY_NIL || commit_record_parse(r->str, r->len, &rec) != 0)
            commit_return_dead(q, re, "bad_return: unknown lead");
        else if (!in_list(rec.dealers, re->rdealer))
            commit_return_dead(q, re, "bad_return: that dealer never had the lead");
        else if (in_list(rec.returned, re->rdealer))
            commit_return_dead(q, re, "bad_return: already_returned: that dealer returned the lead before");
        else if ((re->expect = malloc(r->len ? r->len : 1)) && (re->payload = malloc(rec.payload_len + 1))) {
            memcpy(re->expect, r->str, r->len);
            re->expect_len = r->len;
            memcpy(re->payload, rec.payload, rec.payload_len);
            re->len = rec.payload_len;
            re->attempt = rec.attempt + 1;
            re->t0_ms = redis_now_ms(q);
            reroute(q, re);
        } else {
            q->st.errors++;
        }
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("return %s: reading the lead's record: %s", re->ref, r->str);
    } /* else disconnected: the return stays pending */
    entry_clear(re);
    free(rt);
    settle(q);
}

/* Routes a returned lead again (its record in e->expect), to one dealer
 * that has not had it; max_attempts first. */
static void reroute(struct rq *q, struct entry *re)
{
    const struct cfg *c = q->cfg;
    struct commit_record rec;
    if (!re->expect || commit_record_parse(re->expect, re->expect_len, &rec) != 0 || !ensure_scratch(q) ||
        (!q->usage && !alloc_state(q)))
        return;
    struct batch *b = batch_get(q, COMMIT_RETURN);
    struct entry *e = b ? new_entry(b) : NULL;
    if (!e) {
        if (b)
            batch_put(q, b);
        q->st.errors++;
        return;
    }
    *e = *re;
    memset(re, 0, sizeof *re);
    lr_copy(b->ref, sizeof b->ref, e->ref, SIZE_MAX);
    b->gen = q->table_gen;
    b->seq = ++q->seq;
    char returns[160];
    snprintf(returns, sizeof returns, "%s:returns", c->prefix);
    uint32_t exclude[64], n_ex = 0;
    for (const char *p = rec.dealers; *p && n_ex < 64;) {
        const char *x = strchr(p, ',');
        size_t len = x ? (size_t)(x - p) : strlen(p);
        int di = rules_dealer_find(c->rules, p, len);
        if (di >= 0)
            exclude[n_ex++] = (uint32_t)di;
        p += len + (x ? 1 : 0);
    }
    char returned[1200];
    snprintf(returned, sizeof returned, "%s%s%s", rec.returned, rec.returned[0] ? "," : "", e->rdealer);
    int rc = commit_begin(&b->args, c, COMMIT_RETURN, q->consumer, returns, redis_now_ms(q));
    rc = rc ? rc : commit_set_expect(&b->args, e->expect, e->expect_len);
    if (rc == 0 && e->attempt > c->routing.max_attempts) {
        /* unassigned max_attempts: recorded, never routed */
        struct commit_src src = {.ref = e->ref, .payload = e->payload, .payload_len = e->len, .attempt = e->attempt,
                                 .had = rec.dealers, .returned = returned, .refusal = "max_attempts"};
        char err[256];
        if (codec_lead_decode(q->codec, e->payload, e->len, SIZE_MAX, err, sizeof err) != 0) {
            rc = -1;
        } else {
            struct rules_decision d;
            struct rules_input in = {.now_ms = b->args.now_ms, .usage = q->usage, .max_buyers = 1};
            rules_decide(c->rules, q->scratch, codec_lead_get(q->codec), &in, &d);
            lr_copy(e->niche, sizeof e->niche, rec.niche, SIZE_MAX);
            snprintf(e->outcome, sizeof e->outcome, "max_attempts");
            d.n_picked = 0;
            rc = commit_add_route(&b->args, c, &src, codec_lead_get(q->codec), &d, NULL, 0);
        }
    } else if (rc == 0) {
        rc = route_entry(q, b, e, exclude, n_ex, rec.dealers, returned);
    }
    if (rc != 0) {
        learn(q, b, NULL, NULL);
        forget_batch(q, b);
        batch_put(q, b);
        q->st.errors++;
        return;
    }
    send_batch(q, b);
}

static const char *field(const redisReply *h, const char *name)
{
    for (size_t i = 0; h && i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, name) == 0 &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1]->str;
    return NULL;
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
        redisReply *x = entries->element[i], *f = x->element[1];
        struct entry e;
        memset(&e, 0, sizeof e);
        lr_copy(e.ref, sizeof e.ref, x->element[0]->str, SIZE_MAX);
        const char *id = field(f, "lead_id"), *dealer = field(f, "dealer");
        lr_copy(e.id, sizeof e.id, id ? id : "", SIZE_MAX);
        lr_copy(e.rdealer, sizeof e.rdealer, dealer ? dealer : "", SIZE_MAX);
        if (!id || !dealer || !*id || !*dealer) {
            commit_return_dead(q, &e, "bad_return: lead_id and dealer are required");
            continue;
        }
        q->st.returns++;
        return_again(q, &e);
    }
}

static void on_returns_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    if (q->ready && q->wr_up && q->synced && !q->stopping && !q->polling_returns && !q->failing && !q->draining)
        q->polling_returns = redisAsyncCommand(q->wr, on_returns, NULL,
                                               "XREADGROUP GROUP %s %s COUNT 64 STREAMS %s:returns >",
                                               q->cfg->input.group, q->consumer, q->cfg->prefix) == REDIS_OK;
    struct timeval tv = {0, RETURNS_POLL_MS * 1000};
    if (!q->stopping)
        evtimer_add(q->returns_ev, &tv);
}

/* ----------------------------------------------------------- recovery --- */

/* Is entry id held by this process (in a batch, or waiting to be decided
 * again)? Such entries are ours to finish, not recovery's. */
static bool held(const struct rq *q, const char *id)
{
    for (const struct batch *b = q->busy_head; b; b = b->next)
        for (int i = 0; i < b->n; i++)
            if (strcmp(b->e[i].ref, id) == 0)
                return true;
    for (const struct redo *r = q->redo_head; r; r = r->next)
        if (strcmp(r->e.ref, id) == 0)
            return true;
    return false;
}

/* One round of recovery: up to a batch of the entries pending longer than
 * input.claim_idle_ms. Reading new input waits while it runs. */
static int recover_count(const struct rq *q)
{
    return q->cfg->input.batch < 1024 ? q->cfg->input.batch : 1024;
}

static void on_pending(redisAsyncContext *ac, void *reply, void *priv);

static void recover_round(struct rq *q)
{
    int n = recover_count(q);
    q->recovering = true;
    q->inflight++;
    if (redisAsyncCommand(q->wr, on_pending, NULL, "XPENDING %s %s IDLE %d - + %d", q->inkey, q->cfg->input.group,
                          q->cfg->input.claim_idle_ms, n) != REDIS_OK) {
        q->inflight--;
        q->recovering = false;
    }
}

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
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && !q->stopping && !q->building) {
        q->recover_more = q->recover_more && (int)r->elements == q->n_claim;
        if ((int)r->elements < q->n_claim)
            log_warn("recovery: %d of %d pending leads were claimed by another consumer first or their entries "
                     "were deleted from the stream",
                     q->n_claim - (int)r->elements, q->n_claim);
        struct batch *b = batch_get(q, COMMIT_STREAM);
        if (!b || add_entries(q, b, r) != 0) {
            q->st.errors++;
            log_error("recovery: out of memory building a commit");
            if (b)
                batch_put(q, b);
        } else if (b->n > 0) {
            log_info("recovery: routing %d leads taken over from other consumers", b->n);
            q->st.recovered += (uint64_t)b->n;
            /* A full round: there may be more. They are all decided before
             * any newer input, in stream order (SPEC 5: the same leads give
             * the same answer across a restart): read_next starts the next
             * round once this batch is decided. */
            q->recovering = q->recover_more;
            pre_read(q, b, q->wr);
        } else {
            batch_put(q, b);
        }
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("recovery: XCLAIM: %s", r->str);
    }
    if (!q->recovering)
        q->recover_more = false;
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
        settle(q);
        return;
    }
    q->recover_more = (int)r->elements == recover_count(q);
    const char *argv[6 + 1024];
    size_t len[6 + 1024];
    char idle[32];
    snprintf(idle, sizeof idle, "%d", q->cfg->input.claim_idle_ms);
    int argc = 0;
    argv[argc++] = "XCLAIM";
    argv[argc++] = q->inkey;
    argv[argc++] = q->cfg->input.group;
    argv[argc++] = q->consumer;
    argv[argc++] = idle;
    for (size_t i = 0; i < r->elements && q->n_claim < 1024; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 4 || e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        /* Our own, still being committed (or retried while Redis refuses
         * commits): not a dead consumer's, and not another delivery. */
        if (e->element[1]->type == REDIS_REPLY_STRING && strcmp(e->element[1]->str, q->consumer) == 0 &&
            held(q, e->element[0]->str))
            continue;
        snprintf(q->claim_ids[q->n_claim], 64, "%s", e->element[0]->str);
        q->claim_deliveries[q->n_claim] = e->element[3]->integer;
        argv[argc++] = q->claim_ids[q->n_claim++];
    }
    if (q->n_claim == 0) {
        q->recovering = false;
        q->recover_more = false;
        settle(q);
        return;
    }
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    q->inflight++;
    if (redisAsyncCommandArgv(q->wr, on_claim, NULL, argc, argv, len) != REDIS_OK) {
        q->inflight--;
        q->recovering = false;
    }
}

/* The input stream keeps only what is not acknowledged yet: entries older
 * than the oldest pending one (or, with none pending, than the last one
 * delivered) of every group are trimmed, once per recovery round, instead
 * of one XDEL per lead in the commit. */
static const char trim_lua[] =
    "local min = nil\n"
    "local function older(a, b)\n"
    "  local am, as = string.match(a, '^(%d+)-(%d+)$')\n"
    "  local bm, bs = string.match(b, '^(%d+)-(%d+)$')\n"
    "  if not am or not bm then return false end\n"
    "  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)\n"
    "  return am < bm or (am == bm and as < bs)\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do\n"
    "  local name, last = nil, nil\n"
    "  for i = 1, #g, 2 do\n"
    "    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end\n"
    "  end\n"
    "  local p = redis.call('XPENDING', KEYS[1], name)\n"
    "  local m = (p[1] > 0) and p[2] or last\n"
    "  if m and (min == nil or older(m, min)) then min = m end\n"
    "end\n"
    "if min == nil then return 0 end\n"
    "return redis.call('XTRIM', KEYS[1], 'MINID', min)\n";

static void on_trim(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    heard(ac);
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_ERROR)
        log_warn("trimming the input stream: %s", r->str);
}

/* List mode: each consumer keeps <p>:consumer:<name> (with a TTL) while it
 * runs and is registered in <p>:consumers; a registered consumer without
 * that key is gone, and its processing list goes back to the input, oldest
 * lead first in line. A bounded SCAN step per round registers processing
 * lists nobody registered (left by older versions or by hand). A consumer
 * that was only frozen finds its list gone when it wakes: its commits fail
 * the fence (LPOS) and write nothing. */
static const char list_recover_lua[] =
    "local p, me, ttl, cursor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]\n"
    "local reg, pre = p .. ':consumers', p .. ':in:processing:'\n"
    "redis.call('SET', p .. ':consumer:' .. me, '1', 'PX', ttl)\n"
    "redis.call('SADD', reg, me)\n"
    "local sc = redis.call('SCAN', cursor, 'MATCH', pre .. '*', 'COUNT', 1000)\n"
    "for _, k in ipairs(sc[2]) do redis.call('SADD', reg, string.sub(k, #pre + 1)) end\n"
    "local moved = 0\n"
    "for _, c in ipairs(redis.call('SMEMBERS', reg)) do\n"
    "  if c ~= me and redis.call('EXISTS', p .. ':consumer:' .. c) == 0 then\n"
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
    if (q->ready && q->wr_up && q->synced && !q->stopping && !q->recovering && !q->building && !q->failing &&
        q->cfg->input.mode == INPUT_STREAM) {
        recover_round(q);
        const char *av[] = {"EVAL", trim_lua, "1", q->inkey};
        size_t al[4] = {4, strlen(trim_lua), 1, strlen(q->inkey)};
        redisAsyncCommandArgv(q->wr, on_trim, NULL, 4, av, al);
    }
    /* The queue depths behind max_pending, as dealers consume. */
    if (q->ready && q->wr_up && !q->stopping && q->synced && q->depth_wait == 0)
        send_depths(q, true);
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
    bool connected = (ac->c.flags & REDIS_CONNECTED) != 0;
    if (connected)
        log_warn("redis: no reply on the %s connection for %lld ms (server hung?): dropping it and reconnecting",
                 is_wr ? "commit" : "read", (long long)silent);
    else
        log_warn("redis: the %s connection's connect has not completed in %lld ms: giving it up", is_wr ? "commit" : "read",
                 (long long)silent);
    redisAsyncFree(ac); /* on_disconnect follows only for a connected context */
    if (!connected) {
        forget_conn(q, is_wr);
        if (q->stopping)
            maybe_finish(q);
        else
            schedule_reconnect(q);
    }
}

static void on_watch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    int64_t now = mono_ms();
    /* A late tick means the loop itself was busy (a reload of a large
     * config, a long sync): replies may be waiting unread in the socket,
     * so this silence is ours, not the server's. Judge at the next tick. */
    bool stalled = q->watch_last_ms && now - q->watch_last_ms > WATCH_MS + WATCH_MS / 2;
    q->watch_last_ms = now;
    for (int w = 0; w < 2 && !q->exited; w++) {
        redisAsyncContext *ac = w ? q->wr : q->rd;
        if (ac && !(ac->c.flags & REDIS_CONNECTED) && !stalled) { /* still connecting */
            if (now - q->connect_ms[w] > CONNECT_MS)
                drop_hung(q, ac, w == 1, now - q->connect_ms[w]);
            continue;
        }
        if (!ac || !ac->replies.head || stalled) { /* nothing awaited: idle is not hung */
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
    q->recover_more = q->cfg->input.mode == INPUT_STREAM;
    log_info("redis up: consuming %s:in as %s", q->cfg->prefix, q->consumer);
    /* Commits whose replies were lost with the old connection go again,
     * in the order they were first sent. */
    for (struct batch *b = q->busy_head; b; b = b->next)
        if (b->resend)
            send_commit(q, b, false);
    q->depth_wait = 0;
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

/* The commit connection is up once every setup command has answered
 * well; one that failed (Redis still loading its data, a refused command)
 * drops the connection, and the reconnect (with backoff) tries again. */
static void setup_done(struct rq *q)
{
    if (--q->wr_setup != 0 || !q->wr)
        return;
    if (q->wr_setup_failed) {
        q->wr_setup_failed = false;
        q->quiet_disconnect = true; /* said already */
        redisAsyncDisconnect(q->wr); /* on_disconnect reconnects */
        return;
    }
    q->redis_loading = false;
    q->wr_up = true;
    become_ready(q);
}

/* A setup command's error: a key of the wrong type will not cure itself
 * (exit 2, naming it); anything else (LOADING, ...) is tried again. */
static void setup_error(struct rq *q, const char *what, const redisReply *r)
{
    q->st.errors++;
    if (strncmp(r->str, "WRONGTYPE", 9) == 0) {
        log_error("redis: %s: %s: the key holds something else; delete or rename it (or change `prefix`)", what,
                  r->str);
        finish(q, 2);
        return;
    }
    q->wr_setup_failed = true;
    q->redis_loading = strncmp(r->str, "LOADING", 7) == 0;
    int64_t now = mono_ms();
    if (q->setup_logged_ms == 0 || now - q->setup_logged_ms > 5000) {
        log_warn("redis: %s: %s: trying again", what, r->str);
        q->setup_logged_ms = now;
    }
}

static void on_group(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    redisReply *r = reply;
    if (refused(q, r))
        return;
    bool failed = r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0;
    if (!priv) { /* re-created after NOGROUP: the next read tells */
        if (failed)
            log_error("creating the consumer group: %s", r->str);
        return;
    }
    if (failed)
        setup_error(q, "creating the consumer group", r);
    if (r && !q->exited)
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
    else if (r && r->type == REDIS_REPLY_ERROR)
        setup_error(q, "loading the commit script", r);
    else if (r)
        log_error("loading the commit script: an unexpected reply");
    if (r && !q->exited)
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
    } else if (r && r->type == REDIS_REPLY_ERROR) {
        setup_error(q, "TIME", r);
    }
    if (r && !q->exited)
        setup_done(q);
}

/* The Redis settings leadrouter's guarantees rest on (README: Redis
 * settings), read at every connect: a maxmemory-policy that evicts lets
 * Redis delete cap counters, records, digests and pending leads, so it is
 * refused (exit 2) unless redis.allow_eviction; no AOF is said. A Redis
 * that does not let us read its config (CONFIG renamed, an ACL) is only
 * warned about. */
static void on_config_get(redisAsyncContext *ac, void *reply, void *priv)
{
    struct rq *q = heard(ac);
    redisReply *r = reply;
    const char *what = priv;
    if (!r)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[1]->type != REDIS_REPLY_STRING) {
        log_warn("redis: cannot read %s (%s): check it by hand (README: Redis settings)", what,
                 r->type == REDIS_REPLY_ERROR ? r->str : "no such setting");
        setup_done(q);
        return;
    }
    const char *v = r->element[1]->str;
    if (strcmp(what, "maxmemory-policy") == 0 && strcmp(v, "noeviction") != 0) {
        if (q->cfg->redis.allow_eviction) {
            log_warn("redis: maxmemory-policy is %s: Redis may evict cap counters, records and pending leads "
                     "(redis.allow_eviction = true)",
                     v);
        } else {
            log_error("redis: maxmemory-policy is %s: Redis may evict cap counters, records and pending leads, "
                      "losing leads and exceeding caps; set it to noeviction (CONFIG SET maxmemory-policy "
                      "noeviction, and in redis.conf), or redis.allow_eviction = true to run anyway",
                      v);
            finish(q, 2);
            return;
        }
    } else if (strcmp(what, "appendonly") == 0 && strcmp(v, "yes") != 0) {
        log_warn("redis: appendonly is %s: if Redis crashes, the commits since its last snapshot are lost "
                 "(leads routed twice or not at all); appendonly yes is recommended (README: Redis settings)",
                 v);
    }
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
        forget_conn(q, is_wr);
        if (q->stopping)
            maybe_finish(q);
        else
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
    q->wr_setup_failed = false;
    redisAsyncCommandArgv(w, on_script, NULL, 3, (const char *[]){"SCRIPT", "LOAD", lr_commit_lua},
                          (const size_t[]){6, 4, lr_commit_lua_len});
    redisAsyncCommand(w, on_time, NULL, "TIME");
    if (c->input.mode == INPUT_STREAM) {
        q->wr_setup++;
        redisAsyncCommand(w, on_group, q, "XGROUP CREATE %s:in %s 0 MKSTREAM", c->prefix, c->input.group);
    }
    q->wr_setup++;
    redisAsyncCommand(w, on_group, q, "XGROUP CREATE %s:returns %s 0 MKSTREAM", c->prefix, c->input.group);
    q->wr_setup += 2;
    redisAsyncCommand(w, on_config_get, (void *)"maxmemory-policy", "CONFIG GET maxmemory-policy");
    redisAsyncCommand(w, on_config_get, (void *)"appendonly", "CONFIG GET appendonly");
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
    if (!q->quiet_disconnect)
        log_warn("redis connection lost (%s): reconnecting", status == REDIS_OK ? "closed" : ac->errstr);
    q->quiet_disconnect = false;
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
    if (!q->wr) {
        q->wr = connect_one(q);
        q->connect_ms[1] = mono_ms();
    }
    if (!q->rd) {
        q->rd = connect_one(q);
        q->connect_ms[0] = mono_ms();
    }
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
    q->busy_tail = &q->busy_head;
    snprintf(q->inkey, sizeof q->inkey, "%s:in", cfg->prefix);
    q->codec = codec_lead_new();
    q->retry_ev = evtimer_new(base, on_retry, q);
    q->returns_ev = evtimer_new(base, on_returns_timer, q);
    q->recover_ev = evtimer_new(base, on_recover_timer, q);
    q->watch_ev = evtimer_new(base, on_watch, q);
    q->fail_ev = evtimer_new(base, on_fail_timer, q);
    q->stop_ev = evtimer_new(base, on_stop_bound, q);
    q->claim_ids = calloc(1024, sizeof *q->claim_ids);
    q->claim_deliveries = calloc(1024, sizeof *q->claim_deliveries);
    if (!q->codec || !q->retry_ev || !q->returns_ev || !q->recover_ev || !q->watch_ev || !q->fail_ev || !q->stop_ev || !q->claim_ids || !q->claim_deliveries) {
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
    on_watch(-1, 0, q); /* connects have a deadline from the first one on */
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

/* A stop is bounded: after STOP_MS the commits still unanswered (Redis
 * down, a connect hanging) are left pending for recovery, which the
 * atomic commit makes safe, and the daemon exits. */
static void on_stop_bound(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rq *q = arg;
    if (q->exited)
        return;
    log_warn("stopping: %d commits still unanswered after %d s: they stay pending for recovery", q->inflight,
             STOP_MS / 1000);
    finish(q, 0);
}

void rq_stop(struct rq *q)
{
    if (q->stopping)
        return;
    q->stopping = true;
    struct timeval tv = {STOP_MS / 1000, (STOP_MS % 1000) * 1000};
    evtimer_add(q->stop_ev, &tv);
    evtimer_del(q->returns_ev);
    evtimer_del(q->retry_ev);
    evtimer_del(q->recover_ev);
    evtimer_del(q->fail_ev);
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
    ifl_clear(q); /* a batch in flight is answered without the old table's view */
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
            q->usage[d] = q->ubase[d] = ousage[od];
            for (uint32_t k = 0; k < t->dealers[d].n_niches; k++) {
                uint32_t ni = t->dealers[d].niches[k];
                int on = niche_find(old, t->niches[ni].name);
                int slot = rules_rr_slot(t, d, ni), oslot = on >= 0 ? rules_rr_slot(old, (uint32_t)od, (uint32_t)on) : -1;
                if (slot >= 0 && oslot >= 0)
                    q->rr[slot] = q->rr_base[slot] = orr[oslot];
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
    for (struct batch *b = q->busy_head, *nx; b; b = nx) {
        nx = b->next;
        batch_destroy(b);
    }
    for (struct batch *b = q->pool, *nx; b; b = nx) {
        nx = b->next;
        batch_destroy(b);
    }
    for (struct batch *b = q->building, *nx; b; b = nx) {
        nx = b->bnext;
        batch_destroy(b);
    }
    ifl_clear(q);
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
    if (q->fail_ev)
        event_free(q->fail_ev);
    if (q->stop_ev)
        event_free(q->stop_ev);
    free(q->claim_ids);
    free(q->claim_deliveries);
    for (struct redo *r = q->redo_head, *nx; r; r = nx) {
        nx = r->next;
        entry_clear(&r->e);
        free(r);
    }
    free(q->rr);
    free(q->rr_base);
    free(q->rr_infl);
    free(q->usage);
    free(q->ubase);
    free(q->infl);
    free(q->rrsnap);
    free(q->moves);
    free(q->mp_dealers);
    free(q);
}
