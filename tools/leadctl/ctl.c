/* ctl.c - leadctl's side of the admin socket (include/leadrouter/admin.h
 * describes the protocol): one connection per command with a deadline,
 * reply unframing, the explain line for lead files, and aligned output. */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ctl.h"
#include "leadrouter/admin.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int lc_unframe(const char *buf, size_t len, char **body, bool *is_err, size_t *used)
{
    /* Complete when a line holding "." alone has arrived. */
    size_t i = 0, end = SIZE_MAX;
    while (i < len) {
        const char *nl = memchr(buf + i, '\n', len - i);
        if (!nl)
            return 0;
        size_t n = (size_t)(nl - (buf + i));
        if (n == 1 && buf[i] == '.') {
            end = i;
            break;
        }
        i += n + 1;
    }
    if (end == SIZE_MAX)
        return 0;
    char *out = malloc(end + 1);
    if (!out)
        return -1;
    size_t o = 0;
    for (i = 0; i < end;) {
        const char *nl = memchr(buf + i, '\n', end - i);
        size_t n = (size_t)(nl - (buf + i)) + 1;
        size_t skip = buf[i] == '.' ? 1 : 0; /* dot-stuffing */
        memcpy(out + o, buf + i + skip, n - skip);
        o += n - skip;
        i += n;
    }
    out[o] = 0;
    *is_err = strncmp(out, "ERR ", 4) == 0;
    if (*is_err) {
        memmove(out, out + 4, o - 4 + 1);
        size_t l = strlen(out);
        while (l && out[l - 1] == '\n')
            out[--l] = 0;
    }
    *body = out;
    *used = end + 2;
    return 1;
}

static void unreachable(const char *path, const char *config_path, const char *why)
{
    fprintf(stderr, "leadctl: cannot reach leadrouterd at %s: %s\n", path, why);
    fprintf(stderr, "  check: is leadrouterd running (systemctl status leadrouter)?\n");
    if (config_path)
        fprintf(stderr, "  check: is admin.socket in %s the daemon's (or pass -s SOCKET)?\n", config_path);
    else
        fprintf(stderr, "  check: is -s %s the daemon's admin.socket?\n", path);
    fprintf(stderr,
            "  check: may you use it (its mode is admin.mode, e.g. 0660: be its owner or in its group)?\n");
}

int lc_admin_call(const char *path, const char *config_path, const char *line, char **body, bool *is_err)
{
    *body = NULL;
    *is_err = false;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) {
        unreachable(path, config_path, "the path is too long for a Unix socket");
        return 2;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        unreachable(path, config_path, strerror(errno));
        return 2;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        int e = errno;
        close(fd);
        unreachable(path, config_path,
                    e == ENOENT         ? "no such socket"
                    : e == ECONNREFUSED ? "nothing listens on it"
                    : e == EACCES       ? "permission denied"
                                        : strerror(e));
        return 2;
    }
    int64_t deadline = mono_ms() + LC_ADMIN_TIMEOUT_MS;
    size_t ll = strlen(line);
    char *msg = malloc(ll + 1);
    if (!msg) {
        close(fd);
        fprintf(stderr, "leadctl: out of memory\n");
        return 2;
    }
    memcpy(msg, line, ll);
    msg[ll] = '\n';
    size_t off = 0, cap = 65536, len = 0;
    char *buf = malloc(cap);
    int rc = 2;
    const char *why = NULL;
    if (!buf)
        why = "out of memory";
    /* Send and receive together: a big request must not deadlock against
     * a reply the daemon starts early (it answers one line at a time). */
    while (!why) {
        int64_t left = deadline - mono_ms();
        if (left <= 0) {
            why = "no complete reply within 30 s";
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN | (off < ll + 1 ? POLLOUT : 0)};
        int n = poll(&p, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            why = strerror(errno);
            break;
        }
        if (p.revents & POLLOUT) {
            ssize_t w = send(fd, msg + off, ll + 1 - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                off += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR && errno != EPIPE && errno != ECONNRESET) {
                why = strerror(errno);
                break;
            }
        }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            if (len == cap) {
                char *nb = realloc(buf, cap * 2);
                if (!nb) {
                    why = "out of memory";
                    break;
                }
                buf = nb;
                cap *= 2;
            }
            ssize_t r = recv(fd, buf + len, cap - len, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                why = r == 0 ? "the daemon closed the connection before replying" : strerror(errno);
                /* It may have said why before closing (too many clients). */
                size_t used;
                if (lc_unframe(buf, len, body, is_err, &used) == 1) {
                    why = NULL;
                    rc = 0;
                }
                break;
            }
            len += (size_t)r;
            size_t used;
            int u = lc_unframe(buf, len, body, is_err, &used);
            if (u < 0)
                why = "out of memory";
            if (u == 1) {
                rc = 0;
                break;
            }
        }
    }
    if (why)
        unreachable(path, config_path, why);
    free(msg);
    free(buf);
    close(fd);
    return rc;
}

int lc_explain_line(const char *data, size_t len, bool json, char **line, char *err, size_t errlen)
{
    *line = NULL;
    const char *prefix = json ? "json " : "";
    /* A msgpack map starts with 0x80-0x8f, 0xde or 0xdf; JSON with '{'
     * (after blanks): one file cannot be both. */
    unsigned char b0 = len ? (unsigned char)data[0] : 0;
    bool msgpack = len && ((b0 >= 0x80 && b0 <= 0x8f) || b0 == 0xde || b0 == 0xdf);
    if (!msgpack) {
        json_error_t je;
        json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
        if (!v) {
            snprintf(err, errlen, "neither a msgpack map nor JSON (line %d column %d: %s)", je.line,
                     je.column, je.text);
            return -1;
        }
        if (!json_is_object(v)) {
            json_decref(v);
            snprintf(err, errlen, "the JSON is not an object: a lead is a map of keys to values");
            return -1;
        }
        /* Compact: one line whatever the file's layout (newlines inside
         * strings are escaped by the dump). */
        char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
        json_decref(v);
        if (!s) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        size_t n = strlen(s);
        if (n + 13 > ADMIN_MAX_LINE) {
            free(s);
            snprintf(err, errlen, "the lead is too large for the admin socket (%zu bytes as JSON, max %d)", n,
                     ADMIN_MAX_LINE - 13);
            return -1;
        }
        if (asprintf(line, "%sexplain %s", prefix, s) < 0)
            *line = NULL;
        free(s);
    } else {
        if (len * 2 + 21 > ADMIN_MAX_LINE) {
            snprintf(err, errlen, "the lead is too large for the admin socket (%zu bytes of msgpack, max %d)",
                     len, (ADMIN_MAX_LINE - 21) / 2);
            return -1;
        }
        static const char hex[] = "0123456789abcdef";
        size_t pl = strlen(prefix);
        char *s = malloc(pl + 16 + len * 2 + 1);
        if (s) {
            memcpy(s, prefix, pl);
            memcpy(s + pl, "explain-msgpack ", 16);
            char *o = s + pl + 16;
            for (size_t k = 0; k < len; k++) {
                *o++ = hex[(unsigned char)data[k] >> 4];
                *o++ = hex[(unsigned char)data[k] & 15];
            }
            *o = 0;
        }
        *line = s;
    }
    if (!*line) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void lc_print_pairs(const char *text, FILE *out)
{
    size_t w = 0;
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n"), k = strcspn(p, " \n");
        if (k < n && k > w)
            w = k;
        p += n + (p[n] == '\n');
    }
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n"), k = strcspn(p, " \n");
        if (k < n)
            fprintf(out, "%-*.*s  %.*s\n", (int)w, (int)k, p, (int)(n - k - 1), p + k + 1);
        else
            fprintf(out, "%.*s\n", (int)n, p);
        p += n + (p[n] == '\n');
    }
}
