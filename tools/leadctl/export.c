/* export.c - `leadctl export DEALER [--csv] [--drain]`: a dealer's queue
 * <p>:dealer:<id> (msgpack assignments, SPEC section 3) as CSV or as a
 * table.
 *
 * The CSV re-imports: the lead's own keys come out under their names,
 * keywords joined with '|', contact/fields/signals as contact.X, fields.X,
 * signals.X, values typed the way import types them back; the assignment's
 * own data follows as assignment.* columns, which import drops. The header
 * is the union of every entry's keys, so the entries are read first (raw,
 * as Redis returned them) and decoded twice: once for the columns, once to
 * write. Peek is one LRANGE (an atomic snapshot); --drain pops chunks of
 * EXPORT_CHUNK with LPOP key count (each chunk atomic), stopping after as
 * many entries as the queue held at the start so a queue that keeps filling
 * does not keep the export going; if the output cannot be written the
 * drained entries are pushed back. */
#include "csv.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <math.h>
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadctl.h"
#include "leadrouter/config.h"
#include "leadrouter/table.h"

#define EXPORT_CHUNK 1000
#define EXPORT_TABLE_WIDTH 40 /* longest value a table cell shows */

/* Assignment keys shown as assignment.* (SPEC section 3), in this order. */
static const char *const asg_keys[] = {"dealer", "routed_at", "rule", "niche", "score", "grade", "attempt"};
#define N_ASG (sizeof asg_keys / sizeof asg_keys[0])

/* The lead's known keys come first, in this order (SPEC section 2). */
static const char *const lead_order[] = {"id",      "niche", "source", "campaign", "keywords", "score",
                                         "country", "state", "zip",    "lat",      "lon",      "created_at"};
#define N_LEAD_ORDER (sizeof lead_order / sizeof lead_order[0])

/* ---- columns: an ordered set of names, hashed ------------------------- */

struct cols {
    char **names; /* in order (owned) */
    size_t n, cap;
    uint32_t *slots; /* open addressing: index + 1, 0 = empty (owned) */
    size_t n_slots;
};

static uint32_t hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

/* Index of the column named prefix+key, or -1. */
static long cols_find(const struct cols *c, const char *prefix, const char *key, size_t klen)
{
    if (!c->n_slots)
        return -1;
    size_t pl = strlen(prefix);
    char tmp[512];
    if (pl + klen >= sizeof tmp)
        return -1;
    memcpy(tmp, prefix, pl);
    memcpy(tmp + pl, key, klen);
    size_t n = pl + klen;
    for (size_t i = hash(tmp, n) & (c->n_slots - 1);; i = (i + 1) & (c->n_slots - 1)) {
        uint32_t s = c->slots[i];
        if (!s)
            return -1;
        const char *name = c->names[s - 1];
        if (strlen(name) == n && memcmp(name, tmp, n) == 0)
            return (long)(s - 1);
    }
}

static int cols_rehash(struct cols *c, size_t n_slots)
{
    uint32_t *s = calloc(n_slots, sizeof *s);
    if (!s)
        return -1;
    for (size_t k = 0; k < c->n; k++) {
        size_t i = hash(c->names[k], strlen(c->names[k])) & (n_slots - 1);
        while (s[i])
            i = (i + 1) & (n_slots - 1);
        s[i] = (uint32_t)k + 1;
    }
    free(c->slots);
    c->slots = s;
    c->n_slots = n_slots;
    return 0;
}

/* Adds prefix+key unless present. Keys too long for a column name (512)
 * are left out. Returns -1 when out of memory. */
static int cols_add(struct cols *c, const char *prefix, const char *key, size_t klen)
{
    if (cols_find(c, prefix, key, klen) >= 0 || strlen(prefix) + klen >= 512)
        return 0;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        char **nn = realloc(c->names, cap * sizeof *nn);
        if (!nn)
            return -1;
        c->names = nn;
        c->cap = cap;
    }
    size_t pl = strlen(prefix);
    char *name = malloc(pl + klen + 1);
    if (!name)
        return -1;
    memcpy(name, prefix, pl);
    memcpy(name + pl, key, klen);
    name[pl + klen] = 0;
    c->names[c->n++] = name;
    if (c->n * 2 > c->n_slots)
        return cols_rehash(c, c->n_slots ? c->n_slots * 2 : 128);
    size_t i = hash(name, pl + klen) & (c->n_slots - 1);
    while (c->slots[i])
        i = (i + 1) & (c->n_slots - 1);
    c->slots[i] = (uint32_t)c->n;
    return 0;
}

static void cols_free(struct cols *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->names[i]);
    free(c->names);
    free(c->slots);
}

/* ---- values ----------------------------------------------------------- */

/* A growable text buffer for one cell. */
struct text {
    char *p;
    size_t len, cap;
};

static int text_add(struct text *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *np = realloc(t->p, cap);
        if (!np)
            return -1;
        t->p = np;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = 0;
    return 0;
}

/* The shortest text that reads back as the same double. */
static void fmt_double(double d, char *out, size_t len)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, len, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

/* Renders a scalar (or a keywords array) as import reads it back. Returns
 * 1 when rendered, 0 when the value has no CSV form (a map, a nested
 * array, binary), -1 out of memory. */
static int render(const msgpack_object *o, bool keywords, struct text *t)
{
    char num[64];
    t->len = 0;
    if (t->p)
        t->p[0] = 0;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return text_add(t, "", 0) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_BOOLEAN:
        return text_add(t, o->via.boolean ? "true" : "false", o->via.boolean ? 4 : 5) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(num, sizeof num, "%" PRIu64, o->via.u64);
        return text_add(t, num, strlen(num)) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(num, sizeof num, "%" PRId64, o->via.i64);
        return text_add(t, num, strlen(num)) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return 0;
        fmt_double(o->via.f64, num, sizeof num);
        /* "41" would come back as an integer; keep it a float */
        if (!strpbrk(num, ".eE"))
            strcat(num, ".0");
        return text_add(t, num, strlen(num)) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_STR:
        return text_add(t, o->via.str.ptr, o->via.str.size) < 0 ? -1 : 1;
    case MSGPACK_OBJECT_ARRAY:
        if (!keywords)
            return 0;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            const msgpack_object *e = &o->via.array.ptr[i];
            if (e->type != MSGPACK_OBJECT_STR)
                return 0;
            if ((i && text_add(t, "|", 1) < 0) || text_add(t, e->via.str.ptr, e->via.str.size) < 0)
                return -1;
        }
        return 1;
    default:
        return 0;
    }
}

static bool key_is(const msgpack_object *k, const char *s)
{
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (key_is(&m->via.map.ptr[i].key, key))
            return &m->via.map.ptr[i].val;
    return NULL;
}

/* The sub-maps flattened with a prefix. */
static const char *map_prefix(const msgpack_object *k)
{
    if (key_is(k, "contact"))
        return "contact.";
    if (key_is(k, "fields"))
        return "fields.";
    if (key_is(k, "signals"))
        return "signals.";
    return NULL;
}

/* Calls fn for every column of a lead: its plain keys, and the keys of its
 * contact, fields and signals maps under their "contact." ... prefix. */
typedef void column_fn(void *ctx, const char *prefix, const char *name, size_t len, const msgpack_object *val);
static void each_column(const msgpack_object *lead, column_fn *fn, void *ctx)
{
    for (uint32_t k = 0; k < lead->via.map.size; k++) {
        const msgpack_object *key = &lead->via.map.ptr[k].key, *val = &lead->via.map.ptr[k].val;
        if (key->type != MSGPACK_OBJECT_STR)
            continue;
        const char *prefix = map_prefix(key);
        if (prefix && val->type == MSGPACK_OBJECT_MAP) {
            for (uint32_t j = 0; j < val->via.map.size; j++) {
                const msgpack_object *sk = &val->via.map.ptr[j].key;
                if (sk->type == MSGPACK_OBJECT_STR)
                    fn(ctx, prefix, sk->via.str.ptr, sk->via.str.size, &val->via.map.ptr[j].val);
            }
        } else {
            fn(ctx, "", key->via.str.ptr, key->via.str.size, val);
        }
    }
}

/* ---- the entries -------------------------------------------------------- */

struct export
{
    const char *dealer;
    char key[200]; /* <p>:dealer:<id> */
    bool csv, drain;
    char sep;
    redisContext *rc;     /* (owned) */
    redisReply **replies; /* LRANGE / LPOP replies holding the entries (owned) */
    size_t n_replies, cap_replies;
    size_t n_entries;
    msgpack_zone zone;
    struct cols cols;
    size_t n_lead_cols;       /* columns before the assignment.* ones */
    uint64_t unrepresentable; /* values left out */
    size_t malformed;
};

/* Calls fn for every entry (raw bytes) in queue order. */
#define FOR_EACH_ENTRY(x, p, len)                                                                            \
    for (size_t r_ = 0; r_ < (x)->n_replies; r_++)                                                           \
        for (size_t e_ = 0; e_ < (x)->replies[r_]->elements; e_++)                                           \
            for (const char *p = (x)->replies[r_]->element[e_]->str; p; p = NULL)                            \
                for (size_t len = (x)->replies[r_]->element[e_]->len; p; p = NULL)

static int keep_reply(struct export *x, redisReply *r)
{
    if (x->n_replies == x->cap_replies) {
        size_t cap = x->cap_replies ? x->cap_replies * 2 : 16;
        redisReply **nr = realloc(x->replies, cap * sizeof *nr);
        if (!nr)
            return -1;
        x->replies = nr;
        x->cap_replies = cap;
    }
    x->replies[x->n_replies++] = r;
    for (size_t i = 0; i < r->elements; i++)
        x->n_entries += r->element[i]->type == REDIS_REPLY_STRING;
    return 0;
}

/* Reads the queue: one LRANGE, or LPOP chunks. 0, -1 (message printed). */
static int fetch(struct export *x)
{
    if (!x->drain) {
        redisReply *r = redisCommand(x->rc, "LRANGE %s 0 -1", x->key);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "leadctl: redis LRANGE %s failed: %s\n", x->key,
                    r ? (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply") : x->rc->errstr);
            if (r)
                freeReplyObject(r);
            return -1;
        }
        return keep_reply(x, r);
    }
    redisReply *l = redisCommand(x->rc, "LLEN %s", x->key);
    if (!l || l->type != REDIS_REPLY_INTEGER) {
        fprintf(stderr, "leadctl: redis LLEN %s failed: %s\n", x->key,
                l ? (l->type == REDIS_REPLY_ERROR ? l->str : "unexpected reply") : x->rc->errstr);
        if (l)
            freeReplyObject(l);
        return -1;
    }
    long long left = l->integer;
    freeReplyObject(l);
    while (left > 0) {
        long long n = left < EXPORT_CHUNK ? left : EXPORT_CHUNK;
        redisReply *r = redisCommand(x->rc, "LPOP %s %lld", x->key, n);
        if (!r) {
            fprintf(stderr,
                    "leadctl: lost the connection to redis during LPOP (%s): up to %lld entries of %s may be "
                    "gone; %zu were read and follow\n",
                    x->rc->errstr, n, x->key, x->n_entries);
            return -2;
        }
        if (r->type == REDIS_REPLY_NIL) { /* consumed by someone else meanwhile */
            freeReplyObject(r);
            break;
        }
        if (r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "leadctl: redis LPOP %s failed: %s\n", x->key,
                    r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            freeReplyObject(r);
            return x->n_entries ? -2 : -1;
        }
        left -= (long long)r->elements;
        size_t got = r->elements;
        if (keep_reply(x, r) < 0) {
            freeReplyObject(r);
            return -2;
        }
        if (got < (size_t)n)
            break;
    }
    return 0;
}

/* Unpacks one entry into the zone (cleared). NULL if it is not a map with a
 * `lead` map. */
static const msgpack_object *unpack(struct export *x, const char *p, size_t len, msgpack_object *root)
{
    msgpack_zone_clear(&x->zone);
    size_t off = 0;
    if (msgpack_unpack(p, len, &off, &x->zone, root) != MSGPACK_UNPACK_SUCCESS || off != len ||
        root->type != MSGPACK_OBJECT_MAP)
        return NULL;
    const msgpack_object *lead = map_get(root, "lead");
    return lead && lead->type == MSGPACK_OBJECT_MAP ? lead : NULL;
}

struct found_ctx {
    struct cols *found;
    int rc;
};

static void add_found(void *ctx, const char *prefix, const char *name, size_t len, const msgpack_object *val)
{
    (void)val;
    struct found_ctx *fc = ctx;
    fc->rc |= cols_add(fc->found, prefix, name, len);
}

/* Pass 1: the columns of every entry's lead, in a stable order: the known
 * lead keys first, then other keys as first seen, then the assignment's. */
static int collect(struct export *x)
{
    struct cols seen = {0};
    int rc = 0;
    for (size_t i = 0; i < N_LEAD_ORDER; i++)
        rc |= cols_add(&seen, "", lead_order[i], strlen(lead_order[i]));
    /* what appears, in order */
    struct cols found = {0};
    FOR_EACH_ENTRY(x, p, len)
    {
        msgpack_object root;
        const msgpack_object *lead = unpack(x, p, len, &root);
        if (!lead) {
            x->malformed++;
            continue;
        }
        struct found_ctx fc = {&found, 0};
        each_column(lead, add_found, &fc);
        rc |= fc.rc;
    }
    /* known keys that appear, in SPEC order; then the rest as found,
     * plain keys before contact, fields, signals */
    for (size_t i = 0; i < N_LEAD_ORDER; i++)
        if (cols_find(&found, "", lead_order[i], strlen(lead_order[i])) >= 0)
            rc |= cols_add(&x->cols, "", lead_order[i], strlen(lead_order[i]));
    static const char *const groups[] = {"", "contact.", "fields.", "signals."};
    for (size_t g = 0; g < 4; g++)
        for (size_t i = 0; i < found.n; i++) {
            const char *name = found.names[i];
            bool in_group = g == 0 ? !(strncmp(name, "contact.", 8) == 0 ||
                                       strncmp(name, "fields.", 7) == 0 || strncmp(name, "signals.", 8) == 0)
                                   : strncmp(name, groups[g], strlen(groups[g])) == 0;
            if (in_group && cols_find(&seen, "", name, strlen(name)) < 0)
                rc |= cols_add(&x->cols, "", name, strlen(name));
        }
    x->n_lead_cols = x->cols.n;
    for (size_t i = 0; i < N_ASG; i++)
        rc |= cols_add(&x->cols, "assignment.", asg_keys[i], strlen(asg_keys[i]));
    cols_free(&seen);
    cols_free(&found);
    return rc ? -1 : 0;
}

/* Unix ms as ISO 8601 UTC. */
static void fmt_ms(int64_t ms, char *out, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (ms < 0 || !gmtime_r(&s, &tm)) {
        snprintf(out, len, "%" PRId64, ms);
        return;
    }
    snprintf(out, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* The cells of one entry: cell[i] = the value of column i, or NULL. */
struct place_ctx {
    const struct export *x;
    const msgpack_object **cell;
};

static void put_cell(void *ctx, const char *prefix, const char *name, size_t len, const msgpack_object *val)
{
    struct place_ctx *pc = ctx;
    long c = cols_find(&pc->x->cols, prefix, name, len);
    if (c >= 0 && (size_t)c < pc->x->n_lead_cols)
        pc->cell[c] = val;
}

static void place(struct export *x, const msgpack_object *root, const msgpack_object *lead,
                  const msgpack_object **cell)
{
    for (size_t i = 0; i < x->cols.n; i++)
        cell[i] = NULL;
    each_column(lead, put_cell, &(struct place_ctx){x, cell});
    for (size_t i = 0; i < N_ASG; i++)
        cell[x->n_lead_cols + i] = map_get(root, asg_keys[i]);
}

/* The text of a cell; routed_at as a UTC time. */
static int cell_text(struct export *x, size_t col, const msgpack_object *v, struct text *t)
{
    t->len = 0;
    if (text_add(t, "", 0) < 0)
        return -1;
    if (!v)
        return 0;
    if (col == x->n_lead_cols + 1 && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        char ts[64];
        fmt_ms((int64_t)v->via.u64, ts, sizeof ts);
        return text_add(t, ts, strlen(ts));
    }
    int r = render(v, strcmp(x->cols.names[col], "keywords") == 0, t);
    if (r < 0)
        return -1;
    if (r == 0) {
        x->unrepresentable++;
        t->len = 0;
        t->p[0] = 0;
    }
    return 0;
}

static int write_csv(struct export *x, FILE *out)
{
    for (size_t i = 0; i < x->cols.n; i++) {
        if (i && putc(x->sep, out) == EOF)
            return -1;
        if (csv_write_field(out, x->cols.names[i], strlen(x->cols.names[i]), x->sep) < 0)
            return -1;
    }
    if (fputs("\r\n", out) == EOF)
        return -1;
    const msgpack_object **cell = calloc(x->cols.n, sizeof *cell);
    struct text t = {0};
    int rc = cell ? 0 : -1;
    FOR_EACH_ENTRY(x, p, len)
    {
        msgpack_object root;
        const msgpack_object *lead = rc == 0 ? unpack(x, p, len, &root) : NULL;
        if (!lead)
            continue;
        place(x, &root, lead, cell);
        for (size_t i = 0; i < x->cols.n && rc == 0; i++) {
            if (cell_text(x, i, cell[i], &t) < 0 || (i && putc(x->sep, out) == EOF) ||
                csv_write_field(out, t.p, t.len, x->sep) < 0)
                rc = -1;
        }
        if (rc == 0 && fputs("\r\n", out) == EOF)
            rc = -1;
    }
    free(t.p);
    free(cell);
    return rc;
}

/* The human view: one aligned row per assignment, no contact data (that is
 * what --csv is for). */
static int write_table(struct export *x, FILE *out)
{
    static const char *const heads[] = {"ROUTED_AT (UTC)", "LEAD",  "NICHE", "SCORE", "GRADE", "RULE", "TRY",
                                        "SOURCE",          "STATE", "ZIP"};
    enum { NC = sizeof heads / sizeof heads[0] };
    size_t width[NC];
    for (size_t i = 0; i < NC; i++)
        width[i] = strlen(heads[i]);
    struct text t = {0};
    char cells[NC][EXPORT_TABLE_WIDTH + 1];
    int rc = 0;
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        if (pass == 1) {
            for (size_t i = 0; i < NC; i++)
                fprintf(out, "%-*s%s", i + 1 < NC ? (int)width[i] : 0, heads[i], i + 1 < NC ? "  " : "\n");
        }
        FOR_EACH_ENTRY(x, p, len)
        {
            msgpack_object root;
            const msgpack_object *lead = unpack(x, p, len, &root);
            if (!lead)
                continue;
            const msgpack_object *v[NC] = {map_get(&root, "routed_at"), map_get(&root, "lead_id"),
                                           map_get(&root, "niche"),     map_get(&root, "score"),
                                           map_get(&root, "grade"),     map_get(&root, "rule"),
                                           map_get(&root, "attempt"),   map_get(lead, "source"),
                                           map_get(lead, "state"),      map_get(lead, "zip")};
            for (size_t i = 0; i < NC; i++) {
                cells[i][0] = 0;
                if (!v[i])
                    continue;
                if (i == 0 && v[i]->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
                    char ts[64];
                    fmt_ms((int64_t)v[i]->via.u64, ts, sizeof ts);
                    ts[19] = 0; /* seconds are enough here */
                    ts[10] = ' ';
                    snprintf(cells[i], sizeof cells[i], "%.19s", ts);
                    continue;
                }
                int r = render(v[i], false, &t);
                if (r < 0) {
                    rc = -1;
                    break;
                }
                if (r > 0)
                    snprintf(cells[i], sizeof cells[i], "%.*s",
                             (int)(t.len < EXPORT_TABLE_WIDTH ? t.len : EXPORT_TABLE_WIDTH), t.p);
                /* control characters would break the table */
                for (char *c = cells[i]; *c; c++)
                    if ((unsigned char)*c < 0x20)
                        *c = ' ';
            }
            for (size_t i = 0; i < NC; i++) {
                size_t w = strlen(cells[i]);
                if (pass == 0 && w > width[i])
                    width[i] = w;
                if (pass == 1)
                    fprintf(out, "%-*s%s", i + 1 < NC ? (int)width[i] : 0, cells[i][0] ? cells[i] : "-",
                            i + 1 < NC ? "  " : "\n");
            }
        }
    }
    free(t.p);
    return rc == 0 && !ferror(out) ? 0 : -1;
}

/* After a failed write: the drained entries go back to the head of the
 * queue in their order. */
static void push_back(struct export *x)
{
    size_t n = 0;
    for (size_t r = x->n_replies; r-- > 0;)
        for (size_t e = x->replies[r]->elements; e-- > 0;) {
            const redisReply *el = x->replies[r]->element[e];
            redisReply *ok = redisCommand(x->rc, "LPUSH %s %b", x->key, el->str, el->len);
            n += ok && ok->type == REDIS_REPLY_INTEGER;
            if (ok)
                freeReplyObject(ok);
        }
    fprintf(stderr,
            "leadctl: the output could not be written: %zu of %zu drained entries were pushed back to %s\n",
            n, x->n_entries, x->key);
}

static const char export_usage[] =
    "usage: leadctl export DEALER [--csv] [--drain] [--sep ,|;|tab]\n"
    "  Lists the dealer's queue (a table; --csv: every column, re-importable).\n"
    "  --drain removes what it lists from the queue.\n";

static bool dealer_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

int lc_export(struct lc_env *e, int argc, char **argv)
{
    struct export x = {.sep = ','};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--csv") == 0) {
            x.csv = true;
        } else if (strcmp(a, "--drain") == 0) {
            x.drain = true;
        } else if (strcmp(a, "--sep") == 0 || strncmp(a, "--sep=", 6) == 0) {
            const char *v = a[5] == '=' ? a + 6 : i + 1 < argc ? argv[++i] : NULL;
            if (!(x.sep = csv_sep_parse(v))) {
                fprintf(stderr, "leadctl export: --sep: use , or ; or tab (or |)\n");
                return 1;
            }
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(export_usage, stdout);
            return 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "leadctl export: unknown option %s\n%s", a, export_usage);
            return 1;
        } else if (x.dealer) {
            fprintf(stderr, "leadctl export: one dealer at a time\n%s", export_usage);
            return 1;
        } else {
            x.dealer = a;
        }
    }
    if (!x.dealer) {
        fputs(export_usage, stderr);
        return 1;
    }
    if (!dealer_id_ok(x.dealer)) {
        fprintf(stderr, "leadctl export: '%s' is not a dealer id (1-64 of [A-Za-z0-9._-])\n", x.dealer);
        return 1;
    }
    const struct cfg *c = lc_config(e);
    if (!c)
        return 1;
    bool known = false;
    for (uint32_t i = 0; i < c->rules->n_dealers && !known; i++)
        known = strcmp(c->rules->dealers[i].id, x.dealer) == 0;
    snprintf(x.key, sizeof x.key, "%s:dealer:%s", c->prefix, x.dealer);
    if (!(x.rc = lc_redis(e)))
        return 2;
    if (!msgpack_zone_init(&x.zone, 8192)) {
        redisFree(x.rc);
        fprintf(stderr, "leadctl: out of memory\n");
        return 70;
    }

    int status = 0;
    int f = fetch(&x);
    if (f == -1) {
        status = x.rc->err ? 2 : 1;
        goto done;
    }
    if (f == -2)
        status = 2; /* write what was drained, then say so */
    if (!known && x.n_entries == 0) {
        fprintf(stderr, "leadctl export: no dealer '%s' in %s, and %s is empty\n", x.dealer, e->config_path,
                x.key);
        status = 1;
        goto done;
    }
    if (!known)
        fprintf(stderr, "leadctl: note: dealer '%s' is not in %s; exporting %s anyway\n", x.dealer,
                e->config_path, x.key);
    if (collect(&x) < 0) {
        fprintf(stderr, "leadctl: out of memory\n");
        if (x.drain)
            push_back(&x);
        status = 70;
        goto done;
    }
    int w = x.csv ? write_csv(&x, stdout) : write_table(&x, stdout);
    if (fflush(stdout) != 0 || w < 0) {
        if (x.drain)
            push_back(&x);
        else
            fprintf(stderr, "leadctl: writing the export failed: %s\n", strerror(errno));
        status = 1;
        goto done;
    }
    if (x.malformed) {
        fprintf(stderr,
                "leadctl: %zu entries of %s are not assignments (not a msgpack map with a lead map)%s\n",
                x.malformed, x.key, x.drain ? "; they were pushed back to the queue's head" : "; left out");
        if (x.drain) {
            for (size_t r = x.n_replies; r-- > 0;)
                for (size_t k = x.replies[r]->elements; k-- > 0;) {
                    const redisReply *el = x.replies[r]->element[k];
                    msgpack_object root;
                    if (el->str && !unpack(&x, el->str, el->len, &root)) {
                        redisReply *ok = redisCommand(x.rc, "LPUSH %s %b", x.key, el->str, el->len);
                        if (ok)
                            freeReplyObject(ok);
                    }
                }
        }
    }
    if (x.unrepresentable)
        fprintf(stderr,
                "leadctl: %llu values had no CSV form (nested maps or arrays, binary) and were left out\n",
                (unsigned long long)x.unrepresentable);
    if (!x.csv)
        fprintf(stderr, "%zu assignments in %s (%s)%s\n", x.n_entries - x.malformed, x.key,
                x.drain ? "drained: removed from the queue" : "still queued",
                x.n_entries ? "; --csv for every column" : "");

done:
    for (size_t i = 0; i < x.n_replies; i++)
        freeReplyObject(x.replies[i]);
    free(x.replies);
    cols_free(&x.cols);
    msgpack_zone_destroy(&x.zone);
    redisFree(x.rc);
    return status;
}
