/* commit.c - builds the arguments of daemon/commit.lua for one batch
 * (layout: include/leadrouter/commit_contract.h): every string the script
 * writes is made here, once; and the lead record and dedup digest formats. */
#include <ctype.h>
#include <inttypes.h>
#include <msgpack.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "leadrouter/commit.h"
#include "leadrouter/commit_contract.h"

#define HEAD_ARGS 3 /* EVALSHA sha 0 */
#define N_HEAD (LR_ARG_END_ - 1)

struct commit_stat {
    size_t off, len; /* the field name, in buf */
    int64_t n;
};

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *n = realloc(*p, nc * size);
    if (!n)
        return -1;
    *p = n;
    *cap = nc;
    return 0;
}

static int reserve(struct commit_args *a, size_t bytes)
{
    if (a->used + bytes <= a->bufcap)
        return 0;
    size_t nc = a->bufcap ? a->bufcap * 2 : 65536;
    while (nc < a->used + bytes)
        nc *= 2;
    char *nb = realloc(a->buf, nc);
    if (!nb)
        return -1;
    a->buf = nb;
    a->bufcap = nc;
    return 0;
}

/* Appends bytes to buf; the piece they make. */
static int put(struct commit_args *a, const void *p, size_t n, struct commit_piece *out)
{
    if (reserve(a, n))
        return -1;
    if (n)
        memcpy(a->buf + a->used, p, n);
    out->off = a->used;
    out->len = n;
    a->used += n;
    return 0;
}

static int vec_add(struct commit_vec *v, struct commit_piece pc)
{
    if (grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p))
        return -1;
    v->p[v->n++] = pc;
    return 0;
}

static int vpush(struct commit_args *a, struct commit_vec *v, const void *p, size_t n)
{
    struct commit_piece pc;
    return put(a, p, n, &pc) || vec_add(v, pc) ? -1 : 0;
}

static int vpushs(struct commit_args *a, struct commit_vec *v, const char *s)
{
    return vpush(a, v, s, strlen(s));
}

__attribute__((format(printf, 3, 4))) static int vpushf(struct commit_args *a, struct commit_vec *v,
                                                        const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    return n < 0 ? -1 : vpush(a, v, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* msgpack-c writes straight into buf; the piece is what it wrote. */
struct mp_sink {
    struct commit_args *a;
    int err;
};
static int sink_write(void *data, const char *buf, size_t len)
{
    struct mp_sink *s = data;
    if (len == 0)
        return 0;
    if (reserve(s->a, len)) {
        s->err = -1;
        return -1;
    }
    memcpy(s->a->buf + s->a->used, buf, len);
    s->a->used += len;
    return 0;
}

static void pk_str(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str_with_body(pk, s, n);
}
static void pk_cstr(msgpack_packer *pk, const char *s)
{
    pk_str(pk, s, strlen(s));
}

static void free_tables(struct commit_args *a)
{
    free(a->dpos);
    free(a->dlist);
    free(a->rrpos);
    free(a->rrlist);
    free(a->rrdelta);
    free(a->count_day);
    free(a->bk);
    free(a->bkseen);
    a->table = NULL;
}

void commit_args_free(struct commit_args *a)
{
    free_tables(a);
    free(a->buf);
    struct commit_vec *v[] = {&a->head, &a->leads, &a->exist, &a->digests, &a->unassigned, &a->dead, &a->bodies};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        free(v[i]->p);
    free(a->body_dealer);
    free(a->argv);
    free(a->len);
    free(a->stats);
    free(a->stat_slot);
    memset(a, 0, sizeof *a);
}

static int tables_for(struct commit_args *a, const struct rules_table *t)
{
    if (a->table == t) {
        for (uint32_t i = 0; i < a->nd; i++)
            a->dpos[a->dlist[i].di] = 0;
        for (uint32_t i = 0; i < a->nrr; i++)
            a->rrpos[a->rrlist[i]] = 0;
        return 0;
    }
    free_tables(a);
    size_t n = t->n_dealers ? t->n_dealers : 1, nz = t->n_tzs ? t->n_tzs : 1;
    size_t nr = t->n_rr_slots ? t->n_rr_slots : 1;
    a->dpos = calloc(n, sizeof *a->dpos);
    a->dlist = calloc(n, sizeof *a->dlist);
    a->rrpos = calloc(nr, sizeof *a->rrpos);
    a->rrlist = calloc(nr, sizeof *a->rrlist);
    a->rrdelta = calloc(nr, sizeof *a->rrdelta);
    a->count_day = calloc(n, 1);
    a->bk = calloc(nz, sizeof *a->bk);
    a->bkseen = calloc(nz, sizeof *a->bkseen);
    a->bkgen = 0;
    if (!a->dpos || !a->dlist || !a->rrpos || !a->rrlist || !a->rrdelta || !a->count_day || !a->bk || !a->bkseen)
        return -1;
    /* least_loaded orders by today's count, capped or not: keep it. */
    for (uint32_t d = 0; d < t->n_dealers; d++)
        for (uint32_t k = 0; k < t->dealers[d].n_niches; k++)
            if (t->niches[t->dealers[d].niches[k]].strategy == STRAT_LEAST_LOADED)
                a->count_day[d] = 1;
    a->table = t;
    return 0;
}

int commit_begin(struct commit_args *a, const struct cfg *c, enum commit_mode mode, const char *consumer,
                 const char *inkey, int64_t now_ms)
{
    a->used = 0;
    a->head.n = a->leads.n = a->exist.n = a->digests.n = a->unassigned.n = a->dead.n = a->bodies.n = 0;
    a->leads_n = 0;
    a->mode = mode;
    a->now_ms = now_ms;
    a->nstats = 0;
    if (a->stat_slot)
        memset(a->stat_slot, 0, a->stat_slots * sizeof *a->stat_slot);
    a->fence_lo[0] = a->fence_hi[0] = 0;
    if (tables_for(a, c->rules))
        return -1;
    a->nd = 0;
    a->nrr = 0;
    if (++a->bkgen == 0) {
        memset(a->bkseen, 0, (c->rules->n_tzs ? c->rules->n_tzs : 1) * sizeof *a->bkseen);
        a->bkgen = 1;
    }
    snprintf(a->prefix, sizeof a->prefix, "%s", c->prefix);
    snprintf(a->consumer, sizeof a->consumer, "%s", consumer);
    snprintf(a->inkey, sizeof a->inkey, "%s", inkey);
    /* The header: every position of LR_COMMIT_HEAD, counts filled in by
     * commit_end. */
    static const char *const mode_s[] = {"stream", "list", "return"};
    char seqkey[300], cur[256], prev[256];
    int64_t expireat = 0;
    snprintf(seqkey, sizeof seqkey, "%s:seq:%s", c->prefix, consumer);
    bool dedup = mode != COMMIT_RETURN && c->dedup.action != DEDUP_IGNORE && c->dedup.window > 0 &&
                 (c->dedup.phone || c->dedup.email);
    cur[0] = prev[0] = 0;
    if (dedup)
        commit_seen_keys(c, now_ms, cur, prev, sizeof cur, &expireat);
    time_t tt = (time_t)(now_ms / 1000);
    struct tm tm;
    char hour[16];
    gmtime_r(&tt, &tm);
    strftime(hour, sizeof hour, "%Y%m%d%H", &tm);
    int rc = 0;
    for (int i = 1; i < LR_ARG_END_ && rc == 0; i++) {
        switch (i) {
        case LR_ARG_MODE: rc = vpushs(a, &a->head, mode_s[mode]); break;
        case LR_ARG_INKEY: rc = vpushs(a, &a->head, inkey); break;
        case LR_ARG_GROUP: rc = vpushs(a, &a->head, c->input.group); break;
        case LR_ARG_CONSUMER: rc = vpushs(a, &a->head, consumer); break;
        case LR_ARG_SEQKEY: rc = vpushs(a, &a->head, seqkey); break;
        case LR_ARG_RECORD_TTL: rc = vpushf(a, &a->head, "%" PRId64, c->routing.record_ttl); break;
        case LR_ARG_AUDIT_KEY: rc = vpushf(a, &a->head, "%s:audit", c->prefix); break;
        case LR_ARG_AUDIT_MAXLEN: rc = vpushf(a, &a->head, "%" PRId64, c->routing.audit_maxlen); break;
        case LR_ARG_UNASSIGNED_KEY: rc = vpushf(a, &a->head, "%s:unassigned", c->prefix); break;
        case LR_ARG_DEAD_KEY: rc = vpushf(a, &a->head, "%s:dead", c->prefix); break;
        case LR_ARG_STATS_KEY: rc = vpushf(a, &a->head, "%s:stats:%s", c->prefix, hour); break;
        case LR_ARG_SEEN_CUR: rc = vpushs(a, &a->head, cur); break;
        case LR_ARG_SEEN_PREV: rc = vpushs(a, &a->head, prev); break;
        case LR_ARG_SEEN_EXPIREAT: rc = vpushf(a, &a->head, "%" PRId64, expireat); break;
        default: rc = vpush(a, &a->head, "", 0); break; /* set by commit_end or commit_set_expect */
        }
    }
    return rc ? -1 : 0;
}

int commit_set_expect(struct commit_args *a, const char *rec, size_t len)
{
    struct commit_piece pc;
    if (put(a, rec, len, &pc))
        return -1;
    a->head.p[LR_ARG_EXPECT - 1] = pc;
    return 0;
}

/* ------------------------------------------------------------- stats --- */

static int stats_rehash(struct commit_args *a, size_t slots)
{
    uint32_t *ns = calloc(slots, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < a->nstats; i++) {
        size_t h = lr_fnv1a(a->buf + a->stats[i].off, a->stats[i].len) & (slots - 1);
        while (ns[h])
            h = (h + 1) & (slots - 1);
        ns[h] = (uint32_t)i + 1;
    }
    free(a->stat_slot);
    a->stat_slot = ns;
    a->stat_slots = slots;
    return 0;
}

/* Adds n to the batch's statistics field made of the parts given. */
static int stat_add(struct commit_args *a, int64_t n, const char *p1, size_t l1, const char *p2, size_t l2,
                    const char *p3, size_t l3)
{
    char f[400];
    if (l1 + l2 + l3 >= sizeof f)
        return 0; /* longer than any label keeps: not counted */
    memcpy(f, p1, l1);
    if (l2)
        memcpy(f + l1, p2, l2);
    if (l3)
        memcpy(f + l1 + l2, p3, l3);
    size_t fl = l1 + l2 + l3;
    if ((a->nstats + 1) * 2 > a->stat_slots && stats_rehash(a, a->stat_slots ? a->stat_slots * 2 : 256))
        return -1;
    size_t h = lr_fnv1a(f, fl) & (a->stat_slots - 1);
    for (; a->stat_slot[h]; h = (h + 1) & (a->stat_slots - 1)) {
        struct commit_stat *s = &a->stats[a->stat_slot[h] - 1];
        if (s->len == fl && memcmp(a->buf + s->off, f, fl) == 0) {
            s->n += n;
            return 0;
        }
    }
    if (grow((void **)&a->stats, &a->capstats, a->nstats + 1, sizeof *a->stats))
        return -1;
    struct commit_piece pc;
    if (put(a, f, fl, &pc))
        return -1;
    a->stats[a->nstats] = (struct commit_stat){pc.off, pc.len, n};
    a->stat_slot[h] = (uint32_t)++a->nstats;
    return 0;
}

static int stat1(struct commit_args *a, const char *f)
{
    return stat_add(a, 1, f, strlen(f), NULL, 0, NULL, 0);
}

/* received (not for a return), the outcome, and by source and niche. */
static int counted(struct commit_args *a, const char *what, struct lr_str source, const char *niche)
{
    size_t wl = strlen(what);
    char sfx[64];
    int sl = snprintf(sfx, sizeof sfx, ":%s", what);
    int rc = 0;
    if (a->mode != COMMIT_RETURN)
        rc |= stat1(a, "received");
    rc |= stat_add(a, 1, what, wl, NULL, 0, NULL, 0);
    if (source.len)
        rc |= stat_add(a, 1, "source:", 7, source.p, source.len, sfx, (size_t)sl);
    if (niche && *niche)
        rc |= stat_add(a, 1, "niche:", 6, niche, strlen(niche), sfx, (size_t)sl);
    return rc;
}

/* ------------------------------------------------------------- leads --- */

static void stream_id(const char *ref, uint64_t *ms, uint64_t *seq)
{
    char *e;
    *ms = strtoull(ref, &e, 10);
    *seq = *e == '-' ? strtoull(e + 1, NULL, 10) : 0;
}

static void note_ref(struct commit_args *a, const char *ref)
{
    if (a->mode == COMMIT_LIST)
        return;
    uint64_t ms, seq;
    stream_id(ref, &ms, &seq);
    if (!a->fence_lo[0] || ms < a->lo_ms || (ms == a->lo_ms && seq < a->lo_seq)) {
        a->lo_ms = ms;
        a->lo_seq = seq;
        snprintf(a->fence_lo, sizeof a->fence_lo, "%s", ref);
    }
    if (!a->fence_hi[0] || ms > a->hi_ms || (ms == a->hi_ms && seq > a->hi_seq)) {
        a->hi_ms = ms;
        a->hi_seq = seq;
        snprintf(a->fence_hi, sizeof a->fence_hi, "%s", ref);
    }
}

/* The lead's 5 arguments (LEAD_W). rec/audit: pieces already in buf. */
static int add_lead(struct commit_args *a, const struct commit_src *src, const char *id, size_t id_len,
                    const char *reckey, struct commit_piece rec, struct commit_piece audit)
{
    note_ref(a, src->ref);
    int rc = a->mode == COMMIT_LIST ? vpush(a, &a->leads, src->payload, src->payload_len)
                                    : vpushs(a, &a->leads, src->ref);
    rc |= vpush(a, &a->leads, id, id_len);
    rc |= vpushs(a, &a->leads, reckey);
    rc |= vec_add(&a->leads, rec);
    rc |= vec_add(&a->leads, audit);
    a->leads_n++;
    return rc ? -1 : 0;
}

static struct commit_piece no_piece(void)
{
    return (struct commit_piece){0, 0};
}

int commit_add_dead(struct commit_args *a, const struct commit_src *src, const char *error)
{
    struct mp_sink s = {a, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &s, sink_write);
    size_t off = a->used;
    msgpack_pack_map(&pk, 4);
    pk_cstr(&pk, "error");
    pk_cstr(&pk, error);
    pk_cstr(&pk, "payload");
    msgpack_pack_bin_with_body(&pk, src->payload, src->payload_len);
    pk_cstr(&pk, "at");
    msgpack_pack_int64(&pk, a->now_ms);
    pk_cstr(&pk, "ref");
    pk_cstr(&pk, a->mode == COMMIT_LIST ? "list" : src->ref);
    if (s.err || vec_add(&a->dead, (struct commit_piece){off, a->used - off}))
        return -1;
    /* Undecodable input has no trustworthy id: no record, no audit. */
    if (add_lead(a, src, "", 0, "", no_piece(), no_piece()))
        return -1;
    int rc = a->mode != COMMIT_RETURN ? stat1(a, "received") : 0;
    return rc | stat1(a, "dead");
}

/* The compact "dealer=why" list of the dealers passed over (filtered,
 * closed, paused, capped, not picked...), for the audit stream. */
static size_t passed_list(const struct rules_table *t, const struct rules_decision *d, char *buf, size_t cap)
{
    size_t o = 0;
    for (uint32_t i = 0; d && i < d->n_verdicts; i++) {
        const struct rules_verdict *v = &d->verdicts[i];
        if (v->why == WHY_CANDIDATE || v->why == WHY_PICKED)
            continue;
        /* Appended by hand: this runs for every lead and every dealer it
         * passed over, and printf's parsing was a visible cost. */
        const char *id = t->dealers[v->dealer].id, *why = rules_why_str((enum rules_why)v->why);
        size_t il = strlen(id), wl = strlen(why), need = (o ? 1 : 0) + il + 1 + wl;
        if (o + need >= cap)
            break; /* the audit keeps what fits */
        if (o)
            buf[o++] = ',';
        memcpy(buf + o, id, il);
        o += il;
        buf[o++] = '=';
        memcpy(buf + o, why, wl);
        o += wl;
    }
    buf[o] = 0;
    return o;
}

static uint32_t dealer_pos(struct commit_args *a, uint32_t di)
{
    if (!a->dpos[di]) {
        const struct rules_dealer *d = &a->table->dealers[di];
        struct commit_dealer *cd = &a->dlist[a->nd];
        memset(cd, 0, sizeof *cd);
        cd->di = di;
        for (int p = 0; p < PERIOD_N; p++)
            if (d->caps[p] || (p == PERIOD_DAY && a->count_day[di]))
                cd->period[cd->nk++] = (uint8_t)p;
        a->dpos[di] = ++a->nd;
    }
    return a->dpos[di] - 1;
}

static int add_body(struct commit_args *a, uint32_t dpos, bool hot, struct commit_piece pc)
{
    if (vec_add(&a->bodies, pc) || grow((void **)&a->body_dealer, &a->body_cap, a->bodies.n, sizeof(uint32_t)))
        return -1;
    a->body_dealer[a->bodies.n - 1] = dpos | (hot ? 0x80000000u : 0);
    if (hot)
        a->dlist[dpos].nhot++;
    else
        a->dlist[dpos].npush++;
    a->dlist[dpos].delta++;
    return 0;
}

/* The record: {dealers, returned, attempt, niche, outcome, at, ref, payload}. */
static int put_record(struct commit_args *a, const char *dealers, const char *returned, int attempt,
                      const char *niche, const char *outcome, const char *ref, const char *payload, size_t plen,
                      struct commit_piece *out)
{
    struct mp_sink s = {a, 0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &s, sink_write);
    size_t off = a->used;
    msgpack_pack_map(&pk, 8);
    pk_cstr(&pk, "dealers");
    pk_cstr(&pk, dealers);
    pk_cstr(&pk, "returned");
    pk_cstr(&pk, returned);
    pk_cstr(&pk, "attempt");
    msgpack_pack_int(&pk, attempt);
    pk_cstr(&pk, "niche");
    pk_cstr(&pk, niche);
    pk_cstr(&pk, "outcome");
    pk_cstr(&pk, outcome);
    pk_cstr(&pk, "at");
    msgpack_pack_int64(&pk, a->now_ms);
    pk_cstr(&pk, "ref");
    pk_cstr(&pk, ref);
    pk_cstr(&pk, "payload");
    msgpack_pack_bin_with_body(&pk, payload, plen);
    *out = (struct commit_piece){off, a->used - off};
    return s.err;
}

/* The audit decision: outcome, dealers, rule, niche, attempt, passed, ref,
 * tab-separated (daemon/why.c reads it). */
static int put_audit(struct commit_args *a, const char *outcome, const char *dealers, const char *rule,
                     const char *niche, int attempt, const char *passed, const char *ref, struct commit_piece *out)
{
    char buf[6144];
    int n = snprintf(buf, sizeof buf, "%s\t%s\t%s\t%s\t%d\t%s\t%s", outcome, dealers, rule, niche, attempt, passed,
                     ref);
    if (n < 0)
        return -1;
    return put(a, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1, out);
}

static int add_digests(struct commit_args *a, const struct commit_src *src, const char *dealer)
{
    char v[200];
    size_t vl = dealer ? commit_seen_value(dealer, a->now_ms, v, sizeof v) : 0;
    int rc = 0;
    for (uint32_t i = 0; i < src->n_digests; i++) {
        rc |= vpushs(a, &a->digests, src->digest[i]);
        rc |= vpushs(a, &a->digests, src->digest_now[i] ? src->digest_now[i] : "");
        rc |= vpush(a, &a->digests, v, vl);
    }
    return rc;
}

static void join(char *out, size_t cap, const char *a, const char *b)
{
    snprintf(out, cap, "%s%s%s", a ? a : "", a && *a && b && *b ? "," : "", b ? b : "");
}

int commit_add_route(struct commit_args *a, const struct cfg *c, const struct commit_src *src, const struct lead *l,
                     const struct rules_decision *d, const struct commit_rr *rr, uint32_t n_rr)
{
    const struct rules_table *t = c->rules;
    if (a->table != t)
        return -1;
    char reckey[300];
    snprintf(reckey, sizeof reckey, "%s:lead:%.*s", a->prefix, (int)l->id.len, l->id.p ? l->id.p : "");
    const char *niche = d && d->niche >= 0 ? t->niches[d->niche].name : "";
    const char *refusal = src->refusal;
    bool assigned = !refusal && d && d->reason == REASON_ASSIGNED && d->n_picked > 0;
    const char *reason = refusal ? refusal : assigned ? "assigned" : rules_reason_str(d->reason);
    char passed[4096];
    passed_list(t, refusal ? NULL : d, passed, sizeof passed);
    struct commit_piece rec = no_piece(), audit = no_piece();
    int rc = 0;
    if (!assigned) {
        /* {lead_id, reason, niche, at, lead} */
        struct mp_sink s = {a, 0};
        msgpack_packer pk;
        msgpack_packer_init(&pk, &s, sink_write);
        size_t off = a->used;
        msgpack_pack_map(&pk, 5);
        pk_cstr(&pk, "lead_id");
        pk_str(&pk, l->id.p, l->id.len);
        pk_cstr(&pk, "reason");
        pk_cstr(&pk, reason);
        pk_cstr(&pk, "niche");
        pk_cstr(&pk, niche);
        pk_cstr(&pk, "at");
        msgpack_pack_int64(&pk, a->now_ms);
        pk_cstr(&pk, "lead");
        if (reserve(a, src->payload_len))
            return -1;
        memcpy(a->buf + a->used, src->payload, src->payload_len);
        a->used += src->payload_len;
        if (s.err || vec_add(&a->unassigned, (struct commit_piece){off, a->used - off}))
            return -1;
        rc |= put_audit(a, reason, "", "", niche, src->attempt, passed, src->ref, &audit);
        /* duplicate_id writes no record: the first one stands. */
        if (!refusal || strcmp(refusal, "duplicate_id") != 0)
            rc |= put_record(a, src->had ? src->had : "", src->returned ? src->returned : "", src->attempt, niche,
                             reason, src->ref, src->payload, src->payload_len, &rec);
        rc |= counted(a, "unassigned", l->source, niche);
        rc |= stat_add(a, 1, "unassigned:", 11, reason, strlen(reason), NULL, 0);
        if (src->exist_key)
            rc |= vpushs(a, &a->exist, src->exist_key);
        if (refusal == NULL || strcmp(refusal, "duplicate_id") != 0)
            rc |= add_digests(a, src, NULL);
        rc |= add_lead(a, src, l->id.p, l->id.len, refusal && strcmp(refusal, "duplicate_id") == 0 ? "" : reckey,
                       rec, audit);
        return rc ? -1 : 0;
    }
    /* Assigned: one assignment per pick (SPEC section 3), built whole. */
    char ids[1024] = "", rule[32] = "";
    size_t il = 0;
    const char *grade = t->grades[d->grade].name;
    for (uint32_t i = 0; i < d->n_picked; i++) {
        uint32_t di = d->picked[i];
        const char *id = t->dealers[di].id;
        rules_rule_str(t, d, di, rule, sizeof rule);
        struct mp_sink s = {a, 0};
        msgpack_packer pk;
        msgpack_packer_init(&pk, &s, sink_write);
        size_t off = a->used;
        msgpack_pack_map(&pk, 9);
        pk_cstr(&pk, "lead_id");
        pk_str(&pk, l->id.p, l->id.len);
        pk_cstr(&pk, "niche");
        pk_cstr(&pk, niche);
        pk_cstr(&pk, "score");
        msgpack_pack_int(&pk, d->score);
        pk_cstr(&pk, "grade");
        pk_cstr(&pk, grade);
        pk_cstr(&pk, "attempt");
        msgpack_pack_int(&pk, src->attempt);
        pk_cstr(&pk, "dealer");
        pk_cstr(&pk, id);
        pk_cstr(&pk, "rule");
        pk_cstr(&pk, rule);
        pk_cstr(&pk, "routed_at");
        msgpack_pack_int64(&pk, a->now_ms);
        pk_cstr(&pk, "lead");
        if (s.err || reserve(a, src->payload_len))
            return -1;
        memcpy(a->buf + a->used, src->payload, src->payload_len);
        a->used += src->payload_len;
        if (add_body(a, dealer_pos(a, di), d->hot, (struct commit_piece){off, a->used - off}))
            return -1;
        int n = snprintf(ids + il, sizeof ids - il, "%s%s", il ? "," : "", id);
        if (n > 0 && (size_t)n < sizeof ids - il)
            il += (size_t)n;
        rc |= stat_add(a, 1, "dealer:", 7, id, strlen(id), ":assigned", 9);
    }
    for (uint32_t i = 0; i < n_rr; i++) {
        uint32_t slot = rr[i].slot;
        if (!a->rrpos[slot]) {
            a->rrlist[a->nrr] = slot;
            a->rrdelta[a->nrr] = 0;
            a->rrpos[slot] = ++a->nrr;
        }
        a->rrdelta[a->rrpos[slot] - 1] += rr[i].delta;
    }
    char all[2048];
    join(all, sizeof all, src->had, ids);
    rc |= put_audit(a, "assigned", ids, rule, niche, src->attempt, passed, src->ref, &audit);
    rc |= put_record(a, all, src->returned ? src->returned : "", src->attempt, niche, "assigned", src->ref,
                     src->payload, src->payload_len, &rec);
    rc |= counted(a, "assigned", l->source, niche);
    if (a->mode == COMMIT_RETURN)
        rc |= stat1(a, "returned");
    if (src->exist_key)
        rc |= vpushs(a, &a->exist, src->exist_key);
    /* A shared lead is remembered by its first pick. */
    rc |= add_digests(a, src, t->dealers[d->picked[0]].id);
    rc |= add_lead(a, src, l->id.p, l->id.len, reckey, rec, audit);
    return rc ? -1 : 0;
}

/* --------------------------------------------------------------- end --- */

static int arg(struct commit_args *a, const char *p, size_t n)
{
    if (a->argc == a->argcap) {
        size_t nc = a->argcap ? a->argcap * 2 : 1024;
        const char **nv = realloc(a->argv, nc * sizeof *nv);
        if (!nv)
            return -1;
        a->argv = nv;
        size_t *nl = realloc(a->len, nc * sizeof *nl);
        if (!nl)
            return -1;
        a->len = nl;
        a->argcap = nc;
    }
    a->argv[a->argc] = p;
    a->len[a->argc++] = n;
    return 0;
}

static int arg_vec(struct commit_args *a, const struct commit_vec *v)
{
    for (size_t i = 0; i < v->n; i++)
        if (arg(a, a->buf + v->p[i].off, v->p[i].len))
            return -1;
    return 0;
}

static void set_head(struct commit_args *a, int pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_head(struct commit_args *a, int pos, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    struct commit_piece pc = {0, 0};
    if (n >= 0 && put(a, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1, &pc) == 0)
        a->head.p[pos - 1] = pc;
}

int commit_end(struct commit_args *a, uint64_t seq, uint64_t prev)
{
    const struct rules_table *t = a->table;
    /* The dealer section is made here: its keys, buckets and counts. */
    struct commit_vec dv = {0};
    int rc = 0;
    int64_t now_s = a->now_ms / 1000;
    for (uint32_t i = 0; i < a->nd && rc == 0; i++) {
        struct commit_dealer *cd = &a->dlist[i];
        const struct rules_dealer *d = &t->dealers[cd->di];
        rc |= vpushf(a, &dv, "%s:dealer:%s", a->prefix, d->id);
        rc |= vpushf(a, &dv, "%u", t->hot[cd->di].max_pending);
        rc |= vpushf(a, &dv, "%u", cd->delta);
        rc |= vpushf(a, &dv, "%u", cd->nk);
        rc |= vpushf(a, &dv, "%u", cd->npush);
        rc |= vpushf(a, &dv, "%u", cd->nhot);
        char(*bk)[16] = a->bk[d->tz];
        if (a->bkseen[d->tz] != a->bkgen) {
            for (int p = 0; p < PERIOD_N; p++)
                rules_cap_bucket(t, cd->di, (enum rules_period)p, now_s, bk[p], sizeof bk[p]);
            a->bkseen[d->tz] = a->bkgen;
        }
        static const char *const pname[PERIOD_N] = {"hour", "day", "week", "month"};
        static const int ttl[PERIOD_N] = {2 * 3600, 2 * 86400, 8 * 86400, 32 * 86400};
        for (int k = 0; k < cd->nk; k++) {
            int p = cd->period[k];
            rc |= vpushf(a, &dv, "%s:cap:%s:%s:%s", a->prefix, d->id, pname[p], bk[p]);
            rc |= vpushf(a, &dv, "%u", d->caps[p]);
            rc |= vpushf(a, &dv, "%d", ttl[p]);
        }
        /* The bodies go in below, by position (filled in the argv pass). */
    }
    struct commit_vec rv = {0}, sv = {0};
    for (uint32_t i = 0; i < a->nrr && rc == 0; i++) {
        uint32_t slot = a->rrlist[i], nd = t->n_dealers;
        const struct rules_dealer *d = &t->dealers[slot % nd];
        rc |= vpushf(a, &rv, "%s:rr:%s:%d", a->prefix, t->niches[slot / nd].name, d->tier);
        rc |= vpushs(a, &rv, d->id);
        rc |= vpushf(a, &rv, "%" PRId64, a->rrdelta[i]);
    }
    for (size_t i = 0; i < a->nstats && rc == 0; i++) {
        rc |= vec_add(&sv, (struct commit_piece){a->stats[i].off, a->stats[i].len});
        rc |= vpushf(a, &sv, "%" PRId64, a->stats[i].n);
    }
    set_head(a, LR_ARG_FENCE_LO, "%s", a->fence_lo[0] ? a->fence_lo : "-");
    set_head(a, LR_ARG_FENCE_HI, "%s", a->fence_hi[0] ? a->fence_hi : "+");
    set_head(a, LR_ARG_SEQ, "%" PRIu64, seq);
    set_head(a, LR_ARG_PREV, "%" PRIu64, prev);
    set_head(a, LR_ARG_N_LEADS, "%d", a->leads_n);
    set_head(a, LR_ARG_N_EXIST, "%zu", a->exist.n);
    set_head(a, LR_ARG_N_DIGESTS, "%zu", a->digests.n / LR_DIGEST_W);
    set_head(a, LR_ARG_N_DEALERS, "%u", a->nd);
    set_head(a, LR_ARG_N_RR, "%u", a->nrr);
    set_head(a, LR_ARG_N_STATS, "%zu", a->nstats);
    set_head(a, LR_ARG_N_UNASSIGNED, "%zu", a->unassigned.n);
    set_head(a, LR_ARG_N_DEAD, "%zu", a->dead.n);
    /* The argv: buf does not move from here on. */
    a->argc = 0;
    for (int i = 0; i < HEAD_ARGS; i++)
        rc |= arg(a, "", 0);
    rc |= arg_vec(a, &a->head);
    rc |= arg_vec(a, &a->leads);
    rc |= arg_vec(a, &a->exist);
    rc |= arg_vec(a, &a->digests);
    /* The bodies by dealer, pushes then hot ones, in commit order: a
     * counting sort over (dealer, hot). */
    size_t *start = calloc(2 * (size_t)a->nd + 1, sizeof *start), *order = malloc((a->bodies.n + 1) * sizeof *order);
    if (!start || !order)
        rc = -1;
    for (size_t b = 0; rc == 0 && b < a->bodies.n; b++) {
        uint32_t bd = a->body_dealer[b];
        start[2 * (bd & 0x7fffffffu) + (bd >> 31) + 1]++;
    }
    for (size_t i = 1; rc == 0 && i <= 2 * (size_t)a->nd; i++)
        start[i] += start[i - 1];
    for (size_t b = 0; rc == 0 && b < a->bodies.n; b++) {
        uint32_t bd = a->body_dealer[b];
        order[start[2 * (bd & 0x7fffffffu) + (bd >> 31)]++] = b;
    }
    size_t k = 0, ob = 0;
    for (uint32_t i = 0; i < a->nd && rc == 0; i++) {
        size_t w = LR_DEALER_W + (size_t)LR_CAPKEY_W * a->dlist[i].nk;
        for (size_t j = 0; j < w; j++, k++)
            rc |= arg(a, a->buf + dv.p[k].off, dv.p[k].len);
        for (uint32_t j = 0; j < a->dlist[i].npush + a->dlist[i].nhot; j++, ob++)
            rc |= arg(a, a->buf + a->bodies.p[order[ob]].off, a->bodies.p[order[ob]].len);
    }
    free(start);
    free(order);
    rc |= arg_vec(a, &rv);
    rc |= arg_vec(a, &sv);
    rc |= arg_vec(a, &a->unassigned);
    rc |= arg_vec(a, &a->dead);
    free(dv.p);
    free(rv.p);
    free(sv.p);
    return rc ? -1 : 0;
}

int commit_count(const struct commit_args *a)
{
    return a->leads_n;
}

const char *commit_ref(const struct commit_args *a, int k, size_t *len)
{
    if (k < 0 || k >= a->leads_n)
        return NULL;
    const struct commit_piece *p = &a->leads.p[(size_t)k * LR_LEAD_W];
    *len = p->len;
    return a->buf + p->off;
}

/* ----------------------------------------------------- digests, records --- */

size_t commit_seen_value(const char *dealer, int64_t ms, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s\t%" PRId64, dealer, ms);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

bool commit_seen_parse(const char *v, size_t len, char *dealer, size_t cap, int64_t *ms)
{
    const char *tab = memchr(v, '\t', len);
    if (!tab || (size_t)(tab - v) >= cap)
        return false;
    memcpy(dealer, v, (size_t)(tab - v));
    dealer[tab - v] = 0;
    char num[32];
    size_t nl = len - (size_t)(tab - v) - 1;
    if (nl == 0 || nl >= sizeof num)
        return false;
    memcpy(num, tab + 1, nl);
    num[nl] = 0;
    *ms = strtoll(num, NULL, 10);
    return true;
}

/* Buckets of dedup.window seconds: a digest written now lives in the
 * current one; one within the window is in it or the one before. */
void commit_seen_keys(const struct cfg *c, int64_t now_ms, char *cur, char *prev, size_t cap, int64_t *expireat)
{
    int64_t w = c->dedup.window > 0 ? c->dedup.window : 1, idx = now_ms / 1000 / w;
    snprintf(cur, cap, "%s:seen:%" PRId64, c->prefix, idx);
    snprintf(prev, cap, "%s:seen:%" PRId64, c->prefix, idx - 1);
    *expireat = (idx + 2) * w;
}

/* Calling codes for the national form of a number (E.164 needs the
 * country): ISO country, code, and whether the national trunk '0' stays
 * in the international form (Italy's does). Countries not listed keep
 * their digits as given. NANP (US, CA) is handled apart. */
static const struct {
    char iso[3];
    char code[4];
    bool keep0;
} calling_codes[] = {
    {"AR", "54", false},  {"AT", "43", false}, {"AU", "61", false}, {"BE", "32", false},
    {"BR", "55", false},  {"CH", "41", false}, {"CL", "56", false}, {"CO", "57", false},
    {"CZ", "420", false}, {"DE", "49", false}, {"DK", "45", false}, {"ES", "34", false},
    {"FI", "358", false}, {"FR", "33", false}, {"GB", "44", false}, {"GR", "30", false},
    {"HU", "36", false},  {"IE", "353", false}, {"IL", "972", false}, {"IN", "91", false},
    {"IT", "39", true},   {"JP", "81", false}, {"MX", "52", false}, {"NL", "31", false},
    {"NO", "47", false},  {"NZ", "64", false}, {"PH", "63", false}, {"PL", "48", false},
    {"PT", "351", false}, {"RO", "40", false}, {"SE", "46", false}, {"SG", "65", false},
    {"TR", "90", false},  {"ZA", "27", false},
};

size_t commit_norm_phone(struct lr_str in, const char *country, char *out, size_t cap)
{
    char d[64];
    size_t n = 0;
    bool plus = false;
    for (uint32_t i = 0; i < in.len && n + 1 < sizeof d; i++) {
        if (in.p[i] >= '0' && in.p[i] <= '9')
            d[n++] = in.p[i];
        else if (in.p[i] == '+' && n == 0)
            plus = true;
    }
    d[n] = 0;
    const char *cc = "", *body = d;
    bool nanp = country && (strcasecmp(country, "US") == 0 || strcasecmp(country, "CA") == 0);
    if (plus || n == 0) {
        /* international already */
    } else if (nanp) {
        if (strncmp(d, "011", 3) == 0)
            body = d + 3; /* NANP's international prefix */
        else if (n == 10)
            cc = "1";
    } else if (strncmp(d, "00", 2) == 0) {
        body = d + 2; /* the international prefix of most countries */
    } else {
        for (size_t k = 0; country && k < sizeof calling_codes / sizeof calling_codes[0]; k++)
            if (strcasecmp(country, calling_codes[k].iso) == 0) {
                cc = calling_codes[k].code;
                if (d[0] == '0' && !calling_codes[k].keep0)
                    body = d + 1; /* the national trunk prefix */
                break;
            }
    }
    int w = snprintf(out, cap, "%s%s", cc, body);
    return w < 0 ? 0 : (size_t)w < cap ? (size_t)w : cap - 1;
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

void commit_sha1_hex(const char *prefix, const char *s, size_t n, char out[41])
{
    /* Fetched once and reused: a fetch and a context per digest cost more
     * than the digest itself (a daemon is one thread). */
    static EVP_MD *sha1;
    static EVP_MD_CTX *ctx;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    out[0] = 0;
    if (!sha1)
        sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
    if (!ctx)
        ctx = EVP_MD_CTX_new();
    if (!sha1 || !ctx)
        return;
    if (EVP_DigestInit_ex(ctx, sha1, NULL) == 1 && EVP_DigestUpdate(ctx, prefix, strlen(prefix)) == 1 &&
        EVP_DigestUpdate(ctx, s, n) == 1 && EVP_DigestFinal_ex(ctx, md, &ml) == 1) {
        static const char hx[] = "0123456789abcdef";
        for (unsigned i = 0; i < ml && i < 20; i++) {
            out[2 * i] = hx[md[i] >> 4];
            out[2 * i + 1] = hx[md[i] & 15];
        }
        out[40] = 0;
    }
}

static void copy_obj(char *dst, size_t cap, const msgpack_object *o)
{
    size_t n = 0;
    if (o->type == MSGPACK_OBJECT_STR) {
        n = o->via.str.size < cap ? o->via.str.size : cap - 1;
        if (n)
            memcpy(dst, o->via.str.ptr, n);
    }
    dst[n] = 0;
}

int commit_record_parse(const char *v, size_t len, struct commit_record *r)
{
    memset(r, 0, sizeof *r);
    msgpack_zone z;
    if (!msgpack_zone_init(&z, 2048))
        return -1;
    msgpack_object o;
    size_t off = 0;
    int rc = -1;
    if (msgpack_unpack(v, len, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS && o.type == MSGPACK_OBJECT_MAP) {
        rc = 0;
        for (uint32_t i = 0; i < o.via.map.size; i++) {
            const msgpack_object *k = &o.via.map.ptr[i].key, *x = &o.via.map.ptr[i].val;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            char name[16];
            copy_obj(name, sizeof name, k);
            if (strcmp(name, "dealers") == 0)
                copy_obj(r->dealers, sizeof r->dealers, x);
            else if (strcmp(name, "returned") == 0)
                copy_obj(r->returned, sizeof r->returned, x);
            else if (strcmp(name, "niche") == 0)
                copy_obj(r->niche, sizeof r->niche, x);
            else if (strcmp(name, "outcome") == 0)
                copy_obj(r->outcome, sizeof r->outcome, x);
            else if (strcmp(name, "ref") == 0)
                copy_obj(r->ref, sizeof r->ref, x);
            else if (strcmp(name, "attempt") == 0 && x->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                r->attempt = (int)x->via.u64;
            else if (strcmp(name, "at") == 0 && x->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                r->at = (int64_t)x->via.u64;
            else if (strcmp(name, "payload") == 0 && x->type == MSGPACK_OBJECT_BIN) {
                /* The bin body is inside v: point at it there. */
                const char *p = x->via.bin.ptr;
                if (p >= v && p + x->via.bin.size <= v + len) {
                    r->payload = p;
                    r->payload_len = x->via.bin.size;
                }
            }
        }
        if (r->attempt < 1 || !r->payload)
            rc = -1;
    }
    msgpack_zone_destroy(&z);
    return rc;
}
