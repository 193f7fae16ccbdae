/* test_config.c - the config loader: every value of a complete config lands
 * where it should, defaults apply, @include globs append dealers in sorted
 * order, and each validation error names FILE:LINE and what is wrong.
 * Fixtures live in tests/data/config/. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "leadrouter/config.h"

static const char *src_dir(void)
{
    const char *d = getenv("LR_SOURCE_DIR");
    return d && *d ? d : LR_SOURCE_DIR;
}

/* Absolute path of a fixture (one static buffer per call slot). */
static const char *fixture(const char *rel)
{
    static char buf[4][1024];
    static int slot;
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "%s/tests/data/config/%s", src_dir(), rel);
    return b;
}

static struct cfg *load_ok(const char *rel)
{
    struct cfg *c = NULL;
    char err[512] = "";
    int rc = cfg_load(fixture(rel), &c, err, sizeof err);
    cr_assert_eq(rc, 0, "loading %s failed: %s", rel, err);
    cr_assert_not_null(c);
    return c;
}

/* Loads path, which must fail without touching *out, and checks that the
 * error starts with "<where>:<line>: " (just "<where>: " when line is 0) and
 * contains every word given (NULL-terminated). */
static void check_error_at(const char *path, const char *where, int line, ...)
{
    static struct cfg marker;
    struct cfg *out = &marker;
    char err[512] = "";
    int rc = cfg_load(path, &out, err, sizeof err);
    cr_assert_eq(rc, -1, "%s loaded but should not", path);
    cr_assert_eq(out, &marker, "cfg_load touched *out on failure");

    char prefix[1100];
    if (line > 0)
        snprintf(prefix, sizeof prefix, "%s:%d: ", where, line);
    else
        snprintf(prefix, sizeof prefix, "%s: ", where);
    cr_assert(strncmp(err, prefix, strlen(prefix)) == 0, "error '%s' does not start with '%s'", err, prefix);

    va_list ap;
    va_start(ap, line);
    for (const char *w; (w = va_arg(ap, const char *)) != NULL;)
        cr_assert(strstr(err, w) != NULL, "error '%s' lacks '%s'", err, w);
    va_end(ap);
}

/* A bad fixture whose error is in the file itself. */
#define check_error(rel, line, ...) check_error_at(fixture(rel), fixture(rel), line, __VA_ARGS__, NULL)

static const struct rules_dealer *dealer(const struct cfg *c, const char *id)
{
    int i = rules_dealer_find(c->rules, id, strlen(id));
    cr_assert_geq(i, 0, "dealer '%s' not loaded", id);
    return &c->rules->dealers[i];
}

static const char *tz_name(const struct cfg *c, uint32_t tz)
{
    cr_assert_lt(tz, c->rules->n_tzs);
    return c->rules->tzs[tz]->name;
}

/* ------------------------------------------------------------ good files */

Test(config_good, service_settings)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    cr_expect_str_eq(c->path, fixture("good/leadrouter.conf"));
    cr_expect_str_eq(c->redis.host, "10.0.0.5");
    cr_expect_eq(c->redis.port, 6380);
    cr_expect_null(c->redis.socket, "an absent socket is NULL");
    cr_expect_str_eq(c->redis.username, "router");
    cr_expect_str_eq(c->redis.password, "s3cret");
    cr_expect_eq(c->redis.db, 2);
    cr_expect_eq(c->redis.startup_timeout, 45);
    cr_expect_eq(c->input.mode, INPUT_LIST);
    cr_expect_str_eq(c->input.group, "routers.1");
    cr_expect_eq(c->input.batch, 100);
    cr_expect_eq(c->input.claim_idle_ms, 60000);
    cr_expect_eq(c->input.max_deliveries, 7);
    cr_expect_str_eq(c->prefix, "lr-test");
    cr_expect_str_eq(c->admin.socket, "/tmp/lr-admin.sock");
    cr_expect_eq(c->admin.mode, 0640);
    cr_expect_eq(c->routing.record_ttl, 86400);
    cr_expect_eq(c->routing.max_attempts, 5);
    cr_expect_eq(c->routing.audit_maxlen, 0);
    cr_expect_eq(c->limits.max_lead_bytes, 4096);
    cr_expect_eq(c->dedup.window, 3600);
    cr_expect(!c->dedup.phone && c->dedup.email);
    cr_expect_eq(c->dedup.action, DEDUP_REJECT);
    cr_expect(c->rules->compiled);
    cfg_free(c);
}

Test(config_good, defaults_scoring_and_niches)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    const struct rules_table *t = c->rules;
    cr_expect_str_eq(t->default_country, "CA", "country is stored upper-case");
    cr_expect_str_eq(tz_name(c, t->default_tz), "America/New_York");

    cr_assert_eq(t->n_weights, 3);
    cr_expect_str_eq(t->weights[0].signal, "web");
    cr_expect_float_eq(t->weights[0].w, 0.5, 1e-12);
    cr_expect_str_eq(t->weights[1].signal, "email");
    cr_expect_float_eq(t->weights[1].w, 30.0, 1e-12, "an int weight is accepted as a number");
    cr_expect_float_eq(t->weights[2].w, -0.25, 1e-12);

    cr_assert_eq(t->n_grades, 3);
    cr_expect_str_eq(t->grades[0].name, "A+");
    cr_expect_eq(t->grades[0].min, 90);
    cr_expect_str_eq(t->grades[1].name, "B");
    cr_expect_eq(t->grades[1].min, 60);
    cr_expect_str_eq(t->grades[2].name, "C");
    cr_expect_eq(t->grades[2].min, 0);
    cr_expect_eq(t->hot_grades, (1u << 0) | (1u << 2), "hot_grades A+ and C");

    cr_assert_eq(t->n_niches, 3);
    const struct rules_niche *hi = &t->niches[0];
    cr_expect_str_eq(hi->name, "home_improvement");
    cr_assert_eq(hi->n_sources, 1);
    cr_expect_str_eq(hi->sources[0], "fixmyhome.example", "sources are lower-cased");
    cr_assert_eq(hi->n_keywords, 2);
    cr_expect_str_eq(hi->keywords[0], "roof", "keywords are lower-cased");
    cr_expect_str_eq(hi->keywords[1], "kitchen");
    cr_expect_eq(hi->max_buyers, 2);
    cr_expect_eq(hi->strategy, STRAT_ROUND_ROBIN);
    cr_expect_eq(hi->where.line, 13);
    cr_expect_eq(t->niches[1].max_buyers, 3);
    cr_expect_eq(t->niches[1].strategy, STRAT_NEAREST);
    cr_expect_eq(t->niches[1].n_sources, 0);
    cr_expect_eq(t->niches[2].max_buyers, 1, "max_buyers defaults to 1");
    cr_expect_eq(t->niches[2].strategy, STRAT_LEAST_LOADED);
    cfg_free(c);
}

Test(config_good, dealer_territory_and_contract)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    const struct rules_dealer *d = dealer(c, "acme-dsm");
    cr_expect_str_eq(d->name, "Acme Des Moines");
    cr_expect_str_eq(d->where.file, fixture("good/leadrouter.conf"));
    cr_expect_eq(d->where.line, 22);
    cr_assert_eq(d->n_niches, 2);
    cr_expect_eq(d->niches[0], 0);
    cr_expect_eq(d->niches[1], 1);

    cr_assert_eq(d->n_states, 2);
    cr_expect_str_eq(d->states[0], "IA", "states are stored upper-case");
    cr_expect_str_eq(d->states[1], "NE");
    cr_assert_eq(d->n_zips, 2, "exact zips apart from prefixes");
    cr_expect_str_eq(d->zips[0], "50309");
    cr_expect_str_eq(d->zips[1], "K1A0B6", "zips upper-cased, spaces removed");
    cr_assert_eq(d->n_prefixes, 2);
    cr_expect_str_eq(d->prefixes[0], "503", "prefix stored without its '*'");
    cr_expect_str_eq(d->prefixes[1], "X1-");
    cr_expect(d->has_radius);
    cr_expect_float_eq(d->lat, 41.59, 1e-9);
    cr_expect_float_eq(d->lon, -93.0, 1e-9, "an int coordinate is accepted");
    cr_expect_float_eq(d->km, 80.5, 1e-9);

    cr_expect(d->exclusive);
    cr_expect_eq(d->overflow, OVERFLOW_HOLD);
    cr_expect_eq(d->tier, 0);
    cr_expect_eq(d->weight, 3);
    cr_expect_eq(d->caps[PERIOD_HOUR], 10);
    cr_expect_eq(d->caps[PERIOD_DAY], 50);
    cr_expect_eq(d->caps[PERIOD_WEEK], 200);
    cr_expect_eq(d->caps[PERIOD_MONTH], 3000000000u, "a 64-bit (L) cap");
    cr_expect_eq(d->min_score, 40);
    cr_expect_eq(d->grades, (1u << 0) | (1u << 1), "grades A+ and B");
    cr_expect_eq(d->max_pending, 200);

    cr_expect(d->hours.set);
    cr_expect_eq(d->hours.days, 0x1f, "mon..fri, day names case-insensitive");
    cr_expect_eq(d->hours.from, 8 * 60);
    cr_expect_eq(d->hours.to, 18 * 60 + 30);
    cr_expect_str_eq(tz_name(c, d->tz), "America/Chicago", "hours.timezone wins");
    cfg_free(c);
}

Test(config_good, filters_of_each_op)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    const struct rules_dealer *d = dealer(c, "acme-dsm");
    cr_assert_eq(d->n_filters, 7);
    const struct rules_filter *f = d->filters;

    cr_expect_eq(f[0].target, FT_FIELD);
    cr_expect_str_eq(f[0].path, "fields.home_owner");
    cr_expect_str_eq(f[0].key, "home_owner");
    cr_expect_eq(f[0].op, FOP_EQ);
    cr_assert_eq(f[0].n_vals, 1);
    cr_expect_eq(f[0].vals[0].type, LEAD_V_BOOL);
    cr_expect(f[0].vals[0].b);

    cr_expect_eq(f[1].target, FT_SOURCE);
    cr_expect_null(f[1].key);
    cr_expect_eq(f[1].op, FOP_NE);
    cr_assert_eq(f[1].vals[0].type, LEAD_V_STR);
    cr_expect(lr_str_eq(f[1].vals[0].s, "spam.example"));
    cr_expect_eq(f[1].vals[0].s.p[f[1].vals[0].s.len], '\0', "string values are NUL-terminated copies");

    cr_expect_eq(f[2].target, FT_STATE);
    cr_expect_eq(f[2].op, FOP_IN);
    cr_assert_eq(f[2].n_vals, 2);
    cr_expect(lr_str_eq(f[2].vals[0].s, "IA"));
    cr_expect(lr_str_eq(f[2].vals[1].s, "NE"));

    cr_expect_eq(f[3].target, FT_SCORE);
    cr_expect_eq(f[3].op, FOP_MIN);
    cr_expect_float_eq(f[3].num, 10.0, 1e-12);

    cr_expect_eq(f[4].op, FOP_MAX);
    cr_expect_float_eq(f[4].num, 120000.5, 1e-9);

    cr_expect_eq(f[5].op, FOP_EXISTS);
    cr_expect(!f[5].exists);

    cr_expect_eq(f[6].op, FOP_IN);
    cr_assert_eq(f[6].n_vals, 4, "a list of mixed scalars");
    cr_expect_eq(f[6].vals[0].type, LEAD_V_INT);
    cr_expect_eq(f[6].vals[0].i, 1);
    cr_expect_eq(f[6].vals[1].type, LEAD_V_FLOAT);
    cr_expect_float_eq(f[6].vals[1].f, 2.5, 1e-12);
    cr_expect_eq(f[6].vals[2].type, LEAD_V_STR);
    cr_expect(lr_str_eq(f[6].vals[2].s, "three"));
    cr_expect_eq(f[6].vals[3].type, LEAD_V_BOOL);
    cfg_free(c);
}

Test(config_good, hours_defaults_and_midnight)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    const struct rules_dealer *d = dealer(c, "night.owl");
    cr_expect_str_eq(d->name, "night.owl", "name defaults to id");
    cr_expect(d->hours.set);
    cr_expect_eq(d->hours.days, (1u << 5) | (1u << 6), "sat and sun");
    cr_expect_eq(d->hours.from, 22 * 60);
    cr_expect_eq(d->hours.to, 6 * 60, "from > to: spans midnight");
    cr_expect_str_eq(tz_name(c, d->tz), "America/New_York", "no hours.timezone: defaults.timezone");
    cr_expect(!d->has_radius);
    cr_expect_eq(d->n_zips, 1);
    cr_expect_eq(d->n_prefixes, 0);

    const struct rules_dealer *b = dealer(c, "bare");
    cr_expect(!b->hours.set, "no hours: always open");
    cr_expect_str_eq(tz_name(c, b->tz), "America/New_York");
    cr_expect(!b->exclusive);
    cr_expect_eq(b->overflow, OVERFLOW_RELEASE);
    cr_expect_eq(b->tier, 1);
    cr_expect_eq(b->weight, 1);
    for (int p = 0; p < PERIOD_N; p++)
        cr_expect_eq(b->caps[p], 0, "no cap");
    cr_expect_eq(b->min_score, 0);
    cr_expect_eq(b->grades, 0, "all grades");
    cr_expect_eq(b->max_pending, 0);
    cr_expect_eq(b->n_filters, 0);
    cr_expect_eq(b->n_states + b->n_zips + b->n_prefixes, 0, "empty territory");
    cfg_free(c);
}

Test(config_good, include_glob_appends_in_sorted_order)
{
    struct cfg *c = load_ok("good/leadrouter.conf");
    const struct rules_table *t = c->rules;
    static const char *const order[] = {"acme-dsm", "night.owl", "bare", "zeta", "alpha", "beta"};
    cr_assert_eq(t->n_dealers, 6, "README.txt does not match *.conf");
    for (int i = 0; i < 6; i++)
        cr_expect_str_eq(t->dealers[i].id, order[i]);

    const struct rules_dealer *z = dealer(c, "zeta");
    cr_expect_str_eq(z->where.file, fixture("good/dealers.d/10-zeta.conf"));
    cr_expect_eq(z->where.line, 3);
    cr_expect_str_eq(tz_name(c, z->tz), "Europe/Berlin");
    cr_expect_eq(z->hours.from, 0);
    cr_expect_eq(z->hours.to, 1440, "24:00 is a valid end");
    const struct rules_dealer *a = dealer(c, "alpha");
    cr_expect_str_eq(a->where.file, fixture("good/dealers.d/20-alpha.conf"));
    cr_expect_eq(a->where.line, 2);
    cr_expect_eq(dealer(c, "beta")->n_niches, 2);

    /* Each zone is loaded once: New_York, Chicago, Berlin. */
    cr_expect_eq(t->n_tzs, 3);
    cr_expect_eq(a->tz, dealer(c, "acme-dsm")->tz);
    cfg_free(c);
}

/* Writes dir/name with the given text. */
static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot create %s", path);
    fputs(text, f);
    fclose(f);
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(config_good, include_order_is_bytewise_not_directory_order)
{
    /* Twenty files created in descending order (directory order is
     * creation or hash order, not sorted); "B" sorts before "a" bytewise. */
    char dir[] = "/tmp/lr-test-config-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    write_file(dir, "main.conf",
               "niches = ( { name = \"solar\"; } );\ndealers = ( );\n@include \"*.d.conf\"\n");
    for (int i = 19; i >= 0; i--) {
        char name[32], text[128];
        snprintf(name, sizeof name, "%c%02d.d.conf", i % 2 ? 'a' : 'B', i);
        snprintf(text, sizeof text, "dealers = ( { id = \"%s\"; niches = [ \"solar\" ]; } );\n", name);
        write_file(dir, name, text);
    }
    char path[512];
    snprintf(path, sizeof path, "%s/main.conf", dir);
    struct cfg *c = NULL;
    char err[512];
    cr_assert_eq(cfg_load(path, &c, err, sizeof err), 0, "%s", err);
    cr_assert_eq(c->rules->n_dealers, 20);
    for (uint32_t i = 1; i < 20; i++)
        cr_expect_lt(strcmp(c->rules->dealers[i - 1].id, c->rules->dealers[i].id), 0, "%s before %s",
                     c->rules->dealers[i - 1].id, c->rules->dealers[i].id);
    cr_expect_str_eq(c->rules->dealers[0].id, "B00.d.conf");
    cr_expect_str_eq(c->rules->dealers[10].id, "a01.d.conf");
    cfg_free(c);
    remove_tree(dir);
}

Test(config_good, minimal_file_takes_defaults)
{
    struct cfg *c = load_ok("minimal/leadrouter.conf");
    cr_expect_str_eq(c->redis.host, "127.0.0.1");
    cr_expect_eq(c->redis.port, 6379);
    cr_expect_null(c->redis.socket);
    cr_expect_null(c->redis.username);
    cr_expect_null(c->redis.password);
    cr_expect_eq(c->redis.db, 0);
    cr_expect_eq(c->redis.startup_timeout, 30);
    cr_expect_eq(c->input.mode, INPUT_STREAM);
    cr_expect_str_eq(c->input.group, "leadrouter");
    cr_expect_eq(c->input.batch, 256);
    cr_expect_eq(c->input.claim_idle_ms, 30000);
    cr_expect_eq(c->input.max_deliveries, 5);
    cr_expect_str_eq(c->prefix, "lr");
    cr_expect_str_eq(c->admin.socket, "/run/leadrouter/admin.sock");
    cr_expect_eq(c->admin.mode, 0660);
    cr_expect_eq(c->routing.record_ttl, 2592000);
    cr_expect_eq(c->routing.max_attempts, 3);
    cr_expect_eq(c->routing.audit_maxlen, 1000000);
    cr_expect_eq(c->limits.max_lead_bytes, 65536);
    cr_expect_eq(c->dedup.window, 2592000);
    cr_expect(c->dedup.phone && c->dedup.email);
    cr_expect_eq(c->dedup.action, DEDUP_SAME_DEALER);

    const struct rules_table *t = c->rules;
    cr_expect_str_eq(t->default_country, "US");
    cr_expect_str_eq(tz_name(c, t->default_tz), "UTC");
    cr_expect_eq(t->n_weights, 0);
    cr_assert_eq(t->n_grades, 3);
    cr_expect_str_eq(t->grades[0].name, "A");
    cr_expect_eq(t->grades[0].min, 80);
    cr_expect_str_eq(t->grades[1].name, "B");
    cr_expect_eq(t->grades[1].min, 50);
    cr_expect_str_eq(t->grades[2].name, "C");
    cr_expect_eq(t->grades[2].min, 0);
    cr_expect_eq(t->hot_grades, 0);
    cr_expect_eq(t->niches[0].max_buyers, 1);
    cr_expect_eq(t->niches[0].strategy, STRAT_WEIGHTED);
    cr_expect_eq(t->n_dealers, 1, "a glob matching nothing adds nothing");
    cfg_free(c);
}

Test(config_good, cfg_free_accepts_null)
{
    cfg_free(NULL);
}

/* ----------------------------------------------------------- bad files */

Test(config_bad, unknown_niche_named)
{
    check_error("bad/unknown_niche.conf", 5, "dealer 'acme-dsm'", "unknown niche 'solr'");
}

Test(config_bad, duplicate_dealer_id)
{
    check_error("bad/dup_dealer.conf", 5, "duplicate dealer id 'd1'");
}

Test(config_bad, duplicate_niche)
{
    check_error("bad/dup_niche.conf", 3, "duplicate niche 'solar'");
}

Test(config_bad, unknown_time_zone)
{
    check_error("bad/unknown_tz.conf", 5, "dealer 'd1'", "hours.timezone",
                "unknown time zone 'Mars/Olympus_Mons'");
    check_error("bad/unknown_default_tz.conf", 2, "defaults.timezone", "unknown time zone 'Not/AZone'");
}

Test(config_bad, malformed_hours)
{
    check_error("bad/hours_8am.conf", 5, "dealer 'd1'", "hours.from", "bad time '8am'");
    check_error("bad/hours_25.conf", 5, "hours.to", "bad time '25:00'");
    check_error("bad/hours_equal.conf", 5, "'09:30'", "empty");
    check_error("bad/hours_day.conf", 5, "hours.days", "unknown day 'funday'");
}

Test(config_bad, empty_days)
{
    check_error("bad/hours_no_days.conf", 5, "hours.days", "at least one day");
}

Test(config_bad, unknown_strategy)
{
    check_error("bad/strategy.conf", 3, "niche 'solar'", "niches.strategy", "'random'");
}

/* SPEC 5: an empty grades list is a mistake, not "accept nothing". */
Test(config_bad, empty_grades)
{
    check_error("bad/grades_empty.conf", 5, "dealer 'd1'", "contract.grades", "accepts no grade");
}

Test(config_bad, unknown_overflow)
{
    check_error("bad/overflow.conf", 5, "dealer 'd1'", "contract.overflow", "'spill'");
}

Test(config_bad, grades_out_of_order)
{
    check_error("bad/grades_order.conf", 3, "scoring.grades", "out of order", "'B'");
}

Test(config_bad, last_grade_min_not_zero)
{
    check_error("bad/grades_last.conf", 3, "last grade", "'B'", "min = 0");
}

Test(config_bad, unknown_grade)
{
    check_error("bad/grade_contract.conf", 5, "dealer 'd1'", "contract.grades", "unknown grade 'Z'");
    check_error("bad/grade_hot.conf", 3, "routing.hot_grades", "unknown grade 'AA'");
}

Test(config_bad, world_accessible_admin_mode)
{
    check_error("bad/admin_mode.conf", 2, "admin.mode", "'0666'", "world-accessible");
}

Test(config_bad, bad_zip_prefix)
{
    check_error("bad/zip_prefix.conf", 5, "dealer 'd1'", "territory.zips", "bad zip prefix '5*0*'");
    check_error("bad/zip_star.conf", 4, "bad zip prefix");
}

Test(config_bad, bad_key_prefix)
{
    check_error("bad/key_prefix.conf", 3, "prefix", "'lr:prod'");
}

Test(config_bad, cap_of_zero)
{
    check_error("bad/caps_zero.conf", 5, "dealer 'd1'", "contract.caps.day", ">= 1", "got 0");
}

Test(config_bad, weight_zero)
{
    check_error("bad/weight_zero.conf", 5, "dealer 'd1'", "contract.weight", "1..1000000", "got 0");
}

Test(config_bad, filter_two_ops)
{
    check_error("bad/filter_two_ops.conf", 5, "dealer 'd1'", "'min' and 'max'");
}

Test(config_bad, filter_without_op)
{
    check_error("bad/filter_no_op.conf", 4, "dealer 'd1'", "filter on 'score'", "no operator");
}

Test(config_bad, filter_unknown_field)
{
    check_error("bad/filter_field.conf", 5, "dealer 'd1'", "unknown filter field 'phone'");
}

Test(config_bad, unknown_setting_top_level)
{
    check_error("bad/unknown_top.conf", 3, "unknown setting 'routng'");
}

Test(config_bad, unknown_setting_in_dealer)
{
    check_error("bad/unknown_dealer.conf", 5, "dealer 'acme-dsm'",
                "unknown setting 'dealers.contract.exlusive'");
}

Test(config_bad, string_where_int)
{
    check_error("bad/wrong_type.conf", 2, "redis.port", "must be an integer", "string");
}

Test(config_bad, syntax_error_from_libconfig)
{
    check_error("bad/syntax.conf", 4, "syntax error");
}

Test(config_bad, integer_libconfig_would_wrap)
{
    /* libconfig 1.5 reads 4294967356 as 60 without a word. */
    check_error("bad/big_int.conf", 3, "4294967356", "64-bit");
}

Test(config_bad, required_settings)
{
    check_error("bad/no_niches.conf", 0, "missing required setting 'niches'");
    check_error("bad/no_id.conf", 3, "missing required setting 'dealers.id'");
}

Test(config_bad, missing_file)
{
    const char *p = fixture("bad/does-not-exist.conf");
    check_error_at(p, p, 0, "No such file", NULL);
}

Test(config_bad, nul_byte)
{
    char path[] = "/tmp/lr-test-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    static const char text[] = "niches = ( { name = \"solar\"; } );\ndealers = ( );\n# x\0y\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    check_error_at(path, path, 3, "NUL", NULL);
    unlink(path);
}

Test(config_bad, file_named_as_given)
{
    /* Relative paths stay relative in errors (no realpath). */
    cr_assert_eq(chdir(fixture("bad")), 0);
    check_error_at("unknown_niche.conf", "unknown_niche.conf", 5, "unknown niche 'solr'", NULL);
}

Test(config_bad, error_inside_included_file)
{
    check_error_at(fixture("bad/inc_error/main.conf"), fixture("bad/inc_error/dealers.d/b.conf"), 4,
                   "dealer 'b2'", "contract.weight", NULL);
}

Test(config_bad, include_rules)
{
    check_error_at(fixture("bad/inc_nested/main.conf"), fixture("bad/inc_nested/d/x.conf"), 2,
                   "@include is not allowed", NULL);
    check_error_at(fixture("bad/inc_other/main.conf"), fixture("bad/inc_other/d/x.conf"), 2,
                   "unknown setting 'prefix'", "only hold 'dealers'", NULL);
    check_error("bad/inc_missing.conf", 4, "no-such-dir/dealers.conf", "No such file");
}

Test(config_bad, line_numbers_after_include)
{
    /* The @include line is blanked, not removed: later lines keep their numbers. */
    check_error("bad/after_include.conf", 5, "contract.tier", "0..1000");
}

Test(config_bad, too_many_included_files)
{
    char dir[] = "/tmp/lr-test-config-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/main.conf", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("niches = ( { name = \"solar\"; } );\ndealers = ( );\n@include \"d/*.conf\"\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/d", dir);
    cr_assert_eq(mkdir(path, 0700), 0);
    for (int i = 0; i < 1001; i++) {
        snprintf(path, sizeof path, "%s/d/%04d.conf", dir, i);
        f = fopen(path, "w");
        cr_assert_not_null(f);
        fclose(f); /* empty: no dealers, legal */
    }
    snprintf(path, sizeof path, "%s/main.conf", dir);
    check_error_at(path, path, 3, "too many included files", NULL);

    /* 1000 files are fine. */
    snprintf(path, sizeof path, "%s/d/1000.conf", dir);
    cr_assert_eq(unlink(path), 0);
    snprintf(path, sizeof path, "%s/main.conf", dir);
    struct cfg *c = NULL;
    char err[512];
    cr_expect_eq(cfg_load(path, &c, err, sizeof err), 0, "%s", err);
    cfg_free(c);

    remove_tree(dir);
}

Test(config_bad, failure_leaves_out_untouched)
{
    struct cfg *good = load_ok("minimal/leadrouter.conf");
    struct cfg *out = good;
    char err[256];
    cr_assert_eq(cfg_load(fixture("bad/weight_zero.conf"), &out, err, sizeof err), -1);
    cr_expect_eq(out, good, "the old config stays in force");
    cr_expect_str_eq(out->prefix, "lr", "and is still intact");
    cr_assert_eq(cfg_load(fixture("bad/does-not-exist.conf"), &out, err, sizeof err), -1);
    cr_expect_eq(out, good);
    cfg_free(good);
}

/* A config path that is a FIFO blocked `-t` forever, and a SIGHUP reload
 * stopped routing until someone wrote to it: the main file must be a
 * regular file, as includes already must (a directory too is refused). */
Test(config_bad, main_file_must_be_a_regular_file, .timeout = 10)
{
    char dir[] = "/tmp/lr-test-config-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[600];
    snprintf(path, sizeof path, "%s/fifo.conf", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    check_error_at(path, path, 0, "not a regular file", NULL);
    check_error_at(dir, dir, 0, "not a regular file", NULL);
    remove_tree(dir);
}
