/* test_import.c - leadctl import without Redis: the header -> lead key
 * mapping and --map, how values are typed, each reason a row is refused
 * for (the daemon's decoder's, SPEC section 2, and the CSV reader's), and
 * the command itself in --dry-run: FILE:LINE: reason lines, counts, exit
 * status, stdin, Excel's habits. */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csv.h"
#include "leadctl.h"
#include "leadrouter/codec.h"
#include "leadrouter/config.h"

/* ---- helpers -------------------------------------------------------- */

/* Splits a header or row on ',' (no quoting: the tests' values have none). */
static size_t split(char *s, struct csv_field *out, size_t max)
{
    size_t n = 0;
    for (char *p = s;; p++) {
        char *end = strchr(p, ',');
        out[n].p = p;
        out[n].len = end ? (size_t)(end - p) : strlen(p);
        n++;
        if (!end || n == max)
            break;
        *end = 0;
        p = end;
    }
    return n;
}

static struct csvmap *map_of(const char *header, const char *spec, char *err, size_t errlen)
{
    static char buf[4096];
    static struct csv_field f[256];
    snprintf(buf, sizeof buf, "%s", header);
    size_t n = split(buf, f, 256);
    const char *specs[1] = {spec};
    struct csvmap *m = NULL;
    FILE *devnull = fopen("/dev/null", "w");
    int rc = csvmap_new(f, n, specs, spec ? 1 : 0, &m, devnull, err, errlen);
    fclose(devnull);
    return rc == 0 ? m : NULL;
}

static struct csvmap *map_ok(const char *header, const char *spec)
{
    char err[512];
    struct csvmap *m = map_of(header, spec, err, sizeof err);
    cr_assert_not_null(m, "header '%s' --map '%s': %s", header, spec ? spec : "", err);
    return m;
}

static void target_is(const struct csvmap *m, size_t i, const char *want)
{
    cr_assert_str_eq(csvmap_target(m, i), want, "column %zu", i + 1);
}

/* A packed row, unpacked for inspection. */
struct row {
    msgpack_sbuffer sb;
    msgpack_unpacked up;
    int packed;
};

static void row_pack(struct row *r, const struct csvmap *m, const char *values)
{
    static char buf[8192];
    struct csv_field f[256];
    snprintf(buf, sizeof buf, "%s", values);
    size_t n = split(buf, f, 256);
    cr_assert_eq(n, csvmap_columns(m), "row '%s' has %zu values for %zu columns", values, n,
                 csvmap_columns(m));
    msgpack_sbuffer_init(&r->sb);
    msgpack_unpacked_init(&r->up);
    r->packed = csvmap_pack(m, f, n, &r->sb);
    if (r->packed == 1) {
        size_t off = 0;
        cr_assert_eq(msgpack_unpack_next(&r->up, r->sb.data, r->sb.size, &off), MSGPACK_UNPACK_SUCCESS);
        cr_assert_eq(off, r->sb.size);
        cr_assert_eq(r->up.data.type, MSGPACK_OBJECT_MAP);
    }
}

static void row_free(struct row *r)
{
    msgpack_unpacked_destroy(&r->up);
    msgpack_sbuffer_destroy(&r->sb);
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static void is_str(const msgpack_object *o, const char *want)
{
    cr_assert_not_null(o, "missing (want \"%s\")", want);
    cr_assert_eq(o->type, MSGPACK_OBJECT_STR, "want the string \"%s\", type %d", want, o->type);
    cr_assert_eq(o->via.str.size, strlen(want));
    cr_assert(memcmp(o->via.str.ptr, want, strlen(want)) == 0);
}

static void is_int(const msgpack_object *o, int64_t want)
{
    cr_assert_not_null(o, "missing (want %lld)", (long long)want);
    cr_assert(o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER,
              "want the integer %lld, type %d", (long long)want, o->type);
    cr_assert_eq(o->via.i64, want);
}

static void is_float(const msgpack_object *o, double want)
{
    cr_assert_not_null(o, "missing (want %g)", want);
    cr_assert(o->type == MSGPACK_OBJECT_FLOAT64 || o->type == MSGPACK_OBJECT_FLOAT32,
              "want the float %g, type %d", want, o->type);
    cr_assert_float_eq(o->via.f64, want, 1e-9);
}

static void is_bool(const msgpack_object *o, bool want)
{
    cr_assert_not_null(o);
    cr_assert_eq(o->type, MSGPACK_OBJECT_BOOLEAN);
    cr_assert_eq(o->via.boolean, want);
}

/* ---- the mapping ---------------------------------------------------- */

Test(import_map, default_rules)
{
    struct csvmap *m = map_ok("id,Niche,SOURCE,campaign,score,state,zip,country,lat,lon,created_at,keywords,"
                              "name,First Name,last-name,phone,Email,address,city,home_owner,contact.mobile,"
                              "fields.x,signals.web,assignment.rule,Signals.Demo",
                              NULL);
    const char *want[] = {"id",
                          "niche",
                          "source",
                          "campaign",
                          "score",
                          "state",
                          "zip",
                          "country",
                          "lat",
                          "lon",
                          "created_at",
                          "keywords",
                          "contact.name",
                          "contact.first_name",
                          "contact.last_name",
                          "contact.phone",
                          "contact.email",
                          "contact.address",
                          "fields.city",
                          "fields.home_owner",
                          "contact.mobile",
                          "fields.x",
                          "signals.web",
                          "-",
                          "signals.Demo"};
    cr_assert_eq(csvmap_columns(m), sizeof want / sizeof want[0]);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        target_is(m, i, want[i]);
    csvmap_free(m);
}

Test(import_map, other_columns_keep_their_name_under_fields)
{
    struct csvmap *m = map_ok(" id , Home Owner ,Credit-Score", NULL);
    target_is(m, 0, "id");
    target_is(m, 1, "fields.Home Owner");
    target_is(m, 2, "fields.Credit-Score");
    csvmap_free(m);
}

Test(import_map, map_overrides)
{
    struct csvmap *m =
        map_ok("ref,mobile,city,Score,tags,cell",
               "ref=id, mobile=contact.phone,city=-,score=fields.score_text,tags=keywords,cell=signals.x");
    target_is(m, 0, "id");
    target_is(m, 1, "contact.phone");
    target_is(m, 2, "-");
    target_is(m, 3, "fields.score_text"); /* matched ignoring case */
    target_is(m, 4, "keywords");
    target_is(m, 5, "signals.x");
    csvmap_free(m);
    /* a lead key straight from --map, and the reverse: a lead-key column to fields */
    m = map_ok("id,grade,score", "grade=score,score=fields.old_score");
    target_is(m, 1, "score");
    target_is(m, 2, "fields.old_score");
    csvmap_free(m);
}

Test(import_map, header_errors)
{
    char err[512];
    cr_assert_null(map_of("id,phone", "mobile=contact.phone", err, sizeof err));
    cr_assert(strstr(err, "no column 'mobile'"), "%s", err);
    cr_assert_null(map_of("id,phone", "phone=telephone", err, sizeof err));
    cr_assert(strstr(err, "unknown target 'telephone'"), "%s", err);
    cr_assert_null(map_of("id,phone", "phone", err, sizeof err));
    cr_assert(strstr(err, "COLUMN=TARGET"), "%s", err);
    cr_assert_null(map_of("id,phone,contact.phone", NULL, err, sizeof err));
    cr_assert(strstr(err, "columns 2 ('phone') and 3 ('contact.phone') both map to contact.phone"), "%s",
              err);
    cr_assert_null(map_of("id,ID", NULL, err, sizeof err));
    cr_assert(strstr(err, "both map to id"), "%s", err);
    cr_assert_null(map_of("ref,name", NULL, err, sizeof err));
    cr_assert(strstr(err, "no column maps to id"), "%s", err);
    cr_assert_null(map_of("id,fields.", NULL, err, sizeof err));
    cr_assert(strstr(err, "column 2"), "%s", err);
    cr_assert_null(map_of("id,an_extremely_long_column_name_that_no_fields_key_may_hold_because_of_the_limit",
                          NULL, err, sizeof err));
    cr_assert(strstr(err, "--map"), "%s", err);
    /* dropping the id column leaves no id */
    cr_assert_null(map_of("id,x", "id=-", err, sizeof err));
    cr_assert(strstr(err, "no column maps to id"), "%s", err);
}

Test(import_map, unnamed_columns_are_dropped)
{
    struct csvmap *m = map_ok("id,,state, ", NULL);
    target_is(m, 1, "-");
    target_is(m, 2, "state");
    target_is(m, 3, "-");
    csvmap_free(m);
}

/* ---- typed values --------------------------------------------------- */

Test(import_values, lead_keys_are_typed)
{
    struct csvmap *m =
        map_ok("id,niche,score,lat,lon,created_at,zip,keywords,signals.web,signals.budget", NULL);
    struct row r;
    row_pack(&r, m, " L-1 ,solar,75,41,-93.625,1700000000123,02134, roof | kitchen ||,1,25000.5");
    cr_assert_eq(r.packed, 1);
    const msgpack_object *o = &r.up.data;
    is_str(get(o, "id"), "L-1"); /* trimmed */
    is_str(get(o, "niche"), "solar");
    is_int(get(o, "score"), 75);
    is_float(get(o, "lat"), 41.0); /* a float even when written as an integer */
    is_float(get(o, "lon"), -93.625);
    is_int(get(o, "created_at"), 1700000000123);
    is_str(get(o, "zip"), "02134");
    const msgpack_object *kw = get(o, "keywords");
    cr_assert_not_null(kw);
    cr_assert_eq(kw->type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(kw->via.array.size, 2);
    is_str(&kw->via.array.ptr[0], "roof");
    is_str(&kw->via.array.ptr[1], "kitchen");
    is_int(get(get(o, "signals"), "web"), 1);
    is_float(get(get(o, "signals"), "budget"), 25000.5);
    cr_assert_null(get(o, "fields"));
    cr_assert_null(get(o, "contact"));
    row_free(&r);
    csvmap_free(m);
}

Test(import_values, created_at_accepts_utc_dates)
{
    struct csvmap *m = map_ok("id,created_at", NULL);
    const struct {
        const char *in;
        int64_t ms;
    } ok[] = {{"2024-03-01", INT64_C(1709251200000)},
              {"2024-03-01 12:30", INT64_C(1709296200000)},
              {"2024-03-01T12:30:15Z", INT64_C(1709296215000)},
              {"2024-03-01T12:30:15.250Z", INT64_C(1709296215000)}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "L1,%s", ok[i].in);
        struct row r;
        row_pack(&r, m, line);
        is_int(get(&r.up.data, "created_at"), ok[i].ms);
        row_free(&r);
    }
    /* not a date: packed as text, for the decoder to refuse */
    const char *bad[] = {"2024-02-30", "2024-13-01", "01/03/2024", "2024-03-01 25:00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "L1,%s", bad[i]);
        struct row r;
        row_pack(&r, m, line);
        is_str(get(&r.up.data, "created_at"), bad[i]);
        row_free(&r);
    }
    csvmap_free(m);
}

Test(import_values, fields_are_typed_sensibly_contact_stays_text)
{
    struct csvmap *m =
        map_ok("id,phone,email,owner,flag,n,neg,zipcode,ratio,big,exp,word,empty,huge,dot,plus", NULL);
    struct row r;
    row_pack(&r, m,
             "L1,5155550100,a@example.com,true,FALSE,42,-7,02134,3.5,9223372036854775807,1e3,yes,,"
             "99999999999999999999,.5,+3");
    const msgpack_object *c = get(&r.up.data, "contact"), *f = get(&r.up.data, "fields");
    is_str(get(c, "phone"), "5155550100"); /* digits, still a phone number */
    is_str(get(c, "email"), "a@example.com");
    is_bool(get(f, "owner"), true);
    is_bool(get(f, "flag"), false);
    is_int(get(f, "n"), 42);
    is_int(get(f, "neg"), -7);
    is_str(get(f, "zipcode"), "02134"); /* a leading zero: text */
    is_float(get(f, "ratio"), 3.5);
    is_int(get(f, "big"), INT64_MAX);
    is_float(get(f, "exp"), 1000.0);
    is_str(get(f, "word"), "yes");
    cr_assert_null(get(f, "empty")); /* empty cells are left out */
    is_str(get(f, "huge"), "99999999999999999999");
    is_str(get(f, "dot"), ".5");
    is_str(get(f, "plus"), "+3");
    row_free(&r);
    csvmap_free(m);
}

Test(import_values, blank_rows_pack_nothing)
{
    struct csvmap *m = map_ok("id,state,x", NULL);
    struct row r;
    row_pack(&r, m, " ,, ");
    cr_assert_eq(r.packed, 0);
    row_free(&r);
    csvmap_free(m);
}

Test(import_values, map_changes_where_values_go)
{
    struct csvmap *m =
        map_ok("Lead Ref,Mobile,city,Tags", "Lead Ref=id,Mobile=contact.mobile,city=-,Tags=keywords");
    struct row r;
    row_pack(&r, m, "A-7,+1 515 555 0101,Ames,solar|roof");
    const msgpack_object *o = &r.up.data;
    is_str(get(o, "id"), "A-7");
    is_str(get(get(o, "contact"), "mobile"), "+1 515 555 0101");
    cr_assert_null(get(o, "fields")); /* city dropped */
    cr_assert_eq(get(o, "keywords")->via.array.size, 2);
    cr_assert_eq(o->via.map.size, 3);
    row_free(&r);
    csvmap_free(m);
}

/* ---- bad rows: the daemon's decoder decides -------------------------- */

/* The decoder's reason for a row (NULL when it accepts it). */
static const char *reason(const char *header, const char *values, size_t max_bytes)
{
    static char err[256];
    struct csvmap *m = map_ok(header, NULL);
    struct row r;
    row_pack(&r, m, values);
    cr_assert_eq(r.packed, 1);
    struct codec_lead *cl = codec_lead_new();
    int rc = codec_lead_decode(cl, r.sb.data, r.sb.size, max_bytes, err, sizeof err);
    codec_lead_free(cl);
    row_free(&r);
    csvmap_free(m);
    return rc == 0 ? NULL : err;
}

#define REFUSED(header, values, code)                                                                        \
    do {                                                                                                     \
        const char *why_ = reason(header, values, 65536);                                                    \
        cr_assert_not_null(why_, "'%s' accepted, want %s", values, code);                                    \
        cr_assert(strncmp(why_, code ": ", strlen(code ": ")) == 0, "'%s': got '%s', want %s", values, why_, \
                  code);                                                                                     \
    } while (0)

Test(import_rows, good_row_is_accepted)
{
    cr_assert_null(reason("id,niche,state,zip,lat,lon,score,phone,home_owner",
                          "L1,solar,IA,50309,41.6,-93.6,80,515-555-0100,true", 65536));
}

Test(import_rows, each_refusal_reason)
{
    const char *h = "id,state,score,lat,lon,country,zip,created_at,signals.web,notes";
    REFUSED(h, ",IA,,,,,,,,", "missing_id");
    REFUSED(h, "lead #1,IA,,,,,,,,", "invalid_id");
    REFUSED(h, "L1,IA,high,,,,,,,", "bad_type");
    REFUSED(h, "L1,IA,75.5,,,,,,,", "bad_type");
    REFUSED(h, "L1,IA,150,,,,,,,", "out_of_range");
    REFUSED(h, "L1,IA,-1,,,,,,,", "out_of_range");
    REFUSED(h, "L1,IA,,41.5,,,,,,", "out_of_range"); /* lat without lon */
    REFUSED(h, "L1,IA,,95,10,,,,,", "out_of_range");
    REFUSED(h, "L1,IA,,north,10,,,,,", "bad_type");
    REFUSED(h, "L1,IA,,,,USA,,,,", "out_of_range");
    REFUSED(h, "L1,Iowa!,,,,,,,,", "out_of_range");
    REFUSED(h, "L1,IA,,,,,50309-1234-5678-9,,,", "out_of_range");
    REFUSED(h, "L1,IA,,,,,,-5,,", "out_of_range");
    REFUSED(h, "L1,IA,,,,,,yesterday,,", "bad_type");
    REFUSED(h, "L1,IA,,,,,,,x,", "bad_type");

    /* a fields string past 1024 bytes */
    char row[2048];
    int n = snprintf(row, sizeof row, "L1,IA,,,,,,,,");
    memset(row + n, 'x', 1100);
    row[n + 1100] = 0;
    REFUSED(h, row, "out_of_range");

    /* too_large: the config's max_lead_bytes */
    const char *why = reason("id,notes", "L1,a note of some length", 20);
    cr_assert(why && strncmp(why, "too_large: ", 11) == 0, "%s", why ? why : "accepted");

    /* more keywords than the decoder takes */
    char kw[1024] = "L1,";
    for (int i = 0; i < 70; i++)
        strcat(kw, i ? "|k" : "k");
    REFUSED("id,keywords", kw, "out_of_range");
}

Test(import_rows, more_fields_than_a_lead_may_hold)
{
    char header[4096] = "id", row[4096] = "L1";
    for (int i = 0; i < 130; i++) {
        char col[16];
        snprintf(col, sizeof col, ",c%d", i);
        strcat(header, col);
        strcat(row, ",1");
    }
    REFUSED(header, row, "out_of_range");
}

/* ---- the command, --dry-run ----------------------------------------- */

struct out {
    int status;
    char out[8192], err[16384];
};

static void slurp(int fd, char *buf, size_t len)
{
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, len - 1);
    buf[n > 0 ? n : 0] = 0;
}

/* Runs lc_import with argv (NULL-terminated, after "import") and the
 * given config path, stdin from stdin_file when not NULL. */
static struct out *run_import(const char *config, const char *stdin_file, const char *const *args)
{
    static struct out o;
    char *argv[32] = {"import"};
    int argc = 1;
    for (; args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    char op[] = "/tmp/lr-imp-outXXXXXX", ep[] = "/tmp/lr-imp-errXXXXXX";
    int ofd = mkstemp(op), efd = mkstemp(ep);
    cr_assert(ofd >= 0 && efd >= 0);
    unlink(op);
    unlink(ep);
    fflush(stdout);
    fflush(stderr);
    int save_out = dup(1), save_err = dup(2), save_in = -1;
    dup2(ofd, 1);
    dup2(efd, 2);
    if (stdin_file) {
        save_in = dup(0);
        int ifd = open(stdin_file, O_RDONLY);
        cr_assert(ifd >= 0);
        dup2(ifd, 0);
        close(ifd);
        clearerr(stdin);
    }
    struct lc_env e = {.config_path = config};
    o.status = lc_import(&e, argc, argv);
    cfg_free(e.cfg); /* lc_config's, owned by the env */
    fflush(stdout);
    fflush(stderr);
    dup2(save_out, 1);
    dup2(save_err, 2);
    close(save_out);
    close(save_err);
    if (save_in >= 0) {
        dup2(save_in, 0);
        close(save_in);
    }
    slurp(ofd, o.out, sizeof o.out);
    slurp(efd, o.err, sizeof o.err);
    close(ofd);
    close(efd);
    return &o;
}

static char *write_tmp(const char *content, size_t len)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/lr-imp-csvXXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, content, len), (ssize_t)len);
    close(fd);
    return path;
}

#define NO_CONFIG "/nonexistent/leadrouter.conf"

Test(import_cmd, dry_run_reports_each_bad_row_with_its_line)
{
    const char csv[] = "id,state,score,notes,lat,lon\n"
                       "L1,IA,80,fine,,\n"           /* 2 */
                       "L2,IA,high,,,\n"             /* 3: bad_type */
                       "L3,NE,70,\"two\nlines\",,\n" /* 4-5: ok */
                       "L4,IA,70\n"                  /* 6: column_count */
                       "\n"                          /* 7: empty, ignored */
                       ",,,,,\n"                     /* 8: blank row, ignored */
                       "lead 5,IA,1,,,\n"            /* 9: invalid_id */
                       "L6,IA,1,caf\xe9,,\n"         /* 10: invalid_utf8 */
                       "L7,IA,1,\"x\ny\",41.6,\n"    /* 11-12: lat without lon */
                       "L8,MN,1,last,,";             /* 13: ok, no line end */
    const char *path = write_tmp(csv, sizeof csv - 1);
    const char *args[] = {path, "--dry-run", NULL};
    struct out *o = run_import(NO_CONFIG, NULL, args);
    cr_assert_eq(o->status, 1, "stderr: %s", o->err);
    cr_assert_str_eq(o->out, "dry run: 3 valid, skipped 5 (nothing enqueued)\n");
    char want[5][256];
    snprintf(want[0], sizeof want[0], "%s:3: bad_type: score must be an integer\n", path);
    snprintf(want[1], sizeof want[1], "%s:6: column_count: 3 columns, the header has 6\n", path);
    snprintf(want[2], sizeof want[2], "%s:9: invalid_id: id may only hold [A-Za-z0-9._:@-]\n", path);
    snprintf(want[3], sizeof want[3], "%s:10: invalid_utf8: ", path);
    snprintf(want[4], sizeof want[4], "%s:11: out_of_range: lat and lon must be given together\n", path);
    const char *at = o->err;
    for (int i = 0; i < 5; i++) {
        const char *hit = strstr(at, want[i]);
        cr_assert_not_null(hit, "want '%s' (in order) in:\n%s", want[i], o->err);
        at = hit + strlen(want[i]);
    }
    unlink(path);
}

Test(import_cmd, all_good_exits_0)
{
    const char csv[] = "id,niche,state\nL1,solar,IA\nL2,hvac,NE\n";
    const char *path = write_tmp(csv, sizeof csv - 1);
    const char *args[] = {"--dry-run", path, NULL};
    struct out *o = run_import(NO_CONFIG, NULL, args);
    cr_assert_eq(o->status, 0, "stderr: %s", o->err);
    cr_assert_str_eq(o->out, "dry run: 2 valid, skipped 0 (nothing enqueued)\n");
    unlink(path);
}

Test(import_cmd, excel_habits_bom_crlf_semicolons)
{
    const char csv[] =
        "\xef\xbb\xbfid;Name;City;Owner\r\nL1;Zo\xc3\xab M\xc3\xbcller;\"Des Moines; IA\";TRUE\r\n"
        "L2;Ren\xc3\xa9 Pe\xc3\xb1"
        "a;Ames;FALSE\r\n";
    const char *path = write_tmp(csv, sizeof csv - 1);
    const char *args[] = {path, "--dry-run", "--sep", ";", NULL};
    struct out *o = run_import(NO_CONFIG, NULL, args);
    cr_assert_eq(o->status, 0, "stderr: %s", o->err);
    cr_assert_str_eq(o->out, "dry run: 2 valid, skipped 0 (nothing enqueued)\n");
    /* the same file read with ',' is one column with no id */
    const char *args2[] = {path, "--dry-run", NULL};
    o = run_import(NO_CONFIG, NULL, args2);
    cr_assert_eq(o->status, 1);
    cr_assert(strstr(o->err, ":1: header: no column maps to id"), "%s", o->err);
    cr_assert(strstr(o->err, "try --sep ';'"), "%s", o->err);
    unlink(path);
}

Test(import_cmd, reads_stdin)
{
    const char csv[] = "id,state\nL1,IA\nL2,Iowa!\n";
    const char *path = write_tmp(csv, sizeof csv - 1);
    const char *args[] = {"-", "--dry-run", NULL};
    struct out *o = run_import(NO_CONFIG, path, args);
    cr_assert_eq(o->status, 1, "stderr: %s", o->err);
    cr_assert(strstr(o->err, "<stdin>:3: out_of_range: state"), "%s", o->err);
    cr_assert_str_eq(o->out, "dry run: 1 valid, skipped 1 (nothing enqueued)\n");
    unlink(path);
}

Test(import_cmd, map_option_forms)
{
    const char csv[] = "Ref,Mobile,Owner\nA1,555-0100,yes\n";
    const char *path = write_tmp(csv, sizeof csv - 1);
    const char *args[] = {path, "--dry-run", "--map", "Ref=id", "--map=Mobile=contact.phone,Owner=-", NULL};
    struct out *o = run_import(NO_CONFIG, NULL, args);
    cr_assert_eq(o->status, 0, "stderr: %s", o->err);
    const char *args2[] = {path, "--dry-run", "--map", "Nope=id", NULL};
    o = run_import(NO_CONFIG, NULL, args2);
    cr_assert_eq(o->status, 1);
    cr_assert(strstr(o->err, "header: --map Nope=id: the header has no column 'Nope'"), "%s", o->err);
    unlink(path);
}

Test(import_cmd, the_config_limit_applies)
{
    /* The sample config's max_lead_bytes is 65536: a 60 000-byte contact
     * passes, two of them do not. */
    char *csv = malloc(200000);
    int n = sprintf(csv, "id,address,name\nL1,");
    memset(csv + n, 'a', 60000);
    n += 60000;
    n += sprintf(csv + n, ",x\nL2,");
    memset(csv + n, 'a', 60000);
    n += 60000;
    csv[n++] = ',';
    memset(csv + n, 'b', 60000);
    n += 60000;
    csv[n++] = '\n';
    const char *path = write_tmp(csv, (size_t)n);
    free(csv);
    char conf[512];
    snprintf(conf, sizeof conf, "%s/conf/leadrouter.conf", LR_SOURCE_DIR);
    const char *args[] = {path, "--dry-run", NULL};
    struct out *o = run_import(conf, NULL, args);
    cr_assert_eq(o->status, 1, "stderr: %s", o->err);
    cr_assert(strstr(o->err, ":3: too_large: payload is "), "%s", o->err);
    cr_assert_str_eq(o->out, "dry run: 1 valid, skipped 1 (nothing enqueued)\n");
    unlink(path);
}

Test(import_cmd, usage_and_file_errors)
{
    const char *none[] = {NULL};
    cr_assert_eq(run_import(NO_CONFIG, NULL, none)->status, 1);
    const char *unknown[] = {"x.csv", "--fast", NULL};
    struct out *o = run_import(NO_CONFIG, NULL, unknown);
    cr_assert_eq(o->status, 1);
    cr_assert(strstr(o->err, "unknown option --fast"), "%s", o->err);
    const char *sep[] = {"x.csv", "--sep", "x", NULL};
    cr_assert_eq(run_import(NO_CONFIG, NULL, sep)->status, 1);
    const char *missing[] = {"/nonexistent/leads.csv", "--dry-run", NULL};
    o = run_import(NO_CONFIG, NULL, missing);
    cr_assert_eq(o->status, 1);
    cr_assert(strstr(o->err, "/nonexistent/leads.csv: No such file"), "%s", o->err);
    const char *help[] = {"--help", NULL};
    o = run_import(NO_CONFIG, NULL, help);
    cr_assert_eq(o->status, 0);
    cr_assert(strstr(o->out, "usage: leadctl import"), "%s", o->out);

    const char *path = write_tmp("", 0);
    const char *empty[] = {path, "--dry-run", NULL};
    o = run_import(NO_CONFIG, NULL, empty);
    cr_assert_eq(o->status, 1);
    cr_assert(strstr(o->err, "no header row"), "%s", o->err);
    unlink(path);

    path = write_tmp("id,state\n", 9);
    const char *header_only[] = {path, "--dry-run", NULL};
    o = run_import(NO_CONFIG, NULL, header_only);
    cr_assert_eq(o->status, 0, "%s", o->err);
    cr_assert_str_eq(o->out, "dry run: 0 valid, skipped 0 (nothing enqueued)\n");
    unlink(path);

    /* without --dry-run a config is needed */
    path = write_tmp("id\nL1\n", 6);
    const char *real[] = {path, NULL};
    o = run_import(NO_CONFIG, NULL, real);
    cr_assert_eq(o->status, 1);
    unlink(path);
}
