/* fuzz_admin.c - libFuzzer target: hostile bytes through the admin socket's
 * command parser and line framing (admin_exec: the same path a client's
 * line takes), the `explain` JSON/msgpack path behind it, and the label
 * values of the statistics.
 *
 * The input is cut into lines as the socket cuts them; every line is run
 * as a command and also counted as a lead source (a hostile label value).
 * The statistics start empty for every input (rendering thousands of
 * series each run would make the fuzzer crawl; the label bound has its
 * unit test); the runtime controls carry over from input to input.
 * Beyond "no crash, no sanitizer report", the protocol's promises are
 * checked on every reply: it ends with a line "." alone, no body line is a
 * bare "." (dot-stuffing), an error is one "ERR " line; and at the end of
 * each input `metrics` is still well-formed exposition text and `json
 * stats` still parses. A broken promise aborts. */
#include <event2/event.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "leadrouter/admin.h"
#include "leadrouter/config.h"
#include "leadrouter/stats.h"

#define FUZZ_MAX_LINES 64

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_conf[] =
    "defaults = { timezone = \"UTC\"; };\n"
    "scoring = { weights = { web = 0.5; }; };\n"
    "niches = ( { name = \"solar\"; sources = [ \"sunquote.example\" ]; keywords = [ \"solar\" ]; },\n"
    "           { name = \"roofing\"; strategy = \"nearest\"; max_buyers = 2; } );\n"
    "dealers = ( { id = \"d1\"; niches = [ \"solar\", \"roofing\" ]; territory = { states = [ \"IA\" ]; zips "
    "= [ "
    "\"503*\" ]; };\n"
    "              contract = { weight = 3; caps = { day = 5; }; min_score = 20; exclusive = true; }; },\n"
    "            { id = \"d2\"; niches = [ \"solar\" ]; territory = { radius = { lat = 41.6; lon = -93.6; km "
    "= 50.0; "
    "}; };\n"
    "              contract = { filters = ( { field = \"fields.x\"; eq = true; } ); }; } );\n";

static struct {
    struct cfg *cfg;
    struct stats *stats;
    struct admin_controls *ctl;
    struct event_base *base;
    struct admin *a;
} F;

static void fuzz_fail(const char *what, const char *reply)
{
    fprintf(stderr, "fuzz_admin: contract broken: %s\n--- reply ---\n%.2000s\n", what, reply ? reply : "");
    abort();
}

static const struct cfg *fuzz_config(void *ctx)
{
    (void)ctx;
    return F.cfg;
}

static int fuzz_reload(void *ctx, uint64_t *gen, char *err, size_t errlen)
{
    (void)ctx;
    (void)gen;
    snprintf(err, errlen, "fuzz: reload is not exercised here");
    return -1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char path[] = "/tmp/lr-fuzz-admin-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, fuzz_conf, sizeof fuzz_conf - 1) != (ssize_t)(sizeof fuzz_conf - 1))
        abort();
    close(fd);
    char err[512];
    int rc = cfg_load(path, &F.cfg, err, sizeof err);
    unlink(path);
    if (rc != 0) {
        fprintf(stderr, "fuzz_admin: the built-in config does not load: %s\n", err);
        abort();
    }
    F.ctl = admin_controls_new();
    F.base = event_base_new();
    if (!F.ctl || !F.base || admin_controls_apply(F.ctl, F.cfg->rules) != 0)
        abort();
    return 0;
}

static void fuzz_open(void)
{
    char err[256];
    F.stats = stats_new();
    struct admin_env env = {.stats = F.stats, .ctl = F.ctl, .config = fuzz_config, .reload = fuzz_reload};
    F.a = F.stats ? admin_new(F.base, NULL, 0, &env, err, sizeof err) : NULL;
    if (!F.a)
        abort();
}

static void fuzz_close(void)
{
    admin_free(F.a);
    stats_free(F.stats);
    F.a = NULL;
    F.stats = NULL;
}

/* The framing promises of admin.h for one reply. */
static void check_reply(const char *r)
{
    size_t n = strlen(r);
    if (n == 0)
        return; /* a blank line is not answered */
    if (n < 2 || strcmp(r + n - 2, ".\n") != 0 || (n > 2 && r[n - 3] != '\n'))
        fuzz_fail("the reply does not end with a line \".\"", r);
    /* No body line is "." alone: that would end the reply early. */
    for (const char *p = r; p < r + n - 2;) {
        size_t l = strcspn(p, "\n");
        if (l == 1 && p[0] == '.')
            fuzz_fail("a bare \".\" inside the body", r);
        if (p[l] != '\n')
            fuzz_fail("a body line without its newline", r);
        p += l + 1;
    }
    if (strncmp(r, "ERR ", 4) == 0 && strchr(r, '\n') != r + n - 3)
        fuzz_fail("an error longer than one line", r);
}

/* Exposition lines: comments, or name[{k="v",...}] value, where every
 * label value is quoted with only \\, \" and \n escapes. */
static void check_metrics(const char *m)
{
    for (const char *p = m; *p;) {
        size_t l = strcspn(p, "\n");
        if (p[l] != '\n')
            fuzz_fail("metrics: last line without a newline", m);
        if (p[0] != '#') {
            const char *c = p, *end = p + l;
            while (c < end && *c != '{' && *c != ' ')
                c++;
            if (c < end && *c == '{') {
                c++;
                while (c < end && *c != '}') {
                    while (c < end && *c != '=')
                        c++;
                    if (c + 1 >= end || c[1] != '"')
                        fuzz_fail("metrics: unquoted label value", m);
                    c += 2;
                    while (c < end && *c != '"') {
                        if (*c == '\\') {
                            if (c + 1 >= end || (c[1] != '\\' && c[1] != '"' && c[1] != 'n'))
                                fuzz_fail("metrics: bad escape in a label value", m);
                            c++;
                        }
                        c++;
                    }
                    if (c >= end)
                        fuzz_fail("metrics: unterminated label value", m);
                    c++;
                    if (c < end && *c == ',')
                        c++;
                }
                if (c >= end)
                    fuzz_fail("metrics: unterminated label set", m);
                c++;
            }
            if (c >= end || *c != ' ' || c + 1 >= end)
                fuzz_fail("metrics: a sample without a value", m);
        }
        p += l + 1;
    }
}

static void run(const char *line, size_t len)
{
    char *r = admin_exec(F.a, line, len);
    if (!r)
        fuzz_fail("admin_exec returned NULL", NULL);
    check_reply(r);
    free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > ADMIN_MAX_LINE)
        return 0; /* the socket never hands over a longer line */
    fuzz_open();
    const char *p = (const char *)data, *end = p + size;
    for (int i = 0; i < FUZZ_MAX_LINES && p < end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        char *line = malloc(len + 1); /* the socket hands over a NUL-terminated copy */
        if (!line)
            abort();
        memcpy(line, p, len);
        line[len] = 0;
        run(line, len);
        /* The same bytes as a lead's source (bounded, escaped labels). */
        char src[129];
        size_t sl = len < 128 ? len : 128;
        memcpy(src, p, sl);
        src[sl] = 0;
        stats_assigned(F.stats, "d1", "solar", src);
        stats_dead(F.stats, src);
        free(line);
        p += len + (nl ? 1 : 0);
    }
    char *m = admin_exec(F.a, "metrics", 7);
    if (!m)
        abort();
    check_reply(m);
    m[strlen(m) - 2] = 0; /* the body, without the terminator line */
    check_metrics(m);
    free(m);
    char *j = stats_json(F.stats);
    json_t *v = j ? json_loads(j, 0, NULL) : NULL;
    if (!v)
        fuzz_fail("json stats does not parse", j);
    json_decref(v);
    free(j);
    fuzz_close();
    return 0;
}
