/* fuzz_codec.c - libFuzzer target: hostile bytes through codec_lead_decode.
 *
 * Beyond "no crash, no sanitizer report", it checks the contract of codec.h
 * and SPEC section 2 on every input: a refusal names one of the documented
 * codes, and an accepted lead only holds values the SPEC allows. A broken
 * promise aborts, so libFuzzer keeps the input as a reproducer. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leadrouter/codec.h"
#include "leadrouter/lead.h"

#define FUZZ_MAX_BYTES 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One codec_lead for the whole run, as the daemon reuses one per batch slot:
 * state left over from earlier inputs is part of what gets fuzzed. */
static struct codec_lead *fuzz_cl;

/* Results land here so the compiler cannot drop the reads. */
static volatile uint64_t fuzz_sink;

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz_codec: contract broken: %s\n", what);
    abort();
}

/* Reads every byte of s (ASan checks each one lies in live memory), which
 * must be UTF-8. */
static uint64_t touch(struct lr_str s)
{
    uint64_t sum = s.len;
    if (s.len > 0 && s.p == NULL)
        fuzz_fail("string with a length but no bytes");
    for (uint32_t i = 0; i < s.len; i++)
        sum += (unsigned char)s.p[i];
    if (!lr_utf8_valid((const unsigned char *)s.p, s.len))
        fuzz_fail("an accepted lead holds a string that is not UTF-8");
    return sum;
}

static void check_error(const char *err)
{
    static const char *const codes[] = {
        "too_large",     "truncated",  "trailing_bytes", "too_complex", "malformed",    "not_a_map",
        "duplicate_key", "missing_id", "invalid_id",     "bad_type",    "out_of_range", "invalid_utf8",
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        size_t n = strlen(codes[i]);
        if (strncmp(err, codes[i], n) == 0 && err[n] == ':' && err[n + 1] == ' ' && err[n + 2] != '\0')
            return;
    }
    fprintf(stderr, "fuzz_codec: bad reason: \"%s\"\n", err);
    fuzz_fail("refusal without a documented \"<code>: <detail>\" reason");
}

/* SPEC section 2: an id is made of [A-Za-z0-9._:@-]. */
static int id_byte_ok(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c != 0 && strchr("._:@-", c) != NULL;
}

static void check_lead(const struct lead *l)
{
    uint64_t sum = 0;

    if (l->id.len < 1 || l->id.len > 128)
        fuzz_fail("id outside 1-128 bytes");
    for (uint32_t i = 0; i < l->id.len; i++)
        if (!id_byte_ok((unsigned char)l->id.p[i]))
            fuzz_fail("id holds a byte outside [A-Za-z0-9._:@-]");
    sum += touch(l->id) + touch(l->niche) + touch(l->source) + touch(l->campaign);
    sum += touch(l->country) + touch(l->state) + touch(l->zip);
    sum += touch(l->phone) + touch(l->email);
    if (l->country.len != 0 && l->country.len != 2)
        fuzz_fail("country not 2 letters");

    for (uint32_t i = 0; i < l->n_keywords; i++)
        sum += touch(l->keywords[i]);
    for (uint32_t i = 0; i < l->n_signals; i++) {
        sum += touch(l->signals[i].key);
        if (!isfinite(l->signals[i].v))
            fuzz_fail("signal value not finite");
    }
    for (uint32_t i = 0; i < l->n_fields; i++) {
        const struct lead_field *f = &l->fields[i];
        sum += touch(f->key);
        switch (f->v.type) {
        case LEAD_V_NIL:
            break;
        case LEAD_V_BOOL:
            sum += f->v.b;
            break;
        case LEAD_V_INT:
            sum += (uint64_t)f->v.i;
            break;
        case LEAD_V_FLOAT:
            if (!isfinite(f->v.f))
                fuzz_fail("field number not finite");
            break;
        case LEAD_V_STR:
            sum += touch(f->v.s);
            break;
        default:
            fuzz_fail("field value of unknown type");
        }
        /* Keys are unique, so the lookup filters use finds this very entry. */
        if (lead_field_get(l, f->key.p, f->key.len) != f)
            fuzz_fail("lead_field_get does not find a field's own key");
    }

    if (l->has_score && (l->score < 0 || l->score > 100))
        fuzz_fail("score outside 0-100");
    if (l->has_geo && !(fabs(l->lat) <= 90.0 && fabs(l->lon) <= 180.0))
        fuzz_fail("coordinates out of range");
    if (l->has_created_at && l->created_at < 0)
        fuzz_fail("negative created_at");
    sum += (uint64_t)l->score + (uint64_t)l->created_at;
    fuzz_sink = sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_cl == NULL && (fuzz_cl = codec_lead_new()) == NULL)
        fuzz_fail("codec_lead_new failed");

    char err[256] = "";
    if (codec_lead_decode(fuzz_cl, (const char *)data, size, FUZZ_MAX_BYTES, err, sizeof err) < 0) {
        check_error(err);
        return 0;
    }
    check_lead(codec_lead_get(fuzz_cl));
    return 0;
}
