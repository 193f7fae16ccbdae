/* lead.c - small accessors of the decoded lead. */
#include "leadrouter/lead.h"

const struct lead_field *lead_field_get(const struct lead *l, const char *key, uint32_t klen)
{
    for (uint32_t i = 0; i < l->n_fields; i++)
        if (l->fields[i].key.len == klen && memcmp(l->fields[i].key.p, key, klen) == 0)
            return &l->fields[i];
    return NULL;
}
