/* import.c - `leadctl import`: a CSV file of leads (SPEC section 7) ->
 * msgpack leads on the input queue.
 *
 * Each row is mapped by its header (csvmap_*), packed with msgpack-c and
 * validated by the daemon's own decoder (codec_lead_decode, the config's
 * max_lead_bytes), so a row refused here is refused for the reason the
 * daemon would give, and a row accepted here is never dead-lettered for its
 * format. Accepted rows are pipelined to Redis in windows; every reply is
 * checked. */
#include "csv.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <hiredis/hiredis.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "leadctl.h"
#include "leadrouter/codec.h"
#include "leadrouter/config.h"

/* ---- the mapping ------------------------------------------------------ */

enum tgt_kind {
    TK_DROP,
    TK_STR,      /* a lead key holding a string: id, niche, source... */
    TK_INT,      /* score */
    TK_CREATED,  /* created_at: unix ms, or a UTC date */
    TK_FLOAT,    /* lat, lon */
    TK_KEYWORDS, /* split on '|' */
    TK_CONTACT,  /* contact.<key>, a string */
    TK_FIELD,    /* fields.<key>, typed */
    TK_SIGNAL,   /* signals.<key>, a number */
};

struct csvmap_col {
    enum tgt_kind kind;
    char *key; /* the key in the lead or in its map (owned; NULL for TK_DROP) */
    size_t key_len;
    char *label; /* the target as text: "id", "contact.phone", "-" (owned) */
    char *name;  /* the header's name, trimmed (owned) */
};

struct csvmap {
    size_t n;
    struct csvmap_col *cols; /* (owned) */
    /* Built by csvmap_new for csvmap_pack: the columns of each kind, in
     * order, and room for one row's trimmed values. */
    size_t *by_kind;               /* column indexes grouped by kind (owned) */
    size_t kind_at[TK_SIGNAL + 2]; /* kind k's columns: by_kind[kind_at[k] .. kind_at[k + 1]) */
    struct csv_field *vals;        /* (owned) */
};

static const struct {
    const char *name;
    enum tgt_kind kind;
} lead_keys[] = {
    {"id", TK_STR},       {"niche", TK_STR},          {"source", TK_STR},
    {"campaign", TK_STR}, {"score", TK_INT},          {"state", TK_STR},
    {"zip", TK_STR},      {"country", TK_STR},        {"lat", TK_FLOAT},
    {"lon", TK_FLOAT},    {"created_at", TK_CREATED}, {"keywords", TK_KEYWORDS},
};
static const char *const contact_keys[] = {"name", "first_name", "last_name", "phone", "email", "address"};

#define MAP_KEY_MAX 64 /* the decoder's limit on fields and signals keys */

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s[0..*len) without surrounding blanks. */
static const char *trim(const char *s, size_t *len)
{
    size_t n = *len;
    while (n && is_blank(*s))
        s++, n--;
    while (n && is_blank(s[n - 1]))
        n--;
    *len = n;
    return s;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* The name as matched against known keys: lower case, ' ' and '-' as '_'. */
static void normalize(const char *s, char *out, size_t outlen)
{
    size_t i = 0;
    for (; s[i] && i + 1 < outlen; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        else if (c == ' ' || c == '-')
            c = '_';
        out[i] = c;
    }
    out[i] = 0;
}

/* Sets col to the target named t ("id", "contact.x", "-"...), where t comes
 * from the header itself (header = true: unknown names go to fields) or from
 * --map (an unknown name is an error). */
static int set_target(struct csvmap_col *col, const char *t, bool header, char *err, size_t errlen)
{
    free(col->key);
    free(col->label);
    col->key = col->label = NULL;
    col->kind = TK_DROP;

    static const struct {
        const char *prefix;
        enum tgt_kind kind;
    } prefixes[] = {
        {"contact.", TK_CONTACT}, {"fields.", TK_FIELD}, {"signals.", TK_SIGNAL}, {"assignment.", TK_DROP}};
    const char *key = NULL;
    const char *group = NULL;

    if (strcmp(t, "-") == 0) {
        col->label = strdup("-");
        return col->label ? 0 : fail(err, errlen, "out of memory");
    }
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t pl = strlen(prefixes[i].prefix);
        if (strncasecmp(t, prefixes[i].prefix, pl) == 0) {
            key = t + pl;
            col->kind = prefixes[i].kind;
            group = prefixes[i].prefix;
            break;
        }
    }
    if (key) {
        if (col->kind == TK_DROP) { /* export's assignment.* columns */
            col->label = strdup("-");
            return col->label ? 0 : fail(err, errlen, "out of memory");
        }
        if (*key == 0)
            return fail(err, errlen, "'%s' names no key after the '.'", t);
        if (col->kind != TK_CONTACT && strlen(key) > MAP_KEY_MAX)
            return fail(err, errlen, "'%s': a %.*s key is at most %d bytes", t, (int)strlen(group) - 1, group,
                        MAP_KEY_MAX);
    } else {
        char norm[80];
        normalize(t, norm, sizeof norm);
        for (size_t i = 0; i < sizeof lead_keys / sizeof lead_keys[0] && !key; i++)
            if (strcmp(norm, lead_keys[i].name) == 0) {
                key = lead_keys[i].name;
                col->kind = lead_keys[i].kind;
            }
        for (size_t i = 0; i < sizeof contact_keys / sizeof contact_keys[0] && !key; i++)
            if (strcmp(norm, contact_keys[i]) == 0) {
                key = contact_keys[i];
                col->kind = TK_CONTACT;
                group = "contact.";
            }
        if (!key && !header)
            return fail(
                err, errlen,
                "unknown target '%s': use a lead key (id, niche, source, campaign, score, state, zip, "
                "country, lat, lon, created_at, keywords), contact.NAME, fields.NAME, signals.NAME or -",
                t);
        if (!key) {
            if (strlen(t) > MAP_KEY_MAX)
                return fail(err, errlen,
                            "column '%.40s...' would be a fields key of more than %d bytes: map it with "
                            "--map COLUMN=fields.SHORTER (or COLUMN=-)",
                            t, MAP_KEY_MAX);
            key = t;
            col->kind = TK_FIELD;
            group = "fields.";
        }
    }
    col->key = strdup(key);
    col->key_len = strlen(key);
    size_t ll = (group ? strlen(group) : 0) + strlen(key) + 1;
    col->label = malloc(ll);
    if (!col->key || !col->label)
        return fail(err, errlen, "out of memory");
    snprintf(col->label, ll, "%s%s", group ? group : "", key);
    return 0;
}

void csvmap_free(struct csvmap *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->cols[i].key);
        free(m->cols[i].label);
        free(m->cols[i].name);
    }
    free(m->cols);
    free(m->by_kind);
    free(m->vals);
    free(m);
}

size_t csvmap_columns(const struct csvmap *m)
{
    return m->n;
}

const char *csvmap_target(const struct csvmap *m, size_t i)
{
    return i < m->n ? m->cols[i].label : NULL;
}

/* The column named name: exact first, then ignoring case. -1 if none. */
static long find_column(const struct csvmap *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->cols[i].name, name) == 0)
            return (long)i;
    for (size_t i = 0; i < m->n; i++)
        if (strcasecmp(m->cols[i].name, name) == 0)
            return (long)i;
    return -1;
}

/* Applies one --map argument: "COL=TARGET[,COL=TARGET...]". */
static int apply_spec(struct csvmap *m, const char *spec, char *err, size_t errlen)
{
    char *copy = strdup(spec);
    if (!copy)
        return fail(err, errlen, "out of memory");
    int rc = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item && rc == 0; item = strtok_r(NULL, ",", &save)) {
        char *eq = strrchr(item, '=');
        if (!eq) {
            rc = fail(err, errlen, "--map '%s': expected COLUMN=TARGET", item);
            break;
        }
        *eq = 0;
        size_t cl = strlen(item), tl = strlen(eq + 1);
        const char *col = trim(item, &cl), *tgt = trim(eq + 1, &tl);
        char *colz = dup_n(col, cl), *tgtz = dup_n(tgt, tl);
        if (!colz || !tgtz) {
            rc = fail(err, errlen, "out of memory");
        } else if (cl == 0 || tl == 0) {
            rc = fail(err, errlen, "--map '%s=%s': expected COLUMN=TARGET", item, eq + 1);
        } else {
            long i = find_column(m, colz);
            if (i < 0) {
                rc = fail(err, errlen, "--map %s=%s: the header has no column '%s'", colz, tgtz, colz);
            } else {
                char why[400];
                if (set_target(&m->cols[i], tgtz, false, why, sizeof why) < 0)
                    rc = fail(err, errlen, "--map %s=%s: %s", colz, tgtz, why);
            }
        }
        free(colz);
        free(tgtz);
    }
    free(copy);
    return rc;
}

/* Two columns for one key would make the lead depend on column order (and
 * the decoder refuses duplicate keys anyway): refuse the header. */
static int check_targets(const struct csvmap *m, char *err, size_t errlen)
{
    bool has_id = false;
    for (size_t i = 0; i < m->n; i++) {
        const struct csvmap_col *a = &m->cols[i];
        if (a->kind == TK_DROP)
            continue;
        has_id |= strcmp(a->label, "id") == 0;
        for (size_t j = 0; j < i; j++)
            if (m->cols[j].kind != TK_DROP && strcmp(m->cols[j].label, a->label) == 0)
                return fail(err, errlen, "columns %zu ('%s') and %zu ('%s') both map to %s", j + 1,
                            m->cols[j].name, i + 1, a->name, a->label);
    }
    if (!has_id)
        return fail(err, errlen, "no column maps to id (name one with --map COLUMN=id)");
    return 0;
}

int csvmap_new(const struct csv_field *hdr, size_t n, const char *const *specs, size_t n_specs,
               struct csvmap **out, FILE *warn, char *err, size_t errlen)
{
    *out = NULL;
    struct csvmap *m = calloc(1, sizeof *m);
    if (!m || !(m->cols = calloc(n ? n : 1, sizeof *m->cols))) {
        free(m);
        return fail(err, errlen, "out of memory");
    }
    m->n = n;
    for (size_t i = 0; i < n; i++) {
        size_t len = hdr[i].len;
        const char *s = trim(hdr[i].p, &len);
        m->cols[i].name = dup_n(s, len);
        if (!m->cols[i].name) {
            csvmap_free(m);
            return fail(err, errlen, "out of memory");
        }
        if (len == 0) {
            /* Excel leaves unnamed columns after the data: nothing to map. */
            if (warn)
                fprintf(warn, "leadctl: note: column %zu has no name in the header: ignored\n", i + 1);
            m->cols[i].label = strdup("-");
            if (!m->cols[i].label) {
                csvmap_free(m);
                return fail(err, errlen, "out of memory");
            }
            continue;
        }
        char why[400];
        if (set_target(&m->cols[i], m->cols[i].name, true, why, sizeof why) < 0) {
            fail(err, errlen, "column %zu: %s", i + 1, why);
            csvmap_free(m);
            return -1;
        }
    }
    for (size_t k = 0; k < n_specs; k++)
        if (apply_spec(m, specs[k], err, errlen) < 0) {
            csvmap_free(m);
            return -1;
        }
    if (check_targets(m, err, errlen) < 0) {
        csvmap_free(m);
        return -1;
    }
    m->by_kind = calloc(n ? n : 1, sizeof *m->by_kind);
    m->vals = calloc(n ? n : 1, sizeof *m->vals);
    if (!m->by_kind || !m->vals) {
        csvmap_free(m);
        return fail(err, errlen, "out of memory");
    }
    size_t at = 0;
    for (int k = 0; k <= TK_SIGNAL; k++) {
        m->kind_at[k] = at;
        for (size_t i = 0; i < n; i++)
            if (m->cols[i].kind == (enum tgt_kind)k)
                m->by_kind[at++] = i;
    }
    m->kind_at[TK_SIGNAL + 1] = at;
    *out = m;
    return 0;
}

/* ---- typing of values -------------------------------------------------- */

/* An integer: -?[0-9]+ within int64. With strict, no leading zero (so zip
 * codes and account numbers such as 02134 stay strings). */
static bool parse_int(const char *s, size_t n, bool strict, int64_t *v)
{
    size_t i = 0;
    bool neg = n > 0 && s[0] == '-';
    i += neg;
    if (i == n)
        return false;
    if (strict && s[i] == '0' && n - i > 1)
        return false;
    uint64_t acc = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (acc > (lim - d) / 10)
            return false;
        acc = acc * 10 + d;
    }
    *v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return true;
}

/* Moves *i past a run of digits; false if there is none. */
static bool skip_digits(const char *s, size_t n, size_t *i)
{
    size_t d0 = *i;
    while (*i < n && s[*i] >= '0' && s[*i] <= '9')
        (*i)++;
    return *i > d0;
}

/* A decimal number: -?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)? and finite. Not
 * inf, nan, hex or a bare ".5": those are text in a spreadsheet. */

static bool parse_float(const char *s, size_t n, double *v)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (!skip_digits(s, n, &i))
        return false;
    if (i < n && s[i] == '.') {
        i++;
        if (!skip_digits(s, n, &i))
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (!skip_digits(s, n, &i))
            return false;
    }
    if (i != n || n > 64)
        return false;
    char tmp[72];
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    double d = strtod(tmp, &end);
    if (end != tmp + n || !isfinite(d))
        return false;
    *v = d;
    return true;
}

static bool digits(const char *s, int n, int *v)
{
    int acc = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        acc = acc * 10 + (s[i] - '0');
    }
    *v = acc;
    return true;
}

/* A UTC date "YYYY-MM-DD", optionally followed by ' ' or 'T', "HH:MM",
 * ":SS", ".fraction" (ignored) and 'Z'. Unix ms in *ms. */
static bool parse_date(const char *s, size_t n, int64_t *ms)
{
    int y, mo, d, h = 0, mi = 0, se = 0;
    if (n < 10 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return false;
    size_t i = 10;
    if (i < n && (s[i] == ' ' || s[i] == 'T')) {
        if (n - i < 6 || !digits(s + i + 1, 2, &h) || s[i + 3] != ':' || !digits(s + i + 4, 2, &mi))
            return false;
        i += 6;
        if (i < n && s[i] == ':') {
            if (n - i < 3 || !digits(s + i + 1, 2, &se))
                return false;
            i += 3;
            if (i < n && s[i] == '.') {
                size_t f0 = ++i;
                while (i < n && s[i] >= '0' && s[i] <= '9')
                    i++;
                if (i == f0)
                    return false;
            }
        }
    }
    if (i < n && s[i] == 'Z')
        i++;
    if (i != n || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60)
        return false;
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = se};
    time_t t = timegm(&tm);
    /* timegm normalizes 31 February into March: refuse what moved. */
    if (t == (time_t)-1 || tm.tm_mday != d || tm.tm_mon != mo - 1)
        return false;
    *ms = (int64_t)t * 1000;
    return true;
}

/* ---- packing ----------------------------------------------------------- */

static int pk_str(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str(pk, n) | msgpack_pack_str_body(pk, s, n);
}

/* The keywords of one cell: its '|'-separated parts, trimmed, non-empty. */
static size_t count_keywords(const char *s, size_t n)
{
    size_t k = 0, from = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '|')
            continue;
        size_t len = i - from;
        trim(s + from, &len);
        k += len > 0;
        from = i + 1;
    }
    return k;
}

static int pack_keywords(msgpack_packer *pk, const char *s, size_t n, size_t k)
{
    int rc = msgpack_pack_array(pk, k);
    size_t from = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '|')
            continue;
        size_t len = i - from;
        const char *w = trim(s + from, &len);
        if (len)
            rc |= pk_str(pk, w, len);
        from = i + 1;
    }
    return rc;
}

/* A fields value, typed: bool, int, float, else string. */
static int pack_typed(msgpack_packer *pk, const char *s, size_t n)
{
    int64_t i;
    double d;
    if (n == 4 && strncasecmp(s, "true", 4) == 0)
        return msgpack_pack_true(pk);
    if (n == 5 && strncasecmp(s, "false", 5) == 0)
        return msgpack_pack_false(pk);
    if (parse_int(s, n, true, &i))
        return msgpack_pack_int64(pk, i);
    size_t z = n > 0 && s[0] == '-';
    bool lead_zero = n > z + 1 && s[z] == '0' && s[z + 1] >= '0' && s[z + 1] <= '9';
    /* digits only, but past int64: an account number, not a float */
    bool all_digits = n > z;
    for (size_t k = z; k < n && all_digits; k++)
        all_digits = s[k] >= '0' && s[k] <= '9';
    if (!lead_zero && !all_digits && parse_float(s, n, &d))
        return msgpack_pack_double(pk, d);
    return pk_str(pk, s, n);
}

/* A number (signals, lat, lon): as given, int or float; text otherwise, for
 * the decoder to refuse with bad_type. */
static int pack_number(msgpack_packer *pk, const char *s, size_t n, bool as_float)
{
    int64_t i;
    double d;
    if (!as_float && parse_int(s, n, false, &i))
        return msgpack_pack_int64(pk, i);
    if (parse_float(s, n, &d))
        return msgpack_pack_double(pk, d);
    return pk_str(pk, s, n);
}

static int pack_value(msgpack_packer *pk, const struct csvmap_col *c, const char *s, size_t n)
{
    int64_t i;
    switch (c->kind) {
    case TK_INT:
        return pack_number(pk, s, n, false);
    case TK_CREATED:
        if (parse_date(s, n, &i))
            return msgpack_pack_int64(pk, i);
        return pack_number(pk, s, n, false);
    case TK_FLOAT:
        return pack_number(pk, s, n, true);
    case TK_SIGNAL:
        return pack_number(pk, s, n, false);
    case TK_FIELD:
        return pack_typed(pk, s, n);
    default:
        return pk_str(pk, s, n);
    }
}

/* Packs the values of one map (contact, fields or signals). */
static int pack_group(msgpack_packer *pk, const struct csvmap *m, enum tgt_kind kind, size_t count)
{
    int rc = msgpack_pack_map(pk, count);
    for (size_t k = m->kind_at[kind]; k < m->kind_at[kind + 1]; k++) {
        size_t c = m->by_kind[k];
        const struct csv_field *v = &m->vals[c];
        if (v->len == 0)
            continue;
        rc |= pk_str(pk, m->cols[c].key, m->cols[c].key_len);
        rc |= pack_value(pk, &m->cols[c], v->p, v->len);
    }
    return rc;
}

/* Non-empty values among the columns of a kind. */
static size_t count_kind(const struct csvmap *m, enum tgt_kind kind)
{
    size_t k = 0;
    for (size_t i = m->kind_at[kind]; i < m->kind_at[kind + 1]; i++)
        k += m->vals[m->by_kind[i]].len > 0;
    return k;
}

int csvmap_pack(const struct csvmap *m, const struct csv_field *row, size_t n, struct msgpack_sbuffer *sb)
{
    msgpack_sbuffer_clear(sb);
    bool any = false;
    for (size_t c = 0; c < m->n; c++) {
        size_t len = c < n ? row[c].len : 0;
        const char *v = c < n ? trim(row[c].p, &len) : "";
        m->vals[c].p = v;
        m->vals[c].len = len;
        any |= len > 0;
    }
    if (!any)
        return 0;
    static const enum tgt_kind plain[] = {TK_STR, TK_INT, TK_CREATED, TK_FLOAT};
    size_t top = 0, n_kw = 0, kw_col = 0;
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        top += count_kind(m, plain[i]);
    if (m->kind_at[TK_KEYWORDS] < m->kind_at[TK_KEYWORDS + 1]) {
        kw_col = m->by_kind[m->kind_at[TK_KEYWORDS]]; /* one at most: check_targets */
        n_kw = count_keywords(m->vals[kw_col].p, m->vals[kw_col].len);
    }
    size_t n_contact = count_kind(m, TK_CONTACT), n_fields = count_kind(m, TK_FIELD),
           n_signals = count_kind(m, TK_SIGNAL);
    top += (n_contact > 0) + (n_fields > 0) + (n_signals > 0) + (n_kw > 0);

    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, top);
    /* the lead's own keys in column order */
    for (size_t c = 0; c < m->n; c++) {
        const struct csvmap_col *col = &m->cols[c];
        if (col->kind != TK_STR && col->kind != TK_INT && col->kind != TK_CREATED && col->kind != TK_FLOAT)
            continue;
        if (m->vals[c].len == 0)
            continue;
        rc |= pk_str(&pk, col->key, col->key_len);
        rc |= pack_value(&pk, col, m->vals[c].p, m->vals[c].len);
    }
    if (n_kw) {
        rc |= pk_str(&pk, "keywords", 8);
        rc |= pack_keywords(&pk, m->vals[kw_col].p, m->vals[kw_col].len, n_kw);
    }
    if (n_contact) {
        rc |= pk_str(&pk, "contact", 7);
        rc |= pack_group(&pk, m, TK_CONTACT, n_contact);
    }
    if (n_fields) {
        rc |= pk_str(&pk, "fields", 6);
        rc |= pack_group(&pk, m, TK_FIELD, n_fields);
    }
    if (n_signals) {
        rc |= pk_str(&pk, "signals", 7);
        rc |= pack_group(&pk, m, TK_SIGNAL, n_signals);
    }
    return rc ? -1 : 1;
}

/* ---- the command -------------------------------------------------------- */

/* Leads are sent in windows; the replies of a window are read once the
 * next window has been sent, so Redis works on one window while this
 * process packs the next (two windows in flight at most). Big enough that
 * the round trip is paid once per window, small enough to bound the memory
 * on both sides. */
#define IMPORT_WINDOW 2000

struct import {
    const char *name; /* the file as messages name it */
    bool dry;         /* --dry-run */
    redisContext *rc; /* (owned) NULL in a dry run */
    char key[64];     /* <p>:in */
    bool list_mode;
    char *head; /* the command up to the payload's length, RESP (owned) */
    size_t head_len;
    char *cmd; /* one command being formatted (owned) */
    size_t cmd_cap;
    long lines[2][IMPORT_WINDOW]; /* first line of each lead of both windows */
    size_t count[2];              /* leads in each window */
    int cur;                      /* the window being filled */
    bool prev_sent;               /* the other window is sent, its replies unread */
    uint64_t imported, skipped;
    bool refused; /* Redis refused a lead: stop */
    /* progress */
    bool tty;
    off_t size; /* of a regular file, else 0 */
    struct timespec t0, last;
    bool shown; /* a progress line is on screen */
};

static const char import_usage[] =
    "usage: leadctl import FILE.csv|- [--map COL=TARGET[,COL=TARGET...]] [--dry-run] [--sep ,|;|tab]\n"
    "  Enqueues one lead per CSV row (header row first). TARGET: a lead key (id, niche, source,\n"
    "  campaign, score, state, zip, country, lat, lon, created_at, keywords), contact.NAME,\n"
    "  fields.NAME, signals.NAME, or - to drop the column. Bad rows are reported as FILE:LINE: reason\n"
    "  and skipped; exit 0 only if no row was skipped (1 otherwise, 2 if Redis is unreachable).\n";

/* Leads sent whose replies are not read yet. */
static size_t in_flight(const struct import *im)
{
    return im->count[im->cur] + (im->prev_sent ? im->count[!im->cur] : 0);
}

static double since(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static void clear_progress(struct import *im)
{
    if (im->shown) {
        fputs("\r\033[K", stderr);
        im->shown = false;
    }
}

/* A progress line on a terminal, for files that take more than a second. */
static void progress(struct import *im, const struct csv_reader *r)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (since(&im->t0, &now) < 1.0 || since(&im->last, &now) < 0.25)
        return;
    im->last = now;
    uint64_t done = im->imported + in_flight(im) + im->skipped;
    if (im->size > 0)
        fprintf(stderr, "\rleadctl import: %llu rows, %.0f%%, %.0f rows/s ", (unsigned long long)done,
                100.0 * (double)csv_bytes_read(r) / (double)im->size, (double)done / since(&im->t0, &now));
    else
        fprintf(stderr, "\rleadctl import: %llu rows, %.0f rows/s ", (unsigned long long)done,
                (double)done / since(&im->t0, &now));
    im->shown = true;
}

static void bad_row(struct import *im, long line, const char *why)
{
    clear_progress(im);
    fprintf(stderr, "%s:%ld: %s\n", im->name, line, why);
    im->skipped++;
}

/* Reads the replies of window w. 0, or -1 when the connection failed. */
static int read_replies(struct import *im, int w)
{
    for (size_t k = 0; k < im->count[w]; k++) {
        redisReply *r = NULL;
        if (redisGetReply(im->rc, (void **)&r) != REDIS_OK || !r) {
            clear_progress(im);
            fprintf(stderr,
                    "leadctl: lost the connection to redis (%s) after %llu leads were enqueued; the %zu sent "
                    "since (%s:%ld and after) may or may not be enqueued: importing them again gives "
                    "duplicate_id for those that were\n",
                    im->rc->errstr[0] ? im->rc->errstr : "no reply", (unsigned long long)im->imported,
                    in_flight(im) - k, im->name, im->lines[w][k]);
            return -1;
        }
        bool ok = im->list_mode ? r->type == REDIS_REPLY_INTEGER : r->type == REDIS_REPLY_STRING;
        if (ok) {
            im->imported++;
        } else {
            char why[300];
            snprintf(why, sizeof why, "redis refused the lead: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            bad_row(im, im->lines[w][k], why);
            im->refused = true;
        }
        freeReplyObject(r);
    }
    im->count[w] = 0;
    return 0;
}

/* Sends the window being filled, then reads the replies of the one before
 * (Redis meanwhile works on this one). 0, or -1 when the connection failed. */
static int send_window(struct import *im)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(im->rc, &done) != REDIS_OK) {
            clear_progress(im);
            fprintf(stderr, "leadctl: lost the connection to redis (%s) after %llu leads were enqueued\n",
                    im->rc->errstr, (unsigned long long)im->imported);
            return -1;
        }
    if (im->prev_sent && read_replies(im, !im->cur) < 0)
        return -1;
    im->prev_sent = true;
    im->cur = !im->cur;
    return 0;
}

/* At the end: every reply. */
static int drain_replies(struct import *im)
{
    if (im->prev_sent && read_replies(im, !im->cur) < 0)
        return -1;
    im->prev_sent = false;
    return read_replies(im, im->cur);
}

/* The RESP head of every command: XADD <p>:in * lead $<len>, or LPUSH. */
static int make_head(struct import *im)
{
    size_t kl = strlen(im->key), cap = kl + 64;
    if (!(im->head = malloc(cap)))
        return -1;
    int n = im->list_mode
                ? snprintf(im->head, cap, "*3\r\n$5\r\nLPUSH\r\n$%zu\r\n%s\r\n", kl, im->key)
                : snprintf(im->head, cap, "*5\r\n$4\r\nXADD\r\n$%zu\r\n%s\r\n$1\r\n*\r\n$4\r\nlead\r\n", kl,
                           im->key);
    im->head_len = (size_t)n;
    return 0;
}

/* Queues one lead (formatted here: one copy, no per-argument work). */
static int enqueue(struct import *im, const msgpack_sbuffer *sb, long line)
{
    size_t need = im->head_len + 32 + sb->size;
    if (need > im->cmd_cap) {
        char *nc = realloc(im->cmd, need);
        if (!nc) {
            clear_progress(im);
            fprintf(stderr, "leadctl: out of memory queueing %s:%ld\n", im->name, line);
            return -1;
        }
        im->cmd = nc;
        im->cmd_cap = need;
    }
    memcpy(im->cmd, im->head, im->head_len);
    size_t n = im->head_len + (size_t)snprintf(im->cmd + im->head_len, 32, "$%zu\r\n", sb->size);
    memcpy(im->cmd + n, sb->data, sb->size);
    n += sb->size;
    memcpy(im->cmd + n, "\r\n", 2);
    n += 2;
    if (redisAppendFormattedCommand(im->rc, im->cmd, n) != REDIS_OK) {
        clear_progress(im);
        fprintf(stderr, "leadctl: out of memory queueing %s:%ld\n", im->name, line);
        return -1;
    }
    im->lines[im->cur][im->count[im->cur]++] = line;
    return im->count[im->cur] == IMPORT_WINDOW ? send_window(im) : 0;
}

int lc_import(struct lc_env *e, int argc, char **argv)
{
    const char *path = NULL;
    const char **specs = calloc((size_t)argc + 1, sizeof *specs);
    size_t n_specs = 0;
    char sep = ',';
    struct import im = {.name = NULL};
    if (!specs) {
        fprintf(stderr, "leadctl: out of memory\n");
        return 70;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--dry-run") == 0) {
            im.dry = true;
        } else if (strcmp(a, "--map") == 0 || strcmp(a, "--sep") == 0) {
            if (i + 1 == argc) {
                fprintf(stderr, "leadctl import: %s needs a value\n%s", a, import_usage);
                free(specs);
                return 1;
            }
            if (a[2] == 'm') {
                specs[n_specs++] = argv[++i];
            } else if (!(sep = csv_sep_parse(argv[++i]))) {
                fprintf(stderr, "leadctl import: --sep '%s': use , or ; or tab (or |)\n", argv[i]);
                free(specs);
                return 1;
            }
        } else if (strncmp(a, "--map=", 6) == 0) {
            specs[n_specs++] = a + 6;
        } else if (strncmp(a, "--sep=", 6) == 0) {
            if (!(sep = csv_sep_parse(a + 6))) {
                fprintf(stderr, "leadctl import: --sep '%s': use , or ; or tab (or |)\n", a + 6);
                free(specs);
                return 1;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(import_usage, stdout);
            free(specs);
            return 0;
        } else if (a[0] == '-' && a[1] != 0) {
            fprintf(stderr, "leadctl import: unknown option %s\n%s", a, import_usage);
            free(specs);
            return 1;
        } else if (path) {
            fprintf(stderr, "leadctl import: one file at a time (%s, then %s)\n%s", path, a, import_usage);
            free(specs);
            return 1;
        } else {
            path = a;
        }
    }
    if (!path) {
        fprintf(stderr, "%s", import_usage);
        free(specs);
        return 1;
    }

    /* The config gives the size limit, the queue and its mode. A dry run
     * works without one (the defaults), so a file can be checked anywhere. */
    size_t max_bytes = 65536;
    const struct cfg *c = NULL;
    if (!im.dry || access(e->config_path, R_OK) == 0) {
        if (!(c = lc_config(e))) {
            free(specs);
            return 1;
        }
        max_bytes = c->limits.max_lead_bytes;
        snprintf(im.key, sizeof im.key, "%s:in", c->prefix);
        im.list_mode = c->input.mode == INPUT_LIST;
    } else {
        fprintf(stderr, "leadctl: note: no config at %s: checking with the default limits\n", e->config_path);
    }

    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    im.name = f == stdin ? "<stdin>" : path;
    if (!f) {
        fprintf(stderr, "leadctl: %s: %s\n", path, strerror(errno));
        free(specs);
        return 1;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISREG(sb.st_mode))
        im.size = sb.st_size;
    im.tty = isatty(STDERR_FILENO);

    struct csv_opts o = {.sep = sep, .check_columns = true};
    struct csv_reader *r = csv_reader_new(f, &o);
    struct codec_lead *cl = codec_lead_new();
    msgpack_sbuffer buf;
    msgpack_sbuffer_init(&buf);
    struct csvmap *m = NULL;
    int status = 0;
    char err[512];
    struct csv_record rec;
    if (!r || !cl) {
        fprintf(stderr, "leadctl: out of memory\n");
        status = 70;
        goto done;
    }

    int got = csv_next(r, &rec, err, sizeof err);
    if (got == CSV_END) {
        fprintf(stderr, "leadctl: %s: no header row (the first row names the columns)\n", im.name);
        status = 1;
        goto done;
    }
    if (got != CSV_RECORD) {
        fprintf(stderr, "%s:%ld: header: %s\n", im.name, rec.line, err);
        status = 1;
        goto done;
    }
    if (csvmap_new(rec.fields, rec.n, specs, n_specs, &m, stderr, err, sizeof err) < 0) {
        /* one column holding the others' separators: the wrong --sep */
        const char *hint = "";
        if (rec.n == 1 && sep != ';' && memchr(rec.fields[0].p, ';', rec.fields[0].len))
            hint = " (the header holds ';': is the file ;-separated? try --sep ';')";
        else if (rec.n == 1 && sep != '\t' && memchr(rec.fields[0].p, '\t', rec.fields[0].len))
            hint = " (the header holds tabs: try --sep tab)";
        fprintf(stderr, "%s:%ld: header: %s%s\n", im.name, rec.line, err, hint);
        status = 1;
        goto done;
    }
    if (!im.dry && !(im.rc = lc_redis(e))) {
        status = 2;
        goto done;
    }
    if (!im.dry && make_head(&im) < 0) {
        fprintf(stderr, "leadctl: out of memory\n");
        status = 70;
        goto done;
    }

    clock_gettime(CLOCK_MONOTONIC, &im.t0);
    im.last = im.t0;
    uint64_t rows = 0;
    while (!im.refused) {
        got = csv_next(r, &rec, err, sizeof err);
        if (got == CSV_END)
            break;
        if (got == CSV_FATAL) {
            clear_progress(&im);
            fprintf(stderr, "leadctl: %s: %s\n", im.name, err);
            status = 1;
            break;
        }
        if (im.tty && (++rows & 4095) == 0)
            progress(&im, r);
        if (got == CSV_BAD) {
            bad_row(&im, rec.line, err);
            continue;
        }
        int packed = csvmap_pack(m, rec.fields, rec.n, &buf);
        if (packed == 0)
            continue; /* a row of empty cells, as spreadsheets leave behind */
        if (packed < 0) {
            clear_progress(&im);
            fprintf(stderr, "leadctl: out of memory at %s:%ld\n", im.name, rec.line);
            status = 70;
            break;
        }
        if (codec_lead_decode(cl, buf.data, buf.size, max_bytes, err, sizeof err) != 0) {
            bad_row(&im, rec.line, err);
            continue;
        }
        if (im.dry) {
            im.imported++;
            continue;
        }
        if (enqueue(&im, &buf, rec.line) < 0) {
            status = im.rc->err ? 2 : 70;
            break;
        }
    }
    if (status == 0 || status == 1) {
        if (im.rc && drain_replies(&im) < 0)
            status = 2;
    }
    clear_progress(&im);
    if (im.refused)
        fprintf(stderr, "leadctl: stopped at the first lead redis refused\n");
    if (im.dry)
        printf("dry run: %llu valid, skipped %llu (nothing enqueued)\n", (unsigned long long)im.imported,
               (unsigned long long)im.skipped);
    else
        printf("imported %llu, skipped %llu\n", (unsigned long long)im.imported,
               (unsigned long long)im.skipped);
    if (status == 0 && (im.skipped || im.refused))
        status = 1;

done:
    if (im.rc)
        redisFree(im.rc);
    free(im.head);
    free(im.cmd);
    csvmap_free(m);
    msgpack_sbuffer_destroy(&buf);
    codec_lead_free(cl);
    csv_reader_free(r);
    if (f && f != stdin)
        fclose(f);
    free(specs);
    fflush(stdout);
    return status;
}
