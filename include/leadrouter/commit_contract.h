/* commit_contract.h - the one declaration of the contract between the
 * daemon and daemon/commit.lua: argument positions, section widths and
 * reply codes. daemon/commit.c builds arguments from it; the build turns it
 * into the Lua constants that open the embedded script (tools/gen-contract.c),
 * so neither side counts positions by hand. */
#ifndef LEADROUTER_COMMIT_CONTRACT_H
#define LEADROUTER_COMMIT_CONTRACT_H

/* The fixed header, ARGV[1..]: X(name, meaning). */
#define LR_COMMIT_HEAD(X)                                                                              \
    X(MODE, "stream | list | return")                                                                  \
    X(INKEY, "the input stream, the returns stream, or (list mode) this consumer's processing list")  \
    X(GROUP, "the consumer group")                                                                     \
    X(CONSUMER, "this consumer's name")                                                                \
    X(FENCE_LO, "stream modes: the lowest entry id of the batch")                                      \
    X(FENCE_HI, "stream modes: the highest entry id of the batch")                                     \
    X(SEQKEY, "<p>:seq:<consumer>: the last batch this consumer committed")                            \
    X(SEQ, "this batch's number")                                                                      \
    X(PREV, "the batch it was decided after (\"0\": none)")                                            \
    X(RECORD_TTL, "seconds a lead record lives")                                                       \
    X(AUDIT_KEY, "<p>:audit")                                                                          \
    X(AUDIT_MAXLEN, "\"0\": no audit")                                                                 \
    X(UNASSIGNED_KEY, "<p>:unassigned")                                                                \
    X(DEAD_KEY, "<p>:dead")                                                                            \
    X(STATS_KEY, "<p>:stats:<hour>")                                                                   \
    X(SEEN_CUR, "the dedup bucket written now")                                                        \
    X(SEEN_PREV, "the bucket before it")                                                               \
    X(SEEN_EXPIREAT, "unix s when the current bucket may go")                                          \
    X(EXPECT, "return mode: the record the return was decided from")                                   \
    X(N_LEADS, "leads")                                                                                \
    X(N_EXIST, "records that must exist (duplicate_id from an earlier batch)")                         \
    X(N_DIGESTS, "dedup digests checked")                                                              \
    X(N_DEALERS, "dealers written")                                                                    \
    X(N_RR, "rotation fields moved")                                                                   \
    X(N_STATS, "statistics fields")                                                                    \
    X(N_UNASSIGNED, "unassigned entries")                                                              \
    X(N_DEAD, "dead letters")

/* Then the sections, in this order:
 *  leads       N_LEADS x LEAD_W: ref (list mode: the payload), lead id,
 *              record key ("" = writes no record), record value, audit
 *              decision text ("" = none)
 *  exist       N_EXIST record keys
 *  digests     N_DIGESTS x DIGEST_W: field, the value expected now ("" =
 *              none), the value to write ("" = none)
 *  dealers     N_DEALERS x (DEALER_W + 3 x nkeys + npush + nhot): queue
 *              key, max_pending, delta, nkeys, npush, nhot, then nkeys
 *              (counter key, cap (0 = counted only), ttl s), then the
 *              assignments to RPUSH, then those to LPUSH (hot grades)
 *  rr          N_RR x RR_W: hash key, field, delta
 *  stats       N_STATS x STAT_W: field, increment
 *  unassigned  N_UNASSIGNED entries (RPUSH UNASSIGNED_KEY)
 *  dead        N_DEAD entries (RPUSH DEAD_KEY) */
#define LR_COMMIT_WIDTHS(X)                                                                            \
    X(LEAD_W, 5)                                                                                       \
    X(DIGEST_W, 3)                                                                                     \
    X(DEALER_W, 6)                                                                                     \
    X(CAPKEY_W, 3)                                                                                     \
    X(RR_W, 3)                                                                                         \
    X(STAT_W, 2)

/* Reply: {codes, why, counters, rotation}. codes has one character per
 * lead: */
#define LR_COMMIT_CODES(X)                                                                             \
    X(CODE_DONE, 'C', "committed as decided")                                                          \
    X(CODE_STALE, 'S', "no longer pending: committed before (nothing written)")                        \
    X(CODE_NOT_OWNER, 'N', "another consumer owns the entry now (nothing written)")                    \
    X(CODE_REDO, 'R', "the batch was refused (why says by what): nothing written, decide it again")
/* counters: per dealer of the section, its nkeys counter values then its
 * queue length (-1 when max_pending is 0), after the batch (or as they are,
 * when refused); rotation: per rr field, its value. A batch is committed
 * whole or not at all (stale and not-owner leads aside, which refuse the
 * rest): every check comes before the first write. */

enum {
#define LR_X(name, what) LR_ARG_##name,
    LR_ARG_NONE_ = 0,
    LR_COMMIT_HEAD(LR_X)
#undef LR_X
    LR_ARG_END_ /* the first section argument */
};
enum {
#define LR_X(name, n) LR_##name = n,
    LR_COMMIT_WIDTHS(LR_X)
#undef LR_X
};
enum {
#define LR_X(name, ch, what) LR_##name = ch,
    LR_COMMIT_CODES(LR_X)
#undef LR_X
};

#endif
