/* tz.h - a time zone as a table of UTC offsets, and civil time in it.
 * Pure: the table is filled from the system tz database by tzdb_load()
 * (daemon/tzdb.c, see tzdb.h); lookups here do no I/O. */
#ifndef LEADROUTER_TZ_H
#define LEADROUTER_TZ_H

#include <stdint.h>

/* Offsets: off[i] seconds east of UTC apply from at[i] (unix seconds) until
 * at[i+1]; off[0] also applies before at[0]. n >= 1. All owned. */
struct lr_tz {
    char *name;
    int64_t *at;
    int32_t *off;
    uint32_t n;
};

/* Civil time in a zone. wday: 0 = Monday ... 6 = Sunday. */
struct lr_civil {
    int year, mon, mday; /* mon 1..12 */
    int hour, min;
    int wday;
    int iso_year, iso_week; /* ISO 8601 week date */
};

int32_t lr_tz_offset(const struct lr_tz *tz, int64_t unix_s);
void lr_tz_civil(const struct lr_tz *tz, int64_t unix_s, struct lr_civil *out);
/* First instant >= unix_s at which the offset changes, or INT64_MAX. */
int64_t lr_tz_next_change(const struct lr_tz *tz, int64_t unix_s);
void lr_tz_free(struct lr_tz *tz); /* accepts NULL */

#endif
