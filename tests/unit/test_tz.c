/* test_tz.c - time zones: offset tables loaded from the system tz database
 * (daemon/tzdb.c) and civil time / ISO weeks computed from them (rules/tz.c),
 * checked against known instants and against libc itself. */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "leadrouter/tz.h"
#include "leadrouter/tzdb.h"

static struct lr_tz *load(const char *name)
{
    char err[256] = "";
    struct lr_tz *tz = tzdb_load(name, err, sizeof err);
    cr_assert_not_null(tz, "tzdb_load(%s): %s", name, err);
    return tz;
}

static int64_t utc(int y, int mon, int d, int h, int mi, int s)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
    return (int64_t)timegm(&tm);
}

static void expect_civil(const struct lr_tz *tz, int64_t t, int y, int mon, int d, int h, int mi, int wday)
{
    struct lr_civil c;
    lr_tz_civil(tz, t, &c);
    cr_expect(c.year == y && c.mon == mon && c.mday == d && c.hour == h && c.min == mi && c.wday == wday,
              "%s @%lld: got %04d-%02d-%02d %02d:%02d wday %d, want %04d-%02d-%02d %02d:%02d wday %d",
              tz->name, (long long)t, c.year, c.mon, c.mday, c.hour, c.min, c.wday, y, mon, d, h, mi, wday);
}

static void expect_iso(const struct lr_tz *tz, int64_t t, int iso_year, int iso_week, int wday)
{
    struct lr_civil c;
    lr_tz_civil(tz, t, &c);
    cr_expect(c.iso_year == iso_year && c.iso_week == iso_week && c.wday == wday,
              "@%lld: got %d-W%02d day %d, want %d-W%02d day %d", (long long)t, c.iso_year, c.iso_week,
              c.wday, iso_year, iso_week, wday);
}

Test(tz, chicago_spring_forward_2026)
{
    struct lr_tz *tz = load("America/Chicago");
    cr_assert_eq(utc(2026, 3, 8, 8, 0, 0), 1772956800);
    cr_expect_eq(lr_tz_offset(tz, 1772956799), -21600);
    cr_expect_eq(lr_tz_offset(tz, 1772956800), -18000);
    expect_civil(tz, 1772956799, 2026, 3, 8, 1, 59, 6); /* 01:59:59 CST, Sunday */
    expect_civil(tz, 1772956800, 2026, 3, 8, 3, 0, 6);  /* 03:00:00 CDT */
    lr_tz_free(tz);
}

Test(tz, chicago_fall_back_2026)
{
    struct lr_tz *tz = load("America/Chicago");
    cr_assert_eq(utc(2026, 11, 1, 7, 0, 0), 1793516400);
    cr_expect_eq(lr_tz_offset(tz, 1793516399), -18000);
    cr_expect_eq(lr_tz_offset(tz, 1793516400), -21600);
    expect_civil(tz, 1793516399, 2026, 11, 1, 1, 59, 6); /* 01:59:59 CDT */
    expect_civil(tz, 1793516400, 2026, 11, 1, 1, 0, 6);  /* 01:00:00 CST, again */
    /* Local midnight that Sunday is still the previous UTC day's 05:00. */
    expect_civil(tz, utc(2026, 11, 1, 4, 59, 0), 2026, 10, 31, 23, 59, 5);
    expect_civil(tz, utc(2026, 11, 1, 5, 0, 0), 2026, 11, 1, 0, 0, 6);
    lr_tz_free(tz);
}

Test(tz, chicago_next_change_2026)
{
    struct lr_tz *tz = load("America/Chicago");
    int64_t spring = 1772956800, fall = 1793516400;
    cr_expect_eq(lr_tz_next_change(tz, utc(2026, 1, 1, 0, 0, 0)), spring);
    cr_expect_eq(lr_tz_next_change(tz, spring - 1), spring);
    cr_expect_eq(lr_tz_next_change(tz, spring), spring, "the bound is inclusive");
    cr_expect_eq(lr_tz_next_change(tz, spring + 1), fall);
    cr_expect_eq(lr_tz_next_change(tz, fall + 1), utc(2027, 3, 14, 8, 0, 0));
    /* Past the sampled range nothing changes any more. */
    cr_expect_eq(lr_tz_next_change(tz, utc(2100, 1, 1, 0, 0, 0)), INT64_MAX);
    cr_expect_eq(lr_tz_next_change(tz, INT64_MAX), INT64_MAX);
    cr_expect_eq(lr_tz_next_change(tz, INT64_MIN), utc(1970, 4, 26, 8, 0, 0));
    lr_tz_free(tz);
}

Test(tz, iso_weeks)
{
    struct lr_tz *tz = load("UTC");
    expect_iso(tz, utc(2026, 1, 1, 12, 0, 0), 2026, 1, 3);   /* Thursday */
    expect_iso(tz, utc(2027, 1, 1, 12, 0, 0), 2026, 53, 4);  /* Friday */
    expect_iso(tz, utc(2024, 12, 30, 12, 0, 0), 2025, 1, 0); /* Monday */
    expect_iso(tz, utc(2021, 1, 3, 12, 0, 0), 2020, 53, 6);  /* Sunday */
    expect_iso(tz, utc(2020, 12, 31, 12, 0, 0), 2020, 53, 3);
    expect_iso(tz, utc(2026, 12, 28, 0, 0, 0), 2026, 53, 0);
    expect_iso(tz, utc(1970, 1, 1, 0, 0, 0), 1970, 1, 3);
    expect_iso(tz, utc(1969, 12, 29, 0, 0, 0), 1970, 1, 0);
    expect_iso(tz, utc(1969, 12, 28, 23, 59, 59), 1969, 52, 6);
    lr_tz_free(tz);
}

Test(tz, iso_week_follows_local_date)
{
    /* 2027-01-01 03:00 UTC is still 2026-12-31 (Thursday, W53) in Chicago. */
    struct lr_tz *tz = load("America/Chicago");
    expect_civil(tz, utc(2027, 1, 1, 3, 0, 0), 2026, 12, 31, 21, 0, 3);
    expect_iso(tz, utc(2027, 1, 1, 3, 0, 0), 2026, 53, 3);
    lr_tz_free(tz);
}

Test(tz, utc_is_one_entry)
{
    const char *names[] = {"UTC", "Etc/UTC"};
    for (size_t i = 0; i < 2; i++) {
        struct lr_tz *tz = load(names[i]);
        cr_expect_str_eq(tz->name, names[i]);
        cr_expect_eq(tz->n, 1u, "%s has %u entries", names[i], tz->n);
        cr_expect_eq(tz->off[0], 0);
        cr_expect_eq(lr_tz_offset(tz, utc(2026, 7, 1, 0, 0, 0)), 0);
        cr_expect_eq(lr_tz_next_change(tz, 0), INT64_MAX);
        lr_tz_free(tz);
    }
}

Test(tz, kolkata_half_hour)
{
    struct lr_tz *tz = load("Asia/Kolkata");
    cr_expect_eq(tz->n, 1u);
    cr_expect_eq(lr_tz_offset(tz, utc(2026, 6, 1, 0, 0, 0)), 19800);
    expect_civil(tz, utc(2026, 6, 1, 0, 0, 0), 2026, 6, 1, 5, 30, 0);
    expect_civil(tz, utc(2026, 12, 31, 18, 29, 0), 2026, 12, 31, 23, 59, 3);
    expect_civil(tz, utc(2026, 12, 31, 18, 30, 0), 2027, 1, 1, 0, 0, 4);
    cr_expect_eq(lr_tz_next_change(tz, 0), INT64_MAX);
    lr_tz_free(tz);
}

Test(tz, lord_howe_half_hour_dst)
{
    struct lr_tz *tz = load("Australia/Lord_Howe");
    int64_t end = utc(2026, 4, 4, 15, 0, 0), start = utc(2026, 10, 3, 15, 30, 0);
    cr_expect_eq(lr_tz_offset(tz, end - 1), 39600);
    cr_expect_eq(lr_tz_offset(tz, end), 37800);
    cr_expect_eq(lr_tz_offset(tz, start - 1), 37800);
    cr_expect_eq(lr_tz_offset(tz, start), 39600);
    expect_civil(tz, end - 1, 2026, 4, 5, 1, 59, 6);
    expect_civil(tz, end, 2026, 4, 5, 1, 30, 6);
    expect_civil(tz, start - 1, 2026, 10, 4, 1, 59, 6);
    expect_civil(tz, start, 2026, 10, 4, 2, 30, 6);
    cr_expect_eq(lr_tz_next_change(tz, end + 1), start);
    lr_tz_free(tz);
}

Test(tz, london)
{
    struct lr_tz *tz = load("Europe/London");
    int64_t bst = utc(2026, 3, 29, 1, 0, 0), gmt = utc(2026, 10, 25, 1, 0, 0);
    cr_expect_eq(lr_tz_offset(tz, bst - 1), 0);
    cr_expect_eq(lr_tz_offset(tz, bst), 3600);
    cr_expect_eq(lr_tz_offset(tz, gmt - 1), 3600);
    cr_expect_eq(lr_tz_offset(tz, gmt), 0);
    expect_civil(tz, bst, 2026, 3, 29, 2, 0, 6);
    expect_civil(tz, gmt - 1, 2026, 10, 25, 1, 59, 6);
    expect_civil(tz, gmt, 2026, 10, 25, 1, 0, 6);
    cr_expect_eq(lr_tz_next_change(tz, bst), bst);
    cr_expect_eq(lr_tz_next_change(tz, bst + 1), gmt);
    lr_tz_free(tz);
}

/* splitmix64: a fixed seed keeps failures reproducible. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void expect_like_tm(const struct lr_tz *tz, int64_t t, const struct tm *tm, long gmtoff)
{
    struct lr_civil c;
    lr_tz_civil(tz, t, &c);
    char iso[32];
    strftime(iso, sizeof iso, "%G %V", tm);
    int gy = 0, gw = 0;
    cr_assert_eq(sscanf(iso, "%d %d", &gy, &gw), 2);
    cr_assert(lr_tz_offset(tz, t) == gmtoff && c.year == tm->tm_year + 1900 && c.mon == tm->tm_mon + 1 &&
                  c.mday == tm->tm_mday && c.hour == tm->tm_hour && c.min == tm->tm_min &&
                  c.wday == (tm->tm_wday + 6) % 7 && c.iso_year == gy && c.iso_week == gw,
              "%s @%lld: got off %d %04d-%02d-%02d %02d:%02d wday %d %d-W%02d; libc off %ld %04d-%02d-%02d "
              "%02d:%02d wday %d %d-W%02d",
              tz->name, (long long)t, lr_tz_offset(tz, t), c.year, c.mon, c.mday, c.hour, c.min, c.wday,
              c.iso_year, c.iso_week, gmtoff, tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour,
              tm->tm_min, (tm->tm_wday + 6) % 7, gy, gw);
}

Test(tz, matches_libc_2000_to_2099)
{
    const char *zones[] = {"America/Chicago",   "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata",
                           "America/Sao_Paulo", "Pacific/Apia",  "Africa/Casablanca",   "America/St_Johns"};
    int64_t from = utc(2000, 1, 1, 0, 0, 0), to = utc(2100, 1, 1, 0, 0, 0);
    uint64_t seed = 20260308;
    for (size_t z = 0; z < sizeof zones / sizeof zones[0]; z++) {
        struct lr_tz *tz = load(zones[z]);
        cr_assert_eq(setenv("TZ", zones[z], 1), 0);
        tzset();
        for (int i = 0; i < 20000; i++) {
            int64_t t = from + (int64_t)(rng_next(&seed) % (uint64_t)(to - from));
            /* Every other sample sits right at or next to a transition. */
            if (i % 2 == 1) {
                int64_t ch = lr_tz_next_change(tz, t);
                if (ch != INT64_MAX)
                    t = ch - 1 + (int64_t)(rng_next(&seed) % 3);
            }
            time_t tt = (time_t)t;
            struct tm tm;
            cr_assert_not_null(localtime_r(&tt, &tm));
            expect_like_tm(tz, t, &tm, tm.tm_gmtoff);
        }
        lr_tz_free(tz);
    }
    unsetenv("TZ");
    tzset();
}

Test(tz, civil_arithmetic_matches_gmtime_incl_negative)
{
    /* A hand-made fixed-offset table: the arithmetic alone, no tz database. */
    int64_t at[] = {0};
    int32_t off[] = {0};
    struct lr_tz fixed = {.name = "fixed", .at = at, .off = off, .n = 1};
    uint64_t seed = 7;
    for (int i = 0; i < 200000; i++) {
        /* Years 100..5000, plus a dense band around the epoch. */
        int64_t t = (i % 4 == 0) ? (int64_t)(rng_next(&seed) % 400000000u) - 200000000
                                 : (int64_t)(rng_next(&seed) % 154838400000u) - 59011459200;
        off[0] = (int32_t)(rng_next(&seed) % 93601) - 46800; /* -13:00 .. +13:00 */
        time_t tt = (time_t)(t + off[0]);
        struct tm tm;
        cr_assert_not_null(gmtime_r(&tt, &tm));
        expect_like_tm(&fixed, t, &tm, off[0]);
    }
    off[0] = 0;
    expect_civil(&fixed, -1, 1969, 12, 31, 23, 59, 2);
    expect_civil(&fixed, -86400 * 365, 1969, 1, 1, 0, 0, 2);
}

Test(tz, extreme_instants_stay_in_range)
{
    struct lr_tz *tz = load("America/Chicago");
    int64_t ts[] = {INT64_MIN,          INT64_MIN + 1, -((int64_t)1 << 56),
                    ((int64_t)1 << 56), INT64_MAX - 1, INT64_MAX};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        struct lr_civil c;
        lr_tz_civil(tz, ts[i], &c);
        cr_expect(c.mon >= 1 && c.mon <= 12 && c.mday >= 1 && c.mday <= 31 && c.hour >= 0 && c.hour <= 23 &&
                      c.min >= 0 && c.min <= 59 && c.wday >= 0 && c.wday <= 6 && c.iso_week >= 1 &&
                      c.iso_week <= 53,
                  "@%lld: %d-%d-%d %d:%d wday %d W%d", (long long)ts[i], c.year, c.mon, c.mday, c.hour, c.min,
                  c.wday, c.iso_week);
        cr_expect((ts[i] < 0) == (c.year < 1970));
    }
    lr_tz_free(tz);
}

Test(tz, hand_made_table)
{
    /* off[0] holds before at[0] too; a repeated offset is not a change. */
    int64_t at[] = {1000, 2000, 3000, 4000};
    int32_t off[] = {3600, 7200, 7200, 3600};
    struct lr_tz tz = {.name = "hand", .at = at, .off = off, .n = 4};
    cr_expect_eq(lr_tz_offset(&tz, INT64_MIN), 3600);
    cr_expect_eq(lr_tz_offset(&tz, 999), 3600);
    cr_expect_eq(lr_tz_offset(&tz, 1999), 3600);
    cr_expect_eq(lr_tz_offset(&tz, 2000), 7200);
    cr_expect_eq(lr_tz_offset(&tz, 3999), 7200);
    cr_expect_eq(lr_tz_offset(&tz, 4000), 3600);
    cr_expect_eq(lr_tz_offset(&tz, INT64_MAX), 3600);
    cr_expect_eq(lr_tz_next_change(&tz, INT64_MIN), 2000);
    cr_expect_eq(lr_tz_next_change(&tz, 2001), 4000);
    cr_expect_eq(lr_tz_next_change(&tz, 4001), INT64_MAX);
    lr_tz_free(NULL);
}

static void expect_rejected(const char *name, const char *shown)
{
    char err[256] = "";
    struct lr_tz *tz = tzdb_load(name, err, sizeof err);
    cr_expect_null(tz, "'%s' was accepted", shown);
    lr_tz_free(tz);
    char want[128];
    snprintf(want, sizeof want, "unknown time zone '%s'", shown);
    cr_expect_str_eq(err, want);
}

Test(tzdb, rejects_unknown_and_hostile_names)
{
    expect_rejected("Mars/Olympus", "Mars/Olympus");
    expect_rejected("../etc/passwd", "../etc/passwd");
    expect_rejected("/etc/localtime", "/etc/localtime");
    expect_rejected("", "");
    expect_rejected("America", "America"); /* a directory */
    expect_rejected("America/../Europe/London", "America/../Europe/London");
    expect_rejected("America/Chicago ", "America/Chicago ");
    expect_rejected("America/Chicago,M3.2.0", "America/Chicago,M3.2.0");
    expect_rejected("CST6CDT,M3.2.0,M11.1.0", "CST6CDT,M3.2.0,M11.1.0"); /* a POSIX rule, not a name */
    expect_rejected("iso3166.tab", "iso3166.tab");                       /* a file, not a zone */
    char longname[80];
    memset(longname, 'A', 65);
    longname[65] = '\0';
    expect_rejected(longname, longname);
    expect_rejected("Europe/\x1b[31mLondon\n", "Europe/?[31mLondon?"); /* shown, but defused */
    char huge[200];
    memset(huge, 'B', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    char shown[90];
    snprintf(shown, sizeof shown, "%.80s...", huge);
    expect_rejected(huge, shown);
    /* No err buffer is fine too. */
    cr_expect_null(tzdb_load("Mars/Olympus", NULL, 0));
}

Test(tzdb, leap_second_zones_are_refused)
{
    char err[256] = "";
    struct lr_tz *tz = tzdb_load("right/America/Chicago", err, sizeof err);
    if (tz == NULL && strstr(err, "unknown") != NULL)
        cr_skip_test("no right/ zones installed");
    cr_expect_null(tz);
    cr_expect(strstr(err, "right/America/Chicago") != NULL, "%s", err);
    lr_tz_free(tz);
}

static void expect_tz_env(const char *want)
{
    const char *got = getenv("TZ");
    if (want == NULL)
        cr_expect_null(got, "TZ is '%s', should be unset", got);
    else
        cr_expect(got != NULL && strcmp(got, want) == 0, "TZ is '%s', want '%s'", got ? got : "(unset)",
                  want);
}

Test(tzdb, leaves_tz_as_found)
{
    /* Set: same value, and libc really uses it again. */
    cr_assert_eq(setenv("TZ", "Asia/Tokyo", 1), 0);
    tzset();
    struct lr_tz *tz = load("America/Chicago");
    lr_tz_free(tz);
    expect_tz_env("Asia/Tokyo");
    time_t t = (time_t)utc(2026, 1, 1, 0, 0, 0);
    struct tm tm;
    localtime_r(&t, &tm);
    cr_expect_eq(tm.tm_gmtoff, 32400);

    /* Unset: still unset, libc back to UTC. */
    unsetenv("TZ");
    tzset();
    tz = load("Europe/London");
    lr_tz_free(tz);
    expect_tz_env(NULL);
    localtime_r(&t, &tm);
    cr_expect_eq(tm.tm_gmtoff, 0);

    /* Rejected names do not touch it either. */
    cr_assert_eq(setenv("TZ", "Europe/Paris", 1), 0);
    cr_expect_null(tzdb_load("Mars/Olympus", NULL, 0));
    expect_tz_env("Europe/Paris");
    unsetenv("TZ");
}

/* A TZDIR of our own: zone files that are broken, truncated or not files. */
static char tzdir[64];

static void write_file(const char *rel, const void *p, size_t len)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tzdir, rel);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(p, 1, len, f), len);
    fclose(f);
}

static void rm_rf_tzdir(void)
{
    const char *names[] = {"Test/Zone", "Test/Cut", "Test/Junk", "Test/Pipe", "Test/Bad", "Test"};
    char path[256];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tzdir, names[i]);
        if (unlink(path) != 0)
            rmdir(path);
    }
    rmdir(tzdir);
}

Test(tzdb, honours_tzdir_and_rejects_broken_files)
{
    strcpy(tzdir, "/tmp/lr_tzdir_XXXXXX");
    cr_assert_not_null(mkdtemp(tzdir));
    char path[256];
    snprintf(path, sizeof path, "%s/Test", tzdir);
    cr_assert_eq(mkdir(path, 0700), 0);

    /* A copy of Chicago under another name loads through TZDIR. */
    FILE *f = fopen("/usr/share/zoneinfo/America/Chicago", "rb");
    cr_assert_not_null(f);
    static unsigned char real[65536];
    size_t len = fread(real, 1, sizeof real, f);
    fclose(f);
    cr_assert_gt(len, 100u);
    write_file("Test/Zone", real, len);
    cr_assert_eq(setenv("TZDIR", tzdir, 1), 0);
    struct lr_tz *tz = load("Test/Zone");
    cr_expect_eq(lr_tz_offset(tz, 1772956800), -18000);
    cr_expect_eq(lr_tz_next_change(tz, utc(2026, 1, 1, 0, 0, 0)), 1772956800);
    lr_tz_free(tz);
    expect_rejected("America/Chicago", "America/Chicago"); /* not in this TZDIR */

    /* Not a zone: glibc would read these as UTC without a word. */
    write_file("Test/Junk", "TZif but not really a zone file at all, just text\n", 51);
    expect_rejected("Test/Junk", "Test/Junk");
    snprintf(path, sizeof path, "%s/Test/Pipe", tzdir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    expect_rejected("Test/Pipe", "Test/Pipe");

    /* Every truncation of a real zone file is refused, without crashing. */
    for (size_t cut = 0; cut < len; cut += (cut < 200 ? 1 : 7)) {
        write_file("Test/Cut", real, cut);
        expect_rejected("Test/Cut", "Test/Cut");
    }

    /* Corrupt header counts, in either header: refused or loaded, never a
     * crash or a hang. */
    const unsigned char *h2 = memmem(real + 4, len - 4, "TZif", 4);
    cr_assert_not_null(h2);
    uint64_t seed = 99;
    for (int i = 0; i < 300; i++) {
        static unsigned char bad[65536];
        memcpy(bad, real, len);
        size_t at = (i % 2 ? (size_t)(h2 - real) : 0) + 20 + (size_t)(rng_next(&seed) % 24);
        bad[at] = (unsigned char)rng_next(&seed);
        write_file("Test/Bad", bad, len);
        char err[256];
        lr_tz_free(tzdb_load("Test/Bad", err, sizeof err));
    }
    unsetenv("TZDIR");
    rm_rf_tzdir();
}
