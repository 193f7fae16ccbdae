/* rtest.h - shared helpers of the routing-core unit tests (test_rules.c,
 * test_lint.c): a routing table from config text through cfg_load(), leads
 * as struct literals (no msgpack), and one call for decide + pick with the
 * scratch, rotation state, usage and pause arrays a daemon would keep.
 * Header-only: everything is static. */
#ifndef LR_TESTS_RTEST_H
#define LR_TESTS_RTEST_H

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "leadrouter/config.h"
#include "leadrouter/rules.h"

/* A routing instant that is a Wednesday afternoon in UTC and in Chicago:
 * 2026-03-04 15:00 UTC. */
#define RT_NOW_S INT64_C(1772636400)

/* A string slice of a C string; NULL gives the absent (empty) string. */
static inline struct lr_str rt_str(const char *s)
{
    struct lr_str r = {s, s ? (uint32_t)strlen(s) : 0};
    return r;
}

/* A lead with the usual routing keys; pass NULL for absent ones. The strings
 * are referenced, not copied (string literals are the intended use). */
static inline struct lead lead_mk(const char *id, const char *niche, const char *state, const char *zip)
{
    struct lead l;
    memset(&l, 0, sizeof l);
    l.id = rt_str(id);
    l.niche = rt_str(niche);
    l.state = rt_str(state);
    l.zip = rt_str(zip);
    return l;
}

static inline void lead_geo(struct lead *l, double lat, double lon)
{
    l->has_geo = true;
    l->lat = lat;
    l->lon = lon;
}

static inline void lead_score(struct lead *l, int score)
{
    l->has_score = true;
    l->score = score;
}

/* Unix seconds of a UTC civil time (proleptic Gregorian; days from
 * 1970-01-01 by the usual March-based year). */
static inline int64_t rt_utc(int y, int mon, int d, int h, int mi)
{
    int64_t yy = y - (mon <= 2);
    int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
    int64_t yoe = yy - era * 400;
    int64_t doy = (153 * (mon > 2 ? mon - 3 : mon + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    return days * 86400 + h * 3600 + mi * 60;
}

/* Loads config text through a temporary file. Returns the config, or NULL
 * with cfg_load's message in err. */
static inline struct cfg *rt_cfg_try(const char *text, char *err, size_t errlen)
{
    char path[] = "/tmp/lr-rtest-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp failed");
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        cr_assert(w > 0, "cannot write the temporary config");
        off += (size_t)w;
    }
    close(fd);
    struct cfg *c = NULL;
    int rc = cfg_load(path, &c, err, errlen);
    unlink(path);
    if (rc != 0) {
        cfg_free(c);
        return NULL;
    }
    cr_assert_not_null(c, "cfg_load returned 0 but no config");
    cr_assert_not_null(c->rules, "cfg_load returned no routing table");
    cr_assert(c->rules->compiled, "cfg_load returned a routing table that is not compiled");
    return c;
}

/* Loads config text; a config that does not load fails the test. */
static inline struct cfg *rt_cfg(const char *text)
{
    char err[1024] = "";
    struct cfg *c = rt_cfg_try(text, err, sizeof err);
    cr_assert_not_null(c, "config does not load: %s\n--- config ---\n%s", err, text);
    return c;
}

/* Everything one routing test needs, as a daemon would hold it. */
struct rt {
    struct cfg *cfg;
    const struct rules_table *t; /* cfg->rules (ref) */
    struct rules_scratch *s;
    int64_t *rr;               /* t->n_rr_slots rotation values, zeroed */
    struct rules_usage *usage; /* per dealer, zeroed */
    uint8_t *paused;           /* per dealer, zeroed */
    struct rules_input in;     /* now = RT_NOW_S, usage and paused wired in */
    struct rules_decision d;
};

static inline void rt_open(struct rt *r, const char *text)
{
    memset(r, 0, sizeof *r);
    r->cfg = rt_cfg(text);
    r->t = r->cfg->rules;
    uint32_t nd = r->t->n_dealers ? r->t->n_dealers : 1;
    r->s = rules_scratch_new(r->t);
    r->rr = calloc(r->t->n_rr_slots ? r->t->n_rr_slots : 1, sizeof *r->rr);
    r->usage = calloc(nd, sizeof *r->usage);
    r->paused = calloc(nd, 1);
    cr_assert(r->s && r->rr && r->usage && r->paused, "out of memory");
    r->in.now_ms = RT_NOW_S * 1000;
    r->in.usage = r->usage;
    r->in.paused = r->paused;
}

/* rt_open with printf-style config text (for variants of one config). */
__attribute__((format(printf, 2, 3))) static inline void rt_openf(struct rt *r, const char *fmt, ...)
{
    char text[16384];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cr_assert(n > 0 && (size_t)n < sizeof text, "config text too long");
    rt_open(r, text);
}

static inline void rt_close(struct rt *r)
{
    rules_scratch_free(r->s);
    free(r->rr);
    free(r->usage);
    free(r->paused);
    cfg_free(r->cfg);
    memset(r, 0, sizeof *r);
}

static inline void rt_at(struct rt *r, int64_t unix_s)
{
    r->in.now_ms = unix_s * 1000;
}

/* The dealer index of id; an unknown id fails the test. */
static inline uint32_t rt_dealer(const struct rt *r, const char *id)
{
    int i = rules_dealer_find(r->t, id, strlen(id));
    cr_assert(i >= 0, "no dealer '%s' in the table", id);
    return (uint32_t)i;
}

/* Steps 2-7 only. */
static inline void rt_decide(struct rt *r, const struct lead *l)
{
    rules_decide(r->t, r->s, l, &r->in, &r->d);
}

/* Decide and pick; returns the number of dealers picked. */
static inline uint32_t rt_route(struct rt *r, const struct lead *l)
{
    rules_decide(r->t, r->s, l, &r->in, &r->d);
    uint32_t n = rules_pick(r->t, &r->d, &r->in, l, r->rr);
    cr_assert_eq(n, r->d.n_picked, "rules_pick returned %u but n_picked is %u", n, r->d.n_picked);
    return n;
}

/* The verdict of dealer id in the last decision, or NULL when the dealer
 * was not considered. */
static inline const struct rules_verdict *rt_verdict(const struct rt *r, const char *id)
{
    uint32_t di = rt_dealer(r, id);
    for (uint32_t i = 0; i < r->d.n_verdicts; i++)
        if (r->d.verdicts[i].dealer == di)
            return &r->d.verdicts[i];
    return NULL;
}

/* The why of dealer id, or -1 when it was not considered. */
static inline int rt_why(const struct rt *r, const char *id)
{
    const struct rules_verdict *v = rt_verdict(r, id);
    return v ? v->why : -1;
}

static inline int rt_match(const struct rt *r, const char *id)
{
    const struct rules_verdict *v = rt_verdict(r, id);
    return v ? v->match : -1;
}

/* The id of the i-th picked dealer, or "" past the end. */
static inline const char *rt_picked(const struct rt *r, uint32_t i)
{
    return i < r->d.n_picked ? r->t->dealers[r->d.picked[i]].id : "";
}

/* The rule string of the i-th picked dealer. */
static inline const char *rt_rule(const struct rt *r, uint32_t i, char *buf, size_t len)
{
    cr_assert(i < r->d.n_picked, "no pick %u", i);
    rules_rule_str(r->t, &r->d, r->d.picked[i], buf, len);
    return buf;
}

/* Counts the last picks in usage, as the commit would (every period). */
static inline void rt_commit(struct rt *r)
{
    for (uint32_t i = 0; i < r->d.n_picked; i++)
        for (int p = 0; p < PERIOD_N; p++)
            r->usage[r->d.picked[i]].used[p]++;
}

static inline const char *rt_why_name(int why)
{
    return why < 0 ? "(not considered)" : rules_why_str((enum rules_why)why);
}

/* Asserts the why of dealer id, naming both sides on failure. */
#define rt_assert_why(r, id, want)                                                                           \
    do {                                                                                                     \
        int got_ = rt_why((r), (id));                                                                        \
        cr_assert_eq(got_, (int)(want), "dealer '%s': why %s, expected %s", (id), rt_why_name(got_),         \
                     rt_why_name((int)(want)));                                                              \
    } while (0)

#define rt_assert_reason(r, want)                                                                            \
    cr_assert_eq((r)->d.reason, (want), "reason %s, expected %s", rules_reason_str((r)->d.reason),           \
                 rules_reason_str(want))

#endif
