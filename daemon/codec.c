/* codec.c - msgpack payload -> validated struct lead (SPEC section 2).
 *
 * A decode runs in three steps:
 *  1. a structural scan of the raw bytes (scan_payload) that rejects
 *     truncated, malformed, too deep and trailing input and works out exactly
 *     how much zone memory msgpack-c will need;
 *  2. msgpack_unpack into a zone owned by the codec_lead, cleared and reused
 *     across decodes;
 *  3. validation of the object tree into struct lead.
 *
 * The scan exists because msgpack-c allocates a container's slots as soon as
 * it reads the header: a 5-byte payload claiming 2^32-1 map entries asks
 * malloc for ~200 GB, and one claiming 2^20 entries really gets 48 MB. The
 * scan allocates nothing, and msgpack-c only sees payloads the scan walked to
 * the end, where every claimed entry is present: the zone then needs at most
 * ~32 bytes per payload byte. The scan also knows that need exactly, so the
 * zone is sized once and reused: no malloc per lead once it has grown.
 */
#include "leadrouter/codec.h"

#include <math.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

/* Limits of SPEC section 2 (and of this codec where the SPEC is silent). */
#define CODEC_MAX_DEPTH 32 /* msgpack-c's MSGPACK_EMBED_STACK_SIZE */
#define CODEC_ID_MAX 128
#define CODEC_TEXT_MAX 128 /* niche, source, campaign */
#define CODEC_MAX_KEYWORDS 64
#define CODEC_KEYWORD_MAX 64
#define CODEC_MAX_SIGNALS 64
#define CODEC_SIGNAL_KEY_MAX 64
#define CODEC_MAX_FIELDS 128
#define CODEC_FIELD_KEY_MAX 64
#define CODEC_FIELD_STR_MAX 1024
#define CODEC_MAX_CONTACT 64
#define CODEC_STATE_MAX 8
#define CODEC_ZIP_MAX 16
#define CODEC_CREATED_AT_MAX (UINT64_C(1) << 53)
#define CODEC_ZONE_MIN 8192

struct codec_lead {
    struct lead lead;  /* result; points into buf and the arrays below */
    char *buf;         /* copy of the payload (owned) */
    size_t buf_cap;    /* bytes allocated at buf */
    msgpack_zone zone; /* object tree of the last decode (owned) */
    bool zone_ok;      /* zone is initialised */
    struct lr_str keywords[CODEC_MAX_KEYWORDS];
    struct lead_signal signals[CODEC_MAX_SIGNALS];
    struct lead_field fields[CODEC_MAX_FIELDS];
    char phone_digits[24]; /* contact.phone given as an integer, as digits */
};

/* The top-level keys the codec knows; bit i of the "seen" mask is key i. */
enum codec_key {
    K_ID,
    K_NICHE,
    K_SOURCE,
    K_CAMPAIGN,
    K_KEYWORDS,
    K_SCORE,
    K_SIGNALS,
    K_COUNTRY,
    K_STATE,
    K_ZIP,
    K_LAT,
    K_LON,
    K_CREATED_AT,
    K_CONTACT,
    K_FIELDS,
    K_COUNT
};

static const char *const codec_key_names[K_COUNT] = {
    "id",    "niche", "source", "campaign", "keywords",   "score",   "signals", "country",
    "state", "zip",   "lat",    "lon",      "created_at", "contact", "fields",
};

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

struct codec_lead *codec_lead_new(void)
{
    struct codec_lead *cl = calloc(1, sizeof(*cl));
    if (!cl)
        return NULL;
    if (!msgpack_zone_init(&cl->zone, CODEC_ZONE_MIN)) {
        free(cl);
        return NULL;
    }
    cl->zone_ok = true;
    return cl;
}

void codec_lead_free(struct codec_lead *cl)
{
    if (!cl)
        return;
    if (cl->zone_ok)
        msgpack_zone_destroy(&cl->zone);
    free(cl->buf);
    free(cl);
}

const struct lead *codec_lead_get(const struct codec_lead *cl)
{
    return &cl->lead;
}

/* ---- step 1: structural scan ---------------------------------------- */

static uint64_t rd_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Layout of the type bytes 0xc0-0xdf (the others are fixed-format). */
enum mp_kind { MP_BAD, MP_FIXED, MP_BYTES, MP_ARRAY, MP_MAP };
struct mp_layout {
    uint8_t kind;  /* enum mp_kind */
    uint8_t hdr;   /* length-field bytes after the type byte */
    uint8_t fixed; /* MP_FIXED: bytes after the type byte; MP_BYTES: bytes
                    * beyond the length (the ext type byte) */
};
static const struct mp_layout mp_layouts[32] = {
    [0x00] = {MP_FIXED, 0, 0},  /* nil */
    [0x01] = {MP_BAD, 0, 0},    /* never used */
    [0x02] = {MP_FIXED, 0, 0},  /* false */
    [0x03] = {MP_FIXED, 0, 0},  /* true */
    [0x04] = {MP_BYTES, 1, 0},  /* bin 8 */
    [0x05] = {MP_BYTES, 2, 0},  /* bin 16 */
    [0x06] = {MP_BYTES, 4, 0},  /* bin 32 */
    [0x07] = {MP_BYTES, 1, 1},  /* ext 8 */
    [0x08] = {MP_BYTES, 2, 1},  /* ext 16 */
    [0x09] = {MP_BYTES, 4, 1},  /* ext 32 */
    [0x0a] = {MP_FIXED, 0, 4},  /* float 32 */
    [0x0b] = {MP_FIXED, 0, 8},  /* float 64 */
    [0x0c] = {MP_FIXED, 0, 1},  /* uint 8 */
    [0x0d] = {MP_FIXED, 0, 2},  /* uint 16 */
    [0x0e] = {MP_FIXED, 0, 4},  /* uint 32 */
    [0x0f] = {MP_FIXED, 0, 8},  /* uint 64 */
    [0x10] = {MP_FIXED, 0, 1},  /* int 8 */
    [0x11] = {MP_FIXED, 0, 2},  /* int 16 */
    [0x12] = {MP_FIXED, 0, 4},  /* int 32 */
    [0x13] = {MP_FIXED, 0, 8},  /* int 64 */
    [0x14] = {MP_FIXED, 0, 2},  /* fixext 1 (type byte + data) */
    [0x15] = {MP_FIXED, 0, 3},  /* fixext 2 */
    [0x16] = {MP_FIXED, 0, 5},  /* fixext 4 */
    [0x17] = {MP_FIXED, 0, 9},  /* fixext 8 */
    [0x18] = {MP_FIXED, 0, 17}, /* fixext 16 */
    [0x19] = {MP_BYTES, 1, 0},  /* str 8 */
    [0x1a] = {MP_BYTES, 2, 0},  /* str 16 */
    [0x1b] = {MP_BYTES, 4, 0},  /* str 32 */
    [0x1c] = {MP_ARRAY, 2, 0},  /* array 16 */
    [0x1d] = {MP_ARRAY, 4, 0},  /* array 32 */
    [0x1e] = {MP_MAP, 2, 0},    /* map 16 */
    [0x1f] = {MP_MAP, 4, 0},    /* map 32 */
};

/* Walks the payload's objects without building them. Returns 0 when it holds
 * exactly one complete object of at most CODEC_MAX_DEPTH nested containers,
 * with *zone_need set to an upper bound of the zone bytes msgpack-c will
 * allocate for it; else -1 with the reason, the one msgpack-c would give
 * (checks come in the same order), except that a container claiming more
 * entries than max_bytes could hold is too_complex straight away, where
 * msgpack-c would first try to allocate them. */
static int scan_payload(const unsigned char *p, size_t len, size_t max_bytes, size_t *zone_need, char *err,
                        size_t errlen)
{
    uint64_t left[CODEC_MAX_DEPTH]; /* objects still due in each open container */
    unsigned top = 0;
    size_t pos = 0;
    uint64_t need = 0;
    bool bad_utf8 = false; /* reported once the structure is known good */

    for (;;) {
        if (pos >= len)
            return fail(err, errlen, "truncated: payload ends inside an object");
        unsigned char b = p[pos++];
        struct mp_layout lay = {MP_FIXED, 0, 0}; /* fixint */
        uint64_t n = 0;                          /* container entries or byte length */

        if (b >= 0x80 && b <= 0x8f) {
            lay.kind = MP_MAP;
            n = b & 0x0f;
        } else if (b >= 0x90 && b <= 0x9f) {
            lay.kind = MP_ARRAY;
            n = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            lay.kind = MP_BYTES;
            n = b & 0x1f;
        } else if (b >= 0xc0 && b <= 0xdf) {
            lay = mp_layouts[b - 0xc0];
        }
        if (lay.kind == MP_BAD)
            return fail(err, errlen, "malformed: invalid msgpack type byte");
        if (lay.hdr) {
            if (len - pos < lay.hdr)
                return fail(err, errlen, "truncated: payload ends inside an object");
            n = rd_be(p + pos, lay.hdr);
            pos += lay.hdr;
        }

        if (lay.kind == MP_ARRAY || lay.kind == MP_MAP) {
            if (top >= CODEC_MAX_DEPTH)
                return fail(err, errlen, "too_complex: nested deeper than %d levels", CODEC_MAX_DEPTH);
            bool map = lay.kind == MP_MAP;
            uint64_t objs = map ? 2 * n : n; /* n < 2^32: no overflow */
            if (objs > max_bytes)
                return fail(err, errlen,
                            "too_complex: a container claims more entries than a payload may hold");
            /* need only counts if the scan succeeds, that is if every
             * claimed entry was there (a byte at least each): it then stays
             * within ~32 bytes per payload byte. The last term covers the
             * zone's alignment padding. */
            need += n * (map ? sizeof(msgpack_object_kv) : sizeof(msgpack_object)) + MSGPACK_ZONE_ALIGN;
            if (objs > 0) {
                left[top++] = objs;
                continue;
            }
        } else {
            uint64_t skip = lay.kind == MP_BYTES ? n + lay.fixed : lay.fixed;
            if (skip > len - pos)
                return fail(err, errlen, "truncated: payload ends inside an object");
            /* A str (not a bin) must be UTF-8: dealers' decoders raise on
             * anything else. */
            bool str = (b >= 0xa0 && b <= 0xbf) || (b >= 0xd9 && b <= 0xdb);
            if (str && !bad_utf8 && !lr_utf8_valid(p + pos, (size_t)skip))
                bad_utf8 = true;
            pos += (size_t)skip;
        }

        /* One object is complete: it may complete its containers too. */
        while (top > 0 && --left[top - 1] == 0)
            top--;
        if (top == 0)
            break;
    }
    if (pos < len)
        return fail(err, errlen, "trailing_bytes: %zu bytes after the first object", len - pos);
    if (need > SIZE_MAX)
        return fail(err, errlen, "too_complex: too many objects");
    if (bad_utf8)
        return fail(err, errlen, "invalid_utf8: a string (key or value) is not valid UTF-8 (send bytes as bin)");
    *zone_need = (size_t)need;
    return 0;
}

/* ---- step 3: validation ---------------------------------------------- */

static bool is_num(const msgpack_object *o)
{
    return o->type == MSGPACK_OBJECT_POSITIVE_INTEGER || o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
           o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64;
}

/* A number object as a double (is_num must hold). */
static double num_val(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return (double)o->via.u64;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return (double)o->via.i64;
    default:
        return o->via.f64;
    }
}

static struct lr_str to_str(const msgpack_object *o)
{
    struct lr_str s = {o->via.str.ptr, o->via.str.size};
    return s;
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* True when every byte of s is alphanumeric ASCII or in extra. */
static bool chars_ok(struct lr_str s, const char *extra)
{
    for (uint32_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (is_alpha((char)c) || (c >= '0' && c <= '9'))
            continue;
        if (c == 0 || !strchr(extra, c))
            return false;
    }
    return true;
}

static bool same_key(struct lr_str a, struct lr_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static int set_text(struct lr_str *dst, const char *key, const msgpack_object *v, char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(err, errlen, "bad_type: %s must be a string", key);
    if (v->via.str.size > CODEC_TEXT_MAX)
        return fail(err, errlen, "out_of_range: %s must be at most %d bytes", key, CODEC_TEXT_MAX);
    *dst = to_str(v);
    return 0;
}

static int set_id(struct lead *l, const msgpack_object *v, char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(err, errlen, "invalid_id: id must be a string");
    struct lr_str s = to_str(v);
    if (s.len < 1 || s.len > CODEC_ID_MAX)
        return fail(err, errlen, "invalid_id: id must be 1-%d bytes", CODEC_ID_MAX);
    if (!chars_ok(s, "._:@-"))
        return fail(err, errlen, "invalid_id: id may only hold [A-Za-z0-9._:@-]");
    l->id = s;
    return 0;
}

static int set_keywords(struct codec_lead *cl, const msgpack_object *v, char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(err, errlen, "bad_type: keywords must be an array of strings");
    if (v->via.array.size > CODEC_MAX_KEYWORDS)
        return fail(err, errlen, "out_of_range: keywords may hold at most %d entries", CODEC_MAX_KEYWORDS);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: keywords must be an array of strings");
        if (e->via.str.size > CODEC_KEYWORD_MAX)
            return fail(err, errlen, "out_of_range: keywords entries must be at most %d bytes",
                        CODEC_KEYWORD_MAX);
        cl->keywords[i] = to_str(e);
    }
    cl->lead.keywords = cl->keywords;
    cl->lead.n_keywords = v->via.array.size;
    return 0;
}

static int set_signals(struct codec_lead *cl, const msgpack_object *v, char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(err, errlen, "bad_type: signals must be a map of string to number");
    if (v->via.map.size > CODEC_MAX_SIGNALS)
        return fail(err, errlen, "out_of_range: signals may hold at most %d entries", CODEC_MAX_SIGNALS);
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: signals keys must be strings");
        struct lr_str k = to_str(&kv->key);
        if (k.len < 1 || k.len > CODEC_SIGNAL_KEY_MAX)
            return fail(err, errlen, "out_of_range: signals keys must be 1-%d bytes", CODEC_SIGNAL_KEY_MAX);
        if (!is_num(&kv->val))
            return fail(err, errlen, "bad_type: signals values must be numbers");
        double d = num_val(&kv->val);
        if (!isfinite(d))
            return fail(err, errlen, "out_of_range: signals values must be finite");
        /* A repeated name would make the score depend on which copy wins. */
        for (uint32_t j = 0; j < i; j++)
            if (same_key(cl->signals[j].key, k))
                return fail(err, errlen, "duplicate_key: signals holds a key twice");
        cl->signals[i].key = k;
        cl->signals[i].v = d;
    }
    cl->lead.signals = cl->signals;
    cl->lead.n_signals = v->via.map.size;
    return 0;
}

static int set_field_value(struct lead_value *dst, const msgpack_object *v, char *err, size_t errlen)
{
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        dst->type = LEAD_V_NIL;
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        dst->type = LEAD_V_BOOL;
        dst->b = v->via.boolean;
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (v->via.u64 > (uint64_t)INT64_MAX)
            return fail(err, errlen, "out_of_range: fields integers must fit in 64-bit signed");
        dst->type = LEAD_V_INT;
        dst->i = (int64_t)v->via.u64;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        dst->type = LEAD_V_INT;
        dst->i = v->via.i64;
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        /* NaN would make every filter comparison quietly false. */
        if (!isfinite(v->via.f64))
            return fail(err, errlen, "out_of_range: fields numbers must be finite");
        dst->type = LEAD_V_FLOAT;
        dst->f = v->via.f64;
        return 0;
    case MSGPACK_OBJECT_STR:
        if (v->via.str.size > CODEC_FIELD_STR_MAX)
            return fail(err, errlen, "out_of_range: fields strings must be at most %d bytes",
                        CODEC_FIELD_STR_MAX);
        dst->type = LEAD_V_STR;
        dst->s = to_str(v);
        return 0;
    default:
        return fail(err, errlen, "bad_type: fields values must be nil, bool, int, float or string");
    }
}

static int set_fields(struct codec_lead *cl, const msgpack_object *v, char *err, size_t errlen)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(err, errlen, "bad_type: fields must be a map");
    if (v->via.map.size > CODEC_MAX_FIELDS)
        return fail(err, errlen, "out_of_range: fields may hold at most %d entries", CODEC_MAX_FIELDS);
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: fields keys must be strings");
        struct lr_str k = to_str(&kv->key);
        if (k.len < 1 || k.len > CODEC_FIELD_KEY_MAX)
            return fail(err, errlen, "out_of_range: fields keys must be 1-%d bytes", CODEC_FIELD_KEY_MAX);
        if (set_field_value(&cl->fields[i].v, &kv->val, err, errlen) < 0)
            return -1;
        /* lead_field_get returns the first match; a second copy would be
         * invisible to filters, so refuse the ambiguity. */
        for (uint32_t j = 0; j < i; j++)
            if (same_key(cl->fields[j].key, k))
                return fail(err, errlen, "duplicate_key: fields holds a key twice");
        cl->fields[i].key = k;
    }
    cl->lead.fields = cl->fields;
    cl->lead.n_fields = v->via.map.size;
    return 0;
}

static int set_contact(struct codec_lead *cl, const msgpack_object *v, char *err, size_t errlen)
{
    struct lead *l = &cl->lead;
    if (v->type != MSGPACK_OBJECT_MAP)
        return fail(err, errlen, "bad_type: contact must be a map");
    /* Opaque apart from the dedup keys (a phone may also be a non-negative
     * integer: its digits, SPEC 5). A key given twice is refused: we would
     * check one value while a dealer's decoder keeps the other. */
    if (v->via.map.size > CODEC_MAX_CONTACT)
        return fail(err, errlen, "out_of_range: contact may hold at most %d entries", CODEC_MAX_CONTACT);
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object_kv *kv = &v->via.map.ptr[i];
        for (uint32_t j = 0; j < i; j++)
            if (msgpack_object_equal(v->via.map.ptr[j].key, kv->key))
                return fail(err, errlen, "duplicate_key: contact holds a key twice");
        if (kv->key.type != MSGPACK_OBJECT_STR)
            continue;
        struct lr_str k = to_str(&kv->key);
        if (l->phone.p == NULL && kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER && lr_str_eq(k, "phone")) {
            int n = snprintf(cl->phone_digits, sizeof cl->phone_digits, "%" PRIu64, kv->val.via.u64);
            l->phone = (struct lr_str){cl->phone_digits, (uint32_t)n};
            continue;
        }
        if (kv->val.type != MSGPACK_OBJECT_STR)
            continue;
        if (l->phone.p == NULL && lr_str_eq(k, "phone"))
            l->phone = to_str(&kv->val);
        else if (l->email.p == NULL && lr_str_eq(k, "email"))
            l->email = to_str(&kv->val);
    }
    return 0;
}

static int set_coord(double *dst, const char *key, double limit, const msgpack_object *v, char *err,
                     size_t errlen)
{
    if (!is_num(v))
        return fail(err, errlen, "bad_type: %s must be a number", key);
    double d = num_val(v);
    if (!isfinite(d) || d < -limit || d > limit)
        return fail(err, errlen, "out_of_range: %s must be within [-%g, %g]", key, limit, limit);
    *dst = d;
    return 0;
}

static int set_known(struct codec_lead *cl, enum codec_key k, const msgpack_object *v, char *err,
                     size_t errlen)
{
    struct lead *l = &cl->lead;

    switch (k) {
    case K_ID:
        return set_id(l, v, err, errlen);
    case K_NICHE:
        return set_text(&l->niche, "niche", v, err, errlen);
    case K_SOURCE:
        return set_text(&l->source, "source", v, err, errlen);
    case K_CAMPAIGN:
        return set_text(&l->campaign, "campaign", v, err, errlen);
    case K_KEYWORDS:
        return set_keywords(cl, v, err, errlen);
    case K_SIGNALS:
        return set_signals(cl, v, err, errlen);
    case K_FIELDS:
        return set_fields(cl, v, err, errlen);
    case K_CONTACT:
        return set_contact(cl, v, err, errlen);
    case K_LAT:
        return set_coord(&l->lat, "lat", 90.0, v, err, errlen);
    case K_LON:
        return set_coord(&l->lon, "lon", 180.0, v, err, errlen);
    case K_SCORE:
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return fail(err, errlen, "out_of_range: score must be 0-100");
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fail(err, errlen, "bad_type: score must be an integer");
        if (v->via.u64 > 100)
            return fail(err, errlen, "out_of_range: score must be 0-100");
        l->score = (int)v->via.u64;
        l->has_score = true;
        return 0;
    case K_CREATED_AT:
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return fail(err, errlen, "out_of_range: created_at must be 0-2^53 (unix ms)");
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fail(err, errlen, "bad_type: created_at must be an integer (unix ms)");
        if (v->via.u64 > CODEC_CREATED_AT_MAX)
            return fail(err, errlen, "out_of_range: created_at must be 0-2^53 (unix ms)");
        l->created_at = (int64_t)v->via.u64;
        l->has_created_at = true;
        return 0;
    case K_COUNTRY:
        if (v->type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: country must be a string");
        if (v->via.str.size != 2 || !is_alpha(v->via.str.ptr[0]) || !is_alpha(v->via.str.ptr[1]))
            return fail(err, errlen, "out_of_range: country must be 2 ASCII letters (ISO 3166-1 alpha-2)");
        l->country = to_str(v);
        return 0;
    case K_STATE:
        if (v->type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: state must be a string");
        if (v->via.str.size < 1 || v->via.str.size > CODEC_STATE_MAX || !chars_ok(to_str(v), "-"))
            return fail(err, errlen, "out_of_range: state must be 1-%d bytes of [A-Za-z0-9-]",
                        CODEC_STATE_MAX);
        l->state = to_str(v);
        return 0;
    case K_ZIP:
        if (v->type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: zip must be a string");
        if (v->via.str.size < 1 || v->via.str.size > CODEC_ZIP_MAX || !chars_ok(to_str(v), " -"))
            return fail(err, errlen, "out_of_range: zip must be 1-%d bytes of [A-Za-z0-9 -]", CODEC_ZIP_MAX);
        l->zip = to_str(v);
        return 0;
    case K_COUNT:
        break;
    }
    return 0;
}

/* The known key named by s, or K_COUNT. */
static enum codec_key lookup_key(struct lr_str s)
{
    for (int i = 0; i < K_COUNT; i++)
        if (lr_str_eq(s, codec_key_names[i]))
            return (enum codec_key)i;
    return K_COUNT;
}

static int validate(struct codec_lead *cl, const msgpack_object *root, char *err, size_t errlen)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(err, errlen, "not_a_map: a lead must be a msgpack map");

    uint32_t seen = 0;
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, "bad_type: map keys must be strings");
        enum codec_key k = lookup_key(to_str(&kv->key));
        if (k == K_COUNT)
            continue; /* unknown keys travel on in the raw payload */
        if (seen & (UINT32_C(1) << k))
            return fail(err, errlen, "duplicate_key: %s", codec_key_names[k]);
        seen |= UINT32_C(1) << k;
        if (set_known(cl, k, &kv->val, err, errlen) < 0)
            return -1;
    }

    if (!(seen & (UINT32_C(1) << K_ID)))
        return fail(err, errlen, "missing_id: id is required");
    bool has_lat = seen & (UINT32_C(1) << K_LAT), has_lon = seen & (UINT32_C(1) << K_LON);
    if (has_lat != has_lon)
        return fail(err, errlen, "out_of_range: lat and lon must be given together");
    cl->lead.has_geo = has_lat && has_lon;
    return 0;
}

/* ---- the decode ----------------------------------------------------- */

/* Makes the zone's first chunk hold need bytes, so msgpack-c never has to
 * add a chunk (msgpack_zone_clear frees added chunks: they'd be malloc'd
 * again on every decode). */
static int zone_reserve(struct codec_lead *cl, size_t need)
{
    if (cl->zone_ok && cl->zone.chunk_size >= need) {
        msgpack_zone_clear(&cl->zone);
        return 0;
    }
    size_t sz = cl->zone_ok ? cl->zone.chunk_size : CODEC_ZONE_MIN;
    while (sz < need)
        sz *= 2;
    if (cl->zone_ok)
        msgpack_zone_destroy(&cl->zone);
    cl->zone_ok = msgpack_zone_init(&cl->zone, sz);
    return cl->zone_ok ? 0 : -1;
}

static int buf_reserve(struct codec_lead *cl, size_t len)
{
    if (cl->buf_cap >= len)
        return 0;
    size_t sz = cl->buf_cap ? cl->buf_cap : 1024;
    while (sz < len)
        sz *= 2;
    char *nb = realloc(cl->buf, sz);
    if (!nb)
        return -1;
    cl->buf = nb;
    cl->buf_cap = sz;
    return 0;
}

int codec_lead_decode(struct codec_lead *cl, const char *buf, size_t len, size_t max_bytes, char *err,
                      size_t errlen)
{
    /* Whatever happens, the previous lead is gone: its memory is reused. */
    memset(&cl->lead, 0, sizeof(cl->lead));

    if (len > max_bytes)
        return fail(err, errlen, "too_large: payload is %zu bytes, limit %zu", len, max_bytes);
    if (len == 0)
        return fail(err, errlen, "truncated: empty payload");

    size_t need = 0;
    if (scan_payload((const unsigned char *)buf, len, max_bytes, &need, err, errlen) < 0)
        return -1;

    if (buf_reserve(cl, len) < 0 || zone_reserve(cl, need) < 0)
        return fail(err, errlen, "too_complex: out of memory decoding %zu bytes", len);
    memcpy(cl->buf, buf, len);

    msgpack_object root;
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack(cl->buf, len, &off, &cl->zone, &root);
    /* The scan accepted the payload, so only SUCCESS is expected here; the
     * mapping stays in case msgpack-c is stricter than the scan. */
    switch (r) {
    case MSGPACK_UNPACK_SUCCESS:
        break;
    case MSGPACK_UNPACK_EXTRA_BYTES:
        return fail(err, errlen, "trailing_bytes: bytes after the first object");
    case MSGPACK_UNPACK_CONTINUE:
        return fail(err, errlen, "truncated: payload ends inside an object");
    case MSGPACK_UNPACK_NOMEM_ERROR:
        return fail(err, errlen, "too_complex: nested too deep or too large");
    default:
        return fail(err, errlen, "malformed: not valid msgpack");
    }

    if (validate(cl, &root, err, errlen) < 0) {
        memset(&cl->lead, 0, sizeof(cl->lead));
        return -1;
    }
    return 0;
}
