/* log.c - stderr logging with journald priority prefixes. */
#include <stdarg.h>
#include <stdio.h>

#include "leadrouter/log.h"

static enum log_level log_max = LOG_LVL_INFO;

void log_set_level(enum log_level max)
{
    log_max = max;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    if (lvl > log_max)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One write per line so concurrent writers do not interleave. */
    fprintf(stderr, "<%d>%s\n", (int)lvl, line);
}
