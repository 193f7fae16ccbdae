/* csv.c - a streaming RFC 4180 reader for hostile input, and the field
 * writer export and report share.
 *
 * The reader is one state machine fed a chunk at a time (256 KiB fread, or
 * a caller's buffer), so a record may span chunks and quoted newlines cost
 * nothing special. Every byte also goes through a UTF-8 validator and the
 * line counter, whatever the state, so errors carry the line they were
 * found on. A record that breaks a rule is not abandoned half-way: the
 * machine keeps following quotes to its real end (storing nothing more),
 * so the next record starts where a spreadsheet would start it. Memory is
 * bounded by max_record and max_fields.
 */
#include "csv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define CSV_CHUNK (256u * 1024)

enum csv_state {
    ST_FIELD_START, /* at the start of a field */
    ST_UNQUOTED,    /* inside an unquoted field */
    ST_QUOTED,      /* inside a quoted field */
    ST_QUOTE,       /* a quote inside a quoted field: doubled, or the end */
};

struct csv_reader {
    FILE *f;           /* (ref) NULL when reading memory */
    const char *chunk; /* current input: the fread buffer or the caller's */
    size_t chunk_len, chunk_pos;
    char *readbuf;     /* fread buffer (owned) */
    bool eof, failed;  /* no more input; a read error happened */
    bool started;      /* the BOM check is done */
    uint64_t consumed; /* bytes consumed */
    char sep;
    bool plain[256]; /* bytes with no meaning in any state: copied in runs */
    size_t max_field, max_record, max_fields;
    bool check_columns;
    size_t expect; /* fields of the first record (0: none yet) */

    long line;                  /* line of the next byte, from 1 */
    bool prev_cr;               /* the last byte was CR (an LF after it is the same line end) */
    unsigned u8_need;           /* continuation bytes still due */
    unsigned char u8_lo, u8_hi; /* range of the next continuation byte */

    char *buf; /* the record's fields, each NUL-terminated (owned) */
    size_t buf_len, buf_cap;
    size_t *starts;           /* offset of each field in buf (owned) */
    struct csv_field *fields; /* handed out (owned) */
    size_t n_fields, fields_cap;

    /* the record in progress */
    enum csv_state st;
    long rec_line;      /* 0: no byte of the record yet */
    size_t field_start; /* offset of the current field in buf */
    long quote_line;    /* where the open quote was */
    bool bad;           /* a rule is broken: store nothing, find the end */
    char why[160];      /* the first broken rule */
};

static void set_bad(struct csv_reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_bad(struct csv_reader *r, const char *fmt, ...)
{
    if (r->bad)
        return;
    r->bad = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
}

char csv_sep_parse(const char *s)
{
    if (!s)
        return 0;
    if (strcmp(s, "tab") == 0 || strcmp(s, "\\t") == 0 || strcmp(s, "\t") == 0)
        return '\t';
    if (strcmp(s, ",") == 0 || strcmp(s, "comma") == 0)
        return ',';
    if (strcmp(s, ";") == 0 || strcmp(s, "semicolon") == 0)
        return ';';
    if (strcmp(s, "|") == 0 || strcmp(s, "pipe") == 0)
        return '|';
    return 0;
}

static struct csv_reader *reader_new(const struct csv_opts *o)
{
    char sep = o && o->sep ? o->sep : ',';
    if (sep == '"' || sep == '\r' || sep == '\n' || (unsigned char)sep >= 0x80)
        return NULL;
    struct csv_reader *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->sep = sep;
    for (int c = 1; c < 0x80; c++)
        r->plain[c] = c != sep && c != '"' && c != '\r' && c != '\n';
    r->max_field = o && o->max_field ? o->max_field : CSV_MAX_FIELD_DEFAULT;
    r->max_record = o && o->max_record ? o->max_record : CSV_MAX_RECORD_DEFAULT;
    r->max_fields = o && o->max_fields ? o->max_fields : CSV_MAX_FIELDS_DEFAULT;
    r->check_columns = o && o->check_columns;
    r->line = 1;
    return r;
}

struct csv_reader *csv_reader_new(FILE *f, const struct csv_opts *opts)
{
    struct csv_reader *r = reader_new(opts);
    if (!r)
        return NULL;
    r->f = f;
    r->readbuf = malloc(CSV_CHUNK);
    if (!r->readbuf) {
        free(r);
        return NULL;
    }
    r->chunk = r->readbuf;
    return r;
}

struct csv_reader *csv_reader_mem(const char *buf, size_t len, const struct csv_opts *opts)
{
    struct csv_reader *r = reader_new(opts);
    if (!r)
        return NULL;
    r->chunk = buf;
    r->chunk_len = len;
    r->eof = true; /* nothing beyond this chunk */
    return r;
}

void csv_reader_free(struct csv_reader *r)
{
    if (!r)
        return;
    free(r->readbuf);
    free(r->buf);
    free(r->starts);
    free(r->fields);
    free(r);
}

uint64_t csv_bytes_read(const struct csv_reader *r)
{
    return r->consumed;
}

/* Refills the chunk; false at the end of input (or on a read error). */
static bool refill(struct csv_reader *r)
{
    if (r->eof)
        return false;
    size_t n = fread(r->readbuf, 1, CSV_CHUNK, r->f);
    if (n < CSV_CHUNK) {
        r->eof = true;
        if (ferror(r->f))
            r->failed = true;
    }
    r->chunk = r->readbuf;
    r->chunk_len = n;
    r->chunk_pos = 0;
    return n > 0;
}

/* Room for one more byte of the record; false (and the record marked bad)
 * past max_record. */
static bool buf_room(struct csv_reader *r, size_t more)
{
    if (r->buf_len + more <= r->buf_cap)
        return true;
    if (r->buf_len + more > r->max_record + 1) {
        set_bad(r, "record_too_long: the record is longer than %zu bytes", r->max_record);
        return false;
    }
    size_t cap = r->buf_cap ? r->buf_cap * 2 : 4096;
    while (cap < r->buf_len + more)
        cap *= 2;
    if (cap > r->max_record + 1)
        cap = r->max_record + 1;
    char *nb = realloc(r->buf, cap);
    if (!nb) {
        set_bad(r, "record_too_long: out of memory for a record of %zu bytes", r->buf_len + more);
        return false;
    }
    r->buf = nb;
    r->buf_cap = cap;
    return true;
}

/* Ends the current field: NUL-terminates it and records its start. */
static void end_field(struct csv_reader *r)
{
    if (r->bad)
        return;
    if (r->n_fields >= r->max_fields) {
        set_bad(r, "too_many_columns: more than %zu columns", r->max_fields);
        return;
    }
    if (!buf_room(r, 1))
        return;
    r->buf[r->buf_len++] = 0;
    if (r->n_fields == r->fields_cap) {
        size_t cap = r->fields_cap ? r->fields_cap * 2 : 32;
        size_t *ns = realloc(r->starts, cap * sizeof *ns);
        if (!ns) {
            set_bad(r, "too_many_columns: out of memory for %zu columns", cap);
            return;
        }
        r->starts = ns;
        struct csv_field *nf = realloc(r->fields, cap * sizeof *nf);
        if (!nf) {
            set_bad(r, "too_many_columns: out of memory for %zu columns", cap);
            return;
        }
        r->fields = nf;
        r->fields_cap = cap;
    }
    r->starts[r->n_fields++] = r->field_start;
    r->field_start = r->buf_len;
}

/* Appends a data byte to the current field. */
static inline void put(struct csv_reader *r, char c)
{
    if (r->bad)
        return;
    if (r->buf_len - r->field_start >= r->max_field) {
        set_bad(r, "field_too_long: column %zu is longer than %zu bytes", r->n_fields + 1, r->max_field);
        return;
    }
    if (r->buf_len < r->buf_cap || buf_room(r, 1))
        r->buf[r->buf_len++] = c;
}

/* Validates one byte as part of a UTF-8 stream (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF). */
static inline void utf8_byte(struct csv_reader *r, unsigned char c, long line)
{
    if (r->u8_need == 0) {
        if (c < 0x80)
            return;
        if (c >= 0xc2 && c <= 0xdf) {
            r->u8_need = 1;
            r->u8_lo = 0x80, r->u8_hi = 0xbf;
        } else if (c >= 0xe0 && c <= 0xef) {
            r->u8_need = 2;
            r->u8_lo = c == 0xe0 ? 0xa0 : 0x80;
            r->u8_hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            r->u8_need = 3;
            r->u8_lo = c == 0xf0 ? 0x90 : 0x80;
            r->u8_hi = c == 0xf4 ? 0x8f : 0xbf;
        } else {
            set_bad(r, "invalid_utf8: byte 0x%02x on line %ld cannot start a UTF-8 character", c, line);
        }
        return;
    }
    if (c < r->u8_lo || c > r->u8_hi) {
        set_bad(r, "invalid_utf8: incomplete or overlong UTF-8 character on line %ld", line);
        r->u8_need = 0;
        if (c >= 0x80)
            utf8_byte(r, c, line); /* may start the next character */
        return;
    }
    r->u8_need--;
    r->u8_lo = 0x80, r->u8_hi = 0xbf;
}

static void record_reset(struct csv_reader *r)
{
    r->buf_len = 0;
    r->n_fields = 0;
    r->field_start = 0;
    r->st = ST_FIELD_START;
    r->rec_line = 0;
    r->bad = false;
    r->why[0] = 0;
}

/* The record is complete: hands it out, or says why it is bad. */
static int finish(struct csv_reader *r, struct csv_record *rec, char *err, size_t errlen)
{
    end_field(r);
    if (r->u8_need) {
        set_bad(r, "invalid_utf8: the input ends inside a UTF-8 character on line %ld", r->line);
        r->u8_need = 0;
    }
    rec->line = r->rec_line;
    rec->fields = NULL;
    rec->n = 0;
    if (!r->bad && r->check_columns) {
        if (r->expect == 0)
            r->expect = r->n_fields;
        else if (r->n_fields != r->expect)
            set_bad(r, "column_count: %zu columns, the header has %zu", r->n_fields, r->expect);
    }
    if (r->bad) {
        snprintf(err, errlen, "%s", r->why);
        record_reset(r);
        return CSV_BAD;
    }
    for (size_t i = 0; i < r->n_fields; i++) {
        size_t end = i + 1 < r->n_fields ? r->starts[i + 1] : r->buf_len;
        r->fields[i].p = r->buf + r->starts[i];
        r->fields[i].len = end - r->starts[i] - 1;
    }
    rec->fields = r->fields;
    rec->n = r->n_fields;
    record_reset(r);
    return CSV_RECORD;
}

int csv_next(struct csv_reader *r, struct csv_record *rec, char *err, size_t errlen)
{
    rec->fields = NULL;
    rec->n = 0;
    rec->line = r->line;
    if (errlen)
        err[0] = 0;
    const char sep = r->sep;

    for (;;) {
        if (r->chunk_pos == r->chunk_len) {
            if (!r->f || !refill(r)) {
                if (r->failed) {
                    snprintf(err, errlen, "read error: %s", strerror(errno ? errno : EIO));
                    r->failed = false; /* reported once; then the end */
                    return CSV_FATAL;
                }
                if (r->rec_line == 0)
                    return CSV_END;
                if (r->st == ST_QUOTED) {
                    r->bad = false; /* the root cause wins over what followed */
                    set_bad(r, "unterminated_quote: the quoted field of column %zu (line %ld) never closes",
                            r->n_fields + 1, r->quote_line);
                }
                return finish(r, rec, err, errlen);
            }
        }
        if (!r->started) {
            r->started = true;
            /* A UTF-8 BOM (Excel's "CSV UTF-8") is not data. Needs the
             * first 3 bytes in one chunk: true for any real first chunk. */
            if (r->chunk_len - r->chunk_pos >= 3 && memcmp(r->chunk + r->chunk_pos, "\xef\xbb\xbf", 3) == 0) {
                r->chunk_pos += 3;
                r->consumed += 3;
                continue;
            }
        }

        const unsigned char *p = (const unsigned char *)r->chunk;
        size_t i = r->chunk_pos, n = r->chunk_len;
        while (i < n) {
            /* The common case in bulk: a run of plain ASCII inside a field
             * (no line end, so the line count and UTF-8 state hold). */
            if ((r->st == ST_UNQUOTED || r->st == ST_QUOTED) && r->plain[p[i]] && !r->u8_need) {
                size_t j = i + 1;
                while (j < n && r->plain[p[j]])
                    j++;
                size_t run = j - i;
                if (r->bad)
                    ; /* a bad record: only its end matters */
                else if (r->buf_len - r->field_start + run > r->max_field)
                    set_bad(r, "field_too_long: column %zu is longer than %zu bytes", r->n_fields + 1,
                            r->max_field);
                else if (buf_room(r, run)) {
                    memcpy(r->buf + r->buf_len, p + i, run);
                    r->buf_len += run;
                }
                r->prev_cr = false;
                i = j;
                continue;
            }
            unsigned char c = p[i++];
            /* Line counting and UTF-8, whatever the state. CR, LF and CRLF
             * each end one line. */
            long line_of_c = r->line;
            if (c == '\n') {
                if (!r->prev_cr)
                    r->line++;
            } else if (c == '\r') {
                r->line++;
            }
            r->prev_cr = c == '\r';
            if (c >= 0x80 || r->u8_need)
                utf8_byte(r, c, line_of_c);

            if (r->rec_line == 0) {
                if (c == '\n' || c == '\r')
                    continue; /* an empty line, or the LF of a CRLF */
                r->rec_line = line_of_c;
            }
            if (c == 0) {
                set_bad(r, "nul_byte: NUL byte in column %zu on line %ld", r->n_fields + 1, line_of_c);
                continue;
            }

            switch (r->st) {
            case ST_FIELD_START:
                if (c == '"') {
                    r->st = ST_QUOTED;
                    r->quote_line = line_of_c;
                    break;
                }
                r->st = ST_UNQUOTED;
                /* fall through */
            case ST_UNQUOTED:
                if (c == (unsigned char)sep) {
                    end_field(r);
                    r->st = ST_FIELD_START;
                } else if (c == '\n' || c == '\r') {
                    goto record_done;
                } else {
                    put(r, (char)c);
                }
                break;
            case ST_QUOTED:
                if (c == '"')
                    r->st = ST_QUOTE;
                else
                    put(r, (char)c);
                break;
            case ST_QUOTE:
                if (c == '"') {
                    put(r, '"');
                    r->st = ST_QUOTED;
                } else if (c == (unsigned char)sep) {
                    end_field(r);
                    r->st = ST_FIELD_START;
                } else if (c == '\n' || c == '\r') {
                    goto record_done;
                } else {
                    set_bad(r, "bad_quote: text after the closing quote of column %zu on line %ld",
                            r->n_fields + 1, line_of_c);
                    r->st = ST_UNQUOTED;
                }
                break;
            }
        }
        r->consumed += i - r->chunk_pos;
        r->chunk_pos = i;
        continue;
    record_done:
        r->consumed += i - r->chunk_pos;
        r->chunk_pos = i;
        return finish(r, rec, err, errlen);
    }
}

int csv_write_field(FILE *f, const char *p, size_t len, char sep)
{
    bool quote = false;
    for (size_t i = 0; i < len && !quote; i++)
        quote = p[i] == sep || p[i] == '"' || p[i] == '\r' || p[i] == '\n';
    if (!quote)
        return len == 0 || fwrite(p, 1, len, f) == len ? 0 : -1;
    if (putc('"', f) == EOF)
        return -1;
    size_t from = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] != '"')
            continue;
        /* the quote itself, then once more */
        if (fwrite(p + from, 1, i + 1 - from, f) != i + 1 - from)
            return -1;
        from = i;
    }
    if (fwrite(p + from, 1, len - from, f) != len - from)
        return -1;
    return putc('"', f) == EOF ? -1 : 0;
}
