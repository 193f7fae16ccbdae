/* codec.h - msgpack payload -> validated struct lead (SPEC section 2). */
#ifndef LEADROUTER_CODEC_H
#define LEADROUTER_CODEC_H

#include <stddef.h>

#include "leadrouter/common.h"
#include "leadrouter/lead.h"

/* A decoded lead and the memory behind it (opaque; reusable). */
struct codec_lead;

struct codec_lead *codec_lead_new(void);
void codec_lead_free(struct codec_lead *cl); /* accepts NULL */

/* Decodes and validates one payload of len bytes, refusing payloads larger
 * than max_bytes before unpacking. Returns 0, or -1 with a reason in err of
 * the form "<code>: <detail>", where <code> is one of: too_large, truncated,
 * trailing_bytes, too_complex, malformed, not_a_map, duplicate_key,
 * missing_id, invalid_id, bad_type, out_of_range, invalid_utf8. The reason names keys,
 * never values, so it is safe to log. On success the lead points into cl
 * and into buf's copy kept by cl; valid until the next decode or free. */
int codec_lead_decode(struct codec_lead *cl, const char *buf, size_t len, size_t max_bytes,
                      char *err, size_t errlen) LR_WUR;

/* The lead of the last successful decode. */
const struct lead *codec_lead_get(const struct codec_lead *cl);

#endif
