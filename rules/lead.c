/* lead.c - small accessors of the decoded lead. */
#include "leadrouter/lead.h"

const struct lead_field *lead_field_get(const struct lead *l, const char *key, uint32_t klen)
{
    for (uint32_t i = 0; i < l->n_fields; i++)
        if (l->fields[i].key.len == klen) {
            /* Field names are short: compare inline rather than call memcmp. */
            const char *p = l->fields[i].key.p;
            uint32_t k = 0;
            while (k < klen && p[k] == key[k])
                k++;
            if (k == klen)
                return &l->fields[i];
        }
    return NULL;
}
