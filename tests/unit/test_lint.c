/* test_lint.c - rules_lint (what `leadrouterd -t` warns about): overlapping
 * exclusive territories in one niche (state, zip inside a prefix, radius),
 * dealers no lead can reach (empty territory, min_score above their grades),
 * niches no dealer serves, contradictory caps; and silence on a clean
 * config. Each warning must name the dealers or niche and where they are. */
#include "rtest.h"

struct warnings {
    int n;
    char text[8192];
    size_t len;
};

static void collect(void *ctx, const char *msg)
{
    struct warnings *w = ctx;
    w->n++;
    int k = snprintf(w->text + w->len, sizeof w->text - w->len, "%s\n", msg);
    if (k > 0)
        w->len = w->len + (size_t)k < sizeof w->text ? w->len + (size_t)k : sizeof w->text - 1;
}

/* Lints config text; returns the table's config (to free) and fills w. */
static struct cfg *lint(const char *text, struct warnings *w)
{
    memset(w, 0, sizeof *w);
    struct cfg *c = rt_cfg(text);
    int n = rules_lint(c->rules, collect, w);
    cr_assert_eq(n, w->n, "rules_lint returned %d but warned %d times:\n%s", n, w->n, w->text);
    return c;
}

/* The 1-based line of text holding needle. */
static int line_of(const char *text, const char *needle)
{
    const char *p = strstr(text, needle);
    cr_assert_not_null(p, "'%s' not in the config", needle);
    int line = 1;
    for (const char *q = text; q < p; q++)
        line += *q == '\n';
    return line;
}

/* Asserts exactly `count` warnings, every one of them containing each of
 * the NULL-terminated words. */
static void expect_warnings(const struct warnings *w, int count, const char *const *words)
{
    cr_assert_eq(w->n, count, "%d warnings, expected %d:\n%s", w->n, count, w->text);
    const char *line = w->text;
    for (int i = 0; i < w->n; i++) {
        const char *end = strchr(line, '\n');
        cr_assert_not_null(end);
        cr_assert(strstr(line, ": warning: ") && strstr(line, ": warning: ") < end,
                  "not FILE:LINE: warning: %.*s", (int)(end - line), line);
        for (const char *const *wd = words; *wd; wd++) {
            const char *hit = strstr(line, *wd);
            cr_assert(hit && hit < end, "warning does not name '%s': %.*s", *wd, (int)(end - line), line);
        }
        line = end + 1;
    }
}

/* The warning starts with the file and line where the dealer (or niche)
 * named by needle is written. */
static void expect_where(const struct cfg *c, const char *text, const struct warnings *w, const char *needle)
{
    const char *file = c->rules->n_dealers ? c->rules->dealers[0].where.file : c->rules->niches[0].where.file;
    cr_assert_not_null(file, "no file recorded in the table");
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s:%d: warning: ", file, line_of(text, needle));
    cr_assert(strncmp(w->text, prefix, strlen(prefix)) == 0, "warning does not start with '%s':\n%s", prefix,
              w->text);
}

Test(lint, exclusive_state_overlap)
{
    static const char text[] = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"ex-one\"; niches = [ \"roof\" ];\n"
                               "    territory = { states = [ \"IA\" ]; };\n"
                               "    contract = { exclusive = true; }; },\n"
                               "  { id = \"ex-two\"; niches = [ \"roof\" ];\n"
                               "    territory = { states = [ \"NE\", \"IA\" ]; };\n"
                               "    contract = { exclusive = true; }; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"ex-one", "ex-two", "roof", NULL};
    expect_warnings(&w, 1, words);
    expect_where(c, text, &w, "\"ex-one\"");
    cfg_free(c);
}

Test(lint, exclusive_zip_inside_exclusive_prefix)
{
    static const char text[] = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"ex-prefix\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"503*\" ]; };\n"
                               "    contract = { exclusive = true; }; },\n"
                               "  { id = \"ex-zip\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"50309\" ]; };\n"
                               "    contract = { exclusive = true; }; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"ex-prefix", "ex-zip", "roof", NULL};
    expect_warnings(&w, 1, words);
    cfg_free(c);
}

Test(lint, exclusive_prefix_inside_exclusive_prefix)
{
    static const char text[] = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"ex-503\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"503*\" ]; };\n"
                               "    contract = { exclusive = true; }; },\n"
                               "  { id = \"ex-50\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"50*\" ]; };\n"
                               "    contract = { exclusive = true; }; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"ex-503", "ex-50", "roof", NULL};
    expect_warnings(&w, 1, words);
    cfg_free(c);
}

Test(lint, exclusive_same_zip)
{
    static const char text[] = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"ex-a\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"50309\", \"50310\" ]; };\n"
                               "    contract = { exclusive = true; }; },\n"
                               "  { id = \"ex-b\"; niches = [ \"roof\" ];\n"
                               "    territory = { zips = [ \"50310\", \"50309\" ]; };\n"
                               "    contract = { exclusive = true; }; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"ex-a", "ex-b", NULL};
    expect_warnings(&w, 1, words); /* one pair, said once */
    cfg_free(c);
}

/* Des Moines and Ames are about 49 km apart. */
static const char radius_conf[] =
    "niches = ( { name = \"solar\"; } );\n"
    "dealers = (\n"
    "  { id = \"ex-dsm\"; niches = [ \"solar\" ];\n"
    "    territory = { radius = { lat = 41.59; lon = -93.62; km = %s; }; };\n"
    "    contract = { exclusive = true; }; },\n"
    "  { id = \"ex-ames\"; niches = [ \"solar\" ];\n"
    "    territory = { radius = { lat = 42.03; lon = -93.62; km = %s; }; };\n"
    "    contract = { exclusive = true; }; }\n"
    ");\n";

Test(lint, exclusive_radius_overlap)
{
    char text[2048];
    struct warnings w;
    snprintf(text, sizeof text, radius_conf, "30.0", "30.0");
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"ex-dsm", "ex-ames", "solar", NULL};
    expect_warnings(&w, 1, words);
    cfg_free(c);

    /* 20 + 20 km do not reach across 49 km. */
    snprintf(text, sizeof text, radius_conf, "20.0", "20.0");
    c = lint(text, &w);
    cr_assert_eq(w.n, 0, "apart radii reported:\n%s", w.text);
    cfg_free(c);
}

Test(lint, empty_territory)
{
    static const char text[] =

        "niches = ( { name = \"roof\"; } );\n"
        "dealers = (\n"
        "  { id = \"fine\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; }; },\n"
        "  { id = \"nowhere\"; niches = [ \"roof\" ]; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"nowhere", NULL};
    expect_warnings(&w, 1, words);
    expect_where(c, text, &w, "\"nowhere\"");
    cfg_free(c);
}

Test(lint, empty_territory_group)
{
    static const char text[] =

        "niches = ( { name = \"roof\"; } );\n"
        "dealers = (\n"
        "  { id = \"fine\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; }; },\n"
        "  { id = \"hollow\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ ]; zips = [ ]; }; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"hollow", NULL};
    expect_warnings(&w, 1, words);
    cfg_free(c);
}

Test(lint, niche_no_dealer_serves)
{
    static const char text[] =

        "niches = ( { name = \"roof\"; },\n"
        "           { name = \"pools\"; } );\n"
        "dealers = (\n"
        "  { id = \"d\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"pools", NULL};
    expect_warnings(&w, 1, words);
    expect_where(c, text, &w, "\"pools\"");
    cfg_free(c);
}

Test(lint, hour_cap_above_day_cap)
{
    static const char text[] =

        "niches = ( { name = \"roof\"; } );\n"
        "dealers = (\n"
        "  { id = \"ok\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; };\n"
        "    contract = { caps = { hour = 10; day = 10; week = 70; month = 300; }; }; },\n"
        "  { id = \"odd-caps\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; };\n"
        "    contract = { caps = { hour = 20; day = 10; }; }; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"odd-caps", NULL};
    expect_warnings(&w, 1, words);
    expect_where(c, text, &w, "\"odd-caps\"");
    cfg_free(c);
}

Test(lint, week_cap_above_month_cap)
{
    static const char text[] = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"odd\"; niches = [ \"roof\" ];\n"
                               "    territory = { states = [ \"IA\" ]; };\n"
                               "    contract = { caps = { week = 500; month = 100; }; }; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    static const char *const words[] = {"odd", NULL};
    expect_warnings(&w, 1, words);
    cfg_free(c);
}

/* Default grades A 80, B 50, C 0: grade C tops out at 49, B at 79. */
static const char minscore_conf[] = "niches = ( { name = \"roof\"; } );\n"
                                    "dealers = (\n"
                                    "  { id = \"d\"; niches = [ \"roof\" ];\n"
                                    "    territory = { states = [ \"IA\" ]; };\n"
                                    "    contract = { min_score = %d; grades = [ %s ]; }; }\n"
                                    ");\n";

Test(lint, min_score_above_what_grades_allow)
{
    static const struct {
        int min_score;
        const char *grades;
        bool warn;
    } cases[] = {
        {60, "\"C\"", true},  {50, "\"C\"", true},        {49, "\"C\"", false},  {80, "\"B\"", true},
        {79, "\"B\"", false}, {80, "\"B\", \"C\"", true}, {100, "\"A\"", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024];
        snprintf(text, sizeof text, minscore_conf, cases[i].min_score, cases[i].grades);
        struct warnings w;
        struct cfg *c = lint(text, &w);
        if (cases[i].warn) {
            static const char *const words[] = {"'d'", NULL};
            expect_warnings(&w, 1, words);
        } else {
            cr_assert_eq(w.n, 0, "min_score %d grades [%s]: warned:\n%s", cases[i].min_score, cases[i].grades,
                         w.text);
        }
        cfg_free(c);
    }
}

Test(lint, overlap_in_different_niches_is_fine)
{
    static const char text[] =

        "niches = ( { name = \"roof\"; }, { name = \"solar\"; } );\n"
        "dealers = (\n"
        "  { id = \"ex-roof\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; zips = [ \"503*\" ]; radius = { lat = 41.59; lon = -93.62; "
        "km = 50.0; }; };\n"
        "    contract = { exclusive = true; }; },\n"
        "  { id = \"ex-solar\"; niches = [ \"solar\" ];\n"
        "    territory = { states = [ \"IA\" ]; zips = [ \"50309\" ]; radius = { lat = 41.60; lon = -93.62; "
        "km = 50.0; }; };\n"
        "    contract = { exclusive = true; }; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    cr_assert_eq(w.n, 0, "warned:\n%s", w.text);
    cfg_free(c);
}

Test(lint, clean_config_is_silent)
{
    static const char text[] =

        "scoring = { grades = ( { grade = \"A\"; min = 80; }, { grade = \"B\"; min = 50; }, { grade = \"C\"; "
        "min = 0; } ); };\n"
        "niches = ( { name = \"roof\"; sources = [ \"roofs.example\" ]; }, { name = \"solar\"; strategy = "
        "\"nearest\"; } );\n"
        "dealers = (\n"
        "  { id = \"ex-ia\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"IA\" ]; };\n"
        "    contract = { exclusive = true; overflow = \"hold\"; caps = { hour = 5; day = 20; week = 100; "
        "month = 400; }; }; },\n"
        "  { id = \"ex-ne\"; niches = [ \"roof\" ];\n"
        "    territory = { states = [ \"NE\" ]; zips = [ \"681*\" ]; };\n"
        "    contract = { exclusive = true; min_score = 70; grades = [ \"A\", \"B\" ]; }; },\n"
        "  { id = \"shared\"; niches = [ \"roof\", \"solar\" ];\n"
        "    territory = { states = [ \"IA\", \"NE\" ]; zips = [ \"50309\" ]; };\n"
        "    contract = { caps = { day = 50; }; }; },\n"
        "  { id = \"sun-dsm\"; niches = [ \"solar\" ];\n"
        "    territory = { radius = { lat = 41.59; lon = -93.62; km = 20.0; }; };\n"
        "    contract = { exclusive = true; }; },\n"
        "  { id = \"sun-ames\"; niches = [ \"solar\" ];\n"
        "    territory = { radius = { lat = 42.03; lon = -93.62; km = 20.0; }; };\n"
        "    contract = { exclusive = true; }; }\n"
        ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    cr_assert_eq(w.n, 0, "a clean config warned:\n%s", w.text);
    cfg_free(c);
}

Test(lint, several_findings_add_up)
{
    static const char text[] = "niches = ( { name = \"roof\"; }, { name = \"pools\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"ex-1\"; niches = [ \"roof\" ];\n"
                               "    territory = { states = [ \"IA\" ]; };\n"
                               "    contract = { exclusive = true; }; },\n"
                               "  { id = \"ex-2\"; niches = [ \"roof\" ];\n"
                               "    territory = { states = [ \"IA\" ]; };\n"
                               "    contract = { exclusive = true; caps = { hour = 9; day = 3; }; }; },\n"
                               "  { id = \"lost\"; niches = [ \"roof\" ]; }\n"
                               ");\n";
    struct warnings w;
    struct cfg *c = lint(text, &w);
    cr_assert_eq(w.n, 4, "expected overlap, caps, empty territory, unserved niche:\n%s", w.text);
    cr_assert(strstr(w.text, "pools") && strstr(w.text, "lost") && strstr(w.text, "ex-1"), "%s", w.text);
    cfg_free(c);
}
