/* ctl.h - leadctl's admin socket client and the helpers behind its admin
 * commands (framing, the explain line, aligned output). */
#ifndef LEADCTL_CTL_H
#define LEADCTL_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define LC_ADMIN_TIMEOUT_MS 30000 /* a whole command, connect to the last byte */

/* Sends one command line (no newline in it) to the admin socket at path
 * and waits for the complete reply. Returns 0 with the reply's body
 * (unframed, malloc'ed) in *body and *is_err set when it is an ERR reply
 * (body then holds the message without "ERR "); or 2 when the daemon
 * cannot be reached, after printing to stderr what to check (config_path
 * names the config the path came from, or NULL when it came from -s). */
int lc_admin_call(const char *path, const char *config_path, const char *line, char **body, bool *is_err);

/* Unframes a reply: buf holds bytes received so far. Returns 1 when the
 * reply is complete (body malloc'ed, dot-stuffing undone, *used = bytes
 * consumed), 0 when more bytes are needed, -1 when out of memory. */
int lc_unframe(const char *buf, size_t len, char **body, bool *is_err, size_t *used);

/* The admin command line for a lead file: JSON (an object, sent compact
 * as `explain JSON`) or msgpack (sent as `explain-msgpack HEX`). Returns 0
 * with a malloc'ed line (prefixed "json " when json), or -1 with the
 * reason in err. */
int lc_explain_line(const char *data, size_t len, bool json, char **line, char *err, size_t errlen);

/* `name value` lines with the names padded to one column, to out. */
void lc_print_pairs(const char *text, FILE *out);

#endif
