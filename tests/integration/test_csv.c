/* test_csv.c - the spreadsheet commands end to end (SPEC section 7): real
 * redis-server, real leadrouterd, and `leadctl import / export / report`
 * run as processes against them.
 *
 * The config gives every territory one dealer, with no hours and no caps,
 * so where each CSV row must go is known in advance: the tests check each
 * lead's place, the leads' bytes after an export -> import round trip, and
 * the report's numbers against the queues. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>

#include "harness.h"

TestSuite(csv, .init = h_setup, .fini = h_teardown, .timeout = 60);

/* clang-format off */
/* solar: by source or niche column; roofing: by keyword. d-ia takes both
 * in Iowa; d-ne solar in Nebraska; d-mn roofing in Minnesota, home owners
 * only. Anything else has no dealer. No hours, no caps, no dedup: the
 * outcome of a row depends on the row alone. */
#define CONF \
    "defaults = { timezone = \"UTC\"; };\n" \
    "niches = ( { name = \"solar\"; sources = [ \"sunquote.example\" ]; },\n" \
    "           { name = \"roofing\"; keywords = [ \"roof\" ]; } );\n" \
    "dedup = { window = 0; };\n" \
    "dealers = (\n" \
    "  { id = \"d-ia\"; niches = [ \"solar\", \"roofing\" ]; territory = { states = [ \"IA\" ]; }; },\n" \
    "  { id = \"d-ne\"; niches = [ \"solar\" ]; territory = { states = [ \"NE\" ]; }; },\n" \
    "  { id = \"d-mn\"; niches = [ \"roofing\" ]; territory = { states = [ \"MN\" ]; };\n" \
    "    contract = { filters = ( { field = \"fields.home_owner\"; eq = true; } ); }; } );\n"
/* clang-format on */

#define HEADER                                                                                               \
    "id,niche,source,keywords,state,zip,lat,lon,score,first_name,last_name,phone,email,address,home_owner,"  \
    "roof_age_years,notes,signals.web\n"

/* ---- running leadctl --------------------------------------------------- */

struct ctl {
    int status;
    char *out, *err; /* (owned by the harness) */
};

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    cr_assert_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

/* Runs `leadctl -c conf ARGS...` (NULL-terminated), waiting at most 30 s. */
static struct ctl ctl(const char *conf, ...)
{
    static int seq;
    char *argv[32] = {LR_LEADCTL_PATH, "-c", (char *)conf};
    int argc = 3;
    va_list ap;
    va_start(ap, conf);
    for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    char op[512], ep[512];
    snprintf(op, sizeof op, "%s/ctl-%d.out", h_dir(), ++seq);
    snprintf(ep, sizeof ep, "%s/ctl-%d.err", h_dir(), seq);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open(op, O_WRONLY | O_CREAT | O_TRUNC, 0600),
            e = open(ep, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int in = open("/dev/null", O_RDONLY);
        if (o < 0 || e < 0 || in < 0)
            _exit(127);
        dup2(in, 0);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status = -1;
    for (int i = 0; i < 3000; i++) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (i == 2999) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert_fail("leadctl %s did not finish within 30 s", argv[3]);
        }
        h_sleep_ms(10);
    }
    cr_assert(WIFEXITED(status), "leadctl %s died (status %d)", argv[3], status);
    struct ctl r = {WEXITSTATUS(status), slurp(op), slurp(ep)};
    return r;
}

static void ctl_free(struct ctl *c)
{
    free(c->out);
    free(c->err);
}

static const char *write_file(const char *name, const char *content, size_t len)
{
    static char path[8][512];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, 512, "%s/%s", h_dir(), name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(content, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    return p;
}

/* ---- the leads --------------------------------------------------------- */

/* Row i of the test file: its CSV line and where it must end up. */
struct expect {
    char id[32];
    const char *dealer; /* or NULL */
    const char *reason; /* when unassigned */
    const char *niche;
    const char *source;
};

static const char *const STATES[] = {"IA", "NE", "MN"};

/* Appends row i to buf and fills e. Ids are <prefix>-NNN. */
static size_t make_row(char *buf, size_t cap, int i, const char *prefix, struct expect *e)
{
    const char *st = STATES[i % 3];
    bool solar = (i / 3) % 2 == 0, owner = (i / 6) % 2 == 0, by_niche_col = i % 5 == 0;
    snprintf(e->id, sizeof e->id, "%s-%03d", prefix, i);
    e->niche = solar ? "solar" : "roofing";
    e->source = solar && !by_niche_col ? "sunquote.example" : "web-form";
    e->dealer = NULL;
    e->reason = NULL;
    if (strcmp(st, "IA") == 0)
        e->dealer = "d-ia";
    else if (strcmp(st, "NE") == 0)
        e->dealer = solar ? "d-ne" : NULL;
    else if (!solar)
        e->dealer = owner ? "d-mn" : NULL;
    if (!e->dealer)
        e->reason = strcmp(st, "MN") == 0 && !solar ? "filtered" : "no_dealer_in_territory";
    /* accents, a quoted comma, a quoted line break, doubled quotes */
    const char *first = i % 4 == 0   ? "Zo\xc3\xab"
                        : i % 4 == 1 ? "Jos\xc3\xa9"
                        : i % 4 == 2 ? "Ren\xc3\xa9"
                                     : "Ann";
    const char *address = i % 3 == 0   ? "\"12 Main St, Apt 4\""
                          : i % 3 == 1 ? "\"7 \"\"Old Mill\"\" Rd\""
                                       : "9 Elm St";
    const char *notes = i % 7 == 0 ? "\"call after 5pm\nprefers e-mail\"" : "";
    return (size_t)snprintf(
        buf, cap,
        "%s,%s,%s,%s,%s,%s,%s,%s,%d,%s,M\xc3\xbcller,+1 515-555-%04d,lead%d@example.com,%s,%s,%d,%s,1\n",
        e->id, solar && by_niche_col ? "solar" : "", e->source, solar ? "" : "roof|gutters", st,
        strcmp(st, "IA") == 0   ? "50309"
        : strcmp(st, "NE") == 0 ? "68102"
                                : "55401",
        i % 2 ? "41.59" : "", i % 2 ? "-93.62" : "", 40 + i % 60, first, i, i, address,
        owner ? "TRUE" : "false", 5 + i % 20, notes);
}

/* A CSV of n rows (header first); e[n] filled. Returns the path. */
static const char *make_csv(const char *name, int n, const char *prefix, struct expect *e)
{
    size_t cap = 512 + (size_t)n * 400, len = 0;
    char *buf = malloc(cap);
    len += (size_t)snprintf(buf, cap, HEADER);
    for (int i = 0; i < n; i++)
        len += make_row(buf + len, cap - len, i, prefix, &e[i]);
    const char *p = write_file(name, buf, len);
    free(buf);
    return p;
}

/* Waits (bounded) until n leads have an outcome and the input is empty. */
static void wait_routed(size_t n)
{
    H_WAIT(h_outcomes() >= n && h_in_left() == 0, 20, "%zu of %zu leads routed within 20 s",
           h_outcomes(), n);
}

/* Each expected lead is where it must be, and only there. */
static void check_places(const struct expect *e, int n)
{
    for (int i = 0; i < n; i++) {
        struct h_assign *a;
        size_t k = h_find_assignments(e[i].id, &a);
        const struct h_unassigned *u = h_find_unassigned(e[i].id);
        if (e[i].dealer) {
            cr_assert_eq(k, 1, "%s: %zu assignments, want 1 (to %s)", e[i].id, k, e[i].dealer);
            cr_assert_str_eq(a[0].dealer, e[i].dealer, "%s", e[i].id);
            cr_assert_str_eq(a[0].niche, e[i].niche, "%s", e[i].id);
            cr_assert_null(u, "%s is also unassigned", e[i].id);
        } else {
            cr_assert_eq(k, 0, "%s: assigned to %s, want unassigned %s", e[i].id, a[0].dealer, e[i].reason);
            cr_assert_not_null(u, "%s is nowhere", e[i].id);
            cr_assert_str_eq(u->reason, e[i].reason, "%s", e[i].id);
        }
    }
}

/* ---- msgpack comparison (maps as sets of keys) -------------------------- */

static bool obj_eq(const msgpack_object *a, const msgpack_object *b, const char *skip_key);

static const msgpack_object *map_find(const msgpack_object *m, const msgpack_object *key)
{
    for (uint32_t i = 0; i < m->via.map.size; i++)
        if (obj_eq(&m->via.map.ptr[i].key, key, NULL))
            return &m->via.map.ptr[i].val;
    return NULL;
}

/* Structural equality; map order does not matter; skip_key (top level of a
 * map) is ignored. */
static bool obj_eq(const msgpack_object *a, const msgpack_object *b, const char *skip_key)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case MSGPACK_OBJECT_STR:
        return a->via.str.size == b->via.str.size &&
               memcmp(a->via.str.ptr, b->via.str.ptr, a->via.str.size) == 0;
    case MSGPACK_OBJECT_ARRAY:
        if (a->via.array.size != b->via.array.size)
            return false;
        for (uint32_t i = 0; i < a->via.array.size; i++)
            if (!obj_eq(&a->via.array.ptr[i], &b->via.array.ptr[i], NULL))
                return false;
        return true;
    case MSGPACK_OBJECT_MAP: {
        uint32_t na = 0;
        for (uint32_t i = 0; i < a->via.map.size; i++) {
            const msgpack_object *k = &a->via.map.ptr[i].key;
            if (skip_key && k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(skip_key) &&
                memcmp(k->via.str.ptr, skip_key, k->via.str.size) == 0)
                continue;
            na++;
            const msgpack_object *v = map_find(b, k);
            if (!v || !obj_eq(&a->via.map.ptr[i].val, v, NULL))
                return false;
        }
        return na + (skip_key ? 1 : 0) == b->via.map.size;
    }
    default:
        return msgpack_object_equal(*a, *b);
    }
}

static const msgpack_object *get(const msgpack_object *m, const char *key)
{
    for (uint32_t i = 0; m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* ---- tests -------------------------------------------------------------- */

/* Every row of a CSV with the quirks people's files have is enqueued,
 * routed where the config says, and arrives with its values typed. */
Test(csv, import_routes_every_row)
{
    enum { N = 60 };
    struct expect e[N];
    const char *path = make_csv("leads.csv", N, "C", e);
    const char *conf = h_config("stream", NULL, CONF);
    int d = h_daemon_start(conf);
    struct ctl r = ctl(conf, "import", path, NULL);
    cr_assert_eq(r.status, 0, "exit %d; stderr:\n%s", r.status, r.err);
    cr_assert_str_eq(r.out, "imported 60, skipped 0\n");
    wait_routed(N);
    cr_assert_eq(h_outcomes(), N);
    check_places(e, N);
    cr_assert_eq(h_int("LLEN %s:dead", H_PREFIX), 0);

    /* what the dealer got: the lead as the row said, typed */
    struct h_assign *a;
    cr_assert_eq(h_find_assignments("C-000", &a), 1);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    cr_assert_eq(msgpack_unpack_next(&up, (const char *)a[0].lead.p, a[0].lead.len, &off),
                 MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *lead = &up.data, *contact = get(lead, "contact"), *fields = get(lead, "fields");
    cr_assert_not_null(contact);
    cr_assert_not_null(fields);
    const msgpack_object *fn = get(contact, "first_name"), *addr = get(contact, "address");
    cr_assert(fn && fn->type == MSGPACK_OBJECT_STR && fn->via.str.size == 4 &&
              memcmp(fn->via.str.ptr, "Zo\xc3\xab", 4) == 0);
    cr_assert(addr && addr->via.str.size == strlen("12 Main St, Apt 4"));
    const msgpack_object *owner = get(fields, "home_owner"), *notes = get(fields, "notes");
    cr_assert(owner && owner->type == MSGPACK_OBJECT_BOOLEAN && owner->via.boolean);
    cr_assert(notes && notes->type == MSGPACK_OBJECT_STR &&
              memchr(notes->via.str.ptr, '\n', notes->via.str.size));
    cr_assert_eq(get(fields, "roof_age_years")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    cr_assert_eq(get(lead, "score")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    cr_assert_eq(get(get(lead, "signals"), "web")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    msgpack_unpacked_destroy(&up);
    ctl_free(&r);
    h_daemon_stop(d);
}

/* List mode: LPUSH <p>:in instead of XADD; stdin as the file. */
Test(csv, import_list_mode_from_stdin_file_dash)
{
    enum { N = 12 };
    struct expect e[N];
    const char *path = make_csv("leads.csv", N, "L", e);
    const char *conf = h_config("list", NULL, CONF);
    /* leadctl import - reads stdin: run it through sh with a redirect */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s -c %s import - < %s > %s/stdin-import.out", LR_LEADCTL_PATH, conf, path,
             h_dir());
    int d = h_daemon_start(conf);
    struct ctl r = ctl(conf, "import", path, "--dry-run", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "dry run: 12 valid, skipped 0 (nothing enqueued)\n");
    ctl_free(&r);
    cr_assert_eq(h_int("LLEN %s:in", H_PREFIX), 0, "a dry run enqueued something");
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: status %d", cmd, st);
    char out[512];
    snprintf(out, sizeof out, "%s/stdin-import.out", h_dir());
    char *said = slurp(out);
    cr_assert_str_eq(said, "imported 12, skipped 0\n");
    free(said);
    H_WAIT(h_outcomes() >= N && h_int("LLEN %s:in", H_PREFIX) == 0, 20, "list-mode leads not routed");
    check_places(e, N);
    h_daemon_stop(d);
}

/* Bad rows: reported as FILE:LINE: reason (the line a record starts on),
 * skipped, counted; exit 1; the good rows still go through, and nothing
 * the daemon would dead-letter reaches it. */
Test(csv, bad_rows_reported_and_skipped)
{
    const char csv[] = HEADER
        "B-01,solar,,,IA,50309,,,50,A,B,555-0101,a@example.com,x,true,1,,1\n"              /* 2: ok */
        ",solar,,,IA,50309,,,50,A,B,555-0102,b@example.com,x,true,1,,1\n"                  /* 3: missing_id */
        "B-03,solar,,,IA,50309,,,high,A,B,555-0103,c@example.com,x,true,1,,1\n"            /* 4: bad_type */
        "B-04,solar,,,IA,50309,,,50,A,B,555-0104,d@example.com,\"two\nlines\",true,1,,1\n" /* 5-6: ok */
        "B-05,solar,,,IA,50309,41.6,,50,A,B,555-0105,e@example.com,x,true,1,,1\n" /* 7: lat without lon */
        "B-06,solar,,,IA,50309,,,50,A,B,555-0106,f@example.com,x,true\n"          /* 8: column_count */
        "B-07,solar,,,IA,50309,,,50,Fran\xe7ois,B,555-0107,g@example.com,x,true,1,,1\n" /* 9: invalid_utf8 */
        "B-08,solar,,,Iowa!,50309,,,50,A,B,555-0108,h@example.com,x,true,1,,1\n"        /* 10: state */
        "B 09,solar,,,IA,50309,,,50,A,B,555-0109,i@example.com,x,true,1,,1\n"           /* 11: invalid_id */
        "B-10,solar,,,IA,50309,,,150,A,B,555-0110,j@example.com,x,true,1,,1\n"          /* 12: score range */
        "B-11,solar,,,NE,68102,,,50,A,B,555-0111,k@example.com,x,false,1,,1"; /* 13: ok, no line end */
    const char *path = write_file("bad.csv", csv, sizeof csv - 1);
    const char *conf = h_config("stream", NULL, CONF);
    int d = h_daemon_start(conf);
    struct ctl r = ctl(conf, "import", path, NULL);
    cr_assert_eq(r.status, 1, "exit %d; stderr:\n%s", r.status, r.err);
    cr_assert_str_eq(r.out, "imported 3, skipped 8\n");
    static const char *const want[] = {
        ":3: missing_id: ",   ":4: bad_type: score",      ":7: out_of_range: lat and lon",
        ":8: column_count: ", ":9: invalid_utf8: ",       ":10: out_of_range: state",
        ":11: invalid_id: ",  ":12: out_of_range: score",
    };
    const char *at = r.err;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char line[600];
        snprintf(line, sizeof line, "%s%s", path, want[i]);
        const char *hit = strstr(at, line);
        cr_assert_not_null(hit, "want '%s' (in order) in:\n%s", line, r.err);
        at = hit + strlen(line);
    }
    wait_routed(3);
    h_sleep_ms(200); /* nothing more may arrive */
    cr_assert_eq(h_outcomes(), 3);
    cr_assert_eq(h_int("LLEN %s:dead", H_PREFIX), 0);
    struct h_assign *a;
    cr_assert_eq(h_find_assignments("B-01", &a), 1);
    cr_assert_eq(h_find_assignments("B-04", &a), 1);
    cr_assert_eq(h_find_assignments("B-11", &a), 1);
    cr_assert_str_eq(a[0].dealer, "d-ne");
    ctl_free(&r);
    h_daemon_stop(d);
}

/* Replaces the id prefix "C-" of every data line that starts with it. */
static char *reprefix(const char *csv, const char *from, const char *to)
{
    size_t n = strlen(csv), fl = strlen(from), tl = strlen(to);
    char *out = malloc(n * 2 + 1);
    size_t o = 0;
    bool bol = true;
    for (size_t i = 0; i < n;) {
        if (bol && strncmp(csv + i, from, fl) == 0) {
            memcpy(out + o, to, tl);
            o += tl;
            i += fl;
            bol = false;
            continue;
        }
        bol = csv[i] == '\n';
        out[o++] = csv[i++];
    }
    out[o] = 0;
    return out;
}

static size_t count_lines_starting(const char *s, const char *prefix)
{
    size_t k = 0;
    for (const char *p = s; p; p = strchr(p, '\n')) {
        if (*p == '\n')
            p++;
        k += strncmp(p, prefix, strlen(prefix)) == 0;
    }
    return k;
}

/* export --csv of each dealer, then import of those files (ids renamed:
 * the originals were routed already and would be duplicate_id) routes the
 * same leads to the same dealers, and each lead arrives with the same
 * keys and values as the original. Peek leaves the queue; --drain empties
 * it and writes the same rows. */
Test(csv, export_round_trip)
{
    enum { N = 48 };
    struct expect e[N];
    const char *path = make_csv("leads.csv", N, "C", e);
    const char *conf = h_config("stream", NULL, CONF);
    int d = h_daemon_start(conf);
    struct ctl r = ctl(conf, "import", path, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    ctl_free(&r);
    wait_routed(N);
    check_places(e, N);

    static const char *const dealers[] = {"d-ia", "d-ne", "d-mn"};
    size_t total = 0;
    for (size_t k = 0; k < 3; k++) {
        long long before = h_int("LLEN %s:dealer:%s", H_PREFIX, dealers[k]);
        cr_assert_gt(before, 0, "%s got no lead: the test data does not cover it", dealers[k]);
        struct ctl x = ctl(conf, "export", dealers[k], "--csv", NULL);
        cr_assert_eq(x.status, 0, "%s", x.err);
        cr_assert_eq(h_int("LLEN %s:dealer:%s", H_PREFIX, dealers[k]), before, "a peek consumed entries");
        cr_assert(strncmp(x.out, "id,", 3) == 0, "header: %.200s", x.out);
        cr_assert(strstr(x.out, "contact.first_name") && strstr(x.out, "fields.home_owner") &&
                      strstr(x.out, "assignment.dealer") && strstr(x.out, "assignment.routed_at"),
                  "header: %.400s", x.out);
        cr_assert_eq(count_lines_starting(x.out, "C-"), (size_t)before);
        char *again = reprefix(x.out, "C-", "R-");
        char name[64];
        snprintf(name, sizeof name, "export-%s.csv", dealers[k]);
        const char *epath = write_file(name, again, strlen(again));
        free(again);
        struct ctl im = ctl(conf, "import", epath, NULL);
        cr_assert_eq(im.status, 0, "re-import of %s: %s", dealers[k], im.err);
        char want[64];
        snprintf(want, sizeof want, "imported %lld, skipped 0\n", before);
        cr_assert_str_eq(im.out, want);
        total += (size_t)before;
        ctl_free(&x);
        ctl_free(&im);
    }
    wait_routed(N + total);

    /* same dealer, same lead (but for the id) */
    size_t compared = 0;
    for (int i = 0; i < N; i++) {
        if (!e[i].dealer)
            continue;
        char rid[32];
        snprintf(rid, sizeof rid, "R-%s", e[i].id + 2);
        struct h_assign *a, *b;
        cr_assert_eq(h_find_assignments(e[i].id, &a), 1);
        cr_assert_eq(h_find_assignments(rid, &b), 1, "%s (re-import of %s) not routed once", rid, e[i].id);
        cr_assert_str_eq(b[0].dealer, a[0].dealer, "%s went to %s, %s to %s", e[i].id, a[0].dealer, rid,
                         b[0].dealer);
        cr_assert_eq(b[0].score, a[0].score);
        cr_assert_str_eq(b[0].grade, a[0].grade);
        msgpack_unpacked ua, ub;
        msgpack_unpacked_init(&ua);
        msgpack_unpacked_init(&ub);
        size_t oa = 0, ob = 0;
        cr_assert_eq(msgpack_unpack_next(&ua, (const char *)a[0].lead.p, a[0].lead.len, &oa),
                     MSGPACK_UNPACK_SUCCESS);
        cr_assert_eq(msgpack_unpack_next(&ub, (const char *)b[0].lead.p, b[0].lead.len, &ob),
                     MSGPACK_UNPACK_SUCCESS);
        cr_assert(obj_eq(&ua.data, &ub.data, "id"), "%s: the re-imported lead differs from the original",
                  rid);
        msgpack_unpacked_destroy(&ua);
        msgpack_unpacked_destroy(&ub);
        compared++;
    }
    cr_assert_eq(compared, total);

    /* --drain: the same rows, and the queue is empty afterwards */
    long long before = h_int("LLEN %s:dealer:d-ne", H_PREFIX);
    struct ctl peek = ctl(conf, "export", "d-ne", "--csv", NULL);
    struct ctl drain = ctl(conf, "export", "d-ne", "--csv", "--drain", NULL);
    cr_assert_eq(drain.status, 0, "%s", drain.err);
    cr_assert_str_eq(drain.out, peek.out);
    cr_assert_eq(count_lines_starting(drain.out, "C-") + count_lines_starting(drain.out, "R-"),
                 (size_t)before);
    cr_assert_eq(h_int("LLEN %s:dealer:d-ne", H_PREFIX), 0);
    /* the table view of an empty queue, and of an unknown dealer */
    struct ctl empty = ctl(conf, "export", "d-ne", NULL);
    cr_assert_eq(empty.status, 0);
    cr_assert(strstr(empty.err, "0 assignments"), "%s", empty.err);
    struct ctl nobody = ctl(conf, "export", "nobody", NULL);
    cr_assert_eq(nobody.status, 1);
    ctl_free(&peek);
    ctl_free(&drain);
    ctl_free(&empty);
    ctl_free(&nobody);
    h_daemon_stop(d);
}

/* ---- report -------------------------------------------------------------- */

/* The value of column col in the CSV row whose first field is name; -1 if
 * the row is missing, -2 if the cell is empty. */
static long long report_cell(const char *csv, const char *name, int col)
{
    char key[128];
    snprintf(key, sizeof key, "\n%s,", name);
    const char *p = strstr(csv, key);
    if (!p)
        return -1;
    p += strlen(key) - 1; /* the comma before column 1 */
    for (int c = 1; c < col; c++) {
        p = strchr(p + 1, ',');
        if (!p)
            return -1;
    }
    p++;
    if (*p == ',' || *p == '\r' || *p == '\n')
        return -2;
    return strtoll(p, NULL, 10);
}

/* The counts of a report, checked against what was routed: per niche,
 * source and dealer, and unassigned by reason, and the totals; a duplicate
 * id in the file is a duplicate. */
Test(csv, report_matches_what_was_routed)
{
    enum { N = 45 };
    struct expect e[N + 1];
    const char *path = make_csv("leads.csv", N, "C", e);
    /* one more row: a repeat of C-000 (id and all), copied up to the next
     * record (its quoted notes span two lines) */
    char *again = slurp(path);
    size_t len = strlen(again);
    const char *from = strstr(again, "\nC-000,") + 1, *to = strstr(from, "\nC-001,") + 1;
    size_t l0 = (size_t)(to - from), off0 = (size_t)(from - again);
    again = realloc(again, len + l0 + 1);
    memcpy(again + len, again + off0, l0);
    again[len + l0] = 0;
    path = write_file("leads-dup.csv", again, len + l0);
    free(again);

    const char *conf = h_config("stream", NULL, CONF);
    int d = h_daemon_start(conf);
    struct ctl r = ctl(conf, "import", path, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert_str_eq(r.out, "imported 46, skipped 0\n");
    ctl_free(&r);
    wait_routed(N + 1);

    /* what the queues say */
    long long per_dealer[3] = {0}, niche_rec[2] = {0}, niche_asg[2] = {0}, src_rec[2] = {0}, src_asg[2] = {0};
    long long reasons[2] = {0}; /* filtered, no_dealer_in_territory */
    static const char *const dealers[] = {"d-ia", "d-ne", "d-mn"};
    for (int k = 0; k < 3; k++)
        per_dealer[k] = h_int("LLEN %s:dealer:%s", H_PREFIX, dealers[k]);
    for (int i = 0; i < N; i++) {
        int ni = strcmp(e[i].niche, "solar") == 0 ? 0 : 1,
            si = strcmp(e[i].source, "sunquote.example") == 0 ? 0 : 1;
        niche_rec[ni]++;
        src_rec[si]++;
        niche_asg[ni] += e[i].dealer != NULL;
        src_asg[si] += e[i].dealer != NULL;
        if (!e[i].dealer)
            reasons[strcmp(e[i].reason, "filtered") == 0 ? 0 : 1]++;
    }
    /* the repeated C-000 is received, unassigned duplicate_id, in C-000's niche and source */
    int n0 = strcmp(e[0].niche, "solar") == 0 ? 0 : 1,
        s0 = strcmp(e[0].source, "sunquote.example") == 0 ? 0 : 1;
    niche_rec[n0]++;
    src_rec[s0]++;
    struct h_unassigned *all;
    size_t nu = h_read_unassigned(&all);
    size_t dup_id = 0;
    for (size_t i = 0; i < nu; i++)
        dup_id += strcmp(all[i].reason, "duplicate_id") == 0;
    cr_assert_eq(dup_id, 1);
    long long assigned = per_dealer[0] + per_dealer[1] + per_dealer[2];
    cr_assert_eq(assigned, niche_asg[0] + niche_asg[1], "the queues and the expectation disagree");

    /* columns: 1 received, 2 assigned, 3 unassigned, 4 returned, 5 duplicates, 6 share, 7 assigned% */
    struct ctl rn = ctl(conf, "report", "--by", "niche", "--csv", NULL);
    cr_assert_eq(rn.status, 0, "%s", rn.err);
    const char *head = "niche,received,assigned,unassigned,returned,duplicates,share_pct,assigned_pct\r\n";
    cr_assert(strncmp(rn.out, head, strlen(head)) == 0, "%s", rn.out);
    static const char *const niches[] = {"solar", "roofing"};
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(report_cell(rn.out, niches[k], 1), niche_rec[k], "%s received\n%s", niches[k], rn.out);
        cr_assert_eq(report_cell(rn.out, niches[k], 2), niche_asg[k], "%s assigned\n%s", niches[k], rn.out);
        cr_assert_eq(report_cell(rn.out, niches[k], 3), niche_rec[k] - niche_asg[k]);
    }
    cr_assert_eq(report_cell(rn.out, "(total)", 1), N + 1);
    cr_assert_eq(report_cell(rn.out, "(total)", 2), assigned);
    cr_assert_eq(report_cell(rn.out, "(total)", 3), N + 1 - assigned);
    cr_assert_eq(report_cell(rn.out, "(total)", 4), 0);
    cr_assert_eq(report_cell(rn.out, "(total)", 5), 1, "duplicates\n%s", rn.out);
    cr_assert_eq(report_cell(rn.out, "(none)", 1), -1, "no lead lacks a niche here\n%s", rn.out);

    struct ctl rs = ctl(conf, "report", "--by=source", "--csv", "--since", "2h", NULL);
    cr_assert_eq(rs.status, 0, "%s", rs.err);
    static const char *const sources[] = {"sunquote.example", "web-form"};
    for (int k = 0; k < 2; k++) {
        cr_assert_eq(report_cell(rs.out, sources[k], 1), src_rec[k], "%s\n%s", sources[k], rs.out);
        cr_assert_eq(report_cell(rs.out, sources[k], 2), src_asg[k], "%s\n%s", sources[k], rs.out);
    }

    struct ctl rd = ctl(conf, "report", "--by", "dealer", "--csv", NULL);
    cr_assert_eq(rd.status, 0, "%s", rd.err);
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(report_cell(rd.out, dealers[k], 2), per_dealer[k], "%s\n%s", dealers[k], rd.out);
        cr_assert_eq(report_cell(rd.out, dealers[k], 1), -2); /* received is not per dealer */
    }

    struct ctl rr = ctl(conf, "report", "--by", "reason", "--csv", NULL);
    cr_assert_eq(rr.status, 0, "%s", rr.err);
    cr_assert_eq(report_cell(rr.out, "filtered", 3), reasons[0], "%s", rr.out);
    cr_assert_eq(report_cell(rr.out, "no_dealer_in_territory", 3), reasons[1], "%s", rr.out);
    cr_assert_eq(report_cell(rr.out, "duplicate_id", 3), 1, "%s", rr.out);

    /* the human table has the same total, aligned */
    struct ctl human = ctl(conf, "report", "--by", "niche", NULL);
    cr_assert_eq(human.status, 0);
    char total[128];
    snprintf(total, sizeof total, "received %d: assigned %lld", N + 1, assigned);
    cr_assert(strstr(human.out, total), "%s", human.out);
    cr_assert(strstr(human.out, "(total)"), "%s", human.out);
    /* periods it cannot read */
    struct ctl bad = ctl(conf, "report", "--since", "yesterday", NULL);
    cr_assert_eq(bad.status, 1);
    struct ctl future = ctl(conf, "report", "--since", "2999-01-01", NULL);
    cr_assert_eq(future.status, 1);
    ctl_free(&rn);
    ctl_free(&rs);
    ctl_free(&rd);
    ctl_free(&rr);
    ctl_free(&human);
    ctl_free(&bad);
    ctl_free(&future);
    h_daemon_stop(d);
}

/* Redis unreachable: exit 2 with a message, nothing half done. */
Test(csv, redis_unreachable_exits_2)
{
    enum { N = 3 };
    struct expect e[N];
    const char *path = make_csv("leads.csv", N, "U", e);
    const char *conf = h_config_port(h_free_port(), "stream", NULL, CONF);
    struct ctl r = ctl(conf, "import", path, NULL);
    cr_assert_eq(r.status, 2, "exit %d: %s", r.status, r.err);
    cr_assert(strstr(r.err, "cannot reach redis"), "%s", r.err);
    struct ctl x = ctl(conf, "export", "d-ia", NULL);
    cr_assert_eq(x.status, 2);
    struct ctl rep = ctl(conf, "report", NULL);
    cr_assert_eq(rep.status, 2);
    ctl_free(&r);
    ctl_free(&x);
    ctl_free(&rep);
}

/* A source is the producer's text: a control byte in it (valid UTF-8,
 * so the lead is routed) must not reach the report's CSV raw, where it
 * would drive a terminal or break a spreadsheet import. */
Test(csv, report_csv_writes_no_control_bytes)
{
    const char *conf = h_config("stream", NULL, CONF);
    int d = h_daemon_start(conf);
    struct h_lead l = {.id = "CTRL-1", .niche = "solar", .state = "IA", .score = 50,
                       .source = "evil\x1b[2J\x07src"};
    h_send(&l, NULL, 0);
    h_wait_drained(10);
    h_daemon_stop(d);
    struct ctl rs = ctl(conf, "report", "--by", "source", "--csv", NULL);
    cr_assert_eq(rs.status, 0, "%s", rs.err);
    for (const char *p = rs.out; *p; p++)
        cr_assert(!((unsigned char)*p < 0x20 && *p != '\r' && *p != '\n') && *p != 0x7f,
                  "a raw control byte 0x%02x in the report:\n%s", (unsigned char)*p, rs.out);
    cr_assert_not_null(strstr(rs.out, "evil?[2J?src,1,"), "the source is shown, its control bytes as '?':\n%s",
                       rs.out);
    ctl_free(&rs);
    h_oracle();
}
