/* test_codec.c - the msgpack lead decoder: what it accepts, what it rejects
 * and why, and that a reused codec_lead owns everything a lead points to. */
#include <criterion/criterion.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "leadrouter/codec.h"

#define MAX_BYTES 65536

/* ---- payload building ---------------------------------------------- */

struct pk {
    msgpack_sbuffer sb;
    msgpack_packer p;
};

static void pk_init(struct pk *k)
{
    msgpack_sbuffer_init(&k->sb);
    msgpack_packer_init(&k->p, &k->sb, msgpack_sbuffer_write);
}

static void pk_done(struct pk *k)
{
    msgpack_sbuffer_destroy(&k->sb);
}

static void pstrn(msgpack_packer *p, const char *s, size_t n)
{
    msgpack_pack_str(p, n);
    msgpack_pack_str_body(p, s, n);
}

static void pstr(msgpack_packer *p, const char *s)
{
    pstrn(p, s, strlen(s));
}

/* A string of n copies of c. */
static void prep(msgpack_packer *p, char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    pstrn(p, s, n);
    free(s);
}

static struct codec_lead *cl;
static char err[256];

static void setup(void)
{
    cl = codec_lead_new();
    cr_assert_not_null(cl);
    err[0] = 0;
}

static void teardown(void)
{
    codec_lead_free(cl);
}

TestSuite(codec, .init = setup, .fini = teardown);

static int dec_buf(const char *buf, size_t len)
{
    err[0] = 0;
    return codec_lead_decode(cl, buf, len, MAX_BYTES, err, sizeof(err));
}

static int dec(const struct pk *k)
{
    return dec_buf(k->sb.data, k->sb.size);
}

/* The decode of k fails with "<code>: ..." and the reason names name. */
static void expect_reject(const struct pk *k, const char *code, const char *name)
{
    size_t n = strlen(code);
    cr_expect_eq(dec(k), -1, "expected %s (%s), got success", code, name ? name : "-");
    cr_expect(strncmp(err, code, n) == 0 && err[n] == ':', "expected code %s, got \"%s\"", code, err);
    if (name)
        cr_expect_not_null(strstr(err, name), "reason \"%s\" does not name %s", err, name);
}

static bool str_is(struct lr_str s, const char *want)
{
    return lr_str_eq(s, want);
}

/* The full lead, every known key set, plus unknown keys. */
static void pack_full(struct pk *k)
{
    msgpack_packer *p = &k->p;
    pk_init(k);
    msgpack_pack_map(p, 16);
    pstr(p, "id");
    pstr(p, "lead-42:a.b@c_d");
    pstr(p, "niche");
    pstr(p, "solar");
    pstr(p, "source");
    pstr(p, "sunquote.example");
    pstr(p, "campaign");
    pstr(p, "spring");
    pstr(p, "keywords");
    msgpack_pack_array(p, 2);
    pstr(p, "roof");
    pstr(p, "kitchen");
    pstr(p, "score");
    msgpack_pack_int(p, 87);
    pstr(p, "signals");
    msgpack_pack_map(p, 3);
    pstr(p, "web");
    msgpack_pack_int(p, 80);
    pstr(p, "email");
    msgpack_pack_double(p, 0.5);
    pstr(p, "demo");
    msgpack_pack_int(p, -2);
    pstr(p, "country");
    pstr(p, "US");
    pstr(p, "state");
    pstr(p, "IA");
    pstr(p, "zip");
    pstr(p, "50309-1234");
    pstr(p, "lat");
    msgpack_pack_double(p, 41.59);
    pstr(p, "lon");
    msgpack_pack_double(p, -93.62);
    pstr(p, "created_at");
    msgpack_pack_uint64(p, 1700000000123ULL);
    pstr(p, "contact");
    msgpack_pack_map(p, 4);
    pstr(p, "name");
    pstr(p, "Jane Roe");
    pstr(p, "phone");
    pstr(p, "+1 515 555 0100");
    pstr(p, "email");
    pstr(p, "jane@example.com");
    pstr(p, "tags");
    msgpack_pack_array(p, 1);
    msgpack_pack_map(p, 0);
    pstr(p, "fields");
    msgpack_pack_map(p, 7);
    pstr(p, "home_owner");
    msgpack_pack_true(p);
    pstr(p, "units");
    msgpack_pack_int64(p, -3);
    pstr(p, "ratio");
    msgpack_pack_double(p, 0.25);
    pstr(p, "note");
    pstr(p, "call after 5");
    pstr(p, "none");
    msgpack_pack_nil(p);
    pstr(p, "big");
    msgpack_pack_uint64(p, (uint64_t)INT64_MAX);
    pstr(p, "small");
    msgpack_pack_int64(p, INT64_MIN);
    pstr(p, "vendor_meta"); /* unknown: any shape */
    msgpack_pack_map(p, 2);
    pstr(p, "nested");
    msgpack_pack_array(p, 3);
    msgpack_pack_int(p, 1);
    msgpack_pack_bin(p, 3);
    msgpack_pack_bin_body(p, "\x00\x01\x02", 3);
    msgpack_pack_ext(p, 2, 7);
    msgpack_pack_ext_body(p, "ab", 2);
    msgpack_pack_int(p, 5);
    msgpack_pack_float(p, 1.5f);
}

static void check_full(const struct lead *l)
{
    cr_expect(str_is(l->id, "lead-42:a.b@c_d"));
    cr_expect(str_is(l->niche, "solar"));
    cr_expect(str_is(l->source, "sunquote.example"));
    cr_expect(str_is(l->campaign, "spring"));
    cr_assert_eq(l->n_keywords, 2);
    cr_expect(str_is(l->keywords[0], "roof"));
    cr_expect(str_is(l->keywords[1], "kitchen"));
    cr_expect(l->has_score);
    cr_expect_eq(l->score, 87);
    cr_assert_eq(l->n_signals, 3);
    cr_expect(str_is(l->signals[0].key, "web"));
    cr_expect_eq(l->signals[0].v, 80.0);
    cr_expect(str_is(l->signals[1].key, "email"));
    cr_expect_eq(l->signals[1].v, 0.5);
    cr_expect(str_is(l->signals[2].key, "demo"));
    cr_expect_eq(l->signals[2].v, -2.0);
    cr_expect(str_is(l->country, "US"));
    cr_expect(str_is(l->state, "IA"));
    cr_expect(str_is(l->zip, "50309-1234"));
    cr_expect(l->has_geo);
    cr_expect_eq(l->lat, 41.59);
    cr_expect_eq(l->lon, -93.62);
    cr_expect(l->has_created_at);
    cr_expect_eq(l->created_at, 1700000000123LL);
    cr_expect(str_is(l->phone, "+1 515 555 0100"));
    cr_expect(str_is(l->email, "jane@example.com"));

    cr_assert_eq(l->n_fields, 7);
    const struct lead_field *f = lead_field_get(l, "home_owner", 10);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_BOOL && f->v.b == true);
    f = lead_field_get(l, "units", 5);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_INT && f->v.i == -3);
    f = lead_field_get(l, "ratio", 5);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_FLOAT && f->v.f == 0.25);
    f = lead_field_get(l, "note", 4);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_STR && str_is(f->v.s, "call after 5"));
    f = lead_field_get(l, "none", 4);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_NIL);
    f = lead_field_get(l, "big", 3);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_INT && f->v.i == INT64_MAX);
    f = lead_field_get(l, "small", 5);
    cr_assert_not_null(f);
    cr_expect(f->v.type == LEAD_V_INT && f->v.i == INT64_MIN);
}

/* {"id": "L-1", key: <val>} */
static void lead_with(struct pk *k, const char *key, void (*val)(msgpack_packer *))
{
    pk_init(k);
    msgpack_pack_map(&k->p, 2);
    pstr(&k->p, "id");
    pstr(&k->p, "L-1");
    pstr(&k->p, key);
    val(&k->p);
}

/* Like lead_with, but a lat comes with a valid lon and vice versa, so that
 * the case fails for its own value, not for a missing partner. */
static void lead_with_partner(struct pk *k, const char *key, void (*val)(msgpack_packer *))
{
    const char *partner = strcmp(key, "lat") == 0 ? "lon" : strcmp(key, "lon") == 0 ? "lat" : NULL;
    if (!partner) {
        lead_with(k, key, val);
        return;
    }
    pk_init(k);
    msgpack_pack_map(&k->p, 3);
    pstr(&k->p, "id");
    pstr(&k->p, "L-1");
    pstr(&k->p, partner);
    msgpack_pack_double(&k->p, 0.0);
    pstr(&k->p, key);
    val(&k->p);
}

/* ---- values for the per-key tables ---------------------------------- */

static void v_int(msgpack_packer *p)
{
    msgpack_pack_int(p, 7);
}
static void v_neg1(msgpack_packer *p)
{
    msgpack_pack_int(p, -1);
}
static void v_101(msgpack_packer *p)
{
    msgpack_pack_int(p, 101);
}
static void v_float(msgpack_packer *p)
{
    msgpack_pack_double(p, 50.0);
}
static void v_str(msgpack_packer *p)
{
    pstr(p, "x");
}
static void v_nil(msgpack_packer *p)
{
    msgpack_pack_nil(p);
}
static void v_true(msgpack_packer *p)
{
    msgpack_pack_true(p);
}
static void v_array(msgpack_packer *p)
{
    msgpack_pack_array(p, 1);
    pstr(p, "a");
}
static void v_map(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "a");
    pstr(p, "b");
}
static void v_bin(msgpack_packer *p)
{
    msgpack_pack_bin(p, 2);
    msgpack_pack_bin_body(p, "US", 2);
}
static void v_kw_int(msgpack_packer *p)
{
    msgpack_pack_array(p, 2);
    pstr(p, "roof");
    msgpack_pack_int(p, 3);
}
static void v_sig_str(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "web");
    pstr(p, "high");
}
static void v_sig_intkey(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    msgpack_pack_int(p, 1);
    msgpack_pack_int(p, 1);
}
static void v_fields_map(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "sub");
    msgpack_pack_map(p, 1);
    pstr(p, "a");
    msgpack_pack_int(p, 1);
}
static void v_fields_array(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "list");
    msgpack_pack_array(p, 0);
}
static void v_fields_bin(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "blob");
    msgpack_pack_bin(p, 0);
}
static void v_fields_intkey(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    msgpack_pack_int(p, 9);
    msgpack_pack_int(p, 1);
}
static void v_usa(msgpack_packer *p)
{
    pstr(p, "USA");
}
static void v_u1(msgpack_packer *p)
{
    pstr(p, "U1");
}
static void v_91(msgpack_packer *p)
{
    msgpack_pack_double(p, 91.0);
}
static void v_m181(msgpack_packer *p)
{
    msgpack_pack_int(p, -181);
}
static void v_181f(msgpack_packer *p)
{
    msgpack_pack_double(p, 180.5);
}
static void v_m91i(msgpack_packer *p)
{
    msgpack_pack_int(p, -91);
}
static void v_nan(msgpack_packer *p)
{
    msgpack_pack_double(p, NAN);
}
static void v_2p53p1(msgpack_packer *p)
{
    msgpack_pack_uint64(p, (UINT64_C(1) << 53) + 1);
}
static void v_129(msgpack_packer *p)
{
    prep(p, 'n', 129);
}
static void v_empty(msgpack_packer *p)
{
    pstr(p, "");
}
static void v_state9(msgpack_packer *p)
{
    pstr(p, "ABCDEFGHI");
}
static void v_state_bad(msgpack_packer *p)
{
    pstr(p, "I A");
}
static void v_zip17(msgpack_packer *p)
{
    prep(p, '5', 17);
}
static void v_zip_slash(msgpack_packer *p)
{
    pstr(p, "503/09");
}
static void v_kw65(msgpack_packer *p)
{
    msgpack_pack_array(p, 65);
    for (int i = 0; i < 65; i++)
        pstr(p, "k");
}
static void v_kw_long(msgpack_packer *p)
{
    msgpack_pack_array(p, 1);
    prep(p, 'k', 65);
}
static void v_sig65(msgpack_packer *p)
{
    char key[8];
    msgpack_pack_map(p, 65);
    for (int i = 0; i < 65; i++) {
        snprintf(key, sizeof(key), "s%d", i);
        pstr(p, key);
        msgpack_pack_int(p, i);
    }
}
static void v_sig_nan(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "web");
    msgpack_pack_double(p, NAN);
}
static void v_sig_inf(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "web");
    msgpack_pack_float(p, -INFINITY);
}
static void v_sig_emptykey(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "");
    msgpack_pack_int(p, 1);
}
static void v_fields129(msgpack_packer *p)
{
    char key[8];
    msgpack_pack_map(p, 129);
    for (int i = 0; i < 129; i++) {
        snprintf(key, sizeof(key), "f%d", i);
        pstr(p, key);
        msgpack_pack_int(p, i);
    }
}
static void v_fields_huge_uint(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "n");
    msgpack_pack_uint64(p, (uint64_t)INT64_MAX + 1);
}
static void v_fields_long_str(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "note");
    prep(p, 'x', 1025);
}
static void v_fields_longkey(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    prep(p, 'k', 65);
    msgpack_pack_int(p, 1);
}
static void v_fields_inf(msgpack_packer *p)
{
    msgpack_pack_map(p, 1);
    pstr(p, "ratio");
    msgpack_pack_double(p, INFINITY);
}

struct key_case {
    const char *key;
    void (*val)(msgpack_packer *);
    const char *what;
};

static void run_cases(const struct key_case *cases, size_t n, const char *code)
{
    for (size_t i = 0; i < n; i++) {
        struct pk k;
        lead_with_partner(&k, cases[i].key, cases[i].val);
        cr_expect_eq(dec(&k), -1, "%s %s: accepted", cases[i].key, cases[i].what);
        size_t cn = strlen(code);
        cr_expect(strncmp(err, code, cn) == 0 && err[cn] == ':', "%s %s: expected %s, got \"%s\"",
                  cases[i].key, cases[i].what, code, err);
        cr_expect_not_null(strstr(err, cases[i].key), "%s %s: reason \"%s\" does not name the key",
                           cases[i].key, cases[i].what, err);
        cr_expect_null(strstr(err, "together"), "%s %s: failed for the wrong reason: \"%s\"", cases[i].key,
                       cases[i].what, err);
        pk_done(&k);
    }
}

/* ---- acceptance ----------------------------------------------------- */

Test(codec, full_lead_round_trips)
{
    struct pk k;
    pack_full(&k);
    cr_assert_eq(dec(&k), 0, "%s", err);
    check_full(codec_lead_get(cl));
    pk_done(&k);
}

Test(codec, lead_survives_the_callers_buffer)
{
    struct pk k;
    pack_full(&k);
    char *copy = malloc(k.sb.size);
    memcpy(copy, k.sb.data, k.sb.size);
    cr_assert_eq(dec_buf(copy, k.sb.size), 0, "%s", err);
    /* Scribble over and free the caller's bytes: the lead must not care (and
     * ASan would flag any pointer left into them). */
    memset(copy, 0xc1, k.sb.size);
    free(copy);
    pk_done(&k);
    check_full(codec_lead_get(cl));
}

Test(codec, minimal_lead_leaves_the_rest_absent)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 1);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    cr_assert_eq(dec(&k), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(str_is(l->id, "x"));
    cr_expect_eq(l->niche.len, 0);
    cr_expect_eq(l->country.len, 0);
    cr_expect_eq(l->n_keywords + l->n_signals + l->n_fields, 0);
    cr_expect(!l->has_score && !l->has_geo && !l->has_created_at);
    cr_expect_eq(l->phone.len + l->email.len, 0);
    pk_done(&k);
}

Test(codec, unknown_keys_are_accepted)
{
    struct pk k;
    pk_init(&k);
    msgpack_packer *p = &k.p;
    msgpack_pack_map(p, 5);
    pstr(p, "utm");
    msgpack_pack_map(p, 1);
    pstr(p, "x");
    msgpack_pack_array(p, 2);
    msgpack_pack_nil(p);
    msgpack_pack_double(p, NAN); /* only known keys are range-checked */
    pstr(p, "id");
    pstr(p, "abc");
    pstr(p, "Score"); /* keys are case-sensitive: not "score" */
    pstr(p, "high");
    pstr(p, "raw");
    msgpack_pack_bin(p, 1);
    msgpack_pack_bin_body(p, "\xff", 1);
    pstr(p, "utm"); /* a repeated unknown key is not a known duplicate */
    msgpack_pack_int(p, 1);
    cr_assert_eq(dec(&k), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(str_is(l->id, "abc"));
    cr_expect(!l->has_score);
    pk_done(&k);
}

Test(codec, integers_for_lat_lon_and_float_signals)
{
    struct pk k;
    pk_init(&k);
    msgpack_packer *p = &k.p;
    msgpack_pack_map(p, 4);
    pstr(p, "id");
    pstr(p, "g");
    pstr(p, "lat");
    msgpack_pack_int(p, -90);
    pstr(p, "lon");
    msgpack_pack_uint8(p, 180);
    pstr(p, "signals");
    msgpack_pack_map(p, 1);
    pstr(p, "web");
    msgpack_pack_float(p, 2.5f);
    cr_assert_eq(dec(&k), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(l->has_geo);
    cr_expect_eq(l->lat, -90.0);
    cr_expect_eq(l->lon, 180.0);
    cr_assert_eq(l->n_signals, 1);
    cr_expect_eq(l->signals[0].v, 2.5);
    pk_done(&k);
}

Test(codec, boundary_values_are_accepted)
{
    struct pk k;
    pk_init(&k);
    msgpack_packer *p = &k.p;
    msgpack_pack_map(p, 9);
    pstr(p, "id");
    pstr(p, "azAZ09._:@-");
    pstr(p, "score");
    msgpack_pack_int(p, 100);
    pstr(p, "created_at");
    msgpack_pack_uint64(p, UINT64_C(1) << 53);
    pstr(p, "niche");
    prep(p, 'n', 128);
    pstr(p, "state");
    pstr(p, "ABCD-123");
    pstr(p, "zip");
    pstr(p, "SW1A 1AA");
    pstr(p, "country");
    pstr(p, "gb");
    pstr(p, "keywords");
    msgpack_pack_array(p, 64);
    for (int i = 0; i < 64; i++)
        prep(p, 'k', 64);
    pstr(p, "fields");
    msgpack_pack_map(p, 1);
    prep(p, 'f', 64);
    prep(p, 'v', 1024);
    cr_assert_eq(dec(&k), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(str_is(l->id, "azAZ09._:@-"));
    cr_expect_eq(l->score, 100);
    cr_expect_eq(l->created_at, INT64_C(1) << 53);
    cr_expect_eq(l->niche.len, 128);
    cr_expect(str_is(l->zip, "SW1A 1AA"));
    cr_expect_eq(l->n_keywords, 64);
    cr_assert_eq(l->n_fields, 1);
    cr_expect_eq(l->fields[0].v.s.len, 1024);
    pk_done(&k);
}

Test(codec, contact_is_opaque_except_phone_and_email)
{
    struct pk k;
    pk_init(&k);
    msgpack_packer *p = &k.p;
    msgpack_pack_map(p, 2);
    pstr(p, "id");
    pstr(p, "c");
    pstr(p, "contact");
    msgpack_pack_map(p, 4);
    msgpack_pack_int(p, 1); /* a non-string key inside contact is not our business */
    msgpack_pack_int(p, 2);
    pstr(p, "phone");
    msgpack_pack_int64(p, 5155550100); /* SPEC 5: an integer phone is its digits */
    pstr(p, "email");
    pstr(p, "a@b.example");
    pstr(p, "address");
    msgpack_pack_map(p, 1);
    pstr(p, "zip");
    msgpack_pack_int(p, 7);
    cr_assert_eq(dec(&k), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(str_is(l->phone, "5155550100"));
    cr_expect(str_is(l->email, "a@b.example"));
    pk_done(&k);
}

/* ---- reuse and ownership -------------------------------------------- */

Test(codec, second_decode_replaces_the_first)
{
    struct pk a, b;
    pack_full(&a);
    char *copy = malloc(a.sb.size);
    memcpy(copy, a.sb.data, a.sb.size);
    cr_assert_eq(dec_buf(copy, a.sb.size), 0, "%s", err);

    /* A much larger second lead makes the codec grow its buffers. */
    pk_init(&b);
    msgpack_packer *p = &b.p;
    msgpack_pack_map(p, 4);
    pstr(p, "id");
    pstr(p, "second");
    pstr(p, "fields");
    msgpack_pack_map(p, 128);
    for (int i = 0; i < 128; i++) {
        char key[8];
        snprintf(key, sizeof(key), "f%d", i);
        pstr(p, key);
        msgpack_pack_int(p, i * 1000);
    }
    pstr(p, "bulk");
    msgpack_pack_array(p, 5000);
    for (int i = 0; i < 5000; i++)
        msgpack_pack_array(p, 0);
    pstr(p, "keywords");
    msgpack_pack_array(p, 1);
    pstr(p, "pool");

    free(copy); /* the first lead's bytes are gone before the second decode */
    cr_assert_eq(dec(&b), 0, "%s", err);
    const struct lead *l = codec_lead_get(cl);
    cr_expect(str_is(l->id, "second"));
    cr_expect_eq(l->niche.len, 0, "nothing of the first lead may remain");
    cr_expect(!l->has_score && !l->has_geo);
    cr_expect_eq(l->phone.len, 0);
    cr_assert_eq(l->n_fields, 128);
    const struct lead_field *f = lead_field_get(l, "f127", 4);
    cr_assert_not_null(f);
    cr_expect_eq(f->v.i, 127000);
    cr_assert_eq(l->n_keywords, 1);
    cr_expect(str_is(l->keywords[0], "pool"));

    /* And back to the first, from the reused (now larger) buffers. */
    pk_done(&b);
    cr_assert_eq(dec(&a), 0, "%s", err);
    check_full(codec_lead_get(cl));
    pk_done(&a);
}

Test(codec, failed_decode_clears_the_lead)
{
    struct pk k;
    pack_full(&k);
    cr_assert_eq(dec(&k), 0, "%s", err);
    cr_assert_eq(dec_buf(k.sb.data, k.sb.size - 1), -1);
    const struct lead *l = codec_lead_get(cl);
    cr_expect_eq(l->id.len, 0);
    cr_expect_eq(l->n_fields, 0);
    cr_expect(!l->has_geo);
    pk_done(&k);

    /* A structurally valid but invalid lead clears it as well. */
    lead_with(&k, "score", v_101);
    cr_assert_eq(dec(&k), -1);
    cr_expect_eq(codec_lead_get(cl)->id.len, 0);
    pk_done(&k);
}

Test(codec, free_accepts_null)
{
    codec_lead_free(NULL);
}

/* ---- structural rejections ------------------------------------------ */

Test(codec, too_large_before_unpacking)
{
    struct pk k;
    pack_full(&k);
    cr_expect_eq(codec_lead_decode(cl, k.sb.data, k.sb.size, k.sb.size - 1, err, sizeof(err)), -1);
    cr_expect(strncmp(err, "too_large:", 10) == 0, "%s", err);
    cr_expect_eq(codec_lead_decode(cl, k.sb.data, k.sb.size, k.sb.size, err, sizeof(err)), 0, "%s", err);
    pk_done(&k);

    /* Refused by size even when the bytes are garbage. */
    char junk[4] = {(char)0xc1, (char)0xc1, (char)0xc1, (char)0xc1};
    cr_expect_eq(codec_lead_decode(cl, junk, sizeof(junk), 3, err, sizeof(err)), -1);
    cr_expect(strncmp(err, "too_large:", 10) == 0, "%s", err);
}

Test(codec, truncated_at_every_length)
{
    struct pk k;
    pack_full(&k);
    for (size_t n = 0; n < k.sb.size; n++) {
        cr_expect_eq(dec_buf(k.sb.data, n), -1, "cut at %zu accepted", n);
        cr_expect(strncmp(err, "truncated:", 10) == 0, "cut at %zu: \"%s\"", n, err);
    }
    pk_done(&k);
}

Test(codec, container_claiming_more_than_is_left_is_truncated)
{
    /* {"id": "x"} but the map header claims 3 entries */
    const char buf[] = {(char)0x83, (char)0xa2, 'i', 'd', (char)0xa1, 'x'};
    cr_expect_eq(dec_buf(buf, sizeof(buf)), -1);
    cr_expect(strncmp(err, "truncated:", 10) == 0, "%s", err);
}

Test(codec, trailing_bytes)
{
    struct pk k;
    lead_with(&k, "score", v_int);
    msgpack_pack_nil(&k.p);
    expect_reject(&k, "trailing_bytes", NULL);
    pk_done(&k);

    /* two whole leads back to back */
    lead_with(&k, "score", v_int);
    size_t one = k.sb.size;
    msgpack_sbuffer_write(&k.sb, k.sb.data, one);
    expect_reject(&k, "trailing_bytes", NULL);
    pk_done(&k);
}

Test(codec, malformed_type_byte)
{
    const char top[] = {(char)0xc1};
    cr_expect_eq(dec_buf(top, sizeof(top)), -1);
    cr_expect(strncmp(err, "malformed:", 10) == 0, "%s", err);

    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    pstr(&k.p, "note");
    msgpack_sbuffer_write(&k.sb, "\xc1", 1);
    expect_reject(&k, "malformed", NULL);
    pk_done(&k);
}

Test(codec, too_complex_nesting)
{
    /* 40 nested arrays under an unknown key */
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    pstr(&k.p, "deep");
    for (int i = 0; i < 40; i++)
        msgpack_pack_array(&k.p, 1);
    msgpack_pack_nil(&k.p);
    expect_reject(&k, "too_complex", NULL);
    pk_done(&k);

    /* the map plus 31 nested containers is exactly msgpack-c's limit */
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    pstr(&k.p, "deep");
    for (int i = 0; i < 31; i++)
        msgpack_pack_array(&k.p, 1);
    msgpack_pack_map(&k.p, 0);
    expect_reject(&k, "too_complex", NULL);
    pk_done(&k);

    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    pstr(&k.p, "deep");
    for (int i = 0; i < 30; i++)
        msgpack_pack_array(&k.p, 1);
    msgpack_pack_map(&k.p, 0);
    cr_expect_eq(dec(&k), 0, "32 levels: %s", err);
    pk_done(&k);
}

Test(codec, too_complex_huge_claims)
{
    const char map32[] = {(char)0xdf, (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    cr_expect_eq(dec_buf(map32, sizeof(map32)), -1);
    cr_expect(strncmp(err, "too_complex:", 12) == 0, "%s", err);

    const char arr32[] = {(char)0x81, (char)0xa1, 'k',        (char)0xdd,
                          (char)0xff, (char)0xff, (char)0xff, (char)0xff};
    cr_expect_eq(dec_buf(arr32, sizeof(arr32)), -1);
    cr_expect(strncmp(err, "too_complex:", 12) == 0, "%s", err);

    /* A str32 claiming 4 GB is just truncated: nothing is allocated for it. */
    const char str32[] = {(char)0xdb, (char)0xff, (char)0xff, (char)0xff, (char)0xff, 'a'};
    cr_expect_eq(dec_buf(str32, sizeof(str32)), -1);
    cr_expect(strncmp(err, "truncated:", 10) == 0, "%s", err);
}

Test(codec, not_a_map)
{
    struct pk k;
    void (*vals[])(msgpack_packer *) = {v_array, v_int, v_str, v_nil, v_float, v_bin};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        pk_init(&k);
        vals[i](&k.p);
        expect_reject(&k, "not_a_map", NULL);
        pk_done(&k);
    }
}

Test(codec, non_string_top_level_key)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "x");
    msgpack_pack_int(&k.p, 1);
    msgpack_pack_int(&k.p, 2);
    expect_reject(&k, "bad_type", "keys");
    pk_done(&k);
}

/* ---- id ------------------------------------------------------------- */

Test(codec, missing_id)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 0);
    expect_reject(&k, "missing_id", "id");
    pk_done(&k);

    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "niche");
    pstr(&k.p, "solar");
    pstr(&k.p, "ID");
    pstr(&k.p, "x");
    expect_reject(&k, "missing_id", "id");
    pk_done(&k);
}

static void pack_id(struct pk *k, void (*val)(msgpack_packer *))
{
    pk_init(k);
    msgpack_pack_map(&k->p, 1);
    pstr(&k->p, "id");
    val(&k->p);
}

static void v_id129(msgpack_packer *p)
{
    prep(p, 'a', 129);
}
static void v_id128(msgpack_packer *p)
{
    prep(p, '@', 128);
}
static void v_id_space(msgpack_packer *p)
{
    pstr(p, "john doe");
}
static void v_id_slash(msgpack_packer *p)
{
    pstr(p, "a/b");
}
static void v_id_utf8(msgpack_packer *p)
{
    pstr(p, "caf\xc3\xa9");
}
static void v_id_nul(msgpack_packer *p)
{
    pstrn(p, "a\0b", 3);
}

Test(codec, invalid_id)
{
    void (*vals[])(msgpack_packer *) = {v_empty,  v_id129, v_id_space, v_id_slash, v_id_utf8,
                                        v_id_nul, v_int,   v_nil,      v_bin,      v_array};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        struct pk k;
        pack_id(&k, vals[i]);
        expect_reject(&k, "invalid_id", "id");
        /* the reason never repeats the value */
        cr_expect_null(strstr(err, "john"), "%s", err);
        pk_done(&k);
    }

    struct pk ok;
    pack_id(&ok, v_id128);
    cr_expect_eq(dec(&ok), 0, "128-byte id: %s", err);
    cr_expect_eq(codec_lead_get(cl)->id.len, 128);
    pk_done(&ok);
}

Test(codec, duplicate_keys)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "id");
    pstr(&k.p, "b");
    expect_reject(&k, "duplicate_key", "id");
    pk_done(&k);

    pk_init(&k);
    msgpack_pack_map(&k.p, 3);
    pstr(&k.p, "score");
    msgpack_pack_int(&k.p, 1);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "score");
    msgpack_pack_int(&k.p, 2);
    expect_reject(&k, "duplicate_key", "score");
    pk_done(&k);
}

Test(codec, duplicate_keys_inside_signals_and_fields)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "fields");
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "x");
    msgpack_pack_int(&k.p, 1);
    pstr(&k.p, "x");
    msgpack_pack_int(&k.p, 2);
    expect_reject(&k, "duplicate_key", "fields");
    pk_done(&k);

    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "signals");
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "web");
    msgpack_pack_int(&k.p, 1);
    pstr(&k.p, "web");
    msgpack_pack_int(&k.p, 2);
    expect_reject(&k, "duplicate_key", "signals");
    pk_done(&k);
}

/* Two phones in contact: we would check "n/a" for DNC while a dealer's
 * decoder (which keeps the last) dials the listed number. */
Test(codec, duplicate_keys_inside_contact)
{
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "contact");
    msgpack_pack_map(&k.p, 3);
    pstr(&k.p, "phone");
    pstr(&k.p, "n/a");
    pstr(&k.p, "name");
    pstr(&k.p, "Pat");
    pstr(&k.p, "phone");
    pstr(&k.p, "+1 515 555 9999");
    expect_reject(&k, "duplicate_key", "contact");
    pk_done(&k);

    /* Twice as a string and as an integer, and a non-string key twice. */
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "contact");
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "phone");
    msgpack_pack_int64(&k.p, 15155559999);
    pstr(&k.p, "phone");
    pstr(&k.p, "n/a");
    expect_reject(&k, "duplicate_key", "contact");
    pk_done(&k);

    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "contact");
    msgpack_pack_map(&k.p, 2);
    msgpack_pack_int(&k.p, 1);
    pstr(&k.p, "x");
    msgpack_pack_int(&k.p, 1);
    pstr(&k.p, "y");
    expect_reject(&k, "duplicate_key", "contact");
    pk_done(&k);

    /* At most 64 entries. */
    pk_init(&k);
    msgpack_pack_map(&k.p, 2);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "contact");
    msgpack_pack_map(&k.p, 65);
    for (int i = 0; i < 65; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        pstr(&k.p, key);
        msgpack_pack_int(&k.p, i);
    }
    expect_reject(&k, "out_of_range", "contact");
    pk_done(&k);
}

/* Any str of the lead, key or value, at any depth, known key or not: a
 * bin may hold anything. */
Test(codec, invalid_utf8_anywhere_in_a_string)
{
    static const char *const bad[] = {"\xff", "ok\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80"};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        for (int where = 0; where < 5; where++) {
            struct pk k;
            pk_init(&k);
            msgpack_pack_map(&k.p, 2);
            pstr(&k.p, "id");
            pstr(&k.p, "a");
            switch (where) {
            case 0: /* a known text */
                pstr(&k.p, "source");
                pstr(&k.p, bad[b]);
                break;
            case 1: /* an unknown key's value */
                pstr(&k.p, "vendor_note");
                pstr(&k.p, bad[b]);
                break;
            case 2: /* an unknown key itself */
                pstr(&k.p, bad[b]);
                msgpack_pack_int(&k.p, 1);
                break;
            case 3: /* inside contact */
                pstr(&k.p, "contact");
                msgpack_pack_map(&k.p, 1);
                pstr(&k.p, "name");
                pstr(&k.p, bad[b]);
                break;
            default: /* deep in an unknown array */
                pstr(&k.p, "extra");
                msgpack_pack_array(&k.p, 1);
                msgpack_pack_array(&k.p, 2);
                msgpack_pack_int(&k.p, 1);
                pstr(&k.p, bad[b]);
                break;
            }
            cr_assert_eq(dec(&k), -1, "bad string %zu at place %d was accepted", b, where);
            cr_assert(strncmp(err, "invalid_utf8: ", 14) == 0, "string %zu at place %d: %s", b, where, err);
            pk_done(&k);
        }
    }
    /* Well-formed multi-byte text, and arbitrary bytes as bin, pass. */
    struct pk k;
    pk_init(&k);
    msgpack_pack_map(&k.p, 3);
    pstr(&k.p, "id");
    pstr(&k.p, "a");
    pstr(&k.p, "source");
    pstr(&k.p, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8f\xa0");
    pstr(&k.p, "blob");
    msgpack_pack_bin(&k.p, 2);
    msgpack_pack_bin_body(&k.p, "\xff\xfe", 2);
    cr_assert_eq(dec(&k), 0, "%s", err);
    pk_done(&k);
}

/* ---- types and ranges ----------------------------------------------- */

Test(codec, bad_type_for_every_known_key)
{
    static const struct key_case cases[] = {
        {"niche", v_int, "int"},
        {"source", v_array, "array"},
        {"campaign", v_nil, "nil"},
        {"keywords", v_str, "str"},
        {"keywords", v_kw_int, "int element"},
        {"score", v_float, "float"},
        {"score", v_str, "str"},
        {"signals", v_array, "array"},
        {"signals", v_sig_str, "str value"},
        {"signals", v_sig_intkey, "int key"},
        {"country", v_bin, "bin"},
        {"keywords", v_map, "map"},
        {"state", v_int, "int"},
        {"zip", v_int, "int"},
        {"lat", v_str, "str"},
        {"lon", v_true, "bool"},
        {"created_at", v_float, "float"},
        {"created_at", v_str, "str"},
        {"contact", v_str, "str"},
        {"contact", v_array, "array"},
        {"fields", v_array, "array"},
        {"fields", v_fields_map, "nested map"},
        {"fields", v_fields_array, "nested array"},
        {"fields", v_fields_bin, "bin value"},
        {"fields", v_fields_intkey, "int key"},
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]), "bad_type");
}

Test(codec, out_of_range_values)
{
    static const struct key_case cases[] = {
        {"score", v_neg1, "-1"},
        {"score", v_101, "101"},
        {"lat", v_91, "91"},
        {"lat", v_nan, "NaN"},
        {"lon", v_m181, "-181"},
        {"lon", v_181f, "180.5"},
        {"lat", v_m91i, "-91 int"},
        {"country", v_usa, "USA"},
        {"country", v_u1, "U1"},
        {"country", v_empty, "empty"},
        {"created_at", v_neg1, "-1"},
        {"created_at", v_2p53p1, "2^53+1"},
        {"niche", v_129, "129 bytes"},
        {"source", v_129, "129 bytes"},
        {"campaign", v_129, "129 bytes"},
        {"state", v_empty, "empty"},
        {"state", v_state9, "9 bytes"},
        {"state", v_state_bad, "space"},
        {"zip", v_empty, "empty"},
        {"zip", v_zip17, "17 bytes"},
        {"zip", v_zip_slash, "slash"},
        {"keywords", v_kw65, "65 entries"},
        {"keywords", v_kw_long, "65-byte entry"},
        {"signals", v_sig65, "65 entries"},
        {"signals", v_sig_nan, "NaN"},
        {"signals", v_sig_inf, "-inf"},
        {"signals", v_sig_emptykey, "empty key"},
        {"fields", v_fields129, "129 entries"},
        {"fields", v_fields_huge_uint, "uint above INT64_MAX"},
        {"fields", v_fields_long_str, "1025-byte string"},
        {"fields", v_fields_longkey, "65-byte key"},
        {"fields", v_fields_inf, "inf"},
    };
    run_cases(cases, sizeof(cases) / sizeof(cases[0]), "out_of_range");
}

Test(codec, lat_and_lon_go_together)
{
    struct pk k;
    lead_with(&k, "lat", v_int);
    expect_reject(&k, "out_of_range", "lat and lon");
    pk_done(&k);

    lead_with(&k, "lon", v_int);
    expect_reject(&k, "out_of_range", "lat and lon");
    pk_done(&k);
}

Test(codec, reasons_fit_and_survive_tiny_buffers)
{
    struct pk k;
    pack_full(&k);
    char small[8];
    memset(small, 'Z', sizeof(small));
    cr_expect_eq(codec_lead_decode(cl, k.sb.data, k.sb.size, 1, small, sizeof(small)), -1);
    cr_expect_str_eq(small, "too_lar");
    cr_expect_eq(codec_lead_decode(cl, k.sb.data, k.sb.size, 1, NULL, 0), -1);
    pk_done(&k);
}
