/* test_admin.c - the admin socket without Redis: command parsing and the
 * generated help, reply framing, runtime controls across reloads, explain
 * (JSON and msgpack, through the daemon's decoder), the why lookup driven
 * with canned Redis replies, and the socket itself (file mode, stale
 * files, line and output limits, half-close, max clients). Also leadctl's
 * unframing and explain line. */
#include <criterion/criterion.h>

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <msgpack.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "leadrouter/admin.h"
#include "leadrouter/codec.h"
#include "leadrouter/config.h"
#include "leadrouter/stats.h"
#include "rtest.h"

/* clang-format off */
#define CONF_A \
    "defaults = { timezone = \"UTC\"; };\n" \
    "niches = ( { name = \"solar\"; sources = [ \"sunquote.example\" ]; strategy = \"weighted\"; },\n" \
    "           { name = \"roofing\"; strategy = \"nearest\"; } );\n" \
    "dealers = ( { id = \"d1\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { weight = 3; caps = { day = 5; }; }; },\n" \
    "            { id = \"d2\"; niches = [ \"solar\", \"roofing\" ]; territory = { states = [ \"IA\" ]; }; contract = { min_score = 50; }; } );\n"
/* The same dealers in another order, plus one: indexes move. */
#define CONF_B \
    "defaults = { timezone = \"UTC\"; };\n" \
    "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n" \
    "dealers = ( { id = \"d0\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; },\n" \
    "            { id = \"d2\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { weight = 2; }; },\n" \
    "            { id = \"d1\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { weight = 4; }; } );\n"
/* Only d2. */
#define DEFAULTS_ONLY_D2 \
    "defaults = { timezone = \"UTC\"; };\n" \
    "niches = ( { name = \"solar\"; } );\n" \
    "dealers = ( { id = \"d2\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; } );\n"
/* clang-format on */

/* ---- a daemon-like environment ------------------------------------- */

static struct {
    struct cfg *cfg;
    struct stats *stats;
    struct admin_controls *ctl;
    struct event_base *base;
    struct admin *a;
    int reloads, changed;
    char dir[48];
    char path[96];
} E;

static const struct cfg *env_config(void *ctx)
{
    (void)ctx;
    return E.cfg;
}

static int env_reload(void *ctx, uint64_t *gen, char *err, size_t errlen)
{
    (void)ctx;
    if (E.reloads++ == 0) {
        snprintf(err, errlen, "/x/leadrouter.conf:3: unknown niche 'solr'");
        return -1;
    }
    struct cfg *n = rt_cfg(CONF_B);
    cr_assert_eq(admin_controls_apply(E.ctl, n->rules), 0);
    cfg_free(E.cfg);
    E.cfg = n;
    *gen = 2;
    return 0;
}

static void env_changed(void *ctx)
{
    (void)ctx;
    E.changed++;
}

static void env_up(const char *path, mode_t mode)
{
    E.cfg = rt_cfg(CONF_A);
    E.stats = stats_new();
    E.ctl = admin_controls_new();
    E.base = event_base_new();
    cr_assert(E.stats && E.ctl && E.base);
    cr_assert_eq(admin_controls_apply(E.ctl, E.cfg->rules), 0);
    struct admin_env env = {.stats = E.stats,
                            .ctl = E.ctl,
                            .config = env_config,
                            .reload = env_reload,
                            .controls_changed = env_changed};
    char err[256];
    E.a = admin_new(E.base, path, mode, &env, err, sizeof err);
    cr_assert_not_null(E.a, "admin_new: %s", err);
}

static void setup_exec(void)
{
    memset(&E, 0, sizeof E);
    env_up(NULL, 0);
}

static void setup_socket(void)
{
    memset(&E, 0, sizeof E);
    snprintf(E.dir, sizeof E.dir, "/tmp/lr-admin-XXXXXX");
    cr_assert_not_null(mkdtemp(E.dir));
    snprintf(E.path, sizeof E.path, "%s/admin.sock", E.dir);
}

static void teardown(void)
{
    admin_free(E.a);
    if (E.base)
        event_base_free(E.base);
    admin_controls_free(E.ctl);
    stats_free(E.stats);
    cfg_free(E.cfg);
    if (*E.path)
        unlink(E.path);
    if (*E.dir)
        rmdir(E.dir);
}

TestSuite(admin, .init = setup_exec, .fini = teardown, .timeout = 20);
TestSuite(admin_socket, .init = setup_socket, .fini = teardown, .timeout = 30);

/* admin_exec, kept until teardown is not needed: the caller frees. */
static char *run(const char *line)
{
    char *r = admin_exec(E.a, line, strlen(line));
    cr_assert_not_null(r);
    size_t n = strlen(r);
    if (n) {
        cr_assert(n >= 2 && strcmp(r + n - 2, ".\n") == 0, "reply not terminated: [%s]", r);
        cr_assert(n == 2 || strcmp(r + n - 3, "\n.\n") == 0, "terminator not on its own line: [%s]", r);
    }
    return r;
}

/* The reply without its framing (leadctl's unframing). */
static char *body_of(const char *line, bool *is_err)
{
    char *r = run(line), *body;
    size_t used;
    cr_assert_eq(lc_unframe(r, strlen(r), &body, is_err, &used), 1, "no complete reply: %s", r);
    cr_assert_eq(used, strlen(r));
    free(r);
    return body;
}

static void expect_err(const char *line, const char *needle)
{
    bool is_err;
    char *b = body_of(line, &is_err);
    cr_assert(is_err, "`%s` should fail, got:\n%s", line, b);
    cr_assert_not_null(strstr(b, needle), "`%s`: error [%s] lacks [%s]", line, b, needle);
    free(b);
}

static char *expect_ok(const char *line)
{
    bool is_err;
    char *b = body_of(line, &is_err);
    cr_assert(!is_err, "`%s` failed: %s", line, b);
    return b;
}

/* ---- parsing -------------------------------------------------------- */

Test(admin, split_words)
{
    const char *line = "  weight\td1   5 ";
    char buf[64], *w[4];
    const char *rest;
    int n = admin_split(line, strlen(line), buf, w, 4, &rest);
    cr_assert_eq(n, 3);
    cr_assert_str_eq(w[0], "weight");
    cr_assert_str_eq(w[1], "d1");
    cr_assert_str_eq(w[2], "5");
    cr_assert_str_eq(rest, "d1   5 ");
    cr_assert_eq(admin_split("a b c d e", 9, buf, w, 4, &rest), -1, "more words than allowed");
    cr_assert_eq(admin_split("   ", 3, buf, w, 4, &rest), 0);
}

Test(admin, help_lists_every_command_from_the_table)
{
    char *b = expect_ok("help");
    const char *cmds[] = {"help",
                          "stats",
                          "dealers",
                          "niches",
                          "sources",
                          "pause DEALER",
                          "resume DEALER",
                          "weight DEALER N|default",
                          "reload",
                          "explain LEAD-JSON",
                          "explain-msgpack HEX",
                          "why LEAD_ID",
                          "metrics",
                          "quit",
                          "json COMMAND"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        cr_assert_not_null(strstr(b, cmds[i]), "help lacks %s:\n%s", cmds[i], b);
    free(b);
    b = expect_ok("json help");
    json_error_t je;
    json_t *j = json_loads(b, 0, &je);
    cr_assert_not_null(j, "%s", je.text);
    cr_assert_eq(json_array_size(json_object_get(j, "commands")), 14);
    json_decref(j);
    free(b);
}

Test(admin, errors_are_one_err_line)
{
    expect_err("bogus", "unknown command 'bogus'");
    expect_err("stats extra", "usage: stats");
    expect_err("pause", "usage: pause DEALER");
    expect_err("weight d1", "usage: weight DEALER N|default");
    expect_err("json", "usage: json COMMAND");
    expect_err("pause a b c d e f g h i j", "usage: pause DEALER");
    expect_err("bo\x01gus\xff", "unknown command 'bo?gus?'");
    char *r = admin_exec(E.a, "pause d1\0x", 10);
    cr_assert_str_eq(r, "ERR the line holds a NUL byte\n.\n");
    cr_assert_eq(admin_controls_paused(E.ctl)[0], 0);
    free(r);
    r = run("nope");
    cr_assert_str_eq(r, "ERR unknown command 'nope' (try help)\n.\n");
    free(r);
    r = run("   \r");
    cr_assert_str_eq(r, "", "an empty line gets no reply");
    free(r);
}

Test(admin, crlf_and_blanks)
{
    char *b = expect_ok("  stats \r");
    cr_assert_not_null(strstr(b, "received 0"));
    free(b);
}

Test(admin, reply_lines_starting_with_a_dot_are_stuffed)
{
    stats_assigned(E.stats, "d1", "solar", ".hidden");
    stats_assigned(E.stats, "d1", "solar", ".");
    char *r = run("sources");
    cr_assert_not_null(strstr(r, "\n..hidden "), "%s", r);
    cr_assert_not_null(strstr(r, "\n.. "), "a source named '.' must not end the reply:\n%s", r);
    free(r);
    bool is_err;
    char *b = body_of("sources", &is_err);
    cr_assert_not_null(strstr(b, "\n.hidden "), "leadctl undoes the stuffing:\n%s", b);
    free(b);
}

/* ---- controls ------------------------------------------------------- */

Test(admin, pause_resume_weight)
{
    const uint8_t *p = admin_controls_paused(E.ctl);
    const uint32_t *w = admin_controls_weight(E.ctl);
    cr_assert_eq(w[0], 3, "the config's weight until ops set one");
    char *b = expect_ok("pause d1");
    cr_assert_str_eq(b, "OK dealer d1 paused, weight 3\n");
    free(b);
    cr_assert_eq(p[0], 1);
    cr_assert_eq(E.changed, 1, "the daemon is told, to hand the arrays to rq");
    b = expect_ok("weight d2 7");
    cr_assert_str_eq(b, "OK dealer d2 active, weight 7 (set by ops)\n");
    free(b);
    cr_assert_eq(w[1], 7);
    b = expect_ok("json resume d1");
    json_t *j = json_loads(b, 0, NULL);
    cr_assert_not_null(j);
    cr_assert(json_is_false(json_object_get(j, "paused")));
    json_decref(j);
    free(b);
    cr_assert_eq(p[0], 0);
    b = expect_ok("weight d2 default");
    free(b);
    cr_assert_eq(w[1], 1, "back to the config's weight");
    expect_err("pause nobody", "unknown dealer 'nobody'");
    expect_err("weight d1 0", "weight must be an integer 1-1000000");
    expect_err("weight d1 1000001", "weight must be");
    expect_err("weight d1 5x", "weight must be");
    expect_err("weight d1 -3", "weight must be");
    expect_err("weight d1 99999999999999999999", "weight must be");
    cr_assert_eq(w[0], 3, "refused weights change nothing");
}

Test(admin, controls_survive_a_reload_by_dealer_id)
{
    free(expect_ok("pause d2"));
    free(expect_ok("weight d1 9"));
    expect_err("reload", "/x/leadrouter.conf:3: unknown niche 'solr'");
    cr_assert_eq(admin_controls_paused(E.ctl)[1], 1, "a failed reload changes nothing");
    char *b = expect_ok("reload");
    cr_assert_str_eq(b, "OK generation 2\n");
    free(b);
    /* CONF_B: d0, d2, d1. */
    const uint8_t *p = admin_controls_paused(E.ctl);
    const uint32_t *w = admin_controls_weight(E.ctl);
    cr_assert_eq(p[0], 0);
    cr_assert_eq(p[1], 1, "d2 is still paused at its new index");
    cr_assert_eq(p[2], 0);
    cr_assert_eq(w[0], 1);
    cr_assert_eq(w[1], 2, "d2: the new config's weight");
    cr_assert_eq(w[2], 9, "d1: the ops weight, not the new config's 4");
    cr_assert(admin_controls_weight_overridden(E.ctl, 2));
    cr_assert(!admin_controls_weight_overridden(E.ctl, 1));
}

Test(admin, controls_of_a_removed_dealer_come_back_with_it)
{
    struct admin_controls *c = admin_controls_new();
    struct cfg *a = rt_cfg(CONF_A), *b = rt_cfg(DEFAULTS_ONLY_D2);
    char err[128];
    cr_assert_eq(admin_controls_apply(c, a->rules), 0);
    cr_assert_eq(admin_controls_pause(c, "d1", true, err, sizeof err), 0);
    cr_assert_eq(admin_controls_apply(c, b->rules), 0);
    cr_assert_eq(admin_controls_pause(c, "d1", false, err, sizeof err), -1, "d1 is not in this table");
    cr_assert_eq(admin_controls_apply(c, a->rules), 0);
    cr_assert_eq(admin_controls_paused(c)[0], 1);
    admin_controls_free(c);
    cfg_free(a);
    cfg_free(b);
}

/* ---- reading ---------------------------------------------------------- */

/* Whether a table row reads `cells` (one space between cells). */
static bool has_row(const char *table, const char *cells)
{
    char *norm = malloc(strlen(table) + 1), *o = norm;
    for (const char *p = table; *p; p++)
        if (!(*p == ' ' && o > norm && o[-1] == ' '))
            *o++ = *p;
    *o = 0;
    char want[256];
    snprintf(want, sizeof want, "\n%s", cells);
    bool ok = strstr(norm, want) != NULL || strncmp(norm, cells, strlen(cells)) == 0;
    free(norm);
    return ok;
}

Test(admin, stats_niches_sources_dealers)
{
    stats_received(E.stats, 4);
    stats_assigned(E.stats, "d1", "solar", "web");
    stats_assigned(E.stats, "d1", "solar", "web");
    stats_assigned(E.stats, "d2", "solar", "web");
    stats_assigned(E.stats, "dX", "oldniche", "web");
    stats_unassigned(E.stats, "all_capped", "roofing", "");
    char *b = expect_ok("stats");
    cr_assert_not_null(strstr(b, "received 4\n"));
    cr_assert_not_null(strstr(b, "assigned 4\n"));
    free(b);
    b = expect_ok("niches");
    cr_assert_not_null(strstr(b, "NICHE"));
    cr_assert(has_row(b, "solar weighted 2 3 0\n"), "%s", b);
    cr_assert(has_row(b, "roofing nearest 1 0 1\n"), "%s", b);
    cr_assert(has_row(b, "oldniche (removed) - 1 0\n"), "%s", b);
    free(b);
    b = expect_ok("sources");
    cr_assert(has_row(b, "(none) 0 1\n"), "%s", b);
    cr_assert(has_row(b, "web 4 0\n"), "%s", b);
    free(b);
    /* Without Redis the cap counters are "-"; the ledger still shows:
     * solar tier 1: d1 weight 3, d2 weight 1 -> 75% / 25%; actual 2/3, 1/3;
     * roofing is nearest: not weight-based. */
    b = expect_ok("dealers");
    cr_assert(has_row(b, "d1 no 3 - - - -/5/-/- 2 solar:75.0%/66.7%\n"), "%s", b);
    cr_assert_not_null(strstr(b, "solar:25.0%/33.3%,roofing:-/-"), "%s", b);
    free(b);
    b = expect_ok("json dealers");
    json_t *j = json_loads(b, 0, NULL);
    cr_assert_not_null(j, "%s", b);
    json_t *d1 = json_array_get(j, 0);
    cr_assert_str_eq(json_string_value(json_object_get(d1, "dealer")), "d1");
    cr_assert(json_is_null(json_object_get(d1, "assigned")), "no Redis: no cap counters");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(d1, "caps"), "day")), 5);
    json_t *sh = json_array_get(json_object_get(d1, "shares"), 0);
    cr_assert_float_eq(json_real_value(json_object_get(sh, "entitled")), 0.75, 1e-9);
    cr_assert_float_eq(json_real_value(json_object_get(sh, "actual")), 2.0 / 3, 1e-9);
    json_decref(j);
    free(b);
    free(expect_ok("pause d1"));
    b = expect_ok("dealers");
    cr_assert_not_null(strstr(b, "solar:0.0%/66.7%"), "a paused dealer is entitled to nothing:\n%s", b);
    cr_assert_not_null(strstr(b, "solar:100.0%/33.3%"), "%s", b);
    free(b);
}

Test(admin, metrics_and_why_without_redis)
{
    char *b = expect_ok("metrics");
    cr_assert_not_null(strstr(b, "# TYPE leadrouter_leads_received_total counter\n"));
    free(b);
    expect_err("why L1", "why needs Redis");
    expect_err("why bad/id", "why needs Redis");
}

/* ---- explain ------------------------------------------------------------ */

Test(admin, explain_json_step_by_step)
{
    char *b =
        expect_ok("explain {\"id\":\"X1\",\"source\":\"SunQuote.example\",\"state\":\"IA\",\"score\":40}");
    cr_assert_not_null(strstr(b, "empty state"), "it says the state it assumed:\n%s", b);
    cr_assert_not_null(strstr(b, "1. niche: solar (by source)"), "%s", b);
    cr_assert_not_null(strstr(b, "2. score: 40 (given), grade C"), "%s", b);
    cr_assert_not_null(strstr(b, "filtered:min_score (needs 50)"), "%s", b);
    cr_assert_not_null(strstr(b, "4. assigned to: d1 (rule tier:1)"), "%s", b);
    free(b);
    free(expect_ok("pause d1"));
    b = expect_ok("explain {\"id\":\"X1\",\"niche\":\"solar\",\"state\":\"IA\",\"score\":40}");
    cr_assert_not_null(strstr(b, "4. unassigned: all_closed"), "a paused dealer counts as closed:\n%s", b);
    cr_assert_not_null(strstr(b, "runtime: d1 paused"), "%s", b);
    free(b);
    /* Nothing was committed: the stats did not move. */
    cr_assert_eq(stats_dealer_assigned(E.stats, "d1"), 0);
}

Test(admin, explain_json_document)
{
    char *b = expect_ok("json explain {\"id\":\"X2\",\"niche\":\"solar\",\"state\":\"IA\",\"score\":90}");
    json_error_t je;
    json_t *j = json_loads(b, 0, &je);
    cr_assert_not_null(j, "%s: %s", je.text, b);
    cr_assert_str_eq(json_string_value(json_object_get(j, "niche")), "solar");
    cr_assert_str_eq(json_string_value(json_object_get(j, "grade")), "A");
    cr_assert_str_eq(json_string_value(json_object_get(j, "outcome")), "assigned");
    cr_assert_eq(json_array_size(json_object_get(j, "dealers")), 2);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "picked"), 0), "dealer")), "d1");
    json_decref(j);
    free(b);
}

Test(admin, explain_refuses_what_the_decoder_refuses)
{
    expect_err("explain {\"id\":\"X1\",\"state\":5}", "dead letter: bad_type");
    expect_err("explain {\"niche\":\"solar\"}", "dead letter: missing_id");
    expect_err("explain {\"id\":\"bad id\"}", "dead letter: invalid_id");
    expect_err("explain [1,2]", "dead letter: not_a_map");
    expect_err("explain {\"id\":\"X\",\"id\":\"Y\"}", "bad JSON");
    expect_err("explain {\"id\":", "bad JSON");
    expect_err("explain", "usage: explain LEAD-JSON");
    expect_err("explain {\"id\":\"X\",\"score\":101}", "dead letter: out_of_range");
    char deep[400] = "explain {\"id\":\"X\",\"fields\":";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    for (int i = 0; i < 70; i++)
        strcat(deep, "]");
    strcat(deep, "}");
    expect_err(deep, "too_complex");
}

static char *hex_of(const char *p, size_t n)
{
    char *h = malloc(n * 2 + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", (unsigned char)p[i]);
    return h;
}

Test(admin, explain_msgpack_is_the_same_path)
{
    const char *json =
        "{\"id\":\"M1\",\"niche\":\"solar\",\"state\":\"IA\",\"score\":70,\"fields\":{\"x\":true}}";
    char *mp, err[256];
    size_t mplen;
    cr_assert_eq(admin_json_to_msgpack(json, strlen(json), &mp, &mplen, err, sizeof err), 0, "%s", err);
    /* The daemon's decoder reads what the conversion made. */
    struct codec_lead *cl = codec_lead_new();
    cr_assert_eq(codec_lead_decode(cl, mp, mplen, 65536, err, sizeof err), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_assert(lr_str_eq(l->id, "M1") && lr_str_eq(l->state, "IA") && l->has_score && l->score == 70);
    const struct lead_field *f = lead_field_get(l, "x", 1);
    cr_assert(f && f->v.type == LEAD_V_BOOL && f->v.b);
    codec_lead_free(cl);
    char *hex = hex_of(mp, mplen), line[512], jline[600];
    snprintf(line, sizeof line, "explain-msgpack %s", hex);
    snprintf(jline, sizeof jline, "explain %s", json);
    char *a = expect_ok(line), *b = expect_ok(jline);
    cr_assert_str_eq(a, b, "msgpack and JSON give the same explanation");
    free(a);
    free(b);
    expect_err("explain-msgpack 8", "even number");
    expect_err("explain-msgpack zz", "bad hex digit");
    expect_err("explain-msgpack 81a2", "dead letter: truncated");
    free(hex);
    free(mp);
}

/* ---- why ---------------------------------------------------------------- */

/* A redisReply parsed from RESP text (freed by the caller). */
static redisReply *resp(const char *text)
{
    redisReader *r = redisReaderCreate();
    cr_assert_eq(redisReaderFeed(r, text, strlen(text)), REDIS_OK);
    void *reply = NULL;
    cr_assert_eq(redisReaderGetReply(r, &reply), REDIS_OK);
    cr_assert_not_null(reply, "incomplete RESP");
    redisReaderFree(r);
    return reply;
}

static void expect_cmd(struct admin_why *w, const char *want)
{
    int argc;
    const char **argv;
    const size_t *len;
    cr_assert(admin_why_command(w, &argc, &argv, &len), "no command, want %s", want);
    char got[256] = "";
    for (int i = 0; i < argc; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%.*s", i ? " " : "", (int)len[i], argv[i]);
    cr_assert_str_eq(got, want);
}

static void feed(struct admin_why *w, const char *text)
{
    redisReply *r = resp(text);
    char err[256];
    cr_assert_eq(admin_why_feed(w, r, err, sizeof err), 0, "%s", err);
    freeReplyObject(r);
}

/* The record as the commit writes it (one msgpack map), as a bulk reply. */
static void feed_record(struct admin_why *w)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *kv[][2] = {{"dealers", "d1"}, {"returned", ""}, {"niche", "solar"}, {"outcome", "assigned"},
                           {"ref", "1772636400100-0"}};
    msgpack_pack_map(&pk, 8);
    for (size_t i = 0; i < sizeof kv / sizeof *kv; i++) {
        msgpack_pack_str_with_body(&pk, kv[i][0], strlen(kv[i][0]));
        msgpack_pack_str_with_body(&pk, kv[i][1], strlen(kv[i][1]));
    }
    msgpack_pack_str_with_body(&pk, "attempt", 7);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_str_with_body(&pk, "at", 2);
    msgpack_pack_int64(&pk, 1772636400123LL);
    msgpack_pack_str_with_body(&pk, "payload", 7);
    msgpack_pack_bin_with_body(&pk, "SECRET-PHONE", 12);
    redisReply r = {.type = REDIS_REPLY_STRING, .str = sb.data, .len = sb.size};
    char err[256];
    cr_assert_eq(admin_why_feed(w, &r, err, sizeof err), 0, "%s", err);
    msgpack_sbuffer_destroy(&sb);
}
#define ENTRY_ASSIGNED                                                                                       \
    "*1\r\n*2\r\n$15\r\n1772636400123-0\r\n*14\r\n$7\r\nlead_id\r\n$2\r\nL1\r\n$7\r\noutcome\r\n$"           \
    "8\r\nassigned\r\n"                                                                                      \
    "$7\r\ndealers\r\n$2\r\nd1\r\n$4\r\nrule\r\n$6\r\ntier:1\r\n$5\r\nniche\r\n$5\r\nsolar\r\n"              \
    "$7\r\nattempt\r\n$1\r\n1\r\n$6\r\npassed\r\n$41\r\nd7=capped:day,d9=filtered:min_score,d3=not_"         \
    "picked\r\n"

/* The audit entry as the commit writes it: lead_id and the tab-separated
 * decision (outcome, dealers, rule, niche, attempt, passed, ref). */
#define ENTRY_COMPACT                                                                                        \
    "*1\r\n*2\r\n$15\r\n1772636400123-0\r\n*4\r\n$7\r\nlead_id\r\n$2\r\nL1\r\n$1\r\nd\r\n$92\r\n"     \
    "assigned\td1\ttier:1\tsolar\t1\td7=capped:day,d9=filtered:min_score,d3=not_picked\t1772636400100-0\r\n"

Test(admin, why_follows_the_record_to_its_audit_entry)
{
    char err[256];
    struct admin_why *w = admin_why_new("lr", "L1", err, sizeof err);
    cr_assert_not_null(w, "%s", err);
    expect_cmd(w, "GET lr:lead:L1");
    feed_record(w);
    expect_cmd(w, "XRANGE lr:audit 1772636395123-0 + COUNT 1000");
    feed(w, ENTRY_COMPACT);
    int argc;
    const char **argv;
    const size_t *len;
    cr_assert(!admin_why_command(w, &argc, &argv, &len), "the lookup is complete");
    char *out;
    cr_assert_eq(admin_why_result(w, false, &out, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(strstr(out, "2026-03-04 15:00:00.123 UTC"), "when:\n%s", out);
    cr_assert_not_null(strstr(out, "assigned to d1 by rule tier:1"), "to whom, by which rule:\n%s", out);
    cr_assert(strstr(out, "d7") && strstr(out, "its day cap was reached"), "who else and why not:\n%s", out);
    cr_assert_not_null(strstr(out, "the score is below its min_score"), "%s", out);
    cr_assert_null(strstr(out, "SECRET"), "the payload (contact data) is never shown");
    free(out);
    cr_assert_eq(admin_why_result(w, true, &out, err, sizeof err), 0);
    json_t *j = json_loads(out, 0, NULL);
    cr_assert_not_null(j, "%s", out);
    json_t *d = json_array_get(json_object_get(j, "decisions"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(d, "rule")), "tier:1");
    cr_assert_eq(json_array_size(json_object_get(d, "passed")), 3);
    cr_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(d, "passed"), 0), "why")),
        "capped:day");
    json_decref(j);
    free(out);
    admin_why_free(w);
}

Test(admin, why_scans_the_audit_when_the_record_names_no_entry)
{
    char err[256];
    struct admin_why *w = admin_why_new("lr", "L1", err, sizeof err);
    expect_cmd(w, "GET lr:lead:L1");
    feed(w, "$-1\r\n"); /* expired record */
    expect_cmd(w, "XREVRANGE lr:audit + - COUNT 1000");
    feed(w, ENTRY_ASSIGNED);
    int argc;
    const char **argv;
    const size_t *len;
    cr_assert(!admin_why_command(w, &argc, &argv, &len), "a short page is the end of the stream");
    char *out;
    cr_assert_eq(admin_why_result(w, false, &out, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(strstr(out, "record: none"), "%s", out);
    cr_assert_not_null(strstr(out, "assigned to d1 by rule tier:1"), "%s", out);
    free(out);
    admin_why_free(w);
}

Test(admin, why_pages_through_the_audit_within_bounds)
{
    char err[256];
    struct admin_why *w = admin_why_new("lr", "L1", err, sizeof err);
    feed(w, "$-1\r\n");
    /* Full pages of other leads' entries: the scan goes on from the last
     * id, exclusively, and stops after ADMIN_WHY_SCAN entries. */
    size_t cap = 1000 * 80 + 64;
    char *page = malloc(cap);
    int pages = 0;
    for (;;) {
        int argc;
        const char **argv;
        const size_t *len;
        if (!admin_why_command(w, &argc, &argv, &len))
            break;
        cr_assert_lt(pages, ADMIN_WHY_SCAN / 1000 + 1, "the scan is not bounded");
        if (pages > 0) {
            char want[32];
            snprintf(want, sizeof want, "(%d-0", 100000 - pages * 1000 + 1);
            cr_assert_str_eq(argv[2], want);
        }
        size_t o = (size_t)snprintf(page, cap, "*1000\r\n");
        for (int i = 0; i < 1000; i++) {
            char id[32];
            snprintf(id, sizeof id, "%d-0", 100000 - pages * 1000 - i);
            o += (size_t)snprintf(page + o, cap - o,
                                  "*2\r\n$%zu\r\n%s\r\n*2\r\n$7\r\nlead_id\r\n$2\r\nZZ\r\n", strlen(id), id);
        }
        feed(w, page);
        pages++;
    }
    cr_assert_eq(pages, ADMIN_WHY_SCAN / 1000);
    char *out;
    cr_assert_eq(admin_why_result(w, false, &out, err, sizeof err), -1, "nothing found");
    cr_assert_not_null(strstr(err, "unknown lead L1"), "%s", err);
    free(page);
    admin_why_free(w);
}

Test(admin, why_errors)
{
    char err[256];
    cr_assert_null(admin_why_new("lr", "bad/id", err, sizeof err));
    cr_assert_not_null(strstr(err, "invalid lead id"));
    cr_assert_null(admin_why_new("lr", "", err, sizeof err));
    struct admin_why *w = admin_why_new("lr", "L1", err, sizeof err);
    cr_assert_eq(admin_why_feed(w, NULL, err, sizeof err), -1, "a dropped connection ends the lookup");
    admin_why_free(w);
    w = admin_why_new("lr", "L1", err, sizeof err);
    redisReply *r = resp("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
    cr_assert_eq(admin_why_feed(w, r, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "WRONGTYPE"));
    freeReplyObject(r);
    admin_why_free(w);
}

/* ---- leadctl helpers -------------------------------------------------------- */

Test(admin, leadctl_unframe)
{
    char *b;
    bool e;
    size_t used;
    cr_assert_eq(lc_unframe("abc\n..x\n", 8, &b, &e, &used), 0, "incomplete");
    cr_assert_eq(lc_unframe("abc\n..x\n.\nmore", 14, &b, &e, &used), 1);
    cr_assert_str_eq(b, "abc\n.x\n");
    cr_assert(!e);
    cr_assert_eq(used, 10);
    free(b);
    cr_assert_eq(lc_unframe("ERR nope\n.\n", 11, &b, &e, &used), 1);
    cr_assert(e);
    cr_assert_str_eq(b, "nope");
    free(b);
    cr_assert_eq(lc_unframe(".\n", 2, &b, &e, &used), 1);
    cr_assert_str_eq(b, "");
    free(b);
}

Test(admin, leadctl_explain_line)
{
    char *line, err[256];
    const char *json = "{\n  \"id\": \"A1\",\n  \"note\": \"two\\nlines\"\n}\n";
    cr_assert_eq(lc_explain_line(json, strlen(json), false, &line, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(line, "explain {\"id\":\"A1\",\"note\":\"two\\nlines\"}");
    free(line);
    cr_assert_eq(lc_explain_line(json, strlen(json), true, &line, err, sizeof err), 0);
    cr_assert(strncmp(line, "json explain {", 14) == 0);
    free(line);
    const char mp[] = "\x81\xa2id\xa2M1";
    cr_assert_eq(lc_explain_line(mp, sizeof mp - 1, false, &line, err, sizeof err), 0);
    cr_assert_str_eq(line, "explain-msgpack 81a26964a24d31");
    free(line);
    cr_assert_eq(lc_explain_line("[1]", 3, false, &line, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "not an object"));
    cr_assert_eq(lc_explain_line("nope", 4, false, &line, err, sizeof err), -1);
    cr_assert_not_null(strstr(err, "neither a msgpack map nor JSON"));
}

/* ---- the socket --------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int dial(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0, "connect: %s", strerror(errno));
    return fd;
}

/* Runs the loop and reads fd until stop(buf) holds, EOF, or ms pass.
 * Returns the bytes read (malloc'ed, NUL-terminated); *eof set on EOF. */
static char *pump(int fd, bool (*stop)(const char *, size_t), int ms, bool *eof, size_t *outlen)
{
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    *eof = false;
    int64_t end = mono_ms() + ms;
    while (mono_ms() < end) {
        event_base_loop(E.base, EVLOOP_NONBLOCK);
        if (len + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r > 0) {
            len += (size_t)r;
            buf[len] = 0;
            if (stop && stop(buf, len))
                break;
            continue;
        }
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
            *eof = true;
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 1);
    }
    buf[len] = 0;
    if (outlen)
        *outlen = len;
    return buf;
}

static bool reply_done(const char *b, size_t n)
{
    return n >= 2 && strcmp(b + n - 2, ".\n") == 0 && (n == 2 || b[n - 3] == '\n');
}

static void send_all(int fd, const char *p, size_t n)
{
    size_t off = 0;
    int64_t end = mono_ms() + 5000;
    while (off < n && mono_ms() < end) {
        ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else
            event_base_loop(E.base, EVLOOP_NONBLOCK);
    }
    cr_assert_eq(off, n, "could not send");
}

Test(admin_socket, mode_never_grants_others)
{
    env_up(E.path, 0666);
    struct stat st;
    cr_assert_eq(lstat(E.path, &st), 0);
    cr_assert(S_ISSOCK(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0660, "mode %o", st.st_mode & 0777);
    admin_free(E.a);
    E.a = NULL;
    cr_assert_neq(access(E.path, F_OK), 0, "admin_free removes its socket file");
}

Test(admin_socket, mode_0600)
{
    env_up(E.path, 0600);
    struct stat st;
    cr_assert_eq(lstat(E.path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
}

Test(admin_socket, stale_socket_is_replaced)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", E.path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    close(fd); /* the file stays, nobody listens: a crashed daemon's */
    env_up(E.path, 0600);
    int c = dial(E.path);
    send_all(c, "stats\n", 6);
    bool eof;
    char *r = pump(c, reply_done, 3000, &eof, NULL);
    cr_assert_not_null(strstr(r, "received 0\n"), "%s", r);
    free(r);
    close(c);
}

Test(admin_socket, live_socket_and_other_files_are_left_alone)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", E.path);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    cr_assert_eq(listen(fd, 1), 0);
    struct event_base *base = event_base_new();
    struct admin_env env = {0};
    char err[256];
    cr_assert_null(admin_new(base, E.path, 0600, &env, err, sizeof err), "another daemon listens there");
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    close(fd);
    unlink(E.path);
    FILE *f = fopen(E.path, "w");
    fputs("precious", f);
    fclose(f);
    cr_assert_null(admin_new(base, E.path, 0600, &env, err, sizeof err));
    cr_assert_not_null(strstr(err, "not a socket"), "%s", err);
    struct stat st;
    cr_assert_eq(stat(E.path, &st), 0, "a regular file is never removed");
    cr_assert_eq(st.st_size, 8);
    event_base_free(base);
}

Test(admin_socket, too_long_a_line_is_refused_and_closed)
{
    env_up(E.path, 0600);
    int c = dial(E.path);
    /* 1 MB without a newline: the daemon reads at most the limit. */
    size_t n = 1 << 20;
    char *big = malloc(n);
    memset(big, 'x', n);
    size_t off = 0;
    bool eof = false;
    int64_t end = mono_ms() + 10000;
    while (off < n && mono_ms() < end) {
        ssize_t w = send(c, big + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            break;
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    }
    char *r = pump(c, NULL, 5000, &eof, NULL);
    cr_assert(eof, "the connection is closed after the error");
    cr_assert_not_null(strstr(r, "ERR line too long"), "[%s]", r);
    cr_assert_lt(off, n, "the daemon stopped reading at the limit");
    free(r);
    free(big);
    close(c);
    /* The server still serves others. */
    c = dial(E.path);
    send_all(c, "help\n", 5);
    r = pump(c, reply_done, 3000, &eof, NULL);
    cr_assert_not_null(strstr(r, "explain LEAD-JSON"));
    free(r);
    close(c);
}

Test(admin_socket, a_line_at_the_limit_is_fine)
{
    env_up(E.path, 0600);
    int c = dial(E.path);
    /* explain + padding spaces up to exactly ADMIN_MAX_LINE bytes. */
    char *line = malloc(ADMIN_MAX_LINE + 1);
    const char *j = "explain {\"id\":\"P1\",\"niche\":\"solar\",\"state\":\"IA\"}";
    memset(line, ' ', ADMIN_MAX_LINE);
    memcpy(line, j, strlen(j));
    line[ADMIN_MAX_LINE] = '\n';
    send_all(c, line, ADMIN_MAX_LINE + 1);
    bool eof;
    char *r = pump(c, reply_done, 5000, &eof, NULL);
    cr_assert_not_null(strstr(r, "4. assigned to:"), "[%.200s]", r);
    free(r);
    free(line);
    close(c);
}

Test(admin_socket, a_client_that_never_reads_is_dropped)
{
    env_up(E.path, 0600);
    int c = dial(E.path);
    /* Shrink its receive buffer so the replies pile up in the daemon. */
    int small = 4096;
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    char cmds[5 * 4000];
    for (int i = 0; i < 4000; i++)
        memcpy(cmds + 5 * i, "help\n", 5);
    size_t off = 0;
    int64_t end = mono_ms() + 10000;
    while (off < sizeof cmds && mono_ms() < end) {
        ssize_t w = send(c, cmds + off, sizeof cmds - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            break;
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    }
    for (int i = 0; i < 200; i++)
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    /* Now read: what arrives is bounded, then the connection is closed. */
    bool eof;
    size_t got;
    char *r = pump(c, NULL, 10000, &eof, &got);
    cr_assert(eof, "the client was dropped");
    cr_assert_lt(got, (size_t)ADMIN_MAX_OUTPUT + 512 * 1024, "the daemon buffered %zu bytes for it", got);
    cr_assert_gt(got, 0);
    free(r);
    close(c);
}

Test(admin_socket, half_close_still_gets_its_replies)
{
    env_up(E.path, 0600);
    int c = dial(E.path);
    send_all(c, "stats\nniches", 12); /* the last line has no newline */
    shutdown(c, SHUT_WR);
    bool eof;
    char *r = pump(c, NULL, 5000, &eof, NULL);
    cr_assert(eof);
    cr_assert_not_null(strstr(r, "received 0\n"), "%s", r);
    cr_assert_not_null(strstr(r, "NICHE"), "%s", r);
    free(r);
    close(c);
}

Test(admin_socket, bounded_number_of_clients)
{
    env_up(E.path, 0600);
    int fds[ADMIN_MAX_CLIENTS];
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++) {
        fds[i] = dial(E.path);
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    }
    for (int i = 0; i < 50; i++)
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    int extra = dial(E.path);
    bool eof;
    char *r = pump(extra, NULL, 3000, &eof, NULL);
    cr_assert(eof);
    cr_assert_str_eq(r, "ERR too many admin clients\n.\n");
    free(r);
    close(extra);
    /* One leaves, another may come. */
    close(fds[0]);
    for (int i = 0; i < 50; i++)
        event_base_loop(E.base, EVLOOP_NONBLOCK);
    fds[0] = dial(E.path);
    send_all(fds[0], "quit\n", 5);
    r = pump(fds[0], NULL, 3000, &eof, NULL);
    cr_assert_str_eq(r, "OK bye\n.\n");
    cr_assert(eof, "quit closes");
    free(r);
    for (int i = 0; i < ADMIN_MAX_CLIENTS; i++)
        close(fds[i]);
}

Test(admin_socket, pipelined_commands_answer_in_order)
{
    env_up(E.path, 0600);
    int c = dial(E.path);
    send_all(c, "pause d1\nbogus\nresume d1\n", 25);
    bool eof;
    char *r = pump(c, NULL, 1500, &eof, NULL);
    cr_assert_str_eq(r, "OK dealer d1 paused, weight 3\n.\nERR unknown command 'bogus' (try help)\n.\n"
                        "OK dealer d1 active, weight 3\n.\n");
    free(r);
    close(c);
}
