/* fuzz_csv.c - libFuzzer target: hostile bytes through leadctl import's
 * path, the CSV reader (csv_next), the header mapping (csvmap_new) and the
 * row packing (csvmap_pack) into the daemon's decoder.
 *
 * The first input byte picks the options (separator, small limits so they
 * are reached), the rest is the file. Beyond "no crash, no sanitizer
 * report", every record is checked against what csv.h promises: fields
 * NUL-terminated with no NUL inside, valid UTF-8, at most max_fields and
 * max_field bytes, the same column count as the header, start lines that
 * never go back; a refusal names one of the documented codes. A broken
 * promise aborts, so libFuzzer keeps the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "csv.h"
#include "leadrouter/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct codec_lead *fuzz_cl;

static void fuzz_fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_csv: contract broken: %s (%s)\n", what, detail ? detail : "");
    abort();
}

/* An independent UTF-8 check (RFC 3629), to compare the reader with. */
static int utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k + 1;
    }
    return 1;
}

static void check_reason(const char *err)
{
    static const char *const codes[] = {"invalid_utf8",       "nul_byte",       "bad_quote",
                                        "unterminated_quote", "field_too_long", "record_too_long",
                                        "too_many_columns",   "column_count"};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        size_t n = strlen(codes[i]);
        if (strncmp(err, codes[i], n) == 0 && err[n] == ':' && err[n + 1] == ' ' && err[n + 2])
            return;
    }
    fuzz_fail("refusal without a documented \"<code>: <detail>\" reason", err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!fuzz_cl && !(fuzz_cl = codec_lead_new()))
        abort();
    static const char seps[] = {',', ';', '\t', '|'};
    struct csv_opts o = {
        .sep = seps[data[0] & 3],
        .max_field = (data[0] & 4) ? 64 : 0,
        .max_record = (data[0] & 8) ? 256 : 0,
        .max_fields = (data[0] & 16) ? 8 : 0,
        .check_columns = true,
    };
    size_t max_field = o.max_field ? o.max_field : CSV_MAX_FIELD_DEFAULT;
    size_t max_fields = o.max_fields ? o.max_fields : CSV_MAX_FIELDS_DEFAULT;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    struct csv_reader *r = csv_reader_mem(in, len, &o);
    if (!r)
        abort();
    struct csvmap *m = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    size_t header_cols = 0;
    long last_line = 0;
    /* at most one record per input byte, and one more for the end */
    for (size_t guard = 0; guard <= len + 1; guard++) {
        struct csv_record rec;
        char err[256];
        int got = csv_next(r, &rec, err, sizeof err);
        if (got == CSV_END)
            break;
        if (got == CSV_FATAL)
            fuzz_fail("fatal error reading memory", err);
        if (rec.line < 1 || rec.line < last_line)
            fuzz_fail("record start lines go back", NULL);
        last_line = rec.line;
        if (got == CSV_BAD) {
            check_reason(err);
            continue;
        }
        if (got != CSV_RECORD)
            fuzz_fail("unknown return value", NULL);
        if (rec.n < 1 || rec.n > max_fields)
            fuzz_fail("field count out of bounds", NULL);
        for (size_t i = 0; i < rec.n; i++) {
            const struct csv_field *f = &rec.fields[i];
            if (f->len > max_field || strlen(f->p) != f->len)
                fuzz_fail("field too long or holding a NUL", NULL);
            if (!utf8_ok((const unsigned char *)f->p, f->len))
                fuzz_fail("invalid UTF-8 let through", NULL);
        }
        if (header_cols == 0) {
            header_cols = rec.n;
            char merr[512];
            const char *spec = "id=id,a=contact.x";
            if (csvmap_new(rec.fields, rec.n, &spec, (data[0] & 32) ? 1 : 0, &m, NULL, merr, sizeof merr) ==
                    0 &&
                csvmap_columns(m) != rec.n)
                fuzz_fail("mapping of another width than the header", NULL);
            continue;
        }
        if (rec.n != header_cols)
            fuzz_fail("a record with another column count than the header", NULL);
        if (!m)
            continue;
        int p = csvmap_pack(m, rec.fields, rec.n, &sb);
        if (p < 0)
            fuzz_fail("packing failed", NULL);
        if (p == 1) {
            char derr[256];
            /* whatever the row, the packed map is msgpack the decoder can
             * judge; only the reason's form is checked here */
            if (codec_lead_decode(fuzz_cl, sb.data, sb.size, 65536, derr, sizeof derr) != 0 &&
                !strchr(derr, ':'))
                fuzz_fail("decoder reason without a code", derr);
        }
    }
    csvmap_free(m);
    msgpack_sbuffer_destroy(&sb);
    csv_reader_free(r);
    return 0;
}
