/* test_commit.c - the C <-> Lua commit contract (commit_contract.h): batches
 * built with commit_* from routing decisions, run through the embedded
 * daemon/commit.lua against a real redis-server, and every reply code
 * (done, stale, not owner, redo and its reasons), counter and rotation
 * value checked against what Redis holds. No daemon runs here. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "leadrouter/codec.h"
#include "leadrouter/commit.h"
#include "leadrouter/commit_contract.h"
#include "leadrouter/config.h"
#include "leadrouter/rules.h"

extern const char lr_commit_lua[];
extern const unsigned long lr_commit_lua_len;

TestSuite(commit, .init = h_setup, .fini = h_teardown, .timeout = 30);

#define CONSUMER "tc-1"

/* Two solar dealers in Iowa, round robin; c1 has a day cap of 3 and at
 * most 10 unconsumed leads, c2 neither. */
/* clang-format off */
#define CONF \
    "defaults = { timezone = \"UTC\"; };\n" \
    "niches = ( { name = \"solar\"; strategy = \"round_robin\"; } );\n" \
    "dealers = ( { id = \"c1\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; };\n" \
    "              contract = { caps = { day = 3; }; max_pending = 10; }; },\n" \
    "            { id = \"c2\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; } );\n"
/* clang-format on */

static struct cfg *cfg;
static struct rules_scratch *scratch;
static struct codec_lead *codec;
static int64_t *rr; /* the rotation as the test's "daemon" sees it */
static redisReply *replies[16]; /* of run(), freed by unload() */
static int n_replies;

static void load(void)
{
    char err[512];
    cr_assert_eq(cfg_load(h_config("stream", NULL, CONF), &cfg, err, sizeof err), 0, "%s", err);
    scratch = rules_scratch_new(cfg->rules);
    codec = codec_lead_new();
    rr = calloc(cfg->rules->n_rr_slots + 1, sizeof *rr);
    cr_assert(scratch && codec && rr);
    h_cmd("XGROUP CREATE %s:in %s 0 MKSTREAM", H_PREFIX, H_GROUP);
}

static void unload(void)
{
    for (int i = 0; i < n_replies; i++)
        freeReplyObject(replies[i]);
    n_replies = 0;
    free(rr);
    codec_lead_free(codec);
    rules_scratch_free(scratch);
    cfg_free(cfg);
}

/* n leads in the input stream, read by CONSUMER (so pending on it). */
struct sent {
    char ref[64];
    struct h_buf payload;
};
static void enqueue(struct sent *s, int n, const char *idfmt, int from)
{
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, idfmt, from + i);
        struct h_lead l = {.id = id, .niche = "solar", .state = "IA", .score = 60};
        s[i].payload = h_send(&l, s[i].ref, sizeof s[i].ref);
    }
    redisReply *r = h_cmd("XREADGROUP GROUP %s %s COUNT %d STREAMS %s:in >", H_GROUP, CONSUMER, n, H_PREFIX);
    cr_assert(r->type == REDIS_REPLY_ARRAY && r->element[0]->element[1]->elements == (size_t)n);
}

/* A batch of those leads, decided as the daemon does (rules_decide, then
 * rules_pick with the rotation moves); digest, when not NULL, is a dedup
 * digest every lead of the batch checks against now ("" = none). */
static void build(struct commit_args *a, const struct sent *s, int n, uint64_t seq, uint64_t prev,
                  const char *digest, const char *digest_now)
{
    memset(a, 0, sizeof *a);
    cr_assert_eq(commit_begin(a, cfg, COMMIT_STREAM, CONSUMER, H_PREFIX ":in", h_redis_time_ms()), 0);
    const struct rules_table *t = cfg->rules;
    int64_t *before = calloc(t->n_rr_slots + 1, sizeof *before);
    struct commit_rr *mv = calloc(t->n_rr_slots + 1, sizeof *mv);
    cr_assert(before && mv);
    for (int i = 0; i < n; i++) {
        char err[256];
        cr_assert_eq(codec_lead_decode(codec, (const char *)s[i].payload.p, s[i].payload.len, SIZE_MAX, err,
                                       sizeof err),
                     0, "%s", err);
        const struct lead *l = codec_lead_get(codec);
        struct rules_input in = {.now_ms = a->now_ms};
        struct rules_decision d;
        rules_decide(t, scratch, l, &in, &d);
        cr_assert_eq(d.reason, REASON_ASSIGNED);
        memcpy(before, rr, t->n_rr_slots * sizeof *rr);
        cr_assert_eq(rules_pick(t, &d, &in, l, rr), 1);
        uint32_t n_mv = 0;
        for (uint32_t k = 0; k < t->n_rr_slots; k++)
            if (rr[k] != before[k])
                mv[n_mv++] = (struct commit_rr){k, rr[k] - before[k]};
        struct commit_src src = {.ref = s[i].ref,
                                 .payload = (const char *)s[i].payload.p,
                                 .payload_len = s[i].payload.len,
                                 .attempt = 1};
        if (digest) {
            src.n_digests = 1;
            src.digest[0] = digest;
            src.digest_now[0] = digest_now;
        }
        cr_assert_eq(commit_add_route(a, cfg, &src, l, &d, mv, n_mv), 0);
    }
    cr_assert_eq(commit_end(a, seq, prev), 0);
    cr_assert_eq(commit_count(a), n);
    free(before);
    free(mv);
}

/* Runs the commit as the daemon sends it (EVAL of the embedded script). */
static redisReply *run(struct commit_args *a)
{
    a->argv[0] = "EVAL";
    a->len[0] = 4;
    a->argv[1] = lr_commit_lua;
    a->len[1] = lr_commit_lua_len;
    a->argv[2] = "0";
    a->len[2] = 1;
    redisReply *r = redisCommandArgv(h_redis(), (int)a->argc, a->argv, a->len);
    cr_assert_not_null(r, "no reply");
    cr_assert_lt(n_replies, 16);
    replies[n_replies++] = r;
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "script error: %s", r->str);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 4, "reply: {codes, why, counters, rotation}");
    cr_assert_eq(r->element[0]->type, REDIS_REPLY_STRING);
    cr_assert_eq(r->element[0]->len, (size_t)commit_count(a), "one code per lead");
    return r;
}

static const char *why(const redisReply *r)
{
    return r->element[1]->type == REDIS_REPLY_STRING ? r->element[1]->str : "";
}

static long long counter(const redisReply *r, size_t i)
{
    cr_assert(i < r->element[2]->elements, "counter %zu of %zu", i, r->element[2]->elements);
    return r->element[2]->element[i]->integer;
}

static void day_key(char *buf, size_t len, const char *dealer)
{
    time_t s = (time_t)(h_redis_time_ms() / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char day[16];
    strftime(day, sizeof day, "%Y%m%d", &tm);
    snprintf(buf, len, "%s:cap:%s:day:%s", H_PREFIX, dealer, day);
}

static long long get_int(const char *key)
{
    redisReply *r = h_cmd_any("GET %s", key);
    return r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
}

static void codes_are(const redisReply *r, char code, const char *what)
{
    for (size_t i = 0; i < r->element[0]->len; i++)
        cr_assert_eq(r->element[0]->str[i], code, "%s: code %zu is '%c', want '%c' (codes %s, why %s)", what, i,
                     r->element[0]->str[i], code, r->element[0]->str, why(r));
}

/* Done: every write in place, the counters and rotation the reply gives
 * are Redis's; the same commit sent again (a lost reply) is stale whole
 * and writes nothing. */
Test(commit, done_then_the_same_commit_again_is_stale)
{
    load();
    struct sent s[2];
    enqueue(s, 2, "CT-%d", 0);
    struct commit_args a;
    build(&a, s, 2, 1, 0, NULL, NULL);
    redisReply *r = run(&a);
    codes_are(r, LR_CODE_DONE, "a fresh batch");
    cr_assert_str_eq(why(r), "");
    /* Round robin: one lead each, c1 first (config order). */
    cr_assert_eq(h_int("LLEN %s:dealer:c1", H_PREFIX), 1);
    cr_assert_eq(h_int("LLEN %s:dealer:c2", H_PREFIX), 1);
    char k1[128];
    day_key(k1, sizeof k1, "c1");
    cr_assert_eq(get_int(k1), 1, "c1's day counter");
    cr_assert(h_int("TTL %s", k1) > 0, "a cap counter expires");
    /* counters: c1 (first seen) {day, queue}, then c2 {queue: -1, no max_pending} */
    cr_assert_eq(r->element[2]->elements, 3, "c1: day + queue; c2: queue");
    cr_assert_eq(counter(r, 0), 1, "c1 day after the batch");
    cr_assert_eq(counter(r, 1), 1, "c1 queue after the batch");
    cr_assert_eq(counter(r, 2), -1, "c2 keeps no queue count (max_pending 0)");
    /* rotation: one lead each nets to no move (smooth WRR): nothing to write */
    for (size_t i = 0; i < r->element[3]->elements; i++)
        cr_assert_eq(r->element[3]->element[i]->integer, 0, "rotation value %zu", i);
    cr_assert_eq(h_int("EXISTS %s:lead:CT-0 %s:lead:CT-1", H_PREFIX, H_PREFIX), 2, "records");
    cr_assert(h_int("TTL %s:lead:CT-0", H_PREFIX) > 0, "records expire");
    cr_assert_eq(h_int("XLEN %s:audit", H_PREFIX), 2, "one audit entry per lead");
    redisReply *pend = h_cmd("XPENDING %s:in %s", H_PREFIX, H_GROUP);
    cr_assert_eq(pend->element[0]->integer, 0, "acknowledged");
    cr_assert_eq(get_int(H_PREFIX ":seq:" CONSUMER), 1, "the consumer's last batch");
    char hour[16];
    time_t now = (time_t)(h_redis_time_ms() / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    redisReply *st = h_cmd_any("HGET %s:stats:%s dealer:c1:assigned", H_PREFIX, hour);
    cr_assert(st->type == REDIS_REPLY_STRING && atoll(st->str) == 1, "stats");

    /* Again: stale, nothing written twice. */
    r = run(&a);
    codes_are(r, LR_CODE_STALE, "the same commit again");
    cr_assert_str_eq(why(r), "fence");
    cr_assert_eq(h_int("LLEN %s:dealer:c1", H_PREFIX) + h_int("LLEN %s:dealer:c2", H_PREFIX), 2);
    cr_assert_eq(get_int(k1), 1);
    cr_assert_eq(h_int("XLEN %s:audit", H_PREFIX), 2);
    commit_args_free(&a);

    /* The next batch, decided after batch 1: one lead moves the rotation,
     * and the reply's values are the hash's. */
    struct sent t[1];
    enqueue(t, 1, "CT-%d", 2);
    build(&a, t, 1, 2, 1, NULL, NULL);
    r = run(&a);
    codes_are(r, LR_CODE_DONE, "the next batch");
    cr_assert_eq(h_int("LLEN %s:dealer:c1", H_PREFIX), 2, "round robin: c1 again");
    redisReply *keys = h_cmd("KEYS %s:rr:*", H_PREFIX);
    cr_assert_eq(keys->elements, 1, "one rotation hash: one niche, one tier");
    cr_assert(strncmp(keys->element[0]->str, H_PREFIX ":rr:solar:", strlen(H_PREFIX ":rr:solar:")) == 0,
              "<p>:rr:<niche>:<tier>: %s", keys->element[0]->str);
    redisReply *rot = r->element[3];
    cr_assert_eq(rot->elements, 2, "both dealers' rotation fields moved");
    redisReply *h = h_cmd("HVALS %s", keys->element[0]->str);
    cr_assert_eq(h->elements, 2);
    long long sum = 0;
    for (size_t i = 0; i < rot->elements; i++) {
        bool found = false;
        for (size_t j = 0; j < h->elements; j++)
            found |= atoll(h->element[j]->str) == rot->element[i]->integer;
        cr_assert(found, "rotation value %lld is in Redis", rot->element[i]->integer);
        cr_assert_neq(rot->element[i]->integer, 0);
        sum += rot->element[i]->integer;
    }
    cr_assert_eq(sum, 0, "smooth WRR: the moves sum to zero");
    cr_assert_eq(get_int(k1), 2, "c1's day counter");
    cr_assert_eq(get_int(H_PREFIX ":seq:" CONSUMER), 2);
    commit_args_free(&a);
    unload();
}

/* Another consumer took an entry over: not owner for it, the rest of the
 * batch redone, nothing written. */
Test(commit, an_entry_taken_over_is_not_owner_and_the_batch_writes_nothing)
{
    load();
    struct sent s[3];
    enqueue(s, 3, "NO-%d", 0);
    h_cmd("XCLAIM %s:in %s other 0 %s JUSTID", H_PREFIX, H_GROUP, s[1].ref);
    struct commit_args a;
    build(&a, s, 3, 1, 0, NULL, NULL);
    redisReply *r = run(&a);
    cr_assert_eq(r->element[0]->str[0], LR_CODE_REDO, "codes %s", r->element[0]->str);
    cr_assert_eq(r->element[0]->str[1], LR_CODE_NOT_OWNER, "codes %s", r->element[0]->str);
    cr_assert_eq(r->element[0]->str[2], LR_CODE_REDO, "codes %s", r->element[0]->str);
    cr_assert_str_eq(why(r), "fence");
    cr_assert_eq(h_int("LLEN %s:dealer:c1", H_PREFIX) + h_int("LLEN %s:dealer:c2", H_PREFIX), 0);
    cr_assert_eq(h_int("EXISTS %s:lead:NO-0", H_PREFIX), 0);
    cr_assert_eq(h_int("EXISTS %s:audit", H_PREFIX), 0);
    cr_assert_eq(h_int("EXISTS %s:seq:%s", H_PREFIX, CONSUMER), 0);
    commit_args_free(&a);
    unload();
}

/* Each refusal: codes all redo, why names it, nothing written, and the
 * counters are Redis's as they are (what the daemon learns). */
static void refused(struct commit_args *a, const char *want_why, long long day_c1, long long queue_c1)
{
    redisReply *r = run(a);
    codes_are(r, LR_CODE_REDO, want_why);
    cr_assert(strncmp(why(r), want_why, strlen(want_why)) == 0, "why: %s, want %s", why(r), want_why);
    cr_assert_eq(counter(r, 0), day_c1, "c1's day counter as Redis holds it");
    cr_assert_eq(counter(r, 1), queue_c1, "c1's queue length as Redis holds it");
    cr_assert_eq(h_int("EXISTS %s:audit", H_PREFIX), 0, "%s: no audit", want_why);
    cr_assert_eq(h_int("LLEN %s:dealer:c2", H_PREFIX), 0, "%s: nothing pushed", want_why);
    redisReply *pend = h_cmd("XPENDING %s:in %s", H_PREFIX, H_GROUP);
    cr_assert_eq(pend->element[0]->integer, commit_count(a), "%s: nothing acknowledged", want_why);
}

Test(commit, a_full_cap_is_refused_with_the_counter)
{
    load();
    struct sent s[2];
    enqueue(s, 2, "CAP-%d", 0);
    char k1[128];
    day_key(k1, sizeof k1, "c1");
    h_cmd("SET %s 3", k1); /* another daemon used c1's day */
    struct commit_args a;
    build(&a, s, 2, 1, 0, NULL, NULL);
    refused(&a, "cap ", 3, 0);
    cr_assert_eq(get_int(k1), 3, "the counter is not moved");
    commit_args_free(&a);
    unload();
}

Test(commit, a_full_queue_is_refused_with_its_length)
{
    load();
    struct sent s[2];
    enqueue(s, 2, "Q-%d", 0);
    for (int i = 0; i < 10; i++)
        h_cmd("RPUSH %s:dealer:c1 x", H_PREFIX);
    struct commit_args a;
    build(&a, s, 2, 1, 0, NULL, NULL);
    refused(&a, "queue ", 0, 10);
    commit_args_free(&a);
    unload();
}

Test(commit, a_batch_decided_after_another_one_is_refused_out_of_order)
{
    load();
    struct sent s[2];
    enqueue(s, 2, "OR-%d", 0);
    struct commit_args a;
    build(&a, s, 2, 6, 5, NULL, NULL); /* batch 5 was never committed */
    refused(&a, "order", 0, 0);
    commit_args_free(&a);
    unload();
}

Test(commit, an_id_another_daemon_routed_meanwhile_is_refused)
{
    load();
    struct sent s[2];
    enqueue(s, 2, "DI-%d", 0);
    h_cmd("SET %s:lead:DI-1 elsewhere", H_PREFIX);
    struct commit_args a;
    build(&a, s, 2, 1, 0, NULL, NULL);
    refused(&a, "duplicate_id", 0, 0);
    commit_args_free(&a);
    unload();
}

/* Dedup digests: the batch was decided with the digest unseen; another
 * daemon wrote it meanwhile: refused. Unchanged: written once, holding the
 * first pick and the batch's time. */
Test(commit, a_digest_written_meanwhile_is_refused_else_written)
{
    load();
    static const char dg[] = "0123456789abcdef0123456789abcdef01234567";
    char cur[256], prev[256];
    int64_t exp;
    int64_t now = h_redis_time_ms();
    commit_seen_keys(cfg, now, cur, prev, sizeof cur, &exp);
    struct sent s[1];
    enqueue(s, 1, "DG-%d", 0);
    struct commit_args a;
    h_cmd("HSET %s %s other\t1", cur, dg);
    build(&a, s, 1, 1, 0, dg, "");
    refused(&a, "dedup", 0, 0);
    commit_args_free(&a);

    h_cmd("DEL %s", cur);
    /* The rotation as the daemon learns it from the refusal: Redis's. */
    memset(rr, 0, cfg->rules->n_rr_slots * sizeof *rr);
    build(&a, s, 1, 1, 0, dg, "");
    redisReply *r = run(&a);
    codes_are(r, LR_CODE_DONE, "the digest unchanged");
    redisReply *v = h_cmd("HGET %s %s", cur, dg);
    char dealer[64];
    int64_t ms;
    cr_assert(commit_seen_parse(v->str, v->len, dealer, sizeof dealer, &ms), "a digest value: %s", v->str);
    cr_assert_str_eq(dealer, "c1");
    cr_assert_eq(ms, a.now_ms);
    cr_assert(h_int("TTL %s", cur) > 0, "the bucket expires");
    commit_args_free(&a);
    unload();
}

/* The contract's own bookkeeping: the header names every position the
 * script reads, and the codes are distinct characters. */
Test(commit, the_contract_is_consistent)
{
    static const char codes[] = {LR_CODE_DONE, LR_CODE_STALE, LR_CODE_NOT_OWNER, LR_CODE_REDO};
    for (size_t i = 0; i < sizeof codes; i++)
        for (size_t j = i + 1; j < sizeof codes; j++)
            cr_assert_neq(codes[i], codes[j]);
    cr_assert_eq(LR_ARG_MODE, 1, "ARGV is 1-based: the first header argument is ARGV[1]");
    cr_assert_eq(LR_ARG_END_, LR_ARG_N_DEAD + 1);
    cr_assert(strstr(lr_commit_lua, "generated from include/leadrouter/commit_contract.h") != NULL,
                     "the embedded script opens with the generated constants");
}
