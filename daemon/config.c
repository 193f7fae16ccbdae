/* config.c - loads the libconfig file (and the dealer files it @includes)
 * into a new struct cfg and routing table, checking every setting and
 * naming FILE:LINE in each error. libconfig 1.5 cannot glob includes and
 * silently wraps integers beyond 32 bits, so we read the text ourselves,
 * pre-scan it (prescan) and hand libconfig the text with the @include lines
 * blanked out. */
#include "leadrouter/config.h"

#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "leadrouter/tzdb.h"

#define CFG_MAX_FILE_BYTES ((size_t)64 << 20)
#define CFG_MAX_INCLUDES 1000
#define CFG_MAX_PATTERN 4096
#define CFG_SUN_PATH_MAX 107 /* sizeof(sockaddr_un.sun_path) - 1 on Linux */
#define CFG_MAX_FILTERS 256  /* verdict detail holds the filter index */
#define CFG_MAX_IN_VALUES 256
#define CFG_MAX_STRING 128 /* sources, keywords (index key limit) */

/* One @include directive of the main file. */
struct cfg_include {
    char *pattern; /* as written, unescaped (owned) */
    int line;
};

/* State of one load. Strings named "ref" point into the libconfig tree or
 * the caller's arguments. */
struct loader {
    const char *file;     /* file being read, for errors (ref) */
    const char *wfile;    /* the same, interned in the table for rules_where */
    const char *ctx_kind; /* "dealer", "niche" or NULL: prefixes messages */
    const char *ctx_name; /* its id or name (ref) */
    char *err;
    size_t errlen;
    struct cfg *c;
    struct rules_table *t;
    struct cfg_include *inc; /* owned */
    size_t n_inc;
    size_t n_included; /* files read through @include so far */
};

/* ------------------------------------------------------------------ errors */

/* Formats "FILE:LINE: [kind 'name': ]message" (no LINE when line <= 0) and
 * returns -1, so callers can `return fail(...)`. Control characters from the
 * file are masked so an error line cannot mess with a terminal or a log. */
static int vfail(struct loader *L, int line, const char *fmt, va_list ap)
{
    if (L->err == NULL || L->errlen == 0)
        return -1;
    char *e = L->err;
    size_t n = L->errlen;
    int w = line > 0 ? snprintf(e, n, "%s:%d: ", L->file, line) : snprintf(e, n, "%s: ", L->file);
    size_t o = w < 0 ? 0 : (size_t)w;
    if (o < n && L->ctx_kind != NULL) {
        w = snprintf(e + o, n - o, "%s '%s': ", L->ctx_kind, L->ctx_name);
        o += w < 0 ? 0 : (size_t)w;
    }
    if (o < n)
        vsnprintf(e + o, n - o, fmt, ap);
    for (char *p = e; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return -1;
}

static int fail_line(struct loader *L, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail_line(struct loader *L, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(L, line, fmt, ap);
    va_end(ap);
    return -1;
}

/* An error about setting s (or about the file when s is NULL). */
static int fail(struct loader *L, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct loader *L, const config_setting_t *s, const char *fmt, ...)
{
    /* An element of an array may carry no line of its own: use its parent's. */
    while (s != NULL && config_setting_source_line(s) == 0 && config_setting_parent(s) != NULL)
        s = config_setting_parent(s);
    va_list ap;
    va_start(ap, fmt);
    vfail(L, s ? (int)config_setting_source_line(s) : 0, fmt, ap);
    va_end(ap);
    return -1;
}

static int oom(struct loader *L, const config_setting_t *s)
{
    return fail(L, s, "out of memory");
}

/* The dotted path of s without list indexes, e.g. "dealers.contract.caps.day". */
static const char *path_of(const config_setting_t *s, char *buf, size_t len)
{
    const char *names[16];
    int n = 0;
    for (; s != NULL && n < 16; s = config_setting_parent(s))
        if (config_setting_name(s) != NULL)
            names[n++] = config_setting_name(s);
    size_t o = 0;
    buf[0] = '\0';
    while (n-- > 0 && o < len) {
        int w = snprintf(buf + o, len - o, "%s%s", o ? "." : "", names[n]);
        o += w < 0 ? 0 : (size_t)w;
    }
    return buf;
}

#define PATH(s) path_of((s), pathbuf, sizeof pathbuf)

/* ---------------------------------------------------------- typed getters */

/* Each getter returns 1 when the member is present and valid (result in
 * *out), 0 when absent (*out untouched, so callers preset the default), -1
 * after reporting an error. A NULL group holds nothing. */

static config_setting_t *member(const config_setting_t *g, const char *name)
{
    return g ? config_setting_get_member(g, name) : NULL;
}

static int missing(struct loader *L, const config_setting_t *g, const char *name)
{
    char pathbuf[256];
    const char *p = g ? PATH(g) : "";
    return fail(L, g, "missing required setting '%s%s%s'", p, *p ? "." : "", name);
}

/* What a setting is, for "must be X, not Y" messages. */
static const char *type_name(const config_setting_t *s)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "empty";
    }
}

static int get_int(struct loader *L, const config_setting_t *g, const char *name, int64_t lo, int64_t hi,
                   int64_t *out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    int type = config_setting_type(s);
    if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
        return fail(L, s, "%s: must be an integer, not %s", PATH(s), type_name(s));
    int64_t v = config_setting_get_int64(s);
    if (v < lo || v > hi) {
        if (hi >= (int64_t)UINT32_MAX)
            return fail(L, s, "%s: must be an integer >= %lld (got %lld)", PATH(s), (long long)lo,
                        (long long)v);
        return fail(L, s, "%s: must be an integer in %lld..%lld (got %lld)", PATH(s), (long long)lo,
                    (long long)hi, (long long)v);
    }
    *out = v;
    return 1;
}

static bool is_number(const config_setting_t *s)
{
    int type = config_setting_type(s);
    return type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64 || type == CONFIG_TYPE_FLOAT;
}

static double number_of(const config_setting_t *s)
{
    return config_setting_type(s) == CONFIG_TYPE_FLOAT ? config_setting_get_float(s)
                                                       : (double)config_setting_get_int64(s);
}

static int get_num(struct loader *L, const config_setting_t *g, const char *name, double lo, double hi,
                   double *out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (!is_number(s))
        return fail(L, s, "%s: must be a number, not %s", PATH(s), type_name(s));
    double v = number_of(s);
    if (!(v >= lo && v <= hi))
        return fail(L, s, "%s: must be in %g..%g (got %g)", PATH(s), lo, hi, v);
    *out = v;
    return 1;
}

static int get_bool(struct loader *L, const config_setting_t *g, const char *name, bool *out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return fail(L, s, "%s: must be true or false, not %s", PATH(s), type_name(s));
    *out = config_setting_get_bool(s) != 0;
    return 1;
}

static int get_str(struct loader *L, const config_setting_t *g, const char *name, const char **out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail(L, s, "%s: must be a string, not %s", PATH(s), type_name(s));
    *out = config_setting_get_string(s);
    return 1;
}

static int get_group(struct loader *L, const config_setting_t *g, const char *name, config_setting_t **out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (!config_setting_is_group(s))
        return fail(L, s, "%s: must be a group { ... }, not %s", PATH(s), type_name(s));
    *out = s;
    return 1;
}

/* A list ( { ... }, ... ) whose every element is a group. */
static int get_groups(struct loader *L, const config_setting_t *g, const char *name, config_setting_t **out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (!config_setting_is_list(s))
        return fail(L, s, "%s: must be a list ( { ... }, ... ), not %s", PATH(s), type_name(s));
    for (int i = 0; i < config_setting_length(s); i++)
        if (!config_setting_is_group(config_setting_get_elem(s, i)))
            return fail(L, config_setting_get_elem(s, i), "%s: each element must be a group { ... }",
                        PATH(s));
    *out = s;
    return 1;
}

/* An array [ "a", ... ] (or a list) of strings. */
static int get_strs(struct loader *L, const config_setting_t *g, const char *name, config_setting_t **out)
{
    char pathbuf[256];
    config_setting_t *s = member(g, name);
    if (s == NULL)
        return 0;
    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return fail(L, s, "%s: must be an array of strings [ \"...\", ... ], not %s", PATH(s), type_name(s));
    for (int i = 0; i < config_setting_length(s); i++)
        if (config_setting_type(config_setting_get_elem(s, i)) != CONFIG_TYPE_STRING)
            return fail(L, config_setting_get_elem(s, i), "%s: must be an array of strings", PATH(s));
    *out = s;
    return 1;
}

/* Typos must not pass silently: every member of g must be in allowed. */
static int check_keys(struct loader *L, const config_setting_t *g, const char *const *allowed)
{
    char pathbuf[256];
    for (int i = 0; g != NULL && i < config_setting_length(g); i++) {
        const config_setting_t *m = config_setting_get_elem(g, i);
        const char *const *a = allowed;
        while (*a != NULL && strcmp(*a, config_setting_name(m)) != 0)
            a++;
        if (*a == NULL)
            return fail(L, m, "unknown setting '%s'", PATH(m));
    }
    return 0;
}

/* Index of s in names (NULL-terminated), or -1. */
static int pick(const char *s, const char *const *names)
{
    for (int i = 0; names[i] != NULL; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

/* An enum setting: *out becomes the index of its value in names. */
static int get_enum(struct loader *L, const config_setting_t *g, const char *name, const char *const *names,
                    const char *expected, int *out)
{
    char pathbuf[256];
    const char *v;
    int r = get_str(L, g, name, &v);
    if (r <= 0)
        return r;
    int i = pick(v, names);
    if (i < 0)
        return fail(L, member(g, name), "%s: unknown value '%s' (expected %s)", PATH(member(g, name)), v,
                    expected);
    *out = i;
    return 1;
}

/* len in [min, max] and every byte alphanumeric or in extra. */
static bool valid_word(const char *s, size_t min, size_t max, const char *extra)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && strchr(extra, s[i]) == NULL)
            return false;
    return true;
}

static bool has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* A malloc'd copy of s, or NULL after reporting. */
static char *dup_str(struct loader *L, const config_setting_t *at, const char *s)
{
    char *d = strdup(s);
    if (d == NULL)
        oom(L, at);
    return d;
}

/* Resolves a time zone name to its index in the table, loading each zone
 * once. */
static int load_tz(struct loader *L, const config_setting_t *at, const char *name, uint32_t *out)
{
    char pathbuf[256];
    int i = rules_find_tz(L->t, name);
    if (i < 0) {
        char why[256];
        struct lr_tz *tz = tzdb_load(name, why, sizeof why);
        if (tz == NULL)
            return fail(L, at, "%s: %s", PATH(at), why);
        i = rules_add_tz(L->t, tz);
        if (i < 0) {
            lr_tz_free(tz);
            return oom(L, at);
        }
    }
    *out = (uint32_t)i;
    return 0;
}

/* A mask of grades (bit i = grade i) from an array of grade names. */
static int grade_mask(struct loader *L, const config_setting_t *arr, uint32_t *out)
{
    char pathbuf[256];
    uint32_t mask = 0;
    for (int i = 0; arr != NULL && i < config_setting_length(arr); i++) {
        const config_setting_t *e = config_setting_get_elem(arr, i);
        const char *name = config_setting_get_string(e);
        int g = rules_grade_find(L->t, name, strlen(name));
        if (g < 0)
            return fail(L, e, "%s: unknown grade '%s'", PATH(arr), name);
        mask |= 1u << g;
    }
    *out = mask;
    return 0;
}

/* Copies the strings of arr into a new vector owned by the table, through
 * norm (which writes the stored form into buf or returns why it is bad).
 * *n grows with each copy, so a failure leaves a vector the table frees. */
typedef const char *(*norm_fn)(const char *in, char *buf, size_t len);

static int copy_strs(struct loader *L, const config_setting_t *arr, norm_fn norm, char ***v, uint32_t *n)
{
    char pathbuf[256];
    int cnt = config_setting_length(arr);
    *v = calloc(cnt > 0 ? (size_t)cnt : 1, sizeof **v);
    if (*v == NULL)
        return oom(L, arr);
    for (int i = 0; i < cnt; i++) {
        const config_setting_t *e = config_setting_get_elem(arr, i);
        const char *s = config_setting_get_string(e);
        char buf[256];
        const char *why = norm(s, buf, sizeof buf);
        if (why != NULL)
            return fail(L, e, "%s: %s '%s'", PATH(arr), why, s);
        if (((*v)[*n] = dup_str(L, e, buf)) == NULL)
            return -1;
        (*n)++;
    }
    return 0;
}

static const char *norm_lower(const char *in, char *buf, size_t len)
{
    size_t n = strlen(in);
    if (n == 0 || n > CFG_MAX_STRING || n >= len || has_control(in))
        return "must be 1..128 printable characters, not";
    for (size_t i = 0; i <= n; i++)
        buf[i] = (char)tolower((unsigned char)in[i]);
    return NULL;
}

static const char *norm_state(const char *in, char *buf, size_t len)
{
    if (!valid_word(in, 1, 8, "-") || strlen(in) >= len)
        return "bad state (1..8 characters of [A-Za-z0-9-])";
    for (size_t i = 0; i <= strlen(in); i++)
        buf[i] = (char)toupper((unsigned char)in[i]);
    return NULL;
}

/* ------------------------------------------------------------- sections */

static int parse_redis(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"host", "port",           "socket",         "username", "password",
                                       "db",   "startup_timeout", "allow_eviction", NULL};
    char pathbuf[256];
    struct cfg *c = L->c;
    config_setting_t *g = NULL;
    const char *host = "127.0.0.1", *sock = "", *user = "", *pass = "";
    int64_t port = 6379, db = 0, timeout = 30;
    if (get_group(L, root, "redis", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_str(L, g, "host", &host) < 0 || get_int(L, g, "port", 1, 65535, &port) < 0 ||
        get_str(L, g, "socket", &sock) < 0 || get_str(L, g, "username", &user) < 0 ||
        get_str(L, g, "password", &pass) < 0 || get_int(L, g, "db", 0, INT_MAX, &db) < 0 ||
        get_int(L, g, "startup_timeout", 0, 3600, &timeout) < 0 ||
        get_bool(L, g, "allow_eviction", &c->redis.allow_eviction) < 0)
        return -1;
    if (sock[0] == '\0' && (host[0] == '\0' || strlen(host) > 255 || has_control(host)))
        return fail(L, member(g, "host"), "%s: must be a host name or address", PATH(member(g, "host")));
    if (strlen(sock) > CFG_SUN_PATH_MAX)
        return fail(L, member(g, "socket"), "%s: path longer than %d bytes", PATH(member(g, "socket")),
                    CFG_SUN_PATH_MAX);
    c->redis.port = (int)port;
    c->redis.db = (int)db;
    c->redis.startup_timeout = (int)timeout;
    if ((c->redis.host = dup_str(L, g, host)) == NULL ||
        (sock[0] && (c->redis.socket = dup_str(L, g, sock)) == NULL) ||
        (user[0] && (c->redis.username = dup_str(L, g, user)) == NULL) ||
        (pass[0] && (c->redis.password = dup_str(L, g, pass)) == NULL))
        return -1;
    return 0;
}

static int parse_input(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"mode", "group", "batch", "in_flight", "claim_idle_ms", "max_deliveries", NULL};
    static const char *const modes[] = {"stream", "list", NULL};
    char pathbuf[256];
    struct cfg *c = L->c;
    config_setting_t *g = NULL;
    const char *group = "leadrouter";
    int mode = INPUT_STREAM;
    int64_t batch = 256, in_flight = 3, claim = 30000, deliveries = 5;
    if (get_group(L, root, "input", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_enum(L, g, "mode", modes, "stream or list", &mode) < 0 || get_str(L, g, "group", &group) < 0 ||
        get_int(L, g, "batch", 1, 10000, &batch) < 0 || get_int(L, g, "in_flight", 1, 16, &in_flight) < 0 ||
        get_int(L, g, "claim_idle_ms", 100, 86400000, &claim) < 0 ||
        get_int(L, g, "max_deliveries", 1, 1000, &deliveries) < 0)
        return -1;
    if (!valid_word(group, 1, 64, "_.:-"))
        return fail(L, member(g, "group"), "%s: must be 1..64 characters of [A-Za-z0-9_.:-] (got '%s')",
                    PATH(member(g, "group")), group);
    c->input.mode = (enum cfg_input_mode)mode;
    c->input.batch = (int)batch;
    c->input.in_flight = (int)in_flight;
    c->input.claim_idle_ms = (int)claim;
    c->input.max_deliveries = (int)deliveries;
    return (c->input.group = dup_str(L, g, group)) == NULL ? -1 : 0;
}

static int parse_prefix(struct loader *L, const config_setting_t *root)
{
    const char *prefix = "lr";
    if (get_str(L, root, "prefix", &prefix) < 0)
        return -1;
    if (!valid_word(prefix, 1, 32, "_.-"))
        return fail(L, member(root, "prefix"),
                    "prefix: must be 1..32 characters of [A-Za-z0-9_.-] (got '%s')", prefix);
    return (L->c->prefix = dup_str(L, root, prefix)) == NULL ? -1 : 0;
}

static int parse_admin(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"socket", "mode", "idle_timeout", NULL};
    char pathbuf[256];
    config_setting_t *g = NULL;
    const char *sock = "/run/leadrouter/admin.sock", *mode = "0660";
    int64_t idle = 60;
    if (get_group(L, root, "admin", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_str(L, g, "socket", &sock) < 0 || get_str(L, g, "mode", &mode) < 0 ||
        get_int(L, g, "idle_timeout", 1, 86400, &idle) < 0)
        return -1;
    L->c->admin.idle_timeout = (int)idle;
    if (sock[0] == '\0' || strlen(sock) > CFG_SUN_PATH_MAX || has_control(sock))
        return fail(L, member(g, "socket"), "%s: must be a path of 1..%d bytes", PATH(member(g, "socket")),
                    CFG_SUN_PATH_MAX);
    size_t n = strlen(mode);
    unsigned long m = 0;
    bool ok = n >= 1 && n <= 4 && strspn(mode, "01234567") == n;
    if (ok)
        m = strtoul(mode, NULL, 8);
    if (!ok)
        return fail(L, member(g, "mode"), "%s: must be an octal mode string such as \"0660\" (got '%s')",
                    PATH(member(g, "mode")), mode);
    if (m & 0007)
        return fail(L, member(g, "mode"), "%s: '%s' is world-accessible: it must grant nothing to others",
                    PATH(member(g, "mode")), mode);
    L->c->admin.mode = (mode_t)m;
    return (L->c->admin.socket = dup_str(L, g, sock)) == NULL ? -1 : 0;
}

static int parse_defaults(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"country", "timezone", NULL};
    char pathbuf[256];
    config_setting_t *g = NULL;
    const char *country = "US", *tz = "UTC";
    if (get_group(L, root, "defaults", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_str(L, g, "country", &country) < 0 || get_str(L, g, "timezone", &tz) < 0)
        return -1;
    if (strlen(country) != 2 || !isalpha((unsigned char)country[0]) || !isalpha((unsigned char)country[1]))
        return fail(L, member(g, "country"), "%s: must be a 2-letter country code (got '%s')",
                    PATH(member(g, "country")), country);
    L->t->default_country[0] = (char)toupper((unsigned char)country[0]);
    L->t->default_country[1] = (char)toupper((unsigned char)country[1]);
    L->t->default_country[2] = '\0';
    return load_tz(L, member(g, "timezone") ? member(g, "timezone") : g, tz, &L->t->default_tz);
}

static int add_grade(struct loader *L, const config_setting_t *at, const char *name, int min)
{
    struct rules_grade *gr = rules_add_grade(L->t);
    if (gr == NULL)
        return oom(L, at);
    gr->min = min;
    return (gr->name = dup_str(L, at, name)) == NULL ? -1 : 0;
}

static int parse_grades(struct loader *L, const config_setting_t *scoring)
{
    static const char *const keys[] = {"grade", "min", NULL};
    char pathbuf[256];
    config_setting_t *list = NULL;
    if (get_groups(L, scoring, "grades", &list) < 0)
        return -1;
    if (list == NULL)
        return add_grade(L, scoring, "A", 80) || add_grade(L, scoring, "B", 50) ||
                       add_grade(L, scoring, "C", 0)
                   ? -1
                   : 0;
    int n = config_setting_length(list);
    if (n < 1 || n > RULES_MAX_GRADES)
        return fail(L, list, "%s: must hold 1..%d grades (got %d)", PATH(list), RULES_MAX_GRADES, n);
    for (int i = 0; i < n; i++) {
        const config_setting_t *g = config_setting_get_elem(list, i);
        const char *name;
        int64_t min = -1;
        if (check_keys(L, g, keys) < 0 || get_str(L, g, "grade", &name) < 0 ||
            get_int(L, g, "min", 0, 100, &min) < 0)
            return -1;
        if (member(g, "grade") == NULL)
            return missing(L, g, "grade");
        if (member(g, "min") == NULL)
            return missing(L, g, "min");
        if (!valid_word(name, 1, 7, "+-"))
            return fail(L, member(g, "grade"), "%s: must be 1..7 characters of [A-Za-z0-9+-] (got '%s')",
                        PATH(member(g, "grade")), name);
        if (rules_grade_find(L->t, name, strlen(name)) >= 0)
            return fail(L, member(g, "grade"), "%s: grade '%s' listed twice", PATH(member(g, "grade")), name);
        if (i > 0 && min >= L->t->grades[i - 1].min)
            return fail(L, member(g, "min"),
                        "%s: grades out of order: '%s' (min %lld) must have a lower min than '%s' (min %d)",
                        PATH(member(g, "min")), name, (long long)min, L->t->grades[i - 1].name,
                        L->t->grades[i - 1].min);
        if (i == n - 1 && min != 0)
            return fail(L, member(g, "min"), "%s: the last grade ('%s') must have min = 0 (got %lld)",
                        PATH(member(g, "min")), name, (long long)min);
        if (add_grade(L, g, name, (int)min) < 0)
            return -1;
    }
    return 0;
}

static int parse_scoring(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"weights", "grades", NULL};
    char pathbuf[256];
    config_setting_t *g = NULL, *w = NULL;
    if (get_group(L, root, "scoring", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_group(L, g, "weights", &w) < 0)
        return -1;
    /* Any member name is a signal. */
    for (int i = 0; w != NULL && i < config_setting_length(w); i++) {
        const config_setting_t *s = config_setting_get_elem(w, i);
        if (!is_number(s) || !isfinite(number_of(s)))
            return fail(L, s, "%s: a weight must be a number", PATH(s));
        struct rules_weight *rw = rules_add_weight(L->t);
        if (rw == NULL)
            return oom(L, s);
        rw->w = number_of(s);
        if ((rw->signal = dup_str(L, s, config_setting_name(s))) == NULL)
            return -1;
    }
    return parse_grades(L, g);
}

static int parse_niche(struct loader *L, const config_setting_t *g)
{
    static const char *const keys[] = {"name", "sources", "keywords", "max_buyers", "strategy", NULL};
    static const char *const strategies[] = {"weighted", "round_robin", "nearest", "least_loaded", NULL};
    char pathbuf[256];
    const char *name;
    config_setting_t *sources = NULL, *keywords = NULL;
    int64_t max_buyers = 1;
    int strategy = STRAT_WEIGHTED;
    L->ctx_kind = NULL;
    if (check_keys(L, g, keys) < 0 || get_str(L, g, "name", &name) < 0)
        return -1;
    if (member(g, "name") == NULL)
        return missing(L, g, "name");
    if (!valid_word(name, 1, 64, "_.-"))
        return fail(L, member(g, "name"), "%s: must be 1..64 characters of [A-Za-z0-9_.-] (got '%s')",
                    PATH(member(g, "name")), name);
    L->ctx_kind = "niche";
    L->ctx_name = name;
    if (get_strs(L, g, "sources", &sources) < 0 || get_strs(L, g, "keywords", &keywords) < 0 ||
        get_int(L, g, "max_buyers", 1, RULES_MAX_BUYERS, &max_buyers) < 0 ||
        get_enum(L, g, "strategy", strategies, "weighted, round_robin, nearest or least_loaded", &strategy) <
            0)
        return -1;
    struct rules_niche *n = rules_add_niche(L->t);
    if (n == NULL)
        return oom(L, g);
    n->max_buyers = (int)max_buyers;
    n->strategy = (enum rules_strategy)strategy;
    n->where.file = L->wfile;
    n->where.line = (int)config_setting_source_line(g);
    if ((n->name = dup_str(L, g, name)) == NULL ||
        (sources && copy_strs(L, sources, norm_lower, &n->sources, &n->n_sources) < 0) ||
        (keywords && copy_strs(L, keywords, norm_lower, &n->keywords, &n->n_keywords) < 0))
        return -1;
    L->ctx_kind = NULL;
    return 0;
}

static int parse_niches(struct loader *L, const config_setting_t *root)
{
    char pathbuf[256];
    config_setting_t *list = NULL;
    if (get_groups(L, root, "niches", &list) < 0)
        return -1;
    if (list == NULL)
        return missing(L, NULL, "niches");
    int n = config_setting_length(list);
    if (n < 1 || n > RULES_MAX_NICHES)
        return fail(L, list, "%s: must hold 1..%d niches (got %d)", PATH(list), RULES_MAX_NICHES, n);
    for (int i = 0; i < n; i++)
        if (parse_niche(L, config_setting_get_elem(list, i)) < 0)
            return -1;
    return 0;
}

static int parse_routing(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"hot_grades", "record_ttl", "max_attempts", "audit_maxlen", NULL};
    struct cfg *c = L->c;
    config_setting_t *g = NULL, *hot = NULL;
    int64_t ttl = 2592000, attempts = 3, audit = 1000000;
    if (get_group(L, root, "routing", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_strs(L, g, "hot_grades", &hot) < 0 || get_int(L, g, "record_ttl", 60, INT64_MAX, &ttl) < 0 ||
        get_int(L, g, "max_attempts", 1, 100, &attempts) < 0 ||
        get_int(L, g, "audit_maxlen", 0, INT64_MAX, &audit) < 0 || grade_mask(L, hot, &L->t->hot_grades) < 0)
        return -1;
    c->routing.record_ttl = ttl;
    c->routing.max_attempts = (int)attempts;
    c->routing.audit_maxlen = audit;
    return 0;
}

static int parse_limits(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"max_lead_bytes", NULL};
    config_setting_t *g = NULL;
    int64_t max = 65536;
    if (get_group(L, root, "limits", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_int(L, g, "max_lead_bytes", 256, 16777216, &max) < 0)
        return -1;
    L->c->limits.max_lead_bytes = (size_t)max;
    return 0;
}

static int parse_dedup(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"window", "keys", "action", NULL};
    static const char *const actions[] = {"same_dealer", "reject", "ignore", NULL};
    static const char *const key_names[] = {"phone", "email", NULL};
    char pathbuf[256];
    struct cfg *c = L->c;
    config_setting_t *g = NULL, *ks = NULL;
    int64_t window = 2592000;
    int action = DEDUP_SAME_DEALER;
    if (get_group(L, root, "dedup", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_int(L, g, "window", 0, INT64_MAX, &window) < 0 || get_strs(L, g, "keys", &ks) < 0 ||
        get_enum(L, g, "action", actions, "same_dealer, reject or ignore", &action) < 0)
        return -1;
    c->dedup.window = window;
    c->dedup.action = (enum cfg_dedup_action)action;
    c->dedup.phone = c->dedup.email = ks == NULL;
    for (int i = 0; ks != NULL && i < config_setting_length(ks); i++) {
        const config_setting_t *e = config_setting_get_elem(ks, i);
        const char *k = config_setting_get_string(e);
        bool *flag = NULL;
        switch (pick(k, key_names)) {
        case 0:
            flag = &c->dedup.phone;
            break;
        case 1:
            flag = &c->dedup.email;
            break;
        default:
            return fail(L, e, "%s: unknown key '%s' (expected phone or email)", PATH(ks), k);
        }
        if (*flag)
            return fail(L, e, "%s: '%s' listed twice", PATH(ks), k);
        *flag = true;
    }
    return 0;
}

/* Zips: upper-cased, spaces dropped; "503*" is a prefix, anything else an
 * exact zip. */
static int parse_zips(struct loader *L, struct rules_dealer *d, const config_setting_t *arr)
{
    char pathbuf[256];
    size_t cnt = (size_t)config_setting_length(arr);
    d->zips = calloc(cnt ? cnt : 1, sizeof *d->zips);
    d->prefixes = calloc(cnt ? cnt : 1, sizeof *d->prefixes);
    if (d->zips == NULL || d->prefixes == NULL)
        return oom(L, arr);
    for (size_t i = 0; i < cnt; i++) {
        const config_setting_t *e = config_setting_get_elem(arr, (unsigned)i);
        const char *s = config_setting_get_string(e);
        char buf[32];
        size_t n = 0;
        bool ok = true;
        for (const char *p = s; *p && ok; p++) {
            if (*p == ' ')
                continue;
            ok = n < sizeof buf - 1;
            if (ok)
                buf[n++] = (char)toupper((unsigned char)*p);
        }
        buf[n] = '\0';
        bool prefix = ok && n > 0 && buf[n - 1] == '*';
        if (prefix)
            buf[--n] = '\0';
        if (!ok || !valid_word(buf, 1, 16, "-")) {
            if (prefix || strchr(s, '*') != NULL)
                return fail(L, e, "%s: bad zip prefix '%s' (1..16 characters of [A-Za-z0-9-] then one '*')",
                            PATH(arr), s);
            return fail(L, e, "%s: bad zip '%s' (1..16 characters of [A-Za-z0-9-])", PATH(arr), s);
        }
        char **slot = prefix ? &d->prefixes[d->n_prefixes] : &d->zips[d->n_zips];
        if ((*slot = dup_str(L, e, buf)) == NULL)
            return -1;
        if (prefix)
            d->n_prefixes++;
        else
            d->n_zips++;
    }
    return 0;
}

static int parse_territory(struct loader *L, struct rules_dealer *d, const config_setting_t *dealer)
{
    static const char *const keys[] = {"states", "zips", "radius", NULL};
    static const char *const rkeys[] = {"lat", "lon", "km", NULL};
    config_setting_t *g = NULL, *states = NULL, *zips = NULL, *r = NULL;
    if (get_group(L, dealer, "territory", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_strs(L, g, "states", &states) < 0 || get_strs(L, g, "zips", &zips) < 0 ||
        get_group(L, g, "radius", &r) < 0)
        return -1;
    if (states != NULL && copy_strs(L, states, norm_state, &d->states, &d->n_states) < 0)
        return -1;
    if (zips != NULL && parse_zips(L, d, zips) < 0)
        return -1;
    if (r == NULL)
        return 0;
    if (check_keys(L, r, rkeys) < 0)
        return -1;
    for (int i = 0; rkeys[i] != NULL; i++)
        if (member(r, rkeys[i]) == NULL)
            return missing(L, r, rkeys[i]);
    if (get_num(L, r, "lat", -90, 90, &d->lat) < 0 || get_num(L, r, "lon", -180, 180, &d->lon) < 0 ||
        get_num(L, r, "km", 0, 5000, &d->km) < 0)
        return -1;
    if (d->km <= 0) {
        char pathbuf[256];
        return fail(L, member(r, "km"), "%s: must be > 0", PATH(member(r, "km")));
    }
    d->has_radius = true;
    return 0;
}

/* "HH:MM" -> minutes after midnight, or -1. "24:00" only when allow_24. */
static int parse_hhmm(const char *s, bool allow_24)
{
    if (strlen(s) != 5 || !isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]) || s[2] != ':' ||
        !isdigit((unsigned char)s[3]) || !isdigit((unsigned char)s[4]))
        return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (allow_24 && h == 24 && m == 0)
        return 1440;
    return h <= 23 && m <= 59 ? h * 60 + m : -1;
}

static int parse_hours(struct loader *L, struct rules_dealer *d, const config_setting_t *contract)
{
    static const char *const keys[] = {"timezone", "days", "from", "to", NULL};
    static const char *const day_names[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun", NULL};
    char pathbuf[256];
    config_setting_t *g = NULL, *days = NULL;
    const char *tz = NULL, *from = NULL, *to = NULL;
    if (get_group(L, contract, "hours", &g) < 0)
        return -1;
    if (g == NULL)
        return 0;
    if (check_keys(L, g, keys) < 0 || get_str(L, g, "timezone", &tz) < 0 ||
        get_strs(L, g, "days", &days) < 0 || get_str(L, g, "from", &from) < 0 || get_str(L, g, "to", &to) < 0)
        return -1;
    for (int i = 1; keys[i] != NULL; i++)
        if (member(g, keys[i]) == NULL)
            return missing(L, g, keys[i]);
    if (config_setting_length(days) == 0)
        return fail(L, days, "%s: must list at least one day (mon..sun)", PATH(days));
    uint8_t mask = 0;
    for (int i = 0; i < config_setting_length(days); i++) {
        const config_setting_t *e = config_setting_get_elem(days, i);
        const char *s = config_setting_get_string(e);
        char low[4] = {0};
        for (size_t k = 0; k < 3 && s[k]; k++)
            low[k] = (char)tolower((unsigned char)s[k]);
        int day = strlen(s) == 3 ? pick(low, day_names) : -1;
        if (day < 0)
            return fail(L, e, "%s: unknown day '%s' (expected mon, tue, wed, thu, fri, sat or sun)",
                        PATH(days), s);
        if (mask & (1u << day))
            return fail(L, e, "%s: day '%s' listed twice", PATH(days), s);
        mask |= (uint8_t)(1u << day);
    }
    int f = parse_hhmm(from, false), t = parse_hhmm(to, true);
    if (f < 0)
        return fail(L, member(g, "from"), "%s: bad time '%s' (expected HH:MM, 00:00..23:59)",
                    PATH(member(g, "from")), from);
    if (t < 0)
        return fail(L, member(g, "to"), "%s: bad time '%s' (expected HH:MM, 00:00..24:00)",
                    PATH(member(g, "to")), to);
    if (f == t)
        return fail(L, member(g, "to"), "%s: from and to are both '%s': the window is empty", PATH(g), from);
    if (tz != NULL && load_tz(L, member(g, "timezone"), tz, &d->tz) < 0)
        return -1;
    d->hours.set = true;
    d->hours.days = mask;
    d->hours.from = (uint16_t)f;
    d->hours.to = (uint16_t)t;
    return 0;
}

/* A filter value: a malloc'd copy for strings, owned by the filter. */
static int scalar_value(struct loader *L, const config_setting_t *s, struct lead_value *v)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        v->type = LEAD_V_INT;
        v->i = config_setting_get_int64(s);
        return 0;
    case CONFIG_TYPE_FLOAT:
        v->type = LEAD_V_FLOAT;
        v->f = config_setting_get_float(s);
        return 0;
    case CONFIG_TYPE_BOOL:
        v->type = LEAD_V_BOOL;
        v->b = config_setting_get_bool(s) != 0;
        return 0;
    case CONFIG_TYPE_STRING: {
        char *p = dup_str(L, s, config_setting_get_string(s));
        if (p == NULL)
            return -1;
        v->s.p = p;
        v->s.len = (uint32_t)strlen(p);
        v->type = LEAD_V_STR; /* only now: the table frees STR values */
        return 0;
    }
    default: {
        char pathbuf[256];
        return fail(L, s, "%s: must be a string, number or boolean", PATH(s));
    }
    }
}

static int parse_filter(struct loader *L, struct rules_filter *f, const config_setting_t *g)
{
    static const char *const keys[] = {"field", "eq", "ne", "in", "min", "max", "exists", NULL};
    static const char *const targets[] = {"source", "campaign", "country", "state", "zip", "score", NULL};
    static const enum rules_filter_target target_of[] = {FT_SOURCE, FT_CAMPAIGN, FT_COUNTRY,
                                                         FT_STATE,  FT_ZIP,      FT_SCORE};
    char pathbuf[256];
    const char *field;
    if (check_keys(L, g, keys) < 0 || get_str(L, g, "field", &field) < 0)
        return -1;
    if (member(g, "field") == NULL)
        return missing(L, g, "field");
    const config_setting_t *fs = member(g, "field");
    int ti = pick(field, targets);
    if (ti >= 0) {
        f->target = target_of[ti];
    } else if (strncmp(field, "fields.", 7) == 0 && strlen(field + 7) >= 1 && strlen(field + 7) <= 64 &&
               !has_control(field)) {
        f->target = FT_FIELD;
        if ((f->key = dup_str(L, fs, field + 7)) == NULL)
            return -1;
    } else {
        return fail(
            L, fs,
            "%s: unknown filter field '%s' (expected fields.<name>, source, campaign, country, state, "
            "zip or score)",
            PATH(fs), field);
    }
    if ((f->path = dup_str(L, fs, field)) == NULL)
        return -1;

    /* Exactly one operator. */
    const config_setting_t *op = NULL;
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *m = config_setting_get_elem(g, i);
        if (strcmp(config_setting_name(m), "field") == 0)
            continue;
        if (op != NULL)
            return fail(L, m, "filter on '%s' has both '%s' and '%s' (exactly one operator allowed)", field,
                        config_setting_name(op), config_setting_name(m));
        op = m;
    }
    if (op == NULL)
        return fail(L, g, "filter on '%s' has no operator (expected one of eq, ne, in, min, max, exists)",
                    field);

    bool numeric = f->target == FT_SCORE, text = f->target != FT_SCORE && f->target != FT_FIELD;
    const char *name = config_setting_name(op);
    f->op = (enum rules_filter_op)(pick(name, keys) - 1); /* keys[1..] follow enum rules_filter_op */
    switch (f->op) {
    case FOP_EQ:
    case FOP_NE:
    case FOP_IN: {
        bool in = f->op == FOP_IN;
        if (in && !config_setting_is_array(op) && !config_setting_is_list(op))
            return fail(L, op, "%s: must be an array [ ... ] of values", PATH(op));
        unsigned n = in ? (unsigned)config_setting_length(op) : 1;
        if (n < 1 || n > CFG_MAX_IN_VALUES)
            return fail(L, op, "%s: must hold 1..%d values (got %u)", PATH(op), CFG_MAX_IN_VALUES, n);
        if ((f->vals = calloc(n, sizeof *f->vals)) == NULL)
            return oom(L, op);
        f->n_vals = n;
        for (unsigned i = 0; i < n; i++) {
            const config_setting_t *e = in ? config_setting_get_elem(op, i) : op;
            int type = config_setting_type(e);
            if ((numeric && !is_number(e)) || (text && type != CONFIG_TYPE_STRING))
                return fail(L, e, "%s: filter on '%s' needs %s values", PATH(op), field,
                            numeric ? "numeric" : "string");
            if (scalar_value(L, e, &f->vals[i]) < 0)
                return -1;
        }
        return 0;
    }
    case FOP_MIN:
    case FOP_MAX:
        if (text)
            return fail(L, op, "%s: '%s' applies to numbers: score or fields.<name>", PATH(op), name);
        if (!is_number(op) || !isfinite(number_of(op)))
            return fail(L, op, "%s: must be a number", PATH(op));
        f->num = number_of(op);
        return 0;
    case FOP_EXISTS:
        return get_bool(L, g, "exists", &f->exists) < 0 ? -1 : 0;
    }
    return -1;
}

static int parse_contract(struct loader *L, struct rules_dealer *d, const config_setting_t *dealer)
{
    static const char *const keys[] = {"exclusive", "overflow",    "tier",    "weight", "caps", "min_score",
                                       "grades",    "max_pending", "filters", "hours",  NULL};
    static const char *const cap_keys[] = {"hour", "day", "week", "month", NULL};
    static const char *const overflows[] = {"release", "hold", NULL};
    char pathbuf[256];
    config_setting_t *g = NULL, *caps = NULL, *grades = NULL, *filters = NULL;
    int overflow = OVERFLOW_RELEASE;
    int64_t tier = 1, weight = 1, min_score = 0, max_pending = 0;
    if (get_group(L, dealer, "contract", &g) < 0 || check_keys(L, g, keys) < 0 ||
        get_bool(L, g, "exclusive", &d->exclusive) < 0 ||
        get_enum(L, g, "overflow", overflows, "release or hold", &overflow) < 0 ||
        get_int(L, g, "tier", 0, RULES_MAX_TIER, &tier) < 0 ||
        get_int(L, g, "weight", 1, RULES_MAX_WEIGHT, &weight) < 0 ||
        get_int(L, g, "min_score", 0, 100, &min_score) < 0 ||
        get_int(L, g, "max_pending", 0, UINT32_MAX, &max_pending) < 0 ||
        get_strs(L, g, "grades", &grades) < 0 || grade_mask(L, grades, &d->grades) < 0 ||
        (grades && config_setting_length(grades) == 0 &&
         fail(L, grades, "%s: accepts no grade; leave it out to accept all", PATH(grades)) < 0) ||
        get_group(L, g, "caps", &caps) < 0 || check_keys(L, caps, cap_keys) < 0 ||
        get_groups(L, g, "filters", &filters) < 0)
        return -1;
    d->overflow = (enum rules_overflow)overflow;
    d->tier = (int)tier;
    d->weight = (int)weight;
    d->min_score = (int)min_score;
    d->max_pending = (uint32_t)max_pending;
    for (int p = 0; p < PERIOD_N; p++) {
        int64_t v = 0;
        if (get_int(L, caps, cap_keys[p], 1, UINT32_MAX, &v) < 0)
            return -1;
        d->caps[p] = (uint32_t)v;
    }
    int n = filters ? config_setting_length(filters) : 0;
    if (n > CFG_MAX_FILTERS)
        return fail(L, filters, "%s: at most %d filters (got %d)", PATH(filters), CFG_MAX_FILTERS, n);
    if (n > 0 && (d->filters = calloc((size_t)n, sizeof *d->filters)) == NULL)
        return oom(L, filters);
    for (int i = 0; i < n; i++) {
        d->n_filters++; /* counted first: a half-built filter is still freed */
        if (parse_filter(L, &d->filters[i], config_setting_get_elem(filters, i)) < 0)
            return -1;
    }
    return parse_hours(L, d, g);
}

static int parse_dealer(struct loader *L, const config_setting_t *g)
{
    static const char *const keys[] = {"id", "name", "niches", "territory", "contract", NULL};
    char pathbuf[256];
    const char *id, *name = NULL;
    config_setting_t *niches = NULL;
    L->ctx_kind = NULL;
    if (check_keys(L, g, keys) < 0 || get_str(L, g, "id", &id) < 0)
        return -1;
    if (member(g, "id") == NULL)
        return missing(L, g, "id");
    if (!valid_word(id, 1, 64, "._-"))
        return fail(L, member(g, "id"), "%s: must be 1..64 characters of [A-Za-z0-9._-] (got '%s')",
                    PATH(member(g, "id")), id);
    L->ctx_kind = "dealer";
    L->ctx_name = id;
    if (get_str(L, g, "name", &name) < 0 || get_strs(L, g, "niches", &niches) < 0)
        return -1;
    if (name != NULL && (name[0] == '\0' || strlen(name) > 256 || has_control(name)))
        return fail(L, member(g, "name"), "%s: must be 1..256 printable characters", PATH(member(g, "name")));
    if (niches == NULL)
        return missing(L, g, "niches");
    int n = config_setting_length(niches);
    if (n == 0)
        return fail(L, niches, "%s: must name at least one niche", PATH(niches));

    struct rules_dealer *d = rules_add_dealer(L->t);
    if (d == NULL)
        return oom(L, g);
    d->where.file = L->wfile;
    d->where.line = (int)config_setting_source_line(g);
    d->tz = L->t->default_tz;
    if ((d->id = dup_str(L, g, id)) == NULL || (d->name = dup_str(L, g, name ? name : id)) == NULL)
        return -1;
    if ((d->niches = calloc((size_t)n, sizeof *d->niches)) == NULL)
        return oom(L, niches);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(niches, i);
        const char *s = config_setting_get_string(e);
        int ni = rules_niche_find(L->t, s, strlen(s));
        if (ni < 0)
            return fail(L, e, "unknown niche '%s'", s);
        for (uint32_t k = 0; k < d->n_niches; k++)
            if (d->niches[k] == (uint32_t)ni)
                return fail(L, e, "niche '%s' listed twice", s);
        d->niches[d->n_niches++] = (uint32_t)ni;
    }
    if (parse_territory(L, d, g) < 0 || parse_contract(L, d, g) < 0)
        return -1;
    L->ctx_kind = NULL;
    return 0;
}

/* The dealers of one file; the main file must have the setting. */
static int parse_dealers(struct loader *L, const config_setting_t *root, bool required)
{
    config_setting_t *list = NULL;
    if (get_groups(L, root, "dealers", &list) < 0)
        return -1;
    if (list == NULL)
        return required ? missing(L, NULL, "dealers") : 0;
    for (int i = 0; i < config_setting_length(list); i++)
        if (parse_dealer(L, config_setting_get_elem(list, i)) < 0)
            return -1;
    return 0;
}

static int parse_main(struct loader *L, const config_setting_t *root)
{
    static const char *const keys[] = {"redis",  "input",   "prefix", "admin", "defaults", "scoring",
                                       "niches", "routing", "limits", "dedup", "dealers",  NULL};
    if (check_keys(L, root, keys) < 0 || parse_redis(L, root) < 0 || parse_input(L, root) < 0 ||
        parse_prefix(L, root) < 0 || parse_admin(L, root) < 0 || parse_defaults(L, root) < 0 ||
        parse_scoring(L, root) < 0 || parse_niches(L, root) < 0 || parse_routing(L, root) < 0 ||
        parse_limits(L, root) < 0 || parse_dedup(L, root) < 0 || parse_dealers(L, root, true) < 0)
        return -1;
    return 0;
}

/* -------------------------------------------------------- reading files */

/* Reads the whole file into a NUL-terminated buffer. 0, or an errno value
 * (ENOTREG_: not a regular file: a FIFO would block `-t` and a reload
 * until someone writes to it, a device forever). */
#define ENOTREG_ (-1)
static int read_text(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ENOTREG_;
    }
    FILE *f = fdopen(fd, "r");
    if (f == NULL) {
        int e = errno;
        close(fd);
        return e;
    }
    size_t cap = 0, n = 0;
    char *buf = NULL;
    int rc = 0;
    for (;;) {
        if (cap - n < 4096) {
            if (cap >= CFG_MAX_FILE_BYTES) {
                rc = EFBIG;
                break;
            }
            size_t ncap = cap ? cap * 2 : 16384;
            char *nb = realloc(buf, ncap + 1);
            if (nb == NULL) {
                rc = ENOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f))
                rc = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    if (buf == NULL && (buf = malloc(1)) == NULL)
        return ENOMEM;
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Handles an @include directive at text[i] (start of a line, after blanks):
 * records the pattern (main file only) and blanks the line out so libconfig
 * never sees it. Returns the index of the line's end, or -1. */
static long include_directive(struct loader *L, char *text, size_t len, size_t i, int line, bool allow)
{
    size_t j = i + 8; /* strlen("@include") */
    size_t blanks = j;
    while (blanks < len && (text[blanks] == ' ' || text[blanks] == '\t'))
        blanks++;
    if (blanks == j || blanks >= len || text[blanks] != '"')
        return fail_line(L, line, "malformed @include (expected: @include \"PATTERN\")");
    if (!allow)
        return fail_line(L, line, "@include is not allowed in an included file");
    char *pat = malloc(CFG_MAX_PATTERN + 1);
    if (pat == NULL)
        return fail_line(L, line, "out of memory");
    size_t n = 0;
    j = blanks + 1;
    for (; j < len && text[j] != '"' && text[j] != '\n'; j++) {
        if (text[j] == '\\' && j + 1 < len && text[j + 1] != '\n')
            j++;
        if (n == CFG_MAX_PATTERN) {
            free(pat);
            return fail_line(L, line, "@include pattern too long");
        }
        pat[n++] = text[j];
    }
    pat[n] = '\0';
    if (j >= len || text[j] != '"' || n == 0) {
        free(pat);
        return fail_line(L, line, n == 0 ? "empty @include pattern" : "unterminated @include string");
    }
    /* Only blanks or a comment may follow on the line. */
    for (j++; j < len && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r'); j++)
        ;
    bool comment = j < len && (text[j] == '#' || (text[j] == '/' && j + 1 < len && text[j + 1] == '/'));
    if (j < len && text[j] != '\n' && !comment) {
        free(pat);
        return fail_line(L, line, "unexpected text after @include");
    }
    while (j < len && text[j] != '\n')
        j++;
    struct cfg_include *ni = realloc(L->inc, (L->n_inc + 1) * sizeof *ni);
    if (ni == NULL) {
        free(pat);
        return fail_line(L, line, "out of memory");
    }
    L->inc = ni;
    L->inc[L->n_inc].pattern = pat;
    L->inc[L->n_inc].line = line;
    L->n_inc++;
    memset(text + i, ' ', j - i);
    return (long)j;
}

/* An integer literal libconfig 1.5 would wrap: decimal or hex beyond 32
 * bits without the L suffix. Returns the index after the number, or -1. */
static long check_number(struct loader *L, const char *text, size_t len, size_t i, int line)
{
    size_t s = i;
    if (text[i] == '-' || text[i] == '+')
        i++;
    bool hex = text[i] == '0' && i + 1 < len && (text[i + 1] == 'x' || text[i + 1] == 'X');
    if (hex)
        for (i += 2; i < len && isxdigit((unsigned char)text[i]); i++)
            ;
    else
        while (i < len && isdigit((unsigned char)text[i]))
            i++;
    if (i < len && text[i] == 'L')
        return (long)i + 1;
    if (!hex && i < len && (text[i] == '.' || text[i] == 'e' || text[i] == 'E')) {
        /* A float: skip it. */
        if (text[i] == '.')
            for (i++; i < len && isdigit((unsigned char)text[i]); i++)
                ;
        if (i < len && (text[i] == 'e' || text[i] == 'E')) {
            i++;
            if (i < len && (text[i] == '+' || text[i] == '-'))
                i++;
            while (i < len && isdigit((unsigned char)text[i]))
                i++;
        }
        return (long)i;
    }
    char num[64];
    size_t n = i - s < sizeof num - 1 ? i - s : sizeof num - 1;
    memcpy(num, text + s, n);
    num[n] = '\0';
    errno = 0;
    long long v = strtoll(num, NULL, hex ? 16 : 10);
    bool bad =
        errno == ERANGE || i - s >= sizeof num - 1 || (hex ? v > 0x7fffffffLL : v > INT_MAX || v < INT_MIN);
    if (bad)
        return fail_line(L, line, "integer %s does not fit in 32 bits (write %sL for a 64-bit integer)", num,
                         num);
    return (long)i;
}

/* Walks text the way libconfig's scanner does (comments, strings, names,
 * numbers) to do what libconfig 1.5 will not: take out @include lines,
 * reject integers it would silently wrap, and NUL bytes it would take for
 * the end of the file. */
static int prescan(struct loader *L, char *text, size_t len, bool allow_include)
{
    const char *nul = memchr(text, '\0', len);
    if (nul != NULL) {
        int line = 1;
        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        return fail_line(L, line, "NUL byte in file");
    }
    int line = 1;
    bool bol = true; /* only blanks since the start of the line */
    size_t i = 0;
    while (i < len) {
        char ch = text[i], next = i + 1 < len ? text[i + 1] : '\0';
        long r;
        if (ch == '\n') {
            line++;
            bol = true;
            i++;
        } else if (ch == ' ' || ch == '\t') {
            i++;
        } else if (bol && ch == '@' && strncmp(text + i, "@include", 8) == 0) {
            if ((r = include_directive(L, text, len, i, line, allow_include)) < 0)
                return -1;
            i = (size_t)r;
        } else if (ch == '#' || (ch == '/' && next == '/')) {
            while (i < len && text[i] != '\n')
                i++;
        } else if (ch == '/' && next == '*') {
            for (i += 2; i < len && !(text[i] == '*' && i + 1 < len && text[i + 1] == '/'); i++)
                line += text[i] == '\n';
            i = i < len ? i + 2 : len;
            bol = false;
        } else if (ch == '"') {
            for (i++; i < len && text[i] != '"'; i++) {
                if (text[i] == '\\' && i + 1 < len)
                    i++;
                line += text[i] == '\n';
            }
            i++;
            bol = false;
        } else if (isalpha((unsigned char)ch) || ch == '*') {
            while (i < len && (isalnum((unsigned char)text[i]) || strchr("-_*", text[i]) != NULL))
                i++;
            bol = false;
        } else if (isdigit((unsigned char)ch) || ((ch == '-' || ch == '+') && isdigit((unsigned char)next))) {
            if ((r = check_number(L, text, len, i, line)) < 0)
                return -1;
            i = (size_t)r;
            bol = false;
        } else {
            i++;
            bol = false;
        }
    }
    return 0;
}

/* Reads, pre-scans and parses one file into lc; errors name L->file. */
static int parse_file(struct loader *L, config_t *lc, bool allow_include)
{
    char *text = NULL;
    size_t len = 0;
    int e = read_text(L->file, &text, &len);
    if (e == ENOTREG_)
        return fail_line(L, 0, "not a regular file (a config file must be one)");
    if (e != 0)
        return fail_line(L, 0, "cannot read: %s", strerror(e));
    int rc = -1;
    if (prescan(L, text, len, allow_include) == 0) {
        if (config_read_string(lc, text) == CONFIG_TRUE)
            rc = 0;
        else
            fail_line(L, config_error_line(lc), "%s", config_error_text(lc));
    }
    free(text);
    return rc;
}

/* One included file: nothing but dealers. */
static int load_include(struct loader *L, const char *path)
{
    const char *main_file = L->file, *main_wfile = L->wfile;
    config_t lc;
    config_init(&lc);
    L->file = path;
    int rc = -1;
    if ((L->wfile = rules_intern_file(L->t, path)) == NULL) {
        fail_line(L, 0, "out of memory");
    } else if (parse_file(L, &lc, false) == 0) {
        const config_setting_t *root = config_root_setting(&lc);
        for (int i = 0; i < config_setting_length(root); i++) {
            const config_setting_t *m = config_setting_get_elem(root, i);
            if (strcmp(config_setting_name(m), "dealers") != 0) {
                fail(L, m, "unknown setting '%s' (an included file may only hold 'dealers')",
                     config_setting_name(m));
                goto out;
            }
        }
        rc = parse_dealers(L, root, false);
    }
out:
    config_destroy(&lc);
    L->file = main_file;
    L->wfile = main_wfile;
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* dir + "/" + pattern, with dir's glob characters escaped so only the
 * pattern globs. */
static char *join_glob(const char *dir, size_t dlen, const char *pattern)
{
    char *out = malloc(dlen * 2 + strlen(pattern) + 2);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < dlen; i++) {
        if (strchr("*?[]\\", dir[i]) != NULL)
            out[o++] = '\\';
        out[o++] = dir[i];
    }
    out[o++] = '/';
    strcpy(out + o, pattern);
    return out;
}

/* Expands each @include of the main file (relative to its directory, in
 * sorted order) and appends the dealers of every file it names. */
static int load_includes(struct loader *L, const char *main_path)
{
    const char *slash = strrchr(main_path, '/');
    size_t dlen = slash ? (size_t)(slash - main_path) : 0;
    for (size_t k = 0; k < L->n_inc; k++) {
        const struct cfg_include *inc = &L->inc[k];
        bool magic = strpbrk(inc->pattern, "*?[") != NULL;
        char *full;
        if (inc->pattern[0] == '/' || slash == NULL)
            full = strdup(inc->pattern); /* no directory: relative to the cwd, like the main file */
        else if (magic)
            full = join_glob(main_path, dlen, inc->pattern);
        else if ((full = malloc(dlen + strlen(inc->pattern) + 2)) != NULL)
            sprintf(full, "%.*s/%s", (int)dlen, main_path, inc->pattern);
        if (full == NULL)
            return fail_line(L, inc->line, "out of memory");

        glob_t gl;
        memset(&gl, 0, sizeof gl);
        char *one[1] = {full};
        char **paths = one;
        size_t n = 1;
        if (magic) {
            int g = glob(full, GLOB_NOSORT, NULL, &gl);
            if (g == GLOB_NOMATCH) {
                n = 0;
            } else if (g != 0) {
                free(full);
                globfree(&gl);
                return fail_line(L, inc->line, "@include \"%s\": %s", inc->pattern,
                                 g == GLOB_NOSPACE ? "out of memory" : "cannot read the directory");
            } else {
                paths = gl.gl_pathv;
                n = gl.gl_pathc;
                qsort(paths, n, sizeof *paths, cmp_str); /* locale-independent order */
            }
        }
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            struct stat st;
            if (++L->n_included > CFG_MAX_INCLUDES)
                rc = fail_line(L, inc->line, "too many included files (at most %d)", CFG_MAX_INCLUDES);
            else if (stat(paths[i], &st) != 0)
                rc = fail_line(L, inc->line, "@include \"%s\": cannot read '%s': %s", inc->pattern, paths[i],
                               strerror(errno));
            else if (!S_ISREG(st.st_mode))
                rc = fail_line(L, inc->line, "@include \"%s\": '%s' is not a regular file", inc->pattern,
                               paths[i]);
            else
                rc = load_include(L, paths[i]);
        }
        if (magic)
            globfree(&gl);
        free(full);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ API */

void cfg_free(struct cfg *c)
{
    if (c == NULL)
        return;
    free(c->path);
    free(c->redis.host);
    free(c->redis.socket);
    free(c->redis.username);
    free(c->redis.password);
    free(c->input.group);
    free(c->prefix);
    free(c->admin.socket);
    rules_table_free(c->rules);
    free(c);
}

int cfg_load(const char *path, struct cfg **out, char *err, size_t errlen)
{
    struct loader L = {.file = path ? path : "(null)", .err = err, .errlen = errlen};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (path == NULL || out == NULL)
        return fail_line(&L, 0, "no config file given");
    config_t lc;
    config_init(&lc);
    int rc = -1;
    struct cfg *c = calloc(1, sizeof *c);
    if (c == NULL || (c->path = strdup(path)) == NULL || (c->rules = rules_table_new()) == NULL ||
        (L.wfile = rules_intern_file(c->rules, path)) == NULL) {
        fail_line(&L, 0, "out of memory");
        goto done;
    }
    L.c = c;
    L.t = c->rules;
    if (parse_file(&L, &lc, true) < 0 || parse_main(&L, config_root_setting(&lc)) < 0)
        goto done;
    L.ctx_kind = NULL;
    if (load_includes(&L, path) < 0 || rules_table_compile(c->rules, err, errlen) < 0)
        goto done;
    *out = c;
    rc = 0;
done:
    config_destroy(&lc);
    for (size_t i = 0; i < L.n_inc; i++)
        free(L.inc[i].pattern);
    free(L.inc);
    if (rc < 0)
        cfg_free(c);
    return rc;
}
