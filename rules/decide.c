/* decide.c - SPEC section 5 steps 2-7: niche, score and grade, territory,
 * contract (min_score, grades, filters), pause, hours, exclusivity, tiers.
 * Pure: every changing fact (now, pauses, usage) comes in rules_input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct rules_scratch *rules_scratch_new(const struct rules_table *t)
{
    struct rules_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    uint32_t n = t->n_dealers ? t->n_dealers : 1;
    s->n_dealers = t->n_dealers;
    s->best = calloc(n, sizeof *s->best);
    s->bits = calloc(n / 64 + 1, sizeof *s->bits);
    s->words = calloc(n / 64 + 1, sizeof *s->words);
    s->n_fkeys = t->n_fkeys;
    s->fgen = calloc(t->n_fkeys ? t->n_fkeys : 1, sizeof *s->fgen);
    s->fval = calloc(t->n_fkeys ? t->n_fkeys : 1, sizeof *s->fval);
    s->pre = calloc(RULES_PRE_RING, sizeof *s->pre);
    s->n_rids = t->n_rids;
    s->rgen = calloc(t->n_rids ? t->n_rids : 1, sizeof *s->rgen);
    s->rval = calloc(t->n_rids ? t->n_rids : 1, sizeof *s->rval);
    s->verdicts = calloc(n, sizeof *s->verdicts);
    s->cand = calloc(n, sizeof *s->cand);
    s->key = calloc(n, sizeof *s->key);
    s->ord = calloc(n, sizeof *s->ord);
    s->cidx = calloc(n, sizeof *s->cidx);
    s->cgrp = calloc(n, sizeof *s->cgrp);
    s->n_tzs = t->n_tzs;
    s->tzc = calloc(t->n_tzs ? t->n_tzs : 1, sizeof *s->tzc);
    if (!s->best || !s->bits || !s->words || !s->fgen || !s->fval || !s->pre || !s->rgen || !s->rval ||
        !s->verdicts || !s->cand || !s->key || !s->ord || !s->cidx || !s->cgrp ||
        !s->tzc) {
        rules_scratch_free(s);
        return NULL;
    }
    for (uint32_t i = 0; i < t->n_tzs; i++)
        s->tzc[i].minute = INT64_MIN;
    return s;
}

void rules_scratch_free(struct rules_scratch *s)
{
    if (!s)
        return;
    free(s->best);
    free(s->bits);
    free(s->words);
    free(s->fgen);
    free(s->fval);
    free(s->pre);
    free(s->rgen);
    free(s->rval);
    free(s->verdicts);
    free(s->cand);
    free(s->key);
    free(s->ord);
    free(s->cidx);
    free(s->cgrp);
    free(s->tzc);
    free(s);
}

/* Step 2: the niche. The lead's own niche if configured; else the first
 * niche (config order) naming its source or campaign; else the first one
 * sharing a keyword with it. */
static int classify(const struct rules_table *t, const struct lead *l, enum rules_how *how)
{
    const struct rules_classify *c = t->cls;
    const uint32_t *v;
    uint32_t n;
    char buf[SMAP_MAX_KEY];
    int len;
    *how = HOW_NONE;
    if (l->niche.len) {
        v = smap_get(&c->names, 0, l->niche.p, l->niche.len, &n);
        if (n) {
            *how = HOW_EXPLICIT;
            return (int)v[0];
        }
    }
    int best = -1;
    if (l->source.len && (len = smap_fold(buf, l->source.p, l->source.len, false, false)) >= 0) {
        v = smap_get(&c->sources, 0, buf, (size_t)len, &n);
        if (n) {
            best = (int)v[0];
            *how = HOW_SOURCE;
        }
    }
    if (l->campaign.len && (len = smap_fold(buf, l->campaign.p, l->campaign.len, false, false)) >= 0) {
        v = smap_get(&c->sources, 0, buf, (size_t)len, &n);
        if (n && (best < 0 || (int)v[0] < best)) {
            best = (int)v[0];
            *how = HOW_CAMPAIGN;
        }
    }
    if (best >= 0)
        return best;
    for (uint32_t i = 0; i < l->n_keywords; i++) {
        if ((len = smap_fold(buf, l->keywords[i].p, l->keywords[i].len, false, false)) < 0)
            continue;
        v = smap_get(&c->keywords, 0, buf, (size_t)len, &n);
        if (n && (best < 0 || (int)v[0] < best))
            best = (int)v[0];
    }
    if (best >= 0)
        *how = HOW_KEYWORD;
    return best;
}

/* Step 3: score = the lead's score, else sum(signal * weight) over the
 * configured weights, rounded half up, clamped to 0..100. */
static int score_of(const struct rules_table *t, const struct lead *l, bool *computed)
{
    *computed = !l->has_score;
    if (l->has_score)
        return l->score;
    double sum = 0;
    for (uint32_t i = 0; i < l->n_signals; i++)
        for (uint32_t k = 0; k < t->n_weights; k++)
            if (l->signals[i].key.len == t->weights[k].signal_len &&
                memcmp(l->signals[i].key.p, t->weights[k].signal, t->weights[k].signal_len) == 0) {
                sum += l->signals[i].v * t->weights[k].w;
                break;
            }
    double r = floor(sum + 0.5);
    if (!(r > 0)) /* also catches NaN */
        return 0;
    return r > 100 ? 100 : (int)r;
}

static int grade_of(const struct rules_table *t, int score)
{
    for (uint32_t i = 0; i < t->n_grades; i++)
        if (t->grades[i].min <= score)
            return (int)i;
    return (int)t->n_grades - 1;
}

static bool value_eq(const struct lead_value *a, const struct lead_value *b)
{
    bool an = a->type == LEAD_V_INT || a->type == LEAD_V_FLOAT;
    bool bn = b->type == LEAD_V_INT || b->type == LEAD_V_FLOAT;
    if (an && bn) {
        if (a->type == LEAD_V_INT && b->type == LEAD_V_INT)
            return a->i == b->i;
        double x = a->type == LEAD_V_INT ? (double)a->i : a->f;
        double y = b->type == LEAD_V_INT ? (double)b->i : b->f;
        return x == y;
    }
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LEAD_V_NIL:
        return true;
    case LEAD_V_BOOL:
        return a->b == b->b;
    case LEAD_V_STR:
        return a->s.len == b->s.len && (a->s.len == 0 || memcmp(a->s.p, b->s.p, a->s.len) == 0);
    default:
        return false;
    }
}

/* The lead's value for a filter target; false when absent. */
static bool filter_value(const struct rules_table *t, struct rules_scratch *sc, const struct rules_cfilter *f,
                         const struct lead *l, int score, struct lead_value *out)
{
    struct lr_str s = {0};
    switch ((enum rules_filter_target)f->target) {
    case FT_FIELD: {
        if (sc->fgen[f->fid] != sc->dgen) {
            const char *key = t->fkeys[f->fid];
            sc->fval[f->fid] = lead_field_get(l, key, (uint32_t)strlen(key));
            sc->fgen[f->fid] = sc->dgen;
        }
        const struct lead_field *fl = sc->fval[f->fid];
        if (!fl || fl->v.type == LEAD_V_NIL) /* nil counts as absent (SPEC 5) */
            return false;
        *out = fl->v;
        return true;
    }
    case FT_SCORE:
        out->type = LEAD_V_INT;
        out->i = score;
        return true;
    case FT_SOURCE:
        s = l->source;
        break;
    case FT_CAMPAIGN:
        s = l->campaign;
        break;
    case FT_COUNTRY:
        /* Absent: the configured default (SPEC section 2). */
        s = l->country.len ? l->country : (struct lr_str){t->default_country, (uint32_t)strlen(t->default_country)};
        break;
    case FT_STATE:
        s = l->state;
        break;
    case FT_ZIP:
        s = l->zip;
        break;
    }
    if (!s.len)
        return false;
    out->type = LEAD_V_STR;
    out->s = s;
    return true;
}

/* A filter passes or not; an absent value passes only `ne` and
 * `exists = false`. */
static bool filter_pass(const struct rules_table *t, struct rules_scratch *sc, const struct rules_cfilter *f,
                        const struct lead *l, int score)
{
    struct lead_value v;
    bool has = filter_value(t, sc, f, l, score, &v);
    if (f->op == FOP_EXISTS)
        return has == f->exists;
    if (!has)
        return f->op == FOP_NE;
    switch ((enum rules_filter_op)f->op) {
    case FOP_EQ:
        return value_eq(&v, &f->val);
    case FOP_NE:
        return !value_eq(&v, &f->val);
    case FOP_IN:
        for (uint32_t i = 0; i < f->src->n_vals; i++)
            if (value_eq(&v, &f->src->vals[i]))
                return true;
        return false;
    case FOP_MIN:
    case FOP_MAX: {
        double x;
        if (v.type == LEAD_V_INT)
            x = (double)v.i;
        else if (v.type == LEAD_V_FLOAT)
            x = v.f;
        else
            return false;
        return f->op == FOP_MIN ? x >= f->num : x <= f->num;
    }
    default:
        return false;
    }
}

bool rules_hours_open(const struct rules_hours *h, int wday, int mod)
{
    if (!h->set)
        return true;
    bool today = h->days & (1u << wday);
    if (h->from < h->to)
        return today && mod >= h->from && mod < h->to;
    bool yesterday = h->days & (1u << ((wday + 6) % 7));
    return (today && mod >= h->from) || (yesterday && mod < h->to);
}

static bool open_now(const struct rules_table *t, struct rules_scratch *s, const struct rules_dhot *d,
                     int64_t now_s, int64_t minute)
{
    struct tz_cache *c = &s->tzc[d->tz];
    if (c->minute != minute) {
        struct lr_civil cv;
        lr_tz_civil(t->tzs[d->tz], now_s, &cv);
        c->minute = minute;
        c->wday = cv.wday;
        c->mod = cv.hour * 60 + cv.min;
    }
    struct rules_hours h = {.set = true, .days = d->days, .from = d->from, .to = d->to};
    return rules_hours_open(&h, c->wday, c->mod);
}

bool rules_dealer_open(const struct rules_table *t, uint32_t dealer, int64_t now_s)
{
    const struct rules_dealer *d = &t->dealers[dealer];
    if (!d->hours.set)
        return true;
    struct lr_civil cv;
    lr_tz_civil(t->tzs[d->tz], now_s, &cv);
    return rules_hours_open(&d->hours, cv.wday, cv.hour * 60 + cv.min);
}

/* The contract's own verdict (independent of time and state). */
static enum rules_why contract_check(const struct rules_table *t, struct rules_scratch *sc,
                                     const struct rules_hot *h, const struct lead *l, int score, int grade,
                                     uint16_t *detail)
{
    if (score < h->min_score)
        return WHY_MIN_SCORE;
    if (h->grades && !(h->grades & (1u << grade)))
        return WHY_GRADE;
    for (uint32_t i = 0; i < h->n_filt; i++) {
        /* The first filter's memo id is in the dealer's line: the filter
         * itself is read only when this lead has not met it yet. */
        uint32_t rid = i == 0 ? h->rid0 : t->cfilters[h->filt_off + i].rid;
        if (sc->rgen[rid] != sc->dgen) {
            sc->rval[rid] = filter_pass(t, sc, &t->cfilters[h->filt_off + i], l, score);
            sc->rgen[rid] = sc->dgen;
        }
        if (!sc->rval[rid]) {
            *detail = (uint16_t)i;
            return WHY_FILTER;
        }
    }
    return WHY_CANDIDATE;
}

/* contract_check on the dealer's compact line: its rules_hot line is read
 * only for grades, several filters, or a filter this lead has not met. */
static inline enum rules_why contract_fast(const struct rules_table *t, struct rules_scratch *sc,
                                           const struct rules_dhot *dh, uint32_t di, const struct lead *l,
                                           int score, int grade, uint16_t *detail)
{
    if (dh->flags & DHOT_SLOW)
        return contract_check(t, sc, &t->hot[di], l, score, grade, detail);
    if (score < dh->min_score)
        return WHY_MIN_SCORE;
    if (dh->flags & DHOT_FILTER) {
        uint32_t rid = dh->rid0;
        if (sc->rgen[rid] != sc->dgen) {
            sc->rval[rid] = filter_pass(t, sc, &t->cfilters[t->rid_cf[rid]], l, score);
            sc->rgen[rid] = sc->dgen;
        }
        if (!sc->rval[rid]) {
            *detail = 0;
            return WHY_FILTER;
        }
    }
    return WHY_CANDIDATE;
}

/* Sorts small arrays of uint64 keys (insertion sort; qsort past 24). */
static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void sort_u64(uint64_t *k, uint32_t n)
{
    if (n > 512) {
        qsort(k, n, sizeof *k, u64_cmp);
        return;
    }
    if (n <= 32) {
        for (uint32_t i = 1; i < n; i++) {
            uint64_t x = k[i];
            uint32_t j = i;
            for (; j > 0 && k[j - 1] > x; j--)
                k[j] = k[j - 1];
            k[j] = x;
        }
        return;
    }
    /* Shell sort (Ciura's gaps): no calls, good on the short, partly
     * sorted runs the index returns. */
    static const uint32_t gaps[] = {301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < sizeof gaps / sizeof *gaps; g++) {
        uint32_t gap = gaps[g];
        for (uint32_t i = gap; i < n; i++) {
            uint64_t x = k[i];
            uint32_t j = i;
            for (; j >= gap && k[j - gap] > x; j -= gap)
                k[j] = k[j - gap];
            k[j] = x;
        }
    }
}

/* Candidate groups of one decision: (stage << 30 | tier) values seen, in
 * order of appearance, and how many candidates each has. */
#define CAND_MAXG 8
struct cand_groups {
    uint32_t key[CAND_MAXG], n[CAND_MAXG];
    uint32_t ng, last, cur;
    bool many; /* more than CAND_MAXG: a comparison sort */
};

static inline uint8_t cand_group(struct cand_groups *g, uint32_t key)
{
    if (key != g->last) {
        uint32_t j = 0;
        while (j < g->ng && g->key[j] != key)
            j++;
        if (j == g->ng) {
            if (g->ng == CAND_MAXG) {
                g->many = true;
                j = 0;
            } else {
                g->key[g->ng] = key;
                g->n[g->ng++] = 0;
            }
        }
        g->last = key;
        g->cur = j;
    }
    g->n[g->cur]++;
    return (uint8_t)g->cur;
}

/* Writes the candidates s->cidx[0..n) (verdict indexes, ascending) into
 * cand ordered by (stage, tier), config order within; returns how many are
 * in stage 0. */
static uint32_t order_cands(struct rules_scratch *s, const struct rules_verdict *vs, uint32_t n,
                            struct cand_groups *g, uint32_t *cand)
{
    const uint32_t *ci = s->cidx;
    uint32_t n0 = 0;
    if (g->many) {
        uint64_t *k = s->ord;
        bool sorted = true;
        for (uint32_t i = 0; i < n; i++) {
            const struct rules_verdict *v = &vs[ci[i]];
            k[i] = (uint64_t)v->stage << 62 | (uint64_t)v->tier << 32 | ci[i];
            sorted &= i == 0 || k[i - 1] <= k[i];
        }
        if (!sorted)
            sort_u64(k, n);
        for (uint32_t i = 0; i < n; i++) {
            cand[i] = (uint32_t)k[i];
            n0 += !(k[i] >> 62);
        }
        return n0;
    }
    if (g->ng <= 1) {
        memcpy(cand, ci, n * sizeof *cand);
        return g->ng && !(g->key[0] >> 30) ? n : 0;
    }
    /* A counting sort over the few groups. */
    uint32_t off[CAND_MAXG];
    for (uint32_t a = 0; a < g->ng; a++) {
        uint32_t o = 0;
        for (uint32_t b = 0; b < g->ng; b++)
            if (g->key[b] < g->key[a])
                o += g->n[b];
        off[a] = o;
        if (!(g->key[a] >> 30))
            n0 += g->n[a];
    }
    const uint8_t *cg = s->cgrp;
    for (uint32_t i = 0; i < n; i++)
        cand[off[cg[i]]++] = ci[i];
    return n0;
}

static bool excluded(const struct rules_input *in, uint32_t d)
{
    for (uint32_t i = 0; i < in->n_exclude; i++)
        if (in->exclude[i] == d)
            return true;
    return false;
}

static uint64_t id_hash(const struct lead *l)
{
    return smap_hash(0, l->id.p, l->id.len);
}

/* The ring entry of l: same address and, when check is set, same id (the
 * memory of a lead prefetched but never decided may hold another lead by
 * now). Later prefetch stages skip the check: l does not change between
 * them, and rules_decide checks before it reuses anything. */
static struct rules_pre *pre_find(struct rules_scratch *s, const struct lead *l, bool check)
{
    /* Newest first: a lead is usually found a few entries back. */
    for (uint32_t k = 1; k <= RULES_PRE_RING; k++) {
        uint32_t i = (s->pre_next - k) % RULES_PRE_RING;
        if (s->pre_l[i] == l) {
            if (!check || s->pre[i].id_hash == id_hash(l))
                return &s->pre[i];
            s->pre_l[i] = NULL; /* stale */
        }
    }
    return NULL;
}

void rules_prefetch(const struct rules_table *t, struct rules_scratch *s, const struct lead *l, int stage,
                    const int64_t *rr)
{
    struct rules_pre *e = pre_find(s, l, false);
    if (stage == 0 || !e) { /* (again) from the start, l's content as it is now */
        if (!e) {
            uint32_t i = s->pre_next++ % RULES_PRE_RING;
            e = &s->pre[i];
            s->pre_l[i] = l;
        }
        e->id_hash = id_hash(l);
        e->stage = 0;
        e->niche = classify(t, l, &e->how);
        if (e->niche < 0)
            return;
        terr_keys(t->terr, (uint32_t)e->niche, l, &e->k);
        terr_prefetch_slots(t->terr, &e->k);
        return;
    }
    if (e->niche < 0 || e->stage >= stage)
        return;
    const int64_t *rr_niche = rr ? rr + (size_t)e->niche * t->n_dealers : NULL;
    if (e->stage == 0) { /* one stage per call: what it loads is used by the next */
        e->nl = terr_postings(t->terr, &e->k, e->L);
        e->stage = 1;
        terr_prefetch_dealers(t, e->L, e->nl, rr_niche);
        return;
    }
    e->stage = 2;
    if (l->has_geo) {
        rules_geo_point(l->lat, l->lon, e->u);
        e->nl = terr_resolve_radius(t, e->L, e->nl, e->u, e->hits, RULES_PRE_HITS, rr_niche,
                                    t->niches[e->niche].strategy == STRAT_NEAREST);
    }
}

void rules_decide(const struct rules_table *t, struct rules_scratch *s, const struct lead *l,
                  const struct rules_input *in, struct rules_decision *d)
{
    d->reason = REASON_ASSIGNED;
    d->verdicts = s->verdicts;
    d->n_verdicts = 0;
    d->cand = s->cand;
    d->stage_end[0] = d->stage_end[1] = 0;
    d->n_picked = 0;
    d->picked_stage = -1;
    d->owners = d->hold = false;
    d->sortkey = s->key;
    /* Reuse what rules_prefetch computed for this lead, if anything. */
    struct rules_pre *pre = pre_find(s, l, true);
    if (pre) {
        s->pre_l[pre - s->pre] = NULL; /* used once: the caller may reuse the lead's memory */
        d->niche = pre->niche;
        d->how = pre->how;
    } else {
        d->niche = classify(t, l, &d->how);
    }
    d->score = score_of(t, l, &d->score_computed);
    d->grade = grade_of(t, d->score);
    d->hot = (t->hot_grades >> d->grade) & 1u;
    if (d->niche < 0) {
        d->reason = REASON_UNKNOWN_NICHE;
        return;
    }
    /* Step 5: dealers whose territory covers the lead, from the index. */
    if (l->has_geo && pre && pre->stage == 2)
        memcpy(d->geo, pre->u, sizeof d->geo);
    else if (l->has_geo)
        rules_geo_point(l->lat, l->lon, d->geo);
    struct terr_hits h = {.u = d->geo, .dhot = t->dhot, .dweight = t->dweight,
                          .rr_base = (uint32_t)d->niche * t->n_dealers,
                          .best = s->best, .bits = s->bits, .words = s->words, .v = s->verdicts};
    if (pre && pre->stage >= 1) {
        terr_merge(t, pre->L, pre->nl, &h);
    } else {
        struct terr_keys kbuf, *k = &kbuf;
        struct plist L[TERR_MAX_KEYS + 1];
        if (pre)
            k = &pre->k;
        else
            terr_keys(t->terr, (uint32_t)d->niche, l, k);
        terr_merge(t, L, terr_postings(t->terr, k, L), &h);
    }
    d->n_verdicts = h.n;
    if (++s->dgen == 0) { /* wrapped: forget every memo */
        memset(s->fgen, 0, s->n_fkeys * sizeof *s->fgen);
        memset(s->rgen, 0, s->n_rids * sizeof *s->rgen);
        s->dgen = 1;
    }
    int64_t now_ms = in->now_ms;
    int64_t now_s = now_ms >= 0 ? now_ms / 1000 : -((-now_ms + 999) / 1000);
    int64_t minute = now_s >= 0 ? now_s / 60 : -((-now_s + 59) / 60);

    /* One pass over the dealers: the contract first (it decides ownership;
     * SPEC: an exclusive dealer owns a lead only if its territory covers it
     * and its contract accepts it), then exclusions, pauses and hours.
     * Candidates are grouped by (stage, tier) for the ordering below, as if
     * nobody owned the lead: the usual case. */
    int owner_match = MATCH_NONE;
    uint32_t nc = 0;
    struct cand_groups g = {.last = UINT32_MAX};
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        const struct rules_dhot *dh = &t->dhot[v->dealer];
        v->tier = dh->tier;
        enum rules_why why = contract_fast(t, s, dh, v->dealer, l, d->score, d->grade, &v->detail);
        if (why == WHY_CANDIDATE) {
            if ((dh->flags & RHOT_EXCLUSIVE) && v->match > owner_match)
                owner_match = v->match;
            if (in->n_exclude && excluded(in, v->dealer))
                why = WHY_ALREADY_HAD;
            else if (in->paused && in->paused[v->dealer])
                why = WHY_PAUSED;
            else if ((dh->flags & RHOT_HOURS) && !open_now(t, s, dh, now_s, minute))
                why = WHY_CLOSED;
            else {
                s->cgrp[nc] = cand_group(&g, dh->tier);
                s->cidx[nc++] = i;
            }
        }
        v->why = (uint8_t)why;
    }
    /* Owners are the accepting exclusive dealers with the most specific
     * match (an exclusive zip beats an exclusive state); the others are
     * released to stage 1, or held when an owner says so. */
    if (owner_match != MATCH_NONE) {
        for (uint32_t i = 0; i < h.n; i++) {
            struct rules_verdict *v = &d->verdicts[i];
            if (v->why == WHY_MIN_SCORE || v->why == WHY_GRADE || v->why == WHY_FILTER)
                continue;
            uint8_t fl = t->dhot[v->dealer].flags;
            bool owner = (fl & RHOT_EXCLUSIVE) && v->match == owner_match;
            v->stage = !owner;
            if (owner) {
                d->owners = true;
                d->hold |= (fl & RHOT_HOLD) != 0;
            }
        }
        uint32_t o = 0;
        for (uint32_t x = 0; x < nc; x++) {
            struct rules_verdict *v = &d->verdicts[s->cidx[x]];
            if (v->stage == 1 && d->hold)
                v->why = WHY_OWNER; /* held for the owners: never released */
            else
                s->cidx[o++] = s->cidx[x];
        }
        nc = o;
        g.many = true; /* two stages: the general order */
    }
    d->stage_end[0] = order_cands(s, d->verdicts, nc, &g, d->cand);
    d->stage_end[1] = nc;
    if (nc == 0)
        d->reason = rules_most_telling(d);
}
