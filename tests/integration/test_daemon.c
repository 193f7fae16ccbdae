/* test_daemon.c - leadrouterd end to end, checked from the outside against
 * the SPEC contract (sections 2-5 and 8): real redis-server, real daemon,
 * leads in through <p>:in (or <p>:returns), results read back from the
 * dealer queues, <p>:unassigned and <p>:dead. Every test ends with the
 * oracle: each lead sent is in exactly one place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <signal.h>

#include "harness.h"

TestSuite(daemon, .init = h_setup, .fini = h_teardown, .timeout = 30);

/* clang-format off */
/* Time zone pinned so that hours and cap buckets are UTC. */
#define DEFAULTS "defaults = { timezone = \"UTC\"; };\n"
#define SOLAR "niches = ( { name = \"solar\"; sources = [ \"sunquote.example\" ]; keywords = [ \"solar\" ]; } );\n"
/* A dealer buying solar leads in Iowa, with contract settings. */
#define IA_DEALER(id, contract) \
    "{ id = \"" id "\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { " contract " }; }"

/* The configs of the tests below (routing part; the harness adds redis,
 * input, prefix and admin). */
#define CONF_BASIC DEFAULTS SOLAR "dealers = ( " IA_DEALER("d-ia", "") " );\n"
#define CONF_HOT CONF_BASIC "routing = { hot_grades = [ \"A\" ]; };\n"
#define CONF_CAP1 DEFAULTS SOLAR "dealers = ( " IA_DEALER("d-cap", "caps = { day = 1; };") " );\n"
#define CONF_FILTER DEFAULTS SOLAR \
    "dealers = ( " IA_DEALER("d-owners", "filters = ( { field = \"fields.home_owner\"; eq = true; } );") " );\n"
#define CONF_REJECT CONF_BASIC "dedup = { action = \"reject\"; keys = [ \"phone\" ]; };\n"
/* Round robin between two dealers, and dedup that keeps a person with the
 * dealer that had them first. */
#define CONF_SAME_DEALER DEFAULTS \
    "niches = ( { name = \"solar\"; strategy = \"round_robin\"; } );\n" \
    "dealers = ( " IA_DEALER("sd1", "") ", " IA_DEALER("sd2", "") " );\n" \
    "dedup = { action = \"same_dealer\"; keys = [ \"phone\" ]; };\n"
#define CONF_LIMIT_1K CONF_BASIC "limits = { max_lead_bytes = 1024; };\n"
#define CONF_SHARED3 DEFAULTS \
    "niches = ( { name = \"solar\"; max_buyers = 3; strategy = \"weighted\"; } );\n" \
    "dealers = ( " IA_DEALER("s1", "") ", " IA_DEALER("s2", "") ", " \
                   IA_DEALER("s3", "") ", " IA_DEALER("s4", "") " );\n"
/* r-big's weight makes the rotation pick it again at once unless a
 * return excludes it. */
#define CONF_RETURNS DEFAULTS \
    "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n" \
    "dealers = ( " IA_DEALER("r-big", "weight = 100;") ", " \
                   IA_DEALER("r-small1", "") ", " IA_DEALER("r-small2", "") " );\n" \
    "routing = { max_attempts = 2; };\n"
#define CONF_LIST DEFAULTS SOLAR "dealers = ( " IA_DEALER("l1", "") ", " IA_DEALER("l2", "") " );\n"
#define CONF_CAPS_50_100 DEFAULTS SOLAR \
    "dealers = ( " IA_DEALER("cap50", "caps = { day = 50; };") ", " \
                   IA_DEALER("cap100", "caps = { day = 100; };") " );\n"
#define CONF_WEIGHTED_3_1 DEFAULTS \
    "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n" \
    "dealers = ( " IA_DEALER("w3", "weight = 3;") ", " IA_DEALER("w1", "weight = 1;") " );\n"
#define CONF_BAD_NICHE SOLAR \
    "dealers = ( { id = \"x\"; niches = [ \"nope\" ]; territory = { states = [ \"IA\" ]; }; } );\n"
/* clang-format on */

/* ---- helpers -------------------------------------------------------- */

static struct h_lead ia_lead(const char *id, int score)
{
    return (struct h_lead){.id = id, .niche = "solar", .state = "IA", .score = score};
}

/* v (unix ms) lies in [from - slack, h_now_ms() + slack]. */
static void in_window(int64_t v, int64_t from, const char *what)
{
    int64_t now = h_now_ms();
    cr_assert(v >= from - 500 && v <= now + 500,
              "%s = %lld is outside the test's window [%lld, %lld] (unix ms)", what, (long long)v,
              (long long)from, (long long)now);
}

/* The one assignment of a lead (fails unless there is exactly one). */
static struct h_assign one_assignment(const char *id)
{
    struct h_assign *a;
    size_t n = h_find_assignments(id, &a);
    cr_assert_eq(n, 1, "lead %s: %zu assignments, want 1", id, n);
    return a[0];
}

static void expect_unassigned(const char *id, const char *reason, struct h_buf sent, const char *niche)
{
    const struct h_unassigned *u = h_find_unassigned(id);
    cr_assert_not_null(u, "lead %s is not in %s:unassigned (want reason %s)", id, H_PREFIX, reason);
    cr_assert_str_eq(u->reason, reason, "lead %s: unassigned reason", id);
    cr_assert(h_buf_eq(u->lead, sent.p, sent.len),
              "lead %s: the unassigned `lead` is not the payload as sent", id);
    in_window(u->at, h_t0_ms(), "unassigned `at`");
    if (niche)
        cr_assert_str_eq(u->niche, niche, "lead %s: unassigned niche", id);
    struct h_assign *a;
    cr_assert_eq(h_find_assignments(id, &a), 0, "lead %s is unassigned but also in a dealer queue", id);
}

/* One lead, one expected unassigned reason. */
static void unassigned_case(const char *routing, const struct h_lead *l, const char *reason,
                            const char *niche)
{
    int d = h_daemon_start(h_config("stream", NULL, routing));
    struct h_buf sent = h_send(l, NULL, 0);
    h_wait_drained(10);
    expect_unassigned(l->id, reason, sent, niche);
    h_daemon_stop(d);
    h_oracle();
}

/* A `hours` setting whose window (UTC, every day) is closed now: it opens
 * two hours from now and closes an hour later. */
static void closed_hours(char *buf, size_t len)
{
    time_t now = time(NULL);
    int m = (int)((now % 86400) / 60);
    int from = (m + 120) % 1440, to = (m + 180) % 1440;
    snprintf(buf, len,
             "hours = { timezone = \"UTC\"; days = [ \"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", "
             "\"sun\" ]; "
             "from = \"%02d:%02d\"; to = \"%02d:%02d\"; };",
             from / 60, from % 60, to / 60, to % 60);
}

static long long queue_len(const char *dealer)
{
    return h_int("LLEN %s:dealer:%s", H_PREFIX, dealer);
}

/* The UTC day of Redis's clock, as cap keys name it (YYYYMMDD). */
static void utc_day(char *buf, size_t len)
{
    time_t s = (time_t)(h_redis_time_ms() / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, len, "%Y%m%d", &tm);
}

/* ---- assignment (SPEC section 3) ----------------------------------- */

Test(daemon, assigned_with_all_fields)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_HOT));
    /* An unknown key whose value uses non-minimal encodings (a uint32 7, a
     * str8 of 3 bytes): a daemon that re-encodes the lead changes these. */
    static const char extra[] = "\x82\xa3"
                                "ref\xce\x00\x00\x00\x07\xa4"
                                "note\xd9\x03"
                                "abc";
    int64_t t_send = h_now_ms();
    struct h_lead l = {
        .id = "L-full-1",
        .niche = "solar",
        .source = "sunquote.example",
        .keywords = {"solar", "panels"},
        .score = 65,
        .signals = {{"web", 1.0}},
        .country = "US",
        .state = "IA",
        .zip = "50309",
        .has_geo = true,
        .lat = 41.59,
        .lon = -93.62,
        .created_at = t_send - 60000,
        .name = "Jane Roe",
        .phone = "+1 (515) 555-0101",
        .email = "jane.roe@example.com",
        .fields = {{.key = "home_owner", .type = 'b', .b = true},
                   {.key = "roof_age_years", .type = 'i', .i = 12}},
        .extra_key = "x_vendor",
        .extra_raw = extra,
        .extra_raw_len = sizeof extra - 1,
    };
    struct h_buf sent = h_send(&l, NULL, 0);
    h_wait_drained(10);

    struct h_assign *q;
    cr_assert_eq(h_read_dealer("d-ia", &q), 1, "d-ia's queue holds the one assignment");
    struct h_assign a = q[0];
    cr_assert_str_eq(a.lead_id, "L-full-1");
    cr_assert_str_eq(a.dealer, "d-ia");
    cr_assert_str_eq(a.niche, "solar");
    cr_assert_eq(a.score, 65);
    cr_assert_str_eq(a.grade, "B", "65 is grade B with the default grades (A 80, B 50, C 0)");
    cr_assert_str_eq(a.rule, "tier:1", "one buyer, weighted, not exclusive: rule tier:<tier>");
    in_window(a.routed_at, t_send, "routed_at");
    cr_assert_eq(a.attempt, 1);
    cr_assert(h_buf_eq(a.lead, sent.p, sent.len),
              "the assignment's `lead` is the original map byte for byte (%zu bytes sent, %zu back)",
              sent.len, a.lead.len);
    cr_assert_eq(h_int("EXISTS %s:lead:L-full-1", H_PREFIX), 1, "the assignment record %s:lead:<id> exists",
                 H_PREFIX);
    cr_assert_eq(h_int("LLEN %s:unassigned", H_PREFIX) + h_int("LLEN %s:dead", H_PREFIX), 0);
    h_daemon_stop(d);
    h_oracle();
}

/* ---- unassigned reasons (SPEC section 4) --------------------------- */

Test(daemon, unassigned_unknown_niche)
{
    struct h_lead l = {
        .id = "U-niche-1", .niche = "plumbing", .keywords = {"pipes"}, .state = "IA", .score = 60};
    unassigned_case(CONF_BASIC, &l, "unknown_niche", NULL);
}

Test(daemon, unassigned_no_dealer_in_territory)
{
    struct h_lead l = {.id = "U-terr-1", .niche = "solar", .state = "TX", .zip = "73301", .score = 60};
    unassigned_case(CONF_BASIC, &l, "no_dealer_in_territory", "solar");
}

Test(daemon, unassigned_all_capped)
{
    h_avoid_utc_midnight(15);
    int d = h_daemon_start(h_config("stream", NULL, CONF_CAP1));
    struct h_lead l1 = ia_lead("U-cap-1", 60), l2 = ia_lead("U-cap-2", 60);
    h_send(&l1, NULL, 0);
    struct h_buf second = h_send(&l2, NULL, 0);
    h_wait_drained(10);
    struct h_assign a = one_assignment("U-cap-1");
    cr_assert_str_eq(a.dealer, "d-cap");
    expect_unassigned("U-cap-2", "all_capped", second, "solar");
    char day[16], key[128];
    utc_day(day, sizeof day);
    snprintf(key, sizeof key, "%s:cap:d-cap:day:%s", H_PREFIX, day);
    redisReply *r = h_cmd("GET %s", key);
    cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, "1") == 0, "cap counter %s = 1", key);
    h_daemon_stop(d);
    h_oracle();
}

Test(daemon, unassigned_all_closed)
{
    char hours[256], routing[1024];
    closed_hours(hours, sizeof hours);
    snprintf(routing, sizeof routing, DEFAULTS SOLAR "dealers = ( " IA_DEALER("d-closed", "%s") " );\n",
             hours);
    struct h_lead l = ia_lead("U-closed-1", 60);
    unassigned_case(routing, &l, "all_closed", "solar");
}

Test(daemon, unassigned_filtered)
{
    struct h_lead l = ia_lead("U-filter-1", 60);
    l.fields[0] = (struct h_field){.key = "home_owner", .type = 'b', .b = false};
    unassigned_case(CONF_FILTER, &l, "filtered", "solar");
}

Test(daemon, unassigned_exclusive_owner_unavailable)
{
    char hours[256], routing[1536];
    closed_hours(hours, sizeof hours);
    /* The owner is closed and holds its leads; the shared dealer is open and
     * covers the lead too, but must not get it. */
    snprintf(routing, sizeof routing,
             DEFAULTS SOLAR "dealers = ( " IA_DEALER(
                 "owner", "exclusive = true; overflow = \"hold\"; %s") ", " IA_DEALER("shared", "") " );\n",
             hours);
    struct h_lead l = ia_lead("U-hold-1", 60);
    unassigned_case(routing, &l, "exclusive_owner_unavailable", "solar");
    cr_assert_eq(queue_len("shared"), 0, "overflow = hold: the shared dealer gets nothing");
}

Test(daemon, unassigned_suppressed)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_BASIC));
    /* The digest of the normalized phone: SHA-1 of its digits. */
    char digest[41];
    h_sha1hex("15155550100", digest);
    h_int("SADD %s:dnc %s", H_PREFIX, digest);
    struct h_lead dnc = ia_lead("U-dnc-1", 60), ok = ia_lead("U-dnc-ok", 60);
    dnc.phone = "+1 (515) 555-0100";
    ok.phone = "+1 (515) 555-0199";
    struct h_buf sent = h_send(&dnc, NULL, 0);
    h_send(&ok, NULL, 0);
    h_wait_drained(10);
    expect_unassigned("U-dnc-1", "suppressed", sent, NULL);
    cr_assert_str_eq(one_assignment("U-dnc-ok").dealer, "d-ia", "a phone not on the list is routed");
    h_daemon_stop(d);
    h_oracle();
}

Test(daemon, unassigned_duplicate)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_REJECT));
    struct h_lead l1 = ia_lead("U-dup-1", 60), l2 = ia_lead("U-dup-2", 60);
    /* The same person: the same digits, written differently. */
    l1.phone = "+1 (515) 555-0102";
    l2.phone = "1-515-555-0102";
    h_send(&l1, NULL, 0);
    struct h_buf second = h_send(&l2, NULL, 0);
    h_wait_drained(10);
    cr_assert_str_eq(one_assignment("U-dup-1").dealer, "d-ia");
    expect_unassigned("U-dup-2", "duplicate", second, NULL);
    h_daemon_stop(d);
    h_oracle();
}

/* The second lead of a person goes to the dealer that had the first, not
 * to the one whose turn it is; the rotation the refused pick moved is taken
 * back, so the next lead gets the dealer whose turn it really is. */
Test(daemon, dedup_same_dealer_overrides_the_rotation)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_SAME_DEALER));
    struct h_lead l1 = ia_lead("SD-1", 60), l2 = ia_lead("SD-2", 60), l3 = ia_lead("SD-3", 60);
    l1.phone = "+1 (515) 555-0177";
    l2.phone = "1-515-555-0177";
    h_send(&l1, NULL, 0);
    h_wait_drained(10);
    h_send(&l2, NULL, 0);
    h_wait_drained(10);
    h_send(&l3, NULL, 0);
    h_wait_drained(10);
    const char *first = one_assignment("SD-1").dealer;
    cr_assert_str_eq(first, "sd1", "round robin starts with the first dealer listed");
    cr_assert_str_eq(one_assignment("SD-2").dealer, "sd1", "the same phone goes to the dealer that had it");
    cr_assert_str_eq(one_assignment("SD-3").dealer, "sd2", "the rotation goes on where Redis says it is");
    h_daemon_stop(d);
    h_oracle();
}

Test(daemon, unassigned_duplicate_id)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_BASIC));
    struct h_lead l = ia_lead("U-dupid-1", 60);
    struct h_buf first = h_send(&l, NULL, 0);
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    struct h_assign a = one_assignment("U-dupid-1");
    cr_assert(h_buf_eq(a.lead, first.p, first.len));
    const struct h_unassigned *u = h_find_unassigned("U-dupid-1");
    cr_assert_not_null(u, "the second lead with the same id is in %s:unassigned", H_PREFIX);
    cr_assert_str_eq(u->reason, "duplicate_id");
    cr_assert(h_buf_eq(u->lead, first.p, first.len));
    h_daemon_stop(d);
    h_oracle();
}

/* ---- dead letters (SPEC sections 2 and 4) -------------------------- */

Test(daemon, dead_letters_for_malformed_input)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_LIMIT_1K));
    struct bad_case {
        const char *code; /* the codec's error code */
        const char *id;   /* the id inside, when one can be read */
        struct h_buf bytes;
        char ref[64]; /* stream entry id */
    } c[8];
    int n = 0;

    static const unsigned char array[] = {0x92, 0x01, 0x02};
    c[n++] = (struct bad_case){"not_a_map", NULL, {(unsigned char *)array, sizeof array}, ""};

    struct h_lead tl = ia_lead("D-trunc-1", 60);
    struct h_buf whole = h_lead_pack(&tl);
    c[n++] = (struct bad_case){"truncated", NULL, {whole.p, whole.len / 2}, ""};

    struct h_lead tr = ia_lead("D-trail-1", 60);
    struct h_buf t = h_lead_pack(&tr);
    static unsigned char trail[256];
    cr_assert_lt(t.len, sizeof trail);
    memcpy(trail, t.p, t.len);
    trail[t.len] = 0xc0;
    c[n++] = (struct bad_case){"trailing_bytes", "D-trail-1", {trail, t.len + 1}, ""};

    /* A valid lead but for its size: a 1500-byte unknown key (limit 1024). */
    static char blob[3 + 1500];
    blob[0] = (char)0xda;
    blob[1] = 0x05;
    blob[2] = (char)0xdc;
    memset(blob + 3, 'x', 1500);
    struct h_lead big = ia_lead("D-big-1", 60);
    big.extra_key = "blob";
    big.extra_raw = blob;
    big.extra_raw_len = sizeof blob;
    c[n++] = (struct bad_case){"too_large", "D-big-1", h_lead_pack(&big), ""};

    struct h_lead noid = ia_lead(NULL, 60);
    c[n++] = (struct bad_case){"missing_id", NULL, h_lead_pack(&noid), ""};

    struct h_lead bad = ia_lead("D-type-1", 0);
    bad.score_str = "high";
    c[n++] = (struct bad_case){"bad_type", "D-type-1", h_lead_pack(&bad), ""};

    /* contact {"phone": "n/a", "phone": "+15155559999"}: we would check
     * the first for DNC while a dealer's decoder keeps the last. */
    static const char two_phones[] = "\x82\xa5phone\xa3n/a\xa5phone\xac+15155559999";
    struct h_lead dup = ia_lead("D-dupphone-1", 60);
    dup.extra_key = "contact";
    dup.extra_raw = two_phones;
    dup.extra_raw_len = sizeof two_phones - 1;
    c[n++] = (struct bad_case){"duplicate_key", "D-dupphone-1", h_lead_pack(&dup), ""};

    /* A str that is not UTF-8 in an unknown key (it would be forwarded). */
    static const char latin1[] = "\xa6" "Fran" "\xe7" "o";
    struct h_lead u8 = ia_lead("D-utf8-1", 60);
    u8.extra_key = "vendor_note";
    u8.extra_raw = latin1;
    u8.extra_raw_len = sizeof latin1 - 1;
    c[n++] = (struct bad_case){"invalid_utf8", "D-utf8-1", h_lead_pack(&u8), ""};

    for (int i = 0; i < n; i++)
        h_send_raw(c[i].bytes.p, c[i].bytes.len, c[i].id, c[i].ref, sizeof c[i].ref);
    /* The daemon goes on routing after bad input. */
    struct h_lead good = ia_lead("D-good-1", 60);
    h_send(&good, NULL, 0);
    h_wait_drained(10);

    struct h_dead *dead;
    size_t nd = h_read_dead(&dead);
    cr_assert_eq(nd, (size_t)n, "%s:dead holds %zu entries, want %d", H_PREFIX, nd, n);
    for (int i = 0; i < n; i++) {
        const struct h_dead *e = NULL;
        for (size_t k = 0; k < nd && !e; k++)
            if (h_buf_eq(dead[k].payload, c[i].bytes.p, c[i].bytes.len))
                e = &dead[k];
        cr_assert_not_null(e, "no dead entry carries the exact %s payload (%zu bytes)", c[i].code,
                           c[i].bytes.len);
        size_t cl = strlen(c[i].code);
        cr_assert(strncmp(e->error, c[i].code, cl) == 0 && (e->error[cl] == 0 || e->error[cl] == ':'),
                  "%s payload: error '%s' does not start with the code '%s'", c[i].code, e->error, c[i].code);
        cr_assert_str_eq(e->ref, c[i].ref, "%s payload: ref is the stream entry id", c[i].code);
        in_window(e->at, h_t0_ms(), "dead `at`");
    }
    cr_assert_str_eq(one_assignment("D-good-1").dealer, "d-ia");
    /* Last, so that a wrong type does not hide the checks above. */
    for (size_t k = 0; k < nd; k++)
        cr_assert(dead[k].payload_is_bin, "%s:dead[%zu] (%s): `payload` must be msgpack bin (SPEC section 4)",
                  H_PREFIX, k, dead[k].error);
    h_daemon_stop(d);
    h_oracle();
}

/* ---- hot grades, shared leads (SPEC sections 3 and 5) -------------- */

Test(daemon, hot_grade_goes_to_the_head_of_the_queue)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_HOT));
    struct h_lead b1 = ia_lead("H-b-1", 60), b2 = ia_lead("H-b-2", 55), a1 = ia_lead("H-a-1", 90);
    h_send(&b1, NULL, 0);
    h_send(&b2, NULL, 0);
    h_wait_drained(10);
    h_send(&a1, NULL, 0);
    h_wait_drained(10);
    struct h_assign *q;
    cr_assert_eq(h_read_dealer("d-ia", &q), 3);
    cr_assert_str_eq(q[0].lead_id, "H-a-1", "the A lead is LPUSHed: taken first");
    cr_assert_str_eq(q[0].grade, "A");
    cr_assert_str_eq(q[1].lead_id, "H-b-1", "B leads are RPUSHed, in order");
    cr_assert_str_eq(q[1].grade, "B");
    cr_assert_str_eq(q[2].lead_id, "H-b-2");
    h_daemon_stop(d);
    h_oracle();
}

Test(daemon, max_buyers_three_of_four_dealers)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_SHARED3));
    h_set_max_buyers(3);
    char ids[4][16];
    for (int i = 0; i < 4; i++) {
        snprintf(ids[i], sizeof ids[i], "S-%d", i);
        struct h_lead l = ia_lead(ids[i], 60);
        h_send(&l, NULL, 0);
    }
    h_wait_drained(10);
    for (int i = 0; i < 4; i++) {
        struct h_assign *a;
        size_t n = h_find_assignments(ids[i], &a);
        cr_assert_eq(n, 3, "lead %s went to %zu dealers, want 3", ids[i], n);
        for (size_t k = 0; k < n; k++) {
            cr_assert_str_eq(a[k].rule, "shared", "lead %s at %s", ids[i], a[k].dealer);
            cr_assert_eq(a[k].attempt, 1);
            for (size_t j = k + 1; j < n; j++)
                cr_assert_str_neq(a[k].dealer, a[j].dealer, "lead %s went to %s twice", ids[i], a[k].dealer);
        }
    }
    h_daemon_stop(d);
    h_oracle();
}

/* ---- returns (SPEC sections 4 and 5) ------------------------------- */

static size_t dead_count(void)
{
    return (size_t)h_int("LLEN %s:dead", H_PREFIX);
}

static void expect_last_dead(const char *prefix)
{
    struct h_dead *dead;
    size_t n = h_read_dead(&dead);
    cr_assert_gt(n, 0);
    cr_assert(strncmp(dead[n - 1].error, prefix, strlen(prefix)) == 0,
              "dead error '%s' does not start with '%s'", dead[n - 1].error, prefix);
}

Test(daemon, returns_reroute_then_max_attempts)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_RETURNS));
    struct h_lead l = ia_lead("R-1", 60);
    struct h_buf sent = h_send(&l, NULL, 0);
    h_wait_drained(10);
    struct h_assign first = one_assignment("R-1");
    cr_assert_str_eq(first.dealer, "r-big", "weight 100 of 102 wins the first pick");
    cr_assert_eq(first.attempt, 1);

    /* The dealer takes it (BLPOP) and returns it. */
    h_consume("r-big", "R-1");
    h_return("R-1", "r-big", "wrong number");
    h_wait_drained(10);
    struct h_assign *a = NULL;
    H_WAIT(h_find_assignments("R-1", &a) == 1, 10, "the returned lead was not routed again");
    struct h_assign second = a[0];
    cr_assert_str_neq(second.dealer, "r-big", "a return never goes back to the dealer that returned it");
    cr_assert_eq(second.attempt, 2);
    cr_assert(h_buf_eq(second.lead, sent.p, sent.len), "the re-routed assignment carries the original lead");
    in_window(second.routed_at, first.routed_at, "re-route routed_at");
    const char *other = strcmp(second.dealer, "r-small1") == 0 ? "r-small2" : "r-small1";

    /* Returns that name a dealer that never had the lead, or no known lead. */
    h_return("R-1", other, "never had it");
    h_wait_drained(10);
    H_WAIT(dead_count() == 1, 10, "a return from a dealer that never had the lead is not in %s:dead",
           H_PREFIX);
    expect_last_dead("bad_return");
    cr_assert_eq(h_find_assignments("R-1", &a), 1, "a bad return changes nothing");
    h_return("no-such-lead", "r-big", "who?");
    h_wait_drained(10);
    H_WAIT(dead_count() == 2, 10, "a return of an unknown lead is not in %s:dead", H_PREFIX);
    expect_last_dead("bad_return");
    h_oracle_allow_extra_dead(2);

    /* The second return would be attempt 3 > max_attempts = 2. */
    h_consume(second.dealer, "R-1");
    h_return("R-1", second.dealer, "not interested");
    h_wait_drained(10);
    H_WAIT(h_find_unassigned("R-1") != NULL, 10, "after max_attempts the lead is not in %s:unassigned",
           H_PREFIX);
    expect_unassigned("R-1", "max_attempts", sent, NULL);
    h_daemon_stop(d);
    h_oracle();
}

/* ---- list mode (SPEC sections 2 and 5) ----------------------------- */

Test(daemon, list_mode_routes_and_empties_processing)
{
    int d = h_daemon_start(h_config("list", NULL, CONF_LIST));
    char id[32];
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "LM-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
        if (i == 10) {
            static const unsigned char array[] = {0x91, 0x01};
            h_send_raw(array, sizeof array, NULL, NULL, 0);
        }
    }
    h_wait_drained(10);
    H_WAIT(h_outcomes() == 21, 10, "21 leads in, %zu outcomes", h_outcomes());
    cr_assert_eq(queue_len("l1") + queue_len("l2"), 20);
    struct h_dead *dead;
    cr_assert_eq(h_read_dead(&dead), 1);
    cr_assert_str_eq(dead[0].ref, "list", "a list-mode dead letter has ref \"list\"");
    cr_assert(strncmp(dead[0].error, "not_a_map", 9) == 0, "error '%s'", dead[0].error);
    h_daemon_stop(d);
    h_oracle(); /* also: <p>:in and every <p>:in:processing:* list empty */
}

/* ---- several daemons, restarts (SPEC sections 4 and 5) ------------- */

Test(daemon, two_daemons_never_exceed_a_cap)
{
    h_avoid_utc_midnight(25);
    /* Small batches, so that both daemons take part. */
    int d1 = h_daemon_start(h_config("stream", "batch = 5;", CONF_CAPS_50_100));
    int d2 = h_daemon_start(h_config("stream", "batch = 5;", CONF_CAPS_50_100));
    char id[32];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "C-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
    }
    h_wait_drained(20);
    cr_assert_eq(queue_len("cap50"), 50, "cap50 (day cap 50) got %lld", queue_len("cap50"));
    cr_assert_eq(queue_len("cap100"), 100, "cap100 (day cap 100) got %lld", queue_len("cap100"));
    struct h_unassigned *u;
    size_t nu = h_read_unassigned(&u);
    cr_assert_eq(nu, 50);
    for (size_t i = 0; i < nu; i++)
        cr_assert_str_eq(u[i].reason, "all_capped", "lead %s", u[i].lead_id);
    char day[16];
    utc_day(day, sizeof day);
    redisReply *r = h_cmd("GET %s:cap:cap50:day:%s", H_PREFIX, day);
    cr_assert(r->type == REDIS_REPLY_STRING && strcmp(r->str, "50") == 0, "cap counter of cap50 = 50");
    h_daemon_stop(d1);
    h_daemon_stop(d2);
    h_oracle();
}

static void send_range(int from, int to)
{
    char id[32];
    for (int i = from; i < to; i++) {
        snprintf(id, sizeof id, "W-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
    }
}

Test(daemon, weighted_split_survives_a_restart)
{
    /* Smooth WRR over 3:1 cycles w3 w3 w1 w3. 102 leads end mid-cycle
     * (w3 -2, w1 +2): a daemon that forgot that state would give
     * 77:25 + 74:24 = 151:49 instead of 150:50. (After 100 or 101 leads
     * both would give 150:50: the cut must be at 102.) */
    const char *conf = h_config("stream", NULL, CONF_WEIGHTED_3_1);
    int d = h_daemon_start(conf);
    send_range(0, 102);
    h_wait_drained(15);
    h_daemon_stop(d);
    cr_assert_eq(queue_len("w3"), 77, "first 102: w3 got %lld, want 77", queue_len("w3"));
    cr_assert_eq(queue_len("w1"), 25, "first 102: w1 got %lld, want 25", queue_len("w1"));
    d = h_daemon_start(conf);
    send_range(102, 200);
    h_wait_drained(15);
    cr_assert_eq(queue_len("w3"), 150, "w3 got %lld, want 150", queue_len("w3"));
    cr_assert_eq(queue_len("w1"), 50, "w1 got %lld, want 50", queue_len("w1"));
    h_daemon_stop(d);
    h_oracle();
}

Test(daemon, sigterm_mid_stream_finishes_in_flight_leads)
{
    /* The producer keeps adding leads; the daemon gets SIGTERM once about
     * 100 are committed, wherever it is in a batch and in the rotation. */
    const char *conf = h_config("stream", "batch = 10; claim_idle_ms = 1000;", CONF_WEIGHTED_3_1);
    int d = h_daemon_start(conf);
    size_t at_stop = 0;
    for (int i = 0; i < 200; i += 10) {
        send_range(i, i + 10);
        if (!at_stop && h_outcomes() >= 100) {
            h_daemon_stop(d); /* exit 0 is asserted */
            at_stop = h_outcomes();
        }
        h_sleep_ms(5);
    }
    if (!at_stop) {
        H_WAIT(h_outcomes() >= 100, 15, "fewer than 100 leads committed (%zu)", h_outcomes());
        h_daemon_stop(d);
        at_stop = h_outcomes();
    }
    fprintf(stderr, "[test] %zu of 200 committed when the daemon stopped\n", at_stop);
    redisReply *r = h_cmd("XPENDING %s:in %s", H_PREFIX, H_GROUP);
    cr_assert_eq(r->element[0]->integer, 0, "after SIGTERM no lead is left in flight (%lld pending)",
                 r->element[0]->integer);
    cr_assert_eq(h_outcomes(), at_stop, "nothing is committed after the daemon exited");
    d = h_daemon_start(conf);
    h_wait_drained(15);
    cr_assert_eq(queue_len("w3"), 150, "w3 got %lld, want 150", queue_len("w3"));
    cr_assert_eq(queue_len("w1"), 50, "w1 got %lld, want 50", queue_len("w1"));
    h_daemon_stop(d);
    h_oracle();
}

/* ---- exit codes (SPEC section 1) ----------------------------------- */

/* kill -9 while leads flow: whatever the dead daemon had read but not
 * committed stays pending under its consumer name; another daemon claims
 * it after claim_idle_ms and routes it. Nothing lost, nothing twice. */
Test(daemon, kill9_pending_leads_are_recovered_by_another_daemon)
{
    const char *conf = h_config("stream", "batch = 20; claim_idle_ms = 300;", CONF_WEIGHTED_3_1);
    int d1 = h_daemon_start(conf);
    size_t killed_at = 0;
    for (int i = 0; i < 600; i += 20) {
        send_range(i, i + 20);
        if (!killed_at && h_outcomes() >= 100) {
            h_daemon_kill9(d1);
            killed_at = (size_t)i + 20;
        }
    }
    if (!killed_at)
        h_daemon_kill9(d1);
    int d2 = h_daemon_start(conf);
    h_wait_drained(20);
    h_daemon_stop(d2);
    cr_assert_eq(queue_len("w3") + queue_len("w1"), 600, "w3 %lld + w1 %lld", queue_len("w3"), queue_len("w1"));
    h_oracle();
}

/* Deterministic recovery: a consumer that read 30 leads and died (never
 * acked) leaves them pending; the daemon claims them once they are idle
 * longer than claim_idle_ms and routes them. Five of them were delivered
 * max_deliveries times already (claimed over and over by crashing
 * consumers): they are poison and go to <p>:dead as max_deliveries. */
Test(daemon, pending_leads_of_a_dead_consumer_are_recovered_and_poison_dead_lettered)
{
    const char *conf = h_config("stream", "claim_idle_ms = 200; max_deliveries = 3;", CONF_WEIGHTED_3_1);
    h_cmd("XGROUP CREATE %s:in %s 0 MKSTREAM", H_PREFIX, H_GROUP);
    char ids[30][64];
    for (int i = 0; i < 30; i++) {
        char id[32];
        snprintf(id, sizeof id, "R-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, ids[i], sizeof ids[i]);
    }
    redisReply *r = h_cmd("XREADGROUP GROUP %s crashed-1 COUNT 30 STREAMS %s:in >", H_GROUP, H_PREFIX);
    cr_assert(r->type == REDIS_REPLY_ARRAY, "the fake consumer read the leads");
    /* Two more crashed deliveries of the first five: 3 in all. */
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 5; i++)
            h_cmd("XCLAIM %s:in %s crashed-2 0 %s", H_PREFIX, H_GROUP, ids[i]);
    cr_assert_eq(h_in_left(), 30);
    int d = h_daemon_start(conf);
    H_WAIT(h_in_left() == 0, 15, "the pending leads were never recovered");
    h_daemon_stop(d);
    struct h_dead *dead;
    size_t nd = h_read_dead(&dead);
    cr_assert_eq(nd, 5, "poison leads dead-lettered: %zu, want 5", nd);
    for (size_t i = 0; i < nd; i++)
        cr_assert(strncmp(dead[i].error, "max_deliveries", 14) == 0, "error: %s", dead[i].error);
    cr_assert_eq(queue_len("w3") + queue_len("w1"), 25);
    cr_assert(strstr(h_daemon_log_tail(d), "recovery") != NULL, "the daemon says it recovered leads");
    h_oracle_allow_extra_dead(0);
    h_oracle();
}

/* kill -9 redis-server (AOF, fsync always) while leads flow, keep it down
 * a moment, start it again: the daemon reconnects by itself (backoff),
 * reloads its script (NOSCRIPT), re-sends the commit whose reply was lost
 * (safe: the fence answers stale), and routes the rest. Three times. */
Test(daemon, redis_kill9_and_restart_mid_stream)
{
    h_redis_enable_aof();
    const char *conf = h_config("stream", "batch = 10; claim_idle_ms = 500;", CONF_WEIGHTED_3_1);
    int d = h_daemon_start(conf);
    for (int round = 0; round < 3; round++) {
        send_range(round * 100, round * 100 + 100);
        h_sleep_ms(5 + round * 7); /* kill at different points of the flow */
        h_redis_kill9_restart(300);
    }
    send_range(300, 400);
    h_wait_drained(30);
    h_daemon_stop(d);
    cr_assert_eq(queue_len("w3") + queue_len("w1"), 400, "w3 %lld + w1 %lld", queue_len("w3"), queue_len("w1"));
    h_oracle();
}

/* SIGHUP reloads the config: a broken file is reported with FILE:LINE and
 * the running config goes on routing; a good one takes over for the next
 * leads, and rotation state of dealers that still exist carries on. */
Test(daemon, sighup_bad_file_keeps_the_old_config_good_file_takes_over)
{
    const char *conf = h_config("stream", NULL, CONF_WEIGHTED_3_1);
    int d = h_daemon_start(conf);
    send_range(0, 40);
    h_wait_drained(10);
    cr_assert_eq(queue_len("w3"), 30);
    cr_assert_eq(queue_len("w1"), 10);

    /* Broken: the old config must stay in force. */
    FILE *f = fopen(conf, "a");
    cr_assert_not_null(f);
    fputs("this is not libconfig\n", f);
    fclose(f);
    h_daemon_signal(d, SIGHUP);
    H_WAIT(strstr(h_daemon_log_tail(d), "reload failed") != NULL, 5, "no reload failure logged");
    cr_assert(strstr(h_daemon_log_tail(d), conf) != NULL, "the failure names the file");
    send_range(40, 80);
    h_wait_drained(10);
    cr_assert_eq(queue_len("w3"), 60, "the old config still routes: w3 %lld", queue_len("w3"));
    cr_assert_eq(queue_len("w1"), 20);

    /* Good: w1 leaves, w9 arrives; w3 keeps its rotation state. */
    const char *next = h_config("stream", NULL,
                                DEFAULTS "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n"
                                         "dealers = ( " IA_DEALER("w3", "weight = 1;") ", " IA_DEALER(
                                             "w9", "weight = 1;") " );\n");
    cr_assert_eq(rename(next, conf), 0);
    h_daemon_signal(d, SIGHUP);
    H_WAIT(strstr(h_daemon_log_tail(d), "reloaded") != NULL, 5, "no reload logged");
    send_range(80, 120);
    h_wait_drained(10);
    h_daemon_stop(d);
    cr_assert_eq(queue_len("w1"), 20, "w1 left the config: it gets nothing new");
    cr_assert_eq(queue_len("w3") + queue_len("w9"), 100, "w3 %lld w9 %lld", queue_len("w3"), queue_len("w9"));
    cr_assert(queue_len("w9") >= 19 && queue_len("w9") <= 21, "1:1 after the reload: w9 %lld", queue_len("w9"));
    h_oracle();
}

Test(daemon, bad_config_exits_1)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_BAD_NICHE));
    cr_assert_eq(h_daemon_wait_exit(d, 10), 1, "a dealer naming an unknown niche: exit 1");
}

Test(daemon, unreachable_redis_exits_2)
{
    /* startup_timeout is 5 s in every harness config. */
    int port = h_free_port();
    int d = h_daemon_start(h_config_port(port, "stream", NULL, CONF_BASIC));
    cr_assert_eq(h_daemon_wait_exit(d, 20), 2, "Redis unreachable at start-up: exit 2");
}

/* ---- the commit path's defects (each failed on the per-lead script) --- */

/* A stats hash of the wrong type made the old script fail after the pushes,
 * counters and records: every redelivery wrote the leads again, and the
 * deliveries poisoned them. Now the commit fails before any write, the
 * daemon keeps the leads (their attempts are not deliveries), and once the
 * key is fixed every lead lands exactly once. */
Test(daemon, a_commit_that_cannot_write_writes_nothing_and_poisons_nothing)
{
    char hour[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    h_cmd("SET %s:stats:%s not-a-hash", H_PREFIX, hour);
    int d = h_daemon_start(h_config("stream", "batch = 4; claim_idle_ms = 200; max_deliveries = 2;", CONF_BASIC));
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "WT-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
    }
    /* Longer than claim_idle_ms x max_deliveries: recovery would have
     * poisoned them. */
    h_sleep_ms(1500);
    cr_assert_eq(h_int("LLEN %s:dealer:d-ia", H_PREFIX), 0, "nothing is pushed while the commit fails");
    cr_assert_eq(h_int("EXISTS %s:lead:WT-0", H_PREFIX), 0, "no record is written while the commit fails");
    cr_assert_eq(dead_count(), 0, "leads Redis would not store are not poison");
    cr_assert_not_null(strstr(h_daemon_log_tail(d), "WRONGTYPE"), "the failure is reported:\n%s",
                       h_daemon_log_tail(d));
    if (tm.tm_min == 59 && tm.tm_sec > 55)
        h_sleep_ms(5000); /* the hour may turn: clear both */
    h_cmd("DEL %s:stats:%s", H_PREFIX, hour);
    h_wait_drained(15);
    cr_assert_eq(h_int("LLEN %s:dealer:d-ia", H_PREFIX), 10, "each lead once, after Redis is fixed");
    cr_assert_eq(dead_count(), 0);
    h_oracle();
}

/* An ACL user that may not run HINCRBY: the old script wrote half a commit
 * then failed. Now it is refused before writing, and the daemon exits 2. */
Test(daemon, an_acl_without_a_command_the_commit_needs_exits_2_and_writes_nothing)
{
    h_cmd("ACL SETUSER lr-limited on >pw ~* &* +@all -hincrby");
    struct h_lead l = ia_lead("ACL-1", 60);
    h_send(&l, NULL, 0);
    int d = h_daemon_start(h_config_redis(h_redis_port(), 30, "username = \"lr-limited\"; password = \"pw\";",
                                          "stream", NULL, CONF_BASIC));
    cr_assert_eq(h_daemon_wait_exit(d, 10), 2, "refused rights: exit 2");
    cr_assert_eq(h_int("LLEN %s:dealer:d-ia", H_PREFIX), 0, "nothing pushed");
    cr_assert_eq(h_int("EXISTS %s:lead:ACL-1", H_PREFIX), 0, "no record");
    cr_assert_not_null(strstr(h_daemon_log_tail(d), "HINCRBY"), "the log names the command:\n%s",
                       h_daemon_log_tail(d));
}

/* 20 identical returns in one pipeline gave 20 new assignments. Now the
 * commit checks the record it was decided from: one re-route, the others
 * dead-lettered as already returned. */
Test(daemon, twenty_identical_returns_reroute_once)
{
    h_daemon_start(h_config("stream", NULL, CONF_SHARED3 "routing = { max_attempts = 30; };\n"));
    h_set_max_buyers(3);
    struct h_lead l = ia_lead("DUP-R", 60);
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    struct h_assign *a = NULL;
    cr_assert_eq(h_find_assignments("DUP-R", &a), 3);
    char dealer[80];
    snprintf(dealer, sizeof dealer, "%s", a[0].dealer);
    h_consume(dealer, "DUP-R");
    for (int i = 0; i < 20; i++)
        h_return("DUP-R", dealer, "same return, sent 20 times");
    h_wait_drained(15);
    H_WAIT(dead_count() == 19, 10, "want 19 repeated returns dead-lettered, have %zu", dead_count());
    cr_assert_eq(h_find_assignments("DUP-R", &a), 3, "two dealers kept it, one replaced the returner");
    for (size_t i = 0; i < 3; i++)
        cr_assert_str_neq(a[i].dealer, dealer, "never back to the dealer that returned it");
    expect_last_dead("bad_return: already_returned");
    h_oracle_allow_extra_dead(19);
    h_oracle();
}

/* Sums a field of every <p>:stats:<hour> hash (an hour may turn mid-test). */
static long long stat_sum(const char *field)
{
    redisReply *keys = h_cmd("KEYS %s:stats:*", H_PREFIX);
    long long n = 0;
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *v = h_cmd_any("HGET %s %s", keys->element[i]->str, field);
        if (v->type == REDIS_REPLY_STRING)
            n += atoll(v->str);
    }
    return n;
}

/* A recovery batch whose first leads are poison: the old batch kept notes
 * and commit entries in two arrays, and a poison entry had no note, so the
 * later leads were tallied with their neighbours' notes. stats must count
 * every max_deliveries dead letter and every assignment. */
Test(daemon, a_batch_with_poison_leads_counts_each_lead_as_itself)
{
    const char *conf = h_config("stream", "claim_idle_ms = 200; max_deliveries = 3;", CONF_WEIGHTED_3_1);
    h_cmd("XGROUP CREATE %s:in %s 0 MKSTREAM", H_PREFIX, H_GROUP);
    char ids[20][64];
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "PB-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, ids[i], sizeof ids[i]);
    }
    h_cmd("XREADGROUP GROUP %s crashed-1 COUNT 20 STREAMS %s:in >", H_GROUP, H_PREFIX);
    /* Poison: entries 0, 1, 7 and 8, delivered 3 times already, with
     * healthy leads after each of them in the same recovery batch. */
    static const int poison[] = {0, 1, 7, 8};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof poison / sizeof poison[0]; i++)
            h_cmd("XCLAIM %s:in %s crashed-2 0 %s", H_PREFIX, H_GROUP, ids[poison[i]]);
    int d = h_daemon_start(conf);
    H_WAIT(h_in_left() == 0, 15, "the pending leads were never recovered");
    h_daemon_stop(d);
    cr_assert_eq(dead_count(), 4);
    cr_assert_eq(stat_sum("dead"), 4, "stats count each max_deliveries dead letter: %lld", stat_sum("dead"));
    cr_assert_eq(stat_sum("dealer:w3:assigned") + stat_sum("dealer:w1:assigned"), 16,
                 "stats count each assignment: w3 %lld w1 %lld", stat_sum("dealer:w3:assigned"),
                 stat_sum("dealer:w1:assigned"));
    cr_assert_eq(stat_sum("dealer:w3:assigned"), queue_len("w3"), "w3's count is its queue");
    cr_assert_eq(stat_sum("dealer:w1:assigned"), queue_len("w1"), "w1's count is its queue");
    h_oracle();
}

/* Redis refusing commits (OOM under maxmemory) for longer than
 * claim_idle_ms x max_deliveries: each recovery claim used to add a
 * delivery and valid leads ended dead as max_deliveries, while the daemon
 * kept reading with no backoff. Now those attempts count for nothing,
 * reading and committing back off, and every lead lands once. */
Test(daemon, redis_refusing_commits_out_of_memory_poisons_nothing)
{
    h_cmd("CONFIG SET maxmemory-policy noeviction");
    int d = h_daemon_start(h_config("stream", "batch = 5; claim_idle_ms = 200; max_deliveries = 2;", CONF_BASIC));
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "OOM-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
    }
    /* The leads are in the stream: now every write is refused. */
    h_cmd("CONFIG SET maxmemory 1");
    h_cmd("CONFIG RESETSTAT");
    struct h_lead late = ia_lead("OOM-late", 60);
    redisReply *r = h_cmd_any("XADD %s:in * x y", H_PREFIX);
    cr_assert(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "OOM", 3) == 0, "Redis refuses writes now");
    h_sleep_ms(2000); /* 10 x claim_idle_ms x max_deliveries */
    redisReply *st = h_cmd("INFO commandstats");
    const char *ev = strstr(st->str, "cmdstat_evalsha:calls=");
    long long evals = ev ? atoll(ev + strlen("cmdstat_evalsha:calls=")) : 0;
    cr_assert(evals <= 40, "commits back off while Redis refuses them: %lld EVALSHA in 2 s", evals);
    cr_assert_eq(queue_len("d-ia"), 0, "nothing lands while Redis is out of memory");
    h_cmd("CONFIG SET maxmemory 0");
    h_send(&late, NULL, 0);
    h_wait_drained(15);
    h_daemon_stop(d);
    cr_assert_eq(dead_count(), 0, "leads Redis would not store are not poison");
    cr_assert_eq(queue_len("d-ia"), 21, "each lead once, after Redis has memory again");
    h_oracle();
}

/* More of this consumer's pending entries than one fence window: the old
 * fence listed the consumer's oldest pending entries ('-' '+', a window of
 * nleads x 4 + 1024) and answered not_owner for a batch entry past it,
 * without asking whose it was. 3 000 older entries are handed to the
 * daemon's consumer (XCLAIM, idle 0, claim_idle_ms far away); the new
 * leads after them must still be routed, once. */
Test(daemon, more_pending_entries_than_one_fence_window)
{
    int d = h_daemon_start(h_config("stream", "batch = 10; claim_idle_ms = 60000;", CONF_BASIC));
    struct h_lead first = ia_lead("FW-first", 60);
    h_send(&first, NULL, 0);
    H_WAIT(queue_len("d-ia") == 1, 10, "the first lead was not routed");
    redisReply *cons = h_cmd("XINFO CONSUMERS %s:in %s", H_PREFIX, H_GROUP);
    cr_assert_eq(cons->elements, 1, "one consumer: the daemon");
    redisReply *c0 = cons->element[0];
    char daemon_consumer[256] = "";
    for (size_t i = 0; i + 1 < c0->elements; i += 2)
        if (strcmp(c0->element[i]->str, "name") == 0)
            snprintf(daemon_consumer, sizeof daemon_consumer, "%s", c0->element[i + 1]->str);
    cr_assert(daemon_consumer[0], "the daemon's consumer name");
    /* Filler entries (not leads of the oracle), read by a ghost in the
     * same transaction (the daemon's blocked read must not get them), then
     * handed to the daemon. */
    redisContext *rc = h_redis();
    enum { FILLER = 3000 };
    redisAppendCommand(rc, "MULTI");
    for (int i = 0; i < FILLER; i++)
        redisAppendCommand(rc, "XADD %s:in * filler %d", H_PREFIX, i);
    redisAppendCommand(rc, "XREADGROUP GROUP %s ghost COUNT %d STREAMS %s:in >", H_GROUP, FILLER, H_PREFIX);
    redisAppendCommand(rc, "EXEC");
    redisReply *exec = NULL;
    for (int i = 0; i < FILLER + 3; i++) {
        redisReply *x = NULL;
        cr_assert_eq(redisGetReply(rc, (void **)&x), REDIS_OK);
        if (i < FILLER + 2)
            freeReplyObject(x);
        else
            exec = x;
    }
    cr_assert(exec && exec->type == REDIS_REPLY_ARRAY && exec->elements == FILLER + 1, "the transaction ran");
    redisReply *got = exec->element[FILLER];
    cr_assert(got->type == REDIS_REPLY_ARRAY && got->elements == 1);
    redisReply *ents = got->element[0]->element[1];
    cr_assert_eq(ents->elements, FILLER, "the ghost read the filler, not the daemon");
    for (size_t i = 0; i < ents->elements; i++)
        redisAppendCommand(rc, "XCLAIM %s:in %s %s 0 %s JUSTID", H_PREFIX, H_GROUP, daemon_consumer,
                           ents->element[i]->element[0]->str);
    for (size_t i = 0; i < ents->elements; i++) {
        redisReply *x = NULL;
        cr_assert_eq(redisGetReply(rc, (void **)&x), REDIS_OK);
        freeReplyObject(x);
    }
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "FW-%d", i);
        struct h_lead l = ia_lead(id, 60);
        h_send(&l, NULL, 0);
    }
    H_WAIT(queue_len("d-ia") == 51, 10, "leads past one fence window were refused: %lld of 51 routed",
           queue_len("d-ia"));
    /* The filler goes before the oracle counts what is left in the stream. */
    for (size_t i = 0; i < ents->elements; i++) {
        const char *id = ents->element[i]->element[0]->str;
        h_cmd("XACK %s:in %s %s", H_PREFIX, H_GROUP, id);
        h_cmd("XDEL %s:in %s", H_PREFIX, id);
    }
    freeReplyObject(exec);
    h_daemon_stop(d);
    cr_assert_eq(dead_count(), 0);
    h_oracle();
}

/* A rotation hash of the wrong type: the sync failed and was retried at
 * every read, silently, forever (nothing routed, nothing logged). Now the
 * daemon names the key and the fix, and exits 2: it cannot cure itself. */
Test(daemon, a_pick_state_key_of_the_wrong_type_is_named_and_exits_2)
{
    for (int tier = 0; tier <= 2; tier++)
        h_cmd("SET %s:rr:solar:%d oops", H_PREFIX, tier);
    struct h_lead l = ia_lead("WT-RR-1", 60);
    h_send(&l, NULL, 0);
    int d = h_daemon_start(h_config("stream", NULL, CONF_WEIGHTED_3_1));
    cr_assert_eq(h_daemon_wait_exit(d, 10), 2, "a key that retrying cannot fix: exit 2");
    const char *log = h_daemon_log_tail(d);
    cr_assert_not_null(strstr(log, H_PREFIX ":rr:solar:"), "the log names the key:\n%s", log);
    cr_assert_not_null(strstr(log, "delete or rename"), "the log says the fix:\n%s", log);
    cr_assert_eq(h_int("LLEN %s:dealer:w3", H_PREFIX) + h_int("LLEN %s:dealer:w1", H_PREFIX), 0);
}

/* A Redis that evicts (allkeys-lru under maxmemory) deleted cap counters,
 * records and pending leads, silently: leads lost, caps doubled. The
 * daemon now reads maxmemory-policy at every connect and refuses one that
 * evicts (exit 2, naming the fix) unless redis.allow_eviction = true. */
Test(daemon, an_evicting_redis_is_refused_unless_allowed)
{
    h_cmd("CONFIG SET maxmemory-policy allkeys-lru");
    int d = h_daemon_start(h_config("stream", NULL, CONF_BASIC));
    cr_assert_eq(h_daemon_wait_exit(d, 10), 2, "maxmemory-policy allkeys-lru: exit 2");
    cr_assert_not_null(strstr(h_daemon_log_tail(d), "noeviction"), "the log says the fix:\n%s",
                       h_daemon_log_tail(d));

    int d2 = h_daemon_start(h_config_redis(h_redis_port(), 30, "allow_eviction = true;", "stream", NULL, CONF_BASIC));
    struct h_lead l = ia_lead("EV-1", 60);
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    cr_assert_eq(queue_len("d-ia"), 1, "allowed: it routes");
    cr_assert_not_null(strstr(h_daemon_log_tail(d2), "allkeys-lru"), "and warns:\n%s", h_daemon_log_tail(d2));
    h_daemon_stop(d2);
    h_oracle();
}

/* The policy is read again at every reconnect: a Redis whose policy was
 * changed to one that evicts (or a replica promoted with another config)
 * stops the daemon at its next connect. */
Test(daemon, an_evicting_policy_found_at_a_reconnect_stops_the_daemon)
{
    int d = h_daemon_start(h_config("stream", NULL, CONF_BASIC));
    struct h_lead l = ia_lead("EV-2", 60);
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    h_cmd("CONFIG SET maxmemory-policy volatile-ttl");
    h_cmd("CLIENT KILL TYPE normal SKIPME yes");
    cr_assert_eq(h_daemon_wait_exit(d, 15), 2, "an evicting policy at a reconnect: exit 2");
    cr_assert_not_null(strstr(h_daemon_log_tail(d), "volatile-ttl"), "%s", h_daemon_log_tail(d));
    h_oracle();
}

/* Redis still loading its data (LOADING) when the daemon connects: the
 * setup commands were refused and the old code took that as success (no
 * group, no script, errors logged). Now a failed setup is tried again
 * (with backoff), said as a warning, and once Redis is up it routes. */
Test(daemon, a_redis_still_loading_is_waited_for)
{
    h_redis_restart_loading(100000, 60); /* several seconds: longer than startup_timeout (5 s) */
    redisReply *st = h_cmd("INFO persistence");
    cr_assert_not_null(strstr(st->str, "loading:1"), "the test needs Redis loading now");
    int d = h_daemon_start(h_config("stream", NULL, CONF_BASIC));
    int64_t end = h_now_ms() + 20000;
    while (strstr(h_cmd("INFO persistence")->str, "loading:1")) {
        cr_assert(h_now_ms() < end, "Redis did not finish loading in 20 s");
        h_sleep_ms(50);
    }
    struct h_lead l = ia_lead("LOAD-1", 60);
    h_send(&l, NULL, 0);
    h_wait_drained(15);
    cr_assert_eq(queue_len("d-ia"), 1);
    const char *log = h_daemon_log_tail(d);
    cr_assert_not_null(strstr(log, "LOADING"), "the daemon says Redis was loading:\n%s", log);
    cr_assert_null(strstr(log, "<3>"), "a loading Redis is not an error:\n%s", log);
    h_daemon_stop(d);
    h_oracle();
}

/* List mode under OOM: every take (a write) failed and the daemon said so
 * five times a second, for ever. Now the reads back off and the error is
 * said once per 10 s with a count; once Redis has memory, leads flow. */
Test(daemon, list_mode_read_errors_back_off_and_are_said_once)
{
    h_cmd("CONFIG SET maxmemory-policy noeviction");
    int d = h_daemon_start(h_config("list", NULL, CONF_BASIC));
    struct h_lead l = ia_lead("LOOM-1", 60);
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    h_sleep_ms(200);
    h_cmd("CONFIG SET maxmemory 1");
    h_cmd("CONFIG RESETSTAT");
    h_sleep_ms(3000);
    redisReply *st = h_cmd("INFO commandstats");
    h_cmd("CONFIG SET maxmemory 0");
    const char *log = h_daemon_log_tail(d);
    int said = 0;
    for (const char *p = log; (p = strstr(p, "reading the input")) != NULL; p++)
        said++;
    cr_assert_leq(said, 1, "read errors said %d times in 3 s:\n%s", said, log);
    const char *ev = strstr(st->str, "cmdstat_eval:calls=");
    long long takes = ev ? atoll(ev + strlen("cmdstat_eval:calls=")) : 0;
    const char *bl = strstr(st->str, "cmdstat_blmove:calls=");
    takes += bl ? atoll(bl + strlen("cmdstat_blmove:calls=")) : 0;
    cr_assert_leq(takes, 8, "%lld takes in 3 s of OOM: no backoff\n%s", takes, st->str);
    struct h_lead l2 = ia_lead("LOOM-2", 60);
    h_send(&l2, NULL, 0);
    h_wait_drained(15);
    cr_assert_eq(queue_len("d-ia"), 2);
    h_daemon_stop(d);
    h_oracle();
}
