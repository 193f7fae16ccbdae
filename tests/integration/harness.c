/* harness.c - see harness.h. Processes are started with fork/exec and
 * stopped by pid only; a test process that dies takes its children with it
 * (PR_SET_PDEATHSIG), so a Criterion timeout leaves no stray servers. */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>

#ifndef LR_DAEMON_PATH
#error "LR_DAEMON_PATH must name the leadrouterd binary"
#endif
#ifndef LR_REDIS_SERVER
#define LR_REDIS_SERVER "redis-server"
#endif

/* The fault suite restarts a daemon after each of its kill -9s. */
#define H_MAX_DAEMONS 64
#define H_MAX_CAPS 16
#define H_STOP_WAIT_MS 10000
#define H_REDIS_WAIT_MS 5000

struct h_daemon {
    pid_t pid;
    bool done;  /* exited and reaped */
    int status; /* wait status once done */
    char log[PATH_MAX];
};

/* One enqueued payload, as the oracle needs it. */
struct h_sent {
    char *id;           /* the lead id inside, or NULL (owned) */
    struct h_buf bytes; /* exact payload (owned) */
    int max_buyers;
    char *contact[3]; /* name, phone, email as sent, for the log check (owned) */
};

static struct {
    bool up;
    char dir[128]; /* short: the admin socket path must fit in sun_path */
    int64_t t0_ms;
    int port;
    pid_t redis_pid;
    redisContext *rc;
    bool list_mode;
    int n_configs;
    struct h_daemon daemons[H_MAX_DAEMONS];
    int n_daemons;
    struct h_sent *sent;
    size_t n_sent, cap_sent;
    int max_buyers;
    char last_in_id[64], last_ret_id[64];
    size_t extra_dead;
    struct {
        char dealer[80];
        long long max;
    } caps[H_MAX_CAPS]; /* h_oracle_cap */
    int n_caps;
    pid_t proxy_pid; /* h_proxy_start */
    void **mem; /* everything handed to tests (freed at teardown) */
    size_t n_mem, cap_mem;
    redisReply **replies;
    size_t n_replies, cap_replies;
} H;

/* ---- memory kept until teardown ------------------------------------- */

static void grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * elem);
    cr_assert_not_null(p, "out of memory");
    *arr = p;
    *cap = n;
}

static void *keep(void *p)
{
    cr_assert_not_null(p, "out of memory");
    grow((void **)&H.mem, &H.cap_mem, H.n_mem + 1, sizeof *H.mem);
    H.mem[H.n_mem++] = p;
    return p;
}

static void *h_alloc(size_t n)
{
    return keep(calloc(1, n ? n : 1));
}

static struct h_buf buf_copy(const void *p, size_t len)
{
    struct h_buf b = {h_alloc(len), len};
    if (len)
        memcpy(b.p, p, len);
    return b;
}

static redisReply *keep_reply(redisReply *r)
{
    grow((void **)&H.replies, &H.cap_replies, H.n_replies + 1, sizeof *H.replies);
    H.replies[H.n_replies++] = r;
    return r;
}

bool h_buf_eq(struct h_buf a, const void *p, size_t len)
{
    return a.len == len && (len == 0 || memcmp(a.p, p, len) == 0);
}

/* ---- time ----------------------------------------------------------- */

int64_t h_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t h_t0_ms(void)
{
    return H.t0_ms;
}

void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void h_avoid_utc_midnight(int margin_s)
{
    time_t now = time(NULL);
    int left = 86400 - (int)(now % 86400);
    if (left < margin_s) {
        fprintf(stderr, "[harness] %d s to UTC midnight: waiting for the new day\n", left);
        h_sleep_ms((left + 1) * 1000);
    }
}

/* ---- processes ------------------------------------------------------ */

/* fork + exec argv with stdin from /dev/null and stdout+stderr to logpath.
 * The child dies with the test process and keeps none of its descriptors
 * (Criterion's pipes must see EOF when the test ends). */
static pid_t spawn(char *const argv[], const char *logpath)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    int in = open("/dev/null", O_RDONLY);
    int out = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    if (in < 0 || out < 0)
        _exit(127);
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    close_range(3, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    execvp(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Waits at most ms for pid to exit; true and *status when it did. */
static bool wait_exit(pid_t pid, int ms, int *status)
{
    int64_t end = h_now_ms() + ms;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid)
            return true;
        if (r < 0 && errno != EINTR)
            return true; /* not our child any more: nothing left to wait for */
        if (h_now_ms() > end)
            return false;
        h_sleep_ms(10);
    }
}

/* Stops pid: SIGTERM, ms to exit, then SIGKILL. Returns the wait status,
 * or -1 when SIGKILL was needed. */
static int stop_pid(pid_t pid, int ms)
{
    int status = 0;
    kill(pid, SIGTERM);
    if (wait_exit(pid, ms, &status))
        return status;
    kill(pid, SIGKILL);
    wait_exit(pid, 5000, &status);
    return -1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        *len = 0;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *s = malloc(cap + 1);
    while (s) {
        size_t got = fread(s + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        char *t = realloc(s, cap * 2 + 1);
        if (!t) {
            free(s);
            s = NULL;
            break;
        }
        s = t;
        cap *= 2;
    }
    fclose(f);
    if (s)
        s[n] = 0;
    *len = s ? n : 0;
    return s;
}

/* ---- redis-server --------------------------------------------------- */

/* A TCP socket bound to 127.0.0.1 on a port the kernel picks (*port);
 * listening when backlog > 0. */
static int loopback_socket(int backlog, int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0, "bind: %s", strerror(errno));
    if (backlog > 0)
        cr_assert_eq(listen(fd, backlog), 0, "listen: %s", strerror(errno));
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0, "getsockname: %s", strerror(errno));
    *port = ntohs(a.sin_port);
    return fd;
}

/* A port the kernel just gave to a loopback socket: free at that moment
 * (another process may take it before redis-server does: callers retry). */
int h_free_port(void)
{
    int port;
    close(loopback_socket(0, &port));
    return port;
}

/* Microseconds per key Redis waits while it loads its data at start
 * (key-load-delay: a slow load, so that clients meet LOADING); 0 = none. */
static int redis_load_delay_us;

/* Connects to our redis-server and checks it is ours (INFO process_id):
 * after a port collision, another test's server may answer. */
static redisContext *connect_own(int port, pid_t pid)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){5, 0});
    redisReply *r = redisCommand(c, "PING");
    bool ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    /* h_redis_restart_loading: up, and loading its data */
    ok |= redis_load_delay_us > 0 && r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "LOADING", 7) == 0;
    freeReplyObject(r);
    if (ok) {
        r = redisCommand(c, "INFO server");
        char want[64];
        snprintf(want, sizeof want, "process_id:%d\r", (int)pid);
        ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, want) != NULL;
        freeReplyObject(r);
    }
    if (!ok) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* One attempt at a server on port; false when it did not come up (port
 * taken meanwhile), with the process reaped. */
static bool redis_try_start_aof(int port, bool aof)
{
    char portstr[16], logfile[PATH_MAX], outfile[PATH_MAX], delay[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    snprintf(delay, sizeof delay, "%d", redis_load_delay_us);
    snprintf(logfile, sizeof logfile, "%s/redis.log", H.dir);
    snprintf(outfile, sizeof outfile, "%s/redis.out", H.dir);
    /* DEBUG (SLEEP) from loopback only: the fault suite hangs the server. */
    /* clang-format off */
    char *argv[] = {LR_REDIS_SERVER, "--port", portstr, "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", aof ? "yes" : "no", "--appendfsync", "always",
                    "--dir", H.dir, "--logfile", logfile, "--daemonize", "no",
                    "--enable-debug-command", "local", "--key-load-delay", delay,
                    "--loading-process-events-interval-bytes", "1024", NULL};
    /* clang-format on */
    pid_t pid = spawn(argv, outfile);
    int64_t end = h_now_ms() + H_REDIS_WAIT_MS;
    while (h_now_ms() < end) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return false;
        redisContext *c = connect_own(port, pid);
        if (c) {
            H.rc = c;
            H.redis_pid = pid;
            H.port = port;
            return true;
        }
        h_sleep_ms(10);
    }
    stop_pid(pid, 2000);
    return false;
}

static bool redis_try_start(int port)
{
    return redis_try_start_aof(port, false);
}

void h_redis_enable_aof(void)
{
    h_cmd("CONFIG SET appendfsync always");
    h_cmd("CONFIG SET appendonly yes");
    /* Switching AOF on rewrites it in the background: wait for that. */
    int64_t end = h_now_ms() + 10000;
    for (;;) {
        redisReply *r = h_cmd("INFO persistence");
        bool done = strstr(r->str, "aof_enabled:1") && strstr(r->str, "aof_rewrite_in_progress:0") &&
                    strstr(r->str, "aof_rewrite_scheduled:0");
        if (done)
            return;
        cr_assert(h_now_ms() < end, "AOF did not come up within 10 s");
        h_sleep_ms(20);
    }
}

void h_redis_kill9(void)
{
    cr_assert_gt(H.redis_pid, 0, "redis-server is not running");
    kill(H.redis_pid, SIGKILL);
    int status;
    waitpid(H.redis_pid, &status, 0);
    H.redis_pid = 0;
    redisFree(H.rc);
    H.rc = NULL;
}

void h_redis_start_again(bool aof)
{
    cr_assert_eq(H.redis_pid, 0, "redis-server is already running");
    int64_t end = h_now_ms() + 10000;
    while (!redis_try_start_aof(H.port, aof)) {
        cr_assert(h_now_ms() < end, "redis-server did not come back on port %d (see %s/redis.log)", H.port, H.dir);
        h_sleep_ms(50);
    }
}

void h_redis_restart_loading(long keys, int load_delay_us)
{
    h_redis_enable_aof();
    h_cmd("DEBUG POPULATE %ld lr-filler", keys);
    h_cmd("BGREWRITEAOF");
    int64_t end = h_now_ms() + 20000;
    for (;;) {
        redisReply *r = h_cmd("INFO persistence");
        if (strstr(r->str, "aof_rewrite_in_progress:0") && strstr(r->str, "aof_rewrite_scheduled:0"))
            break;
        cr_assert(h_now_ms() < end, "the AOF rewrite did not finish within 20 s");
        h_sleep_ms(20);
    }
    h_redis_kill9();
    redis_load_delay_us = load_delay_us;
    h_redis_start_again(true);
    redis_load_delay_us = 0;
}

void h_redis_kill9_restart(int down_ms)
{
    h_redis_kill9();
    h_sleep_ms(down_ms);
    h_redis_start_again(true);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* ---- a TCP proxy whose connections can hang --------------------------- */

#define H_PROXY_CONNS 64

static volatile sig_atomic_t proxy_hang_req, proxy_freeze_req;

static void proxy_on_usr1(int sig)
{
    (void)sig;
    proxy_hang_req = 1;
}

static void proxy_on_usr2(int sig)
{
    (void)sig;
    proxy_freeze_req = 1;
}

/* Writes all of buf to fd (blocking); false on error. */
static bool write_all(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        buf += w;
        n -= (size_t)w;
    }
    return true;
}

/* The proxy child: relays each accepted connection to 127.0.0.1:port.
 * SIGUSR1 hangs every connection open at that moment: it stays open but
 * nothing is relayed on it any more, in either direction, as with a server
 * that stopped answering; connections accepted later are relayed again.
 * SIGUSR2 freezes the path: every connection is closed and nothing is
 * accepted any more, with the listen queue shrunk and filled, so that a
 * new connect's SYN is dropped and the connect hangs (as when a firewall
 * or a dead route swallows the packets). */
static void proxy_run(int lfd, int port) __attribute__((noreturn));
static void proxy_run(int lfd, int port)
{
    struct {
        int a, b; /* client side, server side */
        bool hung;
    } c[H_PROXY_CONNS];
    int n = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = proxy_on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = proxy_on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    bool frozen = false;
    for (;;) {
        if (proxy_freeze_req && !frozen) {
            frozen = true;
            for (int i = 0; i < n; i++) {
                close(c[i].a);
                close(c[i].b);
            }
            n = 0;
            listen(lfd, 0); /* a queue of one, filled by connects of our own */
            struct sockaddr_in me;
            socklen_t ml = sizeof me;
            getsockname(lfd, (struct sockaddr *)&me, &ml);
            for (int k = 0; k < 3; k++) {
                int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
                if (f >= 0)
                    (void)connect(f, (struct sockaddr *)&me, sizeof me); /* kept open, never accepted */
            }
        }
        if (proxy_hang_req) {
            proxy_hang_req = 0;
            for (int i = 0; i < n; i++)
                c[i].hung = true;
        }
        struct pollfd p[1 + 2 * H_PROXY_CONNS];
        int who[1 + 2 * H_PROXY_CONNS], np = 0;
        p[np] = (struct pollfd){.fd = frozen ? -1 : lfd, .events = POLLIN};
        who[np++] = -1;
        for (int i = 0; i < n; i++) {
            if (c[i].hung)
                continue;
            p[np] = (struct pollfd){.fd = c[i].a, .events = POLLIN};
            who[np++] = i;
            p[np] = (struct pollfd){.fd = c[i].b, .events = POLLIN};
            who[np++] = i;
        }
        if (poll(p, (nfds_t)np, 100) <= 0)
            continue;
        bool dead[H_PROXY_CONNS] = {false};
        for (int k = 1; k < np; k++) {
            int i = who[k];
            if (dead[i] || !(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[16384];
            int from = p[k].fd, to = from == c[i].a ? c[i].b : c[i].a;
            ssize_t got = read(from, buf, sizeof buf);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0 || !write_all(to, buf, (size_t)got))
                dead[i] = true;
        }
        for (int i = n - 1; i >= 0; i--) {
            if (!dead[i])
                continue;
            close(c[i].a);
            close(c[i].b);
            c[i] = c[--n];
        }
        if (p[0].revents & POLLIN) {
            int a = accept(lfd, NULL, NULL);
            if (a < 0)
                continue;
            int b = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            if (n == H_PROXY_CONNS || b < 0 || connect(b, (struct sockaddr *)&sin, sizeof sin) != 0) {
                close(a);
                if (b >= 0)
                    close(b);
                continue;
            }
            c[n].a = a;
            c[n].b = b;
            c[n].hung = false;
            n++;
        }
    }
}

int h_proxy_start(void)
{
    cr_assert_eq(H.proxy_pid, 0, "one proxy per test");
    int port;
    int lfd = loopback_socket(64, &port);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        /* Only the listening socket: Criterion's pipes must see EOF when
         * the test ends. */
        if (lfd > 3)
            close_range(3, (unsigned)lfd - 1, 0);
        close_range((unsigned)lfd + 1, ~0U, 0);
        proxy_run(lfd, H.port);
    }
    close(lfd);
    H.proxy_pid = pid;
    return port;
}

void h_proxy_hang(void)
{
    cr_assert_gt(H.proxy_pid, 0, "no proxy");
    kill(H.proxy_pid, SIGUSR1);
}

void h_proxy_freeze(void)
{
    cr_assert_gt(H.proxy_pid, 0, "no proxy");
    kill(H.proxy_pid, SIGUSR2);
}

/* ---- fixtures ------------------------------------------------------- */

void h_setup(void)
{
    memset(&H, 0, sizeof H);
    H.t0_ms = h_now_ms();
    H.max_buyers = 1;
    /* A short base: the admin socket path must fit in sun_path. */
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 60)
        tmp = "/tmp";
    snprintf(H.dir, sizeof H.dir, "%s/lr-itest.XXXXXX", tmp);
    cr_assert_not_null(mkdtemp(H.dir), "mkdtemp %s: %s", H.dir, strerror(errno));
    H.up = true;
    for (int attempt = 0; attempt < 10; attempt++) {
        if (redis_try_start(h_free_port()))
            return;
    }
    cr_assert_fail("redis-server did not start on a free port (10 tries; see %s/redis.log)", H.dir);
}

void h_teardown(void)
{
    if (!H.up)
        return;
    H.up = false;
    for (int i = 0; i < H.n_daemons; i++) {
        struct h_daemon *d = &H.daemons[i];
        if (d->done)
            continue;
        kill(d->pid, SIGKILL);
        wait_exit(d->pid, 5000, &d->status);
        d->done = true;
        fprintf(stderr, "[harness] daemon %d was still running at teardown; log tail:\n%s\n", i,
                h_daemon_log_tail(i));
    }
    if (H.proxy_pid > 0) {
        kill(H.proxy_pid, SIGKILL);
        int status;
        wait_exit(H.proxy_pid, 5000, &status);
    }
    for (size_t i = 0; i < H.n_replies; i++)
        freeReplyObject(H.replies[i]);
    free(H.replies);
    if (H.rc)
        redisFree(H.rc);
    if (H.redis_pid > 0)
        stop_pid(H.redis_pid, H_REDIS_WAIT_MS);
    for (size_t i = 0; i < H.n_sent; i++) {
        free(H.sent[i].id);
        free(H.sent[i].bytes.p);
        for (int k = 0; k < 3; k++)
            free(H.sent[i].contact[k]);
    }
    free(H.sent);
    for (size_t i = 0; i < H.n_mem; i++)
        free(H.mem[i]);
    free(H.mem);
    if (getenv("LR_ITEST_KEEP"))
        fprintf(stderr, "[harness] kept %s\n", H.dir);
    else if (H.dir[0])
        nftw(H.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    memset(&H, 0, sizeof H);
}

int h_redis_port(void)
{
    return H.port;
}

pid_t h_redis_pid(void)
{
    return H.redis_pid;
}

const char *h_dir(void)
{
    return H.dir;
}

redisContext *h_redis(void)
{
    return H.rc;
}

/* ---- commands ------------------------------------------------------- */

static redisReply *vcmd(bool allow_error, const char *fmt, va_list ap)
{
    cr_assert_not_null(H.rc, "no Redis connection");
    redisReply *r = redisvCommand(H.rc, fmt, ap);
    cr_assert_not_null(r, "Redis command '%s' failed: %s", fmt, H.rc->errstr);
    keep_reply(r);
    if (!allow_error)
        cr_assert_neq(r->type, REDIS_REPLY_ERROR, "Redis command '%s': %s", fmt, r->str);
    return r;
}

redisReply *h_cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(false, fmt, ap);
    va_end(ap);
    return r;
}

redisReply *h_cmd_any(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(true, fmt, ap);
    va_end(ap);
    return r;
}

long long h_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(false, fmt, ap);
    va_end(ap);
    cr_assert_eq(r->type, REDIS_REPLY_INTEGER, "Redis command '%s': not an integer reply", fmt);
    return r->integer;
}

int64_t h_redis_time_ms(void)
{
    redisReply *r = h_cmd("TIME");
    cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == 2);
    return strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000;
}

void h_sha1hex(const char *s, char out[41])
{
    redisReply *r = h_cmd("EVAL %s 0 %s", "return redis.sha1hex(ARGV[1])", s);
    cr_assert(r->type == REDIS_REPLY_STRING && r->len == 40);
    memcpy(out, r->str, 41);
}

/* ---- config and daemons --------------------------------------------- */

const char *h_config(const char *mode, const char *input_extra, const char *routing)
{
    return h_config_port(H.port, mode, input_extra, routing);
}

const char *h_config_port(int redis_port, const char *mode, const char *input_extra, const char *routing)
{
    return h_config_redis(redis_port, 5, NULL, mode, input_extra, routing);
}

const char *h_config_redis(int redis_port, int startup_timeout, const char *redis_extra, const char *mode,
                           const char *input_extra, const char *routing)
{
    int n = ++H.n_configs;
    char *path = h_alloc(PATH_MAX);
    snprintf(path, PATH_MAX, "%s/leadrouter-%d.conf", H.dir, n);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fprintf(f,
            "# written by the integration harness\n"
            "redis = { host = \"127.0.0.1\"; port = %d; startup_timeout = %d; %s };\n"
            "input = { mode = \"%s\"; %s };\n"
            "prefix = \"%s\";\n"
            "admin = { socket = \"%s/admin-%d.sock\"; mode = \"0600\"; };\n"
            "%s\n",
            redis_port, startup_timeout, redis_extra ? redis_extra : "", mode, input_extra ? input_extra : "",
            H_PREFIX, H.dir, n, routing);
    cr_assert_eq(fclose(f), 0);
    H.list_mode = strcmp(mode, "list") == 0;
    return path;
}

int h_daemon_start(const char *conf)
{
    cr_assert_lt(H.n_daemons, H_MAX_DAEMONS, "too many daemons");
    int idx = H.n_daemons++;
    struct h_daemon *d = &H.daemons[idx];
    snprintf(d->log, sizeof d->log, "%s/daemon-%d.log", H.dir, idx);
    char *argv[] = {LR_DAEMON_PATH, "-f", "-c", (char *)conf, NULL};
    d->pid = spawn(argv, d->log);
    d->done = false;
    return idx;
}

pid_t h_daemon_pid(int idx)
{
    cr_assert(idx >= 0 && idx < H.n_daemons);
    return H.daemons[idx].pid;
}

const char *h_daemon_log_tail(int idx)
{
    size_t len;
    char *s = read_file(H.daemons[idx].log, &len);
    if (!s)
        return "(no log)";
    size_t from = len > 3000 ? len - 3000 : 0;
    char *tail = h_alloc(len - from + 1);
    memcpy(tail, s + from, len - from);
    free(s);
    return tail;
}

static void describe_status(int status, char *buf, size_t len)
{
    if (status == -1)
        snprintf(buf, len, "did not exit within %d ms of SIGTERM (killed)", H_STOP_WAIT_MS);
    else if (WIFEXITED(status))
        snprintf(buf, len, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, len, "wait status %d", status);
}

/* SPEC section 8: one line per event with a syslog priority prefix, and
 * never contact data. */
void h_daemon_check_log(int idx)
{
    size_t len;
    char *s = read_file(H.daemons[idx].log, &len);
    if (!s)
        return;
    char bad[160] = "";
    size_t lineno = 1;
    for (char *line = s; *line && !bad[0]; lineno++) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        if (n > 0 && !(n >= 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>'))
            snprintf(bad, sizeof bad, "line %zu has no syslog priority prefix: %.80s", lineno, line);
        line = nl ? nl + 1 : line + n;
    }
    for (size_t i = 0; i < H.n_sent && !bad[0]; i++)
        for (int k = 0; k < 3; k++)
            if (H.sent[i].contact[k] && strstr(s, H.sent[i].contact[k]))
                snprintf(bad, sizeof bad, "the log holds contact data of lead %s",
                         H.sent[i].id ? H.sent[i].id : "(no id)");
    free(s);
    cr_assert(!bad[0], "daemon %d log: %s\n%s", idx, bad, h_daemon_log_tail(idx));
}

void h_daemon_stop(int idx)
{
    cr_assert(idx >= 0 && idx < H.n_daemons);
    struct h_daemon *d = &H.daemons[idx];
    /* A SIGTERM before the daemon has set its handlers kills it: wait
     * (bounded) for its first log line, which follows them. */
    for (int64_t end = h_now_ms() + 10000; !d->done && h_now_ms() < end;) {
        size_t len;
        char *log = read_file(d->log, &len);
        bool started = log && strstr(log, " starting: ");
        free(log);
        if (started)
            break;
        if (waitpid(d->pid, &d->status, WNOHANG) == d->pid)
            d->done = true;
        else
            h_sleep_ms(5);
    }
    if (!d->done) {
        d->status = stop_pid(d->pid, H_STOP_WAIT_MS);
        d->done = true;
    }
    char why[128];
    describe_status(d->status, why, sizeof why);
    cr_assert(d->status != -1 && WIFEXITED(d->status) && WEXITSTATUS(d->status) == 0,
              "daemon %d after SIGTERM: %s (want exit 0); log tail:\n%s", idx, why, h_daemon_log_tail(idx));
    h_daemon_check_log(idx);
}

void h_daemon_signal(int idx, int sig)
{
    cr_assert(idx >= 0 && idx < H.n_daemons && !H.daemons[idx].done);
    kill(H.daemons[idx].pid, sig);
}

void h_daemon_kill9(int idx)
{
    cr_assert(idx >= 0 && idx < H.n_daemons);
    struct h_daemon *d = &H.daemons[idx];
    if (d->done)
        return;
    kill(d->pid, SIGKILL);
    wait_exit(d->pid, 5000, &d->status);
    d->done = true;
}

int h_daemon_wait_exit(int idx, double secs)
{
    cr_assert(idx >= 0 && idx < H.n_daemons);
    struct h_daemon *d = &H.daemons[idx];
    if (!d->done) {
        if (!wait_exit(d->pid, (int)(secs * 1000.0), &d->status)) {
            kill(d->pid, SIGKILL);
            wait_exit(d->pid, 5000, &d->status);
            d->done = true;
            cr_assert_fail("daemon %d still running after %.1f s; log tail:\n%s", idx, secs,
                           h_daemon_log_tail(idx));
        }
        d->done = true;
    }
    char why[128];
    describe_status(d->status, why, sizeof why);
    cr_assert(WIFEXITED(d->status), "daemon %d: %s; log tail:\n%s", idx, why, h_daemon_log_tail(idx));
    return WEXITSTATUS(d->status);
}

void h_daemons_check_alive(void)
{
    for (int i = 0; i < H.n_daemons; i++) {
        struct h_daemon *d = &H.daemons[i];
        if (d->done)
            continue;
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->done = true;
            d->status = status;
            char why[128];
            describe_status(status, why, sizeof why);
            cr_assert_fail("daemon %d died: %s; log tail:\n%s", i, why, h_daemon_log_tail(i));
        }
    }
}

bool h_wait_until(bool (*cond)(void *arg), void *arg, double secs)
{
    int64_t end = h_now_ms() + (int64_t)(secs * 1000.0);
    for (;;) {
        if (cond(arg))
            return true;
        h_daemons_check_alive();
        if (h_now_ms() > end)
            return false;
        h_sleep_ms(10);
    }
}

/* ---- drained -------------------------------------------------------- */

static int id_cmp(const char *a, const char *b)
{
    char *e;
    unsigned long long am = strtoull(a, &e, 10), as = *e == '-' ? strtoull(e + 1, NULL, 10) : 0;
    unsigned long long bm = strtoull(b, &e, 10), bs = *e == '-' ? strtoull(e + 1, NULL, 10) : 0;
    if (am != bm)
        return am < bm ? -1 : 1;
    return as < bs ? -1 : as > bs;
}

/* The group has delivered the stream up to last and has nothing pending. */
static bool stream_done(const char *key, const char *last)
{
    redisReply *r = h_cmd_any("XINFO GROUPS %s", key);
    if (r->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t g = 0; g < r->elements; g++) {
        redisReply *grp = r->element[g];
        if (grp->type != REDIS_REPLY_ARRAY)
            continue;
        const char *name = NULL, *delivered = NULL;
        long long pending = -1;
        for (size_t k = 0; k + 1 < grp->elements; k += 2) {
            const char *f = grp->element[k]->str;
            redisReply *v = grp->element[k + 1];
            if (!f)
                continue;
            if (strcmp(f, "name") == 0 && v->str)
                name = v->str;
            else if (strcmp(f, "pending") == 0 && v->type == REDIS_REPLY_INTEGER)
                pending = v->integer;
            else if (strcmp(f, "last-delivered-id") == 0 && v->str)
                delivered = v->str;
        }
        if (name && strcmp(name, H_GROUP) == 0)
            return pending == 0 && delivered && id_cmp(delivered, last) >= 0;
    }
    return false;
}

static long long processing_total(void)
{
    long long total = 0;
    char cursor[32] = "0";
    for (int rounds = 0; rounds < 10000; rounds++) {
        redisReply *r = h_cmd("SCAN %s MATCH %s:in:processing:* COUNT 1000", cursor, H_PREFIX);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            total += h_int("LLEN %s", r->element[1]->element[i]->str);
        if (strcmp(cursor, "0") == 0)
            break;
    }
    return total;
}

bool h_drained(void)
{
    if (H.list_mode) {
        /* The input and every processing list in one atomic look: read one
         * after the other, a recovery moving a processing list back to the
         * input between the two reads would look drained. */
        static const char all_lists[] =
            "local n, cursor = redis.call('LLEN', KEYS[1]), '0'\n"
            "repeat\n"
            "  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)\n"
            "  cursor = r[1]\n"
            "  for _, k in ipairs(r[2]) do n = n + redis.call('LLEN', k) end\n"
            "until cursor == '0'\n"
            "return n\n";
        if (h_int("EVAL %s 1 %s:in %s:in:processing:*", all_lists, H_PREFIX, H_PREFIX) != 0)
            return false;
    } else if (H.last_in_id[0] && !stream_done(H_PREFIX ":in", H.last_in_id)) {
        return false;
    }
    return !H.last_ret_id[0] || stream_done(H_PREFIX ":returns", H.last_ret_id);
}

void h_wait_drained(double secs)
{
    H_WAIT(h_drained(), secs, "input not drained within %.0f s (%zu sent, %zu outcomes so far)", secs,
           H.n_sent, h_outcomes());
}

/* ---- leads ---------------------------------------------------------- */

static void pk_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

struct h_buf h_lead_pack(const struct h_lead *l)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *strs[][2] = {
        {"id", l->id},           {"niche", l->niche}, {"source", l->source}, {"campaign", l->campaign},
        {"country", l->country}, {"state", l->state}, {"zip", l->zip}};
    size_t n_kw = 0, n_sig = 0, n_fields = 0, n_contact = 0;
    while (n_kw < 4 && l->keywords[n_kw])
        n_kw++;
    while (n_sig < 4 && l->signals[n_sig].name)
        n_sig++;
    while (n_fields < 4 && l->fields[n_fields].key)
        n_fields++;
    n_contact = (l->name != NULL) + (l->phone != NULL) + (l->email != NULL);
    size_t n = 0;
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        n += strs[i][1] != NULL;
    n += (n_kw > 0) + (!l->no_score || l->score_str) + (n_sig > 0) + (l->has_geo ? 2 : 0) +
         (l->created_at != 0) + (n_contact > 0) + (n_fields > 0) + (l->extra_key != NULL);
    msgpack_pack_map(&pk, n);
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (!strs[i][1])
            continue;
        pk_str(&pk, strs[i][0]);
        pk_str(&pk, strs[i][1]);
    }
    if (n_kw) {
        pk_str(&pk, "keywords");
        msgpack_pack_array(&pk, n_kw);
        for (size_t i = 0; i < n_kw; i++)
            pk_str(&pk, l->keywords[i]);
    }
    if (l->score_str) {
        pk_str(&pk, "score");
        pk_str(&pk, l->score_str);
    } else if (!l->no_score) {
        pk_str(&pk, "score");
        msgpack_pack_int(&pk, l->score);
    }
    if (n_sig) {
        pk_str(&pk, "signals");
        msgpack_pack_map(&pk, n_sig);
        for (size_t i = 0; i < n_sig; i++) {
            pk_str(&pk, l->signals[i].name);
            msgpack_pack_double(&pk, l->signals[i].v);
        }
    }
    if (l->has_geo) {
        pk_str(&pk, "lat");
        msgpack_pack_double(&pk, l->lat);
        pk_str(&pk, "lon");
        msgpack_pack_double(&pk, l->lon);
    }
    if (l->created_at) {
        pk_str(&pk, "created_at");
        msgpack_pack_int64(&pk, l->created_at);
    }
    if (n_contact) {
        pk_str(&pk, "contact");
        msgpack_pack_map(&pk, n_contact);
        const char *c[][2] = {{"name", l->name}, {"phone", l->phone}, {"email", l->email}};
        for (int i = 0; i < 3; i++) {
            if (c[i][1]) {
                pk_str(&pk, c[i][0]);
                pk_str(&pk, c[i][1]);
            }
        }
    }
    if (n_fields) {
        pk_str(&pk, "fields");
        msgpack_pack_map(&pk, n_fields);
        for (size_t i = 0; i < n_fields; i++) {
            const struct h_field *f = &l->fields[i];
            pk_str(&pk, f->key);
            switch (f->type) {
            case 's':
                pk_str(&pk, f->s);
                break;
            case 'i':
                msgpack_pack_int64(&pk, f->i);
                break;
            case 'f':
                msgpack_pack_double(&pk, f->f);
                break;
            default:
                if (f->b)
                    msgpack_pack_true(&pk);
                else
                    msgpack_pack_false(&pk);
            }
        }
    }
    if (l->extra_key) {
        pk_str(&pk, l->extra_key);
        msgpack_sbuffer_write(&sb, l->extra_raw, l->extra_raw_len);
    }
    struct h_buf b = buf_copy(sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return b;
}

void h_set_max_buyers(int k)
{
    H.max_buyers = k;
}

void h_oracle_reset(void)
{
    for (size_t i = 0; i < H.n_sent; i++) {
        free(H.sent[i].id);
        free(H.sent[i].bytes.p);
        for (int k = 0; k < 3; k++)
            free(H.sent[i].contact[k]);
    }
    H.n_sent = 0;
    H.extra_dead = 0;
    H.n_caps = 0;
    H.last_in_id[0] = H.last_ret_id[0] = 0;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void record(const void *p, size_t len, const char *id, const struct h_lead *l)
{
    grow((void **)&H.sent, &H.cap_sent, H.n_sent + 1, sizeof *H.sent);
    struct h_sent *s = &H.sent[H.n_sent++];
    memset(s, 0, sizeof *s);
    s->id = dup_or_null(id);
    s->bytes.p = malloc(len ? len : 1);
    cr_assert_not_null(s->bytes.p);
    memcpy(s->bytes.p, p, len);
    s->bytes.len = len;
    s->max_buyers = H.max_buyers;
    if (l) {
        s->contact[0] = dup_or_null(l->name);
        s->contact[1] = dup_or_null(l->phone);
        s->contact[2] = dup_or_null(l->email);
    }
}

static void enqueue(const void *p, size_t len, char *entry_id, size_t idlen)
{
    if (H.list_mode) {
        h_int("LPUSH %s:in %b", H_PREFIX, p, len);
        if (entry_id)
            snprintf(entry_id, idlen, "list");
        return;
    }
    redisReply *r = h_cmd("XADD %s:in * lead %b", H_PREFIX, p, len);
    cr_assert_eq(r->type, REDIS_REPLY_STRING);
    snprintf(H.last_in_id, sizeof H.last_in_id, "%s", r->str);
    if (entry_id)
        snprintf(entry_id, idlen, "%s", r->str);
}

struct h_buf h_send(const struct h_lead *l, char *entry_id, size_t idlen)
{
    struct h_buf b = h_lead_pack(l);
    record(b.p, b.len, l->id, l);
    enqueue(b.p, b.len, entry_id, idlen);
    return b;
}

void h_send_atomic(const struct h_lead *leads, size_t n)
{
    cr_assert_not_null(H.rc, "no Redis connection");
    redisAppendCommand(H.rc, "MULTI");
    for (size_t i = 0; i < n; i++) {
        struct h_buf b = h_lead_pack(&leads[i]);
        record(b.p, b.len, leads[i].id, &leads[i]);
        if (H.list_mode)
            redisAppendCommand(H.rc, "LPUSH %s:in %b", H_PREFIX, b.p, b.len);
        else
            redisAppendCommand(H.rc, "XADD %s:in * lead %b", H_PREFIX, b.p, b.len);
    }
    redisAppendCommand(H.rc, "EXEC");
    for (size_t i = 0; i < n + 2; i++) {
        redisReply *r = NULL;
        cr_assert_eq(redisGetReply(H.rc, (void **)&r), REDIS_OK, "MULTI/EXEC: %s", H.rc->errstr);
        keep_reply(r);
        cr_assert_neq(r->type, REDIS_REPLY_ERROR, "MULTI/EXEC: %s", r->str);
        if (i == n + 1) {
            cr_assert(r->type == REDIS_REPLY_ARRAY && r->elements == n, "EXEC did not run the %zu sends", n);
            if (!H.list_mode && n > 0)
                snprintf(H.last_in_id, sizeof H.last_in_id, "%s", r->element[n - 1]->str);
        }
    }
}

struct h_buf h_track(const struct h_lead *l)
{
    struct h_buf b = h_lead_pack(l);
    record(b.p, b.len, l->id, l);
    return b;
}

void h_send_raw(const void *p, size_t len, const char *id, char *entry_id, size_t idlen)
{
    record(p, len, id, NULL);
    enqueue(p, len, entry_id, idlen);
}

void h_return(const char *lead_id, const char *dealer, const char *reason)
{
    redisReply *r =
        h_cmd("XADD %s:returns * lead_id %s dealer %s reason %s", H_PREFIX, lead_id, dealer, reason);
    snprintf(H.last_ret_id, sizeof H.last_ret_id, "%s", r->str);
}

void h_oracle_allow_extra_dead(size_t n)
{
    H.extra_dead = n;
}

void h_oracle_cap(const char *dealer, long long max)
{
    cr_assert_lt(H.n_caps, H_MAX_CAPS, "too many caps for the oracle");
    snprintf(H.caps[H.n_caps].dealer, sizeof H.caps[H.n_caps].dealer, "%s", dealer);
    H.caps[H.n_caps].max = max;
    H.n_caps++;
}

/* ---- msgpack reading ------------------------------------------------ */

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* The encoded length of the object at p (n bytes available), or 0 when it
 * is malformed or truncated. Walks raw bytes so that values can be
 * compared byte for byte, whatever encoding the writer chose. */
static size_t mp_skip(const unsigned char *p, size_t n, int depth)
{
    if (n == 0 || depth > 64)
        return 0;
    unsigned c = p[0];
    size_t head = 1, body = 0, items = 0;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        return 1;
    } else if ((c & 0xf0) == 0x80) {
        items = 2 * (c & 0x0f);
    } else if ((c & 0xf0) == 0x90) {
        items = c & 0x0f;
    } else if ((c & 0xe0) == 0xa0) {
        body = c & 0x1f;
    } else {
        static const struct {
            unsigned char code, head, lenbytes, kind; /* kind: 0 fixed, 1 bytes, 2 array, 3 map, 4 ext */
        } t[] = {{0xc4, 2, 1, 1},  {0xc5, 3, 2, 1}, {0xc6, 5, 4, 1}, {0xc7, 3, 1, 4}, {0xc8, 4, 2, 4},
                 {0xc9, 6, 4, 4},  {0xca, 5, 0, 0}, {0xcb, 9, 0, 0}, {0xcc, 2, 0, 0}, {0xcd, 3, 0, 0},
                 {0xce, 5, 0, 0},  {0xcf, 9, 0, 0}, {0xd0, 2, 0, 0}, {0xd1, 3, 0, 0}, {0xd2, 5, 0, 0},
                 {0xd3, 9, 0, 0},  {0xd4, 3, 0, 0}, {0xd5, 4, 0, 0}, {0xd6, 6, 0, 0}, {0xd7, 10, 0, 0},
                 {0xd8, 18, 0, 0}, {0xd9, 2, 1, 1}, {0xda, 3, 2, 1}, {0xdb, 5, 4, 1}, {0xdc, 3, 2, 2},
                 {0xdd, 5, 4, 2},  {0xde, 3, 2, 3}, {0xdf, 5, 4, 3}};
        size_t i = 0;
        while (i < sizeof t / sizeof t[0] && t[i].code != c)
            i++;
        if (i == sizeof t / sizeof t[0])
            return 0; /* 0xc1 */
        head = t[i].head;
        if (n < head)
            return 0;
        uint64_t v = t[i].lenbytes ? be(p + 1, t[i].lenbytes) : 0;
        if (t[i].kind == 1 || t[i].kind == 4)
            body = (size_t)v;
        else if (t[i].kind == 2)
            items = (size_t)v;
        else if (t[i].kind == 3)
            items = 2 * (size_t)v;
    }
    if (n < head || n - head < body)
        return 0;
    size_t off = head + body;
    for (size_t k = 0; k < items; k++) {
        size_t m = mp_skip(p + off, n - off, depth + 1);
        if (m == 0)
            return 0;
        off += m;
    }
    return off;
}

/* A str of any width: its bytes. */
static bool mp_str(const unsigned char *p, size_t n, const unsigned char **s, size_t *len)
{
    if (n == 0)
        return false;
    unsigned c = p[0];
    size_t head;
    if ((c & 0xe0) == 0xa0) {
        head = 1;
        *len = c & 0x1f;
    } else if (c == 0xd9 && n >= 2) {
        head = 2;
        *len = p[1];
    } else if (c == 0xda && n >= 3) {
        head = 3;
        *len = (size_t)be(p + 1, 2);
    } else if (c == 0xdb && n >= 5) {
        head = 5;
        *len = (size_t)be(p + 1, 4);
    } else {
        return false;
    }
    if (n - head < *len)
        return false;
    *s = p + head;
    return true;
}

static bool mp_bin(const unsigned char *p, size_t n, const unsigned char **s, size_t *len)
{
    if (n < 2)
        return false;
    int lb = p[0] == 0xc4 ? 1 : p[0] == 0xc5 ? 2 : p[0] == 0xc6 ? 4 : 0;
    if (!lb || n < (size_t)(1 + lb))
        return false;
    *len = (size_t)be(p + 1, lb);
    if (n - 1 - (size_t)lb < *len)
        return false;
    *s = p + 1 + lb;
    return true;
}

static bool mp_int(const unsigned char *p, size_t n, int64_t *v)
{
    if (n == 0)
        return false;
    unsigned c = p[0];
    if (c <= 0x7f) {
        *v = c;
        return true;
    }
    if (c >= 0xe0) {
        *v = (int8_t)c;
        return true;
    }
    static const unsigned char codes[] = {0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3};
    for (int i = 0; i < 8; i++) {
        if (codes[i] != c)
            continue;
        int w = 1 << (i % 4);
        if (n < (size_t)(1 + w))
            return false;
        uint64_t u = be(p + 1, w);
        if (i < 4) {
            *v = (int64_t)u;
        } else {
            int shift = 64 - 8 * w;
            *v = (int64_t)(u << shift) >> shift;
        }
        return true;
    }
    return false;
}

/* The value of key in the map at p, as a span. */
static bool mp_get(const unsigned char *p, size_t n, const char *key, const unsigned char **v, size_t *vlen)
{
    size_t items, off;
    unsigned c = n ? p[0] : 0;
    if ((c & 0xf0) == 0x80) {
        items = c & 0x0f;
        off = 1;
    } else if (c == 0xde && n >= 3) {
        items = (size_t)be(p + 1, 2);
        off = 3;
    } else if (c == 0xdf && n >= 5) {
        items = (size_t)be(p + 1, 4);
        off = 5;
    } else {
        return false;
    }
    size_t klen_want = strlen(key);
    for (size_t i = 0; i < items; i++) {
        size_t klen = mp_skip(p + off, n - off, 0);
        if (!klen)
            return false;
        const unsigned char *ks;
        size_t kl;
        bool match = mp_str(p + off, klen, &ks, &kl) && kl == klen_want && memcmp(ks, key, kl) == 0;
        off += klen;
        size_t vl = mp_skip(p + off, n - off, 0);
        if (!vl)
            return false;
        if (match) {
            *v = p + off;
            *vlen = vl;
            return true;
        }
        off += vl;
    }
    return false;
}

static bool is_map(const unsigned char *p, size_t n)
{
    return n && ((p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf);
}

/* Field readers that fail the test with where and what. */
static void need_str(const char *what, const unsigned char *p, size_t n, const char *key, char *out,
                     size_t cap)
{
    const unsigned char *v, *s;
    size_t vl, sl;
    cr_assert(mp_get(p, n, key, &v, &vl), "%s: key '%s' missing", what, key);
    cr_assert(mp_str(v, vl, &s, &sl), "%s: '%s' is not a str", what, key);
    cr_assert_lt(sl, cap, "%s: '%s' too long (%zu bytes)", what, key, sl);
    memcpy(out, s, sl);
    out[sl] = 0;
}

static int64_t need_int(const char *what, const unsigned char *p, size_t n, const char *key)
{
    const unsigned char *v;
    size_t vl;
    int64_t x;
    cr_assert(mp_get(p, n, key, &v, &vl), "%s: key '%s' missing", what, key);
    cr_assert(mp_int(v, vl, &x), "%s: '%s' is not an int", what, key);
    return x;
}

static struct h_buf need_map(const char *what, const unsigned char *p, size_t n, const char *key)
{
    const unsigned char *v;
    size_t vl;
    cr_assert(mp_get(p, n, key, &v, &vl), "%s: key '%s' missing", what, key);
    cr_assert(is_map(v, vl), "%s: '%s' is not a map", what, key);
    return buf_copy(v, vl);
}

/* An entry must be exactly one msgpack map. */
static void need_entry(const char *what, const unsigned char *p, size_t n)
{
    cr_assert(is_map(p, n), "%s: not a msgpack map", what);
    cr_assert_eq(mp_skip(p, n, 0), n, "%s: malformed msgpack or trailing bytes", what);
}

static redisReply *lrange(const char *key)
{
    redisReply *r = h_cmd("LRANGE %s 0 -1", key);
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY, "%s is not a list", key);
    return r;
}

size_t h_read_dealer(const char *dealer, struct h_assign **out)
{
    char key[256], what[320];
    snprintf(key, sizeof key, "%s:dealer:%s", H_PREFIX, dealer);
    redisReply *r = lrange(key);
    struct h_assign *a = h_alloc(sizeof *a * (r->elements ? r->elements : 1));
    for (size_t i = 0; i < r->elements; i++) {
        const unsigned char *p = (const unsigned char *)r->element[i]->str;
        size_t n = r->element[i]->len;
        snprintf(what, sizeof what, "%s[%zu] (assignment)", key, i);
        need_entry(what, p, n);
        a[i].raw = buf_copy(p, n);
        need_str(what, p, n, "lead_id", a[i].lead_id, sizeof a[i].lead_id);
        need_str(what, p, n, "dealer", a[i].dealer, sizeof a[i].dealer);
        need_str(what, p, n, "niche", a[i].niche, sizeof a[i].niche);
        need_str(what, p, n, "grade", a[i].grade, sizeof a[i].grade);
        need_str(what, p, n, "rule", a[i].rule, sizeof a[i].rule);
        a[i].score = need_int(what, p, n, "score");
        a[i].routed_at = need_int(what, p, n, "routed_at");
        a[i].attempt = need_int(what, p, n, "attempt");
        a[i].lead = need_map(what, p, n, "lead");
    }
    *out = a;
    return r->elements;
}

size_t h_read_unassigned(struct h_unassigned **out)
{
    char what[128];
    redisReply *r = lrange(H_PREFIX ":unassigned");
    struct h_unassigned *u = h_alloc(sizeof *u * (r->elements ? r->elements : 1));
    for (size_t i = 0; i < r->elements; i++) {
        const unsigned char *p = (const unsigned char *)r->element[i]->str;
        size_t n = r->element[i]->len;
        snprintf(what, sizeof what, "%s:unassigned[%zu]", H_PREFIX, i);
        need_entry(what, p, n);
        u[i].raw = buf_copy(p, n);
        need_str(what, p, n, "lead_id", u[i].lead_id, sizeof u[i].lead_id);
        need_str(what, p, n, "reason", u[i].reason, sizeof u[i].reason);
        need_str(what, p, n, "niche", u[i].niche, sizeof u[i].niche);
        u[i].at = need_int(what, p, n, "at");
        u[i].lead = need_map(what, p, n, "lead");
    }
    *out = u;
    return r->elements;
}

size_t h_read_dead(struct h_dead **out)
{
    char what[128];
    redisReply *r = lrange(H_PREFIX ":dead");
    struct h_dead *d = h_alloc(sizeof *d * (r->elements ? r->elements : 1));
    for (size_t i = 0; i < r->elements; i++) {
        const unsigned char *p = (const unsigned char *)r->element[i]->str;
        size_t n = r->element[i]->len;
        snprintf(what, sizeof what, "%s:dead[%zu]", H_PREFIX, i);
        need_entry(what, p, n);
        d[i].raw = buf_copy(p, n);
        need_str(what, p, n, "error", d[i].error, sizeof d[i].error);
        need_str(what, p, n, "ref", d[i].ref, sizeof d[i].ref);
        d[i].at = need_int(what, p, n, "at");
        const unsigned char *v, *s;
        size_t vl, sl;
        cr_assert(mp_get(p, n, "payload", &v, &vl), "%s: key 'payload' missing", what);
        /* The bytes are read from a str too, so that the oracle can match
         * them; the type itself is asserted where the test cares. */
        d[i].payload_is_bin = mp_bin(v, vl, &s, &sl);
        if (!d[i].payload_is_bin)
            cr_assert(mp_str(v, vl, &s, &sl), "%s: 'payload' is neither bin nor str", what);
        d[i].payload = buf_copy(s, sl);
    }
    *out = d;
    return r->elements;
}

size_t h_dealer_queues(char ***ids)
{
    size_t n = 0, cap = 16;
    char **v = h_alloc(sizeof *v * cap);
    char cursor[32] = "0";
    size_t plen = strlen(H_PREFIX ":dealer:");
    for (int rounds = 0; rounds < 10000; rounds++) {
        redisReply *r = h_cmd("SCAN %s MATCH %s:dealer:* COUNT 1000", cursor, H_PREFIX);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            if (n + 1 >= cap) {
                char **w = h_alloc(sizeof *w * cap * 2);
                memcpy(w, v, sizeof *v * n);
                v = w;
                cap *= 2;
            }
            const char *key = r->element[1]->element[i]->str;
            char *id = h_alloc(strlen(key) + 1);
            strcpy(id, key + plen);
            v[n++] = id;
        }
        if (strcmp(cursor, "0") == 0)
            break;
    }
    *ids = v;
    return n;
}

size_t h_find_assignments(const char *lead_id, struct h_assign **out)
{
    char **ids;
    size_t nq = h_dealer_queues(&ids), n = 0, cap = 8;
    struct h_assign *res = h_alloc(sizeof *res * cap);
    for (size_t q = 0; q < nq; q++) {
        struct h_assign *a;
        size_t na = h_read_dealer(ids[q], &a);
        for (size_t i = 0; i < na; i++) {
            if (strcmp(a[i].lead_id, lead_id) != 0)
                continue;
            if (n == cap) {
                struct h_assign *w = h_alloc(sizeof *w * cap * 2);
                memcpy(w, res, sizeof *res * n);
                res = w;
                cap *= 2;
            }
            res[n++] = a[i];
        }
    }
    *out = res;
    return n;
}

const struct h_unassigned *h_find_unassigned(const char *lead_id)
{
    struct h_unassigned *u;
    size_t n = h_read_unassigned(&u);
    for (size_t i = 0; i < n; i++)
        if (strcmp(u[i].lead_id, lead_id) == 0)
            return &u[i];
    return NULL;
}

void h_consume(const char *dealer, const char *lead_id)
{
    struct h_assign *a;
    size_t n = h_read_dealer(dealer, &a);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a[i].lead_id, lead_id) == 0) {
            long long removed = h_int("LREM %s:dealer:%s 1 %b", H_PREFIX, dealer, a[i].raw.p, a[i].raw.len);
            cr_assert_eq(removed, 1);
            return;
        }
    }
    cr_assert_fail("dealer %s does not hold lead %s", dealer, lead_id);
}

size_t h_outcomes(void)
{
    char **ids;
    size_t nq = h_dealer_queues(&ids);
    long long total = h_int("LLEN %s:unassigned", H_PREFIX) + h_int("LLEN %s:dead", H_PREFIX);
    for (size_t q = 0; q < nq; q++)
        total += h_int("LLEN %s:dealer:%s", H_PREFIX, ids[q]);
    return (size_t)total;
}

/* ---- the oracle ----------------------------------------------------- */

/* Per group of sends that must land in the same number of places: all
 * sends of one lead id, or (no id) all sends of identical bytes. */
struct group {
    size_t first;    /* index of its first send */
    size_t expected; /* sends */
    int max_buyers;
    size_t dead, unassigned;
    const char *dealers[64];
    size_t n_assign;
};

static void note(struct h_report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct h_report *r, const char *fmt, ...)
{
    size_t used = strlen(r->detail);
    if (used + 2 >= sizeof r->detail)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail + used, sizeof r->detail - used, fmt, ap);
    va_end(ap);
    used = strlen(r->detail);
    if (used + 2 < sizeof r->detail)
        strcat(r->detail, "; ");
}

static bool same_group(size_t a, size_t b)
{
    const struct h_sent *x = &H.sent[a], *y = &H.sent[b];
    if (x->id || y->id)
        return x->id && y->id && strcmp(x->id, y->id) == 0;
    return h_buf_eq(x->bytes, y->bytes.p, y->bytes.len);
}

static struct group *group_of_id(struct group *g, size_t ng, const char *id)
{
    for (size_t i = 0; i < ng; i++)
        if (H.sent[g[i].first].id && strcmp(H.sent[g[i].first].id, id) == 0)
            return &g[i];
    return NULL;
}

void h_oracle_check(struct h_report *r)
{
    memset(r, 0, sizeof *r);
    r->sent = H.n_sent;
    struct group *g = h_alloc(sizeof *g * (H.n_sent ? H.n_sent : 1));
    size_t *gi = h_alloc(sizeof *gi * (H.n_sent ? H.n_sent : 1)); /* send -> group */
    size_t ng = 0;
    for (size_t s = 0; s < H.n_sent; s++) {
        size_t k = 0;
        while (k < ng && !same_group(g[k].first, s))
            k++;
        if (k == ng) {
            g[ng].first = s;
            ng++;
        }
        gi[s] = k;
        g[k].expected++;
        if (H.sent[s].max_buyers > g[k].max_buyers)
            g[k].max_buyers = H.sent[s].max_buyers;
    }

    struct h_dead *dead;
    size_t nd = h_read_dead(&dead), extra_dead = 0;
    for (size_t i = 0; i < nd; i++) {
        size_t s = 0;
        while (s < H.n_sent && !h_buf_eq(dead[i].payload, H.sent[s].bytes.p, H.sent[s].bytes.len))
            s++;
        if (s < H.n_sent)
            g[gi[s]].dead++;
        else
            extra_dead++;
    }
    if (extra_dead > H.extra_dead) {
        r->unexpected += extra_dead - H.extra_dead;
        note(r, "%zu dead entries match no sent payload (%zu allowed)", extra_dead, H.extra_dead);
    }

    struct h_unassigned *un;
    size_t nu = h_read_unassigned(&un);
    for (size_t i = 0; i < nu; i++) {
        struct group *x = group_of_id(g, ng, un[i].lead_id);
        if (x) {
            x->unassigned++;
        } else {
            r->unexpected++;
            note(r, "unassigned entry for unknown lead '%s'", un[i].lead_id);
        }
    }

    char **ids;
    size_t nq = h_dealer_queues(&ids);
    for (size_t q = 0; q < nq; q++) {
        struct h_assign *a;
        size_t na = h_read_dealer(ids[q], &a);
        r->assignments += na;
        for (size_t i = 0; i < na; i++) {
            struct group *x = group_of_id(g, ng, a[i].lead_id);
            if (!x) {
                r->unexpected++;
                note(r, "dealer %s holds unknown lead '%s'", ids[q], a[i].lead_id);
                continue;
            }
            if (strcmp(a[i].dealer, ids[q]) != 0) {
                r->unexpected++;
                note(r, "queue of %s holds an assignment naming dealer %s", ids[q], a[i].dealer);
            }
            if (x->n_assign < sizeof x->dealers / sizeof x->dealers[0])
                x->dealers[x->n_assign] = ids[q];
            x->n_assign++;
        }
    }

    for (int c = 0; c < H.n_caps; c++) {
        long long held = h_int("LLEN %s:dealer:%s", H_PREFIX, H.caps[c].dealer);
        if (held > H.caps[c].max) {
            r->cap_overruns += (size_t)(held - H.caps[c].max);
            note(r, "dealer %s holds %lld assignments, cap %lld", H.caps[c].dealer, held, H.caps[c].max);
        }
    }

    for (size_t k = 0; k < ng; k++) {
        struct group *x = &g[k];
        const char *name = H.sent[x->first].id ? H.sent[x->first].id : "(payload without id)";
        size_t placed = x->dead + x->unassigned + (x->n_assign > 0);
        r->in_dealers += x->n_assign > 0;
        r->unassigned += x->unassigned;
        r->dead += x->dead;
        if (placed < x->expected) {
            r->lost += x->expected - placed;
            note(r, "lost: %s (sent %zu, placed %zu)", name, x->expected, placed);
        } else if (placed > x->expected) {
            r->duplicated += placed - x->expected;
            note(r, "duplicated: %s (sent %zu, placed %zu: %zu dealer queue(s), %zu unassigned, %zu dead)",
                 name, x->expected, placed, x->n_assign, x->unassigned, x->dead);
        }
        if (x->n_assign > (size_t)x->max_buyers) {
            r->duplicated += x->n_assign - (size_t)x->max_buyers;
            note(r, "%s is in %zu dealer queues (max_buyers %d)", name, x->n_assign, x->max_buyers);
        }
        size_t nlist = x->n_assign < 64 ? x->n_assign : 64;
        for (size_t i = 0; i < nlist; i++)
            for (size_t j = i + 1; j < nlist; j++)
                if (strcmp(x->dealers[i], x->dealers[j]) == 0) {
                    r->duplicated++;
                    note(r, "%s went to dealer %s twice", name, x->dealers[i]);
                }
    }
}

/* Entries of the input stream not committed yet: pending in the group, or
 * not delivered (acknowledged entries are trimmed later, not at once). */
long long h_in_left(void)
{
    long long pending = 0, lag = 0;
    redisReply *r = h_cmd("XPENDING %s:in %s", H_PREFIX, "leadrouter");
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1)
        pending = r->element[0]->integer;
    r = h_cmd("XINFO GROUPS %s:in", H_PREFIX);
    for (size_t g = 0; r && r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *x = r->element[g];
        for (size_t i = 0; x->type == REDIS_REPLY_ARRAY && i + 1 < x->elements; i += 2)
            if (x->element[i]->type == REDIS_REPLY_STRING && strcmp(x->element[i]->str, "lag") == 0)
                lag += x->element[i + 1]->type == REDIS_REPLY_INTEGER ? x->element[i + 1]->integer : 1;
    }
    if (h_int("EXISTS %s:in", H_PREFIX) == 0)
        return 0;
    return pending + lag;
}

/* Fails the test on anything the report or the input queue shows wrong. */
static void oracle_assert(const struct h_report *r)
{
    cr_assert(r->lost == 0 && r->duplicated == 0 && r->unexpected == 0 && r->cap_overruns == 0,
              "oracle: sent %zu, in dealer queues %zu, unassigned %zu, dead %zu, lost %zu, duplicated %zu, "
              "unexpected %zu, cap overruns %zu: %s",
              r->sent, r->in_dealers, r->unassigned, r->dead, r->lost, r->duplicated, r->unexpected,
              r->cap_overruns, r->detail);
    if (H.list_mode) {
        cr_assert_eq(h_int("LLEN %s:in", H_PREFIX), 0, "oracle: %s:in is not empty", H_PREFIX);
        cr_assert_eq(processing_total(), 0, "oracle: a %s:in:processing:* list still holds leads", H_PREFIX);
    } else if (H.last_in_id[0]) {
        long long left = h_in_left();
        cr_assert_eq(left, 0, "oracle: %s:in still holds %lld entries not committed", H_PREFIX, left);
    }
}

void h_oracle(void)
{
    struct h_report r;
    h_oracle_check(&r);
    fprintf(stderr,
            "[oracle] %s: sent %zu, in dealer queues %zu (%zu assignments), unassigned %zu, dead %zu, "
            "lost %zu, duplicated %zu, unexpected %zu\n",
            criterion_current_test ? criterion_current_test->name : "?", r.sent, r.in_dealers, r.assignments,
            r.unassigned, r.dead, r.lost, r.duplicated, r.unexpected);
    oracle_assert(&r);
}

void h_oracle_fault(const char *scenario, struct h_report *out)
{
    struct h_report r;
    h_oracle_check(&r);
    fprintf(stderr,
            "FAULT %s: sent=%zu in_dealer_queues=%zu unassigned=%zu dead=%zu lost=%zu duplicated=%zu "
            "cap_overruns=%zu\n",
            scenario, r.sent, r.in_dealers, r.unassigned, r.dead, r.lost, r.duplicated, r.cap_overruns);
    if (out)
        *out = r;
    oracle_assert(&r);
}

/* ---- leadctl ---------------------------------------------------------- */

static const char *slurp_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    char *buf = h_alloc(1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

struct h_run h_leadctl(const char *arg0, ...)
{
    const char *argv[32] = {LR_LEADCTL_PATH};
    int argc = 1;
    va_list ap;
    va_start(ap, arg0);
    for (const char *a = arg0; a && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char outp[PATH_MAX], errp[PATH_MAX];
    snprintf(outp, sizeof outp, "%s/leadctl.out", h_dir());
    snprintf(errp, sizeof errp, "%s/leadctl.err", h_dir());
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (o < 0 || e < 0)
            _exit(127);
        dup2(o, 1);
        dup2(e, 2);
        close_range(3, ~0U, 0);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st = 0;
    int64_t end = h_now_ms() + 20000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (h_now_ms() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            cr_assert_fail("leadctl %s did not finish within 20 s", arg0);
        }
        h_sleep_ms(5);
    }
    cr_assert(WIFEXITED(st), "leadctl %s died of a signal", arg0);
    return (struct h_run){WEXITSTATUS(st), slurp_file(outp), slurp_file(errp)};
}
