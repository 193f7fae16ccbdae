/* stats.c - placeholder until the statistics module lands: events are
 * ignored. (Being replaced; see include/leadrouter/stats.h.) */
#include <stdlib.h>
#include <string.h>

#include "leadrouter/stats.h"

struct stats {
    int unused;
};

struct stats *stats_new(void) { return calloc(1, sizeof(struct stats)); }
void stats_free(struct stats *s) { free(s); }
void stats_received(struct stats *s, uint64_t n) { (void)s; (void)n; }
void stats_assigned(struct stats *s, const char *dealer, const char *niche, const char *source) { (void)s; (void)dealer; (void)niche; (void)source; }
void stats_unassigned(struct stats *s, const char *reason, const char *niche, const char *source) { (void)s; (void)reason; (void)niche; (void)source; }
void stats_dead(struct stats *s, const char *reason) { (void)s; (void)reason; }
void stats_returned(struct stats *s) { (void)s; }
void stats_duplicate(struct stats *s) { (void)s; }
void stats_latency(struct stats *s, double seconds) { (void)s; (void)seconds; }
void stats_set_redis_up(struct stats *s, bool up) { (void)s; (void)up; }
void stats_set_in_flight(struct stats *s, int64_t n) { (void)s; (void)n; }
void stats_set_config(struct stats *s, uint64_t generation) { (void)s; (void)generation; }
void stats_reload_failed(struct stats *s) { (void)s; }
char *stats_text(const struct stats *s) { (void)s; return strdup(""); }
char *stats_json(const struct stats *s) { (void)s; return strdup("{}"); }
char *stats_prometheus(const struct stats *s) { (void)s; return strdup(""); }
uint64_t stats_dealer_assigned(const struct stats *s, const char *dealer) { (void)s; (void)dealer; return 0; }
double stats_latency_quantile(const struct stats *s, double q) { (void)s; (void)q; return 0; }
