/* why.c - `why LEAD_ID`: the recorded decision for a lead, from its record
 * (<p>:lead:<id>) and its entries in the audit stream (<p>:audit), as a
 * state machine without I/O that the daemon drives with async commands
 * and leadctl with blocking ones. The lead record's payload holds contact
 * data: it is never read. */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadrouter/admin.h"
#include "leadrouter/commit.h"

#define WHY_PAGE 1000       /* audit entries per XREVRANGE */
#define WHY_MAX_ENTRIES 100 /* decisions kept per lead (attempts, duplicate ids) */
#define WHY_FROM_MS 5000    /* the record's `at` is the daemon's; the audit's ids are Redis's */
#define WHY_SLACK_MS 60000  /* the scan stops this long before the record's `at` */

enum why_state { W_RECORD, W_AUDIT_ONE, W_SCAN, W_DONE };

/* One audit entry of the lead (strings owned). */
struct why_entry {
    char id[48];
    char *outcome, *dealers, *rule, *niche, *attempt, *passed, *ref;
};

struct admin_why {
    enum why_state state;
    char id[160];
    char key[256];   /* <p>:lead:<id> */
    char audit[200]; /* <p>:audit */
    /* the record (owned strings; NULL when absent) */
    bool have_record;
    char *r_dealers, *r_attempt, *r_niche, *r_outcome, *r_at, *r_ref, *r_audit;
    /* audit entries found, newest first */
    struct why_entry e[WHY_MAX_ENTRIES];
    int n;
    int scanned;
    char from[64]; /* XREVRANGE end: "+" or "(<id>" */
    /* the command being sent */
    const char *argv[8];
    size_t argvlen[8];
    int argc;
    char count[16];
};

/* Printable ASCII only: values come from Redis and end up on terminals
 * and in JSON (which needs valid UTF-8). */
static char *clean_dup(const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (!c)
        return NULL;
    for (size_t i = 0; i < n; i++)
        c[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    c[n] = 0;
    return c;
}

static bool valid_id(const char *id, char *err, size_t errlen)
{
    size_t n = strlen(id);
    if (n == 0 || n > 128) {
        snprintf(err, errlen, "invalid lead id: 1-128 characters of [A-Za-z0-9._:@-]");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == ':' || c == '@' || c == '-';
        if (!ok) {
            snprintf(err, errlen, "invalid lead id: 1-128 characters of [A-Za-z0-9._:@-]");
            return false;
        }
    }
    return true;
}

struct admin_why *admin_why_new(const char *prefix, const char *lead_id, char *err, size_t errlen)
{
    if (!valid_id(lead_id, err, errlen))
        return NULL;
    struct admin_why *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(w->id, sizeof w->id, "%s", lead_id);
    snprintf(w->key, sizeof w->key, "%s:lead:%s", prefix, lead_id);
    snprintf(w->audit, sizeof w->audit, "%s:audit", prefix);
    snprintf(w->from, sizeof w->from, "+");
    return w;
}

static void entry_free(struct why_entry *e)
{
    free(e->outcome);
    free(e->dealers);
    free(e->rule);
    free(e->niche);
    free(e->attempt);
    free(e->passed);
    free(e->ref);
    memset(e, 0, sizeof *e);
}

void admin_why_free(struct admin_why *w)
{
    if (!w)
        return;
    free(w->r_dealers);
    free(w->r_attempt);
    free(w->r_niche);
    free(w->r_outcome);
    free(w->r_at);
    free(w->r_ref);
    free(w->r_audit);
    for (int i = 0; i < w->n; i++)
        entry_free(&w->e[i]);
    free(w);
}

bool admin_why_command(struct admin_why *w, int *argc, const char ***argv, const size_t **argvlen)
{
    switch (w->state) {
    case W_RECORD:
        w->argc = 2;
        w->argv[0] = "GET";
        w->argv[1] = w->key;
        break;
    case W_AUDIT_ONE:
        /* One page forward from just before the record's time: the
         * lead's decisions since its record was written. */
        snprintf(w->count, sizeof w->count, "%d", WHY_PAGE);
        w->argc = 6;
        w->argv[0] = "XRANGE";
        w->argv[1] = w->audit;
        w->argv[2] = w->r_audit;
        w->argv[3] = "+";
        w->argv[4] = "COUNT";
        w->argv[5] = w->count;
        break;
    case W_SCAN:
        snprintf(w->count, sizeof w->count, "%d", WHY_PAGE);
        w->argc = 6;
        w->argv[0] = "XREVRANGE";
        w->argv[1] = w->audit;
        w->argv[2] = w->from;
        w->argv[3] = "-";
        w->argv[4] = "COUNT";
        w->argv[5] = w->count;
        break;
    default:
        return false;
    }
    for (int i = 0; i < w->argc; i++)
        w->argvlen[i] = strlen(w->argv[i]);
    *argc = w->argc;
    *argv = w->argv;
    *argvlen = w->argvlen;
    return true;
}

static bool is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* A stream id "<ms>-<seq>" as given by Redis (digits, one dash). */
static bool valid_stream_id(const char *s)
{
    size_t n = strlen(s), dash = strspn(s, "0123456789");
    return n > 0 && n < 40 && dash > 0 && s[dash] == '-' && dash + 1 < n &&
           strspn(s + dash + 1, "0123456789") == n - dash - 1;
}

static int set_field(char **dst, const redisReply *v)
{
    free(*dst);
    *dst = clean_dup(v->str, v->len);
    return *dst ? 0 : -1;
}

static int feed_record(struct admin_why *w, const redisReply *r, char *err, size_t errlen)
{
    w->state = W_SCAN;
    if (r->type == REDIS_REPLY_NIL)
        return 0;
    struct commit_record rec;
    if (r->type != REDIS_REPLY_STRING || commit_record_parse(r->str, r->len, &rec) != 0) {
        snprintf(err, errlen, "%s does not hold a lead record", w->key);
        return -1;
    }
    w->have_record = true;
    char attempt[16], at[32];
    snprintf(attempt, sizeof attempt, "%d", rec.attempt);
    snprintf(at, sizeof at, "%lld", (long long)rec.at);
    struct { char **dst; const char *v; } f[] = {{&w->r_dealers, rec.dealers}, {&w->r_attempt, attempt},
        {&w->r_niche, rec.niche}, {&w->r_outcome, rec.outcome}, {&w->r_at, at}, {&w->r_ref, rec.ref}};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) {
        free(*f[i].dst);
        if (!(*f[i].dst = clean_dup(f[i].v, strlen(f[i].v)))) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    char from[32];
    snprintf(from, sizeof from, "%lld-0", (long long)(rec.at > WHY_FROM_MS ? rec.at - WHY_FROM_MS : 0));
    free(w->r_audit);
    if (!(w->r_audit = strdup(from))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->state = W_AUDIT_ONE;
    return 0;
}

/* The entry's ms timestamp (the part of its id before the dash). */
static int64_t entry_ms(const char *id)
{
    return strtoll(id, NULL, 10);
}

/* Keeps a stream entry ([id, [field, value, ...]]) if it is about our
 * lead. Returns -1 when out of memory. */
static int take_entry(struct admin_why *w, const redisReply *e)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || !is_str(e->element[0]) ||
        e->element[1]->type != REDIS_REPLY_ARRAY)
        return 0;
    const redisReply *f = e->element[1];
    bool mine = false;
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (is_str(f->element[i]) && is_str(f->element[i + 1]) && strcmp(f->element[i]->str, "lead_id") == 0)
            mine = f->element[i + 1]->len == strlen(w->id) &&
                   memcmp(f->element[i + 1]->str, w->id, strlen(w->id)) == 0;
    if (!mine || w->n >= WHY_MAX_ENTRIES)
        return 0;
    struct why_entry *x = &w->e[w->n];
    memset(x, 0, sizeof *x);
    snprintf(x->id, sizeof x->id, "%s", e->element[0]->str);
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (!is_str(k) || !is_str(v))
            continue;
        if (strcmp(k->str, "d") == 0) {
            /* outcome, dealers, rule, niche, attempt, passed, ref: tab-separated */
            char **dsts[] = {&x->outcome, &x->dealers, &x->rule, &x->niche, &x->attempt, &x->passed, &x->ref};
            const char *p = v->str, *end = v->str + v->len;
            for (size_t j = 0; j < sizeof dsts / sizeof *dsts && p <= end; j++) {
                const char *tab = memchr(p, '\t', (size_t)(end - p));
                size_t n = tab ? (size_t)(tab - p) : (size_t)(end - p);
                free(*dsts[j]);
                if (!(*dsts[j] = clean_dup(p, n))) {
                    entry_free(x);
                    return -1;
                }
                p += n + 1;
            }
            continue;
        }
        char **dst = strcmp(k->str, "outcome") == 0   ? &x->outcome
                     : strcmp(k->str, "dealers") == 0 ? &x->dealers
                     : strcmp(k->str, "rule") == 0    ? &x->rule
                     : strcmp(k->str, "niche") == 0   ? &x->niche
                     : strcmp(k->str, "attempt") == 0 ? &x->attempt
                     : strcmp(k->str, "passed") == 0  ? &x->passed
                     : strcmp(k->str, "ref") == 0     ? &x->ref
                                                      : NULL;
        if (dst && set_field(dst, v) != 0) {
            entry_free(x);
            return -1;
        }
    }
    w->n++;
    return 0;
}

int admin_why_feed(struct admin_why *w, const struct redisReply *r, char *err, size_t errlen)
{
    if (!r) {
        w->state = W_DONE;
        snprintf(err, errlen, "the Redis connection dropped during the lookup");
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        w->state = W_DONE;
        snprintf(err, errlen, "redis: %.200s", r->str);
        return -1;
    }
    if (w->state == W_RECORD) {
        if (feed_record(w, r, err, errlen) != 0) {
            w->state = W_DONE;
            return -1;
        }
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        w->state = W_DONE;
        snprintf(err, errlen, "unexpected reply reading %s", w->audit);
        return -1;
    }
    for (size_t i = 0; i < r->elements; i++)
        if (take_entry(w, r->element[i]) != 0) {
            w->state = W_DONE;
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    if (w->state == W_AUDIT_ONE) {
        /* found oldest first: keep them newest first, as the scan does */
        for (int i = 0, j = w->n - 1; i < j; i++, j--) {
            struct why_entry t = w->e[i];
            w->e[i] = w->e[j];
            w->e[j] = t;
        }
        w->state = w->n > 0 ? W_DONE : W_SCAN;
        return 0;
    }
    /* W_SCAN: on to the next page, newest to oldest, within bounds. */
    w->scanned += (int)r->elements;
    const redisReply *last = r->elements ? r->element[r->elements - 1] : NULL;
    bool more = r->elements == WHY_PAGE && w->scanned < ADMIN_WHY_SCAN && last &&
                last->type == REDIS_REPLY_ARRAY && last->elements == 2 && is_str(last->element[0]) &&
                valid_stream_id(last->element[0]->str);
    if (more && w->r_at) {
        /* Nothing about this lead is older than its record. */
        int64_t at = strtoll(w->r_at, NULL, 10);
        if (at > 0 && entry_ms(last->element[0]->str) < at - WHY_SLACK_MS)
            more = false;
    }
    if (more)
        snprintf(w->from, sizeof w->from, "(%s", last->element[0]->str);
    else
        w->state = W_DONE;
    return 0;
}

/* ---- the account ----------------------------------------------------- */

/* What each compact code of the audit's `passed` list means. */
static const char *why_words(const char *code)
{
    static const struct {
        const char *code, *words;
    } m[] = {
        {"not_picked", "eligible, but others were picked first (rotation, tier or max_buyers)"},
        {"candidate", "eligible, not picked"},
        {"paused", "paused by ops"},
        {"closed", "outside its business hours"},
        {"filtered:min_score", "the score is below its min_score"},
        {"filtered:grade", "its contract does not take this grade"},
        {"filtered:field", "one of its contract filters refused the lead"},
        {"already_had", "it already had this lead (return)"},
        {"exclusive_owner", "an exclusive owner covers the lead"},
        {"capped:hour", "its hour cap was reached"},
        {"capped:day", "its day cap was reached"},
        {"capped:week", "its week cap was reached"},
        {"capped:month", "its month cap was reached"},
        {"capped:max_pending", "its queue was full (max_pending)"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        if (strcmp(code, m[i].code) == 0)
            return m[i].words;
    return "";
}

static void fmt_time(int64_t ms, char *buf, size_t len)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&s, &tm)) {
        snprintf(buf, len, "?");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02d %02d:%02d:%02d.%03d UTC", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "-";
}

/* "d7=capped:day,d9=filtered:min_score" -> one line per dealer. */
static void text_passed(FILE *out, const char *passed)
{
    if (!passed || !*passed) {
        fprintf(out, "    others considered: none\n");
        return;
    }
    fprintf(out, "    others considered:\n");
    for (const char *p = passed; *p;) {
        size_t n = strcspn(p, ",");
        char item[256];
        snprintf(item, sizeof item, "%.*s", (int)(n < sizeof item ? n : sizeof item - 1), p);
        char *eq = strchr(item, '=');
        const char *code = eq ? eq + 1 : "";
        if (eq)
            *eq = 0;
        fprintf(out, "      %-24s %-20s %s\n", item, code, why_words(code));
        p += n + (p[n] == ',');
    }
}

static int text_result(const struct admin_why *w, char **res, char *err, size_t errlen)
{
    char *text = NULL, when[48];
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    fprintf(out, "lead %s\n", w->id);
    if (w->have_record) {
        const char *oc = or_dash(w->r_outcome);
        fmt_time(w->r_at ? strtoll(w->r_at, NULL, 10) : 0, when, sizeof when);
        fprintf(out, "  record: routed %s, attempt %s, niche %s, input entry %s\n", when,
                or_dash(w->r_attempt), or_dash(w->r_niche), or_dash(w->r_ref));
        if (strcmp(oc, "assigned") == 0)
            fprintf(out, "  now: assigned to %s\n", or_dash(w->r_dealers));
        else
            fprintf(out, "  now: unassigned (%s)%s%s\n", oc,
                    w->r_dealers && *w->r_dealers ? ", had it before: " : "",
                    w->r_dealers && *w->r_dealers ? w->r_dealers : "");
    } else {
        fprintf(out, "  record: none (expired after routing.record_ttl, or the lead was a duplicate_id)\n");
    }
    if (w->n == 0)
        fprintf(
            out,
            "  decisions: no audit entry found (routing.audit_maxlen = 0, or the entry was trimmed, or it is "
            "older than the newest %d decisions)\n",
            ADMIN_WHY_SCAN);
    /* Oldest first. */
    for (int i = w->n - 1; i >= 0; i--) {
        const struct why_entry *e = &w->e[i];
        fmt_time(entry_ms(e->id), when, sizeof when);
        fprintf(out, "  decision %d at %s (audit entry %s):\n", w->n - i, when, e->id);
        const char *oc = or_dash(e->outcome);
        if (strcmp(oc, "assigned") == 0)
            fprintf(out, "    assigned to %s by rule %s\n", or_dash(e->dealers), or_dash(e->rule));
        else
            fprintf(out, "    unassigned: %s\n", oc);
        fprintf(out, "    niche %s, attempt %s\n", or_dash(e->niche), or_dash(e->attempt));
        text_passed(out, e->passed);
    }
    bool bad = ferror(out) != 0;
    if (fclose(out) != 0 || bad) {
        free(text);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *res = text;
    return 0;
}

static json_t *jstr_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static json_t *jint_or_null(const char *s)
{
    if (!s || !*s)
        return json_null();
    char *end;
    long long v = strtoll(s, &end, 10);
    return *end ? json_string(s) : json_integer(v);
}

/* "a,b" -> ["a","b"] */
static json_t *jlist(const char *s)
{
    json_t *a = json_array();
    for (const char *p = s ? s : ""; a && *p;) {
        size_t n = strcspn(p, ",");
        json_array_append_new(a, json_stringn(p, n));
        p += n + (p[n] == ',');
    }
    return a;
}

static json_t *jpassed(const char *s)
{
    json_t *a = json_array();
    for (const char *p = s ? s : ""; a && *p;) {
        size_t n = strcspn(p, ",");
        const char *eq = memchr(p, '=', n);
        json_t *o = json_object();
        if (eq) {
            json_object_set_new(o, "dealer", json_stringn(p, (size_t)(eq - p)));
            json_object_set_new(o, "why", json_stringn(eq + 1, n - (size_t)(eq - p) - 1));
        } else {
            json_object_set_new(o, "dealer", json_stringn(p, n));
            json_object_set_new(o, "why", json_null());
        }
        json_array_append_new(a, o);
        p += n + (p[n] == ',');
    }
    return a;
}

static int json_result(const struct admin_why *w, char **out, char *err, size_t errlen)
{
    json_t *root = json_object();
    if (!root) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    json_object_set_new(root, "lead_id", json_string(w->id));
    if (w->have_record) {
        json_t *r = json_object();
        json_object_set_new(r, "outcome", jstr_or_null(w->r_outcome));
        json_object_set_new(r, "dealers", jlist(w->r_dealers));
        json_object_set_new(r, "attempt", jint_or_null(w->r_attempt));
        json_object_set_new(r, "niche", jstr_or_null(w->r_niche));
        json_object_set_new(r, "at", jint_or_null(w->r_at));
        json_object_set_new(r, "ref", jstr_or_null(w->r_ref));
        json_object_set_new(r, "audit", w->n > 0 ? json_string(w->e[w->n - 1].id) : json_null());
        json_object_set_new(root, "record", r);
    } else {
        json_object_set_new(root, "record", json_null());
    }
    json_t *ds = json_array();
    for (int i = w->n - 1; i >= 0; i--) {
        const struct why_entry *e = &w->e[i];
        json_t *o = json_object();
        json_object_set_new(o, "entry", json_string(e->id));
        json_object_set_new(o, "at", json_integer(entry_ms(e->id)));
        json_object_set_new(o, "outcome", jstr_or_null(e->outcome));
        json_object_set_new(o, "dealers", jlist(e->dealers));
        json_object_set_new(o, "rule", jstr_or_null(e->rule));
        json_object_set_new(o, "niche", jstr_or_null(e->niche));
        json_object_set_new(o, "attempt", jint_or_null(e->attempt));
        json_object_set_new(o, "passed", jpassed(e->passed));
        json_object_set_new(o, "ref", jstr_or_null(e->ref));
        json_array_append_new(ds, o);
    }
    json_object_set_new(root, "decisions", ds);
    *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!*out) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int admin_why_result(const struct admin_why *w, bool json, char **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!w->have_record && w->n == 0) {
        snprintf(err, errlen, "unknown lead %s (no record in the last routing.record_ttl, no audit entry)",
                 w->id);
        return -1;
    }
    return json ? json_result(w, out, err, errlen) : text_result(w, out, err, errlen);
}
