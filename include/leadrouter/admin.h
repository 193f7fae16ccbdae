/* admin.h - the admin/stats socket of SPEC section 6 and what its commands
 * share with leadctl: runtime controls (pause, weight), the `explain` path
 * (JSON or msgpack lead -> the daemon's decoder -> the routing core, never
 * committed) and the `why` lookup (lead record + audit stream -> text).
 *
 * Protocol: a Unix stream socket; one command per line (LF or CRLF, at most
 * ADMIN_MAX_LINE bytes); each reply is zero or more lines ended by a line
 * holding a single "." (a reply line that starts with "." gets one more "."
 * in front, as in SMTP, so the terminator is unambiguous). Errors are one
 * line starting with "ERR ". A command prefixed with "json " answers with
 * one JSON document instead of text. */
#ifndef LEADROUTER_ADMIN_H
#define LEADROUTER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "leadrouter/common.h"

struct event_base;
struct cfg;
struct rq;
struct stats;
struct rules_table;
struct rules_usage;
struct redisReply;

#define ADMIN_MAX_LINE (256 * 1024)    /* a msgpack lead of 64 KiB fits as hex */
#define ADMIN_MAX_OUTPUT (1024 * 1024) /* unread reply bytes before a client is dropped */
#define ADMIN_MAX_CLIENTS 128
#define ADMIN_WHY_SCAN 10000 /* audit entries scanned when the record names none */

/* ---- runtime controls ------------------------------------------------ */

/* Pause flags and weight overrides set by ops, kept by dealer id so that
 * they survive reloads, and the per-dealer arrays rules_input/rq want for
 * the table in force. */
struct admin_controls;

struct admin_controls *admin_controls_new(void);
void admin_controls_free(struct admin_controls *c); /* accepts NULL */

/* Rebuilds the arrays for table t (ref: the caller keeps it alive until the
 * next apply). On failure (out of memory) the previous arrays stay. Pass
 * the new arrays to rq_set_controls afterwards: the old ones are freed. */
int admin_controls_apply(struct admin_controls *c, const struct rules_table *t) LR_WUR;

/* Per dealer of the last applied table: paused flags (0/1) and weights
 * (the override, else the config's weight). */
const uint8_t *admin_controls_paused(const struct admin_controls *c);
const uint32_t *admin_controls_weight(const struct admin_controls *c);
/* Whether the dealer's weight is an override (index into the table). */
bool admin_controls_weight_overridden(const struct admin_controls *c, uint32_t dealer);

/* Sets a dealer's pause flag / weight override (weight 0: back to the
 * config's weight). The dealer must exist in the applied table. Returns 0,
 * or -1 with the reason in err. */
int admin_controls_pause(struct admin_controls *c, const char *dealer, bool paused, char *err,
                         size_t errlen) LR_WUR;
int admin_controls_set_weight(struct admin_controls *c, const char *dealer, uint32_t weight, char *err,
                              size_t errlen) LR_WUR;

/* ---- the socket server ----------------------------------------------- */

/* What the commands act on. Pointers are references kept alive by the
 * caller for the life of the admin. */
struct admin_env {
    struct stats *stats;
    struct rq *rq; /* NULL: commands that need Redis answer without it */
    struct admin_controls *ctl;
    /* The config in force. */
    const struct cfg *(*config)(void *ctx);
    /* Reloads the config: 0 and the new generation, or -1 and
     * "FILE:LINE: message" in err (the old config stays). NULL: `reload`
     * answers ERR. */
    int (*reload)(void *ctx, uint64_t *generation, char *err, size_t errlen);
    /* After pause/resume/weight changed ctl's arrays (e.g. to pass them to
     * rq_set_controls again). May be NULL. */
    void (*controls_changed)(void *ctx);
    void *ctx;
};

struct admin;

/* Listens on path (NULL: no socket, for admin_exec) with mode, which never
 * grants anything to others. A stale socket file is replaced only if
 * nothing listens on it. Returns NULL with the reason in err. */
struct admin *admin_new(struct event_base *base, const char *path, mode_t mode, const struct admin_env *env,
                        char *err, size_t errlen) LR_WUR;
/* Closes every client and the socket, and removes the socket file if it
 * is still the one admin_new created. Accepts NULL. Replies still awaited
 * from Redis are dropped safely when they come. */
void admin_free(struct admin *a);

/* Runs one command line (without its newline) as a client would, and
 * returns its complete framed reply ("...\n.\n", malloc'ed; NULL when out
 * of memory). Commands that wait for Redis answer ERR here. For tests and
 * the fuzzer. */
char *admin_exec(struct admin *a, const char *line, size_t len);

/* Splits line into at most max words (spaces and tabs); returns the count,
 * or -1 when there are more than max words. buf (len + 1 bytes) receives
 * the NUL-terminated words; words[i] point into it; *rest is the raw text
 * after the first word with leading blanks skipped (for `explain`). */
int admin_split(const char *line, size_t len, char *buf, char **words, int max, const char **rest);

/* ---- explain ------------------------------------------------------------ */

/* A JSON object -> the msgpack map a producer would send (strings, ints,
 * floats, bools, null, arrays, maps). Returns 0 and a malloc'ed buffer, or
 * -1 with the reason in err. */
int admin_json_to_msgpack(const char *json, size_t len, char **out, size_t *outlen, char *err,
                          size_t errlen) LR_WUR;
/* The decision for one msgpack lead, decoded exactly as the daemon decodes
 * it (limits.max_lead_bytes included), then decided and picked on a copy:
 * with the given pause flags and weights (per dealer of c's table, or
 * NULL), the rotation values rr (t->n_rr_slots, copied, never changed; NULL:
 * an empty rotation state) and cap usage (per dealer, or NULL: none), as
 * rq_pick_state gives them. Nothing is committed. Returns 0 and a malloc'ed
 * text (or JSON document), or -1 with the reason in err (a lead the decoder
 * refuses: "dead letter: <code>: <detail>"). */
int admin_explain(const struct cfg *c, const uint8_t *paused, const uint32_t *weight, const int64_t *rr,
                  const struct rules_usage *usage, const char *payload, size_t len, int64_t now_ms, bool json,
                  char **out, char *err, size_t errlen) LR_WUR;

/* ---- why ---------------------------------------------------------------- */

/* The record and audit lookups behind `why LEAD_ID`, as a state machine
 * without I/O, so the daemon (async) and leadctl (blocking) share it:
 *   w = admin_why_new(prefix, id)
 *   while (admin_why_command(w, &argc, &argv, &len)) send it; admin_why_feed(w, reply)
 *   admin_why_result(w, json, &out)
 * Reads <p>:lead:<id>, then the audit entry it names (field `audit`), or
 * else scans the newest ADMIN_WHY_SCAN entries of <p>:audit in pages. */
struct admin_why;

/* Refuses an id the decoder would refuse (invalid_id), with the reason. */
struct admin_why *admin_why_new(const char *prefix, const char *lead_id, char *err, size_t errlen) LR_WUR;
void admin_why_free(struct admin_why *w); /* accepts NULL */
/* The next command to send: true with argc/argv/argvlen (valid until the
 * next feed), false when the lookup is complete. */
bool admin_why_command(struct admin_why *w, int *argc, const char ***argv, const size_t **argvlen);
/* The reply to that command (NULL: the connection dropped). Returns 0, or
 * -1 with the reason in err (the lookup is then over). */
int admin_why_feed(struct admin_why *w, const struct redisReply *reply, char *err, size_t errlen) LR_WUR;
/* The account: when, to whom, by which rule, who else was considered and
 * why not (text or JSON, malloc'ed). -1 with "unknown lead ID" when
 * neither a record nor an audit entry was found. */
int admin_why_result(const struct admin_why *w, bool json, char **out, char *err, size_t errlen) LR_WUR;

#endif
