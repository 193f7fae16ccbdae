/* tz.c - UTC offset lookup and civil time (incl. ISO 8601 week date) in a
 * zone given as an offset table. Pure arithmetic: this runs per dealer per
 * lead, so no syscalls, no locale, no libc time functions. */
#include "leadrouter/tz.h"

#include <stdlib.h>

/* Local seconds are clamped to this many seconds either side of the epoch
 * (about 1.1 billion years) so that years fit an int and no arithmetic below
 * can overflow, whatever instant a caller passes. */
#define TZ_LOCAL_LIMIT ((int64_t)1 << 55)

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's
 * days_from_civil): years are shifted to start in March so the leap day is
 * the last day of the shifted year. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;                                   /* 0..399 */
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1; /* 0..365 */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* 0..146096 */
    return era * 146097 + doe - 719468;
}

/* Inverse of days_from_civil. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;                                      /* 0..146096 */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* 0..399 */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* 0..365 */
    int64_t mp = (5 * doy + 2) / 153;                                    /* 0..11 */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

int32_t lr_tz_offset(const struct lr_tz *tz, int64_t unix_s)
{
    if (tz == NULL || tz->n == 0 || tz->at == NULL || tz->off == NULL)
        return 0;
    if (unix_s < tz->at[0])
        return tz->off[0];
    /* Largest i with at[i] <= unix_s; at[lo] <= unix_s holds throughout. */
    uint32_t lo = 0, hi = tz->n;
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (tz->at[mid] <= unix_s)
            lo = mid;
        else
            hi = mid;
    }
    return tz->off[lo];
}

void lr_tz_civil(const struct lr_tz *tz, int64_t unix_s, struct lr_civil *out)
{
    int32_t off = lr_tz_offset(tz, unix_s);
    int64_t local;
    if (unix_s > TZ_LOCAL_LIMIT)
        local = TZ_LOCAL_LIMIT;
    else if (unix_s < -TZ_LOCAL_LIMIT)
        local = -TZ_LOCAL_LIMIT;
    else
        local = unix_s + off;

    int64_t days = floor_div(local, 86400);
    int64_t sod = local - days * 86400;
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    out->year = (int)y;
    out->mon = m;
    out->mday = d;
    out->hour = (int)(sod / 3600);
    out->min = (int)(sod % 3600 / 60);
    /* 1970-01-01 was a Thursday (3 when Monday is 0). */
    int wday = (int)(days + 3 - floor_div(days + 3, 7) * 7);
    out->wday = wday;

    /* An ISO week belongs to the year that holds its Thursday, and week 1 is
     * the week holding that year's first Thursday. */
    int64_t thu = days - wday + 3;
    int64_t ty;
    int tm, td;
    civil_from_days(thu, &ty, &tm, &td);
    out->iso_year = (int)ty;
    out->iso_week = (int)((thu - days_from_civil(ty, 1, 1)) / 7 + 1);
}

int64_t lr_tz_next_change(const struct lr_tz *tz, int64_t unix_s)
{
    if (tz == NULL || tz->n < 2 || tz->at == NULL || tz->off == NULL)
        return INT64_MAX;
    /* First i >= 1 with at[i] >= unix_s; at[0] is not a change (off[0] holds
     * on both sides of it). */
    uint32_t lo = 1, hi = tz->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (tz->at[mid] < unix_s)
            lo = mid + 1;
        else
            hi = mid;
    }
    /* A table may repeat an offset (e.g. only the abbreviation changed
     * upstream); that is not a change. */
    for (uint32_t i = lo; i < tz->n; i++)
        if (tz->off[i] != tz->off[i - 1])
            return tz->at[i];
    return INT64_MAX;
}

void lr_tz_free(struct lr_tz *tz)
{
    if (tz == NULL)
        return;
    free(tz->name);
    free(tz->at);
    free(tz->off);
    free(tz);
}
