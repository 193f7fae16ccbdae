/* pick.c - SPEC section 5 step 8 as the commit does it: caps and queue
 * depth first, then the niche's strategy inside each tier, stage by stage
 * (exclusive owners, then the released field). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static enum rules_why cap_check(const struct rules_hot *dl, const struct rules_usage *u)
{
    if (!u)
        return WHY_CANDIDATE;
    if (dl->max_pending && u->pending >= dl->max_pending)
        return WHY_QUEUE_FULL;
    for (int p = 0; p < PERIOD_N; p++)
        if (dl->caps[p] && u->used[p] >= dl->caps[p])
            return (enum rules_why)(WHY_CAPPED_HOUR + p);
    return WHY_CANDIDATE;
}

enum rules_reason rules_most_telling(const struct rules_decision *d)
{
    if (d->owners && d->hold)
        return REASON_EXCLUSIVE_OWNER_UNAVAILABLE;
    bool capped = false, closed = false, filtered = false;
    for (uint32_t i = 0; i < d->n_verdicts; i++)
        switch ((enum rules_why)d->verdicts[i].why) {
        case WHY_CAPPED_HOUR:
        case WHY_CAPPED_DAY:
        case WHY_CAPPED_WEEK:
        case WHY_CAPPED_MONTH:
        case WHY_QUEUE_FULL:
            capped = true;
            break;
        case WHY_CLOSED:
        case WHY_PAUSED:
            closed = true;
            break;
        case WHY_MIN_SCORE:
        case WHY_GRADE:
        case WHY_FILTER:
            filtered = true;
            break;
        default:
            break;
        }
    return capped ? REASON_ALL_CAPPED
           : closed ? REASON_ALL_CLOSED
           : filtered ? REASON_FILTERED
                      : REASON_NO_DEALER_IN_TERRITORY;
}

static void swap_u32(uint32_t *a, uint32_t *b)
{
    uint32_t x = *a;
    *a = *b;
    *b = x;
}

static void swap_dbl(double *a, double *b)
{
    double x = *a;
    *a = *b;
    *b = x;
}

/* One smooth weighted round robin step over c[0..m) (nginx's algorithm):
 * everyone adds its weight, the highest current value wins (ties: listed
 * first, which is the lowest position here), the winner pays the total. */
static uint32_t swrr_step(const struct rules_table *t, const struct rules_decision *d, const uint32_t *weight,
                          const uint32_t *c, uint32_t m, bool unit, int64_t *rr)
{
    int64_t total = 0;
    uint32_t best = 0;
    int64_t best_val = 0;
    for (uint32_t i = 0; i < m; i++) {
        const struct rules_verdict *v = &d->verdicts[c[i]];
        int64_t w = unit ? 1 : weight ? (int64_t)weight[v->dealer] : t->dweight[v->dealer];
        uint32_t slot = v->rr_slot;
        rr[slot] += w;
        total += w;
        if (i == 0 || rr[slot] > best_val) {
            best = i;
            best_val = rr[slot];
        }
    }
    rr[d->verdicts[c[best]].rr_slot] -= total;
    return best;
}

static uint32_t min_key(const double *k, uint32_t m)
{
    uint32_t best = 0;
    for (uint32_t i = 1; i < m; i++)
        if (k[i] < k[best])
            best = i;
    return best;
}

/* Takes c[pos] and moves it to the front. The rest stays in config order
 * (ties must stay "listed first") while more picks follow; after the last
 * one it is a plain swap. */
static void pick_one(struct rules_decision *d, uint32_t *c, double *k, uint32_t pos, int stage, bool more)
{
    struct rules_verdict *v = &d->verdicts[c[pos]];
    v->why = WHY_PICKED;
    d->picked[d->n_picked++] = v->dealer;
    d->picked_stage = stage;
    if (!more || pos == 0) {
        swap_u32(&c[0], &c[pos]);
        if (k)
            swap_dbl(&k[0], &k[pos]);
        return;
    }
    uint32_t cp = c[pos];
    memmove(c + 1, c, pos * sizeof *c);
    c[0] = cp;
    if (k) {
        double kp = k[pos];
        memmove(k + 1, k, pos * sizeof *k);
        k[0] = kp;
    }
}

/* Picks within one tier group c[0..m) (already cap-filtered, config
 * order) until k. */
static void pick_tier(const struct rules_table *t, struct rules_decision *d, const struct rules_input *in,
                      const struct lead *l, uint32_t *c, uint32_t m, uint32_t k, int stage, int64_t *rr)
{
    const struct rules_niche *n = &t->niches[d->niche];
    bool rot = n->strategy == STRAT_WEIGHTED || n->strategy == STRAT_ROUND_ROBIN;
    double *key = rot ? NULL : d->sortkey; /* the rotation needs no keys */
    for (uint32_t i = 0; i < m && key; i++) {
        uint32_t di = d->verdicts[c[i]].dealer;
        key[i] = 0;
        if (n->strategy == STRAT_NEAREST) /* the chord orders like the great circle */
            key[i] = (t->dhot[di].flags & RHOT_RADIUS) && l->has_geo ? terr_chord2(t, di, d->geo) : INFINITY;
        else if (n->strategy == STRAT_LEAST_LOADED) {
            double used = in->usage ? in->usage[di].used[PERIOD_DAY] : 0;
            if (used) /* 0 either way otherwise: the cap stays unread */
                key[i] = t->hot[di].caps[PERIOD_DAY] ? used / t->hot[di].caps[PERIOD_DAY] : used;
        }
    }
    while (m > 0 && d->n_picked < k) {
        uint32_t p;
        if (rot)
            p = swrr_step(t, d, in->weight, c, m, n->strategy == STRAT_ROUND_ROBIN, rr);
        else
            p = min_key(key, m);
        /* Ties must stay "listed first": the rest keeps its config order
         * while more picks follow. */
        pick_one(d, c, key, p, stage, d->n_picked + 1 < k && m > 2);
        c++;
        if (key)
            key++;
        m--;
    }
}

uint32_t rules_pick(const struct rules_table *t, struct rules_decision *d, const struct rules_input *in,
                    const struct lead *l, int64_t *rr)
{
    if (d->reason != REASON_ASSIGNED)
        return 0;
    uint32_t k = in->max_buyers ? in->max_buyers : (uint32_t)t->niches[d->niche].max_buyers;
    uint32_t lo = 0;
    for (int stage = 0; stage < 2 && d->n_picked == 0; stage++) {
        uint32_t hi = d->stage_end[stage];
        for (uint32_t i = lo; i < hi;) {
            uint16_t tier = d->verdicts[d->cand[i]].tier;
            uint32_t j = i;
            while (j < hi && d->verdicts[d->cand[j]].tier == tier)
                j++;
            if (d->n_picked < k) {
                /* Caps before the pick: a capped dealer neither wins nor
                 * gains rotation value. Eligible ones move to the front. */
                uint32_t m = in->usage ? 0 : j - i; /* no usage: nobody is capped */
                for (uint32_t x = i; x < j && in->usage; x++) {
                    struct rules_verdict *v = &d->verdicts[d->cand[x]];
                    enum rules_why w = cap_check(&t->hot[v->dealer], &in->usage[v->dealer]);
                    if (w != WHY_CANDIDATE)
                        v->why = (uint8_t)w;
                    else
                        d->cand[i + m++] = d->cand[x];
                }
                pick_tier(t, d, in, l, d->cand + i, m, k, stage, rr);
            }
            i = j;
        }
        lo = hi;
    }
    /* Whoever is still a candidate lost to the picked ones (or, in the
     * released stage, to the owners). */
    uint8_t lost1 = (uint8_t)(d->picked_stage == 0 ? WHY_OWNER : WHY_NOT_PICKED);
    for (uint32_t i = 0; i < d->n_verdicts; i++) {
        struct rules_verdict *v = &d->verdicts[i];
        if (v->why == WHY_CANDIDATE)
            v->why = v->stage == 1 ? lost1 : (uint8_t)WHY_NOT_PICKED;
    }
    if (d->n_picked == 0)
        d->reason = rules_most_telling(d);
    return d->n_picked;
}

void rules_rule_str(const struct rules_table *t, const struct rules_decision *d, uint32_t dealer, char *buf,
                    size_t len)
{
    const struct rules_niche *n = &t->niches[d->niche];
    if (d->owners && d->picked_stage == 0)
        snprintf(buf, len, "exclusive");
    else if (n->max_buyers > 1)
        snprintf(buf, len, "shared");
    else if (n->strategy == STRAT_NEAREST)
        snprintf(buf, len, "nearest");
    else if (n->strategy == STRAT_LEAST_LOADED)
        snprintf(buf, len, "least_loaded");
    else
        snprintf(buf, len, "tier:%d", t->dealers[dealer].tier);
}

double rules_distance_km(double lat1, double lon1, double lat2, double lon2)
{
    const double r = M_PI / 180.0;
    double dlat = (lat2 - lat1) * r, dlon = (lon2 - lon1) * r;
    double a = sin(dlat / 2) * sin(dlat / 2) + cos(lat1 * r) * cos(lat2 * r) * sin(dlon / 2) * sin(dlon / 2);
    return 2 * 6371.0 * asin(fmin(1.0, sqrt(a)));
}
