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
    s->rad_a = calloc(n, sizeof *s->rad_a);
    s->mrg_a = calloc(n, sizeof *s->mrg_a);
    s->mrg_b = calloc(n, sizeof *s->mrg_b);
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
    s->tmpv = calloc(n, sizeof *s->tmpv);
    s->n_tzs = t->n_tzs;
    s->tzc = calloc(t->n_tzs ? t->n_tzs : 1, sizeof *s->tzc);
    if (!s->rad_a || !s->mrg_a || !s->mrg_b || !s->fgen || !s->fval || !s->pre || !s->rgen || !s->rval || !s->verdicts || !s->cand || !s->key || !s->ord || !s->tmpv || !s->tzc) {
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
    free(s->rad_a);
    free(s->mrg_a);
    free(s->mrg_b);
    free(s->fgen);
    free(s->fval);
    free(s->pre);
    free(s->rgen);
    free(s->rval);
    free(s->verdicts);
    free(s->cand);
    free(s->key);
    free(s->ord);
    free(s->tmpv);
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
        if (!fl)
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

static bool open_now(const struct rules_table *t, struct rules_scratch *s, const struct rules_hot *d,
                     int64_t now_ms)
{
    int64_t now_s = now_ms >= 0 ? now_ms / 1000 : -((-now_ms + 999) / 1000);
    int64_t minute = now_s >= 0 ? now_s / 60 : -((-now_s + 59) / 60);
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
static enum rules_why contract_check(const struct rules_table *t, struct rules_scratch *sc, uint32_t di,
                                     const struct lead *l, int score, int grade, uint16_t *detail)
{
    const struct rules_hot *h = &t->hot[di];
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

/* Orders candidate keys by (stage, tier), keeping config order within:
 * a counting sort when the tiers span little, else a comparison sort. */
static void sort_cands(struct rules_scratch *s, uint32_t n)
{
    if (n <= 32) {
        sort_u64(s->ord, n); /* few: insertion beats counting */
        return;
    }
    uint32_t lo = UINT32_MAX, hi = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t tier = (uint32_t)(s->ord[i] >> 32) & 0x3fffffff;
        lo = tier < lo ? tier : lo;
        hi = tier > hi ? tier : hi;
    }
    if (hi - lo >= 32) {
        sort_u64(s->ord, n);
        return;
    }
    uint32_t count[65] = {0};
    for (uint32_t i = 0; i < n; i++)
        count[1 + ((s->ord[i] >> 62) * 32 + (((s->ord[i] >> 32) & 0x3fffffff) - lo))]++;
    for (int b = 1; b < 65; b++)
        count[b] += count[b - 1];
    uint64_t *out = s->mrg_a; /* free again once terr_lookup is done */
    for (uint32_t i = 0; i < n; i++)
        out[count[(s->ord[i] >> 62) * 32 + (((s->ord[i] >> 32) & 0x3fffffff) - lo)]++] = s->ord[i];
    memcpy(s->ord, out, n * sizeof *out);
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

/* The ring entry of l: same address and same id (the memory of a lead
 * prefetched but never decided may hold another lead by now). */
static struct rules_pre *pre_find(struct rules_scratch *s, const struct lead *l)
{
    for (uint32_t i = 0; i < RULES_PRE_RING; i++)
        if (s->pre_l[i] == l) {
            if (s->pre[i].id_hash == id_hash(l))
                return &s->pre[i];
            s->pre_l[i] = NULL; /* stale */
        }
    return NULL;
}

void rules_prefetch(const struct rules_table *t, struct rules_scratch *s, const struct lead *l, int stage)
{
    struct rules_pre *e = pre_find(s, l);
    if (stage == 0 || !e) {
        if (!e) {
            uint32_t i = s->pre_next++ % RULES_PRE_RING;
            e = &s->pre[i];
            s->pre_l[i] = l;
            e->id_hash = id_hash(l);
        }
        e->stage = 0;
        e->niche = classify(t, l, &e->how);
        if (e->niche < 0)
            return;
        terr_keys(t->terr, (uint32_t)e->niche, l, &e->k);
        terr_prefetch_slots(t->terr, &e->k);
        return;
    }
    if (e->niche < 0 || e->stage == 1)
        return;
    e->nl = terr_postings(t->terr, &e->k, e->L);
    e->stage = 1;
    terr_prefetch_dealers(t, e->L, e->nl);
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
    struct rules_pre *pre = pre_find(s, l);
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
    if (l->has_geo)
        rules_geo_point(l->lat, l->lon, d->geo);
    struct terr_hits h = {.u = d->geo, .hot = t->hot, .rr_base = (uint32_t)d->niche * t->n_dealers, .rad_a = s->rad_a,
                          .mrg_a = s->mrg_a, .mrg_b = s->mrg_b,
                          .v = s->verdicts};
    if (pre && pre->stage == 1) {
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

    /* Contract first: it decides ownership (SPEC: an exclusive dealer owns a
     * lead only if its territory covers it and its contract accepts it). */
    int owner_match = MATCH_NONE;
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        v->why = (uint8_t)contract_check(t, s, v->dealer, l, d->score, d->grade, &v->detail);
        if (v->why == WHY_CANDIDATE && (t->hot[v->dealer].flags & RHOT_EXCLUSIVE) && v->match > owner_match)
            owner_match = v->match;
    }
    /* Owners are the accepting exclusive dealers with the most specific
     * match (an exclusive zip beats an exclusive state). Candidates are then
     * keyed by (stage, tier, config order) for the sort below. */
    for (uint32_t i = 0; i < h.n && owner_match != MATCH_NONE; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        const struct rules_hot *hd = &t->hot[v->dealer];
        if (v->why != WHY_CANDIDATE)
            continue;
        bool owner = (hd->flags & RHOT_EXCLUSIVE) && v->match == owner_match;
        v->stage = !owner;
        if (owner) {
            d->owners = true;
            d->hold |= (hd->flags & RHOT_HOLD) != 0;
        }
    }
    uint32_t nc = 0;
    bool sorted = true;
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        if (v->why != WHY_CANDIDATE)
            continue;
        const struct rules_hot *hd = &t->hot[v->dealer];
        if (in->n_exclude && excluded(in, v->dealer))
            v->why = WHY_ALREADY_HAD;
        else if (in->paused && in->paused[v->dealer])
            v->why = WHY_PAUSED;
        else if ((hd->flags & RHOT_HOURS) && !open_now(t, s, hd, in->now_ms))
            v->why = WHY_CLOSED;
        else if (v->stage == 1 && d->hold)
            v->why = WHY_OWNER; /* held for the owners: never released */
        else
        {
            uint64_t key = (uint64_t)v->stage << 62 | (uint64_t)hd->tier << 32 | i;
            sorted &= nc == 0 || s->ord[nc - 1] <= key;
            s->ord[nc++] = key;
        }
    }
    /* Verdicts come in config order, so with one tier (the usual case)
     * the candidates are sorted already. */
    if (!sorted)
        sort_cands(s, nc);
    uint32_t n0 = 0;
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t vi = (uint32_t)s->ord[i];
        d->cand[i] = vi;
        n0 += d->verdicts[vi].stage == 0;
    }
    d->stage_end[0] = n0;
    d->stage_end[1] = nc;
    if (nc == 0)
        d->reason = rules_most_telling(d);
}
