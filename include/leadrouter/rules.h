/* rules.h - one lead -> one routing decision (SPEC section 5, steps 2-8),
 * with the reason every considered dealer was kept or passed over.
 * Pure and deterministic: "now", pause flags, cap usage, queue depths and
 * rotation state are inputs. No I/O, no allocation per decision. */
#ifndef LEADROUTER_RULES_H
#define LEADROUTER_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "leadrouter/common.h"
#include "leadrouter/lead.h"
#include "leadrouter/table.h"

/* How the niche was found. */
enum rules_how { HOW_NONE, HOW_EXPLICIT, HOW_SOURCE, HOW_CAMPAIGN, HOW_KEYWORD };

/* How a dealer's territory covers the lead; higher is more specific. */
enum rules_match { MATCH_NONE, MATCH_RADIUS, MATCH_STATE, MATCH_PREFIX, MATCH_ZIP };

/* Why a considered dealer was kept or passed over (compact codes; the
 * strings of rules_why_str() go to the audit stream and explain). */
enum rules_why {
    WHY_CANDIDATE,   /* eligible, not (yet) picked */
    WHY_PICKED,
    WHY_NOT_PICKED,  /* eligible, but others filled max_buyers */
    WHY_PAUSED,
    WHY_CLOSED,      /* outside business hours */
    WHY_MIN_SCORE,
    WHY_GRADE,
    WHY_FILTER,      /* detail = filter index */
    WHY_ALREADY_HAD, /* a return: this dealer had the lead */
    WHY_OWNER,       /* passed over: an exclusive owner covers the lead */
    WHY_CAPPED_HOUR,
    WHY_CAPPED_DAY,
    WHY_CAPPED_WEEK,
    WHY_CAPPED_MONTH,
    WHY_QUEUE_FULL,  /* max_pending reached */
    WHY_N
};

/* Outcome of a decision (the unassigned reasons of SPEC section 4 that the
 * routing core can produce). */
enum rules_reason {
    REASON_ASSIGNED,
    REASON_UNKNOWN_NICHE,
    REASON_NO_DEALER_IN_TERRITORY,
    REASON_ALL_CAPPED,
    REASON_ALL_CLOSED,
    REASON_FILTERED,
    REASON_EXCLUSIVE_OWNER_UNAVAILABLE,
    REASON_N
};

struct rules_verdict {
    uint32_t dealer;
    uint32_t rr_slot; /* rotation slot of (niche, dealer): niche * n_dealers + dealer */
    uint8_t why;     /* enum rules_why */
    uint8_t match;   /* enum rules_match */
    uint8_t stage;   /* 0: owners or open field, 1: released to non-owners */
    uint16_t detail; /* WHY_FILTER: filter index */
    uint16_t tier;   /* the dealer's tier (copied for rules_pick) */
};

/* Per-dealer counters the daemon knows (from Redis). */
struct rules_usage {
    uint32_t used[PERIOD_N]; /* assignments in the current hour/day/week/month */
    uint32_t pending;        /* unconsumed assignments in the dealer's queue */
};

struct rules_input {
    int64_t now_ms;                  /* unix ms */
    const uint8_t *paused;           /* per dealer; NULL: none paused */
    const uint32_t *weight;          /* per dealer, runtime weights (>= 1); NULL: the config's */
    const struct rules_usage *usage; /* per dealer; NULL: all zero */
    const uint32_t *exclude;         /* dealers that already had this lead */
    uint32_t n_exclude;
    uint32_t max_buyers;             /* 0: the niche's (a return asks for 1) */
};

/* The decision. Arrays point into the scratch that produced it. */
struct rules_decision {
    enum rules_reason reason;
    int niche;          /* -1 when unknown */
    enum rules_how how;
    int score;
    bool score_computed; /* from signals */
    int grade;          /* index into table grades */
    bool hot;           /* grade listed in routing.hot_grades */
    bool owners;        /* stage 0 holds exclusive owners */
    bool hold;          /* owners cover the lead and one says overflow = hold */
    struct rules_verdict *verdicts; /* every dealer considered, config order */
    uint32_t n_verdicts;
    /* Candidates as indexes into verdicts, ordered by stage, tier, config
     * order; stage 0 is [0, stage_end[0]), stage 1 up to stage_end[1]. */
    uint32_t *cand;
    uint32_t stage_end[2];
    /* Filled by rules_pick. */
    uint32_t picked[RULES_MAX_BUYERS]; /* dealer indexes, in pick order */
    uint32_t n_picked;
    int picked_stage;
    double *sortkey; /* working memory of rules_pick (scratch) */
    double geo[3];   /* the lead's coordinates as a unit vector, when has_geo */
};

/* Per-thread working memory sized for one table. */
struct rules_scratch;
struct rules_scratch *rules_scratch_new(const struct rules_table *t);
void rules_scratch_free(struct rules_scratch *s); /* accepts NULL */

/* Optional, for callers working through a batch: starts loading what
 * deciding l will read, so that its memory latency overlaps the work on the
 * leads before it. Stage 0 classifies l, computes its index keys and loads
 * their slots; stage 1 (a few leads later) resolves the posting lists and
 * loads the dealers they name; stage 2 (later still) runs the radius checks
 * and loads the dealers inside. rr is the rotation state that rules_pick
 * will be given (its entries for these dealers are loaded too), or NULL.
 * The scratch keeps that work (up to 32 leads) and rules_decide(l) reuses
 * it, so nothing is computed twice. l must not change between the calls.
 * E.g. for each i: prefetch(lead[i+16], 0); prefetch(lead[i+8], 1);
 * prefetch(lead[i+2], 2); decide(lead[i]). No effect on results. */
void rules_prefetch(const struct rules_table *t, struct rules_scratch *s, const struct lead *l, int stage,
                    const int64_t *rr);

/* Steps 2-7 minus the caps: niche, score and grade, territory, contract,
 * hours, pause, exclusivity. Fills d; d->reason is REASON_ASSIGNED when
 * there are candidates left for rules_pick. */
void rules_decide(const struct rules_table *t, struct rules_scratch *s, const struct lead *l,
                  const struct rules_input *in, struct rules_decision *d);

/* Step 8 as the commit does it: among candidates, stage by stage and tier by
 * tier, skip those whose caps or queue are full (so they neither win nor
 * gain rotation value), order by the niche's strategy and take up to
 * max_buyers. rr holds the smooth-WRR current values, t->n_rr_slots of them;
 * it is updated. Returns the number picked; sets d->reason otherwise. */
uint32_t rules_pick(const struct rules_table *t, struct rules_decision *d,
                    const struct rules_input *in, const struct lead *l, int64_t *rr);

/* The rotation slot of dealer in niche, or -1. */
int rules_rr_slot(const struct rules_table *t, uint32_t dealer, uint32_t niche);

/* The assignment's `rule`: "exclusive", "shared", "nearest", "least_loaded"
 * or "tier:N". */
void rules_rule_str(const struct rules_table *t, const struct rules_decision *d, uint32_t dealer,
                    char *buf, size_t len);

const char *rules_why_str(enum rules_why why);      /* "capped:day", "filtered:min_score" */
const char *rules_reason_str(enum rules_reason r);  /* "all_capped" ... */
const char *rules_how_str(enum rules_how h);
const char *rules_strategy_str(enum rules_strategy s); /* "weighted" ... */
const char *rules_match_str(enum rules_match m);

/* Business hours: is dealer open at unix second now? */
bool rules_dealer_open(const struct rules_table *t, uint32_t dealer, int64_t now_s);

/* The cap bucket of dealer for period at now, in the dealer's local time:
 * YYYYMMDDHH, YYYYMMDD, YYYYWww (ISO week) or YYYYMM. */
void rules_cap_bucket(const struct rules_table *t, uint32_t dealer, enum rules_period p,
                      int64_t now_s, char *buf, size_t len);

/* Great-circle distance in km (haversine, mean Earth radius 6371 km). */
double rules_distance_km(double lat1, double lon1, double lat2, double lon2);

/* A step-by-step, human-readable account of d (explain). Returns the length
 * written (truncated to len-1), like snprintf. */
size_t rules_explain(const struct rules_table *t, const struct lead *l, const struct rules_decision *d,
                     char *buf, size_t len);

#endif
