/* table.c - building, compiling and freeing the routing table. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct rules_table *rules_table_new(void)
{
    return calloc(1, sizeof(struct rules_table));
}

void *rules_grow(void *arr, uint32_t n, size_t sz)
{
    /* The capacity is implicit: 4, then doubled each time n reaches it. */
    if (n != 0 && (n < 4 || (n & (n - 1)) != 0))
        return arr;
    return realloc(arr, (n ? (size_t)n * 2 : 4) * sz);
}

/* Appends one zeroed element of size sz to *arr (holding *n). */
static void *append(void **arr, uint32_t *n, size_t sz)
{
    void *na = rules_grow(*arr, *n, sz);
    if (!na)
        return NULL;
    *arr = na;
    void *e = (char *)*arr + (size_t)(*n) * sz;
    memset(e, 0, sz);
    (*n)++;
    return e;
}

struct rules_niche *rules_add_niche(struct rules_table *t)
{
    return append((void **)&t->niches, &t->n_niches, sizeof *t->niches);
}

struct rules_dealer *rules_add_dealer(struct rules_table *t)
{
    struct rules_dealer *d = append((void **)&t->dealers, &t->n_dealers, sizeof *t->dealers);
    if (d) {
        d->tier = 1;
        d->weight = 1;
    }
    return d;
}

struct rules_grade *rules_add_grade(struct rules_table *t)
{
    return append((void **)&t->grades, &t->n_grades, sizeof *t->grades);
}

struct rules_weight *rules_add_weight(struct rules_table *t)
{
    return append((void **)&t->weights, &t->n_weights, sizeof *t->weights);
}

int rules_add_tz(struct rules_table *t, struct lr_tz *tz)
{
    struct lr_tz **slot = append((void **)&t->tzs, &t->n_tzs, sizeof *t->tzs);
    if (!slot)
        return -1;
    *slot = tz;
    return (int)(t->n_tzs - 1);
}

int rules_find_tz(const struct rules_table *t, const char *name)
{
    for (uint32_t i = 0; i < t->n_tzs; i++)
        if (strcmp(t->tzs[i]->name, name) == 0)
            return (int)i;
    return -1;
}

const char *rules_intern_file(struct rules_table *t, const char *path)
{
    for (uint32_t i = 0; i < t->n_files; i++)
        if (strcmp(t->files[i], path) == 0)
            return t->files[i];
    char *copy = strdup(path);
    char **slot = copy ? append((void **)&t->files, &t->n_files, sizeof *t->files) : NULL;
    if (!slot) {
        free(copy);
        return NULL;
    }
    *slot = copy;
    return copy;
}

int rules_niche_find(const struct rules_table *t, const char *name, size_t len)
{
    if (t->compiled) {
        uint32_t n;
        const uint32_t *v = smap_get(&t->cls->names, 0, name, len, &n);
        return n ? (int)v[0] : -1;
    }
    for (uint32_t i = 0; i < t->n_niches; i++)
        if (strlen(t->niches[i].name) == len && memcmp(t->niches[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

int rules_dealer_find(const struct rules_table *t, const char *id, size_t len)
{
    if (t->compiled) {
        uint32_t n;
        const uint32_t *v = len <= SMAP_MAX_KEY ? smap_get(&t->cls->dealers, 0, id, len, &n) : NULL;
        return v && n ? (int)v[0] : -1;
    }
    for (uint32_t i = 0; i < t->n_dealers; i++)
        if (strlen(t->dealers[i].id) == len && memcmp(t->dealers[i].id, id, len) == 0)
            return (int)i;
    return -1;
}

int rules_grade_find(const struct rules_table *t, const char *name, size_t len)
{
    for (uint32_t i = 0; i < t->n_grades; i++)
        if (strlen(t->grades[i].name) == len && memcmp(t->grades[i].name, name, len) == 0)
            return (int)i;
    return -1;
}

static void free_strv(char **v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void free_filter(struct rules_filter *f)
{
    free(f->path);
    free(f->key);
    for (uint32_t i = 0; i < f->n_vals; i++)
        if (f->vals[i].type == LEAD_V_STR)
            free((char *)f->vals[i].s.p);
    free(f->vals);
}

static void classify_free(struct rules_classify *c)
{
    if (!c)
        return;
    smap_free(&c->names);
    smap_free(&c->dealers);
    smap_free(&c->sources);
    smap_free(&c->keywords);
    free(c);
}

void rules_table_free(struct rules_table *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->n_niches; i++) {
        struct rules_niche *n = &t->niches[i];
        free(n->name);
        free_strv(n->sources, n->n_sources);
        free_strv(n->keywords, n->n_keywords);
        free(n->members);
    }
    free(t->niches);
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        struct rules_dealer *d = &t->dealers[i];
        free(d->id);
        free(d->name);
        free(d->niches);
        free_strv(d->states, d->n_states);
        free_strv(d->zips, d->n_zips);
        free_strv(d->prefixes, d->n_prefixes);
        for (uint32_t k = 0; k < d->n_filters; k++)
            free_filter(&d->filters[k]);
        free(d->filters);
    }
    free(t->dealers);
    for (uint32_t i = 0; i < t->n_grades; i++)
        free(t->grades[i].name);
    free(t->grades);
    for (uint32_t i = 0; i < t->n_weights; i++)
        free(t->weights[i].signal);
    free(t->weights);
    for (uint32_t i = 0; i < t->n_tzs; i++)
        lr_tz_free(t->tzs[i]);
    free(t->tzs);
    free_strv(t->files, t->n_files);
    if (t->terr) {
        terr_free(t->terr);
        free(t->terr);
    }
    classify_free(t->cls);
    free(t->hot);
    free(t->dhot);
    free(t->dweight);
    free(t->cfilters);
    free(t->geo);
    free(t->geo_exact);
    free(t->fkeys);
    free(t->rid_cf);
    free(t);
}

static const char *where_file(const struct rules_where *w)
{
    return w->file ? w->file : "(config)";
}

static int build_classify(struct rules_table *t)
{
    struct smap_builder names = {0}, sources = {0}, keywords = {0}, dealers = {0};
    t->cls = calloc(1, sizeof *t->cls);
    if (!t->cls)
        return -1;
    int rc = 0;
    for (uint32_t i = 0; i < t->n_dealers && rc == 0; i++)
        rc |= smap_builder_add(&dealers, 0, t->dealers[i].id, strlen(t->dealers[i].id), i);
    for (uint32_t i = 0; i < t->n_niches && rc == 0; i++) {
        const struct rules_niche *n = &t->niches[i];
        rc |= smap_builder_add(&names, 0, n->name, strlen(n->name), i);
        for (uint32_t k = 0; k < n->n_sources; k++)
            rc |= smap_builder_add(&sources, 0, n->sources[k], strlen(n->sources[k]), i);
        for (uint32_t k = 0; k < n->n_keywords; k++)
            rc |= smap_builder_add(&keywords, 0, n->keywords[k], strlen(n->keywords[k]), i);
    }
    if (rc || smap_build(&t->cls->names, &names) || smap_build(&t->cls->sources, &sources) ||
        smap_build(&t->cls->keywords, &keywords) || smap_build(&t->cls->dealers, &dealers)) {
        smap_builder_free(&names);
        smap_builder_free(&sources);
        smap_builder_free(&keywords);
        smap_builder_free(&dealers);
        return -1;
    }
    return 0;
}

/* Duplicate names: sort indexes by name and compare neighbours, so a table
 * with thousands of dealers compiles in n log n. */
static const struct rules_table *dup_table;

static int dealer_id_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(dup_table->dealers[x].id, dup_table->dealers[y].id);
    return c ? c : (x > y) - (x < y);
}

static int check_duplicates(const struct rules_table *t, char *err, size_t errlen)
{
    for (uint32_t i = 0; i < t->n_niches; i++)
        for (uint32_t j = i + 1; j < t->n_niches; j++)
            if (strcmp(t->niches[i].name, t->niches[j].name) == 0) {
                snprintf(err, errlen, "%s:%d: duplicate niche '%s' (first defined at %s:%d)",
                         where_file(&t->niches[j].where), t->niches[j].where.line, t->niches[j].name,
                         where_file(&t->niches[i].where), t->niches[i].where.line);
                return -1;
            }
    if (t->n_dealers < 2)
        return 0;
    uint32_t *ix = malloc(t->n_dealers * sizeof *ix);
    if (!ix) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < t->n_dealers; i++)
        ix[i] = i;
    dup_table = t;
    qsort(ix, t->n_dealers, sizeof *ix, dealer_id_cmp);
    int rc = 0;
    for (uint32_t i = 1; i < t->n_dealers && rc == 0; i++) {
        const struct rules_dealer *a = &t->dealers[ix[i - 1]], *b = &t->dealers[ix[i]];
        if (strcmp(a->id, b->id) == 0) {
            snprintf(err, errlen, "%s:%d: duplicate dealer id '%s' (first defined at %s:%d)",
                     where_file(&b->where), b->where.line, b->id, where_file(&a->where), a->where.line);
            rc = -1;
        }
    }
    free(ix);
    return rc;
}

void rules_geo_point(double lat, double lon, double out[3])
{
    double la = lat * M_PI / 180.0, lo = lon * M_PI / 180.0;
    out[0] = cos(la) * cos(lo);
    out[1] = cos(la) * sin(lo);
    out[2] = sin(la);
}

static bool scalar_same(const struct lead_value *a, const struct lead_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case LEAD_V_BOOL:
        return a->b == b->b;
    case LEAD_V_INT:
        return a->i == b->i;
    case LEAD_V_FLOAT:
        return a->f == b->f;
    case LEAD_V_STR:
        return a->s.len == b->s.len && memcmp(a->s.p, b->s.p, a->s.len) == 0;
    default:
        return true;
    }
}

static bool filter_same(const struct rules_filter *a, const struct rules_filter *b)
{
    if (a->target != b->target || a->op != b->op || a->n_vals != b->n_vals || a->num != b->num ||
        a->exists != b->exists || (a->target == FT_FIELD && strcmp(a->key, b->key) != 0))
        return false;
    for (uint32_t i = 0; i < a->n_vals; i++)
        if (!scalar_same(&a->vals[i], &b->vals[i]))
            return false;
    return true;
}

static uint64_t filter_sig(const struct rules_filter *f)
{
    uint64_t h = (uint64_t)f->target * 31 + (uint64_t)f->op * 7 + f->n_vals + (f->exists ? 1000 : 0);
    for (const char *p = f->key; p && *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    if (f->n_vals && f->vals[0].type != LEAD_V_STR)
        h ^= (uint64_t)f->vals[0].i * 0x9e3779b97f4a7c15ULL; /* the union's bits */
    return h;
}

/* Gives identical filters one result id (a hash of signatures, checked
 * for real equality), so a decision evaluates each distinct filter once. */
struct rid_map {
    uint64_t *sig;
    const struct rules_filter **rep;
    uint32_t *rid;
    uint32_t mask;
};

static uint32_t rid_of(struct rules_table *t, struct rid_map *m, const struct rules_filter *f)
{
    uint64_t sig = filter_sig(f) | 1;
    for (uint32_t p = (uint32_t)sig & m->mask;; p = (p + 1) & m->mask) {
        if (!m->sig[p]) {
            m->sig[p] = sig;
            m->rep[p] = f;
            m->rid[p] = t->n_rids++;
            return m->rid[p];
        }
        if (m->sig[p] == sig && filter_same(m->rep[p], f))
            return m->rid[p];
    }
}

static int compile_filter(struct rules_table *t, struct rid_map *m, struct rules_filter *f,
                          struct rules_cfilter *cf)
{
    cf->rid = rid_of(t, m, f);
    f->key_len = f->key ? (uint32_t)strlen(f->key) : 0;
    cf->target = (uint8_t)f->target;
    cf->op = (uint8_t)f->op;
    cf->exists = f->exists;
    cf->num = f->num;
    if (f->n_vals)
        cf->val = f->vals[0];
    cf->src = f;
    if (f->target != FT_FIELD)
        return 0;
    /* Intern the field name: a decision looks each one up once. */
    uint32_t id = 0;
    while (id < t->n_fkeys && strcmp(t->fkeys[id], f->key) != 0)
        id++;
    if (id == t->n_fkeys) {
        const char **nk = realloc(t->fkeys, (t->n_fkeys + 1) * sizeof *nk);
        if (!nk)
            return -1;
        t->fkeys = nk;
        t->fkeys[t->n_fkeys++] = f->key;
    }
    cf->fid = id;
    return 0;
}

static int compile_hot(struct rules_table *t)
{
    size_t n = t->n_dealers ? t->n_dealers : 1, nf = 1;
    for (uint32_t i = 0; i < t->n_dealers; i++)
        nf += t->dealers[i].n_filters;
    t->hot = smap_alloc_table(n * sizeof *t->hot);
    t->dhot = smap_alloc_table(n * sizeof *t->dhot);
    t->dweight = smap_alloc_table(n * sizeof *t->dweight);
    t->cfilters = calloc(nf, sizeof *t->cfilters);
    t->geo = smap_alloc_table(n * sizeof *t->geo);
    t->geo_exact = calloc(n, sizeof *t->geo_exact);
    if (!t->hot || !t->dhot || !t->dweight || !t->cfilters || !t->geo || !t->geo_exact)
        return -1;
    struct rid_map m = {0};
    uint32_t size = 16;
    while (size < nf * 2)
        size <<= 1;
    m.mask = size - 1;
    m.sig = calloc(size, sizeof *m.sig);
    m.rep = calloc(size, sizeof *m.rep);
    m.rid = calloc(size, sizeof *m.rid);
    int rc = 0;
    if (!m.sig || !m.rep || !m.rid)
        rc = -1;
    uint32_t fo = 0;
    for (uint32_t i = 0; i < t->n_dealers && rc == 0; i++) {
        struct rules_dealer *d = &t->dealers[i];
        struct rules_hot *h = &t->hot[i];
        h->grades = d->grades;
        h->min_score = (int16_t)d->min_score;
        h->tier = (uint16_t)d->tier;
        h->weight = (uint32_t)d->weight;
        h->tz = (uint16_t)d->tz;
        h->from = d->hours.from;
        h->to = d->hours.to;
        h->days = d->hours.days;
        h->max_pending = d->max_pending;
        memcpy(h->caps, d->caps, sizeof h->caps);
        h->flags = (uint8_t)((d->exclusive ? RHOT_EXCLUSIVE : 0) | (d->overflow == OVERFLOW_HOLD ? RHOT_HOLD : 0) |
                             (d->hours.set ? RHOT_HOURS : 0) | (d->has_radius ? RHOT_RADIUS : 0));
        h->n_filt = d->n_filters;
        h->filt_off = fo;
        for (uint32_t k = 0; k < d->n_filters && rc == 0; k++)
            rc = compile_filter(t, &m, &d->filters[k], &t->cfilters[fo++]);
        if (d->n_filters && rc == 0)
            h->rid0 = t->cfilters[h->filt_off].rid;
        t->dhot[i] = (struct rules_dhot){
            .rid0 = h->rid0, .min_score = h->min_score, .tier = h->tier, .tz = h->tz, .from = h->from,
            .to = h->to, .days = h->days,
            .flags = (uint8_t)(h->flags | (h->n_filt ? DHOT_FILTER : 0) |
                               (h->grades || h->n_filt > 1 ? DHOT_SLOW : 0))};
        t->dweight[i] = h->weight;
        if (d->has_radius) {
            double u[3], theta = d->km / 6371.0;
            rules_geo_point(d->lat, d->lon, u);
            double c = theta >= M_PI ? 2.0 : 2.0 * sin(theta / 2);
            t->geo_exact[i] = (struct rules_geo_exact){u[0], u[1], u[2], c * c};
            /* Float components are off by up to ~6e-8 each, on both sides:
             * the squared chord by up to ~6 * 1.2e-7 * c. Keep a band of
             * four times that where the doubles decide. */
            double band = 4 * 6 * 1.2e-7 * (c > 1e-6 ? c : 1e-6);
            t->geo[i] = (struct rules_geo){(float)u[0], (float)u[1], (float)u[2], (float)(c * c - band),
                                           (float)(c * c + band)};
        }
    }
    free(m.sig);
    free(m.rep);
    free(m.rid);
    if (rc)
        return rc;
    /* A filter a lead has not met is read from one place, whoever has it. */
    t->rid_cf = malloc((t->n_rids ? t->n_rids : 1) * sizeof *t->rid_cf);
    if (!t->rid_cf)
        return -1;
    for (uint32_t i = fo; i-- > 0;)
        t->rid_cf[t->cfilters[i].rid] = i;
    for (uint32_t i = 0; i < t->n_weights; i++)
        t->weights[i].signal_len = (uint32_t)strlen(t->weights[i].signal);
    return rc;
}

int rules_table_compile(struct rules_table *t, char *err, size_t errlen)
{
    if (t->compiled) {
        snprintf(err, errlen, "routing table compiled twice");
        return -1;
    }
    if (t->n_niches > RULES_MAX_NICHES) {
        snprintf(err, errlen, "%s:%d: too many niches (%u, at most %d)", where_file(&t->niches[0].where),
                 t->niches[0].where.line, t->n_niches, RULES_MAX_NICHES);
        return -1;
    }
    if (t->n_grades == 0 || t->n_tzs == 0 || t->default_tz >= t->n_tzs) {
        snprintf(err, errlen, "routing table has no grades or no default time zone");
        return -1;
    }
    if (check_duplicates(t, err, errlen))
        return -1;
    for (uint32_t i = 0; i < t->n_dealers; i++) {
        const struct rules_dealer *d = &t->dealers[i];
        const char *f = where_file(&d->where);
        if (d->tz >= t->n_tzs || d->n_niches == 0 || d->weight < 1 || d->weight > RULES_MAX_WEIGHT ||
            d->tier < 0 || d->tier > RULES_MAX_TIER) {
            snprintf(err, errlen, "%s:%d: dealer '%s': invalid niches, weight, tier or time zone", f,
                     d->where.line, d->id);
            return -1;
        }
        for (uint32_t k = 0; k < d->n_niches; k++)
            if (d->niches[k] >= t->n_niches) {
                snprintf(err, errlen, "%s:%d: dealer '%s': bad niche index", f, d->where.line, d->id);
                return -1;
            }
    }
    /* Niche members in config order. */
    for (uint32_t ni = 0; ni < t->n_niches; ni++) {
        struct rules_niche *n = &t->niches[ni];
        if (n->max_buyers < 1 || n->max_buyers > RULES_MAX_BUYERS)
            n->max_buyers = 1;
        uint32_t cnt = 0;
        for (uint32_t di = 0; di < t->n_dealers; di++)
            for (uint32_t k = 0; k < t->dealers[di].n_niches; k++)
                cnt += t->dealers[di].niches[k] == ni;
        n->members = malloc((cnt ? cnt : 1) * sizeof *n->members);
        if (!n->members)
            goto oom;
        n->n_members = 0;
    }
    for (uint32_t di = 0; di < t->n_dealers; di++) {
        struct rules_dealer *d = &t->dealers[di];
        for (uint32_t k = 0; k < d->n_niches; k++) {
            struct rules_niche *n = &t->niches[d->niches[k]];
            n->members[n->n_members++] = di;
        }
    }
    /* Rotation state: one slot per (niche, dealer), computed, not looked up. */
    t->n_rr_slots = t->n_niches * t->n_dealers;
    if (compile_hot(t))
        goto oom;
    t->terr = calloc(1, sizeof *t->terr);
    if (!t->terr || terr_build(t->terr, t))
        goto oom;
    if (build_classify(t))
        goto oom;
    t->compiled = true;
    return 0;
oom:
    snprintf(err, errlen, "out of memory compiling the routing table");
    return -1;
}

int rules_rr_slot(const struct rules_table *t, uint32_t dealer, uint32_t niche)
{
    const struct rules_dealer *d = &t->dealers[dealer];
    for (uint32_t k = 0; k < d->n_niches; k++)
        if (d->niches[k] == niche)
            return (int)(niche * t->n_dealers + dealer);
    return -1;
}
