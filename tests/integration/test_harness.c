/* test_harness.c - the harness checked on its own, without the daemon: the
 * Redis fixture starts and stops a private server, queue readers decode what
 * the SPEC describes, and the oracle does catch lost, duplicated and
 * unexpected leads (an oracle that cannot fail would prove nothing). The
 * "daemon" here is the test writing outcomes into Redis by hand. */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <msgpack.h>

#include "harness.h"

TestSuite(harness, .init = h_setup, .fini = h_teardown, .timeout = 30);

/* An assignment entry as SPEC section 3 describes it, with lead = bytes. */
static void push_assignment(const char *dealer, const char *lead_id, struct h_buf lead, int attempt)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    const char *kv[][2] = {
        {"lead_id", lead_id}, {"dealer", dealer}, {"niche", "solar"}, {"grade", "B"}, {"rule", "tier:1"}};
    for (int i = 0; i < 5; i++) {
        msgpack_pack_str_with_body(&pk, kv[i][0], strlen(kv[i][0]));
        msgpack_pack_str_with_body(&pk, kv[i][1], strlen(kv[i][1]));
    }
    msgpack_pack_str_with_body(&pk, "score", 5);
    msgpack_pack_int(&pk, 60);
    msgpack_pack_str_with_body(&pk, "routed_at", 9);
    msgpack_pack_int64(&pk, h_now_ms());
    msgpack_pack_str_with_body(&pk, "attempt", 7);
    msgpack_pack_int(&pk, attempt);
    msgpack_pack_str_with_body(&pk, "lead", 4);
    msgpack_sbuffer_write(&sb, (const char *)lead.p, lead.len);
    h_int("RPUSH %s:dealer:%s %b", H_PREFIX, dealer, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

static void push_dead(const void *payload, size_t len, const char *error, bool as_bin)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "error", 5);
    msgpack_pack_str_with_body(&pk, error, strlen(error));
    msgpack_pack_str_with_body(&pk, "payload", 7);
    if (as_bin)
        msgpack_pack_bin_with_body(&pk, payload, len);
    else
        msgpack_pack_str_with_body(&pk, payload, len);
    msgpack_pack_str_with_body(&pk, "at", 2);
    msgpack_pack_int64(&pk, h_now_ms());
    msgpack_pack_str_with_body(&pk, "ref", 3);
    msgpack_pack_str_with_body(&pk, "1-0", 3);
    h_int("RPUSH %s:dead %b", H_PREFIX, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

Test(harness, redis_is_private_and_stopped_by_pid)
{
    pid_t pid = h_redis_pid();
    char dir[512];
    snprintf(dir, sizeof dir, "%s", h_dir());
    cr_assert_gt(pid, 0);
    cr_assert_gt(h_redis_port(), 1024);
    redisReply *r = h_cmd("CONFIG GET dir");
    cr_assert_str_eq(r->element[1]->str, dir, "the server runs in the test's temp dir");
    r = h_cmd("CONFIG GET bind");
    cr_assert_str_eq(r->element[1]->str, "127.0.0.1", "loopback only");
    r = h_cmd("CONFIG GET save");
    cr_assert_str_eq(r->element[1]->str, "", "no RDB snapshots");
    cr_assert_eq(h_int("DBSIZE"), 0);
    h_teardown();
    cr_assert_eq(kill(pid, 0), -1, "redis-server %d still runs after teardown", (int)pid);
    struct stat st;
    cr_assert_eq(stat(dir, &st), -1, "temp dir %s still exists", dir);
}

Test(harness, oracle_passes_when_each_lead_is_in_one_place)
{
    h_config("stream", NULL, "niches = ( { name = \"solar\"; } );");
    struct h_buf a = h_send(&(struct h_lead){.id = "ok-a", .niche = "solar", .score = 60}, NULL, 0);
    h_set_max_buyers(2);
    struct h_buf b = h_send(&(struct h_lead){.id = "ok-b", .niche = "solar", .score = 60}, NULL, 0);
    h_set_max_buyers(1);
    const unsigned char junk[] = {0x92, 0x01, 0x02};
    h_send_raw(junk, sizeof junk, NULL, NULL, 0);
    push_assignment("d1", "ok-a", a, 1);
    push_assignment("d1", "ok-b", b, 1);
    push_assignment("d2", "ok-b", b, 1);
    push_dead(junk, sizeof junk, "not_a_map: top level is an array", true);
    struct h_assign *as;
    cr_assert_eq(h_read_dealer("d2", &as), 1);
    cr_assert_str_eq(as[0].lead_id, "ok-b");
    cr_assert(h_buf_eq(as[0].lead, b.p, b.len), "the lead value is read back byte for byte");
    struct h_dead *dead;
    cr_assert_eq(h_read_dead(&dead), 1);
    cr_assert(dead[0].payload_is_bin, "a bin payload is seen as bin");
    cr_assert(h_buf_eq(dead[0].payload, junk, sizeof junk));
    struct h_report r;
    h_oracle_check(&r);
    cr_assert_eq(r.sent, 3);
    cr_assert_eq(r.in_dealers, 2);
    cr_assert_eq(r.assignments, 3);
    cr_assert_eq(r.dead, 1);
    cr_assert_eq(r.lost + r.duplicated + r.unexpected, 0, "%s", r.detail);
}

Test(harness, oracle_counts_lost_duplicated_and_unexpected)
{
    h_config("stream", NULL, "niches = ( { name = \"solar\"; } );");
    struct h_buf a = h_send(&(struct h_lead){.id = "lost-1", .niche = "solar"}, NULL, 0);
    struct h_buf b = h_send(&(struct h_lead){.id = "twice-1", .niche = "solar"}, NULL, 0);
    struct h_buf c = h_send(&(struct h_lead){.id = "samedealer-1", .niche = "solar"}, NULL, 0);
    (void)a;
    push_assignment("d1", "twice-1", b, 1);
    push_assignment("d2", "twice-1", b, 1); /* max_buyers 1: one too many */
    push_assignment("d1", "samedealer-1", c, 1);
    push_assignment("d1", "samedealer-1", c, 2);
    push_assignment("d3", "never-sent", c, 1);
    push_dead("zz", 2, "truncated: x", false);
    struct h_dead *dead;
    cr_assert_eq(h_read_dead(&dead), 1);
    cr_assert(!dead[0].payload_is_bin, "a str payload is not taken for bin");
    struct h_report r;
    h_oracle_check(&r);
    cr_assert_eq(r.lost, 1, "lost-1 is nowhere: %s", r.detail);
    /* twice-1 over max_buyers (1); samedealer-1 over max_buyers and at d1 twice (2) */
    cr_assert_eq(r.duplicated, 3, "%s", r.detail);
    cr_assert_eq(r.unexpected, 2, "an assignment and a dead entry nobody sent: %s", r.detail);
    h_oracle_allow_extra_dead(1);
    h_oracle_check(&r);
    cr_assert_eq(r.unexpected, 1, "%s", r.detail);
}

Test(harness, oracle_sees_a_lead_unassigned_and_assigned)
{
    h_config("stream", NULL, "niches = ( { name = \"solar\"; } );");
    struct h_buf a = h_send(&(struct h_lead){.id = "both-1", .niche = "solar"}, NULL, 0);
    push_assignment("d1", "both-1", a, 1);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    msgpack_pack_str_with_body(&pk, "lead_id", 7);
    msgpack_pack_str_with_body(&pk, "both-1", 6);
    msgpack_pack_str_with_body(&pk, "reason", 6);
    msgpack_pack_str_with_body(&pk, "all_capped", 10);
    msgpack_pack_str_with_body(&pk, "niche", 5);
    msgpack_pack_str_with_body(&pk, "solar", 5);
    msgpack_pack_str_with_body(&pk, "lead", 4);
    msgpack_sbuffer_write(&sb, (const char *)a.p, a.len);
    msgpack_pack_str_with_body(&pk, "at", 2);
    msgpack_pack_int64(&pk, h_now_ms());
    h_int("RPUSH %s:unassigned %b", H_PREFIX, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    const struct h_unassigned *u = h_find_unassigned("both-1");
    cr_assert_not_null(u);
    cr_assert_str_eq(u->reason, "all_capped");
    struct h_report r;
    h_oracle_check(&r);
    cr_assert_eq(r.duplicated, 1, "%s", r.detail);
}

Test(harness, drained_follows_the_consumer_group)
{
    h_config("stream", NULL, "niches = ( { name = \"solar\"; } );");
    cr_assert(h_drained(), "nothing sent: drained");
    h_send(&(struct h_lead){.id = "g-1", .niche = "solar"}, NULL, 0);
    cr_assert(!h_drained(), "no group yet: not drained");
    h_cmd("XGROUP CREATE %s:in %s 0", H_PREFIX, H_GROUP);
    cr_assert(!h_drained(), "not delivered yet");
    redisReply *r = h_cmd("XREADGROUP GROUP %s c1 COUNT 10 STREAMS %s:in >", H_GROUP, H_PREFIX);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    const char *id = r->element[0]->element[1]->element[0]->element[0]->str;
    cr_assert(!h_drained(), "delivered but pending");
    h_int("XACK %s:in %s %s", H_PREFIX, H_GROUP, id);
    cr_assert(h_drained(), "delivered and acked");
}
