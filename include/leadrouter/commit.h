/* commit.h - the arguments of daemon/commit.lua for one lead: built from
 * the routing decision, kept until the reply so that a commit can be sent
 * again (the script makes a repeat safe). */
#ifndef LEADROUTER_COMMIT_H
#define LEADROUTER_COMMIT_H

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
};

/* Where the lead came from and which attempt this is. */
struct commit_src {
    enum commit_mode mode;
    const char *consumer;
    const char *ref;       /* stream entry id, or the processing list */
    const char *payload;   /* the raw msgpack bytes */
    size_t payload_len;
    int attempt;
    const char *had;       /* dealers that had it already (returns), comma list */
};

/* argv[0] is left for the caller ("EVALSHA"/"EVAL"), argv[1] the script or
 * sha, argv[2] "0". Returns 0, or -1 when out of memory. */
int commit_build_route(struct commit_args *a, const struct cfg *c, const struct commit_src *src,
                       const struct lead *l, struct rules_decision *d, int64_t now_ms) LR_WUR;
int commit_build_dead(struct commit_args *a, const struct cfg *c, const struct commit_src *src, const char *error,
                      int64_t now_ms) LR_WUR;
void commit_args_free(struct commit_args *a);

/* Digest inputs (no PII leaves the daemon except to Redis, which hashes
 * them): the phone's digits, the e-mail lower-cased and trimmed. */
size_t commit_norm_phone(struct lr_str in, char *out, size_t cap);
size_t commit_norm_email(struct lr_str in, char *out, size_t cap);

#endif
