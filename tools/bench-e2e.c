/* bench-e2e.c - end-to-end benchmark and demo driver of leadrouterd: a
 * throwaway redis-server, real leadrouterd processes, leads in through
 * <p>:in and every outcome read back from the dealer queues, unassigned and
 * dead, to check that each lead is in exactly one place. Modes (usage()):
 * throughput (+ the EVALSHA ceiling and a fixed-rate latency phase),
 * fixed-rate only, and --demo (the sample config, a human report).
 * A benchmark and a demo, not a test: it links the routing core only to
 * read configs and, in the demo, to predict where leads should go. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "leadrouter/codec.h"
#include "leadrouter/config.h"
#include "leadrouter/rules.h"

#ifndef LR_DAEMON_PATH
#error "LR_DAEMON_PATH (the leadrouterd binary) must be defined by the build"
#endif
#ifndef LR_SOURCE_DIR
#error "LR_SOURCE_DIR (the repository root) must be defined by the build"
#endif

#define PREFIX "lr"
#define GROUP "leadrouter"
#define XADD_CHUNK 1000
#define LRANGE_CHUNK 10000
#define MAX_PLACES 16 /* RULES_MAX_BUYERS: dealers one lead can be in */

/* ------------------------------------------------------------ options --- */

enum mode { MODE_THROUGHPUT, MODE_RATE, MODE_DEMO, MODE_SCALE };

/* The throughput mixes: the default world; the heavy one (caps on every
 * dealer in all four periods, a DNC set of 100 000 digests); and the
 * default world read from a list (input.mode = "list"). */
enum mix { MIX_DEFAULT, MIX_HEAVY, MIX_LIST, MIX_N };
static const char *const MIX_NAMES[MIX_N] = {"default", "heavy", "list"};
#define HEAVY_DNC 100000

static struct {
    enum mode mode;
    long n;         /* throughput: leads */
    long rate;      /* latency phase: leads per second */
    double seconds; /* latency phase: duration */
    bool latency;   /* throughput: run the latency phase after */
    bool ceiling;   /* throughput: run redis-benchmark */
    int batch;      /* input.batch of the generated config */
    double timeout; /* bound of each wait for commits, seconds */
    bool keep;      /* keep the temp dir */
    uint64_t seed;
    const char *daemon;
    const char *conf; /* demo: the config to copy */
    bool mixes[MIX_N]; /* throughput: the mixes to run, in enum order */
} opt = {
    .mode = MODE_THROUGHPUT,
    .n = 500000,
    .rate = 10000,
    .seconds = 5,
    .latency = true,
    .ceiling = true,
    .batch = 256,
    .timeout = 300,
    .seed = 42,
    .daemon = LR_DAEMON_PATH,
    .conf = LR_SOURCE_DIR "/conf/leadrouter.conf",
    .mixes = {true, true, true},
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: bench-e2e [-n N] [--rate R] [--seconds S] [--no-latency] [--no-ceiling] [OPTIONS]\n"
        "       bench-e2e --rate R --seconds S        (fixed-rate mode: --rate/--seconds without -n)\n"
        "       bench-e2e --demo [--conf FILE]\n"
        "       bench-e2e --scale                     (start, reload and sync at 1 000 / 10 000 / 100 000 dealers)\n"
        "\n"
        "End-to-end benchmark of leadrouterd against a throwaway redis-server (127.0.0.1, a free\n"
        "port, no persistence, a temp dir removed at the end; redis-server and redis-benchmark\n"
        "are taken from PATH).\n"
        "\n"
        "Throughput mode (default): writes a config of 5 niches and 200 dealers in 10 states\n"
        "(state, exact-zip, zip-prefix and radius territories, tiers, weights, filters, hours,\n"
        "caps too high to bind, max_buyers 1, audit on, input.batch %d); runs the ceiling,\n"
        "redis-benchmark -P 64 -n 1000000 of EVALSHA of a script doing RPOP + LPUSH + INCR;\n"
        "enqueues N leads (XADD lr:in, pipelined %d at a time: sources, keywords and explicit\n"
        "niches, scores and signals, 40%% with coordinates, unique phones/e-mails so dedup and DNC\n"
        "run without rejecting, 0.5%% of an unknown niche); THEN starts leadrouterd and times it\n"
        "from its start until every lead is committed (XLEN lr:in = 0 and the dealer queues,\n"
        "lr:unassigned and lr:dead hold N entries), with the daemon's CPU time from /proc; reads\n"
        "every queue back and checks each lead id is there exactly once. Then the latency phase.\n"
        "The same is then run for the heavy mix (caps on every dealer in all four periods, binding\n"
        "none; a DNC set of %d digests) and for list mode (LPUSH lr:in, input.mode = \"list\"),\n"
        "each on an emptied Redis with a new daemon; each prints a MIX line with its ratio to the\n"
        "default mix. --mix picks the mixes.\n"
        "\n"
        "Latency (fixed-rate) phase: with the daemon running and idle, XADDs R leads/s for S s in\n"
        "1 ms bursts; latency = assignment routed_at (Redis TIME, unix ms) - created_at (the\n"
        "producer's unix ms): 1 ms resolution. Fixed-rate mode runs only this phase.\n"
        "\n"
        "The floor: redis-benchmark of a script making only the per-lead writes the contract asks\n"
        "for (record HSET + EXPIRE, audit XADD, digest SET NX EX, RPUSH; 256 leads per call, in\n"
        "database 9), with no decoding, fence, checks, caps, stats or ack: no commit that keeps\n"
        "the contract beats it. Printed as FLOOR contract_writes_leads_per_s= before the RESULT.\n"
        "\n"
        "Last line: RESULT leads_per_s= ceiling_evalsha_per_s= ratio= daemon_cpu_us_per_lead=\n"
        "p50_ms= p99_ms= (na where not measured).\n"
        "\n"
        "Scale mode: for 1 000, 10 000 and 100 000 dealers (each on one zip, a rotation hash\n"
        "holding all of them in Redis), the time from the daemon's start until a lead sent before\n"
        "it is routed (load, connect, sync), from SIGHUP until the reload is logged, and from then\n"
        "until the next lead is routed (the sync of the new table); and whether the watchdog took\n"
        "the busy loop for a hung server. One SCALE line per size.\n"
        "\n"
        "Demo mode: copies the sample config (+ dealers.d/) pointed at the throwaway Redis,\n"
        "enqueues ~300 synthetic leads fitting it (mostly routable now, some of an unknown niche,\n"
        "some out of territory, 3 malformed), runs leadrouterd until all are committed and prints\n"
        "where they went and why.\n"
        "\n"
        "Options:\n"
        "  -n N            throughput: leads to enqueue (default %ld)\n"
        "  --rate R        latency phase: leads per second (default %ld)\n"
        "  --seconds S     latency phase: duration (default %g)\n"
        "  --no-latency    throughput: skip the latency phase\n"
        "  --no-ceiling    throughput: skip redis-benchmark\n"
        "  --fixed-rate    fixed-rate mode (-n is then ignored)\n"
        "  --batch N       input.batch of the generated config (default %d)\n"
        "  --mix LIST      throughput: the mixes to run, comma-separated: default, heavy, list\n"
        "                  (default: all three; RESULT is the default mix's)\n"
        "  --demo          demo mode\n"
        "  --scale         scale mode\n"
        "  --conf FILE     demo: config to copy (default %s)\n"
        "  --daemon PATH   leadrouterd binary (default %s)\n"
        "  --timeout S     bound of each wait for commits (default %g s)\n"
        "  --seed N        lead generator seed (default %" PRIu64 ")\n"
        "  --keep          keep the temp dir (config, logs) and print its path\n"
        "  -h, --help      this help\n"
        "Exit: 0 ok; 1 a step failed or a lead was lost or duplicated (what failed is printed); 2 usage.\n",
        opt.batch, XADD_CHUNK, HEAVY_DNC, opt.n, opt.rate, opt.seconds, opt.batch, opt.conf, opt.daemon, opt.timeout,
        opt.seed);
}

/* ----------------------------------------------------- environment --- */

/* Everything started, so that any exit path stops and removes it. */
static struct {
    char dir[PATH_MAX]; /* temp dir, "" = none */
    pid_t redis_pid, daemon_pid;
    int port;
    redisContext *rc;
    char daemon_log[PATH_MAX + 32];
} env;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !interrupted) {
    }
}

/* Waits up to secs for pid to exit; returns 1 (status, rusage filled), 0
 * on timeout, -1 if it is not our child. */
static int wait_exit(pid_t pid, double secs, int *status, struct rusage *ru)
{
    double end = mono_s() + secs;
    for (;;) {
        pid_t r = wait4(pid, status, WNOHANG, ru);
        if (r == pid)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
        if (mono_s() > end)
            return 0;
        sleep_ms(2);
    }
}

/* SIGTERM, a bounded wait, then SIGKILL: for the error paths. */
static void stop_hard(pid_t *pid, double secs)
{
    if (*pid <= 0)
        return;
    int st;
    kill(*pid, SIGTERM);
    if (wait_exit(*pid, secs, &st, NULL) == 0) {
        kill(*pid, SIGKILL);
        (void)wait_exit(*pid, 5, &st, NULL);
    }
    *pid = 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void cleanup(void)
{
    if (env.rc) {
        redisFree(env.rc);
        env.rc = NULL;
    }
    stop_hard(&env.daemon_pid, 10);
    stop_hard(&env.redis_pid, 10);
    if (env.dir[0]) {
        if (opt.keep)
            fprintf(stderr, "bench-e2e: kept %s\n", env.dir);
        else
            nftw(env.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        env.dir[0] = 0;
    }
}

/* The last lines of a log file, to say why a process failed. */
static void print_tail(const char *path, size_t bytes)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, sz > (long)bytes ? sz - (long)bytes : 0, SEEK_SET);
    char buf[512];
    fprintf(stderr, "--- last lines of %s ---\n", path);
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, r, stderr);
    fprintf(stderr, "---\n");
    fclose(f);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench-e2e: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    cleanup();
    exit(1);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die_daemon(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench-e2e: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    if (env.daemon_log[0])
        print_tail(env.daemon_log, 3000);
    cleanup();
    exit(1);
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p)
        die("out of memory (%zu x %zu bytes)", n, sz);
    return p;
}

static void check_interrupted(void)
{
    if (interrupted)
        die("interrupted");
}

/* ------------------------------------------------------- processes --- */

/* fork + exec with stdout/stderr to log and stdin from /dev/null. The
 * child dies with us (PR_SET_PDEATHSIG) and sits in its own process group,
 * so a ^C reaches only us and we stop it in order. A close-on-exec pipe
 * reports a failed exec at once. */
static pid_t spawn(char *const argv[], const char *log)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        die("pipe: %s", strerror(errno));
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(pfd[0]);
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0) {
            int e = errno;
            (void)!write(pfd[1], &e, sizeof e);
            _exit(127);
        }
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        execvp(argv[0], argv);
        int e = errno;
        (void)!write(pfd[1], &e, sizeof e);
        _exit(127);
    }
    close(pfd[1]);
    int e = 0;
    ssize_t r;
    while ((r = read(pfd[0], &e, sizeof e)) < 0 && errno == EINTR) {
    }
    close(pfd[0]);
    if (r > 0) {
        int st;
        (void)wait_exit(pid, 5, &st, NULL);
        die("cannot run %s: %s", argv[0], strerror(e));
    }
    return pid;
}

/* Has pid exited? Reaps it and describes how in why. */
static bool exited(pid_t pid, char *why, size_t len)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r != pid)
        return false;
    if (WIFEXITED(st))
        snprintf(why, len, "exited with status %d", WEXITSTATUS(st));
    else
        snprintf(why, len, "killed by signal %d", WTERMSIG(st));
    return true;
}

/* CPU time of a live process, in microseconds: the sum of its threads'
 * run time in /proc/<pid>/task/<tid>/schedstat (ns), else utime + stime
 * of /proc/<pid>/stat (fields 14 and 15, in 10 ms clock ticks). */
static int64_t proc_cpu_us(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (d) {
        unsigned long long sum = 0;
        bool ok = true;
        struct dirent *e;
        while (ok && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char sp[384];
            unsigned long long ns;
            snprintf(sp, sizeof sp, "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
            FILE *f = fopen(sp, "r");
            ok = f && fscanf(f, "%llu", &ns) == 1;
            if (f)
                fclose(f);
            sum += ok ? ns : 0;
        }
        closedir(d);
        if (ok)
            return (int64_t)(sum / 1000);
    }
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut, stt;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2)
        return -1;
    long tck = sysconf(_SC_CLK_TCK);
    return (int64_t)((ut + stt) * 1000000ULL / (unsigned long long)(tck > 0 ? tck : 100));
}

/* ------------------------------------------------------------ redis --- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
    socklen_t al = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &al) != 0)
        die("finding a free loopback port: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static redisReply *vcmd(bool errors_ok, const char *fmt, va_list ap)
{
    redisReply *r = redisvCommand(env.rc, fmt, ap);
    if (!r)
        die("redis: %s (is redis-server still running?)", env.rc->errstr);
    if (!errors_ok && r->type == REDIS_REPLY_ERROR)
        die("redis: %s: %s", fmt, r->str);
    return r;
}

/* A command that must succeed; the caller frees the reply. */
__attribute__((format(printf, 1, 2))) static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(false, fmt, ap);
    va_end(ap);
    return r;
}

__attribute__((format(printf, 1, 2))) static redisReply *cmd_any(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(true, fmt, ap);
    va_end(ap);
    return r;
}

__attribute__((format(printf, 1, 2))) static long long cmd_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(false, fmt, ap);
    va_end(ap);
    if (r->type != REDIS_REPLY_INTEGER)
        die("redis: %s: expected an integer reply", fmt);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

/* The temp dir, then redis-server on a free loopback port in it, up and
 * answering PING within 10 s. A port taken between our probe and Redis's
 * bind is retried with another. */
static void start_redis(void)
{
    char tmpl[] = "/tmp/bench-e2e.XXXXXX";
    if (!mkdtemp(tmpl))
        die("mkdtemp: %s", strerror(errno));
    snprintf(env.dir, sizeof env.dir, "%s", tmpl);
    char log[PATH_MAX + 32], why[64] = "";
    snprintf(log, sizeof log, "%s/redis.log", env.dir);
    for (int attempt = 0; attempt < 3; attempt++) {
        env.port = free_port();
        char port[16];
        snprintf(port, sizeof port, "%d", env.port);
        char *argv[] = {"redis-server", "--port", port,    "--bind", "127.0.0.1",   "--save", "",
                        "--appendonly", "no",     "--dir", env.dir,  "--daemonize", "no",     NULL};
        env.redis_pid = spawn(argv, log);
        double end = mono_s() + 10;
        while (mono_s() < end) {
            check_interrupted();
            if (exited(env.redis_pid, why, sizeof why)) {
                env.redis_pid = 0;
                break;
            }
            struct timeval tv = {1, 0};
            redisContext *c = redisConnectWithTimeout("127.0.0.1", env.port, tv);
            if (c && !c->err) {
                redisReply *r = redisCommand(c, "PING");
                bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
                if (r)
                    freeReplyObject(r);
                if (ok) {
                    struct timeval ct = {60, 0}; /* bounds every command */
                    redisSetTimeout(c, ct);
                    env.rc = c;
                    return;
                }
            }
            if (c)
                redisFree(c);
            sleep_ms(20);
        }
        if (env.redis_pid > 0)
            die("redis-server on port %d did not answer PING within 10 s (log: %s)", env.port, log);
    }
    print_tail(log, 2000);
    die("redis-server failed to start three times (%s)", why);
}

/* The mix being run (list mode enqueues and counts differently). */
static enum mix cur_mix = MIX_DEFAULT;

/* XADDs payloads[0..n) pipelined, XADD_CHUNK at a time; the entry ids go
 * to refs (ms and sequence) when refs is not NULL. List mode: LPUSHes them. */
static void xadd_all(char **payloads, const size_t *lens, size_t n, uint64_t (*refs)[2])
{
    bool list = cur_mix == MIX_LIST;
    for (size_t i = 0; i < n; i += XADD_CHUNK) {
        size_t m = n - i < XADD_CHUNK ? n - i : XADD_CHUNK;
        for (size_t k = 0; k < m; k++) {
            const char *argv[] = {"XADD", PREFIX ":in", "*", "lead", payloads[i + k]};
            size_t al[] = {4, strlen(PREFIX ":in"), 1, 4, lens[i + k]};
            const char *lv[] = {"LPUSH", PREFIX ":in", payloads[i + k]};
            size_t ll[] = {5, strlen(PREFIX ":in"), lens[i + k]};
            if (list)
                redisAppendCommandArgv(env.rc, 3, lv, ll);
            else
                redisAppendCommandArgv(env.rc, 5, argv, al);
        }
        for (size_t k = 0; k < m; k++) {
            redisReply *r;
            if (redisGetReply(env.rc, (void **)&r) != REDIS_OK || !r)
                die("XADD: %s", env.rc->errstr);
            if (r->type != (list ? REDIS_REPLY_INTEGER : REDIS_REPLY_STRING))
                die("%s: unexpected reply: %s", list ? "LPUSH" : "XADD",
                    r->type == REDIS_REPLY_ERROR ? r->str : "not an id");
            if (refs && !list) {
                unsigned long long ms = 0, seq = 0;
                sscanf(r->str, "%llu-%llu", &ms, &seq);
                refs[i + k][0] = ms;
                refs[i + k][1] = seq;
            }
            freeReplyObject(r);
        }
        check_interrupted();
    }
}

/* ------------------------------------------------------------ leads --- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: fast, and the same seed gives the same leads */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static uint32_t rnd_below(uint32_t n)
{
    return n ? (uint32_t)(rnd() % n) : 0;
}

static double rnd_unit(void)
{
    return (double)(rnd() >> 11) / 9007199254740992.0;
}

/* A lead as SPEC section 2 describes it; NULL / false members are left out. */
struct gen_lead {
    char id[48];
    const char *niche, *source, *campaign, *country, *state, *keyword;
    char zip[12];
    bool has_score;
    int score;
    bool has_signals;
    int web, email_ok, phone_ok, demo;
    double budget;
    bool has_geo;
    double lat, lon;
    int64_t created_at; /* 0 = absent */
    char name[32], phone[32], email[48];
    /* custom fields; -1 / NULL = absent */
    int home_owner, roof_age, age, loan_amount, phone_verified;
    const char *credit, *policy_type;
};

static void gen_init(struct gen_lead *g)
{
    memset(g, 0, sizeof *g);
    g->home_owner = g->roof_age = g->age = g->loan_amount = g->phone_verified = -1;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

static void pk_kstr(msgpack_packer *pk, const char *k, const char *v)
{
    pk_str(pk, k);
    pk_str(pk, v);
}

static void pk_kint(msgpack_packer *pk, const char *k, int64_t v)
{
    pk_str(pk, k);
    msgpack_pack_int64(pk, v);
}

static void pk_kdbl(msgpack_packer *pk, const char *k, double v)
{
    pk_str(pk, k);
    msgpack_pack_double(pk, v);
}

/* Packs g into sb (which it resets first). */
static void pack_lead(const struct gen_lead *g, msgpack_sbuffer *sb)
{
    msgpack_sbuffer_clear(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    bool contact = g->name[0] || g->phone[0] || g->email[0];
    int nf = (g->home_owner >= 0) + (g->roof_age >= 0) + (g->age >= 0) + (g->loan_amount >= 0) +
             (g->phone_verified >= 0) + (g->credit != NULL) + (g->policy_type != NULL);
    int n = 1 + !!g->niche + !!g->source + !!g->campaign + !!g->country + !!g->state + (g->zip[0] != 0) +
            !!g->keyword + g->has_score + g->has_signals + 2 * g->has_geo + (g->created_at > 0) + contact +
            (nf > 0);
    msgpack_pack_map(&pk, (size_t)n);
    pk_kstr(&pk, "id", g->id);
    if (g->niche)
        pk_kstr(&pk, "niche", g->niche);
    if (g->source)
        pk_kstr(&pk, "source", g->source);
    if (g->campaign)
        pk_kstr(&pk, "campaign", g->campaign);
    if (g->country)
        pk_kstr(&pk, "country", g->country);
    if (g->state)
        pk_kstr(&pk, "state", g->state);
    if (g->zip[0])
        pk_kstr(&pk, "zip", g->zip);
    if (g->keyword) {
        pk_str(&pk, "keywords");
        msgpack_pack_array(&pk, 1);
        pk_str(&pk, g->keyword);
    }
    if (g->has_score)
        pk_kint(&pk, "score", g->score);
    if (g->has_signals) {
        pk_str(&pk, "signals");
        msgpack_pack_map(&pk, 5);
        pk_kint(&pk, "web", g->web);
        pk_kint(&pk, "email", g->email_ok);
        pk_kint(&pk, "phone", g->phone_ok);
        pk_kint(&pk, "demo", g->demo);
        pk_kdbl(&pk, "budget", g->budget);
    }
    if (g->has_geo) {
        pk_kdbl(&pk, "lat", g->lat);
        pk_kdbl(&pk, "lon", g->lon);
    }
    if (g->created_at > 0)
        pk_kint(&pk, "created_at", g->created_at);
    if (contact) {
        pk_str(&pk, "contact");
        msgpack_pack_map(&pk, (size_t)(!!g->name[0] + !!g->phone[0] + !!g->email[0]));
        if (g->name[0])
            pk_kstr(&pk, "name", g->name);
        if (g->phone[0])
            pk_kstr(&pk, "phone", g->phone);
        if (g->email[0])
            pk_kstr(&pk, "email", g->email);
    }
    if (nf > 0) {
        pk_str(&pk, "fields");
        msgpack_pack_map(&pk, (size_t)nf);
        if (g->home_owner >= 0) {
            pk_str(&pk, "home_owner");
            if (g->home_owner)
                msgpack_pack_true(&pk);
            else
                msgpack_pack_false(&pk);
        }
        if (g->roof_age >= 0)
            pk_kint(&pk, "roof_age_years", g->roof_age);
        if (g->age >= 0)
            pk_kint(&pk, "age", g->age);
        if (g->loan_amount >= 0)
            pk_kint(&pk, "loan_amount", g->loan_amount);
        if (g->phone_verified >= 0) {
            pk_str(&pk, "phone_verified");
            msgpack_pack_true(&pk);
        }
        if (g->credit)
            pk_kstr(&pk, "credit", g->credit);
        if (g->policy_type)
            pk_kstr(&pk, "policy_type", g->policy_type);
    }
}

/* An owned copy of sb's bytes. */
static char *dup_bytes(const msgpack_sbuffer *sb, size_t *len)
{
    char *p = xcalloc(1, sb->size);
    memcpy(p, sb->data, sb->size);
    *len = sb->size;
    return p;
}

/* --------------------------------------------- the throughput world --- */

/* Ten states, each with a time zone, a 3-digit zip prefix (20 exact zips
 * <prefix>00..19) and a centre. */
static const struct {
    const char *st, *lower, *tz, *zip3;
    double lat, lon;
} W_STATES[] = {
    {"IA", "ia", "America/Chicago", "503", 41.59, -93.62},
    {"IL", "il", "America/Chicago", "606", 41.88, -87.63},
    {"MO", "mo", "America/Chicago", "631", 38.63, -90.20},
    {"NE", "ne", "America/Chicago", "681", 41.26, -95.94},
    {"WI", "wi", "America/Chicago", "532", 43.04, -87.91},
    {"MN", "mn", "America/Chicago", "554", 44.98, -93.27},
    {"KS", "ks", "America/Chicago", "672", 37.69, -97.34},
    {"OH", "oh", "America/New_York", "432", 39.96, -83.00},
    {"IN", "in", "America/Indiana/Indianapolis", "462", 39.77, -86.16},
    {"CO", "co", "America/Denver", "802", 39.74, -104.99},
};
#define W_N_STATES (sizeof W_STATES / sizeof W_STATES[0])
#define W_ZIPS 20
#define W_PER 4 /* dealers per state and niche */

static const struct {
    const char *name, *shortname, *strategy, *sources[2], *keywords[3];
} W_NICHES[] = {
    {"home_improvement",
     "home",
     "weighted",
     {"fixmyhome.example", "remodelpros.example"},
     {"roof", "kitchen", "siding"}},
    {"solar",
     "solar",
     "nearest",
     {"sunquote.example", "solarsavings.example"},
     {"solar", "photovoltaic", "net metering"}},
    {"mortgage",
     "mort",
     "least_loaded",
     {"ratecheck.example", "homeloanhub.example"},
     {"mortgage", "refinance", "heloc"}},
    {"insurance",
     "ins",
     "round_robin",
     {"coverquote.example", "insureme.example"},
     {"insurance", "auto insurance", "life insurance"}},
    {"hvac",
     "hvac",
     "weighted",
     {"comfortcall.example", "hvacpros.example"},
     {"hvac", "furnace", "heat pump"}},
};
#define W_N_NICHES (sizeof W_NICHES / sizeof W_NICHES[0])

static void fput_strv(FILE *f, const char *const *v, size_t n)
{
    fprintf(f, "[ ");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", v[i]);
    fprintf(f, " ]");
}

/* The throughput config: 200 dealers, every kind of territory, caps far
 * too high to bind (on half the dealers; on all of them in the heavy mix),
 * max_buyers 1 (so each lead is in exactly one queue). */
static void write_bench_config(const char *path, enum mix mix)
{
    FILE *f = fopen(path, "w");
    if (!f)
        die("%s: %s", path, strerror(errno));
    fprintf(f,
            "# Generated by bench-e2e (throughput mode).\n"
            "redis = { host = \"127.0.0.1\"; port = %d; startup_timeout = 10; };\n"
            "input = { mode = \"%s\"; group = \"" GROUP "\"; batch = %d; };\n"
            "prefix = \"" PREFIX "\";\n"
            "admin = { socket = \"%s/admin.sock\"; mode = \"0600\"; };\n"
            "defaults = { country = \"US\"; timezone = \"America/Chicago\"; };\n"
            "scoring = {\n"
            "  weights = { web = 10.0; email = 20.0; phone = 25.0; demo = 30.0; budget = 0.001; };\n"
            "  grades = ( { grade = \"A\"; min = 80; }, { grade = \"B\"; min = 50; }, { grade = \"C\"; min = "
            "0; } );\n"
            "};\n"
            "routing = { hot_grades = [ \"A\" ]; record_ttl = 2592000; max_attempts = 3; };\n"
            "limits = { max_lead_bytes = 65536; };\n"
            "dedup = { window = 2592000; keys = [ \"phone\", \"email\" ]; action = \"same_dealer\"; };\n"
            "niches = (\n",
            env.port, mix == MIX_LIST ? "list" : "stream", opt.batch, env.dir);
    for (size_t n = 0; n < W_N_NICHES; n++) {
        fprintf(f, "  { name = \"%s\"; sources = ", W_NICHES[n].name);
        fput_strv(f, W_NICHES[n].sources, 2);
        fprintf(f, "; keywords = ");
        fput_strv(f, W_NICHES[n].keywords, 3);
        fprintf(f, "; max_buyers = 1; strategy = \"%s\"; }%s\n", W_NICHES[n].strategy,
                n + 1 < W_N_NICHES ? "," : "");
    }
    fprintf(f, ");\ndealers = (\n");
    bool first = true;
    for (size_t s = 0; s < W_N_STATES; s++)
        for (size_t n = 0; n < W_N_NICHES; n++)
            for (int k = 0; k < W_PER; k++) {
                fprintf(f, "%s  { id = \"%s-%s-%d\"; niches = [ \"%s\" ]; territory = { ", first ? "" : ",\n",
                        W_STATES[s].lower, W_NICHES[n].shortname, k, W_NICHES[n].name);
                first = false;
                switch (k) {
                case 0: /* the whole state; no conditions: every lead of the state has a taker */
                    fprintf(f, "states = [ \"%s\" ];", W_STATES[s].st);
                    break;
                case 1:
                    fprintf(f, "zips = [ ");
                    for (int z = 0; z < W_ZIPS; z++)
                        fprintf(f, "%s\"%s%02d\"", z ? ", " : "", W_STATES[s].zip3, z);
                    fprintf(f, " ];");
                    break;
                case 2:
                    fprintf(f, "zips = [ \"%s*\" ];", W_STATES[s].zip3);
                    break;
                default:
                    fprintf(f, "radius = { lat = %.4f; lon = %.4f; km = 80.0; };", W_STATES[s].lat,
                            W_STATES[s].lon);
                    break;
                }
                fprintf(f, " }; contract = { tier = %d; weight = %d;", k == 3 ? 2 : 1, k + 1);
                if (k % 2 == 1 || mix == MIX_HEAVY)
                    fprintf(f, " caps = { hour = 100000000; day = 1000000000; week = 2000000000; month = "
                               "2000000000; };");
                if (k == 1) /* business hours around the clock, in the state's zone */
                    fprintf(
                        f,
                        " min_score = 20; hours = { timezone = \"%s\"; days = [ \"mon\", \"tue\", \"wed\", "
                        "\"thu\", \"fri\", \"sat\", \"sun\" ]; from = \"00:00\"; to = \"24:00\"; };",
                        W_STATES[s].tz);
                if (k == 1 && n == 2) /* the mortgage zip dealer owns its zips */
                    fprintf(f, " exclusive = true; overflow = \"release\";");
                if (k == 2)
                    fprintf(
                        f,
                        " grades = [ \"A\", \"B\", \"C\" ]; filters = ( { field = \"fields.home_owner\"; eq "
                        "= true; } );");
                fprintf(f, " }; }");
            }
    fprintf(f, "\n);\n");
    if (fclose(f) != 0)
        die("%s: %s", path, strerror(errno));
}

/* Lead i of the throughput world (id "<tag><i>"). */
static void world_lead(struct gen_lead *g, char tag, size_t i, int64_t created_at, bool routable_only)
{
    gen_init(g);
    snprintf(g->id, sizeof g->id, "%c%zu", tag, i);
    size_t s = rnd_below(W_N_STATES), n = rnd_below(W_N_NICHES);
    uint32_t how = rnd_below(100);
    if (!routable_only && i % 200 == 199)
        g->source = "unknown-vendor.example"; /* unknown_niche */
    else if (how < 60)
        g->source = W_NICHES[n].sources[rnd_below(2)];
    else if (how < 80)
        g->keyword = W_NICHES[n].keywords[rnd_below(3)];
    else
        g->niche = W_NICHES[n].name;
    if (rnd_below(4) == 0)
        g->campaign = "spring-promo";
    g->country = "US";
    g->state = W_STATES[s].st;
    snprintf(g->zip, sizeof g->zip, "%s%02u", W_STATES[s].zip3, rnd_below(W_ZIPS));
    if (rnd_below(2)) {
        g->has_score = true;
        g->score = (int)rnd_below(101);
    } else {
        g->has_signals = true;
        g->web = 1;
        g->email_ok = (int)rnd_below(2);
        g->phone_ok = (int)rnd_below(2);
        g->demo = (int)rnd_below(2);
        g->budget = (double)(5000 + rnd_below(30000));
    }
    if (rnd_below(10) < 4) {
        g->has_geo = true;
        g->lat = W_STATES[s].lat + (rnd_unit() - 0.5) * 0.6;
        g->lon = W_STATES[s].lon + (rnd_unit() - 0.5) * 0.6;
    }
    g->created_at = created_at;
    /* Unique contact data: dedup and DNC run, and never reject. */
    if (rnd_below(10) < 6)
        snprintf(g->phone, sizeof g->phone, "+1 555 %c%09zu", tag == 't' ? '1' : '2', i);
    if (rnd_below(10) < 4)
        snprintf(g->email, sizeof g->email, "lead%c%zu@example.com", tag, i);
    if (g->phone[0] || g->email[0])
        snprintf(g->name, sizeof g->name, "Lead %zu", i);
    g->home_owner = rnd_below(10) < 9;
    g->roof_age = (int)rnd_below(30);
    g->credit = rnd_below(2) ? "good" : "fair";
}

/* -------------------------------------------------- reading results --- */

/* A count by name (unassigned reason, dead-letter error code). */
struct count {
    char key[48];
    size_t n;
};

/* Where the leads ended up. A lead is found by its id "<tag><index>"
 * (assignments, unassigned) or, for dead letters, by its stream entry id. */
struct tally {
    size_t n;                                     /* leads sent */
    char tag[8];                                  /* id prefix */
    uint64_t (*refs)[2];                          /* entry id of each lead, increasing (ref) */
    uint8_t *in_dealer, *in_unassigned, *in_dead; /* saturating counts */
    uint16_t *last_q;                             /* last dealer queue (+1) the lead was seen in */
    uint16_t (*dealers)[MAX_PLACES];              /* demo: the dealers it went to (+1) */
    int64_t *commit_ms;                           /* routed_at / at, when wanted */
    size_t *per_dealer;                           /* entries per dealer queue */
    size_t same_queue_twice, stray, undecodable, entries;
    struct count reasons[32], errors[32]; /* by unassigned reason / dead error code */
    int n_reasons, n_errors;
};

static void tally_init(struct tally *t, size_t n, const char *tag, size_t n_dealers, bool want_times,
                       bool want_dealers)
{
    memset(t, 0, sizeof *t);
    t->n = n;
    snprintf(t->tag, sizeof t->tag, "%s", tag);
    t->in_dealer = xcalloc(n, 1);
    t->in_unassigned = xcalloc(n, 1);
    t->in_dead = xcalloc(n, 1);
    t->last_q = xcalloc(n, sizeof *t->last_q);
    t->per_dealer = xcalloc(n_dealers, sizeof *t->per_dealer);
    if (want_times)
        t->commit_ms = xcalloc(n, sizeof *t->commit_ms);
    if (want_dealers)
        t->dealers = xcalloc(n, sizeof *t->dealers);
}

static void tally_free(struct tally *t)
{
    free(t->in_dealer);
    free(t->in_unassigned);
    free(t->in_dead);
    free(t->last_q);
    free(t->per_dealer);
    free(t->commit_ms);
    free(t->dealers);
}

/* The value of key in a msgpack map, or NULL. */
static const msgpack_object *mp_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            memcmp(kv->key.via.str.ptr, key, kl) == 0)
            return &kv->val;
    }
    return NULL;
}

static bool mp_str(const msgpack_object *o, const char **p, size_t *n)
{
    if (!o)
        return false;
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *n = o->via.str.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *n = o->via.bin.size;
        return true;
    }
    return false;
}

static bool mp_int(const msgpack_object *o, int64_t *v)
{
    if (o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return true;
    }
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return true;
    }
    return false;
}

/* The index of the lead whose id is "<tag><decimal>", or -1. */
static long lead_index(const struct tally *t, const char *p, size_t n)
{
    size_t tl = strlen(t->tag);
    if (n <= tl || n - tl > 18 || memcmp(p, t->tag, tl) != 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = tl; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    return v < t->n ? (long)v : -1;
}

/* The index of the lead added as stream entry "ms-seq" (refs increase). */
static long ref_index(const struct tally *t, const char *p, size_t n)
{
    char buf[64];
    unsigned long long ms, seq;
    if (!t->refs || n >= sizeof buf)
        return -1;
    memcpy(buf, p, n);
    buf[n] = 0;
    if (sscanf(buf, "%llu-%llu", &ms, &seq) != 2)
        return -1;
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const uint64_t *r = t->refs[mid];
        if (r[0] < ms || (r[0] == ms && r[1] < seq))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->n && t->refs[lo][0] == ms && t->refs[lo][1] == seq ? (long)lo : -1;
}

static void count_add(struct count *c, int *n, const char *key, size_t len)
{
    if (len >= sizeof c->key)
        len = sizeof c->key - 1;
    for (int i = 0; i < *n; i++)
        if (strlen(c[i].key) == len && memcmp(c[i].key, key, len) == 0) {
            c[i].n++;
            return;
        }
    if (*n == 32) { /* more distinct values than a report needs */
        c[31].n++;
        snprintf(c[31].key, sizeof c[31].key, "(other)");
        return;
    }
    memcpy(c[*n].key, key, len);
    c[*n].key[len] = 0;
    c[(*n)++].n = 1;
}

static int cmp_count(const void *a, const void *b)
{
    const struct count *x = a, *y = b;
    return (x->n < y->n) - (x->n > y->n); /* most first */
}

static uint8_t sat_inc(uint8_t v)
{
    return v == UINT8_MAX ? v : (uint8_t)(v + 1);
}

enum qkind { Q_DEALER, Q_UNASSIGNED, Q_DEAD };

/* One entry of a dealer queue, lr:unassigned or lr:dead. */
static void tally_entry(struct tally *t, enum qkind kind, int q, const char *p, size_t n, msgpack_zone *zone)
{
    msgpack_object o;
    size_t off = 0;
    t->entries++;
    msgpack_zone_clear(zone);
    if (msgpack_unpack(p, n, &off, zone, &o) != MSGPACK_UNPACK_SUCCESS || o.type != MSGPACK_OBJECT_MAP) {
        t->undecodable++;
        return;
    }
    const char *s;
    size_t sl;
    int64_t at = 0;
    long i;
    if (kind == Q_DEAD) {
        i = mp_str(mp_get(&o, "ref"), &s, &sl) ? ref_index(t, s, sl) : -1;
        if (mp_str(mp_get(&o, "error"), &s, &sl)) {
            const char *colon = memchr(s, ':', sl); /* "<code>: <detail>" */
            count_add(t->errors, &t->n_errors, s, colon ? (size_t)(colon - s) : sl);
        }
        (void)mp_int(mp_get(&o, "at"), &at);
    } else {
        i = mp_str(mp_get(&o, "lead_id"), &s, &sl) ? lead_index(t, s, sl) : -1;
        if (kind == Q_UNASSIGNED) {
            if (i >= 0 && mp_str(mp_get(&o, "reason"), &s, &sl))
                count_add(t->reasons, &t->n_reasons, s, sl);
            (void)mp_int(mp_get(&o, "at"), &at);
        } else {
            (void)mp_int(mp_get(&o, "routed_at"), &at);
        }
    }
    if (i < 0) {
        t->stray++;
        return;
    }
    if (t->commit_ms && (t->commit_ms[i] == 0 || at < t->commit_ms[i]))
        t->commit_ms[i] = at;
    switch (kind) {
    case Q_DEALER:
        t->per_dealer[q]++;
        if (t->last_q[i] == q + 1)
            t->same_queue_twice++;
        t->last_q[i] = (uint16_t)(q + 1);
        if (t->dealers && t->in_dealer[i] < MAX_PLACES)
            t->dealers[i][t->in_dealer[i]] = (uint16_t)(q + 1);
        t->in_dealer[i] = sat_inc(t->in_dealer[i]);
        break;
    case Q_UNASSIGNED:
        t->in_unassigned[i] = sat_inc(t->in_unassigned[i]);
        break;
    case Q_DEAD:
        t->in_dead[i] = sat_inc(t->in_dead[i]);
        break;
    }
}

/* The keys where outcomes land: every dealer queue, then unassigned, dead. */
struct queues {
    char **keys;
    size_t n, n_dealers;
};

static void queues_init(struct queues *qs, const struct rules_table *t)
{
    if (t->n_dealers >= UINT16_MAX - 2) /* tally.last_q and .dealers hold queue numbers in 16 bits */
        die("%u dealers: bench-e2e handles at most %d", t->n_dealers, UINT16_MAX - 3);
    qs->n_dealers = t->n_dealers;
    qs->n = t->n_dealers + 2;
    qs->keys = xcalloc(qs->n, sizeof *qs->keys);
    for (size_t i = 0; i < qs->n; i++) {
        char buf[256];
        if (i < t->n_dealers)
            snprintf(buf, sizeof buf, PREFIX ":dealer:%s", t->dealers[i].id);
        else
            snprintf(buf, sizeof buf, PREFIX ":%s", i == t->n_dealers ? "unassigned" : "dead");
        qs->keys[i] = strdup(buf);
        if (!qs->keys[i])
            die("out of memory");
    }
}

static void queues_free(struct queues *qs)
{
    for (size_t i = 0; i < qs->n; i++)
        free(qs->keys[i]);
    free(qs->keys);
}

/* Reads every queue back (LRANGE, LRANGE_CHUNK at a time) into t. */
static void tally_read(struct tally *t, const struct queues *qs)
{
    msgpack_zone zone;
    if (!msgpack_zone_init(&zone, 8192))
        die("out of memory");
    for (size_t q = 0; q < qs->n; q++) {
        enum qkind kind = q < qs->n_dealers ? Q_DEALER : q == qs->n_dealers ? Q_UNASSIGNED : Q_DEAD;
        for (long start = 0;; start += LRANGE_CHUNK) {
            redisReply *r = cmd("LRANGE %s %ld %ld", qs->keys[q], start, start + LRANGE_CHUNK - 1);
            if (r->type != REDIS_REPLY_ARRAY)
                die("LRANGE %s: not an array (is it a list?)", qs->keys[q]);
            for (size_t i = 0; i < r->elements; i++)
                tally_entry(t, kind, (int)q, r->element[i]->str, r->element[i]->len, &zone);
            size_t got = r->elements;
            freeReplyObject(r);
            if (got < LRANGE_CHUNK)
                break;
        }
        check_interrupted();
    }
    msgpack_zone_destroy(&zone);
}

/* Exactly one place per lead: dealer queue(s) (at most max_buyers, never
 * one queue twice), or unassigned once, or dead once. */
struct verdict {
    size_t assigned, unassigned, dead, lost, duplicated;
    long first_lost, first_dup;
    bool ok;
};

static struct verdict tally_check(const struct tally *t, int max_buyers)
{
    struct verdict v = {.first_lost = -1, .first_dup = -1};
    for (size_t i = 0; i < t->n; i++) {
        int d = t->in_dealer[i], u = t->in_unassigned[i], x = t->in_dead[i];
        int places = (d > 0) + (u > 0) + (x > 0);
        if (places == 0) {
            v.lost++;
            if (v.first_lost < 0)
                v.first_lost = (long)i;
        } else if (places > 1 || u > 1 || x > 1 || d > max_buyers) {
            v.duplicated++;
            if (v.first_dup < 0)
                v.first_dup = (long)i;
        } else if (d) {
            v.assigned++;
        } else if (u) {
            v.unassigned++;
        } else {
            v.dead++;
        }
    }
    v.ok =
        v.lost == 0 && v.duplicated == 0 && t->same_queue_twice == 0 && t->stray == 0 && t->undecodable == 0;
    return v;
}

static void print_verdict(const char *what, const struct tally *t, const struct verdict *v)
{
    printf("%s: %zu leads: %zu assigned, %zu unassigned, %zu dead; %zu lost, %zu duplicated", what, t->n,
           v->assigned, v->unassigned, v->dead, v->lost, v->duplicated + t->same_queue_twice);
    if (t->stray || t->undecodable)
        printf(", %zu entries not ours, %zu undecodable", t->stray, t->undecodable);
    printf(" -> %s\n", v->ok ? "exactly once: OK" : "FAILED");
    if (v->first_lost >= 0)
        printf("  e.g. lost: %s%ld\n", t->tag, v->first_lost);
    if (v->first_dup >= 0)
        printf("  e.g. in more than one place: %s%ld (%d dealer queues, %d unassigned, %d dead)\n", t->tag,
               v->first_dup, t->in_dealer[v->first_dup], t->in_unassigned[v->first_dup],
               t->in_dead[v->first_dup]);
}

/* ----------------------------------------------------------- daemon --- */

static void start_daemon(const char *conf)
{
    snprintf(env.daemon_log, sizeof env.daemon_log, "%s/leadrouterd.log", env.dir);
    char *argv[] = {(char *)opt.daemon, "-f", "-c", (char *)conf, NULL};
    env.daemon_pid = spawn(argv, env.daemon_log);
}

static void check_daemon(void)
{
    char why[64];
    if (env.daemon_pid > 0 && exited(env.daemon_pid, why, sizeof why)) {
        env.daemon_pid = 0;
        die_daemon("leadrouterd %s", why);
    }
}

/* SIGTERM: it must drain and exit 0 within 30 s. Returns its CPU time. */
static int64_t stop_daemon(void)
{
    int st;
    struct rusage ru;
    kill(env.daemon_pid, SIGTERM);
    int r = wait_exit(env.daemon_pid, 30, &st, &ru);
    if (r != 1)
        die_daemon("leadrouterd did not exit within 30 s of SIGTERM");
    env.daemon_pid = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die_daemon("leadrouterd %s %d after SIGTERM (expected exit status 0)",
                   WIFEXITED(st) ? "exited with status" : "was killed by signal",
                   WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    return (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
           (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
}

/* Running and reading: a client blocked in XREADGROUP (Redis 7.0 adds a
 * consumer to the group only once it is served), or its consumer in the
 * group. Bounded. */
static void wait_daemon_reading(void)
{
    double end = mono_s() + 15;
    while (mono_s() < end) {
        check_interrupted();
        check_daemon();
        redisReply *r = cmd("CLIENT LIST");
        bool ok = r->type == REDIS_REPLY_STRING && strstr(r->str, "cmd=xreadgroup") != NULL;
        freeReplyObject(r);
        r = cmd_any("XINFO CONSUMERS " PREFIX ":in " GROUP);
        ok |= r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        freeReplyObject(r);
        if (ok)
            return;
        sleep_ms(10);
    }
    die_daemon("leadrouterd did not start reading " PREFIX ":in within 15 s");
}

static long long sum_llen(const struct queues *qs)
{
    for (size_t i = 0; i < qs->n; i++) {
        const char *argv[] = {"LLEN", qs->keys[i]};
        size_t al[] = {4, strlen(qs->keys[i])};
        redisAppendCommandArgv(env.rc, 2, argv, al);
    }
    long long sum = 0;
    for (size_t i = 0; i < qs->n; i++) {
        redisReply *r;
        if (redisGetReply(env.rc, (void **)&r) != REDIS_OK || !r)
            die("LLEN: %s", env.rc->errstr);
        if (r->type == REDIS_REPLY_INTEGER)
            sum += r->integer;
        freeReplyObject(r);
    }
    return sum;
}

/* Entries of the input stream not committed yet: pending in the group or
 * not delivered (acknowledged entries are trimmed later, not at once). */
static long long in_left(void)
{
    long long left = 0;
    if (cur_mix == MIX_LIST) { /* the input list, then (KEYS is O(keys)) the processing lists */
        left = cmd_int("LLEN " PREFIX ":in");
        if (left > 0)
            return left;
        redisReply *k = cmd("KEYS " PREFIX ":in:processing:*");
        for (size_t i = 0; k->type == REDIS_REPLY_ARRAY && i < k->elements; i++)
            left += cmd_int("LLEN %s", k->element[i]->str);
        freeReplyObject(k);
        return left;
    }
    redisReply *r = cmd_any("XPENDING " PREFIX ":in " GROUP);
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->type == REDIS_REPLY_INTEGER)
        left += r->element[0]->integer;
    freeReplyObject(r);
    r = cmd_any("XINFO GROUPS " PREFIX ":in");
    for (size_t g = 0; r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *x = r->element[g];
        for (size_t i = 0; x->type == REDIS_REPLY_ARRAY && i + 1 < x->elements; i += 2)
            if (x->element[i]->type == REDIS_REPLY_STRING && strcmp(x->element[i]->str, "lag") == 0)
                left += x->element[i + 1]->type == REDIS_REPLY_INTEGER ? x->element[i + 1]->integer : 1;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        left = cmd_int("XLEN " PREFIX ":in"); /* no group yet: nothing was read */
    freeReplyObject(r);
    return left;
}

/* Waits (bounded by --timeout, from t0) until the input stream is done
 * (every entry committed) and the queues hold want
 * entries (want < 0: any number). Returns the time of completion and the
 * daemon's CPU time then. */
static double wait_committed(double t0, long long want, const struct queues *qs, int64_t *cpu_us)
{
    long long xlen = -1, sum = -1;
    for (;;) {
        check_interrupted();
        check_daemon();
        xlen = in_left();
        if (xlen == 0) {
            sum = want >= 0 ? sum_llen(qs) : 0;
            if (want < 0 || sum == want) {
                double t = mono_s();
                if (cpu_us)
                    *cpu_us = proc_cpu_us(env.daemon_pid);
                return t;
            }
            if (sum > want)
                die_daemon("the queues hold %lld entries for %lld leads (max_buyers is 1): duplicates", sum,
                           want);
        }
        if (mono_s() - t0 > opt.timeout) {
            redisReply *r = cmd_any("XPENDING " PREFIX ":in " GROUP);
            long long pending = r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
            freeReplyObject(r);
            die_daemon("timeout after %.0f s: %lld entries left in " PREFIX
                       ":in (%lld pending), queues hold %lld of "
                       "%lld (raise --timeout?)",
                       opt.timeout, xlen, pending, sum, want);
        }
        sleep_ms(2);
    }
}

/* ---------------------------------------------------------- ceiling --- */

/* Loads script; returns its sha in sha[41]. */
static void load_script(const char *script, char sha[41])
{
    redisReply *r = cmd("SCRIPT LOAD %s", script);
    if (r->type != REDIS_REPLY_STRING || r->len != 40)
        die("SCRIPT LOAD: unexpected reply");
    memcpy(sha, r->str, 41);
    freeReplyObject(r);
}

/* Runs redis-benchmark -q with extra (NULL-terminated) arguments; returns
 * its requests per second. */
static double redis_benchmark(const char *name, char *const *extra)
{
    char port[16], log[PATH_MAX + 64];
    snprintf(port, sizeof port, "%d", env.port);
    snprintf(log, sizeof log, "%s/redis-benchmark-%s.log", env.dir, name);
    char *argv[32] = {"redis-benchmark", "-h", "127.0.0.1", "-p", port, "-q"};
    size_t k = 6;
    for (size_t i = 0; extra[i] && k < 31; i++)
        argv[k++] = extra[i];
    argv[k] = NULL;
    pid_t pid = spawn(argv, log);
    int st;
    double end = mono_s() + 300;
    for (;;) {
        int w = wait_exit(pid, 1, &st, NULL);
        if (w == 1)
            break;
        if (w < 0 || interrupted || mono_s() > end) {
            kill(pid, SIGKILL);
            (void)wait_exit(pid, 5, &st, NULL);
            die("redis-benchmark %s", interrupted ? "interrupted" : "did not finish within 300 s");
        }
    }
    FILE *f = fopen(log, "r");
    static char out[1 << 16];
    size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
    if (f)
        fclose(f);
    out[n] = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        print_tail(log, 1000);
        die("redis-benchmark failed");
    }
    /* -q prints progress lines separated by '\r', then
     * "EVALSHA ...: 181415.19 requests per second, p50=..." */
    char *hit = NULL;
    for (char *p = out; (p = strstr(p, " requests per second")) != NULL; p++)
        hit = p;
    if (!hit)
        die("cannot find 'requests per second' in the redis-benchmark output (%s)", log);
    char *b = hit;
    while (b > out && (b[-1] == '.' || (b[-1] >= '0' && b[-1] <= '9')))
        b--;
    double rps = strtod(b, NULL);
    if (!(rps > 0))
        die("cannot parse requests per second from redis-benchmark (%s)", log);
    return rps;
}

/* redis-benchmark of EVALSHA of RPOP + LPUSH + INCR: what one Redis core
 * does with the cheapest script that moves an item and counts it. */
static double run_ceiling(void)
{
    static const char script[] = "local v = redis.call('RPOP', KEYS[1]) or 'x' "
                                 "redis.call('LPUSH', KEYS[1], v) "
                                 "return redis.call('INCR', KEYS[2])";
    char sha[41];
    load_script(script, sha);
    if (cmd_int("EVALSHA %s 2 bench:list bench:n", sha) != 1)
        die("the ceiling script does not count as expected");
    char *extra[] = {"-P", "64", "-n", "1000000", "EVALSHA", sha, "2", "bench:list", "bench:n", NULL};
    double rps = redis_benchmark("ceiling", extra);
    freeReplyObject(cmd("DEL bench:list bench:n"));
    return rps;
}

/* The contract's floor: a script that makes only the writes SPEC section 4
 * asks for each lead (the record with its expiry, the audit entry, the
 * duplicate digest, the push to a dealer queue) for FLOOR_LEADS leads per
 * call, with no decoding, fence, checks, caps, statistics or ack. No
 * commit script that keeps the contract can beat it; in database 9,
 * emptied after. Returns leads per second. */
#define FLOOR_LEADS 256
static double run_floor(void)
{
    static const char script[] =
        "local base, n, payload = ARGV[1], tonumber(ARGV[2]), ARGV[3] "
        "for i = 1, n do "
        "  local id = base .. ':' .. i "
        "  local rec = 'floor:lead:' .. id "
        "  redis.call('HSET', rec, 'dealers', 'd1', 'attempt', '1', 'niche', 'solar', 'payload', payload) "
        "  redis.call('EXPIRE', rec, '2592000') "
        "  redis.call('XADD', 'floor:audit', 'MAXLEN', '~', '1000000', '*', 'lead_id', id, "
        "    'outcome', 'assigned', 'dealers', 'd1', 'rule', 'territory:zip', 'passed', '') "
        "  redis.call('SET', 'floor:seen:' .. id, 'd1', 'NX', 'EX', '2592000') "
        "  redis.call('RPUSH', 'floor:dealer:' .. (i % 200), payload) "
        "end "
        "return n";
    char sha[41];
    load_script(script, sha);
    char payload[221], n[16];
    memset(payload, 'p', sizeof payload - 1);
    payload[sizeof payload - 1] = 0;
    snprintf(n, sizeof n, "%d", FLOOR_LEADS);
    char *extra[] = {"--dbnum", "9", "-r", "1000000000", "-c", "1", "-n", "400", "EVALSHA", sha, "0",
                     "__rand_int__", n, payload, NULL};
    double rps = redis_benchmark("floor", extra);
    freeReplyObject(cmd("SELECT 9"));
    freeReplyObject(cmd("FLUSHDB"));
    freeReplyObject(cmd("SELECT 0"));
    return rps * FLOOR_LEADS;
}

/* ------------------------------------------------------ measurement --- */

struct result {
    double leads_per_s, ceiling, cpu_us_per_lead, p50, p99, floor; /* NAN = not measured */
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static size_t rank(size_t n, double q)
{
    size_t k = (size_t)ceil(q * (double)n);
    return k ? k - 1 : 0;
}

/* A stat of INFO commandstats, e.g. usec_per_call of evalsha; NAN if absent. */
static double commandstat(const char *info, const char *command, const char *field)
{
    char key[64];
    snprintf(key, sizeof key, "cmdstat_%s:", command);
    const char *p = strstr(info, key);
    if (!p)
        return NAN;
    const char *eol = strchr(p, '\n');
    char f[64];
    snprintf(f, sizeof f, "%s=", field);
    const char *q = strstr(p, f);
    if (!q || (eol && q > eol))
        return NAN;
    return strtod(q + strlen(f), NULL);
}

static void print_redis_costs(size_t leads, int64_t redis_cpu_us)
{
    redisReply *r = cmd("INFO commandstats");
    double ev = commandstat(r->str, "evalsha", "usec_per_call"),
           evn = commandstat(r->str, "evalsha", "calls");
    double xr = commandstat(r->str, "xreadgroup", "calls"), xru = commandstat(r->str, "xreadgroup", "usec");
    printf("redis: CPU %.2f us/lead (main thread and all); commit script (EVALSHA) %.2f us per call, %.0f "
           "calls (%.2f us/lead); %.0f XREADGROUP (%.1f leads per read, %.2f us/lead)\n",
           (double)redis_cpu_us / (double)leads, ev, evn, ev * evn / (double)leads, xr,
           xr > 0 ? (double)leads / xr : 0.0, xru / (double)leads);
    /* Where the script's time goes: the commands it calls, per lead. */
    printf("redis: commands per lead (calls, us):");
    for (const char *l = strstr(r->str, "cmdstat_"); l; l = strstr(l + 1, "\ncmdstat_")) {
        if (*l == '\n')
            l++;
        char name[64];
        double calls, usec;
        if (sscanf(l, "cmdstat_%63[^:]:calls=%lf,usec=%lf", name, &calls, &usec) == 3 &&
            strcmp(name, "evalsha") != 0 && strcmp(name, "xreadgroup") != 0)
            printf(" %s %.2f/%.2f", name, calls / (double)leads, usec / (double)leads);
    }
    printf("\n");
    freeReplyObject(r);
}

/* The fixed-rate phase: the daemon runs and is idle; R leads/s for S s in
 * 1 ms bursts; latency = routed_at - created_at per lead. */
static void run_latency(const struct queues *qs, struct result *res)
{
    size_t m = (size_t)llround((double)opt.rate * opt.seconds);
    if (m == 0 || m > 10000000)
        die("--rate x --seconds gives %zu leads: the latency phase takes 1 to 10 000 000", m);
    /* Fresh queues: the phase's leads are all that is in them. */
    for (size_t i = 0; i < qs->n; i++)
        freeReplyObject(cmd("UNLINK %s", qs->keys[i]));
    wait_daemon_reading();
    sleep_ms(300);
    /* Redis's own record of events slower than 5 ms, to tell its stalls
     * from the daemon's and the machine's. */
    freeReplyObject(cmd("CONFIG SET latency-monitor-threshold 5"));
    freeReplyObject(cmd("LATENCY RESET"));
    int64_t *created = xcalloc(m, sizeof *created), *sent_us = xcalloc(m, sizeof *sent_us);
    struct tally t;
    tally_init(&t, m, "r", qs->n_dealers, true, false);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    struct gen_lead g;
    int64_t tick_ns = opt.rate >= 1000 ? 1000000 : 1000000000 / opt.rate;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    double start = mono_s();
    int64_t cpu0 = proc_cpu_us(env.daemon_pid);
    size_t sent = 0;
    printf("latency: %zu leads at %ld/s for %g s, in bursts every %.3g ms, daemon idle before\n", m, opt.rate,
           opt.seconds, (double)tick_ns / 1e6);
    fflush(stdout);
    while (sent < m) {
        check_interrupted();
        double el = mono_s() - start;
        size_t due = (size_t)((double)opt.rate * el) + 1;
        if (due > m)
            due = m;
        size_t burst = due > sent ? due - sent : 0;
        for (size_t k = 0; k < burst; k++) {
            int64_t us = wall_us();
            sent_us[sent + k] = us;
            created[sent + k] = us / 1000;
            world_lead(&g, 'r', sent + k, us / 1000, true);
            pack_lead(&g, &sb);
            const char *argv[] = {"XADD", PREFIX ":in", "*", "lead", sb.data};
            size_t al[] = {4, strlen(PREFIX ":in"), 1, 4, sb.size};
            redisAppendCommandArgv(env.rc, 5, argv, al);
        }
        for (size_t k = 0; k < burst; k++) {
            redisReply *r;
            if (redisGetReply(env.rc, (void **)&r) != REDIS_OK || !r)
                die("XADD: %s", env.rc->errstr);
            if (r->type != REDIS_REPLY_STRING)
                die("XADD: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
        }
        sent += burst;
        next.tv_nsec += tick_ns;
        while (next.tv_nsec >= 1000000000) {
            next.tv_nsec -= 1000000000;
            next.tv_sec++;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR && !interrupted) {
        }
    }
    double send_s = mono_s() - start;
    int64_t cpu_us = 0;
    (void)wait_committed(start, (long long)m, qs, &cpu_us);
    char events[512] = "";
    redisReply *ll = cmd("LATENCY LATEST");
    size_t eo = 0;
    for (size_t i = 0; ll->type == REDIS_REPLY_ARRAY && i < ll->elements && eo < sizeof events; i++) {
        const redisReply *e = ll->element[i];
        if (e->type == REDIS_REPLY_ARRAY && e->elements >= 4)
            eo += (size_t)snprintf(events + eo, sizeof events - eo, " %s max %lld ms;", e->element[0]->str,
                                   e->element[3]->integer);
    }
    freeReplyObject(ll);
    tally_read(&t, qs);
    struct verdict v = tally_check(&t, 1);
    print_verdict("latency: exactly-once", &t, &v);
    if (!v.ok)
        die("leads lost or duplicated in the latency phase");
    int64_t *lat = xcalloc(m, sizeof *lat);
    double *fine = xcalloc(m, sizeof *fine);
    size_t k = 0;
    for (size_t i = 0; i < m; i++)
        if (t.commit_ms[i] > 0) {
            lat[k] = t.commit_ms[i] - created[i];
            /* routed_at is the commit's ms floored: the true commit instant
             * lies in [routed_at, routed_at + 1), so against the send time in
             * us the midpoint is within 0.5 ms. */
            fine[k++] = ((double)t.commit_ms[i] + 0.5) - (double)sent_us[i] / 1000.0;
        }
    if (k == 0)
        die("no routed_at/at found in the latency phase's outcomes");
    qsort(lat, k, sizeof *lat, cmp_i64);
    qsort(fine, k, sizeof *fine, cmp_dbl);
    res->p50 = (double)lat[rank(k, 0.50)];
    res->p99 = (double)lat[rank(k, 0.99)];
    printf("latency: sent at %.0f leads/s (%zu in %.2f s); daemon CPU %.2f us/lead at this rate\n",
           (double)m / send_s, m, send_s, (double)(cpu_us - cpu0) / (double)m);
    printf("latency: routed_at - created_at: p50 %" PRId64 " ms, p99 %" PRId64 " ms, p99.9 %" PRId64
           " ms, max %" PRId64 " ms\n",
           lat[rank(k, 0.50)], lat[rank(k, 0.99)], lat[rank(k, 0.999)], lat[k - 1]);
    printf("latency: routed_at comes from Redis TIME in unix ms and created_at is the producer's unix ms: "
           "both have "
           "1 ms resolution, so each value is within +-1 ms\n");
    printf("latency: finer estimate, against the send time in us (routed_at + 0.5 ms - sent): p50 %.2f ms, "
           "p99 %.2f "
           "ms, max %.2f ms\n",
           fine[rank(k, 0.50)], fine[rank(k, 0.99)], fine[k - 1]);
    printf("latency: redis events over 5 ms during the phase (LATENCY LATEST):%s\n",
           events[0] ? events : " none");
    if (res->p50 > 100)
        printf("latency: NOTE: the daemon did not keep up with %ld leads/s%s: these latencies are mostly "
               "time queued "
               "in " PREFIX ":in; try a lower --rate to see the routing latency\n",
               opt.rate, isnan(res->leads_per_s) ? "" : " (its throughput above)");
    if (isnan(res->cpu_us_per_lead))
        res->cpu_us_per_lead = (double)(cpu_us - cpu0) / (double)m;
    free(lat);
    free(fine);
    free(created);
    free(sent_us);
    tally_free(&t);
    msgpack_sbuffer_destroy(&sb);
}

static void print_result(const struct result *r)
{
    char a[32] = "na", b[32] = "na", c[32] = "na", d[32] = "na", e[32] = "na", f[32] = "na";
    if (!isnan(r->leads_per_s))
        snprintf(a, sizeof a, "%.0f", r->leads_per_s);
    if (!isnan(r->ceiling))
        snprintf(b, sizeof b, "%.0f", r->ceiling);
    if (!isnan(r->leads_per_s) && !isnan(r->ceiling))
        snprintf(c, sizeof c, "%.3f", r->leads_per_s / r->ceiling);
    if (!isnan(r->cpu_us_per_lead))
        snprintf(d, sizeof d, "%.2f", r->cpu_us_per_lead);
    if (!isnan(r->p50))
        snprintf(e, sizeof e, "%.0f", r->p50);
    if (!isnan(r->p99))
        snprintf(f, sizeof f, "%.0f", r->p99);
    if (!isnan(r->floor)) {
        char g[32] = "na";
        if (!isnan(r->leads_per_s))
            snprintf(g, sizeof g, "%.3f", r->leads_per_s / r->floor);
        printf("FLOOR contract_writes_leads_per_s=%.0f floor/ceiling=%.3f leads_per_s/floor=%s\n", r->floor,
               isnan(r->ceiling) ? NAN : r->floor / r->ceiling, g);
    }
    printf("RESULT leads_per_s=%s ceiling_evalsha_per_s=%s ratio=%s daemon_cpu_us_per_lead=%s p50_ms=%s "
           "p99_ms=%s\n",
           a, b, c, d, e, f);
}

static struct cfg *load_config(const char *path)
{
    struct cfg *c = NULL;
    char err[1024];
    if (cfg_load(path, &c, err, sizeof err) != 0)
        die("config: %s", err);
    return c;
}

/* What one throughput mix measured. */
struct phase {
    double leads_per_s, redis_us, daemon_us; /* NAN = not run */
};

/* The heavy mix's suppression list: random digests no lead matches, so
 * SMISMEMBER runs against a set of that size and rejects nothing. */
static void fill_dnc(size_t n)
{
    for (size_t i = 0; i < n; i += XADD_CHUNK) {
        size_t m = n - i < XADD_CHUNK ? n - i : XADD_CHUNK;
        for (size_t k = 0; k < m; k++) {
            char dg[41];
            for (int j = 0; j < 40; j += 16)
                snprintf(dg + j, sizeof dg - (size_t)j, "%016" PRIx64, rnd());
            redisAppendCommand(env.rc, "SADD " PREFIX ":dnc %s", dg);
        }
        for (size_t k = 0; k < m; k++) {
            redisReply *r;
            if (redisGetReply(env.rc, (void **)&r) != REDIS_OK || !r)
                die("SADD: %s", env.rc->errstr);
            freeReplyObject(r);
        }
    }
}

/* One throughput mix on an emptied Redis: enqueue N leads, start the
 * daemon, time it until all are committed, check exactly once. The daemon
 * is left running (the latency phase follows the default mix). */
static void run_throughput(enum mix mix, const char *conf, const struct queues *qs, struct phase *ph)
{
    cur_mix = mix;
    freeReplyObject(cmd("FLUSHALL"));
    if (mix == MIX_HEAVY)
        fill_dnc(HEAVY_DNC);
    size_t n = (size_t)opt.n;
    struct tally t;
    tally_init(&t, n, "t", qs->n_dealers, false, false);
    t.refs = xcalloc(n, sizeof *t.refs);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    char **pl = xcalloc(XADD_CHUNK, sizeof *pl);
    size_t *ln = xcalloc(XADD_CHUNK, sizeof *ln), bytes = 0;
    double t_enq = mono_s();
    int64_t now_ms = wall_us() / 1000;
    rng_state = opt.seed * UINT64_C(0x9E3779B97F4A7C15) | 1; /* the same leads in every mix */
    for (size_t i = 0; i < n; i += XADD_CHUNK) {
        size_t m = n - i < XADD_CHUNK ? n - i : XADD_CHUNK;
        for (size_t k = 0; k < m; k++) {
            struct gen_lead g;
            world_lead(&g, 't', i + k, now_ms, false);
            pack_lead(&g, &sb);
            pl[k] = dup_bytes(&sb, &ln[k]);
            bytes += ln[k];
        }
        xadd_all(pl, ln, m, t.refs + i);
        for (size_t k = 0; k < m; k++)
            free(pl[k]);
    }
    t_enq = mono_s() - t_enq;
    printf("[%s] enqueue: %zu leads (%.0f bytes each on average) in %.2f s, %s pipelined %d at a time%s\n",
           MIX_NAMES[mix], n, (double)bytes / (double)n, t_enq, mix == MIX_LIST ? "LPUSH" : "XADD", XADD_CHUNK,
           mix == MIX_HEAVY ? "; " PREFIX ":dnc holds 100000 digests" : "");
    free(pl);
    free(ln);
    msgpack_sbuffer_destroy(&sb);

    freeReplyObject(cmd("CONFIG RESETSTAT"));
    int64_t rcpu0 = proc_cpu_us(env.redis_pid), dcpu = 0;
    double t0 = mono_s();
    start_daemon(conf);
    double t1 = wait_committed(t0, (long long)n, qs, &dcpu);
    int64_t rcpu1 = proc_cpu_us(env.redis_pid);
    double secs = t1 - t0;
    ph->leads_per_s = (double)n / secs;
    ph->daemon_us = (double)dcpu / (double)n;
    ph->redis_us = (double)(rcpu1 - rcpu0) / (double)n;
    printf("[%s] throughput: %zu leads committed in %.3f s from the daemon's start: %.0f leads/s; daemon CPU "
           "%.2f s (%.2f us/lead)\n",
           MIX_NAMES[mix], n, secs, ph->leads_per_s, (double)dcpu / 1e6, ph->daemon_us);
    print_redis_costs(n, rcpu1 - rcpu0);
    fflush(stdout);
    tally_read(&t, qs);
    struct verdict v = tally_check(&t, 1);
    print_verdict("exactly-once", &t, &v);
    if (t.n_reasons) {
        printf("unassigned by reason:");
        for (int i = 0; i < t.n_reasons; i++)
            printf(" %s=%zu", t.reasons[i].key, t.reasons[i].n);
        printf("\n");
    }
    free(t.refs);
    tally_free(&t);
    if (!v.ok)
        die("leads were lost or duplicated: the result is void");
    fflush(stdout);
}

static void run_bench(void)
{
    struct result res = {NAN, NAN, NAN, NAN, NAN, NAN};
    char conf[MIX_N][PATH_MAX + 32];
    for (int m = 0; m < MIX_N; m++) {
        snprintf(conf[m], sizeof conf[m], "%s/bench-%s.conf", env.dir, MIX_NAMES[m]);
        write_bench_config(conf[m], (enum mix)m);
    }
    struct cfg *c = load_config(conf[MIX_DEFAULT]);
    struct queues qs;
    queues_init(&qs, c->rules);
    redisReply *ver = cmd("INFO server");
    const char *vp = strstr(ver->str, "redis_version:");
    char version[32] = "?";
    if (vp)
        sscanf(vp + 14, "%31[^\r\n]", version);
    freeReplyObject(ver);
    printf("bench-e2e: redis-server %s on 127.0.0.1:%d, leadrouterd %s\n", version, env.port, opt.daemon);
    printf("world: %u niches, %u dealers in %zu states (state, zip, prefix and radius territories; "
           "max_buyers 1), "
           "input.batch %d, audit on (audit_maxlen default)\n",
           c->rules->n_niches, c->rules->n_dealers, W_N_STATES, opt.batch);
    fflush(stdout);

    if (opt.mode == MODE_THROUGHPUT && opt.ceiling) {
        res.ceiling = run_ceiling();
        printf("ceiling: redis-benchmark -P 64 -n 1000000 EVALSHA (RPOP + LPUSH + INCR): %.0f calls/s\n",
               res.ceiling);
        fflush(stdout);
        res.floor = run_floor();
        printf("floor: redis-benchmark EVALSHA of a script making only the per-lead writes of the contract "
               "(record HSET+EXPIRE, audit XADD, digest SET NX EX, RPUSH), %d leads per call: %.0f leads/s\n",
               FLOOR_LEADS, res.floor);
        fflush(stdout);
    }

    struct phase ph[MIX_N];
    for (int m = 0; m < MIX_N; m++)
        ph[m] = (struct phase){NAN, NAN, NAN};
    if (opt.mode == MODE_THROUGHPUT) {
        for (int m = 0; m < MIX_N; m++) {
            if (!opt.mixes[m])
                continue;
            run_throughput((enum mix)m, conf[m], &qs, &ph[m]);
            if (m == MIX_DEFAULT && opt.latency)
                run_latency(&qs, &res);
            int64_t total_cpu = stop_daemon();
            printf("[%s] daemon: drained and exited 0 on SIGTERM (CPU %.2f s in all)\n", MIX_NAMES[m],
                   (double)total_cpu / 1e6);
        }
        for (int m = 0; m < MIX_N; m++) {
            if (isnan(ph[m].leads_per_s))
                continue;
            char vs[32] = "na";
            if (!isnan(ph[MIX_DEFAULT].leads_per_s))
                snprintf(vs, sizeof vs, "%.3f", ph[m].leads_per_s / ph[MIX_DEFAULT].leads_per_s);
            printf("MIX %s leads_per_s=%.0f redis_cpu_us_per_lead=%.2f daemon_cpu_us_per_lead=%.2f "
                   "vs_default=%s\n",
                   MIX_NAMES[m], ph[m].leads_per_s, ph[m].redis_us, ph[m].daemon_us, vs);
        }
        res.leads_per_s = ph[MIX_DEFAULT].leads_per_s;
        res.cpu_us_per_lead = ph[MIX_DEFAULT].daemon_us;
    } else {
        start_daemon(conf[MIX_DEFAULT]);
        run_latency(&qs, &res);
        int64_t total_cpu = stop_daemon();
        printf("daemon: drained and exited 0 on SIGTERM (CPU %.2f s in all)\n", (double)total_cpu / 1e6);
    }
    queues_free(&qs);
    cfg_free(c);
    print_result(&res);
}

/* ------------------------------------------------------------ scale --- */

#define SCALE_ZIPS 10000

static void write_scale_config(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        die("%s: %s", path, strerror(errno));
    fprintf(f,
            "# Generated by bench-e2e (scale mode).\n"
            "redis = { host = \"127.0.0.1\"; port = %d; startup_timeout = 10; };\n"
            "input = { mode = \"stream\"; group = \"" GROUP "\"; };\n"
            "prefix = \"" PREFIX "\";\n"
            "admin = { socket = \"%s/admin.sock\"; mode = \"0600\"; };\n"
            "defaults = { timezone = \"UTC\"; };\n"
            "niches = ( { name = \"solar\"; strategy = \"weighted\"; } );\n"
            "dealers = (\n",
            env.port, env.dir);
    for (int i = 0; i < n; i++)
        fprintf(f,
                "%s{ id = \"s-%06d\"; niches = [ \"solar\" ]; territory = { zips = [ \"5%04d\" ]; }; "
                "contract = { weight = %d; caps = { day = 1000000; }; }; }\n",
                i ? "," : "", i, i % SCALE_ZIPS, 1 + i % 3);
    fprintf(f, ");\n");
    if (fclose(f) != 0)
        die("%s: %s", path, strerror(errno));
}

/* Sends one lead on a covered zip and waits (bounded) for it in a dealer
 * queue; returns when it was routed (mono_s). */
static double route_one(const char *id, int n_dealers)
{
    struct gen_lead g;
    gen_init(&g);
    snprintf(g.id, sizeof g.id, "%s", id);
    g.niche = "solar";
    g.country = "US";
    g.state = "IA";
    snprintf(g.zip, sizeof g.zip, "5%04d", (int)(rnd_below(n_dealers < SCALE_ZIPS ? (uint32_t)n_dealers : SCALE_ZIPS)));
    g.has_score = true;
    g.score = 50;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_lead(&g, &sb);
    size_t len;
    char *p = dup_bytes(&sb, &len);
    msgpack_sbuffer_destroy(&sb);
    xadd_all(&p, &len, 1, NULL);
    free(p);
    double end = mono_s() + opt.timeout;
    while (mono_s() < end) {
        check_interrupted();
        check_daemon();
        if (in_left() == 0)
            return mono_s();
        sleep_ms(1);
    }
    die_daemon("lead %s was not routed within %.0f s", id, opt.timeout);
}

static bool log_has(const char *what)
{
    FILE *f = fopen(env.daemon_log, "r");
    if (!f)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

static void run_scale(void)
{
    static const int sizes[] = {1000, 10000, 100000};
    printf("bench-e2e --scale: dealers on one zip each, a rotation hash holding all of them\n");
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k];
        freeReplyObject(cmd("FLUSHALL"));
        for (int i = 0; i < n; i += XADD_CHUNK) {
            int m = n - i < XADD_CHUNK ? n - i : XADD_CHUNK;
            for (int j = 0; j < m; j++)
                redisAppendCommand(env.rc, "HSET " PREFIX ":rr:solar:1 s-%06d %d", i + j, (i + j) % 7 - 3);
            for (int j = 0; j < m; j++) {
                redisReply *r;
                if (redisGetReply(env.rc, (void **)&r) != REDIS_OK || !r)
                    die("HSET: %s", env.rc->errstr);
                freeReplyObject(r);
            }
        }
        char conf[PATH_MAX + 32];
        snprintf(conf, sizeof conf, "%s/scale-%d.conf", env.dir, n);
        write_scale_config(conf, n);
        char id[32];
        double t0 = mono_s();
        start_daemon(conf);
        snprintf(id, sizeof id, "S%d-start", n);
        double t_start = route_one(id, n) - t0;
        double h0 = mono_s();
        kill(env.daemon_pid, SIGHUP);
        double end = h0 + opt.timeout;
        while (!log_has("reloaded ")) {
            check_interrupted();
            check_daemon();
            if (mono_s() > end)
                die_daemon("no reload within %.0f s", opt.timeout);
            sleep_ms(2);
        }
        double t_reload = mono_s() - h0;
        snprintf(id, sizeof id, "S%d-after", n);
        double h1 = mono_s();
        double t_sync = route_one(id, n) - h1;
        bool hung = log_has("server hung");
        stop_daemon();
        printf("SCALE dealers=%d start_to_first_lead_s=%.3f reload_s=%.3f reload_to_next_lead_s=%.3f "
               "watchdog_drops=%s\n",
               n, t_start, t_reload, t_sync, hung ? "yes" : "none");
    }
}

/* ------------------------------------------------------------- demo --- */

/* Copies src to dst, pointing the redis group at the throwaway server
 * and the admin socket into the temp dir: the settings are written right
 * after each group's opening line and the file's own lines for them are
 * commented out. load_config() then checks the result. */
static void rewrite_config(const char *src, const char *dst, const char *admin_sock)
{
    FILE *in = fopen(src, "r");
    if (!in)
        die("%s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "w");
    if (!out)
        die("%s: %s", dst, strerror(errno));
    static const char *const redis_keys[] = {
        "host", "port", "socket", "username", "password", "startup_timeout", NULL};
    static const char *const admin_keys[] = {"socket", NULL};
    const char *const *keys = NULL;
    bool seen_redis = false, seen_admin = false;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, in) > 0) {
        const char *p = line + strspn(line, " \t");
        char word[32] = "";
        sscanf(p, "%31[A-Za-z0-9_]", word);
        const char *after = p + strlen(word);
        after += strspn(after, " \t");
        bool opens = (*after == '=' || *after == ':') && strchr(after, '{') != NULL;
        if (!keys && opens && strcmp(word, "redis") == 0) {
            fputs(line, out);
            fprintf(out,
                    "    host = \"127.0.0.1\"; port = %d; socket = \"\"; username = \"\"; password = \"\";\n"
                    "    startup_timeout = 10;   # (bench-e2e: the throwaway Redis)\n",
                    env.port);
            keys = redis_keys;
            seen_redis = true;
            continue;
        }
        if (!keys && opens && strcmp(word, "admin") == 0) {
            fputs(line, out);
            fprintf(out, "    socket = \"%s\";   # (bench-e2e)\n", admin_sock);
            keys = admin_keys;
            seen_admin = true;
            continue;
        }
        if (keys && *p == '}') {
            keys = NULL;
        } else if (keys && (*after == '=' || *after == ':')) {
            for (int i = 0; keys[i]; i++)
                if (strcmp(word, keys[i]) == 0) {
                    fputs("#", out); /* replaced above */
                    break;
                }
        }
        fputs(line, out);
    }
    free(line);
    fclose(in);
    if (!seen_redis)
        fprintf(out, "\nredis = { host = \"127.0.0.1\"; port = %d; startup_timeout = 10; };\n", env.port);
    if (!seen_admin)
        fprintf(out, "\nadmin = { socket = \"%s\"; };\n", admin_sock);
    if (fclose(out) != 0)
        die("%s: %s", dst, strerror(errno));
}

static void copy_file(const char *src, const char *dst)
{
    FILE *in = fopen(src, "rb");
    if (!in)
        die("%s: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out)
        die("%s: %s", dst, strerror(errno));
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            die("%s: %s", dst, strerror(errno));
    fclose(in);
    if (fclose(out) != 0)
        die("%s: %s", dst, strerror(errno));
}

/* The config's directory holds the files it @includes (dealers.d/): the
 * copy takes every subdirectory's regular files along, one level deep. */
static void copy_includes(const char *conf, const char *to)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", conf);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    DIR *d = opendir(dir);
    if (!d)
        die("%s: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char sub[PATH_MAX + 256], dst[PATH_MAX + 256];
        struct stat sb;
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        if (stat(sub, &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        snprintf(dst, sizeof dst, "%s/%s", to, e->d_name);
        if (mkdir(dst, 0700) != 0 && errno != EEXIST)
            die("%s: %s", dst, strerror(errno));
        DIR *sd = opendir(sub);
        if (!sd)
            continue;
        struct dirent *f;
        while ((f = readdir(sd)) != NULL) {
            char fs[PATH_MAX * 2 + 512], fd[PATH_MAX * 2 + 512];
            snprintf(fs, sizeof fs, "%s/%s", sub, f->d_name);
            snprintf(fd, sizeof fd, "%s/%s", dst, f->d_name);
            if (f->d_name[0] != '.' && stat(fs, &sb) == 0 && S_ISREG(sb.st_mode))
                copy_file(fs, fd);
        }
        closedir(sd);
    }
    closedir(d);
}

/* US states of the sample config's region: zip prefixes and a centre. */
static const struct {
    const char *st, *zip2[2], *zip3[3];
    double lat, lon;
} D_STATES[] = {
    {"IA", {"50", "52"}, {"503", "524", "506"}, 41.59, -93.62},
    {"IL", {"60", "62"}, {"606", "617", "627"}, 41.88, -87.63},
    {"MO", {"63", "65"}, {"631", "641", "658"}, 38.63, -90.20},
    {"NE", {"68", "69"}, {"681", "685", "689"}, 41.26, -95.94},
    {"WI", {"53", "54"}, {"532", "537", "549"}, 43.04, -87.91},
    {"MN", {"55", "56"}, {"554", "551", "559"}, 44.98, -93.27},
    {"KS", {"66", "67"}, {"672", "666", "662"}, 37.69, -97.34},
};
#define D_N_STATES (sizeof D_STATES / sizeof D_STATES[0])

/* Far from the sample's territories. */
static const struct {
    const char *st, *zip;
    double lat, lon;
} D_AWAY[] = {
    {"TX", "75201", 32.78, -96.80},
    {"FL", "33101", 25.77, -80.19},
    {"CA", "94105", 37.79, -122.39},
    {"AZ", "85004", 33.45, -112.07},
};

static int d_state(const char *st)
{
    for (size_t i = 0; i < D_N_STATES; i++)
        if (strcmp(D_STATES[i].st, st) == 0)
            return (int)i;
    return -1;
}

static int d_state_of_zip(const char *zip)
{
    for (size_t i = 0; i < D_N_STATES; i++)
        for (int k = 0; k < 2; k++)
            if (strncmp(zip, D_STATES[i].zip2[k], 2) == 0)
                return (int)i;
    return -1;
}

static const char *const D_CREDIT[] = {"excellent", "good", "good", "fair", "poor"};
static const char *const D_POLICY[] = {"home", "auto", "farm", "life"};

/* A lead in the territory of a random dealer of a random niche. */
static void demo_lead(struct gen_lead *g, const struct rules_table *t, size_t i)
{
    gen_init(g);
    snprintf(g->id, sizeof g->id, "demo-%04zu", i);
    const struct rules_niche *n;
    do
        n = &t->niches[rnd_below(t->n_niches)];
    while (n->n_members == 0);
    const struct rules_dealer *d = &t->dealers[n->members[rnd_below(n->n_members)]];
    uint32_t how = rnd_below(100);
    if (how < 70 && n->n_sources)
        g->source = n->sources[rnd_below(n->n_sources)];
    else if (how < 85 && n->n_keywords)
        g->keyword = n->keywords[rnd_below(n->n_keywords)];
    else
        g->niche = n->name;
    g->country = "US";
    int kinds[4], nk = 0; /* 0 exact zip, 1 prefix, 2 state, 3 radius */
    if (d->n_zips)
        kinds[nk++] = 0;
    if (d->n_prefixes)
        kinds[nk++] = 1;
    if (d->n_states)
        kinds[nk++] = 2;
    if (d->has_radius)
        kinds[nk++] = 3;
    int kind = nk ? kinds[rnd_below((uint32_t)nk)] : 2;
    int si = -1;
    if (kind == 0) {
        snprintf(g->zip, sizeof g->zip, "%s", d->zips[rnd_below(d->n_zips)]);
    } else if (kind == 1) {
        /* the prefix, then random digits up to 5 characters */
        snprintf(g->zip, sizeof g->zip, "%s", d->prefixes[rnd_below(d->n_prefixes)]);
        size_t len = strlen(g->zip);
        for (; len < 5; len++)
            g->zip[len] = (char)('0' + rnd_below(10));
        g->zip[len] = 0;
    } else if (kind == 2 && d->n_states) {
        const char *st = d->states[rnd_below(d->n_states)];
        si = d_state(st);
        if (si >= 0)
            snprintf(g->zip, sizeof g->zip, "%s%02u", D_STATES[si].zip3[rnd_below(3)], rnd_below(100));
        else
            g->state = st;
    } else if (kind == 3) {
        /* within 60% of the radius, in a random direction */
        double r = d->km * 0.6 * sqrt(rnd_unit()), a = rnd_unit() * 2 * M_PI;
        g->has_geo = true;
        g->lat = d->lat + r * cos(a) / 111.0;
        g->lon = d->lon + r * sin(a) / (111.0 * cos(d->lat * M_PI / 180));
        double best = 1e18;
        for (size_t k = 0; k < D_N_STATES; k++) { /* the nearest state's centre names the state */
            double dist = rules_distance_km(g->lat, g->lon, D_STATES[k].lat, D_STATES[k].lon);
            if (dist < best) {
                best = dist;
                si = (int)k;
            }
        }
    }
    if (si < 0 && g->zip[0])
        si = d_state_of_zip(g->zip);
    if (si >= 0 && !g->state)
        g->state = D_STATES[si].st;
    if (!g->has_geo && si >= 0 && rnd_below(4) == 0) {
        g->has_geo = true;
        g->lat = D_STATES[si].lat + (rnd_unit() - 0.5) * 0.4;
        g->lon = D_STATES[si].lon + (rnd_unit() - 0.5) * 0.4;
    }
    if (rnd_below(10) < 7) {
        g->has_score = true;
        g->score = 45 + (int)rnd_below(55);
    } else {
        g->has_signals = true;
        g->web = 1;
        g->email_ok = (int)rnd_below(2);
        g->phone_ok = 1;
        g->demo = (int)rnd_below(2);
        g->budget = (double)(10000 + 1000 * rnd_below(30));
    }
    g->home_owner = rnd_below(100) < 85;
    g->roof_age = (int)rnd_below(28);
    g->age = 21 + (int)rnd_below(55);
    g->loan_amount = 50000 + 5000 * (int)rnd_below(80);
    g->phone_verified = rnd_below(10) < 8 ? 1 : -1;
    g->credit = D_CREDIT[rnd_below(5)];
    g->policy_type = D_POLICY[rnd_below(4)];
}

static void demo_contact(struct gen_lead *g, size_t i)
{
    snprintf(g->name, sizeof g->name, "Demo Lead %zu", i);
    snprintf(g->phone, sizeof g->phone, "+1 515 555 %04zu", i);
    snprintf(g->email, sizeof g->email, "demo.lead%zu@example.com", i);
}

/* The routing core in process, with the state the commit would build in
 * a fresh Redis (caps used, queue depths, rotation), so the demo's leads
 * can be chosen to be mostly routable at this hour, and the daemon's
 * assignments compared with the core's. */
struct sim {
    const struct rules_table *t;
    struct rules_scratch *scr;
    struct codec_lead *cl;
    struct rules_usage *usage;
    int64_t *rr, *rr_try;
    int64_t now_ms;
};

/* Routes g now; when commit, moves the state on. Returns the number of
 * dealers picked (their indexes to out), 0 with the reason otherwise. */
static int sim_route(struct sim *s, const struct gen_lead *g, bool commit, uint16_t out[MAX_PLACES],
                     enum rules_reason *reason)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack_lead(g, &sb);
    char err[256];
    if (codec_lead_decode(s->cl, sb.data, sb.size, SIZE_MAX, err, sizeof err) != 0)
        die("a generated demo lead does not decode: %s", err);
    msgpack_sbuffer_destroy(&sb);
    const struct lead *l = codec_lead_get(s->cl);
    struct rules_input in = {.now_ms = s->now_ms, .usage = s->usage};
    struct rules_decision d;
    rules_decide(s->t, s->scr, l, &in, &d);
    size_t rr_bytes = (size_t)s->t->n_rr_slots * sizeof *s->rr;
    memcpy(s->rr_try, s->rr, rr_bytes);
    uint32_t k = rules_pick(s->t, &d, &in, l, s->rr_try);
    *reason = d.reason;
    for (uint32_t i = 0; i < k && i < MAX_PLACES; i++)
        out[i] = (uint16_t)d.picked[i];
    if (commit && k) {
        memcpy(s->rr, s->rr_try, rr_bytes);
        for (uint32_t i = 0; i < k; i++) {
            struct rules_usage *u = &s->usage[d.picked[i]];
            for (int p = 0; p < PERIOD_N; p++)
                u->used[p]++;
            u->pending++;
        }
    }
    return (int)k;
}

enum demo_kind { DK_ROUTABLE, DK_UNKNOWN, DK_AWAY, DK_BAD };

static const char *const WDAY[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

static void run_demo(void)
{
    char conf[PATH_MAX + 32], sock[PATH_MAX + 32];
    snprintf(conf, sizeof conf, "%s/leadrouter.conf", env.dir);
    snprintf(sock, sizeof sock, "%s/admin.sock", env.dir);
    rewrite_config(opt.conf, conf, sock);
    copy_includes(opt.conf, env.dir);
    struct cfg *c = load_config(conf);
    if (c->redis.port != env.port || c->redis.socket || !c->admin.socket ||
        strcmp(c->admin.socket, sock) != 0)
        die("could not point %s at the throwaway Redis (redis.port/socket, admin.socket): check its layout",
            opt.conf);
    if (strcmp(c->prefix, PREFIX) != 0 || c->input.mode != INPUT_STREAM)
        die("the demo needs prefix \"" PREFIX "\" and input.mode \"stream\" in %s", opt.conf);
    const struct rules_table *t = c->rules;
    uint32_t served = 0;
    for (uint32_t i = 0; i < t->n_niches; i++)
        served += t->niches[i].n_members > 0;
    if (served == 0)
        die("%s: no niche is served by any dealer: nothing to demonstrate", opt.conf);
    struct queues qs;
    queues_init(&qs, t);
    int max_buyers = 1;
    for (uint32_t i = 0; i < t->n_niches; i++)
        if (t->niches[i].max_buyers > max_buyers)
            max_buyers = t->niches[i].max_buyers;

    /* ~300 leads: 270 in served territories (chosen so that most are
     * routable now, with a few that are not: closed, filtered, capped),
     * 12 of an unknown niche, 15 out of territory, 3 malformed. */
    enum { N_ROUTE = 270, N_UNKNOWN = 12, N_AWAY = 15, N_BAD = 3, N = N_ROUTE + N_UNKNOWN + N_AWAY + N_BAD };
    struct sim s = {.t = t, .now_ms = wall_us() / 1000};
    s.scr = rules_scratch_new(t);
    s.cl = codec_lead_new();
    s.usage = xcalloc(t->n_dealers, sizeof *s.usage);
    s.rr = xcalloc(t->n_rr_slots, sizeof *s.rr);
    s.rr_try = xcalloc(t->n_rr_slots, sizeof *s.rr_try);
    if (!s.scr || !s.cl)
        die("out of memory");
    struct gen_lead *route = xcalloc(N_ROUTE, sizeof *route);
    uint16_t(*pred)[MAX_PLACES] = xcalloc(N_ROUTE, sizeof *pred);
    int *n_pred = xcalloc(N_ROUTE, sizeof *n_pred);
    size_t unplanned = 0;
    for (size_t i = 0; i < N_ROUTE; i++) {
        enum rules_reason why;
        for (int attempt = 0;; attempt++) {
            demo_lead(&route[i], t, i);
            int k = sim_route(&s, &route[i], false, pred[i], &why);
            if (k > 0 || unplanned < N_ROUTE / 16 || attempt == 40) {
                n_pred[i] = sim_route(&s, &route[i], true, pred[i], &why);
                unplanned += k == 0;
                break;
            }
        }
    }

    /* The final order: the routable leads in their order (the prediction
     * depends on it), the others spread among them. */
    struct gen_lead *all = xcalloc(N, sizeof *all);
    enum demo_kind *kind = xcalloc(N, sizeof *kind);
    long *route_of = xcalloc(N, sizeof *route_of);
    size_t left_special = N - N_ROUTE, next_route = 0, n_unknown = 0, n_away = 0, n_bad = 0;
    for (size_t i = 0; i < N; i++) {
        route_of[i] = -1;
        if (next_route < N_ROUTE && rnd_below((uint32_t)(N - i)) >= left_special) {
            all[i] = route[next_route];
            route_of[i] = (long)next_route++;
            kind[i] = DK_ROUTABLE;
        } else {
            left_special--;
            struct gen_lead *g = &all[i];
            if (n_unknown < N_UNKNOWN && (n_away >= N_AWAY || rnd_below(2))) {
                demo_lead(g, t, i);
                g->niche = NULL;
                g->keyword = rnd_below(2) ? "lawn care" : NULL;
                g->source = n_unknown % 2 ? "cheapleads.example" : "petinsure.example";
                kind[i] = DK_UNKNOWN;
                n_unknown++;
            } else if (n_away < N_AWAY) {
                demo_lead(g, t, i);
                size_t a = rnd_below(sizeof D_AWAY / sizeof D_AWAY[0]);
                g->state = D_AWAY[a].st;
                snprintf(g->zip, sizeof g->zip, "%s", D_AWAY[a].zip);
                g->has_geo = rnd_below(2);
                g->lat = D_AWAY[a].lat;
                g->lon = D_AWAY[a].lon;
                kind[i] = DK_AWAY;
                n_away++;
            } else {
                kind[i] = DK_BAD;
                n_bad++;
            }
        }
    }
    if (n_bad != N_BAD)
        die("internal: demo mix has %zu malformed leads", n_bad);

    /* Pack them with ids in stream order. */
    char **pl = xcalloc(N, sizeof *pl);
    size_t *ln = xcalloc(N, sizeof *ln);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int64_t now_ms = wall_us() / 1000;
    size_t bad = 0;
    for (size_t i = 0; i < N; i++) {
        struct gen_lead *g = &all[i];
        if (kind[i] != DK_BAD) {
            snprintf(g->id, sizeof g->id, "demo-%04zu", i);
            g->created_at = now_ms;
            demo_contact(g, i);
            pack_lead(g, &sb);
            pl[i] = dup_bytes(&sb, &ln[i]);
            continue;
        }
        msgpack_sbuffer_clear(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        char id[32];
        snprintf(id, sizeof id, "demo-%04zu", i);
        if (bad == 0) { /* a lead cut short in transit */
            demo_lead(g, t, i);
            snprintf(g->id, sizeof g->id, "%s", id);
            pack_lead(g, &sb);
            sb.size = sb.size / 2;
        } else if (bad == 1) { /* an array, not a map */
            msgpack_pack_array(&pk, 2);
            pk_str(&pk, id);
            pk_str(&pk, "solar");
        } else { /* a map without an id */
            msgpack_pack_map(&pk, 2);
            pk_kstr(&pk, "source", "sunquote.example");
            pk_kstr(&pk, "state", "IA");
        }
        bad++;
        pl[i] = dup_bytes(&sb, &ln[i]);
    }
    msgpack_sbuffer_destroy(&sb);

    struct tally tl;
    tally_init(&tl, N, "demo-", qs.n_dealers, false, true);
    tl.refs = xcalloc(N, sizeof *tl.refs);
    xadd_all(pl, ln, N, tl.refs);
    for (size_t i = 0; i < N; i++)
        free(pl[i]);
    free(pl);
    free(ln);

    double t0 = mono_s();
    start_daemon(conf);
    double t1 = wait_committed(t0, -1, &qs, NULL);
    (void)stop_daemon();
    tally_read(&tl, &qs);
    struct verdict v = tally_check(&tl, max_buyers);

    /* The report. */
    struct lr_civil cv;
    const struct lr_tz *tz = t->tzs[t->default_tz];
    lr_tz_civil(tz, now_ms / 1000, &cv);
    uint32_t open = 0;
    for (uint32_t i = 0; i < t->n_dealers; i++)
        open += rules_dealer_open(t, i, now_ms / 1000);
    printf("leadrouter demo: %d leads through leadrouterd and a throwaway redis-server (127.0.0.1:%d)\n", N,
           env.port);
    printf("  config   %s (+ its @includes): %u niches, %u dealers\n", opt.conf, t->n_niches, t->n_dealers);
    printf(
        "  now      %s %04d-%02d-%02d %02d:%02d %s: %u of the %u dealers are within their business hours\n",
        WDAY[cv.wday], cv.year, cv.mon, cv.mday, cv.hour, cv.min, tz->name, open, t->n_dealers);
    printf("  leads    %d in served territories (picked to be mostly routable now), %d of an unknown niche,\n"
           "           %d out of territory, %d malformed; unique ids, phones and e-mails\n",
           N_ROUTE, N_UNKNOWN, N_AWAY, N_BAD);
    printf("  routed   all committed %.0f ms after leadrouterd started; it then drained and exited 0 on "
           "SIGTERM\n\n",
           (t1 - t0) * 1000);

    int wd = (int)strlen("DEALER"), wn = (int)strlen("NICHES");
    char(*niches)[160] = xcalloc(t->n_dealers, sizeof *niches);
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        const struct rules_dealer *d = &t->dealers[i];
        size_t o = 0;
        for (uint32_t k = 0; k < d->n_niches && o < sizeof niches[i]; k++)
            o += (size_t)snprintf(niches[i] + o, sizeof niches[i] - o, "%s%s", k ? "," : "",
                                  t->niches[d->niches[k]].name);
        if ((int)strlen(d->id) > wd)
            wd = (int)strlen(d->id);
        if ((int)strlen(niches[i]) > wn)
            wn = (int)strlen(niches[i]);
    }
    size_t assignments = 0;
    printf("  ASSIGNED (" PREFIX ":dealer:<id>)\n");
    printf("    %-*s  %-*s  %-6s %5s\n", wd, "DEALER", wn, "NICHES", "HOURS", "LEADS");
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        const struct rules_dealer *d = &t->dealers[i];
        const char *hours = !d->hours.set                            ? "always"
                            : rules_dealer_open(t, i, now_ms / 1000) ? "open"
                                                                     : "closed";
        printf("    %-*s  %-*s  %-6s %5zu\n", wd, d->id, wn, niches[i], hours, tl.per_dealer[i]);
        assignments += tl.per_dealer[i];
    }
    free(niches);
    printf("    %-*s  %-*s  %-6s %5zu  assignments of %zu leads (max_buyers > 1 gives a lead to several)\n\n",
           wd, "total", wn, "", "", assignments, v.assigned);

    qsort(tl.reasons, (size_t)tl.n_reasons, sizeof *tl.reasons, cmp_count);
    qsort(tl.errors, (size_t)tl.n_errors, sizeof *tl.errors, cmp_count);
    printf("  UNASSIGNED (" PREFIX ":unassigned) by reason\n");
    if (tl.n_reasons == 0)
        printf("    (none)\n");
    for (int i = 0; i < tl.n_reasons; i++)
        printf("    %-28s %5zu\n", tl.reasons[i].key, tl.reasons[i].n);
    printf("\n  DEAD LETTERS (" PREFIX ":dead) by error code\n");
    if (tl.n_errors == 0)
        printf("    (none)\n");
    for (int i = 0; i < tl.n_errors; i++)
        printf("    %-28s %5zu\n", tl.errors[i].key, tl.errors[i].n);

    printf("\n  WHY: the first routing decision in the audit stream (XRANGE " PREFIX ":audit - + COUNT 1)\n");
    redisReply *r = cmd("XRANGE " PREFIX ":audit - + COUNT 1");
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements == 2) {
        const redisReply *e = r->element[0], *f = e->element[1];
        printf("    %-9s %s\n", "entry", e->element[0]->str);
        for (size_t i = 0; i + 1 < f->elements; i += 2) {
            printf("    %-9s %s\n", f->element[i]->str, f->element[i + 1]->str);
            long li = strcmp(f->element[i]->str, "lead_id") == 0
                          ? lead_index(&tl, f->element[i + 1]->str, f->element[i + 1]->len)
                          : -1;
            if (li >= 0 && kind[li] != DK_BAD) { /* what the lead said (no contact data) */
                const struct gen_lead *g = &all[li];
                printf("    %-9s", "(the lead");
                if (g->source)
                    printf(" source %s,", g->source);
                if (g->keyword)
                    printf(" keywords [%s],", g->keyword);
                if (g->niche)
                    printf(" niche %s,", g->niche);
                printf(" state %s, zip %s%s", g->state ? g->state : "-", g->zip[0] ? g->zip : "-",
                       g->has_geo ? ", lat/lon" : "");
                if (g->has_score)
                    printf(", score %d", g->score);
                else
                    printf(", signals");
                printf(", home_owner %s)\n", g->home_owner ? "true" : "false");
            }
        }
        printf(
            "    (passed: why each other dealer of the niche in reach did not get it: closed = outside its\n"
            "     hours, filtered:* = its contract refused the lead, capped:* = a cap or max_pending was\n"
            "     reached, exclusive_owner = an exclusive dealer owns the territory, not_picked = eligible,\n"
            "     but the rotation or distance chose another)\n");
    } else {
        printf("    (empty: is routing.audit_maxlen 0?)\n");
    }
    freeReplyObject(r);

    /* The daemon against the routing core in process. */
    size_t same = 0;
    for (size_t i = 0; i < N; i++) {
        if (route_of[i] < 0)
            continue;
        long ri = route_of[i];
        int got = tl.in_dealer[i] < MAX_PLACES ? tl.in_dealer[i] : MAX_PLACES;
        bool eq = got == n_pred[ri];
        for (int a = 0; eq && a < got; a++) {
            bool found = false;
            for (int b = 0; b < n_pred[ri]; b++)
                found |= tl.dealers[i][a] == pred[ri][b] + 1;
            eq = found;
        }
        same += eq;
    }
    printf("\n  CHECK    %zu leads: %zu assigned, %zu unassigned, %zu dead; %zu lost, %zu duplicated%s\n",
           (size_t)N, v.assigned, v.unassigned, v.dead, v.lost, v.duplicated + tl.same_queue_twice,
           v.ok ? ": every lead is in exactly one place" : "");
    printf("           the routing core in process (rules_decide + rules_pick, same order, fresh state) put "
           "%zu of "
           "%d leads with the same dealers\n",
           same, N_ROUTE);
    if (!v.ok) {
        print_verdict("CHECK", &tl, &v);
        die("FAILED: leads lost or in more than one place");
    }

    free(tl.refs);
    tally_free(&tl);
    free(route);
    free(pred);
    free(n_pred);
    free(all);
    free(kind);
    free(route_of);
    free(s.usage);
    free(s.rr);
    free(s.rr_try);
    rules_scratch_free(s.scr);
    codec_lead_free(s.cl);
    queues_free(&qs);
    cfg_free(c);
}

/* ------------------------------------------------------------- main --- */

static long parse_long(const char *s, const char *what, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "bench-e2e: %s must be an integer in %ld..%ld, not '%s'\n", what, lo, hi, s);
        exit(2);
    }
    return v;
}

static double parse_double(const char *s, const char *what, double lo, double hi)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "bench-e2e: %s must be a number in %g..%g, not '%s'\n", what, lo, hi, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    enum {
        O_RATE = 256,
        O_SECONDS,
        O_NO_LAT,
        O_NO_CEIL,
        O_FIXED,
        O_BATCH,
        O_MIX,
        O_DEMO,
        O_SCALE,
        O_CONF,
        O_DAEMON,
        O_TIMEOUT,
        O_SEED,
        O_KEEP
    };
    static const struct option longopts[] = {
        {"rate", required_argument, NULL, O_RATE},
        {"seconds", required_argument, NULL, O_SECONDS},
        {"no-latency", no_argument, NULL, O_NO_LAT},
        {"no-ceiling", no_argument, NULL, O_NO_CEIL},
        {"fixed-rate", no_argument, NULL, O_FIXED},
        {"batch", required_argument, NULL, O_BATCH},
        {"mix", required_argument, NULL, O_MIX},
        {"demo", no_argument, NULL, O_DEMO},
        {"scale", no_argument, NULL, O_SCALE},
        {"conf", required_argument, NULL, O_CONF},
        {"daemon", required_argument, NULL, O_DAEMON},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"seed", required_argument, NULL, O_SEED},
        {"keep", no_argument, NULL, O_KEEP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool n_given = false, rate_given = false, fixed = false, demo = false, scale = false;
    int o;
    while ((o = getopt_long(argc, argv, "n:h", longopts, NULL)) != -1) {
        switch (o) {
        case 'n':
            opt.n = parse_long(optarg, "-n", 1, 10000000);
            n_given = true;
            break;
        case O_RATE:
            opt.rate = parse_long(optarg, "--rate", 1, 1000000);
            rate_given = true;
            break;
        case O_SECONDS:
            opt.seconds = parse_double(optarg, "--seconds", 0.001, 3600);
            rate_given = true;
            break;
        case O_NO_LAT:
            opt.latency = false;
            break;
        case O_NO_CEIL:
            opt.ceiling = false;
            break;
        case O_FIXED:
            fixed = true;
            break;
        case O_BATCH:
            opt.batch = (int)parse_long(optarg, "--batch", 1, 10000);
            break;
        case O_MIX: {
            memset(opt.mixes, 0, sizeof opt.mixes);
            char list[256];
            snprintf(list, sizeof list, "%s", optarg);
            char *save = NULL;
            for (char *w = strtok_r(list, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
                int m = 0;
                while (m < MIX_N && strcmp(w, MIX_NAMES[m]) != 0)
                    m++;
                if (m == MIX_N) {
                    fprintf(stderr, "bench-e2e: --mix: unknown mix '%s' (default, heavy, list)\n", w);
                    return 2;
                }
                opt.mixes[m] = true;
            }
            break;
        }
        case O_DEMO:
            demo = true;
            break;
        case O_SCALE:
            scale = true;
            break;
        case O_CONF:
            opt.conf = optarg;
            break;
        case O_DAEMON:
            opt.daemon = optarg;
            break;
        case O_TIMEOUT:
            opt.timeout = parse_double(optarg, "--timeout", 1, 86400);
            break;
        case O_SEED:
            opt.seed = (uint64_t)parse_long(optarg, "--seed", 1, LONG_MAX);
            break;
        case O_KEEP:
            opt.keep = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench-e2e: unexpected argument '%s' (see -h)\n", argv[optind]);
        return 2;
    }
    if (demo && (n_given || rate_given || fixed)) {
        fprintf(stderr, "bench-e2e: --demo takes no -n, --rate, --seconds or --fixed-rate\n");
        return 2;
    }
    opt.mode = demo    ? MODE_DEMO
               : scale ? MODE_SCALE
               : fixed || (rate_given && !n_given) ? MODE_RATE
                                                   : MODE_THROUGHPUT;
    double lat_leads = (double)opt.rate * opt.seconds;
    if (opt.mode != MODE_DEMO && (opt.mode == MODE_RATE || opt.latency) &&
        (lat_leads < 1 || lat_leads > 1e7)) {
        fprintf(stderr,
                "bench-e2e: --rate x --seconds gives %.0f leads: the latency phase takes 1 to 10000000\n",
                lat_leads);
        return 2;
    }
    if (access(opt.daemon, X_OK) != 0) {
        fprintf(stderr, "bench-e2e: cannot run the daemon %s: %s (build it, or pass --daemon PATH)\n",
                opt.daemon, strerror(errno));
        return 1;
    }
    if (demo && access(opt.conf, R_OK) != 0) {
        fprintf(stderr, "bench-e2e: cannot read %s: %s\n", opt.conf, strerror(errno));
        return 1;
    }
    rng_state = opt.seed * UINT64_C(0x9E3779B97F4A7C15) | 1;
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    start_redis();
    if (opt.mode == MODE_DEMO)
        run_demo();
    else if (opt.mode == MODE_SCALE)
        run_scale();
    else
        run_bench();
    cleanup();
    return 0;
}
