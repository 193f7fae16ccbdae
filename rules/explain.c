/* explain.c - names of the decision codes, cap buckets, and the
 * step-by-step text of a decision (explain, leadctl). Formatting only. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

const char *rules_why_str(enum rules_why why)
{
    static const char *const names[WHY_N] = {
        [WHY_CANDIDATE] = "candidate",      [WHY_PICKED] = "picked",
        [WHY_NOT_PICKED] = "not_picked",    [WHY_PAUSED] = "paused",
        [WHY_CLOSED] = "closed",            [WHY_MIN_SCORE] = "filtered:min_score",
        [WHY_GRADE] = "filtered:grade",     [WHY_FILTER] = "filtered:field",
        [WHY_ALREADY_HAD] = "already_had",  [WHY_OWNER] = "exclusive_owner",
        [WHY_CAPPED_HOUR] = "capped:hour",  [WHY_CAPPED_DAY] = "capped:day",
        [WHY_CAPPED_WEEK] = "capped:week",  [WHY_CAPPED_MONTH] = "capped:month",
        [WHY_QUEUE_FULL] = "capped:max_pending",
    };
    return (unsigned)why < WHY_N ? names[why] : "?";
}

const char *rules_reason_str(enum rules_reason r)
{
    static const char *const names[REASON_N] = {
        [REASON_ASSIGNED] = "assigned",
        [REASON_UNKNOWN_NICHE] = "unknown_niche",
        [REASON_NO_DEALER_IN_TERRITORY] = "no_dealer_in_territory",
        [REASON_ALL_CAPPED] = "all_capped",
        [REASON_ALL_CLOSED] = "all_closed",
        [REASON_FILTERED] = "filtered",
        [REASON_EXCLUSIVE_OWNER_UNAVAILABLE] = "exclusive_owner_unavailable",
    };
    return (unsigned)r < REASON_N ? names[r] : "?";
}

const char *rules_how_str(enum rules_how h)
{
    switch (h) {
    case HOW_EXPLICIT:
        return "niche";
    case HOW_SOURCE:
        return "source";
    case HOW_CAMPAIGN:
        return "campaign";
    case HOW_KEYWORD:
        return "keyword";
    default:
        return "none";
    }
}

const char *rules_match_str(enum rules_match m)
{
    switch (m) {
    case MATCH_ZIP:
        return "zip";
    case MATCH_PREFIX:
        return "zip_prefix";
    case MATCH_STATE:
        return "state";
    case MATCH_RADIUS:
        return "radius";
    default:
        return "none";
    }
}

void rules_cap_bucket(const struct rules_table *t, uint32_t dealer, enum rules_period p, int64_t now_s, char *buf,
                      size_t len)
{
    struct lr_civil c;
    lr_tz_civil(t->tzs[t->dealers[dealer].tz], now_s, &c);
    switch (p) {
    case PERIOD_HOUR:
        snprintf(buf, len, "%04d%02d%02d%02d", c.year, c.mon, c.mday, c.hour);
        break;
    case PERIOD_DAY:
        snprintf(buf, len, "%04d%02d%02d", c.year, c.mon, c.mday);
        break;
    case PERIOD_WEEK:
        snprintf(buf, len, "%04dW%02d", c.iso_year, c.iso_week);
        break;
    default:
        snprintf(buf, len, "%04d%02d", c.year, c.mon);
        break;
    }
}

/* snprintf that appends at *off and keeps counting past the end. */
struct out {
    char *buf;
    size_t len, off;
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->off < o->len ? o->len - o->off : 0;
    int n = vsnprintf(room ? o->buf + o->off : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->off += (size_t)n;
}

const char *rules_strategy_str(enum rules_strategy s)
{
    static const char *const names[] = {"weighted", "round_robin", "nearest", "least_loaded"};
    return names[s];
}

size_t rules_explain(const struct rules_table *t, const struct lead *l, const struct rules_decision *d, char *buf,
                     size_t len)
{
    struct out o = {buf, len, 0};
    if (len)
        buf[0] = 0;
    put(&o, "lead %.*s\n", (int)l->id.len, l->id.p);
    if (d->niche < 0)
        put(&o, "1. niche: none matched (niche, source, campaign, keywords)\n");
    else
        put(&o, "1. niche: %s (by %s)\n", t->niches[d->niche].name, rules_how_str(d->how));
    put(&o, "2. score: %d (%s), grade %s%s\n", d->score, d->score_computed ? "from signals" : "given",
        t->grades[d->grade].name, d->hot ? " (hot: head of queue)" : "");
    if (d->niche >= 0) {
        const struct rules_niche *n = &t->niches[d->niche];
        put(&o, "3. dealers covering the lead: %u (strategy %s, max_buyers %d)%s\n", d->n_verdicts,
            rules_strategy_str(n->strategy), n->max_buyers,
            d->owners ? (d->hold ? "; exclusive owners, overflow hold" : "; exclusive owners, overflow release")
                      : "");
        for (uint32_t i = 0; i < d->n_verdicts; i++) {
            const struct rules_verdict *v = &d->verdicts[i];
            const struct rules_dealer *dl = &t->dealers[v->dealer];
            put(&o, "   - %-24s tier %-3d weight %-5d match %-10s %s", dl->id, dl->tier, dl->weight,
                rules_match_str((enum rules_match)v->match), rules_why_str((enum rules_why)v->why));
            if (v->why == WHY_FILTER && v->detail < dl->n_filters)
                put(&o, " (%s)", dl->filters[v->detail].path);
            if (v->why == WHY_MIN_SCORE)
                put(&o, " (needs %d)", dl->min_score);
            if (dl->exclusive)
                put(&o, "%s", v->stage == 0 ? " [owner]" : " [exclusive]");
            put(&o, "\n");
        }
    }
    if (d->n_picked) {
        put(&o, "4. assigned to:");
        for (uint32_t i = 0; i < d->n_picked; i++) {
            char rule[32];
            rules_rule_str(t, d, d->picked[i], rule, sizeof rule);
            put(&o, "%s %s (rule %s)", i ? "," : "", t->dealers[d->picked[i]].id, rule);
        }
        put(&o, "\n");
    } else {
        put(&o, "4. unassigned: %s\n", rules_reason_str(d->reason));
    }
    return o.off;
}
