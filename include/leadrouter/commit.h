/* commit.h - the arguments of daemon/commit.lua for one batch, built from
 * the routing decisions (layout: commit_contract.h), kept until the reply
 * so that a commit can be sent again (the script makes a repeat safe); and
 * the lead record and digests the daemon writes and reads. */
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

struct commit_piece {
    size_t off, len; /* into commit_args.buf */
};
struct commit_vec {
    struct commit_piece *p;
    size_t n, cap;
};

/* A dealer the batch writes to: its assignments and counters. */
struct commit_dealer {
    uint32_t di;      /* dealer index in the table */
    uint32_t delta;   /* assignments */
    uint32_t npush, nhot;
    uint8_t nk;       /* counters kept, periods in period[] */
    uint8_t period[PERIOD_N];
};

/* A rotation move of one lead: slot (niche * n_dealers + dealer) += delta. */
struct commit_rr {
    uint32_t slot;
    int64_t delta;
};

struct commit_stat; /* a statistics field of the batch (commit.c) */

/* An argv for hiredis over one owned buffer. argv[0..2] are left for the
 * sender ("EVALSHA" sha "0", or "EVAL" script "0"). */
struct commit_args {
    char *buf;
    size_t used, bufcap;
    struct commit_vec head, leads, exist, digests, unassigned, dead, bodies;
    uint32_t *body_dealer; /* per bodies entry: position in dlist, hot bit 31 */
    size_t body_cap;
    const char **argv;
    size_t *len, argc, argcap;
    int leads_n;
    enum commit_mode mode;
    int64_t now_ms;
    char fence_lo[48], fence_hi[48];
    uint64_t lo_ms, lo_seq, hi_ms, hi_seq;
    /* Dealers and rotation fields of the batch, in first-seen order. */
    const struct rules_table *table; /* what the tables below are sized for */
    uint32_t *dpos;                  /* per dealer of table: 1 + position in dlist, 0 = absent */
    struct commit_dealer *dlist;
    uint32_t nd;
    uint32_t *rrpos;                 /* per rotation slot: 1 + position, 0 = absent */
    uint32_t *rrlist;
    int64_t *rrdelta;
    uint32_t nrr;
    uint8_t *count_day;              /* per dealer: keep its day counter (least_loaded) */
    /* Cap buckets per time zone, computed once per zone and batch. */
    char (*bk)[PERIOD_N][16];
    uint32_t *bkseen, bkgen;
    struct commit_stat *stats;
    size_t nstats, capstats;
    uint32_t *stat_slot;             /* open addressing: 1 + index into stats */
    size_t stat_slots;
    char prefix[128];
    char consumer[128];
    char inkey[300];
    bool hot_grades_any;
};

/* A lead of a batch: where it came from, which attempt, and what the
 * daemon's pre-read found (the checks of SPEC 5 that come before routing). */
struct commit_src {
    const char *ref;     /* stream entry id (list mode: not used) */
    const char *payload; /* the raw msgpack bytes */
    size_t payload_len;
    int attempt;
    const char *had;      /* returns: dealers that had it already, comma list */
    const char *returned; /* returns: dealers that returned it, comma list */
    const char *refusal;  /* decided before routing: "duplicate_id", "suppressed",
                           * "duplicate", "max_attempts", or NULL */
    const char *exist_key;/* duplicate_id from a record Redis holds: it must still exist */
    /* dedup digests (hex SHA-1) and the value each holds now ("" = none) */
    uint32_t n_digests;
    const char *digest[2];
    const char *digest_now[2];
};

/* Begins a batch. inkey: the input stream, the returns stream, or the
 * processing list. 0, or -1 when out of memory. */
int commit_begin(struct commit_args *a, const struct cfg *c, enum commit_mode mode, const char *consumer,
                 const char *inkey, int64_t now_ms) LR_WUR;
/* d as rules_decide/rules_pick left it (ignored when src->refusal is set);
 * rr: the rotation moves of the pick. */
int commit_add_route(struct commit_args *a, const struct cfg *c, const struct commit_src *src, const struct lead *l,
                     const struct rules_decision *d, const struct commit_rr *rr, uint32_t n_rr) LR_WUR;
int commit_add_dead(struct commit_args *a, const struct commit_src *src, const char *error) LR_WUR;
/* Return mode: the record the return was decided from. */
int commit_set_expect(struct commit_args *a, const char *rec, size_t len) LR_WUR;
/* Finishes the argv: seq is this batch's number, prev the one it was
 * decided after (0: none). 0, or -1 when out of memory. */
int commit_end(struct commit_args *a, uint64_t seq, uint64_t prev) LR_WUR;
int commit_count(const struct commit_args *a);
/* The ref (stream id, or list mode's payload) and payload of lead k. */
const char *commit_ref(const struct commit_args *a, int k, size_t *len);
void commit_args_free(struct commit_args *a);

/* The value a dedup digest holds: "<dealer>\t<unix ms>". */
size_t commit_seen_value(const char *dealer, int64_t ms, char *out, size_t cap);
/* Parses one: the dealer (copied) and the time, or false. */
bool commit_seen_parse(const char *v, size_t len, char *dealer, size_t cap, int64_t *ms);
/* The dedup bucket keys for now (cur, prev) and when cur may expire. */
void commit_seen_keys(const struct cfg *c, int64_t now_ms, char *cur, char *prev, size_t cap, int64_t *expireat);

/* Digest inputs (no contact data leaves the daemon): the phone in E.164
 * digits (README: do-not-call): '+' or an international prefix (00, or
 * 011 in US/CA) means international; otherwise the number is national to
 * country (the config's default): US/CA add 1 to 10 digits, listed
 * countries drop the trunk 0 and add their calling code, others keep the
 * digits; the e-mail lower-cased and trimmed. */
size_t commit_norm_phone(struct lr_str in, const char *country, char *out, size_t cap);
size_t commit_norm_email(struct lr_str in, char *out, size_t cap);
/* Lowercase hex SHA-1 (41 bytes with the NUL) of prefix then s. */
void commit_sha1_hex(const char *prefix, const char *s, size_t n, char out[41]);

/* The lead record <p>:lead:<id> (one msgpack map, written whole). */
struct commit_record {
    char dealers[1024], returned[1024], niche[64], outcome[48], ref[64];
    int attempt;
    int64_t at;
    const char *payload; /* into the buffer parsed */
    size_t payload_len;
};
/* 0, or -1 when v is not a record. */
int commit_record_parse(const char *v, size_t len, struct commit_record *r);

#endif
