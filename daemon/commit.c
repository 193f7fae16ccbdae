/* commit.c - builds the arguments of daemon/commit.lua for one lead (the
 * argument list is documented at the top of the script). */
#include <ctype.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "leadrouter/commit.h"

#define HEAD_ARGS 3 /* EVALSHA sha 0 */

static int reserve(struct commit_args *a, size_t bytes)
{
    if (a->argc == a->cap) {
        size_t nc = a->cap ? a->cap * 2 : 64;
        const char **nv = realloc(a->argv, nc * sizeof *nv);
        if (!nv)
            return -1;
        a->argv = nv;
        size_t *nl = realloc(a->len, nc * sizeof *nl);
        if (!nl)
            return -1;
        a->len = nl;
        size_t *no = realloc(a->off, nc * sizeof *no);
        if (!no)
            return -1;
        a->off = no;
        a->cap = nc;
    }
    if (a->used + bytes > a->bufcap) {
        size_t nc = a->bufcap ? a->bufcap * 2 : 4096;
        while (nc < a->used + bytes)
            nc *= 2;
        char *nb = realloc(a->buf, nc);
        if (!nb)
            return -1;
        a->buf = nb;
        a->bufcap = nc;
    }
    return 0;
}

static int push(struct commit_args *a, const void *p, size_t n)
{
    if (reserve(a, n))
        return -1;
    if (n)
        memcpy(a->buf + a->used, p, n);
    a->off[a->argc] = a->used;
    a->len[a->argc++] = n;
    a->used += n;
    return 0;
}

static int pushs(struct commit_args *a, const char *s)
{
    return push(a, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static int pushf(struct commit_args *a, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return n < 0 ? -1 : push(a, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Appends to the argument being built last (for comma lists). */
static int append_last(struct commit_args *a, const char *s, size_t n)
{
    if (reserve(a, n))
        return -1;
    memcpy(a->buf + a->used, s, n);
    a->used += n;
    a->len[a->argc - 1] += n;
    return 0;
}

static void fixup(struct commit_args *a)
{
    for (size_t i = HEAD_ARGS; i < a->argc; i++)
        a->argv[i] = a->buf + a->off[i];
}

void commit_args_free(struct commit_args *a)
{
    free(a->argv);
    free(a->len);
    free(a->off);
    free(a->buf);
    memset(a, 0, sizeof *a);
}

static void reset(struct commit_args *a)
{
    a->argc = 0;
    a->used = 0;
    for (int i = 0; i < HEAD_ARGS; i++)
        (void)push(a, "", 0); /* placeholders, set by the sender */
}

static const char *mode_str(enum commit_mode m)
{
    return m == COMMIT_LIST ? "list" : m == COMMIT_RETURN ? "return" : "stream";
}

#define COUNT_ARG (HEAD_ARGS + 10) /* ARGV[11] */

int commit_begin(struct commit_args *a, const struct cfg *c, enum commit_mode mode, const char *consumer,
                 const char *plist, int64_t now_ms)
{
    reset(a);
    a->leads = 0;
    time_t tt = (time_t)(now_ms / 1000);
    struct tm tm;
    char hour[16];
    gmtime_r(&tt, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    static const char *const action[] = {"same_dealer", "reject", "ignore"};
    int rc = 0;
    rc |= pushs(a, c->prefix);
    rc |= pushs(a, mode_str(mode));
    rc |= pushs(a, c->input.group);
    rc |= pushs(a, consumer);
    rc |= pushf(a, "%" PRId64, c->routing.record_ttl);
    rc |= pushf(a, "%" PRId64, c->routing.audit_maxlen);
    rc |= pushf(a, "%d", c->routing.max_attempts);
    rc |= pushs(a, hour);
    rc |= pushf(a, "%s%s%s", action[c->dedup.action], c->dedup.phone ? ",phone" : "", c->dedup.email ? ",email" : "");
    rc |= pushf(a, "%" PRId64, c->dedup.window);
    rc |= pushs(a, "000000"); /* the count, set by commit_end */
    rc |= pushs(a, plist ? plist : "");
    return rc ? -1 : 0;
}

void commit_end(struct commit_args *a)
{
    char n[8];
    snprintf(n, sizeof n, "%06d", a->leads % 1000000);
    memcpy(a->buf + a->off[COUNT_ARG], n, 6);
    fixup(a);
}

int commit_count(const struct commit_args *a)
{
    return a->leads;
}

/* The first 9 fields of a lead's block. */
static int lead_fields(struct commit_args *a, const struct commit_src *src, const char *id, size_t id_len,
                       const char *source, size_t source_len, const char *niche, const char *outcome,
                       const char *error)
{
    int rc = 0;
    rc |= pushs(a, src->ref);
    rc |= push(a, id, id_len);
    rc |= push(a, src->payload, src->payload_len);
    rc |= pushf(a, "%d", src->attempt);
    rc |= push(a, source, source_len);
    rc |= pushs(a, niche);
    rc |= pushs(a, outcome);
    rc |= pushs(a, error);
    return rc;
}

int commit_add_dead(struct commit_args *a, const struct commit_src *src, const char *error)
{
    /* Undecodable input has no trustworthy id: the record is not written. */
    int rc = lead_fields(a, src, src->ref, strlen(src->ref), "", 0, "", "dead", error);
    /* head flags k strategy phone email passed had ncand */
    static const char *const rest[] = {"", "", "0", "", "", "", "", "", "0"};
    for (size_t i = 0; i < sizeof rest / sizeof *rest; i++)
        rc |= pushs(a, rest[i]);
    if (rc)
        return -1;
    a->leads++;
    return 0;
}

size_t commit_norm_phone(struct lr_str in, char *out, size_t cap)
{
    size_t o = 0;
    for (uint32_t i = 0; i < in.len && o + 1 < cap; i++)
        if (in.p[i] >= '0' && in.p[i] <= '9')
            out[o++] = in.p[i];
    out[o] = 0;
    return o;
}

size_t commit_norm_email(struct lr_str in, char *out, size_t cap)
{
    uint32_t b = 0, e = in.len;
    while (b < e && isspace((unsigned char)in.p[b]))
        b++;
    while (e > b && isspace((unsigned char)in.p[e - 1]))
        e--;
    size_t o = 0;
    for (uint32_t i = b; i < e && o + 1 < cap; i++)
        out[o++] = (char)tolower((unsigned char)in.p[i]);
    out[o] = 0;
    return o;
}

/* The fixed part of the assignment map (SPEC section 3): header for 9
 * entries, then lead_id, niche, score, grade, attempt; the script adds
 * dealer, rule, routed_at and lead. */
static int assignment_head(struct commit_args *a, const struct rules_table *t, const struct lead *l,
                           const struct rules_decision *d, int attempt)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    const char *niche = t->niches[d->niche].name, *grade = t->grades[d->grade].name;
    msgpack_pack_map(&pk, 9);
    msgpack_pack_str_with_body(&pk, "lead_id", 7);
    msgpack_pack_str_with_body(&pk, l->id.p, l->id.len);
    msgpack_pack_str_with_body(&pk, "niche", 5);
    msgpack_pack_str_with_body(&pk, niche, strlen(niche));
    msgpack_pack_str_with_body(&pk, "score", 5);
    msgpack_pack_int(&pk, d->score);
    msgpack_pack_str_with_body(&pk, "grade", 5);
    msgpack_pack_str_with_body(&pk, grade, strlen(grade));
    msgpack_pack_str_with_body(&pk, "attempt", 7);
    msgpack_pack_int(&pk, attempt);
    int rc = push(a, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static const char *strategy_str(enum rules_strategy s)
{
    static const char *const names[] = {"weighted", "round_robin", "nearest", "least_loaded"};
    return names[s];
}

/* The compact "dealer=why" list of the dealers passed over before the
 * commit (filtered, closed, paused...), for the audit stream. */
static int passed_over(struct commit_args *a, const struct rules_table *t, const struct rules_decision *d)
{
    if (push(a, "", 0))
        return -1;
    bool first = true;
    for (uint32_t i = 0; i < d->n_verdicts; i++) {
        const struct rules_verdict *v = &d->verdicts[i];
        if (v->why == WHY_CANDIDATE)
            continue;
        const char *id = t->dealers[v->dealer].id, *why = rules_why_str((enum rules_why)v->why);
        if ((!first && append_last(a, ",", 1)) || append_last(a, id, strlen(id)) || append_last(a, "=", 1) ||
            append_last(a, why, strlen(why)))
            return -1;
        first = false;
    }
    return 0;
}

int commit_add_route(struct commit_args *a, const struct cfg *c, enum commit_mode mode, const struct commit_src *src,
                     const struct lead *l, struct rules_decision *d, int64_t now_ms)
{
    const struct rules_table *t = c->rules;
    const char *outcome = d->reason == REASON_ASSIGNED ? "route" : rules_reason_str(d->reason);
    const char *niche = d->niche >= 0 ? t->niches[d->niche].name : "";
    int rc = lead_fields(a, src, l->id.p, l->id.len, l->source.p, l->source.len, niche, outcome, "");
    if (d->niche >= 0)
        rc |= assignment_head(a, t, l, d, src->attempt);
    else
        rc |= push(a, "", 0);
    char flags[4] = "", *f = flags;
    if (d->hot)
        *f++ = 'h';
    if (d->hold)
        *f++ = 'H';
    *f = 0;
    rc |= pushs(a, flags);
    int k = d->niche >= 0 ? t->niches[d->niche].max_buyers : 1;
    if (mode == COMMIT_RETURN)
        k = 1; /* each return asks for one replacement */
    rc |= pushf(a, "%d", k);
    rc |= pushs(a, d->niche >= 0 ? strategy_str(t->niches[d->niche].strategy) : "weighted");
    char phone[64], email[256];
    commit_norm_phone(l->phone, phone, sizeof phone);
    commit_norm_email(l->email, email, sizeof email);
    rc |= pushs(a, phone);
    rc |= pushs(a, email);
    rc |= passed_over(a, t, d);
    rc |= pushs(a, src->had ? src->had : "");
    uint32_t n = d->reason == REASON_ASSIGNED ? d->stage_end[1] : 0;
    rc |= pushf(a, "%u", n);
    int64_t now_s = now_ms / 1000;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        const struct rules_verdict *v = &d->verdicts[d->cand[i]];
        const struct rules_dealer *dl = &t->dealers[v->dealer];
        double key = 0;
        if (t->niches[d->niche].strategy == STRAT_NEAREST)
            key = dl->has_radius && l->has_geo ? rules_distance_km(l->lat, l->lon, dl->lat, dl->lon) : 1e18;
        rc |= pushs(a, dl->id);
        rc |= pushf(a, "%d", v->stage);
        rc |= pushf(a, "%d", dl->tier);
        rc |= pushf(a, "%d", dl->weight);
        rc |= pushf(a, "%.17g", key);
        for (int p = 0; p < PERIOD_N; p++)
            rc |= pushf(a, "%u", dl->caps[p]);
        for (int p = 0; p < PERIOD_N; p++) {
            char b[32];
            rules_cap_bucket(t, v->dealer, (enum rules_period)p, now_s, b, sizeof b);
            rc |= pushs(a, b);
        }
        rc |= pushf(a, "%u", dl->max_pending);
        char rule[32];
        d->picked_stage = v->stage; /* the rule names the stage it would be picked in */
        rules_rule_str(t, d, v->dealer, rule, sizeof rule);
        rc |= pushs(a, rule);
    }
    d->picked_stage = -1;
    if (rc)
        return -1;
    a->leads++;
    return 0;
}
