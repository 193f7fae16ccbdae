/* stats.h - the daemon's statistics since start, each declared once (name,
 * kind, help) and rendered from that one list as `name value` text, JSON and
 * Prometheus text exposition (SPEC section 6). Labels that come from leads
 * (source) are bounded: past a limit they count under "other". */
#ifndef LEADROUTER_STATS_H
#define LEADROUTER_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "leadrouter/common.h"

struct stats;

struct stats *stats_new(void);
void stats_free(struct stats *s); /* accepts NULL */

/* Events, as the commit replies arrive. Strings are copied; NULL or ""
 * means "none" (a lead without a source or niche). */
void stats_received(struct stats *s, uint64_t n);
void stats_assigned(struct stats *s, const char *dealer, const char *niche, const char *source);
void stats_unassigned(struct stats *s, const char *reason, const char *niche, const char *source);
void stats_dead(struct stats *s, const char *reason);
void stats_returned(struct stats *s);
void stats_duplicate(struct stats *s); /* dedup hits (duplicate, duplicate_id) */
void stats_latency(struct stats *s, double seconds); /* created_at (or receipt) -> commit */

/* Gauges. */
void stats_set_redis_up(struct stats *s, bool up);
void stats_set_in_flight(struct stats *s, int64_t n);
void stats_set_config(struct stats *s, uint64_t generation);
void stats_reload_failed(struct stats *s);
/* The message of the last refused reload, shown by `stats` until the next
 * successful one (stats_set_config clears it); NULL clears it. */
void stats_set_reload_error(struct stats *s, const char *msg);

/* Renderings; each returns a malloc'ed NUL-terminated string (NULL when out
 * of memory) that the caller frees. */
char *stats_text(const struct stats *s);       /* `name value` lines (the admin `stats`) */
char *stats_json(const struct stats *s);
char *stats_prometheus(const struct stats *s); /* text exposition format 0.0.4 */

/* Reads for the admin commands: assigned since start per dealer (0 when
 * never seen), and a latency quantile in seconds (q in [0,1]). */
uint64_t stats_dealer_assigned(const struct stats *s, const char *dealer);
double stats_latency_quantile(const struct stats *s, double q);

/* Assignments since start of dealer in niche (0 when never seen), for the
 * fairness ledger of the admin `dealers`. */
uint64_t stats_dealer_niche_assigned(const struct stats *s, const char *dealer, const char *niche);

/* Counters per niche / per source since start (assigned counts
 * assignments, unassigned counts leads): fn runs once per value seen, in
 * byte order of the names. A lead without a source counts under "". */
typedef void (*stats_each_fn)(void *ctx, const char *name, uint64_t assigned, uint64_t unassigned);
void stats_each_niche(const struct stats *s, stats_each_fn fn, void *ctx);
void stats_each_source(const struct stats *s, stats_each_fn fn, void *ctx);

#endif
