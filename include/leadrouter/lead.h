/* lead.h - the decoded lead (SPEC section 2), as the routing core sees it. */
#ifndef LEADROUTER_LEAD_H
#define LEADROUTER_LEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "leadrouter/common.h"

enum lead_value_type { LEAD_V_NIL, LEAD_V_BOOL, LEAD_V_INT, LEAD_V_FLOAT, LEAD_V_STR };

/* A scalar value of a custom field (or of a filter in the config). */
struct lead_value {
    enum lead_value_type type;
    union {
        bool b;
        int64_t i;
        double f;
        struct lr_str s;
    };
};

struct lead_field {
    struct lr_str key;
    struct lead_value v;
};

struct lead_signal {
    struct lr_str key;
    double v;
};

/* Every pointer refers to memory owned by whoever decoded the lead (ref):
 * a struct codec_lead, or a test's static data. Absent strings have len 0. */
struct lead {
    struct lr_str id, niche, source, campaign, country, state, zip;
    const struct lr_str *keywords;
    uint32_t n_keywords;
    const struct lead_signal *signals;
    uint32_t n_signals;
    const struct lead_field *fields;
    uint32_t n_fields;
    int score; /* valid when has_score */
    bool has_score;
    bool has_geo; /* lat and lon both given */
    double lat, lon;
    bool has_created_at;
    int64_t created_at; /* unix ms */
    /* From the opaque `contact` map, only for duplicate/DNC digests.
     * Contact data: never log it. */
    struct lr_str phone, email;
};

/* The custom field named key (bytes), or NULL. */
const struct lead_field *lead_field_get(const struct lead *l, const char *key, uint32_t klen);

#endif
