/* commit.h - the arguments of daemon/commit.lua for one lead: built from
 * the routing decision, kept until the reply so that a commit can be sent
 * again (the script makes a repeat safe). */
#ifndef LEADROUTER_COMMIT_H
#define LEADROUTER_COMMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "leadrouter/common.h"
#include "leadrouter/config.h"
#include "leadrouter/lead.h"
#include "leadrouter/rules.h"

enum commit_mode { COMMIT_STREAM, COMMIT_LIST, COMMIT_RETURN };

/* An argv for hiredis: argv[0..argc) with lengths, over one owned buffer. */
struct commit_args {
    size_t argc, cap;
    const char **argv;
    size_t *len;
    size_t *off; /* offsets into buf (argv is fixed up when buf stops moving) */
    char *buf;
    size_t used, bufcap;
    int leads;
    /* The dealers the batch picks and the rotation slots it moves, in
     * first-seen order (positions from 1 in the script's tables). */
    const struct rules_table *table; /* ref: what dpos and rrpos are sized for */
    uint32_t *dpos;  /* per dealer of table: position in dlist, 0 = absent */
    uint32_t *dlist;
    uint32_t nd;
    uint32_t *rrpos; /* per rotation slot of table: position in rrlist, 0 = absent */
    uint32_t *rrlist;
    uint32_t nrr;
    /* Cap buckets of the batch, per time zone of table: computed once per
     * zone and batch (bkseen[tz] == bkgen). */
    char (*bk)[PERIOD_N][16];
    uint32_t *bkseen, bkgen;
    char prefix[128];
};

/* A rotation move of one lead: slot (niche * n_dealers + dealer) += delta. */
struct commit_rr {
    uint32_t slot;
    int64_t delta;
};

/* One lead of a batch: where it came from and which attempt this is. */
struct commit_src {
    const char *ref;       /* stream entry id ("list" in list mode) */
    const char *payload;   /* the raw msgpack bytes */
    size_t payload_len;
    int attempt;
    const char *had;       /* dealers that had it already (returns), comma list */
    bool same_done;        /* dedup same_dealer already applied by the daemon */
};

/* A batch: begin, then one commit_add_* per lead, then end. argv[0..2] are
 * left for the sender ("EVALSHA" sha "0", or "EVAL" script "0"). Each
 * returns 0, or -1 when out of memory. */
int commit_begin(struct commit_args *a, const struct cfg *c, enum commit_mode mode, const char *consumer,
                 const char *plist, int64_t now_ms) LR_WUR;
/* d as rules_pick left it: the picks (or the unassigned reason) and every
 * verdict; rr: the rotation moves of the pick, sent only when it assigns. */
int commit_add_route(struct commit_args *a, const struct cfg *c, const struct commit_src *src, const struct lead *l,
                     const struct rules_decision *d, const struct commit_rr *rr, uint32_t n_rr) LR_WUR;
int commit_add_dead(struct commit_args *a, const struct commit_src *src, const char *error) LR_WUR;
/* Writes the dealer and rotation tables (buckets for now_ms) and the lead
 * count; the argv is ready to send until the next begin. 0, or -1 out of
 * memory. */
int commit_end(struct commit_args *a, int64_t now_ms) LR_WUR;
/* The reply's positions back to the dealer / rotation slot of the batch's
 * table (UINT32_MAX when out of range). */
uint32_t commit_dealer_at(const struct commit_args *a, uint64_t pos);
uint32_t commit_rr_at(const struct commit_args *a, uint64_t pos);
/* The raw payload of the batch's lead k (from 0), or NULL. */
const char *commit_payload(const struct commit_args *a, int k, size_t *len);
/* Leads in the batch. */
int commit_count(const struct commit_args *a);
void commit_args_free(struct commit_args *a);

/* Digest inputs (no PII leaves the daemon except to Redis, which hashes
 * them): the phone's digits, the e-mail lower-cased and trimmed. */
size_t commit_norm_phone(struct lr_str in, char *out, size_t cap);
size_t commit_norm_email(struct lr_str in, char *out, size_t cap);

#endif
