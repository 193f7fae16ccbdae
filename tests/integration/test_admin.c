/* test_admin.c - the admin socket and leadctl end to end (SPEC section 6,
 * issue 5): every command against a real daemon and Redis, `reload` with a
 * broken then a good file, runtime controls surviving a reload, `why` for
 * an assigned, an unassigned and an unknown lead, abusive clients while
 * 10 000 leads are routed, and `metrics` checked by a Prometheus text
 * format parser (below), not by eye. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* clang-format off */
#define DEFAULTS "defaults = { timezone = \"UTC\"; };\n"
#define SOLAR "niches = ( { name = \"solar\"; sources = [ \"sunquote.example\" ]; strategy = \"weighted\"; } );\n"
#define DEALER(id, contract) \
    "{ id = \"" id "\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; contract = { " contract " }; }"
#define CONF_TWO DEFAULTS SOLAR "dealers = ( " DEALER("d1", "weight = 3; caps = { day = 500; };") ", " DEALER("d2", "") " );\n"
/* Equal weights; the reload adds d3 (listed first, so every index moves). */
#define CONF_EQUAL DEFAULTS SOLAR "dealers = ( " DEALER("d1", "") ", " DEALER("d2", "") " );\n"
#define CONF_EQUAL_PLUS_D3 DEFAULTS SOLAR \
    "dealers = ( " DEALER("d3", "tier = 2;") ", " DEALER("d1", "") ", " DEALER("d2", "") " );\n"
/* d1 wins the first pick (weight 100) and is then capped; d2 refuses low scores. */
#define CONF_WHY DEFAULTS SOLAR \
    "dealers = ( " DEALER("d1", "weight = 100; caps = { day = 1; };") ", " DEALER("d2", "min_score = 50;") " );\n"
/* clang-format on */

/* ---- memory the tests keep until teardown --------------------------- */

static void **kept;
static size_t n_kept;

static void *keep(void *p)
{
    cr_assert_not_null(p, "out of memory");
    void **k = realloc(kept, (n_kept + 1) * sizeof *k);
    cr_assert_not_null(k);
    kept = k;
    kept[n_kept++] = p;
    return p;
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    h_setup();
}

static void teardown(void)
{
    for (size_t i = 0; i < n_kept; i++)
        free(kept[i]);
    free(kept);
    kept = NULL;
    n_kept = 0;
    h_teardown();
}

TestSuite(admin, .init = setup, .fini = teardown, .timeout = 60);

/* ---- talking to the socket ---------------------------------------------- */

/* The admin socket path of a harness config (its `admin` line). */
static const char *socket_of(const char *conf)
{
    FILE *f = fopen(conf, "r");
    cr_assert_not_null(f, "%s: %s", conf, strerror(errno));
    char line[1024];
    char *path = keep(calloc(1, 512));
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "admin = { socket = \"", 20) == 0) {
            char *end = strchr(line + 20, '"');
            cr_assert_not_null(end);
            snprintf(path, 512, "%.*s", (int)(end - (line + 20)), line + 20);
        }
    fclose(f);
    cr_assert(*path, "no admin socket in %s", conf);
    return path;
}

static int dial(const char *path, bool nonblock)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    cr_assert(fd >= 0);
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Waits (bounded) until the daemon's socket accepts connections. */
static void wait_socket(const char *path)
{
    int fd = -1;
    H_WAIT((fd = dial(path, false)) >= 0, 10, "the admin socket %s never accepted a connection", path);
    close(fd);
}

/* Sends one line and reads the framed reply within ms; returns the raw
 * reply (kept) or fails. *took gets the round trip in ms. */
static const char *adm_raw(const char *path, const char *line, int ms, int64_t *took)
{
    int64_t t0 = h_now_ms();
    int fd = dial(path, false);
    cr_assert(fd >= 0, "cannot connect to %s: %s", path, strerror(errno));
    size_t ll = strlen(line);
    char *msg = malloc(ll + 1);
    memcpy(msg, line, ll);
    msg[ll] = '\n';
    size_t off = 0;
    while (off < ll + 1) {
        ssize_t w = send(fd, msg + off, ll + 1 - off, MSG_NOSIGNAL);
        cr_assert(w > 0, "send: %s", strerror(errno));
        off += (size_t)w;
    }
    free(msg);
    size_t cap = 1 << 16, len = 0;
    char *buf = keep(malloc(cap));
    for (;;) {
        int left = (int)(t0 + ms - h_now_ms());
        cr_assert_gt(left, 0, "no complete reply to `%.40s` within %d ms (got %zu bytes)", line, ms, len);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        if (len + 4096 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            cr_assert_not_null(nb);
            kept[n_kept - 1] = nb;
            buf = nb;
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        cr_assert(r > 0, "the daemon closed the connection during `%.40s`", line);
        len += (size_t)r;
        buf[len] = 0;
        if ((len == 2 && strcmp(buf, ".\n") == 0) || (len >= 3 && strcmp(buf + len - 3, "\n.\n") == 0))
            break;
    }
    close(fd);
    if (took)
        *took = h_now_ms() - t0;
    return buf;
}

/* The reply's body (dot-stuffing undone, terminator removed). */
static const char *adm(const char *path, const char *line)
{
    const char *raw = adm_raw(path, line, 10000, NULL);
    char *body = keep(malloc(strlen(raw) + 1)), *o = body;
    for (const char *p = raw; *p;) {
        size_t n = strcspn(p, "\n");
        if (n == 1 && p[0] == '.' && p[1] == '\n' && p[2] == 0)
            break;
        size_t skip = p[0] == '.' ? 1 : 0;
        memcpy(o, p + skip, n - skip);
        o += n - skip;
        *o++ = '\n';
        p += n + 1;
    }
    *o = 0;
    return body;
}

static void expect_ok(const char *body, const char *needle, const char *what)
{
    cr_assert(strncmp(body, "ERR ", 4) != 0, "%s: %s", what, body);
    if (needle)
        cr_assert_not_null(strstr(body, needle), "%s: no [%s] in:\n%s", what, needle, body);
}

/* A table row with its cells separated by any run of spaces. */
static bool has_row(const char *table, const char *cells)
{
    char *norm = keep(malloc(strlen(table) + 2)), *o = norm;
    *o++ = '\n';
    for (const char *p = table; *p; p++)
        if (!(*p == ' ' && o[-1] == ' '))
            *o++ = *p;
    *o = 0;
    char want[512];
    snprintf(want, sizeof want, "\n%s", cells);
    return strstr(norm, want) != NULL;
}

/* The value of `name` in `name value` lines (kept), or NULL. */
static const char *value_of(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > nl && strncmp(p, name, nl) == 0 && p[nl] == ' ') {
            char *v = keep(malloc(n - nl));
            snprintf(v, n - nl, "%.*s", (int)(n - nl - 1), p + nl + 1);
            return v;
        }
        p += n + (p[n] == '\n');
    }
    return NULL;
}

/* ---- leadctl ------------------------------------------------------------ */

#define leadctl h_leadctl

/* ---- a Prometheus text format (0.0.4) parser ----------------------------- */

struct prom_sample {
    char name[128];
    char labels[8][2][256]; /* name, unescaped value */
    int n_labels;
    double value;
};

struct prom_family {
    char name[128];
    char type[16];
    bool help, typed;
    int n_samples;
};

struct prom {
    struct prom_family fam[64];
    int n_fam;
    struct prom_sample *s;
    int n, cap;
    char series[4096][400]; /* name + raw labels, for duplicates */
    int n_series;
};

static bool name_ok(const char *s, size_t n, bool colon)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
                  (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* A Go ParseFloat number as the format allows. */
static bool number_ok(const char *s, double *v)
{
    if (strcmp(s, "+Inf") == 0 || strcmp(s, "Inf") == 0) {
        *v = INFINITY;
        return true;
    }
    if (strcmp(s, "-Inf") == 0) {
        *v = -INFINITY;
        return true;
    }
    if (strcmp(s, "NaN") == 0) {
        *v = NAN;
        return true;
    }
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return *s && !*end && errno == 0 && strspn(s, "+-0123456789.eE") == strlen(s);
}

static struct prom_family *family_of(struct prom *p, const char *sample)
{
    for (int i = 0; i < p->n_fam; i++) {
        const char *f = p->fam[i].name;
        size_t fl = strlen(f);
        if (strcmp(sample, f) == 0)
            return &p->fam[i];
        if (strcmp(p->fam[i].type, "histogram") == 0 && strncmp(sample, f, fl) == 0 &&
            (strcmp(sample + fl, "_bucket") == 0 || strcmp(sample + fl, "_sum") == 0 ||
             strcmp(sample + fl, "_count") == 0))
            return &p->fam[i];
    }
    return NULL;
}

static struct prom_family *declare(struct prom *p, const char *name, int lineno)
{
    for (int i = 0; i < p->n_fam; i++)
        if (strcmp(p->fam[i].name, name) == 0)
            return &p->fam[i];
    cr_assert_lt(p->n_fam, 64, "line %d: too many families", lineno);
    struct prom_family *f = &p->fam[p->n_fam++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

/* Parses the exposition text; fails the test at the first line that is
 * not valid, naming it. */
static void prom_parse(const char *text, struct prom *p)
{
    memset(p, 0, sizeof *p);
    int lineno = 0;
    const struct prom_family *current = NULL;
    cr_assert(*text && text[strlen(text) - 1] == '\n', "the exposition must end with a newline");
    for (const char *q = text; *q;) {
        size_t n = strcspn(q, "\n");
        char line[4096];
        cr_assert_lt(n, sizeof line, "line too long");
        memcpy(line, q, n);
        line[n] = 0;
        q += n + 1;
        lineno++;
        cr_assert(n > 0, "line %d: empty line", lineno);
        if (line[0] == '#') {
            char kw[16], name[200];
            int used = 0;
            if (sscanf(line, "# %15s %199s %n", kw, name, &used) >= 2 &&
                (strcmp(kw, "HELP") == 0 || strcmp(kw, "TYPE") == 0)) {
                cr_assert(name_ok(name, strlen(name), true), "line %d: bad metric name in %s", lineno, line);
                struct prom_family *f = declare(p, name, lineno);
                cr_assert_eq(f->n_samples, 0, "line %d: %s of %s after its samples", lineno, kw, name);
                if (strcmp(kw, "HELP") == 0) {
                    cr_assert(!f->help, "line %d: a second HELP for %s", lineno, name);
                    f->help = true;
                    for (const char *h = line + used; *h; h++)
                        if (*h == '\\') {
                            cr_assert(h[1] == '\\' || h[1] == 'n', "line %d: bad escape in HELP", lineno);
                            h++;
                        }
                } else {
                    cr_assert(!f->typed, "line %d: a second TYPE for %s", lineno, name);
                    const char *t = line + used;
                    cr_assert(strcmp(t, "counter") == 0 || strcmp(t, "gauge") == 0 ||
                                  strcmp(t, "histogram") == 0 || strcmp(t, "summary") == 0 ||
                                  strcmp(t, "untyped") == 0,
                              "line %d: unknown type '%s'", lineno, t);
                    snprintf(f->type, sizeof f->type, "%s", t);
                    f->typed = true;
                }
            }
            continue; /* other comments are allowed */
        }
        /* name{labels} value [timestamp] */
        if (p->n == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 64;
            p->s = realloc(p->s, (size_t)p->cap * sizeof *p->s);
            cr_assert_not_null(p->s);
        }
        struct prom_sample *s = &p->s[p->n];
        memset(s, 0, sizeof *s);
        const char *c = line;
        size_t nl = strcspn(c, "{ ");
        cr_assert(name_ok(c, nl, true) && nl < sizeof s->name, "line %d: bad metric name: %s", lineno, line);
        memcpy(s->name, c, nl);
        c += nl;
        char raw_labels[3000] = "";
        if (*c == '{') {
            const char *lstart = c;
            c++;
            while (*c != '}') {
                cr_assert_lt(s->n_labels, 8, "line %d: too many labels", lineno);
                size_t ln = strcspn(c, "=");
                cr_assert(name_ok(c, ln, false) && ln < 256, "line %d: bad label name", lineno);
                cr_assert(!(ln >= 2 && c[0] == '_' && c[1] == '_'), "line %d: reserved label name", lineno);
                memcpy(s->labels[s->n_labels][0], c, ln);
                for (int k = 0; k < s->n_labels; k++)
                    cr_assert_str_neq(s->labels[k][0], s->labels[s->n_labels][0], "line %d: label twice",
                                      lineno);
                c += ln;
                cr_assert(c[0] == '=' && c[1] == '"', "line %d: label value must be quoted: %s", lineno,
                          line);
                c += 2;
                char *v = s->labels[s->n_labels][1];
                size_t vo = 0;
                while (*c != '"') {
                    cr_assert(*c, "line %d: unterminated label value", lineno);
                    char ch = *c++;
                    if (ch == '\\') {
                        cr_assert(*c == '\\' || *c == '"' || *c == 'n', "line %d: bad escape \\%c", lineno,
                                  *c);
                        ch = *c == 'n' ? '\n' : *c;
                        c++;
                    }
                    cr_assert_lt(vo, 255, "line %d: label value too long for the test", lineno);
                    v[vo++] = ch;
                }
                c++;
                s->n_labels++;
                if (*c == ',')
                    c++;
                else
                    cr_assert_eq(*c, '}', "line %d: expected , or } in %s", lineno, line);
            }
            c++;
            snprintf(raw_labels, sizeof raw_labels, "%.*s", (int)(c - lstart), lstart);
        }
        cr_assert_eq(*c, ' ', "line %d: no value: %s", lineno, line);
        c++;
        char num[64] = "", ts[64] = "";
        int k = sscanf(c, "%63s %63s", num, ts);
        cr_assert(k >= 1 && number_ok(num, &s->value), "line %d: bad value '%s'", lineno, num);
        if (k == 2) {
            double tv;
            cr_assert(number_ok(ts, &tv), "line %d: bad timestamp", lineno);
        }
        struct prom_family *f = family_of(p, s->name);
        cr_assert_not_null(f, "line %d: sample %s without a TYPE before it", lineno, s->name);
        cr_assert(f->typed, "line %d: sample %s without a TYPE before it", lineno, s->name);
        cr_assert(current == f || f->n_samples == 0, "line %d: samples of %s are not together", lineno,
                  f->name);
        current = f;
        f->n_samples++;
        /* No series twice. */
        char key[400];
        snprintf(key, sizeof key, "%.127s%.270s", s->name, raw_labels);
        for (int i = 0; i < p->n_series; i++)
            cr_assert_str_neq(p->series[i], key, "line %d: series %s twice", lineno, key);
        if (p->n_series < 4096)
            snprintf(p->series[p->n_series++], sizeof p->series[0], "%s", key);
        p->n++;
    }
}

static const char *label(const struct prom_sample *s, const char *name)
{
    for (int i = 0; i < s->n_labels; i++)
        if (strcmp(s->labels[i][0], name) == 0)
            return s->labels[i][1];
    return NULL;
}

/* The semantic rules on top of the syntax: counters end in _total and are
 * >= 0, every family has HELP, histogram buckets are cumulative with
 * ascending le and +Inf == _count. */
static void prom_check(const struct prom *p)
{
    for (int i = 0; i < p->n_fam; i++) {
        const struct prom_family *f = &p->fam[i];
        cr_assert(f->help && f->typed, "%s lacks HELP or TYPE", f->name);
        size_t fl = strlen(f->name);
        if (strcmp(f->type, "counter") == 0)
            cr_assert(fl > 6 && strcmp(f->name + fl - 6, "_total") == 0, "counter %s does not end in _total",
                      f->name);
        if (strcmp(f->type, "histogram") != 0)
            continue;
        double last_le = -INFINITY, last_count = 0, count = -1, inf = -1;
        bool sum = false;
        for (int k = 0; k < p->n; k++) {
            const struct prom_sample *s = &p->s[k];
            if (strncmp(s->name, f->name, fl) != 0)
                continue;
            if (strcmp(s->name + fl, "_bucket") == 0) {
                const char *le = label(s, "le");
                cr_assert_not_null(le, "%s bucket without le", f->name);
                double v;
                cr_assert(number_ok(le, &v), "%s: bad le %s", f->name, le);
                cr_assert_gt(v, last_le, "%s: le not ascending at %s", f->name, le);
                cr_assert_geq(s->value, last_count, "%s: buckets not cumulative at le=%s", f->name, le);
                last_le = v;
                last_count = s->value;
                if (isinf(v))
                    inf = s->value;
            } else if (strcmp(s->name + fl, "_count") == 0) {
                count = s->value;
            } else if (strcmp(s->name + fl, "_sum") == 0) {
                sum = true;
            }
        }
        cr_assert_geq(inf, 0, "%s: no +Inf bucket", f->name);
        cr_assert(sum, "%s: no _sum", f->name);
        cr_assert_eq(inf, count, "%s: +Inf bucket %g != _count %g", f->name, inf, count);
    }
    for (int k = 0; k < p->n; k++) {
        const struct prom_family *f = family_of((struct prom *)p, p->s[k].name);
        if (strcmp(f->type, "counter") == 0)
            cr_assert_geq(p->s[k].value, 0, "counter %s is negative", p->s[k].name);
    }
}

static double prom_get(const struct prom *p, const char *name, const char *lname, const char *lvalue)
{
    for (int k = 0; k < p->n; k++) {
        const struct prom_sample *s = &p->s[k];
        if (strcmp(s->name, name) != 0)
            continue;
        const char *v = lname ? label(s, lname) : NULL;
        if (!lname || (v && strcmp(v, lvalue) == 0))
            return s->value;
    }
    return -1;
}

static double prom_sum(const struct prom *p, const char *name)
{
    double t = 0;
    for (int k = 0; k < p->n; k++)
        if (strcmp(p->s[k].name, name) == 0)
            t += p->s[k].value;
    return t;
}

/* ---- leads ---------------------------------------------------------------- */

static struct h_lead lead(const char *id, int score)
{
    return (struct h_lead){.id = id, .niche = "solar", .state = "IA", .score = score};
}

static const char *ids(const char *prefix, int i)
{
    char *s = keep(malloc(48));
    snprintf(s, 48, "%s%d", prefix, i);
    return s;
}

static long long queue_len(const char *dealer)
{
    return h_int("LLEN %s:dealer:%s", H_PREFIX, dealer);
}

static void send_n(const char *prefix, int from, int to)
{
    for (int i = from; i < to; i++) {
        struct h_lead l = lead(ids(prefix, i), 70);
        h_send(&l, NULL, 0);
    }
}

/* ---- every command ------------------------------------------------------------- */

Test(admin, every_command_over_the_socket_and_leadctl)
{
    h_avoid_utc_midnight(60);
    const char *conf = h_config("stream", NULL, CONF_TWO);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    struct stat st;
    cr_assert_eq(lstat(sock, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "the socket has admin.mode: %o", st.st_mode & 0777);

    for (int i = 0; i < 8; i++) {
        struct h_lead l = lead(ids("A", i), 70);
        l.source = i < 6 ? "web\"form" : NULL;
        h_send(&l, NULL, 0);
    }
    struct h_lead far = {.id = "FAR", .niche = "solar", .state = "TX", .score = 10, .source = "web\"form"};
    h_send(&far, NULL, 0);
    h_wait_drained(10);
    long long q1 = queue_len("d1"), q2 = queue_len("d2");
    cr_assert_eq(q1 + q2, 8);

    const char *b = adm(sock, "help");
    expect_ok(b, "why LEAD_ID", "help");
    b = adm(sock, "stats");
    expect_ok(b, "received 9\n", "stats");
    expect_ok(b, "assigned 8\n", "stats");
    expect_ok(b, "unassigned 1\n", "stats");
    expect_ok(b, "redis up\n", "stats");
    expect_ok(b, "config_generation 1\n", "stats");
    cr_assert_not_null(value_of(b, "uptime"));
    cr_assert_not_null(value_of(b, "latency_p99_ms"));
    cr_assert_str_neq(value_of(b, "latency_p99_ms"), "-", "commits were timed");

    /* dealers: cap counters from Redis match the queues. Counters are kept
     * for the periods a dealer's caps name (d1: day), not for the others. */
    b = adm(sock, "dealers");
    char row[256];
    snprintf(row, sizeof row, "d1 no 3 0 %lld 0 -/500/-/- %lld solar:75.0%%/", q1, q1);
    cr_assert(has_row(b, row), "want row [%s] in:\n%s", row, b);
    snprintf(row, sizeof row, "d2 no 1 0 0 0 -/-/-/- %lld solar:25.0%%/", q2);
    cr_assert(has_row(b, row), "want row [%s] in:\n%s", row, b);
    b = adm(sock, "niches");
    cr_assert(has_row(b, "solar weighted 2 8 1\n"), "%s", b);
    b = adm(sock, "sources");
    cr_assert(has_row(b, "web\"form 6 1\n"), "%s", b);
    cr_assert(has_row(b, "(none) 2 0\n"), "%s", b);
    b = adm(sock, "metrics");
    struct prom p;
    prom_parse(b, &p);
    prom_check(&p);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_received_total", NULL, NULL), 9);
    free(p.s);

    b = adm(sock, "explain {\"id\":\"E1\",\"niche\":\"solar\",\"state\":\"IA\",\"score\":80}");
    expect_ok(b, "4. assigned to:", "explain");
    expect_ok(b, "as this daemon last read them from Redis", "explain uses the live state");
    cr_assert_eq(queue_len("d1") + queue_len("d2"), 8, "explain commits nothing");
    b = adm(sock, "explain {\"id\":\"E1\",\"state\":[1]}");
    cr_assert(strncmp(b, "ERR dead letter: bad_type", 25) == 0, "%s", b);
    b = adm(sock, "json stats");
    cr_assert(b[0] == '{' && strstr(b, "\"received\":9"), "%s", b);
    b = adm(sock, "nonsense");
    cr_assert(strncmp(b, "ERR unknown command", 19) == 0, "%s", b);

    /* leadctl: tables, JSON, exit codes. */
    struct h_run r = leadctl("-c", conf, "stats", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(has_row(r.out, "received 9\n"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "received           9\n"), "aligned:\n%s", r.out);
    r = leadctl("-c", conf, "--json", "dealers", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(r.out[0] == '[' && strstr(r.out, "\"dealer\":\"d1\""), "%s", r.out);
    r = leadctl("-s", sock, "niches", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(has_row(r.out, "NICHE STRATEGY DEALERS ASSIGNED UNASSIGNED\n"), "%s", r.out);
    r = leadctl("-c", conf, "metrics", NULL);
    cr_assert_eq(r.status, 0);
    cr_assert_not_null(strstr(r.out, "# TYPE leadrouter_route_latency_seconds histogram"));
    r = leadctl("-c", conf, "help", NULL);
    cr_assert(r.status == 0 && strstr(r.out, "explain-msgpack HEX"), "%s", r.out);
    r = leadctl("-c", conf, "bogus", NULL);
    cr_assert_eq(r.status, 1, "an ERR reply: exit 1");
    cr_assert_not_null(strstr(r.err, "ERR unknown command"), "%s", r.err);

    char lf[256];
    snprintf(lf, sizeof lf, "%s/lead.json", h_dir());
    FILE *f = fopen(lf, "w");
    fputs("{\n  \"id\": \"F1\",\n  \"source\": \"sunquote.example\",\n  \"state\": \"IA\",\n  \"score\": "
          "55\n}\n",
          f);
    fclose(f);
    r = leadctl("-c", conf, "explain", lf, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "1. niche: solar (by source)"), "%s", r.out);
    r = leadctl("-c", conf, "--json", "explain", lf, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "\"niche_by\":\"source\""), "%s", r.out);
    snprintf(lf, sizeof lf, "%s/lead.mp", h_dir());
    f = fopen(lf, "wb");
    static const char mp_ok[] = "\x83\xa2id\xa2M1\xa5niche\xa5solar\xa5state\xa2"
                                "IA";
    fwrite(mp_ok, 1, sizeof mp_ok - 1, f);
    fclose(f);
    r = leadctl("-c", conf, "explain", lf, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "lead M1\n"), "%s", r.out);
    f = fopen(lf, "wb");
    static const char mp_bad[] = "\x82\xa2id\xa2M1\xa5score\xa3"
                                 "bad";
    fwrite(mp_bad, 1, sizeof mp_bad - 1, f);
    fclose(f);
    r = leadctl("-c", conf, "explain", lf, NULL);
    cr_assert_eq(r.status, 1, "a lead the decoder refuses: exit 1");
    cr_assert_not_null(strstr(r.err, "dead letter: bad_type"), "%s", r.err);

    /* Unreachable: exit 2 with what to check. */
    char nosock[256];
    snprintf(nosock, sizeof nosock, "%s/nobody.sock", h_dir());
    r = leadctl("-s", nosock, "stats", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "is leadrouterd running") && strstr(r.err, nosock), "%s", r.err);
    r = leadctl("-c", conf, NULL);
    cr_assert_eq(r.status, 1, "no command: usage, exit 1");

    h_daemon_stop(d);
    cr_assert_neq(access(sock, F_OK), 0, "the daemon removes its socket on exit");
    h_oracle();
}

/* ---- reload ---------------------------------------------------------------------- */

Test(admin, reload_broken_file_keeps_routing_then_good_file_takes_over)
{
    const char *conf = h_config("stream", NULL, CONF_EQUAL);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    send_n("R", 0, 10);
    h_wait_drained(10);

    FILE *f = fopen(conf, "a");
    cr_assert_not_null(f);
    fputs("dealers = ( { id = \"x\"; niches = [ \"nope\" ]; } );\n", f);
    fclose(f);
    const char *b = adm(sock, "reload");
    char want[600];
    snprintf(want, sizeof want, "ERR %s:", conf);
    cr_assert(strncmp(b, want, strlen(want)) == 0, "want `ERR FILE:LINE: message`, got: %s", b);
    cr_assert(strspn(b + strlen(want), "0123456789") > 0, "no line number: %s", b);
    struct h_run r = leadctl("-s", sock, "reload", NULL);
    cr_assert_eq(r.status, 1, "leadctl reload of a broken file: exit 1");
    cr_assert(strstr(r.err, "ERR ") && strstr(r.err, conf), "%s", r.err);
    /* With -c the broken file is reported before the daemon is asked. */
    r = leadctl("-c", conf, "reload", NULL);
    cr_assert_eq(r.status, 1);
    cr_assert_not_null(strstr(r.err, conf), "%s", r.err);

    /* The old config still routes. */
    send_n("R", 10, 20);
    h_wait_drained(10);
    cr_assert_eq(queue_len("d1") + queue_len("d2"), 20);
    b = adm(sock, "stats");
    expect_ok(b, "config_generation 1\n", "after a failed reload");
    expect_ok(b, "reload_failures 2\n", "after two failed reloads");
    expect_ok(b, "last_reload_error ", "the error is shown");

    const char *next = h_config("stream", NULL, CONF_EQUAL_PLUS_D3);
    cr_assert_eq(rename(next, conf), 0);
    b = adm(sock, "reload");
    cr_assert_str_eq(b, "OK generation 2\n");
    r = leadctl("-s", sock, "--json", "reload", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "\"generation\":3"), "%s", r.out);
    b = adm(sock, "stats");
    expect_ok(b, "config_generation 3\n", "after the good reloads");
    expect_ok(b, "reloads 2\n", "");
    cr_assert_null(value_of(b, "last_reload_error"), "cleared by a good reload");
    b = adm(sock, "dealers");
    cr_assert(has_row(b, "d3 no 1"), "the new dealer is listed:\n%s", b);
    b = adm(sock, "metrics");
    struct prom p;
    prom_parse(b, &p);
    prom_check(&p);
    cr_assert_eq(prom_get(&p, "leadrouter_config_generation", NULL, NULL), 3);
    cr_assert_eq(prom_get(&p, "leadrouter_config_reload_failures_total", NULL, NULL), 2);
    free(p.s);
    h_daemon_stop(d);
    h_oracle();
}

Test(admin, pause_and_weight_survive_a_reload)
{
    const char *conf = h_config("stream", NULL, CONF_EQUAL);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    struct h_run r = leadctl("-c", conf, "pause", "d1", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "OK dealer d1 paused, weight 1\n");
    r = leadctl("-c", conf, "pause", "nobody", NULL);
    cr_assert_eq(r.status, 1);
    send_n("P", 0, 10);
    h_wait_drained(10);
    cr_assert_eq(queue_len("d1"), 0, "a paused dealer gets nothing");
    cr_assert_eq(queue_len("d2"), 10);

    /* A reload that moves every dealer's index. */
    const char *next = h_config("stream", NULL, CONF_EQUAL_PLUS_D3);
    cr_assert_eq(rename(next, conf), 0);
    cr_assert_str_eq(adm(sock, "reload"), "OK generation 2\n");
    cr_assert(has_row(adm(sock, "dealers"), "d1 yes 1"), "dealers shows the pause");
    send_n("P", 10, 20);
    h_wait_drained(10);
    cr_assert_eq(queue_len("d1"), 0, "still paused after the reload");
    cr_assert_eq(queue_len("d2"), 20);

    /* Weight: d1 3 : d2 1, set by ops, kept across another reload. */
    cr_assert_str_eq(adm(sock, "resume d1"), "OK dealer d1 active, weight 1\n");
    cr_assert_str_eq(adm(sock, "weight d1 3"), "OK dealer d1 active, weight 3 (set by ops)\n");
    cr_assert_str_eq(adm(sock, "reload"), "OK generation 3\n");
    cr_assert(has_row(adm(sock, "dealers"), "d1 no 3*"), "dealers marks the ops weight");
    send_n("P", 20, 60);
    h_wait_drained(10);
    long long w1 = queue_len("d1"), w2 = queue_len("d2") - 20;
    cr_assert_eq(w1 + w2, 40);
    cr_assert(w1 >= 28 && w1 <= 32, "3:1 after the reload: d1 got %lld of 40", w1);
    cr_assert_str_eq(adm(sock, "weight d1 default"), "OK dealer d1 active, weight 1\n");
    h_daemon_stop(d);
    h_oracle();
}

/* ---- why ------------------------------------------------------------------------- */

Test(admin, why_assigned_unassigned_and_unknown)
{
    h_avoid_utc_midnight(60);
    const char *conf = h_config("stream", NULL, CONF_WHY);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    struct h_lead w1 = lead("W1", 90), w2 = lead("W2", 10);
    h_send(&w1, NULL, 0);
    h_wait_drained(10);
    h_send(&w2, NULL, 0);
    h_wait_drained(10);
    cr_assert_eq(queue_len("d1"), 1, "W1 went to d1");

    struct h_run r = leadctl("-c", conf, "why", "W1", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "assigned to d1 by rule tier:1"), "%s", r.out);
    cr_assert(strstr(r.out, "d2") && strstr(r.out, "not_picked"), "who else:\n%s", r.out);
    cr_assert_not_null(strstr(r.out, " UTC"), "when:\n%s", r.out);

    r = leadctl("-c", conf, "why", "W2", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "unassigned: all_capped"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "its day cap was reached"), "d1's reason:\n%s", r.out);
    cr_assert_not_null(strstr(r.out, "the score is below its min_score"), "d2's reason:\n%s", r.out);

    r = leadctl("-c", conf, "--json", "why", "W2", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "{\"dealer\":\"d1\",\"why\":\"capped:day\"}"), "%s", r.out);

    r = leadctl("-c", conf, "why", "NOPE", NULL);
    cr_assert_eq(r.status, 1, "an unknown lead: exit 1");
    cr_assert_not_null(strstr(r.err, "unknown lead NOPE"), "%s", r.err);
    r = leadctl("-c", conf, "why", "bad/id", NULL);
    cr_assert_eq(r.status, 1);

    /* explain sees the live caps: d1 has had its one lead of the day. */
    const char *ex = adm(sock, "explain {\"id\":\"X9\",\"niche\":\"solar\",\"state\":\"IA\",\"score\":90}");
    expect_ok(ex, "capped:day", "explain with live usage");
    expect_ok(ex, "4. assigned to: d2", "explain with live usage");
    cr_assert_eq(queue_len("d2"), 0, "explain commits nothing");

    /* The same through the daemon (deferred replies). */
    const char *b = adm(sock, "why W1");
    expect_ok(b, "assigned to d1 by rule tier:1", "why W1");
    b = adm(sock, "why W2");
    expect_ok(b, "unassigned: all_capped", "why W2");
    b = adm(sock, "why NOPE");
    cr_assert(strncmp(b, "ERR unknown lead NOPE", 21) == 0, "%s", b);
    b = adm(sock, "json why W1");
    cr_assert(b[0] == '{' && strstr(b, "\"rule\":\"tier:1\""), "%s", b);

    /* Clients that leave before Redis answers: the replies are dropped. */
    for (int i = 0; i < 50; i++) {
        int fd = dial(sock, false);
        cr_assert(fd >= 0);
        const char *cmd = i % 2 ? "why W1\nwhy W2\n" : "dealers\nwhy W1\n";
        cr_assert_eq(send(fd, cmd, strlen(cmd), MSG_NOSIGNAL), (ssize_t)strlen(cmd));
        close(fd);
    }
    expect_ok(adm(sock, "stats"), "received 2\n", "the daemon is fine");

    /* leadctl why reads Redis: it answers with the daemon stopped. */
    h_daemon_stop(d);
    r = leadctl("-c", conf, "why", "W1", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_not_null(strstr(r.out, "assigned to d1"));
    r = leadctl("-c", conf, "stats", NULL);
    cr_assert_eq(r.status, 2, "daemon down: exit 2");
    h_oracle();
}

Test(admin, redis_down_answers_without_it)
{
    const char *conf = h_config("stream", NULL, CONF_TWO);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    send_n("D", 0, 3);
    h_wait_drained(10);
    h_redis_kill9();
    H_WAIT(strstr(adm(sock, "stats"), "redis down\n") != NULL, 10, "stats never says redis down");
    const char *b = adm(sock, "dealers");
    cr_assert(has_row(b, "d1 no 3 - - -"), "no cap counters without Redis:\n%s", b);
    b = adm(sock, "why D1");
    cr_assert(strncmp(b, "ERR redis is down", 17) == 0, "%s", b);
    b = adm(sock, "metrics");
    struct prom p;
    prom_parse(b, &p);
    cr_assert_eq(prom_get(&p, "leadrouter_redis_up", NULL, NULL), 0);
    free(p.s);
    h_redis_start_again(false);
    H_WAIT(strstr(adm(sock, "stats"), "redis up\n") != NULL, 20, "stats never says redis up again");
    h_daemon_stop(d);
}

/* ---- abuse ------------------------------------------------------------------------- */

/* Routes n leads (one MULTI) and returns the ms until all were taken. */
static int64_t route_batch(const char *prefix, int n, void (*tick)(void *), void *arg)
{
    struct h_lead *ls = keep(calloc((size_t)n, sizeof *ls));
    for (int i = 0; i < n; i++)
        ls[i] = lead(ids(prefix, i), 70);
    int64_t t0 = h_now_ms();
    for (int i = 0; i < n; i += 1000)
        h_send_atomic(ls + i, (size_t)(n - i < 1000 ? n - i : 1000));
    int64_t end = t0 + 90000;
    while (!h_drained()) {
        cr_assert_lt(h_now_ms(), end, "%d leads not routed within 90 s", n);
        h_daemons_check_alive();
        if (tick)
            tick(arg);
        h_sleep_ms(5);
    }
    return h_now_ms() - t0;
}

struct abuse {
    const char *sock;
    int writer, reader;
    size_t written; /* bytes the writer got in */
    bool writer_closed;
    size_t reader_sent;
    bool reader_dropped;
    int64_t next_stats;
    int stats_asked, stats_slowest;
};

/* One round of abuse while leads are routed; and now and then a `stats`
 * from an ordinary client, timed. */
static void abuse_tick(void *arg)
{
    struct abuse *a = arg;
    static char chunk[65536];
    if (!chunk[0])
        memset(chunk, 'x', sizeof chunk);
    for (int k = 0; k < 16 && !a->writer_closed && a->written < 10u * 1024 * 1024; k++) {
        ssize_t w = send(a->writer, chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            a->written += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            a->writer_closed = true;
        else
            break;
    }
    static const char cmds[] = "metrics\nstats\nhelp\ndealers\n";
    for (int k = 0; k < 16 && !a->reader_dropped; k++) {
        ssize_t w = send(a->reader, cmds, sizeof cmds - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            a->reader_sent += (size_t)w;
        else if (w < 0 && errno != EAGAIN)
            a->reader_dropped = true;
        else
            break;
    }
    if (h_now_ms() >= a->next_stats) {
        int64_t took;
        const char *b = adm_raw(a->sock, "stats", 5000, &took);
        cr_assert_not_null(strstr(b, "\nreceived "), "%s", b);
        a->stats_asked++;
        if (took > a->stats_slowest)
            a->stats_slowest = (int)took;
        a->next_stats = h_now_ms() + 100;
    }
}

/* A suite of its own for the longer timeout (a per-test .timeout makes
 * Criterion's runner leak under LeakSanitizer when tests run in parallel). */
TestSuite(admin_abuse, .init = setup, .fini = teardown, .timeout = 120);

Test(admin_abuse, abusive_clients_do_not_slow_routing)
{
    const char *conf = h_config("stream", NULL, CONF_EQUAL);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    /* Warm up, then the baseline: 10 000 leads with nobody on the socket. */
    route_batch("warm", 500, NULL, NULL);
    int64_t base = route_batch("base", 10000, NULL, NULL);

    int idle[100];
    for (int i = 0; i < 100; i++) {
        idle[i] = dial(sock, true);
        cr_assert(idle[i] >= 0, "idle client %d refused", i);
    }
    struct abuse a = {.sock = sock};
    a.writer = dial(sock, true);
    a.reader = dial(sock, true);
    cr_assert(a.writer >= 0 && a.reader >= 0);
    int small = 4096; /* the never-reader's replies pile up in the daemon */
    setsockopt(a.reader, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    int64_t loaded = route_batch("load", 10000, abuse_tick, &a);
    /* Keep abusing a little past the routing, so both abusers meet their
     * limits whatever the speed. */
    for (int64_t end = h_now_ms() + 3000; h_now_ms() < end && !(a.writer_closed && a.reader_dropped);)
        abuse_tick(&a), h_sleep_ms(5);

    printf("admin abuse: 10000 leads in %lld ms alone, %lld ms with 100 idle clients, a %zu-byte line and a "
           "client that never reads (%zu bytes of commands); %d stats, slowest %d ms\n",
           (long long)base, (long long)loaded, a.written, a.reader_sent, a.stats_asked, a.stats_slowest);
    cr_assert_lt(loaded, base * 3 + 3000, "routing slowed down: %lld ms vs %lld ms", (long long)loaded,
                 (long long)base);
    cr_assert_gt(a.stats_asked, 0);
    cr_assert_lt(a.stats_slowest, 2000, "stats took %d ms during the abuse", a.stats_slowest);
    cr_assert(a.writer_closed, "the 10 MB line was cut off (%zu bytes went in)", a.written);
    cr_assert_lt(a.written, (size_t)4 * 1024 * 1024, "the daemon kept reading a line with no end");
    char buf[256] = "";
    ssize_t got = recv(a.writer, buf, sizeof buf - 1, MSG_DONTWAIT);
    cr_assert(got > 0 && strstr(buf, "ERR line too long"), "the writer was told why: [%s]",
              got > 0 ? buf : "");
    cr_assert(a.reader_dropped, "the client that never reads was dropped (%zu bytes sent)", a.reader_sent);
    /* The idle clients are still served. */
    for (int i = 0; i < 100; i += 33) {
        cr_assert_eq(send(idle[i], "stats\n", 6, MSG_NOSIGNAL), 6, "idle client %d was dropped", i);
        char rb[4096];
        size_t n = 0;
        int64_t end = h_now_ms() + 5000;
        while (n < 3 || strcmp(rb + n - 3, "\n.\n") != 0) {
            cr_assert_lt(h_now_ms(), end, "idle client %d got no reply", i);
            ssize_t k = recv(idle[i], rb + n, sizeof rb - 1 - n, MSG_DONTWAIT);
            if (k > 0) {
                n += (size_t)k;
                rb[n] = 0;
            } else {
                cr_assert(k < 0 && errno == EAGAIN, "idle client %d: connection closed", i);
                h_sleep_ms(5);
            }
        }
        cr_assert_not_null(strstr(rb, "received 20500\n"), "%s", rb);
    }
    for (int i = 0; i < 100; i++)
        close(idle[i]);
    close(a.writer);
    close(a.reader);
    cr_assert_eq(queue_len("d1") + queue_len("d2"), 20500, "every lead routed");
    cr_assert_eq(h_int("LLEN %s:unassigned", H_PREFIX) + h_int("LLEN %s:dead", H_PREFIX), 0);
    h_daemon_stop(d);
}

/* ---- metrics ------------------------------------------------------------------------ */

Test(admin, metrics_parse_as_prometheus_text_format)
{
    h_avoid_utc_midnight(60);
    const char *conf = h_config("stream", NULL, CONF_WHY);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    /* Hostile sources (UTF-8: a str that is not is dead-lettered), every
     * outcome, a dead letter. */
    const char *sources[] = {"plain", "quo\"te", "back\\slash", "new\nline", "caf\xc3\xa9", "esc\x1b", NULL};
    for (int i = 0; sources[i]; i++) { /* M0 -> d1 (then capped), M1-M5 -> d2 */
        struct h_lead l = lead(ids("M", i), 90);
        l.source = sources[i];
        l.created_at = h_now_ms() - 1500;
        h_send(&l, NULL, 0);
    }
    for (int i = 0; i < 2; i++) { /* d1 capped, d2 refuses low scores */
        struct h_lead l = lead(ids("U", i), 10);
        l.source = "plain";
        h_send(&l, NULL, 0);
    }
    struct h_lead tx = {.id = "MTX", .niche = "solar", .state = "TX", .score = 90};
    h_send(&tx, NULL, 0);
    struct h_lead unk = {.id = "MUNK", .niche = "nothing", .state = "IA", .score = 90};
    h_send(&unk, NULL, 0);
    h_send_raw("\x93\x01\x02\x03", 4, NULL, NULL, 0);
    h_wait_drained(10);

    /* Drained means committed in Redis; the daemon counts a lead when the
     * commit's reply comes back, a moment later. Wait for the last one. */
    const char *text = adm(sock, "metrics");
    for (int i = 0; i < 100 && !strstr(text, "\nleadrouter_leads_dead_total{"); i++) {
        usleep(50 * 1000);
        text = adm(sock, "metrics");
    }
    struct prom p;
    prom_parse(text, &p);
    prom_check(&p);
    const char *spec[] = {"leadrouter_leads_received_total",
                          "leadrouter_leads_assigned_total",
                          "leadrouter_leads_unassigned_total",
                          "leadrouter_leads_dead_total",
                          "leadrouter_leads_returned_total",
                          "leadrouter_route_latency_seconds",
                          "leadrouter_redis_up",
                          "leadrouter_config_generation"};
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        bool found = false;
        for (int k = 0; k < p.n_fam; k++)
            found |= strcmp(p.fam[k].name, spec[i]) == 0;
        cr_assert(found, "SPEC metric %s missing", spec[i]);
    }
    cr_assert_eq(prom_get(&p, "leadrouter_leads_received_total", NULL, NULL), 11);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_assigned_total", "dealer", "d1"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_assigned_total", "dealer", "d2"), 5);
    cr_assert_eq(prom_sum(&p, "leadrouter_leads_unassigned_total"), 4);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_unassigned_total", "reason", "all_capped"), 2);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_unassigned_total", "reason", "unknown_niche"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_leads_unassigned_total", "reason", "no_dealer_in_territory"), 1);
    cr_assert_eq(prom_sum(&p, "leadrouter_leads_dead_total"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_redis_up", NULL, NULL), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_config_generation", NULL, NULL), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_source_leads_total", "source", "quo\"te"), 1,
                 "escaped and read back");
    cr_assert_eq(prom_get(&p, "leadrouter_source_leads_total", "source", "back\\slash"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_source_leads_total", "source", "new?line"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_source_leads_total", "source", "caf\xc3\xa9"), 1);
    cr_assert_eq(prom_get(&p, "leadrouter_source_leads_total", "source", "esc?"), 1);
    /* Latency from created_at: those leads waited >= 1.5 s. */
    double le1 = prom_get(&p, "leadrouter_route_latency_seconds_bucket", "le", "1");
    double all = prom_get(&p, "leadrouter_route_latency_seconds_count", NULL, NULL);
    cr_assert_geq(all, 6);
    cr_assert_leq(le1, all - 6, "six leads were created 1.5 s before their commit: %g <= 1 s of %g", le1,
                  all);
    free(p.s);
    h_daemon_stop(d);
    h_oracle();
}

/* 128 clients that sent half a line and went silent held every place
 * forever, locking operators out; and each connect wrote a log line.
 * Now a silent client is disconnected after admin.idle_timeout, and
 * connects are logged at most once a second with a count. */
Test(admin, idle_clients_are_dropped_and_connects_are_summarized)
{
    const char *conf = h_config("stream", NULL, CONF_WHY);
    /* admin.idle_timeout = 4 in the harness's admin group */
    FILE *f = fopen(conf, "r");
    cr_assert_not_null(f);
    char *text = keep(calloc(1, 1 << 16));
    size_t n = fread(text, 1, (1 << 16) - 1, f);
    fclose(f);
    text[n] = 0;
    char *at = strstr(text, "mode = \"0600\"; };");
    cr_assert_not_null(at);
    f = fopen(conf, "w");
    cr_assert_not_null(f);
    fprintf(f, "%.*smode = \"0600\"; idle_timeout = 4; };%s", (int)(at - text), text,
            at + strlen("mode = \"0600\"; };"));
    fclose(f);
    const char *sock = socket_of(conf);
    int d = h_daemon_start(conf);
    wait_socket(sock);
    h_sleep_ms(200); /* the probe's close is seen before the 128 come */
    int fds[128];
    for (int i = 0; i < 128; i++) {
        fds[i] = dial(sock, false);
        cr_assert(fds[i] >= 0, "client %d could not connect", i);
        cr_assert_eq(send(fds[i], "sta", 3, MSG_NOSIGNAL), 3);
    }
    /* The 129th is refused (it reads the refusal without sending). */
    int extra = dial(sock, false);
    cr_assert(extra >= 0);
    char got[128] = "";
    struct pollfd ep = {.fd = extra, .events = POLLIN};
    cr_assert_eq(poll(&ep, 1, 3000), 1, "no answer to the 129th client");
    cr_assert_gt(recv(extra, got, sizeof got - 1, 0), 0);
    close(extra);
    cr_assert_not_null(strstr(got, "too many admin clients"), "the 129th: %s", got);
    /* Silent for longer than 4 s: they go, and an operator gets in. */
    h_sleep_ms(4500);
    H_WAIT(strstr(adm(sock, "stats"), "ERR") == NULL, 5, "idle clients still hold every place");
    /* Each was closed with no reply to its half line (the last may have
     * been refused if the daemon had not yet seen wait_socket's probe go). */
    int refused = 0;
    for (int i = 0; i < 128; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 2000), 1, "client %d was not disconnected", i);
        char b[128] = "";
        ssize_t r = recv(fds[i], b, sizeof b - 1, 0);
        if (r > 0) {
            cr_assert_not_null(strstr(b, "too many admin clients"), "client %d got a reply: %s", i, b);
            refused++;
        }
        close(fds[i]);
    }
    cr_assert_leq(refused, 1, "%d of the 128 were refused", refused);
    const char *log = h_daemon_log_tail(d);
    int said = 0;
    for (const char *p = log; (p = strstr(p, "client connected")) != NULL; p++)
        said++;
    cr_assert_leq(said, 15, "%d connect lines for ~135 connects in a few seconds:\n%s", said, log);
    cr_assert_not_null(strstr(log, "other connections since"), "the others are counted:\n%s", log);
    h_daemon_stop(d);
    h_oracle();
}
