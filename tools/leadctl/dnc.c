/* dnc.c - `leadctl dnc add|remove|check PHONE...` and `leadctl dnc import
 * FILE|-`: the suppression list <p>:dnc kept in the form the daemon checks
 * (SPEC 5: the phone's digits, a leading 1 added to 10 digits when
 * defaults.country is US or CA, stored as the lowercase hex SHA-1 of that
 * digit string). Phone numbers are contact data: they are never printed
 * back, only line numbers and counts. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leadctl.h"
#include "leadrouter/commit.h"
#include "leadrouter/config.h"

/* Digits a phone may have once normalized (E.164: at most 15), and the
 * fewest that make a number at all. */
#define DNC_MIN_DIGITS 7
#define DNC_MAX_DIGITS 15
/* Members per SADD / SREM / SMISMEMBER. */
#define DNC_CHUNK 1000
/* The longest line `dnc import` reads. */
#define DNC_MAX_LINE 256

static void dnc_usage(void)
{
    fprintf(stderr, "usage: leadctl dnc add|remove|check PHONE...\n"
                    "       leadctl dnc import FILE|-   (one phone per line; # comments, a header line "
                    "without digits and blank lines are skipped)\n");
}

/* The member of a phone, or why it is not one. */
static const char *dnc_member(const struct cfg *c, const char *phone, size_t len, char out[41])
{
    char digits[64];
    size_t n = commit_norm_phone((struct lr_str){phone, (uint32_t)len}, c->rules->default_country, digits,
                                 sizeof digits);
    if (n < DNC_MIN_DIGITS)
        return "fewer than 7 digits: not a phone number";
    if (n > DNC_MAX_DIGITS)
        return "more than 15 digits: not a phone number";
    commit_sha1_hex("", digits, n, out);
    return NULL;
}

struct dnc_set {
    char (*m)[41];
    size_t n, cap;
};

static int dnc_push(struct dnc_set *s, const char m[41])
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        void *p = realloc(s->m, cap * sizeof *s->m);
        if (!p)
            return -1;
        s->m = p;
        s->cap = cap;
    }
    memcpy(s->m[s->n++], m, 41);
    return 0;
}

/* Sends cmd (SADD, SREM or SMISMEMBER) over s in chunks; *hits: members
 * added, removed, or found. 0, or 2 when Redis fails. */
static int dnc_apply(redisContext *rc, const char *cmd, const char *key, const struct dnc_set *s, long long *hits)
{
    const char *argv[2 + DNC_CHUNK];
    size_t len[2 + DNC_CHUNK];
    *hits = 0;
    for (size_t at = 0; at < s->n; at += DNC_CHUNK) {
        size_t k = s->n - at < DNC_CHUNK ? s->n - at : DNC_CHUNK;
        argv[0] = cmd;
        len[0] = strlen(cmd);
        argv[1] = key;
        len[1] = strlen(key);
        for (size_t i = 0; i < k; i++) {
            argv[2 + i] = s->m[at + i];
            len[2 + i] = 40;
        }
        redisReply *r = redisCommandArgv(rc, (int)(2 + k), argv, len);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            fprintf(stderr, "leadctl: redis %s %s: %s\n", cmd, key, r ? r->str : rc->errstr);
            if (r)
                freeReplyObject(r);
            return 2;
        }
        if (r->type == REDIS_REPLY_INTEGER)
            *hits += r->integer;
        else if (r->type == REDIS_REPLY_ARRAY)
            for (size_t i = 0; i < r->elements; i++)
                *hits += r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1;
        freeReplyObject(r);
    }
    return 0;
}

/* Reads FILE (or stdin for "-") into s; every bad line is reported as
 * FILE:LINE and makes it fail (1): nothing is written then. */
static int dnc_read(const struct cfg *c, const char *path, struct dnc_set *s)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    const char *name = f == stdin ? "(stdin)" : path;
    if (!f) {
        fprintf(stderr, "leadctl: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char line[DNC_MAX_LINE + 2];
    int bad = 0;
    long ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        size_t n = strlen(line);
        if (n == sizeof line - 1 && line[n - 1] != '\n') {
            fprintf(stderr, "leadctl: %s:%ld: longer than %d bytes\n", name, ln, DNC_MAX_LINE);
            bad++;
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            continue;
        }
        char *p = line + (ln == 1 && memcmp(line, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0);
        p[strcspn(p, "\r\n#")] = 0;
        if (!p[strspn(p, " \t,;\"")])
            continue; /* blank or a comment */
        if (!strpbrk(p, "0123456789") && ln == 1)
            continue; /* a header such as "phone" */
        char m[41];
        const char *why = dnc_member(c, p, strlen(p), m);
        if (why) {
            fprintf(stderr, "leadctl: %s:%ld: %s\n", name, ln, why);
            bad++;
        } else if (dnc_push(s, m) != 0) {
            fprintf(stderr, "leadctl: out of memory\n");
            bad++;
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "leadctl: %s: read error\n", name);
        bad++;
    }
    if (f != stdin)
        fclose(f);
    if (bad)
        fprintf(stderr, "leadctl: %s: %d bad line%s: nothing written\n", name, bad, bad == 1 ? "" : "s");
    return bad ? 1 : 0;
}

int lc_dnc(struct lc_env *e, int argc, char **argv)
{
    if (argc < 3) {
        dnc_usage();
        return 1;
    }
    const char *sub = argv[1];
    bool import = strcmp(sub, "import") == 0;
    const char *cmd = strcmp(sub, "add") == 0 || import ? "SADD"
                      : strcmp(sub, "remove") == 0   ? "SREM"
                      : strcmp(sub, "check") == 0    ? "SMISMEMBER"
                                                     : NULL;
    if (!cmd || (import && argc != 3)) {
        dnc_usage();
        return 1;
    }
    const struct cfg *c = lc_config(e);
    if (!c)
        return 1;
    struct dnc_set s = {0};
    int rc = 0;
    if (import) {
        rc = dnc_read(c, argv[2], &s);
    } else {
        for (int i = 2; i < argc && rc == 0; i++) {
            char m[41];
            const char *why = dnc_member(c, argv[i], strlen(argv[i]), m);
            if (why) {
                fprintf(stderr, "leadctl: argument %d: %s\n", i - 1, why);
                rc = 1;
            } else if (dnc_push(&s, m) != 0) {
                fprintf(stderr, "leadctl: out of memory\n");
                rc = 1;
            }
        }
    }
    redisContext *r = rc == 0 ? lc_redis(e) : NULL;
    if (rc == 0 && !r)
        rc = 2;
    long long hits = 0;
    char key[160];
    snprintf(key, sizeof key, "%s:dnc", c->prefix);
    if (rc == 0 && strcmp(cmd, "SMISMEMBER") == 0) { /* check: one line per argument */
        for (size_t i = 0; i < s.n && rc == 0; i++) {
            struct dnc_set one = {.m = &s.m[i], .n = 1};
            rc = dnc_apply(r, cmd, key, &one, &hits);
            if (rc == 0)
                printf("argument %zu: %s\n", i + 1, hits ? "suppressed" : "not suppressed");
        }
        cmd = NULL;
    }
    if (rc == 0 && cmd)
        rc = dnc_apply(r, cmd, key, &s, &hits);
    if (rc == 0 && cmd) {
        if (strcmp(cmd, "SADD") == 0)
            printf("%zu phone%s: %lld added, %lld already in %s\n", s.n, s.n == 1 ? "" : "s", hits,
                   (long long)s.n - hits, key);
        else if (strcmp(cmd, "SREM") == 0)
            printf("%zu phone%s: %lld removed, %lld were not in %s\n", s.n, s.n == 1 ? "" : "s", hits,
                   (long long)s.n - hits, key);
    }
    if (r)
        redisFree(r);
    free(s.m);
    return rc;
}
