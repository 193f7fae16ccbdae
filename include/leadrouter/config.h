/* config.h - the libconfig file -> validated settings + routing table.
 * A load builds everything new; any error leaves the caller's old config
 * untouched (reload swaps one pointer). */
#ifndef LEADROUTER_CONFIG_H
#define LEADROUTER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "leadrouter/common.h"
#include "leadrouter/table.h"

enum cfg_input_mode { INPUT_STREAM, INPUT_LIST };
enum cfg_dedup_action { DEDUP_SAME_DEALER, DEDUP_REJECT, DEDUP_IGNORE };

struct cfg {
    char *path;                  /* the file loaded (owned) */
    struct {
        char *host;              /* numeric address recommended (owned) */
        int port;
        char *socket;            /* Unix socket path, or NULL (owned) */
        char *username, *password; /* NULL when empty (owned) */
        int db;
        int startup_timeout;     /* seconds */
        bool allow_eviction;     /* run on a Redis whose maxmemory-policy evicts */
    } redis;
    struct {
        enum cfg_input_mode mode;
        char *group;             /* owned */
        int batch;
        int in_flight;           /* commits out at once */
        int claim_idle_ms;
        int max_deliveries;
    } input;
    char *prefix;                /* owned */
    struct {
        char *socket;            /* owned */
        mode_t mode;
        int idle_timeout;        /* seconds a client may stay silent */
    } admin;
    struct {
        int64_t record_ttl;      /* seconds */
        int max_attempts;
        int64_t audit_maxlen;
    } routing;
    struct {
        size_t max_lead_bytes;
    } limits;
    struct {
        int64_t window;          /* seconds */
        bool phone, email;
        enum cfg_dedup_action action;
    } dedup;
    struct rules_table *rules;   /* owned */
};

/* Loads and validates path (and the files it @includes; glob patterns are
 * expanded in sorted order, relative to path's directory). Returns 0 and a
 * new config in *out, or -1 with "FILE:LINE: message" in err. */
int cfg_load(const char *path, struct cfg **out, char *err, size_t errlen) LR_WUR;
void cfg_free(struct cfg *c); /* accepts NULL */

#endif
