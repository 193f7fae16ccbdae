/* tzdb.c - build a struct lr_tz from the system tz database by sampling
 * libc's localtime_r under TZ=<name>, so the routing core never interprets
 * zone rules itself and always agrees with libc.
 *
 * Speed: glibc re-parses a zone file's footer rule (the POSIX TZ string
 * that governs instants after the file's last listed transition) on every
 * localtime_r call, about 1 us each; a daily walk to 2100 spends most of its
 * time there (30-40 ms a zone). So for that stretch we set TZ to the footer
 * string itself, which glibc parses once and evaluates with the very same
 * code, and check that both agree at each end of the stretch. */
#include "leadrouter/tzdb.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TZDB_NAME_MAX 64
#define TZDB_DEFAULT_DIR "/usr/share/zoneinfo"
/* Real zone files are a few KiB; anything bigger is not one we want. */
#define TZDB_FILE_MAX (256 * 1024)
#define TZDB_RULE_MAX 128
/* Sampled range: 1970-01-01 .. 2100-01-01 UTC, one day apart; offset changes
 * found between two samples are bisected to the second. Offsets before the
 * range take the first sample's value, after it the last one's. */
#define TZDB_FROM ((time_t)0)
#define TZDB_TO ((time_t)4102444800)
#define TZDB_STEP ((time_t)86400)

/* Failures while sampling: out of memory, or libc's clock for the zone is
 * not UTC plus an offset. */
enum { TZDB_ENOMEM = -1, TZDB_UNUSABLE = -2 };

/* What the zone file says beyond being a zone: if has_rule, from rule_from
 * on glibc evaluates the footer rule instead of the transition list. */
struct tzdb_file {
    bool has_rule;
    int64_t rule_from;        /* last listed transition */
    char rule[TZDB_RULE_MAX]; /* POSIX TZ string */
};

/* The name comes from a config file and ends up in logs: show at most 80
 * bytes of it, control and non-ASCII bytes as '?'. */
static void set_unknown(const char *name, char *err, size_t errlen)
{
    if (err == NULL || errlen == 0)
        return;
    char shown[84];
    size_t n = 0;
    for (; name[n] != '\0' && n < 80; n++)
        shown[n] = (name[n] >= 0x20 && name[n] < 0x7f) ? name[n] : '?';
    strcpy(shown + n, name[n] != '\0' ? "..." : "");
    snprintf(err, errlen, "unknown time zone '%s'", shown);
}

/* Only plain IANA names: the name becomes a file path and the TZ value. */
static bool name_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > TZDB_NAME_MAX || name[0] == '/' || strstr(name, "..") != NULL)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                  c == '+' || c == '/' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static uint64_t be32(const unsigned char *p)
{
    return (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 | (uint64_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)(be32(p) << 32 | be32(p + 4));
}

/* Size of a TZif data block whose header is at h, with tsize-byte times;
 * false if the header says the block cannot be a zone (RFC 8536 forbids
 * zero type or abbreviation counts). */
static bool tzif_block(const unsigned char *h, uint64_t tsize, uint64_t *size)
{
    /* Counts: isut, isstd, leap, time, type, char. */
    const unsigned char *c = h + 20;
    uint64_t isut = be32(c), isstd = be32(c + 4), leap = be32(c + 8), timecnt = be32(c + 12),
             type = be32(c + 16), chr = be32(c + 20);
    if (type == 0 || chr == 0)
        return false;
    *size = timecnt * (tsize + 1) + type * 6 + chr + leap * (tsize + 4) + isstd + isut;
    return true;
}

/* Checks that a TZif file (RFC 8536) is complete, since glibc quietly falls
 * back to UTC on a broken one, and for version 2+ notes the footer rule and
 * the last transition (zf->has_rule). */
static bool parse_tzif(const unsigned char *p, size_t len, struct tzdb_file *zf)
{
    zf->has_rule = false;
    uint64_t v1, v2;
    if (len < 44 || memcmp(p, "TZif", 4) != 0 || !tzif_block(p, 4, &v1) || v1 > len - 44)
        return false;
    if (p[4] < '2')
        return true;
    if (len - 44 - v1 < 44)
        return false;
    const unsigned char *h2 = p + 44 + v1;
    if (memcmp(h2, "TZif", 4) != 0 || !tzif_block(h2, 8, &v2))
        return false;
    size_t data = (size_t)(h2 + 44 - p);
    /* The footer: "\n" rule "\n", the rule possibly empty. */
    if (v2 > len - data || len - data - v2 < 2)
        return false;
    const unsigned char *f = p + data + v2, *end = p + len;
    if (*f++ != '\n')
        return false;
    size_t n = 0;
    while (f + n < end && f[n] != '\n')
        n++;
    if (f + n == end)
        return false;

    /* glibc ignores the footer of a zone without transitions. */
    uint64_t timecnt = be32(h2 + 32);
    if (timecnt == 0 || n == 0 || n >= sizeof zf->rule || f[0] == ':')
        return true;
    for (size_t i = 0; i < n; i++)
        if (f[i] < 0x21 || f[i] > 0x7e)
            return true;
    memcpy(zf->rule, f, n);
    zf->rule[n] = '\0';
    zf->rule_from = be64(p + data + (timecnt - 1) * 8);
    zf->has_rule = true;
    return true;
}

/* The zone must be a regular, complete TZif file, else libc would quietly
 * fall back to UTC or read the name as a POSIX TZ rule. O_NONBLOCK so a FIFO
 * planted in TZDIR cannot hang us before fstat rejects it. */
static bool zone_file_read(const char *name, struct tzdb_file *zf)
{
    zf->has_rule = false;
    const char *dir = getenv("TZDIR");
    if (dir == NULL || dir[0] == '\0')
        dir = TZDB_DEFAULT_DIR;
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof path)
        return false;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat st;
    unsigned char *buf = NULL;
    size_t len = 0;
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 44 && st.st_size <= TZDB_FILE_MAX &&
              (buf = malloc((size_t)st.st_size)) != NULL;
    while (ok && len < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    ok = ok && len == (size_t)st.st_size && parse_tzif(buf, len, zf);
    free(buf);
    return ok;
}

/* Growable transition table. */
struct tzdb_buf {
    int64_t *at;
    int32_t *off;
    uint32_t n, cap;
};

static int buf_push(struct tzdb_buf *b, int64_t at, int32_t off)
{
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 64;
        int64_t *na = realloc(b->at, cap * sizeof *na);
        if (na == NULL)
            return -1;
        b->at = na;
        int32_t *no = realloc(b->off, cap * sizeof *no);
        if (no == NULL)
            return -1;
        b->off = no;
        b->cap = cap;
    }
    b->at[b->n] = at;
    b->off[b->n] = off;
    b->n++;
    return 0;
}

/* Offset at t under the current TZ, and whether libc's civil clock really is
 * t + offset: zones under right/ count leap seconds, so tm_gmtoff alone
 * would not describe them. */
static bool sample(time_t t, int32_t *off)
{
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL)
        return false;
    long local = (long)(t % 86400) + tm.tm_gmtoff;
    local = ((local % 86400) + 86400) % 86400;
    *off = (int32_t)tm.tm_gmtoff;
    return local == (long)tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec;
}

/* Appends every offset change in (lo, hi], given the offsets at both ends.
 * A day may hold more than one change, so after bisecting to the first one
 * we look again at the rest of the interval. Changes that cancel out within
 * one step are invisible to daily sampling; the shortest such excursion in
 * the tz database since 1970 lasts about a week. */
static int scan(struct tzdb_buf *b, time_t lo, int32_t off_lo, time_t hi, int32_t off_hi)
{
    while (off_lo != off_hi) {
        time_t a = lo, z = hi; /* offset(a) == off_lo, offset(z) != off_lo */
        int32_t off_z = off_hi;
        while (z - a > 1) {
            time_t mid = a + (z - a) / 2;
            int32_t om;
            if (!sample(mid, &om))
                return TZDB_UNUSABLE;
            if (om == off_lo) {
                a = mid;
            } else {
                z = mid;
                off_z = om;
            }
        }
        if (buf_push(b, z, off_z) < 0)
            return TZDB_ENOMEM;
        lo = z;
        off_lo = off_z;
    }
    return 0;
}

/* Samples (from, to] a day at a time; *prev is the offset at from on entry
 * and at to on return. */
static int walk(struct tzdb_buf *b, time_t from, time_t to, int32_t *prev)
{
    for (time_t t = from; t < to;) {
        time_t next = to - t > TZDB_STEP ? t + TZDB_STEP : to;
        int32_t cur;
        if (!sample(next, &cur))
            return TZDB_UNUSABLE;
        if (cur != *prev) {
            int rc = scan(b, t, *prev, next, cur);
            if (rc < 0)
                return rc;
        }
        *prev = cur;
        t = next;
    }
    return 0;
}

/* Fills b with TZ=name in effect; may change TZ (the caller restores it).
 * Returns 0 or a TZDB_ failure. */
static int build_table(struct tzdb_buf *b, const char *name, const struct tzdb_file *zf)
{
    int32_t prev;
    if (!sample(TZDB_FROM, &prev))
        return TZDB_UNUSABLE;
    /* off[0] holds from the beginning of time, so at[0] is not a change. */
    if (buf_push(b, INT64_MIN, prev) < 0)
        return TZDB_ENOMEM;
    time_t split = TZDB_TO;
    if (zf->has_rule && zf->rule_from < TZDB_TO)
        split = zf->rule_from > TZDB_FROM ? (time_t)zf->rule_from : TZDB_FROM;
    int rc = walk(b, TZDB_FROM, split, &prev);
    if (rc < 0 || split == TZDB_TO)
        return rc;

    /* The footer stretch: switch to the rule itself only if libc agrees with
     * it at both ends under the zone's name; otherwise stay slow but right. */
    int32_t end_by_name, o_split, o_end;
    if (!sample(TZDB_TO, &end_by_name))
        return TZDB_UNUSABLE;
    if (setenv("TZ", zf->rule, 1) < 0)
        return TZDB_ENOMEM;
    tzset();
    if (!sample(split, &o_split) || o_split != prev || !sample(TZDB_TO, &o_end) || o_end != end_by_name) {
        if (setenv("TZ", name, 1) < 0)
            return TZDB_ENOMEM;
        tzset();
    }
    return walk(b, split, TZDB_TO, &prev);
}

static struct lr_tz *fail_oom(const char *name, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "time zone '%s': out of memory", name);
    return NULL;
}

struct lr_tz *tzdb_load(const char *name, char *err, size_t errlen)
{
    if (name == NULL)
        name = "";
    struct tzdb_file zf;
    if (!name_ok(name) || !zone_file_read(name, &zf)) {
        set_unknown(name, err, errlen);
        return NULL;
    }

    /* Copy TZ: setenv may free the string getenv returned. */
    const char *old = getenv("TZ");
    char *saved = NULL;
    if (old != NULL && (saved = strdup(old)) == NULL)
        return fail_oom(name, err, errlen);

    struct tzdb_buf b = {0};
    int rc = TZDB_ENOMEM;
    if (setenv("TZ", name, 1) == 0) {
        tzset();
        rc = build_table(&b, name, &zf);
    }
    if (saved != NULL)
        setenv("TZ", saved, 1);
    else
        unsetenv("TZ");
    tzset();
    free(saved);

    struct lr_tz *tz = NULL;
    if (rc == 0 && (tz = calloc(1, sizeof *tz)) != NULL && (tz->name = strdup(name)) == NULL) {
        free(tz);
        tz = NULL;
    }
    if (tz == NULL) {
        free(b.at);
        free(b.off);
        if (rc == TZDB_UNUSABLE) {
            if (err != NULL && errlen > 0)
                snprintf(err, errlen, "time zone '%s' is not usable: its clock is not UTC plus an offset",
                         name);
            return NULL;
        }
        return fail_oom(name, err, errlen);
    }
    /* Trim the slack; a failed shrink keeps the larger block, which is fine. */
    int64_t *at = realloc(b.at, b.n * sizeof *at);
    int32_t *off = realloc(b.off, b.n * sizeof *off);
    tz->at = at ? at : b.at;
    tz->off = off ? off : b.off;
    tz->n = b.n;
    return tz;
}
