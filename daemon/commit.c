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
    if (n == 0) /* msgpack-c writes empty bodies from NULL: nothing to copy */
        return 0;
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

/* The tables sized for a->table (see commit_begin). */
static void free_tables(struct commit_args *a)
{
    free(a->dpos);
    free(a->dlist);
    free(a->rrpos);
    free(a->rrlist);
    free(a->bk);
    free(a->bkseen);
}

void commit_args_free(struct commit_args *a)
{
    free_tables(a);
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
    rc |= push(a, "", 0); /* the dealer table, set by commit_end */
    rc |= push(a, "", 0); /* the rotation table, set by commit_end */
    snprintf(a->prefix, sizeof a->prefix, "%s", c->prefix);
    if (a->table == c->rules) {
        for (uint32_t i = 0; i < a->nd; i++)
            a->dpos[a->dlist[i]] = 0;
        for (uint32_t i = 0; i < a->nrr; i++)
            a->rrpos[a->rrlist[i]] = 0;
    }
    a->nd = 0;
    a->nrr = 0;
    if (a->table != c->rules) {
        free_tables(a);
        size_t n = c->rules->n_dealers ? c->rules->n_dealers : 1;
        size_t nz = c->rules->n_tzs ? c->rules->n_tzs : 1;
        size_t nr = c->rules->n_rr_slots ? c->rules->n_rr_slots : 1;
        a->dpos = calloc(n, sizeof *a->dpos);
        a->dlist = calloc(n, sizeof *a->dlist);
        a->rrpos = calloc(nr, sizeof *a->rrpos);
        a->rrlist = calloc(nr, sizeof *a->rrlist);
        a->bk = calloc(nz, sizeof *a->bk);
        a->bkseen = calloc(nz, sizeof *a->bkseen);
        a->bkgen = 0;
        a->table = a->dpos && a->dlist && a->rrpos && a->rrlist && a->bk && a->bkseen ? c->rules : NULL;
        if (!a->table)
            return -1;
    }
    return rc ? -1 : 0;
}

/* msgpack-c writes straight into the argument being built. */
static int args_write(void *data, const char *buf, size_t len)
{
    return append_last(data, buf, len);
}

static void packer_for(struct commit_args *a, msgpack_packer *pk)
{
    msgpack_packer_init(pk, a, args_write);
}

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str_with_body(pk, s, n);
}

static void pack_cstr(msgpack_packer *pk, const char *s)
{
    pack_str(pk, s, strlen(s));
}

#define DEALERS_ARG (HEAD_ARGS + 12) /* ARGV[13] */
#define RR_ARG (HEAD_ARGS + 13)      /* ARGV[14] */

/* Packs a table into a new last argument and moves it to slot at. */
static void table_arg(struct commit_args *a, size_t at)
{
    a->argc--; /* not an argument of its own */
    a->off[at] = a->off[a->argc];
    a->len[at] = a->len[a->argc];
}

int commit_end(struct commit_args *a, int64_t now_ms)
{
    char n[8];
    snprintf(n, sizeof n, "%06d", a->leads % 1000000);
    memcpy(a->buf + a->off[COUNT_ARG], n, 6);
    /* The tables go at the end of the buffer; ARGV[13] and [14] point there. */
    if (push(a, "", 0))
        return -1;
    msgpack_packer pk;
    packer_for(a, &pk);
    msgpack_pack_array(&pk, a->nd);
    int64_t now_s = now_ms / 1000;
    if (++a->bkgen == 0) { /* wrapped: forget every zone */
        memset(a->bkseen, 0, (a->table->n_tzs ? a->table->n_tzs : 1) * sizeof *a->bkseen);
        a->bkgen = 1;
    }
    for (uint32_t i = 0; i < a->nd; i++) {
        const struct rules_dealer *d = &a->table->dealers[a->dlist[i]];
        msgpack_pack_array(&pk, 10);
        pack_cstr(&pk, d->id);
        for (int p = 0; p < PERIOD_N; p++)
            msgpack_pack_uint32(&pk, d->caps[p]);
        char(*bk)[16] = a->bk[d->tz];
        if (a->bkseen[d->tz] != a->bkgen) {
            for (int p = 0; p < PERIOD_N; p++)
                rules_cap_bucket(a->table, a->dlist[i], (enum rules_period)p, now_s, bk[p], sizeof bk[p]);
            a->bkseen[d->tz] = a->bkgen;
        }
        for (int p = 0; p < PERIOD_N; p++)
            pack_cstr(&pk, bk[p]);
        msgpack_pack_uint32(&pk, d->max_pending);
    }
    table_arg(a, DEALERS_ARG);
    if (push(a, "", 0))
        return -1;
    msgpack_pack_array(&pk, a->nrr * 2);
    for (uint32_t i = 0; i < a->nrr; i++) {
        uint32_t slot = a->rrlist[i], nd = a->table->n_dealers;
        const struct rules_dealer *d = &a->table->dealers[slot % nd];
        char key[256];
        int kl = snprintf(key, sizeof key, "%s:rr:%s:%d", a->prefix, a->table->niches[slot / nd].name, d->tier);
        pack_str(&pk, key, kl > 0 && (size_t)kl < sizeof key ? (size_t)kl : 0);
        pack_cstr(&pk, d->id);
    }
    table_arg(a, RR_ARG);
    fixup(a);
    return 0;
}

const char *commit_payload(const struct commit_args *a, int k, size_t *len)
{
    size_t i = RR_ARG + 1 + 3 * (size_t)k + 1;
    if (k < 0 || k >= a->leads || i >= a->argc)
        return NULL;
    *len = a->len[i];
    return a->buf + a->off[i];
}

uint32_t commit_dealer_at(const struct commit_args *a, uint64_t pos)
{
    return pos >= 1 && pos <= a->nd ? a->dlist[pos - 1] : UINT32_MAX;
}

uint32_t commit_rr_at(const struct commit_args *a, uint64_t pos)
{
    return pos >= 1 && pos <= a->nrr ? a->rrlist[pos - 1] : UINT32_MAX;
}

int commit_count(const struct commit_args *a)
{
    return a->leads;
}

/* A lead's meta array: the first 7 of its 15 entries (see commit.lua). */
static void pack_meta(msgpack_packer *pk, const struct commit_src *src, const char *id, size_t id_len,
                      const char *source, size_t source_len, const char *niche, const char *outcome,
                      const char *error)
{
    msgpack_pack_array(pk, 15);
    pack_cstr(pk, src->ref);
    pack_str(pk, id, id_len);
    msgpack_pack_int(pk, src->attempt);
    pack_str(pk, source, source_len);
    pack_cstr(pk, niche);
    pack_cstr(pk, outcome);
    pack_cstr(pk, error);
}

int commit_add_dead(struct commit_args *a, const struct commit_src *src, const char *error)
{
    if (push(a, "", 0))
        return -1;
    msgpack_packer pk;
    packer_for(a, &pk);
    /* Undecodable input has no trustworthy id: the record is not written. */
    pack_meta(&pk, src, src->ref, strlen(src->ref), "", 0, "", "dead", error);
    pack_cstr(&pk, "");         /* flags */
    msgpack_pack_array(&pk, 0); /* picked */
    msgpack_pack_array(&pk, 0); /* rules */
    for (int i = 0; i < 4; i++) /* phone email passed had */
        pack_cstr(&pk, "");
    msgpack_pack_array(&pk, 0); /* rr */
    if (push(a, src->payload, src->payload_len) || push(a, "", 0))
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
    if (push(a, "", 0))
        return -1;
    msgpack_packer pk;
    packer_for(a, &pk);
    const char *niche = t->niches[d->niche].name, *grade = t->grades[d->grade].name;
    msgpack_pack_map(&pk, 9);
    pack_cstr(&pk, "lead_id");
    pack_str(&pk, l->id.p, l->id.len);
    pack_cstr(&pk, "niche");
    pack_cstr(&pk, niche);
    pack_cstr(&pk, "score");
    msgpack_pack_int(&pk, d->score);
    pack_cstr(&pk, "grade");
    pack_cstr(&pk, grade);
    pack_cstr(&pk, "attempt");
    msgpack_pack_int(&pk, attempt);
    return 0;
}

/* The compact "dealer=why" list of the dealers passed over (filtered,
 * closed, paused, capped, not picked...), for the audit stream. */
static void pack_passed(msgpack_packer *pk, const struct rules_table *t, const struct rules_decision *d)
{
    char buf[4096];
    size_t o = 0;
    for (uint32_t i = 0; i < d->n_verdicts; i++) {
        const struct rules_verdict *v = &d->verdicts[i];
        if (v->why == WHY_CANDIDATE || v->why == WHY_PICKED)
            continue;
        /* Appended by hand: this runs for every lead and every dealer it
         * passed over, and printf's parsing was a visible cost. */
        const char *id = t->dealers[v->dealer].id, *why = rules_why_str((enum rules_why)v->why);
        size_t il = strlen(id), wl = strlen(why), need = (o ? 1 : 0) + il + 1 + wl;
        if (o + need > sizeof buf)
            break; /* the audit keeps what fits */
        if (o)
            buf[o++] = ',';
        memcpy(buf + o, id, il);
        o += il;
        buf[o++] = '=';
        memcpy(buf + o, why, wl);
        o += wl;
    }
    pack_str(pk, buf, o);
}

/* The position (from 1) of dealer di in the batch's dealer table. */
static uint32_t dealer_slot(struct commit_args *a, uint32_t di)
{
    if (!a->dpos[di]) {
        a->dlist[a->nd++] = di;
        a->dpos[di] = a->nd;
    }
    return a->dpos[di];
}

static uint32_t rr_slot_pos(struct commit_args *a, uint32_t slot)
{
    if (!a->rrpos[slot]) {
        a->rrlist[a->nrr++] = slot;
        a->rrpos[slot] = a->nrr;
    }
    return a->rrpos[slot];
}

int commit_add_route(struct commit_args *a, const struct cfg *c, const struct commit_src *src, const struct lead *l,
                     const struct rules_decision *d, const struct commit_rr *rr, uint32_t n_rr)
{
    const struct rules_table *t = c->rules;
    if (a->table != t)
        return -1;
    const char *outcome = d->reason == REASON_ASSIGNED ? "route" : rules_reason_str(d->reason);
    const char *niche = d->niche >= 0 ? t->niches[d->niche].name : "";
    uint32_t np = d->reason == REASON_ASSIGNED ? d->n_picked : 0;
    if (push(a, "", 0))
        return -1;
    msgpack_packer pk;
    packer_for(a, &pk);
    pack_meta(&pk, src, l->id.p, l->id.len, l->source.p, l->source.len, niche, outcome, "");
    char flags[4] = "", *f = flags;
    if (d->hot)
        *f++ = 'h';
    if (src->same_done)
        *f++ = 'S';
    *f = 0;
    pack_cstr(&pk, flags);
    msgpack_pack_array(&pk, np);
    for (uint32_t i = 0; i < np; i++)
        msgpack_pack_uint32(&pk, dealer_slot(a, d->picked[i]));
    msgpack_pack_array(&pk, np);
    for (uint32_t i = 0; i < np; i++) {
        char rule[32];
        rules_rule_str(t, d, d->picked[i], rule, sizeof rule);
        pack_cstr(&pk, rule);
    }
    char phone[64], email[256];
    pack_str(&pk, phone, commit_norm_phone(l->phone, phone, sizeof phone));
    pack_str(&pk, email, commit_norm_email(l->email, email, sizeof email));
    pack_passed(&pk, t, d);
    pack_cstr(&pk, src->had ? src->had : "");
    msgpack_pack_array(&pk, np ? n_rr * 2 : 0);
    for (uint32_t i = 0; np && i < n_rr; i++) {
        msgpack_pack_uint32(&pk, rr_slot_pos(a, rr[i].slot));
        msgpack_pack_int64(&pk, rr[i].delta);
    }
    if (push(a, src->payload, src->payload_len))
        return -1;
    if (d->niche >= 0) {
        if (assignment_head(a, t, l, d, src->attempt))
            return -1;
    } else if (push(a, "", 0)) {
        return -1;
    }
    a->leads++;
    return 0;
}
