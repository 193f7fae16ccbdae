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
    s->stamp = calloc(n, sizeof *s->stamp);
    s->pos = calloc(n, sizeof *s->pos);
    s->verdicts = calloc(n, sizeof *s->verdicts);
    s->cand = calloc(n, sizeof *s->cand);
    s->key = calloc(n, sizeof *s->key);
    s->ord = calloc(n, sizeof *s->ord);
    s->tmpv = calloc(n, sizeof *s->tmpv);
    s->n_tzs = t->n_tzs;
    s->tzc = calloc(t->n_tzs ? t->n_tzs : 1, sizeof *s->tzc);
    if (!s->stamp || !s->pos || !s->verdicts || !s->cand || !s->key || !s->ord || !s->tmpv || !s->tzc) {
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
    free(s->stamp);
    free(s->pos);
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
            if (lr_str_eq(l->signals[i].key, t->weights[k].signal)) {
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
static bool filter_value(const struct rules_filter *f, const struct lead *l, int score, struct lead_value *out)
{
    struct lr_str s = {0};
    switch (f->target) {
    case FT_FIELD: {
        const struct lead_field *fl = lead_field_get(l, f->key, (uint32_t)strlen(f->key));
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
        s = l->country;
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
static bool filter_pass(const struct rules_filter *f, const struct lead *l, int score)
{
    struct lead_value v;
    bool has = filter_value(f, l, score, &v);
    if (f->op == FOP_EXISTS)
        return has == f->exists;
    if (!has)
        return f->op == FOP_NE;
    switch (f->op) {
    case FOP_EQ:
        return value_eq(&v, &f->vals[0]);
    case FOP_NE:
        return !value_eq(&v, &f->vals[0]);
    case FOP_IN:
        for (uint32_t i = 0; i < f->n_vals; i++)
            if (value_eq(&v, &f->vals[i]))
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

static bool open_now(const struct rules_table *t, struct rules_scratch *s, const struct rules_dealer *d,
                     int64_t now_ms)
{
    if (!d->hours.set)
        return true;
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
    return rules_hours_open(&d->hours, c->wday, c->mod);
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
static enum rules_why contract_check(const struct rules_dealer *d, const struct lead *l, int score, int grade,
                                     uint16_t *detail)
{
    if (score < d->min_score)
        return WHY_MIN_SCORE;
    if (d->grades && !(d->grades & (1u << grade)))
        return WHY_GRADE;
    for (uint32_t i = 0; i < d->n_filters; i++)
        if (!filter_pass(&d->filters[i], l, score)) {
            *detail = (uint16_t)i;
            return WHY_FILTER;
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
    if (n > 24) {
        qsort(k, n, sizeof *k, u64_cmp);
        return;
    }
    for (uint32_t i = 1; i < n; i++) {
        uint64_t x = k[i];
        uint32_t j = i;
        for (; j > 0 && k[j - 1] > x; j--)
            k[j] = k[j - 1];
        k[j] = x;
    }
}

/* Puts the territory hits in config (dealer index) order. */
static void sort_verdicts(struct rules_scratch *s, uint32_t n)
{
    uint64_t *k = s->ord;
    for (uint32_t i = 0; i < n; i++)
        k[i] = (uint64_t)s->verdicts[i].dealer << 32 | i;
    sort_u64(k, n);
    for (uint32_t i = 0; i < n; i++)
        s->tmpv[i] = s->verdicts[(uint32_t)k[i]];
    memcpy(s->verdicts, s->tmpv, n * sizeof *s->verdicts);
}

static bool excluded(const struct rules_input *in, uint32_t d)
{
    for (uint32_t i = 0; i < in->n_exclude; i++)
        if (in->exclude[i] == d)
            return true;
    return false;
}

void rules_decide(const struct rules_table *t, struct rules_scratch *s, const struct lead *l,
                  const struct rules_input *in, struct rules_decision *d)
{
    memset(d, 0, sizeof *d);
    d->verdicts = s->verdicts;
    d->cand = s->cand;
    d->sortkey = s->key;
    d->picked_stage = -1;
    d->niche = classify(t, l, &d->how);
    d->score = score_of(t, l, &d->score_computed);
    d->grade = grade_of(t, d->score);
    d->hot = (t->hot_grades >> d->grade) & 1u;
    if (d->niche < 0) {
        d->reason = REASON_UNKNOWN_NICHE;
        return;
    }
    /* Step 5: dealers whose territory covers the lead, from the index. */
    if (++s->gen == 0) {
        memset(s->stamp, 0, s->n_dealers * sizeof *s->stamp);
        s->gen = 1;
    }
    struct terr_hits h = {.stamp = s->stamp, .gen = s->gen, .pos = s->pos, .v = s->verdicts};
    terr_lookup(t->terr, t, (uint32_t)d->niche, l, &h);
    d->n_verdicts = h.n;
    if (h.n > 1)
        sort_verdicts(s, h.n);

    /* Contract first: it decides ownership (SPEC: an exclusive dealer owns a
     * lead only if its territory covers it and its contract accepts it). */
    int owner_match = MATCH_NONE;
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        const struct rules_dealer *dl = &t->dealers[v->dealer];
        v->why = (uint8_t)contract_check(dl, l, d->score, d->grade, &v->detail);
        if (v->why == WHY_CANDIDATE && dl->exclusive && v->match > owner_match)
            owner_match = v->match;
    }
    /* Owners are the accepting exclusive dealers with the most specific
     * match (an exclusive zip beats an exclusive state). */
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        if (v->why != WHY_CANDIDATE)
            continue;
        const struct rules_dealer *dl = &t->dealers[v->dealer];
        bool owner = owner_match != MATCH_NONE && dl->exclusive && v->match == owner_match;
        if (owner) {
            d->owners = true;
            if (dl->overflow == OVERFLOW_HOLD)
                d->hold = true;
        }
        v->stage = owner_match != MATCH_NONE && !owner;
        if (excluded(in, v->dealer))
            v->why = WHY_ALREADY_HAD;
        else if (in->paused && in->paused[v->dealer])
            v->why = WHY_PAUSED;
        else if (!open_now(t, s, dl, in->now_ms))
            v->why = WHY_CLOSED;
    }
    /* Candidates by (stage, tier, config order); verdicts are in config
     * order already, so their index breaks ties. */
    uint32_t nc = 0;
    for (uint32_t i = 0; i < h.n; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        if (v->why != WHY_CANDIDATE)
            continue;
        if (v->stage == 1 && d->hold) {
            v->why = WHY_OWNER;
            continue;
        }
        s->ord[nc++] = (uint64_t)v->stage << 62 | (uint64_t)t->dealers[v->dealer].tier << 32 | i;
    }
    sort_u64(s->ord, nc);
    for (uint32_t i = 0; i < nc; i++)
        d->cand[i] = (uint32_t)s->ord[i];
    uint32_t n0 = 0;
    while (n0 < nc && d->verdicts[d->cand[n0]].stage == 0)
        n0++;
    d->stage_end[0] = n0;
    d->stage_end[1] = nc;
    d->reason = REASON_ASSIGNED;
    if (nc == 0)
        d->reason = rules_most_telling(d);
}
