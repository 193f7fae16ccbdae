/* test_stats.c - the statistics module: counting, the three renderings
 * from one table (text, JSON, Prometheus), bounded and escaped label
 * values from hostile leads, the latency histogram and its quantiles. */
#include <criterion/criterion.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "leadrouter/stats.h"

static struct stats *s;

static void setup(void)
{
    s = stats_new();
    cr_assert_not_null(s);
}

static void teardown(void)
{
    stats_free(s);
}

TestSuite(stats, .init = setup, .fini = teardown, .timeout = 10);

/* The value of `name` in `name value` text, or NULL (static buffer). */
static const char *text_value(const char *text, const char *name)
{
    static char v[256];
    size_t nl = strlen(name);
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > nl && strncmp(p, name, nl) == 0 && p[nl] == ' ') {
            snprintf(v, sizeof v, "%.*s", (int)(n - nl - 1), p + nl + 1);
            return v;
        }
        p += n + (p[n] == '\n');
    }
    return NULL;
}

/* The value of the exposition line that starts with `series ` (exact
 * name and labels), or -1 when there is none. */
static double prom_value(const char *prom, const char *series)
{
    size_t sl = strlen(series);
    for (const char *p = prom; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > sl && strncmp(p, series, sl) == 0 && p[sl] == ' ')
            return strtod(p + sl + 1, NULL);
        p += n + (p[n] == '\n');
    }
    return -1;
}

static size_t count_lines_with(const char *text, const char *prefix)
{
    size_t c = 0, pl = strlen(prefix);
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n >= pl && strncmp(p, prefix, pl) == 0)
            c++;
        p += n + (p[n] == '\n');
    }
    return c;
}

Test(stats, text_has_every_spec_field_in_order)
{
    stats_received(s, 3);
    stats_assigned(s, "d1", "solar", "web");
    stats_assigned(s, "d2", "solar", "web");
    stats_unassigned(s, "all_capped", "solar", "web");
    stats_dead(s, "bad_type: score must be an int");
    stats_returned(s);
    stats_duplicate(s);
    stats_set_in_flight(s, 7);
    stats_set_redis_up(s, false);
    stats_set_config(s, 1);
    char *t = stats_text(s);
    cr_assert_not_null(t);
    cr_assert_str_eq(text_value(t, "received"), "3");
    cr_assert_str_eq(text_value(t, "assigned"), "2");
    cr_assert_str_eq(text_value(t, "unassigned"), "1");
    cr_assert_str_eq(text_value(t, "dead"), "1");
    cr_assert_str_eq(text_value(t, "returns"), "1");
    cr_assert_str_eq(text_value(t, "duplicates"), "1");
    cr_assert_str_eq(text_value(t, "in_flight"), "7");
    cr_assert_str_eq(text_value(t, "redis"), "down");
    cr_assert_str_eq(text_value(t, "config_generation"), "1");
    cr_assert_str_eq(text_value(t, "latency_p50_ms"), "-", "no samples yet: no made-up latency");
    cr_assert_not_null(text_value(t, "uptime"));
    /* SPEC section 6 order: uptime first, latency last. */
    cr_assert(strstr(t, "uptime ") == t, "%s", t);
    cr_assert(strstr(t, "received ") < strstr(t, "assigned ") &&
                  strstr(t, "in_flight ") < strstr(t, "redis ") &&
                  strstr(t, "config_generation ") < strstr(t, "latency_p50_ms "),
              "%s", t);
    free(t);
    stats_set_redis_up(s, true);
    t = stats_text(s);
    cr_assert_str_eq(text_value(t, "redis"), "up");
    free(t);
}

Test(stats, reloads_and_their_failures)
{
    stats_set_config(s, 1);
    stats_reload_failed(s);
    stats_set_reload_error(s, "/etc/x.conf:12: unknown niche 'solr'");
    char *t = stats_text(s);
    cr_assert_str_eq(text_value(t, "reloads"), "0", "the first config is not a reload");
    cr_assert_str_eq(text_value(t, "reload_failures"), "1");
    cr_assert_str_eq(text_value(t, "last_reload_error"), "/etc/x.conf:12: unknown niche 'solr'");
    free(t);
    stats_set_config(s, 2);
    t = stats_text(s);
    cr_assert_str_eq(text_value(t, "reloads"), "1");
    cr_assert_str_eq(text_value(t, "config_generation"), "2");
    cr_assert_null(text_value(t, "last_reload_error"), "a good reload clears the last error");
    free(t);
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_config_generation"), 2);
    cr_assert_eq(prom_value(p, "leadrouter_config_reload_failures_total"), 1);
    cr_assert_eq(prom_value(p, "leadrouter_config_reloads_total"), 1);
    free(p);
}

Test(stats, labelled_counters_in_prometheus)
{
    stats_assigned(s, "d1", "solar", "web");
    stats_assigned(s, "d1", "solar", "web");
    stats_assigned(s, "d1", "roofing", "");
    stats_unassigned(s, "all_capped", "solar", NULL);
    stats_dead(s, "max_deliveries: delivered 5 times without a commit");
    stats_dead(s, "");
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_leads_assigned_total{dealer=\"d1\",niche=\"solar\"}"), 2, "%s", p);
    cr_assert_eq(prom_value(p, "leadrouter_leads_assigned_total{dealer=\"d1\",niche=\"roofing\"}"), 1);
    cr_assert_eq(prom_value(p, "leadrouter_leads_unassigned_total{reason=\"all_capped\"}"), 1);
    cr_assert_eq(prom_value(p, "leadrouter_leads_dead_total{reason=\"max_deliveries\"}"), 1,
                 "the reason's code, not its free text, is the label");
    cr_assert_eq(prom_value(p, "leadrouter_leads_dead_total{reason=\"unknown\"}"), 1);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"web\",outcome=\"assigned\"}"), 2);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"\",outcome=\"unassigned\"}"), 1);
    cr_assert_eq(prom_value(p, "leadrouter_niche_leads_total{niche=\"solar\",outcome=\"unassigned\"}"), 1);
    /* Every family has its HELP and TYPE, once. */
    cr_assert_eq(count_lines_with(p, "# TYPE leadrouter_leads_assigned_total counter"), 1);
    cr_assert_eq(count_lines_with(p, "# HELP leadrouter_leads_assigned_total "), 1);
    cr_assert_eq(count_lines_with(p, "# TYPE leadrouter_route_latency_seconds histogram"), 1);
    cr_assert_eq(count_lines_with(p, "# TYPE leadrouter_redis_up gauge"), 1);
    free(p);
    cr_assert_eq(stats_dealer_assigned(s, "d1"), 3);
    cr_assert_eq(stats_dealer_assigned(s, "d9"), 0);
    cr_assert_eq(stats_dealer_niche_assigned(s, "d1", "solar"), 2);
    cr_assert_eq(stats_dealer_niche_assigned(s, "d1", "nope"), 0);
}

Test(stats, hostile_label_values_are_escaped_and_valid_utf8)
{
    stats_assigned(s, "d1", "solar", "a\"b\\c");
    stats_assigned(s, "d1", "solar", "line\nbreak\x01");
    stats_assigned(s, "d1", "solar", "bad\xff\xfeutf8");
    stats_assigned(s, "d1", "solar", "caf\xc3\xa9");
    stats_assigned(s, "d1", "solar", "\xc0\xafoverlong");
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"a\\\"b\\\\c\",outcome=\"assigned\"}"),
                 1, "quote and backslash escaped:\n%s", p);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"line?break?\",outcome=\"assigned\"}"),
                 1, "control bytes made visible:\n%s", p);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"bad??utf8\",outcome=\"assigned\"}"),
                 1);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"caf\xc3\xa9\",outcome=\"assigned\"}"),
                 1, "valid UTF-8 kept");
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"??overlong\",outcome=\"assigned\"}"),
                 1);
    free(p);
    /* JSON parses (jansson refuses invalid UTF-8). */
    char *j = stats_json(s);
    cr_assert_not_null(j, "stats_json refused the values");
    json_error_t je;
    json_t *root = json_loads(j, 0, &je);
    cr_assert_not_null(root, "stats_json is not JSON: %s", je.text);
    json_decref(root);
    free(j);
}

Test(stats, a_value_and_its_cleaned_form_are_one_series)
{
    /* Known values are looked up as they come before any cleaning: a value
     * equal to a cleaned one must land in that series, in either order. */
    stats_assigned(s, "d1", "solar", "web\x01" "form");
    stats_assigned(s, "d1", "solar", "web?form");
    stats_assigned(s, "d1", "solar", "web?form");
    stats_assigned(s, "d1", "solar", "web\nform");
    char big[300];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = 0;
    stats_assigned(s, "d1", "solar", big);
    big[128] = 0; /* the cut form, given as it is */
    stats_assigned(s, "d1", "solar", big);
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"web?form\",outcome=\"assigned\"}"), 4,
                 "%s", p);
    char want[400];
    snprintf(want, sizeof want, "leadrouter_source_leads_total{source=\"%.128s\",outcome=\"assigned\"}", big);
    cr_assert_eq(prom_value(p, want), 2, "a long value and its cut form are one series");
    cr_assert_eq(count_lines_with(p, "leadrouter_source_leads_total{"), 2, "%s", p);
    free(p);
}

Test(stats, long_label_values_are_cut)
{
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    stats_assigned(s, "d1", "solar", big);
    char *p = stats_prometheus(s);
    char want[300];
    snprintf(want, sizeof want, "leadrouter_source_leads_total{source=\"%.128s\",outcome=\"assigned\"}", big);
    cr_assert_eq(prom_value(p, want), 1, "a label value is cut at 128 bytes");
    free(p);
}

Test(stats, distinct_sources_are_bounded)
{
    char src[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(src, sizeof src, "s%04d", i);
        stats_assigned(s, "d1", "solar", src);
    }
    for (int i = 0; i < 50; i++) {
        snprintf(src, sizeof src, "late%04d", i);
        stats_assigned(s, "d1", "solar", src);
        stats_unassigned(s, "filtered", "solar", src);
    }
    stats_assigned(s, "d1", "solar", "s0001"); /* a known one still counts as itself */
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"other\",outcome=\"assigned\"}"), 50,
                 "%s", p + strlen(p) - 400);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"other\",outcome=\"unassigned\"}"), 50);
    cr_assert_eq(prom_value(p, "leadrouter_source_leads_total{source=\"s0001\",outcome=\"assigned\"}"), 2);
    cr_assert_lt(prom_value(p, "leadrouter_source_leads_total{source=\"late0000\",outcome=\"assigned\"}"), 0);
    /* 1000 sources + other, two outcomes at most. */
    size_t series = count_lines_with(p, "leadrouter_source_leads_total{");
    cr_assert(series >= 1001 && series <= 1002, "%zu source series", series);
    free(p);
    char *t = stats_text(s);
    cr_assert_str_eq(text_value(t, "assigned"), "1051", "totals count everything");
    free(t);
}

Test(stats, latency_histogram_is_cumulative)
{
    double v[] = {0.0005, 0.003, 0.2, 7, 1000, -2 /* clock skew: 0 */};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        stats_latency(s, v[i]);
    stats_latency(s, NAN); /* ignored */
    char *p = stats_prometheus(s);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"0.001\"}"), 2, "%s", p);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"0.0025\"}"), 2);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"0.005\"}"), 3);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"0.25\"}"), 4);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"10\"}"), 5);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"300\"}"), 5);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_bucket{le=\"+Inf\"}"), 6);
    cr_assert_eq(prom_value(p, "leadrouter_route_latency_seconds_count"), 6);
    double sum = prom_value(p, "leadrouter_route_latency_seconds_sum");
    cr_assert_float_eq(sum, 0.0005 + 0.003 + 0.2 + 7 + 1000, 1e-9);
    free(p);
}

Test(stats, latency_quantiles)
{
    /* 90 fast (5 ms) and 10 slow (400 ms) commits. */
    for (int i = 0; i < 90; i++)
        stats_latency(s, 0.005);
    for (int i = 0; i < 10; i++)
        stats_latency(s, 0.4);
    double p50 = stats_latency_quantile(s, 0.5), p99 = stats_latency_quantile(s, 0.99);
    cr_assert(p50 > 0.005 / 1.2 && p50 < 0.005 * 1.2, "p50 = %g", p50);
    cr_assert(p99 > 0.4 / 1.2 && p99 < 0.4 * 1.2, "p99 = %g", p99);
    char *t = stats_text(s);
    double ms50 = strtod(text_value(t, "latency_p50_ms"), NULL);
    double ms99 = strtod(text_value(t, "latency_p99_ms"), NULL);
    cr_assert(ms50 > 4 && ms50 < 6, "%s", t);
    cr_assert(ms99 > 330 && ms99 < 480, "%s", t);
    free(t);
}

struct seen {
    char names[8][32];
    uint64_t as[8], un[8];
    int n;
};

static void collect(void *ctx, const char *name, uint64_t assigned, uint64_t unassigned)
{
    struct seen *x = ctx;
    cr_assert_lt(x->n, 8);
    snprintf(x->names[x->n], sizeof x->names[0], "%s", name);
    x->as[x->n] = assigned;
    x->un[x->n] = unassigned;
    x->n++;
}

Test(stats, per_niche_and_per_source_in_name_order)
{
    stats_assigned(s, "d1", "solar", "zeta");
    stats_assigned(s, "d2", "roofing", "alpha");
    stats_unassigned(s, "no_dealer_in_territory", "roofing", "alpha");
    stats_unassigned(s, "unknown_niche", NULL, "mid");
    struct seen n = {0}, so = {0};
    stats_each_niche(s, collect, &n);
    cr_assert_eq(n.n, 2, "a lead without a niche is not a niche");
    cr_assert_str_eq(n.names[0], "roofing");
    cr_assert_eq(n.as[0], 1);
    cr_assert_eq(n.un[0], 1);
    cr_assert_str_eq(n.names[1], "solar");
    stats_each_source(s, collect, &so);
    cr_assert_eq(so.n, 3);
    cr_assert_str_eq(so.names[0], "alpha");
    cr_assert_str_eq(so.names[1], "mid");
    cr_assert_eq(so.un[1], 1);
    cr_assert_str_eq(so.names[2], "zeta");
}

Test(stats, json_rendering_from_the_same_table)
{
    stats_received(s, 2);
    stats_assigned(s, "d1", "solar", "web");
    stats_latency(s, 0.01);
    char *j = stats_json(s);
    json_error_t je;
    json_t *root = json_loads(j, 0, &je);
    cr_assert_not_null(root, "%s", je.text);
    cr_assert_eq(json_integer_value(json_object_get(root, "received")), 2);
    json_t *as = json_object_get(root, "assigned");
    cr_assert_eq(json_integer_value(json_object_get(as, "total")), 1);
    json_t *series = json_array_get(json_object_get(as, "series"), 0);
    cr_assert_str_eq(json_string_value(json_object_get(series, "dealer")), "d1");
    cr_assert_str_eq(json_string_value(json_object_get(series, "niche")), "solar");
    cr_assert_eq(json_integer_value(json_object_get(series, "value")), 1);
    json_t *lat = json_object_get(root, "latency");
    cr_assert_eq(json_integer_value(json_object_get(lat, "count")), 1);
    cr_assert_str_eq(json_string_value(json_object_get(root, "redis")), "down");
    /* The text names are the JSON keys. */
    char *t = stats_text(s);
    for (const char *p = t; *p;) {
        size_t n = strcspn(p, " ");
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        if (strncmp(key, "latency_", 8) != 0)
            cr_assert_not_null(json_object_get(root, key), "text key %s missing from JSON", key);
        p += strcspn(p, "\n");
        p += *p == '\n';
    }
    free(t);
    json_decref(root);
    free(j);
}

Test(stats, null_is_harmless)
{
    stats_received(NULL, 1);
    stats_assigned(NULL, "d", "n", "s");
    stats_latency(NULL, 1);
    stats_set_redis_up(NULL, true);
    stats_free(NULL);
    cr_assert_eq(stats_dealer_assigned(NULL, "d"), 0);
}
