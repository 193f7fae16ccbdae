/* admin_explain.c - `explain`: a lead given as JSON (converted to the
 * msgpack map a producer would send) or as msgpack goes through the very
 * decoder the daemon uses (codec_lead_decode, so the same validation and
 * reasons apply), then rules_decide + rules_pick on a private copy of the
 * rotation state. Nothing is committed and Redis is not read: rotation and
 * caps are the daemon's last view of them (or an empty state before it
 * has one), which the output says. */
#include <jansson.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leadrouter/admin.h"
#include "leadrouter/codec.h"
#include "leadrouter/config.h"
#include "leadrouter/rules.h"

#define JSON_LEAD_MAX_DEPTH 64 /* the decoder refuses more than 32 anyway */

static int pack_json(msgpack_packer *pk, const json_t *v, int depth, char *err, size_t errlen)
{
    if (depth > JSON_LEAD_MAX_DEPTH) {
        snprintf(err, errlen, "too_complex: JSON nested deeper than %d", JSON_LEAD_MAX_DEPTH);
        return -1;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        msgpack_pack_map(pk, json_object_size(v));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            size_t kl = strlen(k);
            msgpack_pack_str(pk, kl);
            msgpack_pack_str_body(pk, k, kl);
            if (pack_json(pk, x, depth + 1, err, errlen) != 0)
                return -1;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++)
            if (pack_json(pk, json_array_get(v, i), depth + 1, err, errlen) != 0)
                return -1;
        return 0;
    }
    case JSON_STRING: {
        size_t n = json_string_length(v);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, json_string_value(v), n);
        return 0;
    }
    case JSON_INTEGER:
        msgpack_pack_int64(pk, (int64_t)json_integer_value(v));
        return 0;
    case JSON_REAL:
        msgpack_pack_double(pk, json_real_value(v));
        return 0;
    case JSON_TRUE:
        msgpack_pack_true(pk);
        return 0;
    case JSON_FALSE:
        msgpack_pack_false(pk);
        return 0;
    default:
        msgpack_pack_nil(pk);
        return 0;
    }
}

int admin_json_to_msgpack(const char *json, size_t len, char **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    json_error_t je;
    /* Duplicate keys are refused here, as the decoder refuses them in
     * msgpack; NUL inside strings is allowed through (the decoder judges). */
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!root) {
        snprintf(err, errlen, "bad JSON at line %d column %d: %s", je.line, je.column, je.text);
        return -1;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = pack_json(&pk, root, 1, err, errlen);
    json_decref(root);
    if (rc != 0 || !sb.data) {
        if (rc == 0)
            snprintf(err, errlen, "out of memory");
        msgpack_sbuffer_destroy(&sb);
        return -1;
    }
    /* msgpack_sbuffer_release zeroes the size: take it first. */
    *outlen = sb.size;
    *out = msgpack_sbuffer_release(&sb);
    return 0;
}

/* ---- rendering --------------------------------------------------------- */

static json_t *explain_json(const struct rules_table *t, const struct lead *l, const struct rules_decision *d,
                            const uint8_t *paused, const uint32_t *weight, bool live)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "lead_id", json_stringn(l->id.p, l->id.len));
    json_object_set_new(o, "niche", d->niche >= 0 ? json_string(t->niches[d->niche].name) : json_null());
    json_object_set_new(o, "niche_by", json_string(rules_how_str(d->how)));
    json_object_set_new(o, "score", json_integer(d->score));
    json_object_set_new(o, "score_from", json_string(d->score_computed ? "signals" : "lead"));
    json_object_set_new(o, "grade", json_string(t->grades[d->grade].name));
    json_object_set_new(o, "hot", json_boolean(d->hot));
    json_object_set_new(o, "exclusive_owners", json_boolean(d->owners));
    json_object_set_new(o, "hold", json_boolean(d->hold));
    if (d->niche >= 0) {
        const struct rules_niche *n = &t->niches[d->niche];
        json_object_set_new(o, "strategy", json_string(rules_strategy_str(n->strategy)));
        json_object_set_new(o, "max_buyers", json_integer(n->max_buyers));
    }
    json_t *ds = json_array();
    for (uint32_t i = 0; i < d->n_verdicts; i++) {
        const struct rules_verdict *v = &d->verdicts[i];
        const struct rules_dealer *dl = &t->dealers[v->dealer];
        json_t *e = json_object();
        json_object_set_new(e, "dealer", json_string(dl->id));
        json_object_set_new(e, "tier", json_integer(dl->tier));
        json_object_set_new(e, "weight", json_integer(weight ? weight[v->dealer] : (uint32_t)dl->weight));
        json_object_set_new(e, "paused", json_boolean(paused && paused[v->dealer]));
        json_object_set_new(e, "match", json_string(rules_match_str((enum rules_match)v->match)));
        json_object_set_new(e, "why", json_string(rules_why_str((enum rules_why)v->why)));
        if (v->why == WHY_FILTER && v->detail < dl->n_filters)
            json_object_set_new(e, "filter", json_string(dl->filters[v->detail].path));
        if (v->why == WHY_MIN_SCORE)
            json_object_set_new(e, "min_score", json_integer(dl->min_score));
        json_object_set_new(e, "exclusive", json_boolean(dl->exclusive));
        json_object_set_new(e, "owner", json_boolean(dl->exclusive && v->stage == 0 && d->owners));
        json_array_append_new(ds, e);
    }
    json_object_set_new(o, "dealers", ds);
    json_t *pk = json_array();
    for (uint32_t i = 0; i < d->n_picked; i++) {
        char rule[32];
        rules_rule_str(t, d, d->picked[i], rule, sizeof rule);
        json_array_append_new(pk,
                              json_pack("{s:s,s:s}", "dealer", t->dealers[d->picked[i]].id, "rule", rule));
    }
    json_object_set_new(o, "picked", pk);
    json_object_set_new(o, "outcome", json_string(d->n_picked ? "assigned" : rules_reason_str(d->reason)));
    json_object_set_new(
        o, "state",
        json_string(live ? "live: rotation and caps as last read from Redis, nothing committed"
                         : "empty: rotation and caps as of an empty state, nothing committed"));
    return o;
}

/* Runtime controls the config does not show: paused dealers and weight
 * overrides among those considered. */
static size_t controls_note(const struct rules_table *t, const struct rules_decision *d,
                            const uint8_t *paused, const uint32_t *weight, char *buf, size_t len)
{
    size_t off = 0;
    for (uint32_t i = 0; i < d->n_verdicts && off < len; i++) {
        uint32_t di = d->verdicts[i].dealer;
        const struct rules_dealer *dl = &t->dealers[di];
        bool p = paused && paused[di];
        bool w = weight && weight[di] != (uint32_t)dl->weight;
        if (!p && !w)
            continue;
        int n = snprintf(buf + off, len - off, "   runtime: %s%s", dl->id, p ? " paused" : "");
        if (n > 0 && (size_t)n < len - off)
            off += (size_t)n;
        if (w) {
            n = snprintf(buf + off, len - off, " weight %u (config %d)", weight[di], dl->weight);
            if (n > 0 && (size_t)n < len - off)
                off += (size_t)n;
        }
        if (off + 1 < len)
            buf[off++] = '\n';
    }
    if (off < len)
        buf[off] = 0;
    return off;
}

int admin_explain(const struct cfg *c, const uint8_t *paused, const uint32_t *weight, const int64_t *live_rr,
                  const struct rules_usage *usage, const char *payload, size_t len, int64_t now_ms, bool json,
                  char **out, char *err, size_t errlen)
{
    *out = NULL;
    const struct rules_table *t = c->rules;
    struct codec_lead *cl = codec_lead_new();
    struct rules_scratch *s = rules_scratch_new(t);
    int64_t *rr = calloc(t->n_rr_slots ? t->n_rr_slots : 1, sizeof *rr);
    int rc = -1;
    char why[256];
    if (!cl || !s || !rr) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (codec_lead_decode(cl, payload, len, c->limits.max_lead_bytes, why, sizeof why) != 0) {
        snprintf(err, errlen, "dead letter: %s", why);
        goto done;
    }
    const struct lead *l = codec_lead_get(cl);
    bool live = live_rr || usage;
    if (live_rr) /* a copy: the pick moves rotation values */
        memcpy(rr, live_rr, t->n_rr_slots * sizeof *rr);
    struct rules_input in = {.now_ms = now_ms, .paused = paused, .weight = weight, .usage = usage};
    struct rules_decision d;
    rules_decide(t, s, l, &in, &d);
    if (d.reason == REASON_ASSIGNED)
        rules_pick(t, &d, &in, l, rr);
    if (json) {
        json_t *o = explain_json(t, l, &d, paused, weight, live);
        *out = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
    } else {
        size_t n = rules_explain(t, l, &d, NULL, 0);
        size_t note = 4096;
        const char *head =
            live ? "(rotation and caps as this daemon last read them from Redis; nothing committed, "
                   "and the commit checks them again)\n"
                 : "(rotation and caps as of an empty state: not read from Redis yet; nothing "
                   "committed)\n";
        size_t hl = strlen(head);
        char *buf = malloc(hl + n + 1 + note);
        if (buf) {
            memcpy(buf, head, hl);
            size_t off = hl + rules_explain(t, l, &d, buf + hl, n + 1);
            controls_note(t, &d, paused, weight, buf + off, note);
            *out = buf;
        }
    }
    if (!*out)
        snprintf(err, errlen, "out of memory");
    else
        rc = 0;
done:
    codec_lead_free(cl);
    rules_scratch_free(s);
    free(rr);
    return rc;
}
