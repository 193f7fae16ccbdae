/* leadctl.h - what leadctl's commands share: the command line's global
 * options, the config, and a Redis connection made from it. */
#ifndef LEADCTL_H
#define LEADCTL_H

#include <stdbool.h>

struct cfg;
struct redisContext;

#define LC_DEFAULT_CONFIG "/etc/leadrouter/leadrouter.conf"

struct lc_env {
    const char *config_path; /* -c */
    const char *socket_path; /* -s, or NULL: admin.socket of the config */
    bool json;               /* --json */
    struct cfg *cfg;         /* loaded on first use by lc_config */
};

/* The config, loaded once. On error prints "leadctl: FILE:LINE: message"
 * to stderr and returns NULL. */
const struct cfg *lc_config(struct lc_env *e);

/* A blocking connection to the config's Redis (TCP or Unix socket, AUTH,
 * SELECT db), with a 5 s timeout. On failure prints what to check and
 * returns NULL. The caller frees it with redisFree. */
struct redisContext *lc_redis(struct lc_env *e);

/* Subcommands: argv[0] is the command's name; each returns the exit code
 * (0 ok, 1 bad arguments or bad input, 2 cannot reach Redis or the daemon). */
int lc_import(struct lc_env *e, int argc, char **argv);
int lc_export(struct lc_env *e, int argc, char **argv);
int lc_report(struct lc_env *e, int argc, char **argv);
int lc_dnc(struct lc_env *e, int argc, char **argv);

#endif
