/* harness.h - end-to-end test harness: a real redis-server and real
 * leadrouterd processes per test, lead builders, queue readers and the
 * oracle that checks SPEC section 4's guarantee (every lead in exactly one
 * place) at the end of every test.
 *
 * One environment per test process: Criterion runs each test in its own
 * process, so the state lives in harness.c's globals. Helpers fail the test
 * themselves (cr_assert) on anything unexpected; every wait is bounded. */
#ifndef LR_TESTS_HARNESS_H
#define LR_TESTS_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <criterion/criterion.h>
#include <hiredis/hiredis.h>

/* The key prefix every test config sets (not the default "lr", so a daemon
 * that ignores `prefix` fails loudly). */
#define H_PREFIX "itp"
#define H_GROUP "leadrouter"

/* ---- fixtures ------------------------------------------------------- */

/* .init: a temp dir, a redis-server on a free loopback port inside it, and
 * a connection to it. .fini: leftover daemons killed, Redis stopped, the
 * dir removed. h_teardown may be called twice. */
void h_setup(void);
void h_teardown(void);

/* The test's Redis: port and a synchronous connection (owned by the harness). */
int h_redis_port(void);
pid_t h_redis_pid(void);
const char *h_dir(void);
redisContext *h_redis(void);

/* A command that must succeed (not NULL, not an error reply); the reply is
 * owned by the harness and freed at teardown. */
redisReply *h_cmd(const char *fmt, ...);
/* The same, for an integer reply. */
long long h_int(const char *fmt, ...);
/* Entries of <p>:in not committed yet (pending or not delivered). */
long long h_in_left(void);
/* A command whose reply may be an error (never NULL); freed at teardown. */
redisReply *h_cmd_any(const char *fmt, ...);

/* ---- config and daemon ---------------------------------------------- */

/* Writes a config into the temp dir: redis (this test's port), prefix
 * H_PREFIX, an admin socket of its own in the dir, input.mode = mode
 * ("stream" or "list") plus input_extra inside the input group (e.g.
 * "batch = 5;", or NULL), then routing verbatim (niches, dealers, routing,
 * dedup, limits, ...). Sends made after this call use mode. Returns the
 * path (owned by the harness). */
const char *h_config(const char *mode, const char *input_extra, const char *routing);
/* The same against another Redis port (e.g. one nobody listens on). */
const char *h_config_port(int redis_port, const char *mode, const char *input_extra, const char *routing);
/* The same with redis.startup_timeout = startup_timeout and redis_extra
 * inside the redis group (e.g. "password = \"x\";", or NULL). */
const char *h_config_redis(int redis_port, int startup_timeout, const char *redis_extra, const char *mode,
                           const char *input_extra, const char *routing);
/* A loopback port that was free a moment ago. */
int h_free_port(void);

/* Starts `leadrouterd -f -c conf` with stdout and stderr in a log file in
 * the temp dir. Returns a daemon index. */
int h_daemon_start(const char *conf);
/* SIGTERM, then waits (10 s) for exit status 0; fails the test otherwise
 * (killing it). Also checks the log: every line has a syslog priority
 * prefix and none holds the contact data of a lead sent in this test. */
void h_daemon_stop(int idx);
/* Waits at most secs for a daemon to exit by itself; returns its exit
 * status (fails the test if it is still running, killing it, or if it
 * died of a signal). */
int h_daemon_wait_exit(int idx, double secs);
/* Redis with AOF (appendfsync always) from now on; then kill -9 it, keep it
 * down for down_ms, and start it again on the same port from its AOF. */
void h_redis_enable_aof(void);
void h_redis_kill9_restart(int down_ms);
/* Fills Redis with keys filler keys (AOF on, rewritten), kill -9 it and
 * starts it again loading them slowly (load_delay_us per key): returns
 * while it still answers LOADING to most commands. */
void h_redis_restart_loading(long keys, int load_delay_us);
/* The two halves of that: kill -9 the test's redis-server (h_redis() is
 * NULL until it is back), and start it again on the same port (with AOF
 * on or off; data survives only through the AOF). */
void h_redis_kill9(void);
void h_redis_start_again(bool aof);
/* The pid of a daemon (for SIGSTOP/SIGCONT, or to find its consumer name,
 * which holds the pid). */
pid_t h_daemon_pid(int idx);
/* Sends sig (e.g. SIGHUP) to a running daemon. */
void h_daemon_signal(int idx, int sig);
/* kill -9: the daemon dies at once, wherever it is (no exit status check). */
void h_daemon_kill9(int idx);
/* The log check h_daemon_stop makes (priority prefixes, no contact data),
 * for a daemon that was killed. */
void h_daemon_check_log(int idx);
/* Fails the test (with the log's tail) if a started daemon has exited. */
void h_daemons_check_alive(void);
/* The last bytes of a daemon's log, for messages (owned by the harness). */
const char *h_daemon_log_tail(int idx);

/* A TCP proxy (a child process) from a new loopback port to the test's
 * Redis: returns the port, for a daemon's config. h_proxy_hang makes every
 * connection open at that moment hang (held open, nothing relayed any
 * more: a server that stopped answering); connections made afterwards are
 * relayed. h_proxy_freeze closes every connection and stops accepting,
 * with new connects left hanging (their SYNs dropped). Stopped at
 * teardown. */
int h_proxy_start(void);
void h_proxy_hang(void);
void h_proxy_freeze(void);

/* ---- time and waiting ----------------------------------------------- */

int64_t h_now_ms(void);
void h_sleep_ms(int ms);
/* h_now_ms() when the test's setup began: the start of its time window. */
int64_t h_t0_ms(void);
/* Redis's clock (TIME), in unix ms. */
int64_t h_redis_time_ms(void);
/* When a test depends on the current UTC day (day caps), sleep past UTC
 * midnight if it is less than margin_s away, so the day cannot change
 * under the test. */
void h_avoid_utc_midnight(int margin_s);

/* Polls cond(arg) every 10 ms for at most secs seconds; true once it
 * holds. Checks the daemons are alive between polls (fails if not). */
bool h_wait_until(bool (*cond)(void *arg), void *arg, double secs);

/* The same with an expression; fails the test with the message when the
 * time is up. */
#define H_WAIT(expr, secs, ...)                                                                              \
    do {                                                                                                     \
        int64_t h_wait_end_ = h_now_ms() + (int64_t)((secs)*1000.0);                                         \
        for (;;) {                                                                                           \
            if (expr)                                                                                        \
                break;                                                                                       \
            h_daemons_check_alive();                                                                         \
            if (h_now_ms() > h_wait_end_)                                                                    \
                cr_assert_fail(__VA_ARGS__);                                                                 \
            h_sleep_ms(10);                                                                                  \
        }                                                                                                    \
    } while (0)

/* Input fully processed: stream mode, the group has delivered everything
 * the test added and nothing is pending; list mode, <p>:in is empty and so
 * are all <p>:in:processing:* lists. Also true for the returns stream. */
bool h_drained(void);
/* Waits (bounded) for h_drained; fails with counts otherwise. */
void h_wait_drained(double secs);
/* Entries in all dealer queues + unassigned + dead. */
size_t h_outcomes(void);

/* ---- leads ---------------------------------------------------------- */

struct h_buf {
    unsigned char *p; /* owned by the harness (freed at teardown) */
    size_t len;
};

struct h_field {
    const char *key; /* NULL ends the list */
    char type;       /* 's' str, 'i' int, 'f' float, 'b' bool */
    const char *s;
    int64_t i;
    double f;
    bool b;
};

struct h_signal {
    const char *name; /* NULL ends the list */
    double v;
};

/* A lead as SPEC section 2 describes it; NULL / zero members are left out
 * (except score: present unless no_score). */
struct h_lead {
    const char *id;
    const char *niche, *source, *campaign, *country, *state, *zip;
    const char *keywords[4];
    int score;
    bool no_score;
    const char *score_str; /* a string where the int belongs (bad type) */
    struct h_signal signals[4];
    bool has_geo;
    double lat, lon;
    int64_t created_at;
    const char *name, *phone, *email; /* contact; all NULL = no contact map */
    struct h_field fields[4];
    /* An extra key the daemon does not know, with raw msgpack bytes as value
     * (any encoding, e.g. non-minimal ints, to check the pass-through). */
    const char *extra_key;
    const char *extra_raw;
    size_t extra_raw_len;
};

/* The msgpack map of a lead. */
struct h_buf h_lead_pack(const struct h_lead *l);

/* Oracle bookkeeping of later sends: how many dealers a lead may go to
 * (the niche's max_buyers). Default 1. */
void h_set_max_buyers(int k);

/* Packs and enqueues a lead (XADD <p>:in * lead <bytes>, or LPUSH in list
 * mode) and records it for the oracle. Returns the payload. If entry_id is
 * not NULL it receives the stream entry id ("list" in list mode). */
struct h_buf h_send(const struct h_lead *l, char *entry_id, size_t idlen);
/* Enqueues n leads in one MULTI/EXEC: a consumer blocked on the input
 * gets them all in one read. */
void h_send_atomic(const struct h_lead *leads, size_t n);
/* Packs a lead and records it for the oracle without enqueuing it (the
 * test puts the payload where it wants, e.g. a processing list). */
struct h_buf h_track(const struct h_lead *l);
/* Enqueues raw bytes; id is the lead id they carry (NULL when none can be
 * read from them), for the oracle. */
void h_send_raw(const void *p, size_t len, const char *id, char *entry_id, size_t idlen);

/* XADD <p>:returns * lead_id ID dealer DID reason TEXT (h_drained then
 * also waits for the returns stream). */
void h_return(const char *lead_id, const char *dealer, const char *reason);

/* Lower-case hex SHA-1 of s, computed by Redis (redis.sha1hex). */
void h_sha1hex(const char *s, char out[41]);

/* ---- readers -------------------------------------------------------- */

struct h_assign {
    char lead_id[160], dealer[80], niche[80], grade[16], rule[48];
    int64_t score, routed_at, attempt;
    struct h_buf lead; /* the raw bytes of the `lead` value */
    struct h_buf raw;  /* the whole entry */
};

struct h_unassigned {
    char lead_id[160], reason[64], niche[80];
    int64_t at;
    struct h_buf lead;
    struct h_buf raw;
};

struct h_dead {
    char error[512], ref[64];
    int64_t at;
    bool payload_is_bin; /* SPEC: payload(bin) */
    struct h_buf payload;
    struct h_buf raw;
};

/* Reads (LRANGE 0 -1) and decodes a queue, checking every SPEC key is there
 * with its type (fails the test otherwise). Arrays are owned by the harness. */
size_t h_read_dealer(const char *dealer, struct h_assign **out);
size_t h_read_unassigned(struct h_unassigned **out);
size_t h_read_dead(struct h_dead **out);
/* The ids of all dealers with a queue (SCAN <p>:dealer:*). */
size_t h_dealer_queues(char ***ids);

/* Where a lead went: the assignments with this lead id across all dealer
 * queues (returns the count; *out owned by the harness). */
size_t h_find_assignments(const char *lead_id, struct h_assign **out);
/* The unassigned entry of a lead id, or NULL. */
const struct h_unassigned *h_find_unassigned(const char *lead_id);

/* A dealer integration takes the lead's assignment from its queue (as BLPOP
 * would): removes that entry. Fails if the dealer does not hold it. */
void h_consume(const char *dealer, const char *lead_id);

/* Byte-exact comparison helpers for assertions. */
bool h_buf_eq(struct h_buf a, const void *p, size_t len);

/* ---- leadctl -------------------------------------------------------- */

struct h_run {
    int status;             /* exit status */
    const char *out, *err;  /* what it printed (owned by the harness) */
};

/* Runs leadctl with the arguments (NULL-terminated), stdout and stderr in
 * files of the temp dir; bounded (20 s). Fails if it dies of a signal. */
struct h_run h_leadctl(const char *arg0, ...);

/* ---- the oracle ----------------------------------------------------- */

struct h_report {
    size_t sent;         /* payloads the test enqueued */
    size_t in_dealers;   /* of them, placed in dealer queue(s) */
    size_t unassigned;   /* ... in <p>:unassigned */
    size_t dead;         /* ... in <p>:dead */
    size_t lost;         /* in no place */
    size_t duplicated;   /* in more places than sent, or a dealer twice, or > max_buyers */
    size_t unexpected;   /* entries that match no sent payload */
    size_t assignments;  /* assignment entries in all dealer queues */
    size_t cap_overruns; /* assignments beyond the h_oracle_cap limits */
    char detail[2048];   /* the first problems, for the failure message */
};

/* Dead entries the test causes that are not sent leads (bad returns). */
void h_oracle_allow_extra_dead(size_t n);
/* A dealer whose queue may never hold more than max assignments (a cap
 * the test set; its queue is not consumed). Counted as cap_overruns. */
void h_oracle_cap(const char *dealer, long long max);
/* Forgets every send, allowance and cap so far: for a second run of the
 * same leads in one test, after FLUSHALL and with no daemon running (the
 * daemons' logs were checked against the sends when they stopped). */
void h_oracle_reset(void);
/* Computes the report without asserting. */
void h_oracle_check(struct h_report *r);
/* Computes, prints one summary line, and fails the test on any lost,
 * duplicated or unexpected entry, a cap overrun (h_oracle_cap), or input
 * left (stream mode: entries in <p>:in; list mode: <p>:in or a processing
 * list not empty). */
void h_oracle(void);
/* The same, printing one line for the fault suite's report instead:
 * "FAULT <scenario>: sent=N in_dealer_queues=N unassigned=N dead=N lost=N
 * duplicated=N cap_overruns=N"; the report is copied to *out (may be NULL). */
void h_oracle_fault(const char *scenario, struct h_report *out);

#endif
