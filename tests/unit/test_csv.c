/* test_csv.c - the streaming CSV reader (tools/leadctl/csv.c): every RFC
 * 4180 and spreadsheet quirk leadctl import meets, the line each record
 * starts on, bad records skipped without losing the next one, the limits,
 * and the field writer export uses. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "csv.h"

/* Reads all of in[0..len) and describes what came out, one line per
 * record: "LINE:f1|f2|f3" or "LINE:!code" for a bad one (the code before
 * ':' of the reason). Line ends inside fields show as \n and \r. */
static char *run_opts(const char *in, size_t len, const struct csv_opts *o, char *errs, size_t errs_len)
{
    struct csv_reader *r = csv_reader_mem(in, len, o);
    cr_assert_not_null(r);
    size_t cap = 4096, n = 0;
    char *out = calloc(1, cap);
    if (errs_len)
        errs[0] = 0;
    for (int guard = 0; guard < 10000; guard++) {
        struct csv_record rec;
        char err[256];
        int got = csv_next(r, &rec, err, sizeof err);
        cr_assert_neq(got, CSV_FATAL, "fatal: %s", err);
        if (got == CSV_END)
            break;
        char line[2048];
        size_t l = (size_t)snprintf(line, sizeof line, "%ld:", rec.line);
        if (got == CSV_BAD) {
            cr_assert_eq(rec.n, 0);
            size_t code = strcspn(err, ":");
            l += (size_t)snprintf(line + l, sizeof line - l, "!%.*s", (int)code, err);
            if (errs_len) {
                strncat(errs, err, errs_len - strlen(errs) - 2);
                strcat(errs, "\n");
            }
        } else {
            for (size_t i = 0; i < rec.n; i++) {
                cr_assert_eq(strlen(rec.fields[i].p), rec.fields[i].len, "field not NUL-terminated");
                if (i)
                    line[l++] = '|';
                for (size_t k = 0; k < rec.fields[i].len && l + 4 < sizeof line; k++) {
                    char c = rec.fields[i].p[k];
                    if (c == '\n' || c == '\r') {
                        line[l++] = '\\';
                        line[l++] = c == '\n' ? 'n' : 'r';
                    } else {
                        line[l++] = c;
                    }
                }
            }
            line[l] = 0;
        }
        while (n + l + 2 > cap) {
            cap *= 2;
            out = realloc(out, cap);
        }
        memcpy(out + n, line, l);
        n += l;
        out[n++] = '\n';
        out[n] = 0;
    }
    csv_reader_free(r);
    return out;
}

static char *run(const char *in)
{
    struct csv_opts o = {.check_columns = true};
    return run_opts(in, strlen(in), &o, NULL, 0);
}

#define EXPECT(in, want)                                                                                     \
    do {                                                                                                     \
        char *got_ = run(in);                                                                                \
        cr_assert_str_eq(got_, want);                                                                        \
        free(got_);                                                                                          \
    } while (0)

Test(csv, plain_records_and_their_lines)
{
    EXPECT("id,state\nL1,IA\nL2,NE\n", "1:id|state\n2:L1|IA\n3:L2|NE\n");
}

Test(csv, quoted_separator)
{
    EXPECT("a,b,c\nx,\"12 Main St, Apt 4\",y\n", "1:a|b|c\n2:x|12 Main St, Apt 4|y\n");
}

Test(csv, doubled_quotes)
{
    EXPECT("a,b\n\"He said \"\"hi\"\"\",\"\"\"\"\n", "1:a|b\n2:He said \"hi\"|\"\n");
    /* an empty quoted field */
    EXPECT("a,b\n\"\",x\n", "1:a|b\n2:|x\n");
}

Test(csv, quoted_newlines_keep_the_start_line)
{
    /* The record of line 2 spans lines 2-4; the next one starts on line 5. */
    EXPECT("id,notes\nL1,\"first\nsecond\nthird\"\nL2,x\n",
           "1:id|notes\n2:L1|first\\nsecond\\nthird\n5:L2|x\n");
    /* A CRLF inside quotes is data, kept as it is; it still counts as one line. */
    EXPECT("id,notes\r\nL1,\"a\r\nb\"\r\nL2,x\r\n", "1:id|notes\n2:L1|a\\r\\nb\n4:L2|x\n");
}

Test(csv, crlf_lf_and_cr_line_ends)
{
    EXPECT("a,b\r\n1,2\r\n3,4\r\n", "1:a|b\n2:1|2\n3:3|4\n");
    EXPECT("a,b\n1,2\r\n3,4\n", "1:a|b\n2:1|2\n3:3|4\n");
    /* old Mac files: a lone CR */
    EXPECT("a,b\r1,2\r3,4", "1:a|b\n2:1|2\n3:3|4\n");
}

Test(csv, utf8_bom_is_not_data)
{
    EXPECT("\xef\xbb\xbfid,name\nL1,Zo\xc3\xab\n", "1:id|name\n2:L1|Zo\xc3\xab\n");
    EXPECT("\xef\xbb\xbf", "");
    /* only at the start: later, U+FEFF is an ordinary (valid) character */
    EXPECT("id\n\xef\xbb\xbfx\n", "1:id\n2:\xef\xbb\xbfx\n");
}

Test(csv, semicolon_and_tab_separators)
{
    struct csv_opts o = {.sep = ';', .check_columns = true};
    const char *in = "id;city\nL1;\"Saint-Jean; QC\"\nL2;a,b\n";
    char *got = run_opts(in, strlen(in), &o, NULL, 0);
    cr_assert_str_eq(got, "1:id|city\n2:L1|Saint-Jean; QC\n3:L2|a,b\n");
    free(got);
    o.sep = '\t';
    in = "id\tcity\nL1\tDes Moines, IA\n";
    got = run_opts(in, strlen(in), &o, NULL, 0);
    cr_assert_str_eq(got, "1:id|city\n2:L1|Des Moines, IA\n");
    free(got);
    cr_assert_eq(csv_sep_parse(";"), ';');
    cr_assert_eq(csv_sep_parse("tab"), '\t');
    cr_assert_eq(csv_sep_parse(","), ',');
    cr_assert_eq(csv_sep_parse("\""), 0);
    cr_assert_eq(csv_sep_parse("ab"), 0);
    struct csv_opts bad = {.sep = '"'};
    cr_assert_null(csv_reader_mem("", 0, &bad));
}

Test(csv, accents_and_every_utf8_length_are_fine)
{
    EXPECT("name\nJos\xc3\xa9 Garc\xc3\xad"
           "a\n\xe6\x97\xa5\xe6\x9c\xac\n\xf0\x9f\x98\x80\n",
           "1:name\n2:Jos\xc3\xa9 Garc\xc3\xad"
           "a\n3:\xe6\x97\xa5\xe6\x9c\xac\n4:\xf0\x9f\x98\x80\n");
}

Test(csv, invalid_utf8_names_its_line_and_the_next_record_survives)
{
    struct csv_opts o = {.check_columns = true};
    char errs[1024];
    const char *in = "id,name\nL1,ok\nL2,caf\xe9\nL3,fine\n"; /* Latin-1 é */
    char *got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:id|name\n2:L1|ok\n3:!invalid_utf8\n4:L3|fine\n");
    cr_assert(strstr(errs, "line 3"), "%s", errs);
    free(got);

    /* Inside a quoted field that started on line 2, the bad byte is on line
     * 4: the record says 2, the reason says 4. */
    in = "id,notes\nL1,\"a\nb\nc\xc3(\"\nL2,x\n";
    got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:id|notes\n2:!invalid_utf8\n5:L2|x\n");
    cr_assert(strstr(errs, "line 4"), "%s", errs);
    free(got);
}

Test(csv, invalid_utf8_kinds)
{
    EXPECT("v\n\xc0\xaf\n", "1:v\n2:!invalid_utf8\n");         /* overlong '/' */
    EXPECT("v\n\xed\xa0\x80\n", "1:v\n2:!invalid_utf8\n");     /* a UTF-16 surrogate */
    EXPECT("v\n\xf4\x90\x80\x80\n", "1:v\n2:!invalid_utf8\n"); /* past U+10FFFF */
    EXPECT("v\n\x80x\n", "1:v\n2:!invalid_utf8\n");            /* a stray continuation byte */
    EXPECT("v\n\xe2\x82\n", "1:v\n2:!invalid_utf8\n");         /* cut short by the line end */
    EXPECT("v\nok\n\xe2\x82", "1:v\n2:ok\n3:!invalid_utf8\n"); /* cut short by the end of input */
    EXPECT("v\n\xff\n", "1:v\n2:!invalid_utf8\n");
}

Test(csv, wrong_column_count)
{
    struct csv_opts o = {.check_columns = true};
    char errs[1024];
    const char *in = "a,b,c\n1,2\n1,2,3,4\n5,6,7\n";
    char *got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:a|b|c\n2:!column_count\n3:!column_count\n4:5|6|7\n");
    cr_assert(strstr(errs, "2 columns, the header has 3"), "%s", errs);
    free(got);
    /* without the check, records may differ */
    o.check_columns = false;
    got = run_opts(in, strlen(in), &o, NULL, 0);
    cr_assert_str_eq(got, "1:a|b|c\n2:1|2\n3:1|2|3|4\n4:5|6|7\n");
    free(got);
}

Test(csv, oversize_field_is_refused_and_skipped)
{
    struct csv_opts o = {.max_field = 8, .check_columns = true};
    const char *in = "a,b\n123456789,x\n12345678,y\n\"123456789\nmore\",z\nok,w\n";
    char errs[1024];
    char *got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:a|b\n2:!field_too_long\n3:12345678|y\n4:!field_too_long\n6:ok|w\n");
    cr_assert(strstr(errs, "column 1 is longer than 8 bytes"), "%s", errs);
    free(got);
}

Test(csv, oversize_record_and_too_many_columns)
{
    struct csv_opts o = {.max_record = 16, .max_fields = 4};
    const char *in = "a,b\n1234567,1234567,1234567\nx,y\n1,2,3,4,5\n1,2,3,4\n";
    char *got = run_opts(in, strlen(in), &o, NULL, 0);
    cr_assert_str_eq(got, "1:a|b\n2:!record_too_long\n3:x|y\n4:!too_many_columns\n5:1|2|3|4\n");
    free(got);
}

Test(csv, a_huge_quoted_field_uses_bounded_memory)
{
    /* 2 MB in one never-closing quoted field (the record limit is 1 MiB):
     * refused, not buffered. */
    size_t n = 2u << 20;
    char *in = malloc(n);
    memcpy(in, "a\n\"", 3);
    memset(in + 3, 'x', n - 3);
    struct csv_opts o = {0};
    char errs[512];
    char *got = run_opts(in, n, &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:a\n2:!unterminated_quote\n");
    free(got);
    free(in);
}

Test(csv, empty_lines_are_skipped)
{
    EXPECT("a,b\n\n\n1,2\n\r\n\r\n3,4\n\n", "1:a|b\n4:1|2\n7:3|4\n");
    EXPECT("", "");
    EXPECT("\n\n", "");
    /* a line of separators is a record of empty fields, not an empty line */
    EXPECT("a,b\n,\n", "1:a|b\n2:|\n");
}

Test(csv, last_record_with_or_without_line_end)
{
    EXPECT("a,b\n1,2", "1:a|b\n2:1|2\n");
    EXPECT("a,b\n1,2\n", "1:a|b\n2:1|2\n");
    EXPECT("a,b\n1,", "1:a|b\n2:1|\n");
    EXPECT("a,b\n1,\"\"", "1:a|b\n2:1|\n");
    EXPECT("a,b\n1,\"x\"", "1:a|b\n2:1|x\n");
}

Test(csv, quote_problems)
{
    char errs[512];
    struct csv_opts o = {.check_columns = true};
    const char *in = "a,b\n\"abc\"def,x\nok,y\n";
    char *got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:a|b\n2:!bad_quote\n3:ok|y\n");
    free(got);
    in = "a,b\nok,y\n\"never closes,x\nz,w\n";
    got = run_opts(in, strlen(in), &o, errs, sizeof errs);
    cr_assert_str_eq(got, "1:a|b\n2:ok|y\n3:!unterminated_quote\n");
    cr_assert(strstr(errs, "column 1 (line 3)"), "%s", errs);
    free(got);
    /* a quote inside an unquoted field is kept */
    EXPECT("h,w\n5'10\",x\n", "1:h|w\n2:5'10\"|x\n");
    /* a space before a quote makes an unquoted field */
    EXPECT("h,w\na, \"b\"\n", "1:h|w\n2:a| \"b\"\n");
}

Test(csv, nul_byte)
{
    const char in[] = "a,b\nx\0y,z\nok,w\n";
    struct csv_opts o = {.check_columns = true};
    char *got = run_opts(in, sizeof in - 1, &o, NULL, 0);
    cr_assert_str_eq(got, "1:a|b\n2:!nul_byte\n3:ok|w\n");
    free(got);
}

/* The FILE reader works in 256 KiB chunks: records, quoted line ends, CRLF
 * pairs and UTF-8 characters cut by a chunk boundary must read the same as
 * from memory. */
Test(csv, file_reader_across_chunk_boundaries)
{
    size_t cap = 1u << 20, n = 0; /* 4 chunks */
    char *in = malloc(cap);
    n += (size_t)sprintf(in, "\xef\xbb\xbfid,name,notes\r\n");
    for (int i = 0; n + 200 < cap; i++)
        n += (size_t)sprintf(in + n, "L%d,Ren\xc3\xa9\xe2\x82\xac%d,\"x,\r\n\"\"%*d\"\"\"\r\n", i, i, i % 37,
                             i);
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(in, 1, n, f), n);
    rewind(f);

    struct csv_opts o = {.check_columns = true};
    struct csv_reader *fr = csv_reader_new(f, &o), *mr = csv_reader_mem(in, n, &o);
    long records = 0;
    for (;;) {
        struct csv_record a, b;
        char ea[256], eb[256];
        int ga = csv_next(fr, &a, ea, sizeof ea), gb = csv_next(mr, &b, eb, sizeof eb);
        cr_assert_eq(ga, gb, "record %ld: %d vs %d (%s / %s)", records, ga, gb, ea, eb);
        cr_assert_neq(ga, CSV_BAD, "%s", ea);
        if (ga == CSV_END)
            break;
        cr_assert_eq(a.line, b.line);
        cr_assert_eq(a.line, records == 0 ? 1 : 2 * records); /* the header, then 2 lines each */
        cr_assert_eq(a.n, 3);
        for (size_t i = 0; i < a.n; i++) {
            cr_assert_eq(a.fields[i].len, b.fields[i].len);
            cr_assert(memcmp(a.fields[i].p, b.fields[i].p, a.fields[i].len) == 0);
        }
        records++;
    }
    cr_assert_gt(records, 10000);
    cr_assert_eq(csv_bytes_read(fr), n);
    csv_reader_free(fr);
    csv_reader_free(mr);
    fclose(f);
    free(in);
}

Test(csv, writer_round_trip)
{
    const char *vals[] = {"plain",        "with,comma", "with \"quotes\"", "multi\nline",
                          "crlf\r\nline", "",           "; semi"};
    size_t nv = sizeof vals / sizeof vals[0];
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (size_t i = 0; i < nv; i++) {
        if (i)
            fputc(',', f);
        cr_assert_eq(csv_write_field(f, vals[i], strlen(vals[i]), ','), 0);
    }
    fputs("\r\n", f);
    fclose(f);
    cr_assert(strstr(buf, "plain,\"with,comma\",\"with \"\"quotes\"\"\"") == buf, "%s", buf);
    struct csv_reader *r = csv_reader_mem(buf, len, NULL);
    struct csv_record rec;
    char err[256];
    cr_assert_eq(csv_next(r, &rec, err, sizeof err), CSV_RECORD, "%s", err);
    cr_assert_eq(rec.n, nv);
    for (size_t i = 0; i < nv; i++)
        cr_assert_str_eq(rec.fields[i].p, vals[i]);
    cr_assert_eq(csv_next(r, &rec, err, sizeof err), CSV_END);
    csv_reader_free(r);
    free(buf);
}
