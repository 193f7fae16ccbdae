/* common.c - leadctl's config and Redis connection, shared by commands. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "leadctl.h"
#include "leadrouter/config.h"

const struct cfg *lc_config(struct lc_env *e)
{
    if (!e->cfg) {
        char err[1024];
        if (cfg_load(e->config_path, &e->cfg, err, sizeof err) != 0) {
            fprintf(stderr, "leadctl: %s\n", err);
            e->cfg = NULL;
        }
    }
    return e->cfg;
}

static int lc_ok(redisContext *rc, const char *what, redisReply *r)
{
    int ok = r && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        fprintf(stderr, "leadctl: redis %s failed: %s\n", what, r ? r->str : rc->errstr);
    if (r)
        freeReplyObject(r);
    return ok;
}

redisContext *lc_redis(struct lc_env *e)
{
    const struct cfg *c = lc_config(e);
    if (!c)
        return NULL;
    struct timeval tv = {5, 0};
    redisContext *rc = c->redis.socket ? redisConnectUnixWithTimeout(c->redis.socket, tv)
                                       : redisConnectWithTimeout(c->redis.host, c->redis.port, tv);
    char where[300];
    if (c->redis.socket)
        snprintf(where, sizeof where, "%s", c->redis.socket);
    else
        snprintf(where, sizeof where, "%s:%d", c->redis.host, c->redis.port);
    if (!rc || rc->err) {
        fprintf(stderr, "leadctl: cannot reach redis at %s (%s): is redis-server running, and is `redis` in %s right?\n",
                where, rc ? rc->errstr : "out of memory", e->config_path);
        if (rc)
            redisFree(rc);
        return NULL;
    }
    redisSetTimeout(rc, tv);
    if (c->redis.password) {
        redisReply *r = c->redis.username ? redisCommand(rc, "AUTH %s %s", c->redis.username, c->redis.password)
                                          : redisCommand(rc, "AUTH %s", c->redis.password);
        if (!lc_ok(rc, "AUTH", r)) {
            redisFree(rc);
            return NULL;
        }
    }
    if (c->redis.db && !lc_ok(rc, "SELECT", redisCommand(rc, "SELECT %d", c->redis.db))) {
        redisFree(rc);
        return NULL;
    }
    return rc;
}
