/* csv.h - leadctl's spreadsheet side: a streaming RFC 4180 reader (csv_*,
 * csv.c) and the mapping of a CSV row to a msgpack lead (csvmap_*,
 * import.c), shared by import, export and their tests. */
#ifndef LEADCTL_CSV_H
#define LEADCTL_CSV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "leadrouter/common.h"

struct msgpack_sbuffer;

/* ---- the reader ----------------------------------------------------- */

#define CSV_MAX_FIELD_DEFAULT (64u * 1024)    /* bytes in one field */
#define CSV_MAX_RECORD_DEFAULT (1024u * 1024) /* bytes in one record, all fields */
#define CSV_MAX_FIELDS_DEFAULT 1024u          /* fields in one record */

struct csv_opts {
    char sep;           /* field separator: ',' (the default when 0), ';', '\t'... never '"', CR or LF */
    size_t max_field;   /* 0: CSV_MAX_FIELD_DEFAULT */
    size_t max_record;  /* 0: CSV_MAX_RECORD_DEFAULT */
    size_t max_fields;  /* 0: CSV_MAX_FIELDS_DEFAULT */
    bool check_columns; /* every record must have as many fields as the first one (the header) */
};

/* One field: p is NUL-terminated (a field never holds a NUL byte) and points
 * into the reader; valid until the next csv_next or csv_reader_free. */
struct csv_field {
    const char *p;
    size_t len;
};

struct csv_record {
    const struct csv_field *fields; /* (ref) the reader's */
    size_t n;
    long line; /* the line the record starts on, from 1 */
};

struct csv_reader;

/* A reader of f (not closed by the reader) or of len bytes at buf (kept by
 * the caller while the reader lives). NULL when out of memory or when
 * opts->sep is not usable. opts may be NULL (defaults). */
struct csv_reader *csv_reader_new(FILE *f, const struct csv_opts *opts);
struct csv_reader *csv_reader_mem(const char *buf, size_t len, const struct csv_opts *opts);
void csv_reader_free(struct csv_reader *r); /* accepts NULL */

enum {
    CSV_RECORD = 1, /* *rec holds the next record */
    CSV_END = 0,    /* no more records */
    CSV_BAD = -1,   /* this record is bad (err, rec->line); the reader is past it: go on */
    CSV_FATAL = -2, /* read error or out of memory (err): stop */
};

/* Reads the next record. The input: an optional UTF-8 BOM; records ending
 * in CRLF, LF or CR (the last one may lack it); fields separated by sep,
 * optionally "quoted" (a quoted field may hold sep, quotes doubled as "",
 * and line ends, kept as they are). Lines with nothing on them are skipped.
 * A quote inside an unquoted field is kept as a plain character. A bad
 * record (CSV_BAD) gives err as "<code>: <detail>", code one of
 * invalid_utf8, nul_byte, bad_quote, unterminated_quote, field_too_long,
 * record_too_long, too_many_columns, column_count; the detail never quotes
 * the input. Never reads more than a bounded amount into memory. */
int csv_next(struct csv_reader *r, struct csv_record *rec, char *err, size_t errlen) LR_WUR;

/* Input bytes consumed so far (for progress). */
uint64_t csv_bytes_read(const struct csv_reader *r);

/* The separator named by s: ",", ";", "tab" or "\t", "|"; 0 if none. */
char csv_sep_parse(const char *s);

/* Writes one field to f as RFC 4180 wants it: quoted (quotes doubled) when
 * it holds sep, a quote, CR or LF. Returns 0, or -1 on a write error. */
int csv_write_field(FILE *f, const char *p, size_t len, char sep);

/* ---- CSV row -> lead (import.c) -------------------------------------- */

/* How a header maps its columns to lead keys (SPEC section 7): id, niche,
 * source, campaign, score, state, zip, country, lat, lon, created_at,
 * keywords go to the lead's own keys; name, first_name, last_name, phone,
 * email, address under contact; contact.X / fields.X / signals.X to X in
 * that map; assignment.X (export's columns) are dropped; anything else
 * under fields. Header names match known keys ignoring case, surrounding
 * blanks, and with spaces and '-' read as '_'. */
struct csvmap;

/* Builds the mapping of a header of n columns, then applies the overrides
 * specs[0..n_specs) ("COL=TARGET[,COL=TARGET...]", TARGET a lead key,
 * contact.X, fields.X, signals.X, keywords, or - to drop the column).
 * Returns 0, or -1 with the reason: an override naming no column or a bad
 * target, two columns for one key, no id column. warn (may be NULL) gets
 * notes that are not errors (an unnamed column is dropped). */
int csvmap_new(const struct csv_field *hdr, size_t n, const char *const *specs, size_t n_specs,
               struct csvmap **out, FILE *warn, char *err, size_t errlen) LR_WUR;
void csvmap_free(struct csvmap *m); /* accepts NULL */

/* Columns of the header. */
size_t csvmap_columns(const struct csvmap *m);

/* What column i becomes, as text: "id", "contact.phone", "fields.city",
 * "-" (dropped)... (owned by m). */
const char *csvmap_target(const struct csvmap *m, size_t i);

/* Packs a row of csvmap_columns(m) values into sb (cleared first) as a
 * msgpack lead map. Values are trimmed of surrounding blanks; empty ones
 * are left out. Typing: score and created_at integers (created_at may also
 * be a UTC date "YYYY-MM-DD[ HH:MM[:SS]]" or with 'T' and 'Z'); lat, lon and
 * signals numbers; keywords split on '|'; contact values strings; fields
 * values true/false (any case) as bool, integers (no leading zero, fits 64
 * bits) as int, decimals as float, anything else as string. A value that
 * does not have its key's type is packed as a string, so that the lead
 * decoder refuses it with the reason of SPEC section 2. Returns 1 when the
 * row was packed, 0 when every value is empty (a blank row), -1 out of
 * memory. */
int csvmap_pack(const struct csvmap *m, const struct csv_field *row, size_t n,
                struct msgpack_sbuffer *sb) LR_WUR;

#endif
