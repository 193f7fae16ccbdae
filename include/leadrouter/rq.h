/* rq.h - the Redis side of the daemon: two async connections (one for the
 * blocking reads, one for commits and everything else), the input consumer
 * (stream or list mode), the returns stream, and the atomic commit. */
#ifndef LEADROUTER_RQ_H
#define LEADROUTER_RQ_H

#include <stdbool.h>
#include <stdint.h>

#include "leadrouter/common.h"
#include "leadrouter/config.h"
#include "leadrouter/rules.h"

struct event_base;
struct redisReply;
struct rq;
struct stats;

/* Process-lifetime counters (SPEC section 6: this process's, since start). */
struct rq_stats {
    uint64_t received, assigned, unassigned, dead, returns, stale, errors, recovered;
    uint64_t redone; /* leads decided again: Redis's counters disagreed with ours */
    bool redis_up;
};

/* cfg is a reference: the caller keeps it alive (rq_set_config swaps it). */
struct rq *rq_new(struct event_base *base, const struct cfg *cfg, char *err, size_t errlen) LR_WUR;
void rq_free(struct rq *q); /* accepts NULL */

/* Connects and starts consuming. on_ready runs once, when consuming starts;
 * on_exit(code) when the loop should end: 0 after rq_stop drained, 2 when
 * Redis stayed unreachable past redis.startup_timeout or refused our
 * credentials. */
void rq_start(struct rq *q, void (*on_ready)(void *), void (*on_exit)(void *, int), void *ctx);

/* Stops taking leads; in-flight commits finish, then on_exit(0). */
void rq_stop(struct rq *q);

/* A new config for the next leads. Commits in flight carry their own
 * arguments, so the caller may free the old config right after. (Redis
 * connection settings take effect at the next start.) */
void rq_set_config(struct rq *q, const struct cfg *cfg);

const struct rq_stats *rq_stats(const struct rq *q);

/* Where the outcomes are counted (NULL: nowhere). The caller keeps it alive. */
void rq_set_stats(struct rq *q, struct stats *st);

/* Runtime controls from ops (admin pause/resume/weight), one entry per
 * dealer of the config last given to rq_new/rq_set_config: paused flags and
 * weights (>= 1). NULL: none paused / the config's weights. The caller keeps
 * the arrays alive and calls this again after each rq_set_config. */
void rq_set_controls(struct rq *q, const uint8_t *paused, const uint32_t *weight);

/* The live pick state of the current table, for explain and `dealers`:
 * rotation values (t->n_rr_slots) and per-dealer counters (cap usage in the
 * current buckets, queue depths) as the daemon last learned them from
 * Redis. Either may be NULL before the first load. Valid until the next
 * event-loop turn. */
void rq_pick_state(const struct rq *q, const int64_t **rr, const struct rules_usage **usage);

/* Sends one command on the commit connection, for ops (e.g. `why`, the cap
 * counters of `dealers`). cb gets the reply, or NULL if the connection
 * dropped before it came; it must not keep the reply. Returns 0, or -1 when
 * Redis is down (cb is then never called). */
int rq_command(struct rq *q, int argc, const char **argv, const size_t *argvlen,
               void (*cb)(const struct redisReply *reply, void *priv), void *priv) LR_WUR;

#endif
