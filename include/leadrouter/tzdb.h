/* tzdb.h - load a time zone from the system tz database (IANA names). */
#ifndef LEADROUTER_TZDB_H
#define LEADROUTER_TZDB_H

#include <stddef.h>

#include "leadrouter/common.h"
#include "leadrouter/tz.h"

/* Returns a new zone (free with lr_tz_free), or NULL with a reason in err
 * ("unknown time zone 'X'"). Not thread-safe: it switches TZ while it
 * samples libc's localtime_r, and restores it. */
struct lr_tz *tzdb_load(const char *name, char *err, size_t errlen) LR_WUR;

#endif
