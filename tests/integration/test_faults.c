/* test_faults.c - the fault suite: real redis-server and leadrouterd
 * processes, and the faults a production queue consumer meets: kill -9 of
 * the daemon at random instants, its connections killed (CLIENT KILL), a
 * daemon frozen (SIGSTOP) while another takes its leads over, a hung server
 * (CLIENT PAUSE, DEBUG SLEEP, a connection that never answers again), dead
 * list-mode consumers, Redis absent at start-up, refused credentials.
 *
 * After each scenario the oracle checks that every lead sent is in exactly
 * one place (lost = duplicated = cap overruns = 0) and prints one line,
 *   FAULT <scenario>: sent=N in_dealer_queues=N unassigned=N dead=N lost=N duplicated=N cap_overruns=N
 * which tools/fault-suite collects. The random schedules take their seed
 * from LR_FAULT_SEED when set (printed either way, to replay a failure).
 * Every loop is bounded in count and time. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

/* One timeout for every test: the Criterion runner (boxfort) leaks a
 * timeout record when a test with an earlier deadline starts while one
 * with a later deadline runs (LeakSanitizer then fails the ASan run). The
 * waits inside each test are bounded much tighter than this. */
TestSuite(faults, .init = h_setup, .fini = h_teardown, .timeout = 120);

/* clang-format off */
#define DEFAULTS "defaults = { timezone = \"UTC\"; };\n"
#define IA_DEALER(id, contract) \
    "{ id = \"" id "\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { " contract " }; }"
/* Two capped dealers (day caps, UTC) that win most picks until they are
 * full, and two uncapped ones, so that every lead can be placed and a cap
 * overrun under faults would show. */
#define CAP_A 40
#define CAP_B 90
#define CONF_FAULTS DEFAULTS \
    "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n" \
    "dealers = ( " IA_DEALER("f-cap-a", "weight = 4; caps = { day = 40; };") ", " \
                   IA_DEALER("f-cap-b", "weight = 3; caps = { day = 90; };") ", " \
                   IA_DEALER("f-open-1", "weight = 2;") ", " IA_DEALER("f-open-2", "weight = 1;") " );\n"
/* clang-format on */

/* ---- helpers -------------------------------------------------------- */

/* splitmix64: a small seeded generator, so a failing schedule replays. */
static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A number in [lo, hi]. */
static int rng_range(int lo, int hi)
{
    return lo + (int)(rng_next() % (uint64_t)(hi - lo + 1));
}

static void rng_seed(const char *scenario)
{
    const char *env = getenv("LR_FAULT_SEED");
    uint64_t seed = env && *env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    rng_state = seed;
    fprintf(stderr, "[faults] %s: seed %llu (LR_FAULT_SEED=%llu replays this schedule)\n", scenario,
            (unsigned long long)seed, (unsigned long long)seed);
}

/* Leads F-<n>: solar in Iowa, each with its own phone and email, so that
 * the log check (no contact data) means something under faults too. */
static int next_lead;

static struct h_lead fault_lead(char id[32], char phone[32], char email[48])
{
    int n = next_lead++;
    snprintf(id, 32, "F-%d", n);
    snprintf(phone, 32, "+1 515 555 %04d", n % 10000);
    snprintf(email, 48, "lead%d@example.com", n);
    return (struct h_lead){
        .id = id, .niche = "solar", .state = "IA", .score = 60, .phone = phone, .email = email};
}

static void send_leads(int n)
{
    for (int i = 0; i < n; i++) {
        char id[32], phone[32], email[48];
        struct h_lead l = fault_lead(id, phone, email);
        h_send(&l, NULL, 0);
    }
}

/* n leads (at most BURST_MAX) in one transaction: a backlog at once. */
#define BURST_MAX 150
static void send_burst(int n)
{
    static struct h_lead leads[BURST_MAX];
    static char ids[BURST_MAX][32], phones[BURST_MAX][32], emails[BURST_MAX][48];
    cr_assert(n > 0 && n <= BURST_MAX);
    for (int i = 0; i < n; i++)
        leads[i] = fault_lead(ids[i], phones[i], emails[i]);
    h_send_atomic(leads, (size_t)n);
}

/* Day caps: the oracle counts overruns; the test must not span UTC midnight. */
static void caps_watch(void)
{
    h_avoid_utc_midnight(120);
    h_oracle_cap("f-cap-a", CAP_A);
    h_oracle_cap("f-cap-b", CAP_B);
}

static long long queue_len(const char *dealer)
{
    return h_int("LLEN %s:dealer:%s", H_PREFIX, dealer);
}

/* A cap counter must equal what the dealer received: a commit counted
 * twice, or a push not counted, would show here before it shows as an
 * overrun. */
static void check_cap_counter(const char *dealer)
{
    time_t s = (time_t)(h_redis_time_ms() / 1000);
    struct tm tm;
    char day[16];
    gmtime_r(&s, &tm);
    strftime(day, sizeof day, "%Y%m%d", &tm);
    redisReply *r = h_cmd("GET %s:cap:%s:day:%s", H_PREFIX, dealer, day);
    long long counted = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    cr_assert_eq(counted, queue_len(dealer), "cap counter of %s is %lld, its queue holds %lld", dealer,
                 counted, queue_len(dealer));
}

/* The FAULT line and the oracle; then what every scenario here expects on
 * top of it: all leads are routable, so every one is in a dealer queue
 * (none unassigned, none dead), and the cap counters are exact. */
static void fault_oracle(const char *scenario)
{
    struct h_report r;
    h_oracle_fault(scenario, &r);
    cr_assert_eq(r.in_dealers, r.sent, "%s: %zu of %zu leads are in dealer queues (unassigned %zu, dead %zu)",
                 scenario, r.in_dealers, r.sent, r.unassigned, r.dead);
    check_cap_counter("f-cap-a");
    check_cap_counter("f-cap-b");
}

/* Entries pending in the input group, over all consumers. */
static long long pending_total(void)
{
    redisReply *r = h_cmd_any("XPENDING %s:in %s", H_PREFIX, H_GROUP);
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER)
        return 0;
    return r->element[0]->integer;
}

/* Entries pending for the consumer of daemon pid (consumer names are
 * host:pid:random). */
static long long pending_of(pid_t pid)
{
    redisReply *r = h_cmd_any("XPENDING %s:in %s", H_PREFIX, H_GROUP);
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 4 || r->element[3]->type != REDIS_REPLY_ARRAY)
        return 0;
    char mark[32];
    snprintf(mark, sizeof mark, ":%d:", (int)pid);
    const redisReply *c = r->element[3];
    for (size_t i = 0; i < c->elements; i++) {
        const redisReply *e = c->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements == 2 && strstr(e->element[0]->str, mark))
            return strtoll(e->element[1]->str, NULL, 10);
    }
    return 0;
}

/* The value of `key=` in a CLIENT LIST line, copied into out. */
static void client_field(const char *line, const char *key, char *out, size_t len)
{
    char want[32];
    snprintf(want, sizeof want, " %s=", key);
    const char *v = strstr(line, want);
    size_t n = 0;
    if (v) {
        v += strlen(want);
        while (v[n] && v[n] != ' ' && v[n] != '\n' && v[n] != '\r')
            n++;
    }
    snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), v ? v : "");
}

/* The clients other than the harness's own connection: their ids (up to
 * max; returns how many there are), and how many of them are blocked
 * (flag b) in the command cmd (e.g. "xreadgroup"). */
static int other_clients(long long *ids, int max, const char *cmd, int *blocked)
{
    long long self = h_int("CLIENT ID");
    redisReply *r = h_cmd("CLIENT LIST TYPE normal");
    int n = 0;
    if (blocked)
        *blocked = 0;
    for (const char *line = r->str; line && *line;) {
        const char *end = strchr(line, '\n');
        long long id = strncmp(line, "id=", 3) == 0 ? strtoll(line + 3, NULL, 10) : -1;
        if (id != self && id >= 0) {
            if (n < max)
                ids[n] = id;
            n++;
            char flags[32], what[64];
            client_field(line, "flags", flags, sizeof flags);
            client_field(line, "cmd", what, sizeof what);
            if (blocked && cmd && strchr(flags, 'b') && strcmp(what, cmd) == 0)
                (*blocked)++;
        }
        line = end ? end + 1 : NULL;
    }
    return n;
}

/* How many clients are blocked in cmd. */
static int blocked_in(const char *cmd)
{
    long long ids[16];
    int b;
    other_clients(ids, 16, cmd, &b);
    return b;
}

static int count_in(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* ---- 1. kill -9 at random instants ---------------------------------- */

/* A producer adds leads all along; each daemon is killed at a random
 * instant of its life (connecting, reading, routing, committing) and a new
 * one started. What a killed daemon read but did not commit stays
 * pending under its consumer and is claimed by a later daemon once idle
 * past claim_idle_ms. max_deliveries is high so that no lead turns
 * poison just by being in flight at several kills. */
Test(faults, kill9_daemon_at_random_instants)
{
    caps_watch();
    rng_seed("kill9");
    const char *conf =
        h_config("stream", "batch = 10; claim_idle_ms = 300; max_deliveries = 100;", CONF_FAULTS);
    int kills = 0, with_pending = 0;
    for (int round = 0; round < 30; round++) {
        int d = h_daemon_start(conf);
        /* A trickle of leads for a random part of the daemon's life, then
         * a burst and the kill a few ms later: most kills then land while
         * it works through the burst (read, routed, not yet committed),
         * some while it starts, idles or commits. */
        int64_t until = h_now_ms() + rng_range(0, 300);
        do {
            send_leads(rng_range(1, 5));
            h_sleep_ms(rng_range(1, 8));
        } while (h_now_ms() < until);
        send_burst(rng_range(50, BURST_MAX));
        h_sleep_ms(rng_range(0, 4));
        h_daemons_check_alive(); /* a daemon that crashed by itself fails the test */
        h_daemon_kill9(d);
        h_daemon_check_log(d);
        kills++;
        with_pending += pending_of(h_daemon_pid(d)) > 0;
    }
    fprintf(
        stderr,
        "[faults] kill9: %d kills, %d of them with leads in flight; %zu outcomes before the last daemon\n",
        kills, with_pending, h_outcomes());
    send_leads(50);
    int d = h_daemon_start(conf);
    h_wait_drained(40);
    h_daemon_stop(d);
    cr_assert_geq(kills, 20);
    fault_oracle("kill9_daemon_at_random_instants");
}

/* ---- 2. CLIENT KILL -------------------------------------------------- */

/* The daemon's connections are killed twenty times while leads flow: all
 * of them at once, or one chosen at random (the other one stays up). A
 * commit whose reply is lost is sent again and answers stale. */
Test(faults, client_kill_connections_repeatedly)
{
    caps_watch();
    rng_seed("client_kill");
    int d = h_daemon_start(h_config("stream", "batch = 10; claim_idle_ms = 500;", CONF_FAULTS));
    long long killed = 0;
    for (int k = 0; k < 20; k++) {
        send_leads(rng_range(10, 30));
        long long ids[16];
        /* Both connections up again, so that every kill hits one. */
        H_WAIT(other_clients(ids, 16, NULL, NULL) >= 2, 15, "the daemon did not reconnect (kill %d)", k);
        h_sleep_ms(rng_range(0, 150));
        int n = other_clients(ids, 16, NULL, NULL);
        long long got;
        if (k % 2 == 0 || n == 0)
            got = h_int("CLIENT KILL TYPE normal SKIPME yes");
        else
            got = h_int("CLIENT KILL ID %lld", ids[rng_range(0, (n < 16 ? n : 16) - 1)]);
        cr_assert_geq(got, 1, "CLIENT KILL %d killed nothing", k);
        killed += got;
    }
    fprintf(stderr, "[faults] client_kill: %lld connections killed in 20 rounds\n", killed);
    send_leads(50);
    h_wait_drained(30);
    h_daemon_stop(d);
    fault_oracle("client_kill_connections_repeatedly");
}

/* ---- 3. SIGSTOP: fencing -------------------------------------------- */

/* Daemon A is frozen (SIGSTOP) while blocked in XREADGROUP; 30 leads then
 * arrive in one transaction, so Redis hands all of them to A's read: they
 * are pending under A's consumer. Daemon B claims them once idle past
 * claim_idle_ms and commits them. Then A wakes up (SIGCONT) with the read
 * reply in its socket, routes those 30 leads and tries to commit them:
 * the commit's fence must refuse every one (not_owner / stale), so the
 * dealer queues still hold each lead once. Both then go on routing. */
Test(faults, sigstop_daemon_is_fenced_after_takeover)
{
    caps_watch();
    /* One config each: each daemon has its own admin socket. */
    const char *conf_a = h_config("stream", "batch = 50; claim_idle_ms = 1000;", CONF_FAULTS);
    const char *conf_b = h_config("stream", "batch = 50; claim_idle_ms = 1000;", CONF_FAULTS);
    int a = h_daemon_start(conf_a);
    H_WAIT(blocked_in("xreadgroup") == 1, 15, "daemon A never blocked in XREADGROUP");
    h_daemon_signal(a, SIGSTOP);
    struct h_lead leads[30];
    char ids[30][32], phones[30][32], emails[30][48];
    for (int i = 0; i < 30; i++)
        leads[i] = fault_lead(ids[i], phones[i], emails[i]);
    h_send_atomic(leads, 30);
    H_WAIT(pending_of(h_daemon_pid(a)) == 30, 5, "the frozen daemon A holds %lld pending leads, want 30",
           pending_of(h_daemon_pid(a)));

    int b = h_daemon_start(conf_b);
    H_WAIT(h_outcomes() == 30 && pending_total() == 0, 20,
           "daemon B did not take over A's leads (%zu outcomes, %lld pending)", h_outcomes(),
           pending_total());
    cr_assert_eq(pending_of(h_daemon_pid(a)), 0);
    size_t before = h_outcomes();

    h_daemon_signal(a, SIGCONT);
    /* A refuses its 30 leads one by one; wait for its word on them. */
    int64_t end = h_now_ms() + 15000;
    int fenced = 0;
    while (h_now_ms() < end) {
        const char *log = h_daemon_log_tail(a);
        fenced = count_in(log, "not_owner") + count_in(log, "stale");
        if (fenced >= 30)
            break;
        h_daemons_check_alive();
        h_sleep_ms(50);
    }
    h_sleep_ms(300);
    cr_assert_eq(h_outcomes(), before, "the woken daemon committed %zu leads it no longer owned",
                 h_outcomes() - before);
    cr_assert_geq(fenced, 30, "daemon A should report its 30 leads as not_owner/stale; log tail:\n%s",
                  h_daemon_log_tail(a));

    send_leads(60);
    h_wait_drained(20);
    h_daemon_stop(a);
    h_daemon_stop(b);
    fault_oracle("sigstop_daemon_is_fenced_after_takeover");
}

/* ---- 4. hung server -------------------------------------------------- */

/* Leads are flowing when Redis stops answering everyone for hang_ms: the
 * daemon must come back by itself once the server does (its watchdog may
 * drop and remake its connections meanwhile; a commit whose reply was lost
 * is sent again) and route everything exactly once. hang() must not use
 * the harness connection while the server is hung, except for the command
 * that hangs it. */
static void hung_server(const char *scenario, void (*hang)(void), int hang_ms)
{
    caps_watch();
    int d = h_daemon_start(h_config("stream", "batch = 10; claim_idle_ms = 1000;", CONF_FAULTS));
    /* A backlog the daemon needs a few hundred commits for, enqueued at
     * once, so that the hang comes while it is busy. */
    enum { CHUNK = 500, BACKLOG = 2000 };
    static struct h_lead chunk[CHUNK];
    static char ids[CHUNK][32], phones[CHUNK][32], emails[CHUNK][48];
    for (int sent = 0; sent < BACKLOG; sent += CHUNK) {
        for (int i = 0; i < CHUNK; i++)
            chunk[i] = fault_lead(ids[i], phones[i], emails[i]);
        h_send_atomic(chunk, CHUNK);
    }
    H_WAIT(h_outcomes() >= 20, 15, "the daemon did not start routing");
    size_t at_hang = h_outcomes();
    cr_assert_lt(at_hang, (size_t)BACKLOG,
                 "the daemon had routed everything before the hang (no mid-stream)");
    int64_t t = h_now_ms();
    hang();
    /* No Redis commands while it hangs; the daemon must stay alive. */
    while (h_now_ms() - t < hang_ms + 200) {
        h_daemons_check_alive();
        h_sleep_ms(50);
    }
    fprintf(stderr, "[faults] %s: %zu of %d routed when the server hung, %zu when it answered again\n",
            scenario, at_hang, BACKLOG, h_outcomes());
    send_leads(100);
    h_wait_drained(30);
    h_daemon_stop(d);
    fault_oracle(scenario);
}

static void client_pause_5s(void)
{
    h_cmd("CLIENT PAUSE 5000 ALL");
}

static void debug_sleep_3s(void)
{
    /* Blocks this connection (and the whole server) for 3 s. */
    h_cmd("DEBUG SLEEP 3");
}

Test(faults, hung_server_client_pause)
{
    hung_server("hung_server_client_pause", client_pause_5s, 5000);
}

Test(faults, hung_server_debug_sleep)
{
    hung_server("hung_server_debug_sleep", debug_sleep_3s, 3000);
}

/* The daemon talks to Redis through a proxy. Mid-stream, every connection
 * open at that moment hangs for good: held open, never answered, as with
 * a server or network that died without a FIN. New connections work.
 * hiredis has no timeouts: only the daemon's own watchdog can notice,
 * drop the hung connections and reconnect; a daemon without one stalls
 * here forever. */
Test(faults, hung_connection_is_dropped_by_the_watchdog)
{
    caps_watch();
    int port = h_proxy_start();
    int d = h_daemon_start(h_config_port(port, "stream", "batch = 10; claim_idle_ms = 1000;", CONF_FAULTS));
    send_leads(300);
    H_WAIT(h_outcomes() >= 20, 15, "the daemon did not start routing");
    h_proxy_hang();
    size_t at_hang = h_outcomes();
    send_leads(100);
    h_wait_drained(30);
    fprintf(stderr, "[faults] hung_connection: %zu of 400 routed when its connections hung\n", at_hang);
    h_daemon_stop(d);
    fault_oracle("hung_connection_is_dropped_by_the_watchdog");
}

/* The path to Redis freezes (connections cut, new connects' SYNs
 * dropped) while leads flow: hiredis 0.14 has no connect timeout, so a
 * reconnect hung in connect until the kernel gave up (~130 s), and
 * SIGTERM then waited on it forever. Now a connect has a deadline of its
 * own and a stop is bounded (10 s, README): the daemon exits 0, the leads
 * it could not commit stay pending, and another daemon routes them once. */
Test(faults, shutdown_is_bounded_while_a_connect_hangs)
{
    caps_watch();
    int port = h_proxy_start();
    const char *via_proxy = h_config_port(port, "stream", "batch = 10; claim_idle_ms = 1000;", CONF_FAULTS);
    int d = h_daemon_start(via_proxy);
    send_leads(2000);
    H_WAIT(h_outcomes() >= 100, 15, "the daemon did not start routing");
    h_proxy_freeze(); /* commits in flight lose their connection; the reconnect hangs */
    size_t at_freeze = h_outcomes();
    h_sleep_ms(500);
    int64_t t0 = h_now_ms();
    h_daemon_signal(d, SIGTERM);
    cr_assert_eq(h_daemon_wait_exit(d, 30), 0, "SIGTERM while the path is frozen: exit 0\n%s", h_daemon_log_tail(d));
    int64_t took = h_now_ms() - t0;
    fprintf(stderr, "[faults] shutdown_bound: exited %lld ms after SIGTERM; %zu of 2000 routed at the freeze\n",
            (long long)took, at_freeze);
    cr_assert(took <= 12000, "the stop took %lld ms (bound: 10 s)\n%s", (long long)took, h_daemon_log_tail(d));
    int d2 = h_daemon_start(h_config("stream", "batch = 10; claim_idle_ms = 1000;", CONF_FAULTS));
    h_wait_drained(30);
    h_daemon_stop(d2);
    fault_oracle("shutdown_is_bounded_while_a_connect_hangs");
}

/* Without a stop: a connect that hangs is given up after its deadline and
 * tried again, instead of waiting for the kernel's SYN timeout. */
Test(faults, a_hanging_connect_is_given_up)
{
    int port = h_proxy_start();
    int d = h_daemon_start(h_config_port(port, "stream", NULL, CONF_FAULTS));
    send_leads(20);
    h_wait_drained(15);
    h_proxy_freeze();
    H_WAIT(strstr(h_daemon_log_tail(d), "connect has not completed") != NULL, 10,
           "a hanging connect was never given up:\n%s", h_daemon_log_tail(d));
    h_daemon_stop(d);
    fault_oracle("a_hanging_connect_is_given_up");
}

/* ---- a large config ------------------------------------------------- */

#define BIG_DEALERS 100000
#define BIG_ZIPS 10000 /* each zip covered by BIG_DEALERS / BIG_ZIPS dealers */

/* 100 000 dealers, each on one Iowa zip (5xxxx), weighted round robin. */
static char *big_routing(void)
{
    size_t cap = (size_t)BIG_DEALERS * 160 + 4096, n = 0;
    char *s = malloc(cap);
    cr_assert_not_null(s);
    n += (size_t)snprintf(s + n, cap - n,
                          DEFAULTS "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\ndealers = (\n");
    for (int i = 0; i < BIG_DEALERS; i++)
        n += (size_t)snprintf(s + n, cap - n,
                              "%s{ id = \"big-%06d\"; niches = [ \"solar\" ]; territory = { zips = [ \"5%04d\" ]; }; "
                              "contract = { weight = %d; }; }\n",
                              i ? "," : "", i, i % BIG_ZIPS, 1 + i % 3);
    snprintf(s + n, cap - n, ");\n");
    return s;
}

/* Leads of the big config, each on a covered zip. */
static void send_big(int from, int n)
{
    for (int i = from; i < from + n; i++) {
        char id[32], zip[8];
        snprintf(id, sizeof id, "BIG-%d", i);
        snprintf(zip, sizeof zip, "5%04d", (i * 37) % BIG_ZIPS);
        struct h_lead l = {.id = id, .niche = "solar", .state = "IA", .zip = zip, .score = 60};
        h_send(&l, NULL, 0);
    }
}

/* 50 000 dealers livelocked the daemon: a linear dealer lookup per
 * dealer at reload and per rotation field at the sync held the loop for
 * seconds, the watchdog dropped the connections as hung, the reconnect
 * synced again, and so on: 0 of 200 leads routed in 60 s. With 100 000
 * dealers, a rotation hash holding all of them, and two reloads under
 * load, every lead is routed once and no connection is taken for hung. */
Test(faults, a_100000_dealer_config_starts_reloads_and_routes)
{
    redisContext *rc = h_redis();
    for (int i = 0; i < BIG_DEALERS; i++)
        redisAppendCommand(rc, "HSET %s:rr:solar:1 big-%06d %d", H_PREFIX, i, i % 7 - 3);
    for (int i = 0; i < BIG_DEALERS; i++) {
        redisReply *x = NULL;
        cr_assert_eq(redisGetReply(rc, (void **)&x), REDIS_OK);
        freeReplyObject(x);
    }
    char *routing = big_routing();
    const char *conf = h_config("stream", "batch = 50;", routing);
    free(routing);
    int64_t t0 = h_now_ms();
    int d = h_daemon_start(conf);
    send_big(0, 100);
    h_wait_drained(90);
    int64_t started = h_now_ms() - t0;
    for (int k = 0; k < 2; k++) {
        h_daemon_signal(d, SIGHUP);
        send_big(100 + k * 50, 50);
    }
    H_WAIT(strstr(h_daemon_log_tail(d), "generation 3") != NULL, 60, "two reloads did not finish:\n%s",
           h_daemon_log_tail(d));
    h_wait_drained(60);
    fprintf(stderr, "[faults] big_config: %d dealers, first 100 leads routed %lld ms after the start\n", BIG_DEALERS,
            (long long)started);
    /* With a linear lookup per dealer and per rotation field, the start
     * alone took 31 s here (0.7 s by hash); the bound leaves room for
     * sanitizers and a loaded machine. */
    cr_assert(started < 20000, "the first leads took %lld ms with %d dealers", (long long)started, BIG_DEALERS);
    const char *log = h_daemon_log_tail(d);
    cr_assert_null(strstr(log, "server hung"), "a busy loop was taken for a hung server:\n%s", log);
    h_daemon_stop(d);
    fault_oracle("a_100000_dealer_config_starts_reloads_and_routes");
}

/* ---- 5. list mode: dead consumers ----------------------------------- */

static long long processing_len(const char *consumer)
{
    return h_int("LLEN %s:in:processing:%s", H_PREFIX, consumer);
}

/* The processing list of daemon pid, if it holds anything: its name. */
static bool processing_of(pid_t pid, char *name, size_t len)
{
    redisReply *r = h_cmd("KEYS %s:in:processing:*:%d:*", H_PREFIX, (int)pid);
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return false;
    snprintf(name, len, "%s", r->element[0]->str);
    return true;
}

/* Built by hand: a consumer that moved 20 leads into its processing list
 * and vanished (no <p>:consumer:<name> key) is recovered by a running daemon
 * within claim_idle_ms and a few seconds, each lead routed once. A
 * consumer whose alive key still exists is left alone until that key goes. */
Test(faults, list_dead_consumer_processing_list_recovered)
{
    caps_watch();
    const char *conf = h_config("list", "claim_idle_ms = 500;", CONF_FAULTS);
    for (int i = 0; i < 20; i++) {
        char id[32], phone[32], email[48];
        struct h_lead l = fault_lead(id, phone, email);
        struct h_buf b = h_track(&l);
        h_int("LPUSH %s:in:processing:ghost-1 %b", H_PREFIX, b.p, b.len);
    }
    for (int i = 0; i < 10; i++) {
        char id[32], phone[32], email[48];
        struct h_lead l = fault_lead(id, phone, email);
        struct h_buf b = h_track(&l);
        h_int("LPUSH %s:in:processing:alive-1 %b", H_PREFIX, b.p, b.len);
    }
    h_cmd("SET %s:consumer:alive-1 1 EX 300", H_PREFIX);
    int d = h_daemon_start(conf);
    H_WAIT(processing_len("ghost-1") == 0 && h_outcomes() == 20, 10,
           "the dead consumer's processing list was not recovered (%lld left, %zu outcomes)",
           processing_len("ghost-1"), h_outcomes());
    /* Several recovery rounds later, the live consumer's list is intact. */
    h_sleep_ms(2000);
    cr_assert_eq(processing_len("alive-1"), 10, "a consumer with an alive key lost leads to recovery");
    cr_assert_eq(h_outcomes(), 20);
    h_cmd("DEL %s:consumer:alive-1", H_PREFIX);
    h_wait_drained(10);
    h_daemon_stop(d);
    fault_oracle("list_dead_consumer_processing_list_recovered");
}

/* Two list-mode daemons, A and B, route `warmup` leads; then, both frozen
 * while blocked in BLMOVE on an empty input, two leads arrive at once and
 * Redis moves one into each processing list. Returns with both frozen and
 * A's processing list (holding its lead) in proc. */
static void catch_a_holding(int warmup, int *a, int *b, char *proc, size_t len)
{
    *a = h_daemon_start(h_config("list", "claim_idle_ms = 1000;", CONF_FAULTS));
    *b = h_daemon_start(h_config("list", "claim_idle_ms = 1000;", CONF_FAULTS));
    send_leads(warmup);
    h_wait_drained(15);
    H_WAIT(blocked_in("blmove") == 2, 10, "the two daemons are not both waiting in BLMOVE");
    h_daemon_signal(*a, SIGSTOP);
    h_daemon_signal(*b, SIGSTOP);
    struct h_lead two[2];
    char ids[2][32], phones[2][32], emails[2][48];
    for (int i = 0; i < 2; i++)
        two[i] = fault_lead(ids[i], phones[i], emails[i]);
    h_send_atomic(two, 2);
    proc[0] = 0;
    H_WAIT(processing_of(h_daemon_pid(*a), proc, len), 5, "frozen daemon A holds no lead");
}

/* For real: two list-mode daemons share the input; A is killed (kill -9)
 * while its processing list holds a lead it took, between two runs of
 * leads. To catch A holding one, both are frozen while blocked in BLMOVE
 * on an empty input and two leads arrive at once: Redis moves one into
 * each processing list. A is killed as it stands, B thawed: B must
 * recover A's list once A's alive key has expired. */
Test(faults, list_kill9_daemon_mid_stream)
{
    caps_watch();
    int a, b;
    char proc[256];
    catch_a_holding(100, &a, &b, proc, sizeof proc);
    cr_assert_eq(h_int("LLEN %s", proc), 1);
    h_daemon_kill9(a);
    h_daemon_check_log(a);
    h_daemon_signal(b, SIGCONT);
    send_leads(100);
    h_wait_drained(25);
    cr_assert_eq(h_int("EXISTS %s", proc), 0, "the killed daemon's processing list is still there");
    h_daemon_stop(b);
    fault_oracle("list_kill9_daemon_mid_stream");
}

/* List mode, frozen instead of killed: A is caught holding a lead as
 * above, then stays frozen past its alive key's lifetime; B moves A's
 * processing list back to the input and routes the lead. When A wakes it
 * still has that lead and commits it: the commit's fence (the lead is no
 * longer in A's processing list) must refuse it. */
Test(faults, list_sigstop_daemon_is_fenced_after_takeover)
{
    caps_watch();
    int a, b;
    char proc[256];
    catch_a_holding(50, &a, &b, proc, sizeof proc);
    h_daemon_signal(b, SIGCONT);
    H_WAIT(h_drained() && h_outcomes() == 52, 20, "B did not take over A's lead (%zu outcomes of 52)",
           h_outcomes());
    size_t before = h_outcomes();
    h_daemon_signal(a, SIGCONT);
    int64_t end = h_now_ms() + 10000;
    int fenced = 0;
    while (h_now_ms() < end && fenced == 0) {
        const char *log = h_daemon_log_tail(a);
        fenced = count_in(log, "not_owner") + count_in(log, "stale");
        h_daemons_check_alive();
        h_sleep_ms(50);
    }
    h_sleep_ms(300);
    cr_assert_eq(h_outcomes(), before, "the woken daemon committed a lead it no longer held");
    cr_assert_geq(fenced, 1, "daemon A should report its lead as not_owner/stale; log tail:\n%s",
                  h_daemon_log_tail(a));
    send_leads(50);
    h_wait_drained(15);
    h_daemon_stop(a);
    h_daemon_stop(b);
    fault_oracle("list_sigstop_daemon_is_fenced_after_takeover");
}

/* ---- 6. start-up and credentials ------------------------------------ */

/* Redis is down when the daemon starts and comes up 3 s later, within
 * redis.startup_timeout: the daemon keeps trying and routes everything. */
Test(faults, daemon_started_before_redis)
{
    caps_watch();
    int port = h_redis_port();
    h_redis_kill9();
    int d = h_daemon_start(h_config_redis(port, 20, NULL, "stream", "batch = 10;", CONF_FAULTS));
    for (int i = 0; i < 30; i++) { /* 3 s without Redis: it must keep trying */
        h_daemons_check_alive();
        h_sleep_ms(100);
    }
    h_redis_start_again(false);
    send_leads(200);
    h_wait_drained(20);
    h_daemon_stop(d);
    fault_oracle("daemon_started_before_redis");
}

#define SECRET "fault-suite-pass-7"

/* Redis wants a password: the right one routes; a wrong one is a
 * configuration error: exit 2 with a message that says so (and does not
 * echo the password). */
Test(faults, wrong_password_exits_2)
{
    h_cmd("CONFIG SET requirepass %s", SECRET);
    int good = h_daemon_start(
        h_config_redis(h_redis_port(), 5, "password = \"" SECRET "\";", "stream", NULL, CONF_FAULTS));
    send_leads(20);
    h_wait_drained(15);
    h_daemon_stop(good);

    int bad = h_daemon_start(
        h_config_redis(h_redis_port(), 5, "password = \"not-" SECRET "\";", "stream", NULL, CONF_FAULTS));
    int rc = h_daemon_wait_exit(bad, 10);
    const char *log = h_daemon_log_tail(bad);
    cr_assert_eq(rc, 2, "a wrong password: exit 2, got %d; log tail:\n%s", rc, log);
    cr_assert(strstr(log, "WRONGPASS") != NULL && strstr(log, "password") != NULL,
              "the message names the refusal and the setting to check; log tail:\n%s", log);
    cr_assert(strstr(log, "not-" SECRET) == NULL, "the log holds the configured password");
    h_daemon_check_log(bad);
    fault_oracle("wrong_password_exits_2");
}

/* Redis wants a password and the config has none: the same configuration
 * error (NOAUTH), the same exit 2, not a daemon that retries for ever. */
Test(faults, missing_password_exits_2)
{
    h_cmd("CONFIG SET requirepass %s", SECRET);
    int d = h_daemon_start(h_config("stream", NULL, CONF_FAULTS));
    int rc = h_daemon_wait_exit(d, 15);
    cr_assert_eq(rc, 2, "no password for a Redis that wants one: exit 2, got %d; log tail:\n%s", rc,
                 h_daemon_log_tail(d));
    h_daemon_check_log(d);
    fault_oracle("missing_password_exits_2");
}

/* An ACL user that may log in but not run the daemon's commands: NOPERM
 * is a configuration error too (exit 2, clear message). */
Test(faults, noperm_user_exits_2)
{
    h_cmd("ACL SETUSER lr-ro on >ro-pass ~* +@read +ping +auth");
    int d = h_daemon_start(h_config_redis(h_redis_port(), 5, "username = \"lr-ro\"; password = \"ro-pass\";",
                                          "stream", NULL, CONF_FAULTS));
    int rc = h_daemon_wait_exit(d, 15);
    const char *log = h_daemon_log_tail(d);
    cr_assert_eq(rc, 2, "a user without the permissions it needs: exit 2, got %d; log tail:\n%s", rc, log);
    cr_assert(strstr(log, "NOPERM") != NULL, "the message names the refusal; log tail:\n%s", log);
    h_daemon_check_log(d);
    fault_oracle("noperm_user_exits_2");
}
