/* test_rules.c - the routing core (rules/): niche, score and grade,
 * territory, exclusivity, tiers, strategies, hours across DST, filters,
 * pauses and returns, the most telling reason, determinism, cap buckets and
 * explain. Tables come from config text through cfg_load(); leads are
 * struct literals. Each expectation is SPEC section 5. */
#include <math.h>

#include "rtest.h"

/* clang-format off */
/* An lr_str initializer of a string literal. */
#define S(lit) {(lit), sizeof(lit) - 1}
/* clang-format on */

/* Kilometres per degree of latitude on the haversine sphere (R 6371 km). */
#define KM_PER_DEG (6371.0 * M_PI / 180.0)

/* Days of the week, for configs open all week. */
#define ALL_DAYS "[ \"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\" ]"

static int niche_ix(const struct rt *r, const char *name)
{
    int n = rules_niche_find(r->t, name, strlen(name));
    cr_assert(n >= 0, "no niche '%s'", name);
    return n;
}

/* ---------------------------------------------------------------- niche -- */

static const char niche_conf[] =
    "niches = (\n"
    "  { name = \"solar\"; sources = [ \"SunQuote.example\", \"shared.example\" ];\n"
    "    keywords = [ \"Panel\" ]; },\n"
    "  { name = \"roof\"; sources = [ \"roofs.example\", \"shared.example\", \"spring-promo\" ];\n"
    "    keywords = [ \"shingle\", \"roof\" ]; },\n"
    "  { name = \"hvac\"; keywords = [ \"furnace\", \"roof\" ]; }\n"
    ");\n"
    "dealers = (\n"
    "  { id = \"d-solar\"; niches = [ \"solar\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"d-roof\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"d-hvac\"; niches = [ \"hvac\" ]; territory = { states = [ \"IA\" ]; }; }\n"
    ");\n";

static void expect_niche(struct rt *r, const struct lead *l, const char *niche, enum rules_how how)
{
    rt_route(r, l);
    int want = niche_ix(r, niche);
    cr_assert_eq(r->d.niche, want, "lead %.*s: niche %d, expected %s (%d)", (int)l->id.len, l->id.p,
                 r->d.niche, niche, want);
    cr_assert_eq(r->d.how, how, "lead %.*s: found by %s, expected %s", (int)l->id.len, l->id.p,
                 rules_how_str(r->d.how), rules_how_str(how));
    rt_assert_reason(r, REASON_ASSIGNED);
}

Test(niche, explicit_niche_wins_over_source_and_keywords)
{
    struct rt r;
    rt_open(&r, niche_conf);
    static const struct lr_str kw[] = {S("panel")};
    struct lead l = lead_mk("n1", "roof", "IA", NULL);
    l.source = rt_str("sunquote.example");
    l.keywords = kw;
    l.n_keywords = 1;
    expect_niche(&r, &l, "roof", HOW_EXPLICIT);
    cr_assert_str_eq(rt_picked(&r, 0), "d-roof");
    rt_close(&r);
}

Test(niche, unconfigured_niche_falls_through_to_source)
{
    struct rt r;
    rt_open(&r, niche_conf);
    struct lead l = lead_mk("n2", "gutters", "IA", NULL);
    l.source = rt_str("sunquote.example");
    expect_niche(&r, &l, "solar", HOW_SOURCE);
    rt_close(&r);
}

Test(niche, source_is_case_insensitive_and_first_niche_in_config_order_wins)
{
    struct rt r;
    rt_open(&r, niche_conf);
    struct lead l = lead_mk("n3", NULL, "IA", NULL);
    l.source = rt_str("SUNQUOTE.Example"); /* configured as "SunQuote.example" */
    expect_niche(&r, &l, "solar", HOW_SOURCE);
    l.source = rt_str("Shared.Example"); /* listed by solar and roof */
    expect_niche(&r, &l, "solar", HOW_SOURCE);
    l.source = rt_str("roofs.example");
    expect_niche(&r, &l, "roof", HOW_SOURCE);
    rt_close(&r);
}

Test(niche, campaign_matches_sources)
{
    struct rt r;
    rt_open(&r, niche_conf);
    struct lead l = lead_mk("n4", NULL, "IA", NULL);
    l.campaign = rt_str("Spring-Promo");
    expect_niche(&r, &l, "roof", HOW_CAMPAIGN);
    /* A source that names no niche does not hide the campaign. */
    l.source = rt_str("unknown.example");
    expect_niche(&r, &l, "roof", HOW_CAMPAIGN);
    /* Source and campaign name different niches: the first niche in config
     * order wins, whichever of the two named it. */
    l.source = rt_str("roofs.example");
    l.campaign = rt_str("sunquote.example");
    expect_niche(&r, &l, "solar", HOW_CAMPAIGN);
    rt_close(&r);
}

Test(niche, keywords_when_no_source_matches)
{
    struct rt r;
    rt_open(&r, niche_conf);
    static const struct lr_str kw1[] = {S("Furnace")};
    static const struct lr_str kw2[] = {S("nothing"), S("ROOF")};  /* roof and hvac: roof is listed first */
    static const struct lr_str kw3[] = {S("furnace"), S("panel")}; /* hvac and solar: solar is listed first */
    struct lead l = lead_mk("n5", NULL, "IA", NULL);
    l.source = rt_str("elsewhere.example");
    l.keywords = kw1;
    l.n_keywords = 1;
    expect_niche(&r, &l, "hvac", HOW_KEYWORD);
    l.keywords = kw2;
    l.n_keywords = 2;
    expect_niche(&r, &l, "roof", HOW_KEYWORD);
    l.keywords = kw3;
    l.n_keywords = 2;
    expect_niche(&r, &l, "solar", HOW_KEYWORD);
    rt_close(&r);
}

Test(niche, source_beats_keywords)
{
    struct rt r;
    rt_open(&r, niche_conf);
    static const struct lr_str kw[] = {S("panel")};
    struct lead l = lead_mk("n6", NULL, "IA", NULL);
    l.source = rt_str("roofs.example");
    l.keywords = kw;
    l.n_keywords = 1;
    expect_niche(&r, &l, "roof", HOW_SOURCE);
    rt_close(&r);
}

Test(niche, nothing_matches_is_unknown_niche)
{
    struct rt r;
    rt_open(&r, niche_conf);
    static const struct lr_str kw[] = {S("pool"), S("rooftop")};
    struct lead l = lead_mk("n7", "pools", "IA", NULL);
    l.source = rt_str("pools.example");
    l.campaign = rt_str("summer");
    l.keywords = kw;
    l.n_keywords = 2;
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_UNKNOWN_NICHE);
    cr_assert_eq(r.d.niche, -1);
    cr_assert_eq(r.d.how, HOW_NONE);
    cr_assert_eq(r.d.n_verdicts, 0);
    /* A lead with nothing at all. */
    struct lead bare = lead_mk("n8", NULL, "IA", NULL);
    cr_assert_eq(rt_route(&r, &bare), 0);
    rt_assert_reason(&r, REASON_UNKNOWN_NICHE);
    rt_close(&r);
}

/* ---------------------------------------------------------------- score -- */

static const char score_conf[] =
    "scoring = { weights = { web = 10.0; email = 0.5; demo = 1; }; };\n"
    "routing = { hot_grades = [ \"A\" ]; };\n"
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = ( { id = \"d\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; } );\n";

static void expect_score(struct rt *r, const struct lead_signal *sig, uint32_t n, int score,
                         const char *grade, bool hot)
{
    struct lead l = lead_mk("s", "roof", "IA", NULL);
    l.signals = sig;
    l.n_signals = n;
    rt_decide(r, &l);
    cr_assert(r->d.score_computed, "score not marked as computed");
    cr_assert_eq(r->d.score, score, "score %d, expected %d", r->d.score, score);
    cr_assert_str_eq(r->t->grades[r->d.grade].name, grade, "score %d: grade %s, expected %s", score,
                     r->t->grades[r->d.grade].name, grade);
    cr_assert_eq(r->d.hot, hot, "score %d: hot %d, expected %d", score, r->d.hot, hot);
}

Test(score, weighted_sum_rounds_half_up)
{
    struct rt r;
    rt_open(&r, score_conf);
    const struct lead_signal half[] = {{S("web"), 2}, {S("email"), 11}}; /* 20 + 5.5 = 25.5 */
    expect_score(&r, half, 2, 26, "C", false);
    const struct lead_signal below[] = {{S("web"), 2}, {S("email"), 10.98}}; /* 25.49 */
    expect_score(&r, below, 2, 25, "C", false);
    const struct lead_signal exact[] = {{S("web"), 2.5}};
    expect_score(&r, exact, 1, 25, "C", false);
    const struct lead_signal none[] = {{S("other"), 3}};
    expect_score(&r, none, 1, 0, "C", false);
    expect_score(&r, NULL, 0, 0, "C", false);
    rt_close(&r);
}

Test(score, unweighted_signals_are_ignored)
{
    struct rt r;
    rt_open(&r, score_conf);
    const struct lead_signal sig[] = {{S("web"), 2}, {S("junk"), 1000}, {S("email"), 11}};
    expect_score(&r, sig, 3, 26, "C", false);
    rt_close(&r);
}

Test(score, clamped_to_0_100)
{
    struct rt r;
    rt_open(&r, score_conf);
    const struct lead_signal neg[] = {{S("web"), -5}};
    expect_score(&r, neg, 1, 0, "C", false);
    const struct lead_signal big[] = {{S("web"), 20}, {S("demo"), 3}};
    expect_score(&r, big, 2, 100, "A", true);
    const struct lead_signal mixed[] = {{S("web"), 9}, {S("demo"), -95}}; /* -5 */
    expect_score(&r, mixed, 2, 0, "C", false);
    rt_close(&r);
}

Test(score, overflowing_sums_stay_in_range)
{
    struct rt r;
    rt_open(&r, score_conf);
    /* Finite signals (the codec refuses others) whose products overflow. */
    const struct lead_signal up[] = {{S("web"), 1e308}};
    expect_score(&r, up, 1, 100, "A", true);
    const struct lead_signal down[] = {{S("web"), -1e308}};
    expect_score(&r, down, 1, 0, "C", false);
    const struct lead_signal both[] = {{S("web"), 1e308}, {S("demo"), -1e308}, {S("web"), -1e308}};
    struct lead l = lead_mk("s", "roof", "IA", NULL);
    l.signals = both;
    l.n_signals = 3;
    rt_decide(&r, &l);
    cr_assert(r.d.score >= 0 && r.d.score <= 100, "score %d", r.d.score);
    const struct lead_signal tiny[] = {{S("web"), 1e-300}, {S("email"), 0.999}}; /* 0.4995 */
    expect_score(&r, tiny, 2, 0, "C", false);
    rt_close(&r);
}

Test(score, grade_boundaries_and_hot)
{
    struct rt r;
    rt_open(&r, score_conf);
    const struct lead_signal a[] = {{S("demo"), 79.5}}; /* rounds to 80 */
    expect_score(&r, a, 1, 80, "A", true);
    const struct lead_signal b[] = {{S("demo"), 79.4}};
    expect_score(&r, b, 1, 79, "B", false);
    const struct lead_signal b50[] = {{S("demo"), 50}};
    expect_score(&r, b50, 1, 50, "B", false);
    const struct lead_signal c49[] = {{S("demo"), 49}};
    expect_score(&r, c49, 1, 49, "C", false);
    rt_close(&r);
}

Test(score, given_score_is_used_as_is)
{
    struct rt r;
    rt_open(&r, score_conf);
    static const struct {
        int score;
        const char *grade;
        bool hot;
    } cases[] = {{0, "C", false},  {49, "C", false}, {50, "B", false},
                 {79, "B", false}, {80, "A", true},  {100, "A", true}};
    const struct lead_signal sig[] = {{S("web"), 10}}; /* would be 100 */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lead l = lead_mk("g", "roof", "IA", NULL);
        lead_score(&l, cases[i].score);
        l.signals = sig;
        l.n_signals = 1;
        rt_decide(&r, &l);
        cr_assert(!r.d.score_computed);
        cr_assert_eq(r.d.score, cases[i].score);
        cr_assert_str_eq(r.t->grades[r.d.grade].name, cases[i].grade, "score %d", cases[i].score);
        cr_assert_eq(r.d.hot, cases[i].hot, "score %d", cases[i].score);
    }
    rt_close(&r);
}

Test(score, custom_grades_and_several_hot_grades)
{
    struct rt r;
    rt_open(&r,
            "scoring = { grades = ( { grade = \"top\"; min = 90; }, { grade = \"mid\"; min = 40; },\n"
            "                       { grade = \"low\"; min = 0; } ); };\n"
            "routing = { hot_grades = [ \"top\", \"mid\" ]; };\n"
            "niches = ( { name = \"roof\"; } );\n"
            "dealers = ( { id = \"d\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; } );\n");
    static const struct {
        int score;
        const char *grade;
        bool hot;
    } cases[] = {
        {95, "top", true}, {90, "top", true}, {89, "mid", true}, {40, "mid", true}, {39, "low", false}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lead l = lead_mk("g", "roof", "IA", NULL);
        lead_score(&l, cases[i].score);
        rt_decide(&r, &l);
        cr_assert_str_eq(r.t->grades[r.d.grade].name, cases[i].grade, "score %d", cases[i].score);
        cr_assert_eq(r.d.hot, cases[i].hot, "score %d", cases[i].score);
    }
    rt_close(&r);
}

/* ------------------------------------------------------------ territory -- */

#define DSM_LAT 41.59
#define DSM_LON -93.62

static const char terr_conf[] =
    "niches = ( { name = \"roof\"; max_buyers = 16; }, { name = \"solar\"; } );\n"
    "dealers = (\n"
    "  { id = \"all\"; niches = [ \"roof\" ];\n"
    "    territory = { states = [ \"IA\" ]; zips = [ \"50309\", \"503*\" ];\n"
    "                  radius = { lat = 41.59; lon = -93.62; km = 80.0; }; }; },\n"
    "  { id = \"z\"; niches = [ \"roof\" ]; territory = { zips = [ \"50309\" ]; }; },\n"
    "  { id = \"p\"; niches = [ \"roof\" ]; territory = { zips = [ \"503*\" ]; }; },\n"
    "  { id = \"s\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"r\"; niches = [ \"roof\" ];\n"
    "    territory = { radius = { lat = 41.59; lon = -93.62; km = 80.0; }; }; },\n"
    "  { id = \"other-niche\"; niches = [ \"solar\" ];\n"
    "    territory = { states = [ \"IA\" ]; zips = [ \"50309\" ];\n"
    "                  radius = { lat = 41.59; lon = -93.62; km = 80.0; }; }; }\n"
    ");\n";

#define rt_assert_match(r, id, want)                                                                         \
    cr_assert_eq(rt_match((r), (id)), (int)(want), "dealer '%s': match %d, expected %s", (id),               \
                 rt_match((r), (id)), rules_match_str(want))

Test(territory, exact_zip_prefix_state)
{
    struct rt r;
    rt_open(&r, terr_conf);
    struct lead l = lead_mk("t1", "roof", "IA", "50309");
    rt_route(&r, &l);
    rt_assert_reason(&r, REASON_ASSIGNED);
    cr_assert_eq(r.d.n_verdicts, 4);
    rt_assert_match(&r, "all", MATCH_ZIP);
    rt_assert_match(&r, "z", MATCH_ZIP);
    rt_assert_match(&r, "p", MATCH_PREFIX);
    rt_assert_match(&r, "s", MATCH_STATE);
    cr_assert_eq(rt_verdict(&r, "r"), NULL, "radius dealer considered for a lead without coordinates");
    cr_assert_eq(rt_verdict(&r, "other-niche"), NULL, "dealer of another niche considered");

    l = lead_mk("t2", "roof", "IA", "50310");
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 3);
    rt_assert_match(&r, "all", MATCH_PREFIX);
    rt_assert_match(&r, "p", MATCH_PREFIX);
    rt_assert_match(&r, "s", MATCH_STATE);
    cr_assert_eq(rt_verdict(&r, "z"), NULL);

    l = lead_mk("t3", "roof", "IA", "51000");
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 2);
    rt_assert_match(&r, "all", MATCH_STATE);
    rt_assert_match(&r, "s", MATCH_STATE);

    /* A zip under the prefix but in another state: no state match. */
    l = lead_mk("t4", "roof", "NE", "50399");
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 2);
    rt_assert_match(&r, "all", MATCH_PREFIX);
    rt_assert_match(&r, "p", MATCH_PREFIX);
    rt_close(&r);
}

Test(territory, most_specific_match_with_coordinates)
{
    struct rt r;
    rt_open(&r, terr_conf);
    struct lead l = lead_mk("t5", "roof", "IA", "50309");
    lead_geo(&l, DSM_LAT + 0.1, DSM_LON);
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 5);
    rt_assert_match(&r, "all", MATCH_ZIP);
    rt_assert_match(&r, "r", MATCH_RADIUS);
    rt_close(&r);
}

Test(territory, radius_inside_and_just_outside)
{
    struct rt r;
    rt_open(&r, terr_conf);
    double in_dlat = 79.9 / KM_PER_DEG, out_dlat = 80.1 / KM_PER_DEG;
    cr_assert_float_eq(rules_distance_km(DSM_LAT, DSM_LON, DSM_LAT + in_dlat, DSM_LON), 79.9, 1e-6);

    struct lead l = lead_mk("t6", "roof", NULL, NULL);
    lead_geo(&l, DSM_LAT + in_dlat, DSM_LON);
    rt_route(&r, &l);
    rt_assert_reason(&r, REASON_ASSIGNED);
    cr_assert_eq(r.d.n_verdicts, 2);
    rt_assert_match(&r, "all", MATCH_RADIUS);
    rt_assert_match(&r, "r", MATCH_RADIUS);

    l = lead_mk("t7", "roof", NULL, NULL);
    lead_geo(&l, DSM_LAT - in_dlat, DSM_LON);
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 2);

    static const double outside[][2] = {{1, 0}, {-1, 0}};
    for (size_t i = 0; i < 2; i++) {
        l = lead_mk("t8", "roof", NULL, NULL);
        lead_geo(&l, DSM_LAT + outside[i][0] * out_dlat, DSM_LON);
        cr_assert_eq(rt_route(&r, &l), 0);
        cr_assert_eq(r.d.n_verdicts, 0);
        rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    }
    /* East-west: 79.9 km along the parallel is inside (the great-circle
     * distance is a little shorter than the parallel arc). */
    double dlon = 79.9 / (KM_PER_DEG * cos(DSM_LAT * M_PI / 180.0));
    l = lead_mk("t9", "roof", NULL, NULL);
    lead_geo(&l, DSM_LAT, DSM_LON + dlon);
    rt_route(&r, &l);
    cr_assert_eq(r.d.n_verdicts, 2);
    /* And 81 km west is outside. */
    dlon = 81.0 / (KM_PER_DEG * cos(DSM_LAT * M_PI / 180.0));
    l = lead_mk("t10", "roof", NULL, NULL);
    lead_geo(&l, DSM_LAT, DSM_LON - dlon);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    rt_close(&r);
}

Test(territory, radius_across_the_antimeridian_and_near_a_pole)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"sea\"; max_buyers = 4; } );\n"
                "dealers = (\n"
                "  { id = \"fiji\"; niches = [ \"sea\" ];\n"
                "    territory = { radius = { lat = -17.0; lon = 179.8; km = 50.0; }; }; },\n"
                "  { id = \"pole\"; niches = [ \"sea\" ];\n"
                "    territory = { radius = { lat = 89.5; lon = 0.0; km = 100.0; }; }; },\n"
                "  { id = \"huge\"; niches = [ \"sea\" ];\n"
                "    territory = { radius = { lat = 0.0; lon = 0.0; km = 5000.0; }; }; }\n"
                ");\n");
    static const struct {
        double lat, lon;
        const char *in; /* the one dealer expected, or NULL for none */
    } cases[] = {
        {-17.0, -179.9, "fiji"},                        /* 0.3 degrees east across the antimeridian */
        {-17.0, 179.4, "fiji"},  {-17.0, -179.5, NULL}, /* 0.7 degrees: about 74 km */
        {89.5, 180.0, NULL},                            /* across the pole: 1 degree, 111 km */
        {89.9, 90.0, "pole"},    {89.0, 0.0, "pole"},   {30.0, 30.0, "huge"}, /* about 4600 km */
        {33.0, 33.0, NULL},                                                   /* about 5040 km */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct lead l = lead_mk("geo", "sea", NULL, NULL);
        lead_geo(&l, cases[i].lat, cases[i].lon);
        rt_decide(&r, &l);
        /* The expectation follows the great-circle distance itself. */
        for (uint32_t d = 0; d < r.t->n_dealers; d++) {
            const struct rules_dealer *dl = &r.t->dealers[d];
            double km = rules_distance_km(dl->lat, dl->lon, cases[i].lat, cases[i].lon);
            bool want = cases[i].in && strcmp(cases[i].in, dl->id) == 0;
            cr_assert_eq(km <= dl->km, want, "case %zu: %s at %.1f km (radius %.0f)", i, dl->id, km, dl->km);
            int m = rt_match(&r, dl->id);
            cr_assert_eq(m, want ? MATCH_RADIUS : -1, "case %zu (%.2f, %.2f): dealer %s match %d", i,
                         cases[i].lat, cases[i].lon, dl->id, m);
        }
    }
    rt_close(&r);
}

Test(territory, nobody_covers_is_no_dealer_in_territory)
{
    struct rt r;
    rt_open(&r, terr_conf);
    struct lead l = lead_mk("t11", "roof", "TX", "75001");
    lead_geo(&l, 32.96, -96.83);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    cr_assert_eq(r.d.n_verdicts, 0);
    /* Covered only by a dealer of another niche. */
    l = lead_mk("t12", "solar", "TX", "75001");
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    /* A lead without any location. */
    l = lead_mk("t13", "roof", NULL, NULL);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    rt_close(&r);
}

Test(territory, only_dealers_of_the_niche)
{
    struct rt r;
    rt_open(&r, terr_conf);
    struct lead l = lead_mk("t14", "solar", "IA", "50309");
    lead_geo(&l, DSM_LAT, DSM_LON);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_eq(r.d.n_verdicts, 1);
    cr_assert_str_eq(rt_picked(&r, 0), "other-niche");
    rt_assert_match(&r, "other-niche", MATCH_ZIP);
    rt_close(&r);
}

Test(territory, zip_and_state_ignore_case_and_spaces)
{
    struct rt r;
    rt_open(&r,
            "niches = ( { name = \"roof\"; } );\n"
            "dealers = (\n"
            "  { id = \"ca\"; niches = [ \"roof\" ]; territory = { zips = [ \"K1A 0B1\", \"m5v*\" ]; }; },\n"
            "  { id = \"st\"; niches = [ \"roof\" ]; territory = { states = [ \"on\" ]; }; }\n"
            ");\n");
    static const char *const exact[] = {"K1A 0B1", "k1a0b1", "K1A0B1", "k1a 0b1", " K1A  0B1 "};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
        struct lead l = lead_mk("c", "roof", NULL, exact[i]);
        rt_route(&r, &l);
        rt_assert_match(&r, "ca", MATCH_ZIP);
    }
    static const char *const pre[] = {"M5V 3L9", "m5v3l9", "M5V"};
    for (size_t i = 0; i < sizeof pre / sizeof pre[0]; i++) {
        struct lead l = lead_mk("c", "roof", NULL, pre[i]);
        rt_route(&r, &l);
        rt_assert_match(&r, "ca", MATCH_PREFIX);
    }
    struct lead l = lead_mk("c", "roof", NULL, "K1A 0B2");
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    l = lead_mk("c", "roof", "On", NULL);
    rt_route(&r, &l);
    rt_assert_match(&r, "st", MATCH_STATE);
    rt_close(&r);
}

/* ------------------------------------------------------------ exclusive -- */

/* An exclusive dealer listed between two shared ones; %s is its overflow. */
static const char excl_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"open1\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"ex\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"%s\"; caps = { day = 5; };\n"
    "                 hours = { days = [ \"mon\", \"tue\", \"wed\", \"thu\", \"fri\" ];\n"
    "                           from = \"08:00\"; to = \"18:00\"; }; }; },\n"
    "  { id = \"open2\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; }\n"
    ");\n";

/* Sunday 2026-03-08 15:00 UTC: the exclusive dealer's office is closed. */
#define SUNDAY_S rt_utc(2026, 3, 8, 15, 0)

Test(exclusive, available_owner_takes_the_lead)
{
    struct rt r;
    rt_openf(&r, excl_conf, "release");
    char rule[32];
    for (int i = 0; i < 10; i++) {
        struct lead l = lead_mk("e1", "roof", "IA", NULL);
        cr_assert_eq(rt_route(&r, &l), 1);
        cr_assert_str_eq(rt_picked(&r, 0), "ex");
        cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "exclusive");
        cr_assert(r.d.owners);
        cr_assert(!r.d.hold);
        rt_assert_why(&r, "ex", WHY_PICKED);
        rt_assert_why(&r, "open1", WHY_OWNER);
        rt_assert_why(&r, "open2", WHY_OWNER);
        cr_assert_eq(rt_verdict(&r, "ex")->stage, 0);
        cr_assert_eq(rt_verdict(&r, "open1")->stage, 1);
    }
    /* A lead it does not cover is shared as usual. */
    struct lead l = lead_mk("e2", "roof", "NE", NULL);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_close(&r);
}

Test(exclusive, release_when_owner_closed)
{
    struct rt r;
    rt_openf(&r, excl_conf, "release");
    rt_at(&r, SUNDAY_S);
    char rule[32];
    struct lead l = lead_mk("e3", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    rt_assert_reason(&r, REASON_ASSIGNED);
    cr_assert_str_eq(rt_picked(&r, 0), "open1");
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "tier:1");
    rt_assert_why(&r, "ex", WHY_CLOSED);
    rt_assert_why(&r, "open2", WHY_NOT_PICKED);
    cr_assert_eq(r.d.picked_stage, 1);
    /* The released leads rotate among the shared dealers. */
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "open2");
    rt_close(&r);
}

Test(exclusive, release_when_owner_capped_or_paused)
{
    struct rt r;
    rt_openf(&r, excl_conf, "release");
    uint32_t ex = rt_dealer(&r, "ex");
    r.usage[ex].used[PERIOD_DAY] = 5;
    struct lead l = lead_mk("e4", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "open1");
    rt_assert_why(&r, "ex", WHY_CAPPED_DAY);
    r.usage[ex].used[PERIOD_DAY] = 4;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "ex");
    r.paused[ex] = 1;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_neq(rt_picked(&r, 0), "ex");
    rt_assert_why(&r, "ex", WHY_PAUSED);
    rt_close(&r);
}

Test(exclusive, hold_when_owner_closed_or_capped)
{
    struct rt r;
    rt_openf(&r, excl_conf, "hold");
    rt_at(&r, SUNDAY_S);
    struct lead l = lead_mk("e5", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_EXCLUSIVE_OWNER_UNAVAILABLE);
    cr_assert(r.d.owners && r.d.hold);
    rt_assert_why(&r, "ex", WHY_CLOSED);
    rt_assert_why(&r, "open1", WHY_OWNER);
    rt_assert_why(&r, "open2", WHY_OWNER);

    rt_at(&r, RT_NOW_S);
    r.usage[rt_dealer(&r, "ex")].used[PERIOD_DAY] = 5;
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_EXCLUSIVE_OWNER_UNAVAILABLE);
    rt_assert_why(&r, "ex", WHY_CAPPED_DAY);
    rt_assert_why(&r, "open1", WHY_OWNER);
    rt_assert_why(&r, "open2", WHY_OWNER);

    /* Available again: it takes the lead. */
    r.usage[rt_dealer(&r, "ex")].used[PERIOD_DAY] = 0;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "ex");
    rt_close(&r);
}

Test(exclusive, owner_alone_even_with_several_buyers)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"roof\"; max_buyers = 3; } );\n"
                "dealers = (\n"
                "  { id = \"open1\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
                "  { id = \"ex\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { exclusive = true; caps = { day = 1; }; }; },\n"
                "  { id = \"open2\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; }\n"
                ");\n");
    char rule[32];
    struct lead l = lead_mk("e6", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "ex");
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "exclusive");
    rt_assert_why(&r, "open1", WHY_OWNER);
    rt_assert_why(&r, "open2", WHY_OWNER);
    /* Released: the shared dealers, both of them. */
    r.usage[rt_dealer(&r, "ex")].used[PERIOD_DAY] = 1;
    cr_assert_eq(rt_route(&r, &l), 2);
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "shared");
    rt_close(&r);
}

static const char specific_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"shared\"; niches = [ \"roof\" ];\n"
    "    territory = { states = [ \"IA\" ]; zips = [ \"50309\" ];\n"
    "                  radius = { lat = 41.59; lon = -93.62; km = 80.0; }; }; },\n"
    "  { id = \"ex-state\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { exclusive = true; }; },\n"
    "  { id = \"ex-radius\"; niches = [ \"roof\" ];\n"
    "    territory = { radius = { lat = 41.59; lon = -93.62; km = 80.0; }; };\n"
    "    contract = { exclusive = true; }; },\n"
    "  { id = \"ex-prefix\"; niches = [ \"roof\" ]; territory = { zips = [ \"503*\" ]; };\n"
    "    contract = { exclusive = true; }; },\n"
    "  { id = \"ex-zip\"; niches = [ \"roof\" ]; territory = { zips = [ \"50309\" ]; };\n"
    "    contract = { exclusive = true; }; }\n"
    ");\n";

static void expect_owner(struct rt *r, const char *state, const char *zip, const char *owner)
{
    static const char *const ids[] = {"shared", "ex-state", "ex-radius", "ex-prefix", "ex-zip"};
    struct lead l = lead_mk("o", "roof", state, zip);
    lead_geo(&l, DSM_LAT, DSM_LON);
    cr_assert_eq(rt_route(r, &l), 1);
    cr_assert_str_eq(rt_picked(r, 0), owner, "state %s zip %s: picked %s, expected owner %s",
                     state ? state : "-", zip ? zip : "-", rt_picked(r, 0), owner);
    cr_assert(r->d.owners);
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        const struct rules_verdict *v = rt_verdict(r, ids[i]);
        if (!v)
            continue;
        bool is_owner = strcmp(ids[i], owner) == 0;
        cr_assert_eq(v->stage, is_owner ? 0 : 1, "dealer %s: stage %d", ids[i], v->stage);
        if (!is_owner)
            rt_assert_why(r, ids[i], WHY_OWNER);
    }
}

Test(exclusive, most_specific_owner_wins)
{
    struct rt r;
    rt_open(&r, specific_conf);
    expect_owner(&r, "IA", "50309", "ex-zip");
    expect_owner(&r, "IA", "50310", "ex-prefix");
    expect_owner(&r, "IA", "51000", "ex-state");
    expect_owner(&r, NULL, NULL, "ex-radius");
    expect_owner(&r, NULL, "50309", "ex-zip");
    expect_owner(&r, "NE", "50399", "ex-prefix");
    rt_close(&r);
}

/* Exclusive dealers whose contracts refuse a lead do not own it, even with
 * overflow = "hold": the shared dealers get it as usual. */
static const char refuse_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"ex-min\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"hold\"; min_score = 60; }; },\n"
    "  { id = \"ex-grade\"; niches = [ \"roof\" ]; territory = { states = [ \"NE\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"hold\"; grades = [ \"A\" ]; }; },\n"
    "  { id = \"ex-filter\"; niches = [ \"roof\" ]; territory = { states = [ \"KS\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"hold\";\n"
    "                 filters = ( { field = \"fields.home_owner\"; eq = true; } ); }; },\n"
    "  { id = \"open\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\", \"NE\", \"KS\" ]; }; },\n"
    "  { id = \"open-b\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\", \"NE\", \"KS\" ]; }; }\n"
    ");\n";

static void expect_refused(struct rt *r, struct lead *l, const char *ex, enum rules_why why)
{
    char rule[32];
    cr_assert_eq(rt_route(r, l), 1, "lead %.*s not assigned (%s)", (int)l->id.len, l->id.p,
                 rules_reason_str(r->d.reason));
    cr_assert_str_eq(rt_picked(r, 0), "open");
    cr_assert(!r->d.owners && !r->d.hold);
    cr_assert_str_eq(rt_rule(r, 0, rule, sizeof rule), "tier:1");
    rt_assert_why(r, ex, why);
    rt_assert_why(r, "open-b", WHY_NOT_PICKED);
    memset(r->rr, 0, r->t->n_rr_slots * sizeof *r->rr);
}

static void expect_owned(struct rt *r, struct lead *l, const char *ex)
{
    cr_assert_eq(rt_route(r, l), 1);
    cr_assert_str_eq(rt_picked(r, 0), ex);
    rt_assert_why(r, "open", WHY_OWNER);
    rt_assert_why(r, "open-b", WHY_OWNER);
}

Test(exclusive, contract_refusal_is_not_ownership)
{
    struct rt r;
    rt_open(&r, refuse_conf);
    struct lead l = lead_mk("x1", "roof", "IA", NULL);
    lead_score(&l, 59);
    expect_refused(&r, &l, "ex-min", WHY_MIN_SCORE);
    lead_score(&l, 60);
    expect_owned(&r, &l, "ex-min");

    l = lead_mk("x2", "roof", "NE", NULL);
    lead_score(&l, 79);
    expect_refused(&r, &l, "ex-grade", WHY_GRADE);
    lead_score(&l, 80);
    expect_owned(&r, &l, "ex-grade");

    l = lead_mk("x3", "roof", "KS", NULL);
    expect_refused(&r, &l, "ex-filter", WHY_FILTER);
    const struct lead_field no[] = {{S("home_owner"), {.type = LEAD_V_BOOL, .b = false}}};
    l.fields = no;
    l.n_fields = 1;
    expect_refused(&r, &l, "ex-filter", WHY_FILTER);
    const struct lead_field yes[] = {{S("home_owner"), {.type = LEAD_V_BOOL, .b = true}}};
    l.fields = yes;
    expect_owned(&r, &l, "ex-filter");
    rt_close(&r);
}

static const char owners_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"open\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"ex-a\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"%s\"; caps = { day = 1; }; }; },\n"
    "  { id = \"ex-b\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { exclusive = true; overflow = \"%s\"; caps = { day = 1; }; }; }\n"
    ");\n";

/* Two owners, one says hold: the lead is held whichever is listed first. */
static void several_owners_hold(const char *ov_a, const char *ov_b)
{
    struct rt r;
    rt_openf(&r, owners_conf, ov_a, ov_b);
    uint32_t a = rt_dealer(&r, "ex-a"), b = rt_dealer(&r, "ex-b");
    char rule[32];
    struct lead l = lead_mk("h1", "roof", "IA", NULL);
    /* Both available: one of them takes it, as an owner. */
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert(strcmp(rt_picked(&r, 0), "ex-a") == 0 || strcmp(rt_picked(&r, 0), "ex-b") == 0);
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "exclusive");
    rt_assert_why(&r, "open", WHY_OWNER);
    /* One capped: the other owner. */
    r.usage[b].used[PERIOD_DAY] = 1;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "ex-a");
    /* Both capped: held, because one of them says hold. */
    r.usage[a].used[PERIOD_DAY] = 1;
    cr_assert_eq(rt_route(&r, &l), 0, "ex-a %s, ex-b %s: released to %s", ov_a, ov_b, rt_picked(&r, 0));
    rt_assert_reason(&r, REASON_EXCLUSIVE_OWNER_UNAVAILABLE);
    rt_assert_why(&r, "ex-a", WHY_CAPPED_DAY);
    rt_assert_why(&r, "ex-b", WHY_CAPPED_DAY);
    rt_assert_why(&r, "open", WHY_OWNER);
    /* Both closed... or paused: held too. */
    r.usage[a].used[PERIOD_DAY] = 0;
    r.usage[b].used[PERIOD_DAY] = 0;
    r.paused[a] = r.paused[b] = 1;
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_EXCLUSIVE_OWNER_UNAVAILABLE);
    rt_close(&r);
}

Test(exclusive, several_owners_any_hold_holds)
{
    several_owners_hold("release", "hold");
    several_owners_hold("hold", "release");
    several_owners_hold("hold", "hold");
}

Test(exclusive, several_owners_all_release_releases)
{
    struct rt r;
    rt_openf(&r, owners_conf, "release", "release");
    r.usage[rt_dealer(&r, "ex-a")].used[PERIOD_DAY] = 1;
    r.usage[rt_dealer(&r, "ex-b")].used[PERIOD_DAY] = 1;
    struct lead l = lead_mk("h2", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "open");
    cr_assert(!r.d.hold);
    rt_close(&r);
}

/* ---------------------------------------------------------------- tiers -- */

static const char tier_conf[] =
    "niches = ( { name = \"roof\"; }, { name = \"duo\"; max_buyers = 2; } );\n"
    "dealers = (\n"
    "  { id = \"t2\"; niches = [ \"roof\", \"duo\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { tier = 2; }; },\n"
    "  { id = \"t1a\"; niches = [ \"roof\", \"duo\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { tier = 1; caps = { day = 3; }; }; },\n"
    "  { id = \"t1b\"; niches = [ \"roof\", \"duo\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { tier = 1; caps = { hour = 2; }; }; }\n"
    ");\n";

Test(tiers, tier_1_before_tier_2)
{
    struct rt r;
    rt_open(&r, tier_conf);
    struct lead l = lead_mk("ti", "roof", "IA", NULL);
    int n1a = 0, n1b = 0;
    for (int i = 0; i < 50; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        const char *p = rt_picked(&r, 0);
        cr_assert_str_neq(p, "t2", "decision %d went to tier 2 with tier 1 available", i);
        rt_assert_why(&r, "t2", WHY_NOT_PICKED);
        n1a += strcmp(p, "t1a") == 0;
        n1b += strcmp(p, "t1b") == 0;
    }
    cr_assert_eq(n1a, 25);
    cr_assert_eq(n1b, 25);
    rt_close(&r);
}

Test(tiers, tier_2_only_when_tier_1_is_capped)
{
    struct rt r;
    rt_open(&r, tier_conf);
    char rule[32];
    uint32_t a = rt_dealer(&r, "t1a"), b = rt_dealer(&r, "t1b");
    struct lead l = lead_mk("ti", "roof", "IA", NULL);
    r.usage[a].used[PERIOD_DAY] = 3;
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        cr_assert_str_eq(rt_picked(&r, 0), "t1b");
        rt_assert_why(&r, "t1a", WHY_CAPPED_DAY);
    }
    r.usage[b].used[PERIOD_HOUR] = 2;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "t2");
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "tier:2");
    rt_assert_why(&r, "t1a", WHY_CAPPED_DAY);
    rt_assert_why(&r, "t1b", WHY_CAPPED_HOUR);
    rt_close(&r);
}

Test(tiers, caps_fill_up_then_overflow_to_tier_2)
{
    struct rt r;
    rt_open(&r, tier_conf);
    struct lead l = lead_mk("ti", "roof", "IA", NULL);
    int na = 0, nb = 0, n2 = 0;
    for (int i = 0; i < 10; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        const char *p = rt_picked(&r, 0);
        if (i < 5)
            cr_assert_str_neq(p, "t2", "decision %d", i);
        else
            cr_assert_str_eq(p, "t2", "decision %d", i);
        na += strcmp(p, "t1a") == 0;
        nb += strcmp(p, "t1b") == 0;
        n2 += strcmp(p, "t2") == 0;
        rt_commit(&r);
    }
    cr_assert_eq(na, 3);
    cr_assert_eq(nb, 2);
    cr_assert_eq(n2, 5);
    rt_close(&r);
}

Test(tiers, max_buyers_fill_from_the_next_tier)
{
    struct rt r;
    rt_open(&r, tier_conf);
    struct lead l = lead_mk("ti", "duo", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 2);
    cr_assert_str_neq(rt_picked(&r, 0), "t2");
    cr_assert_str_neq(rt_picked(&r, 1), "t2");
    cr_assert_str_neq(rt_picked(&r, 0), rt_picked(&r, 1));
    r.usage[rt_dealer(&r, "t1a")].used[PERIOD_DAY] = 3;
    cr_assert_eq(rt_route(&r, &l), 2);
    cr_assert_str_eq(rt_picked(&r, 0), "t1b");
    cr_assert_str_eq(rt_picked(&r, 1), "t2");
    rt_close(&r);
}

Test(tiers, each_cap_period_has_its_verdict)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"roof\"; } );\n"
                "dealers = (\n"
                "  { id = \"c\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { caps = { hour = 1; day = 10; week = 20; month = 30; }; }; }\n"
                ");\n");
    uint32_t c = rt_dealer(&r, "c");
    struct lead l = lead_mk("cp", "roof", "IA", NULL);
    static const struct {
        enum rules_period p;
        uint32_t used;
        enum rules_why why;
    } cases[] = {{PERIOD_HOUR, 1, WHY_CAPPED_HOUR},
                 {PERIOD_DAY, 10, WHY_CAPPED_DAY},
                 {PERIOD_WEEK, 20, WHY_CAPPED_WEEK},
                 {PERIOD_MONTH, 30, WHY_CAPPED_MONTH}};
    for (size_t i = 0; i < 4; i++) {
        memset(&r.usage[c], 0, sizeof r.usage[c]);
        r.usage[c].used[cases[i].p] = cases[i].used - 1;
        cr_assert_eq(rt_route(&r, &l), 1, "period %d one below its cap", cases[i].p);
        r.usage[c].used[cases[i].p] = cases[i].used;
        cr_assert_eq(rt_route(&r, &l), 0, "period %d at its cap", cases[i].p);
        rt_assert_why(&r, "c", cases[i].why);
        rt_assert_reason(&r, REASON_ALL_CAPPED);
    }
    rt_close(&r);
}

/* ------------------------------------------------------- smooth weighted -- */

static const char wrr_conf[] =
    "niches = ( { name = \"roof\"; strategy = \"%s\"; } );\n"
    "dealers = (\n"
    "  { id = \"a\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { weight = %d; caps = { hour = 1000; }; }; },\n"
    "  { id = \"b\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { weight = %d; caps = { hour = 1000; }; }; },\n"
    "  { id = \"c\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { weight = %d; caps = { hour = 1000; }; }; }\n"
    ");\n";

/* Routes n IA leads and writes the first letter of each pick into seq. */
static void route_seq(struct rt *r, int n, char *seq)
{
    struct lead l = lead_mk("w", "roof", "IA", NULL);
    for (int i = 0; i < n; i++) {
        cr_assert_eq(rt_route(r, &l), 1, "decision %d: %s", i, rules_reason_str(r->d.reason));
        seq[i] = rt_picked(r, 0)[0];
    }
    seq[n] = 0;
}

static int count_char(const char *s, char c)
{
    int n = 0;
    for (; *s; s++)
        n += *s == c;
    return n;
}

Test(weighted, three_to_one)
{
    struct rt r;
    /* c is paused, so it takes no part. */
    rt_openf(&r, wrr_conf, "weighted", 3, 1, 1);
    r.paused[rt_dealer(&r, "c")] = 1;
    char seq[401];
    route_seq(&r, 400, seq);
    cr_assert(strncmp(seq, "aaba", 4) == 0, "first picks %.8s, expected aaba", seq);
    cr_assert_eq(count_char(seq, 'a'), 300);
    cr_assert_eq(count_char(seq, 'b'), 100);
    /* Smooth: b never waits more than 3 picks. */
    cr_assert_eq(strstr(seq, "aaaa"), NULL);
    rt_close(&r);
}

Test(weighted, nginx_sequence_5_1_1)
{
    struct rt r;
    rt_openf(&r, wrr_conf, "weighted", 5, 1, 1);
    char seq[22];
    route_seq(&r, 21, seq);
    cr_assert_str_eq(seq, "aabacaaaabacaaaabacaa");
    /* After one full cycle every current value is back at zero. */
    for (uint32_t i = 0; i < r.t->n_rr_slots; i++)
        cr_assert_eq(r.rr[i], 0, "rr[%u] = %lld after full cycles", i, (long long)r.rr[i]);
    rt_close(&r);
}

Test(weighted, round_robin_ignores_weights)
{
    struct rt r;
    rt_openf(&r, wrr_conf, "round_robin", 5, 1, 1);
    char seq[13];
    route_seq(&r, 12, seq);
    cr_assert_str_eq(seq, "abcabcabcabc");
    r.paused[rt_dealer(&r, "b")] = 1;
    route_seq(&r, 6, seq);
    cr_assert_str_eq(seq, "acacac");
    rt_close(&r);
}

Test(weighted, capped_dealer_is_skipped_and_keeps_its_value)
{
    struct rt r;
    rt_openf(&r, wrr_conf, "weighted", 3, 1, 2);
    int niche = niche_ix(&r, "roof");
    int sa = rules_rr_slot(r.t, rt_dealer(&r, "a"), (uint32_t)niche);
    int sb = rules_rr_slot(r.t, rt_dealer(&r, "b"), (uint32_t)niche);
    int sc = rules_rr_slot(r.t, rt_dealer(&r, "c"), (uint32_t)niche);
    cr_assert(sa >= 0 && sb >= 0 && sc >= 0 && sa != sb && sb != sc && sa != sc);
    char seq[64];

    /* Nobody capped, 3 decisions: a c a (values a -3, b 3, c 0). */
    route_seq(&r, 3, seq);
    cr_assert_str_eq(seq, "aca");
    int64_t before_b = r.rr[sb];
    uint32_t b = rt_dealer(&r, "b");
    r.usage[b].used[PERIOD_HOUR] = 1000;
    route_seq(&r, 20, seq);
    cr_assert_eq(count_char(seq, 'b'), 0, "a capped dealer won: %s", seq);
    cr_assert_eq(r.rr[sb], before_b, "capped dealer's value moved: %lld -> %lld", (long long)before_b,
                 (long long)r.rr[sb]);
    rt_assert_why(&r, "b", WHY_CAPPED_HOUR);
    /* a and c rotate 3:2 among themselves meanwhile (SPEC's algorithm over
     * the eligible dealers, worked out by hand). */
    cr_assert_str_eq(seq, "caacacaacacaacacaaca");
    cr_assert_eq(r.rr[sa], -3);
    cr_assert_eq(r.rr[sc], 0);

    /* Uncapped, the rotation goes on from where it stood: exactly what 15
     * uncapped decisions from the start give after the first 3. */
    r.usage[b].used[PERIOD_HOUR] = 0;
    route_seq(&r, 12, seq);
    cr_assert_str_eq(seq, "bcaacabcaaca");
    rt_close(&r);
}

Test(weighted, closed_or_paused_dealer_keeps_its_value)
{
    struct rt r;
    rt_openf(&r, wrr_conf, "weighted", 3, 1, 2);
    int niche = niche_ix(&r, "roof");
    uint32_t b = rt_dealer(&r, "b");
    int sb = rules_rr_slot(r.t, b, (uint32_t)niche);
    char seq[16];
    route_seq(&r, 2, seq);
    int64_t before = r.rr[sb];
    r.paused[b] = 1;
    route_seq(&r, 7, seq);
    cr_assert_eq(count_char(seq, 'b'), 0);
    cr_assert_eq(r.rr[sb], before);
    rt_close(&r);
}

Test(weighted, rotation_survives_a_restart)
{
    struct rt one, two;
    rt_openf(&one, wrr_conf, "weighted", 5, 3, 2);
    rt_openf(&two, wrr_conf, "weighted", 5, 3, 2);
    static char all[401], first[201], second[201];
    route_seq(&one, 400, all);
    route_seq(&two, 200, first);

    /* "Restart": a new process would load the table again and read the
     * rotation values back; here a new scratch and a new array. */
    int64_t *saved = malloc(two.t->n_rr_slots * sizeof *saved);
    cr_assert_not_null(saved);
    memcpy(saved, two.rr, two.t->n_rr_slots * sizeof *saved);
    rules_scratch_free(two.s);
    free(two.rr);
    two.s = rules_scratch_new(two.t);
    two.rr = saved;
    cr_assert_not_null(two.s);

    route_seq(&two, 200, second);
    cr_assert(strncmp(all, first, 200) == 0, "first halves differ");
    cr_assert_str_eq(all + 200, second, "rotation after the restart differs");
    cr_assert_eq(count_char(all, 'a'), 200);
    cr_assert_eq(count_char(all, 'b'), 120);
    cr_assert_eq(count_char(all, 'c'), 80);
    rt_close(&one);
    rt_close(&two);
}

/* ------------------------------------------------------------- nearest --- */

static const char near_conf[] =
    "niches = ( { name = \"n5\"; strategy = \"nearest\"; max_buyers = 5; },\n"
    "           { name = \"n1\"; strategy = \"nearest\"; } );\n"
    "dealers = (\n"
    "  { id = \"norad\"; niches = [ \"n5\", \"n1\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"far\"; niches = [ \"n5\", \"n1\" ];\n"
    "    territory = { states = [ \"IA\" ]; radius = { lat = 41.88; lon = -87.63; km = 1000.0; }; }; },\n"
    "  { id = \"mid1\"; niches = [ \"n5\", \"n1\" ];\n"
    "    territory = { states = [ \"IA\" ]; radius = { lat = 42.03; lon = -93.62; km = 100.0; }; }; },\n"
    "  { id = \"close\"; niches = [ \"n5\", \"n1\" ];\n"
    "    territory = { states = [ \"IA\" ]; radius = { lat = 41.60; lon = -93.62; km = 50.0; }; };\n"
    "    contract = { caps = { day = 1; }; }; },\n"
    "  { id = \"mid2\"; niches = [ \"n5\", \"n1\" ];\n"
    "    territory = { states = [ \"IA\" ]; radius = { lat = 42.03; lon = -93.62; km = 100.0; }; }; }\n"
    ");\n";

Test(nearest, distance_order_ties_listed_first_no_radius_last)
{
    struct rt r;
    rt_open(&r, near_conf);
    char rule[32];
    struct lead l = lead_mk("nr", "n5", "IA", NULL);
    lead_geo(&l, DSM_LAT, DSM_LON);
    cr_assert_eq(rt_route(&r, &l), 5);
    static const char *const want[] = {"close", "mid1", "mid2", "far", "norad"};
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_str_eq(rt_picked(&r, i), want[i], "pick %u", i);
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "shared");

    l.niche = rt_str("n1");
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "close");
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "nearest");
    rt_assert_why(&r, "mid1", WHY_NOT_PICKED);
    /* Nearest is not rotation: it stays the nearest. */
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "close");
    /* Capped: the next nearest. */
    r.usage[rt_dealer(&r, "close")].used[PERIOD_DAY] = 1;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "mid1");
    rt_close(&r);
}

Test(nearest, lead_near_another_centre)
{
    struct rt r;
    rt_open(&r, near_conf);
    struct lead l = lead_mk("nr", "n5", "IA", NULL);
    lead_geo(&l, 40.50, -89.00); /* Bloomington IL: far 192 km, close 406, mid 422 */
    cr_assert_eq(rt_route(&r, &l), 5);
    static const char *const want[] = {"far", "close", "mid1", "mid2", "norad"};
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_str_eq(rt_picked(&r, i), want[i], "pick %u", i);
    rt_close(&r);
}

Test(nearest, lead_without_coordinates_is_config_order)
{
    struct rt r;
    rt_open(&r, near_conf);
    struct lead l = lead_mk("nr", "n5", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 5);
    static const char *const want[] = {"norad", "far", "mid1", "close", "mid2"};
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_str_eq(rt_picked(&r, i), want[i], "pick %u", i);
    rt_close(&r);
}

Test(nearest, distance_is_great_circle)
{
    cr_assert_float_eq(rules_distance_km(0, 0, 0, 1), KM_PER_DEG, 1e-6);
    cr_assert_float_eq(rules_distance_km(0, 0, 1, 0), KM_PER_DEG, 1e-6);
    cr_assert_float_eq(rules_distance_km(10, 20, 10, 20), 0.0, 1e-9);
    cr_assert_float_eq(rules_distance_km(0, 0, 0, 180), M_PI * 6371.0, 1e-6);
    cr_assert_float_eq(rules_distance_km(0, 179.5, 0, -179.5), KM_PER_DEG, 1e-6);
    /* Des Moines - Chicago, about 496 km. */
    double d = rules_distance_km(DSM_LAT, DSM_LON, 41.88, -87.63);
    cr_assert(d > 490 && d < 502, "Des Moines - Chicago: %f km", d);
}

/* -------------------------------------------------------- least_loaded --- */

static const char ll_conf[] =
    "niches = ( { name = \"ll5\"; strategy = \"least_loaded\"; max_buyers = 5; },\n"
    "           { name = \"ll1\"; strategy = \"least_loaded\"; } );\n"
    "dealers = (\n"
    "  { id = \"a\"; niches = [ \"ll5\", \"ll1\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { day = 10; }; }; },\n"
    "  { id = \"d\"; niches = [ \"ll5\", \"ll1\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { week = 1000; }; }; },\n"
    "  { id = \"c\"; niches = [ \"ll5\", \"ll1\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { day = 4; }; }; },\n"
    "  { id = \"b\"; niches = [ \"ll5\", \"ll1\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { day = 100; }; }; },\n"
    "  { id = \"e\"; niches = [ \"ll5\", \"ll1\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { day = 50; }; }; }\n"
    ");\n";

Test(least_loaded, share_of_day_cap_ties_listed_first)
{
    struct rt r;
    rt_open(&r, ll_conf);
    char rule[32];
    r.usage[rt_dealer(&r, "a")].used[PERIOD_DAY] = 5;  /* 0.5 */
    r.usage[rt_dealer(&r, "d")].used[PERIOD_DAY] = 3;  /* no day cap: 3 */
    r.usage[rt_dealer(&r, "c")].used[PERIOD_DAY] = 1;  /* 0.25 */
    r.usage[rt_dealer(&r, "b")].used[PERIOD_DAY] = 20; /* 0.2 */
    r.usage[rt_dealer(&r, "e")].used[PERIOD_DAY] = 10; /* 0.2, listed after b */
    /* Other periods do not count. */
    r.usage[rt_dealer(&r, "b")].used[PERIOD_MONTH] = 900;
    struct lead l = lead_mk("ll", "ll5", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 5);
    static const char *const want[] = {"b", "e", "c", "a", "d"};
    for (uint32_t i = 0; i < 5; i++)
        cr_assert_str_eq(rt_picked(&r, i), want[i], "pick %u", i);

    l.niche = rt_str("ll1");
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "b");
    cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "least_loaded");

    /* Without a day cap the count itself: 0 assignments come first. */
    r.usage[rt_dealer(&r, "d")].used[PERIOD_DAY] = 0;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "d");
    rt_close(&r);
}

Test(least_loaded, all_equal_is_config_order_and_load_spreads)
{
    struct rt r;
    rt_open(&r, ll_conf);
    struct lead l = lead_mk("ll", "ll1", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "a");
    /* Counting the commits: d (no day cap) takes one lead, then its key
     * (1 lead) is above every share below 1, so the capped dealers fill up
     * first (10 + 4 + 100 + 50 = 164) and d gets the rest. */
    int n[5] = {0};
    for (int i = 0; i < 170; i++) {
        cr_assert_eq(rt_route(&r, &l), 1, "decision %d: %s", i, rules_reason_str(r.d.reason));
        rt_commit(&r);
        n[r.d.picked[0]]++;
    }
    cr_assert_eq(n[rt_dealer(&r, "a")], 10);
    cr_assert_eq(n[rt_dealer(&r, "c")], 4);
    cr_assert_eq(n[rt_dealer(&r, "b")], 100);
    cr_assert_eq(n[rt_dealer(&r, "e")], 50);
    cr_assert_eq(n[rt_dealer(&r, "d")], 6);
    rt_close(&r);
}

/* ----------------------------------------------------------- max_buyers -- */

static const char buyers_conf[] =
    "niches = ( { name = \"m3\"; max_buyers = 3; } );\n"
    "dealers = (\n"
    "  { id = \"a\"; niches = [ \"m3\" ]; territory = { states = [ \"IA\", \"NE\" ]; }; },\n"
    "  { id = \"b\"; niches = [ \"m3\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"c\"; niches = [ \"m3\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"d\"; niches = [ \"m3\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"e\"; niches = [ \"m3\" ]; territory = { states = [ \"NE\" ]; }; }\n"
    ");\n";

Test(max_buyers, three_distinct_dealers)
{
    struct rt r;
    rt_open(&r, buyers_conf);
    char rule[32];
    struct lead l = lead_mk("mb", "m3", "IA", NULL);
    int seen[5] = {0};
    for (int i = 0; i < 40; i++) {
        cr_assert_eq(rt_route(&r, &l), 3);
        rt_assert_reason(&r, REASON_ASSIGNED);
        cr_assert_neq(r.d.picked[0], r.d.picked[1]);
        cr_assert_neq(r.d.picked[0], r.d.picked[2]);
        cr_assert_neq(r.d.picked[1], r.d.picked[2]);
        cr_assert_str_eq(rt_rule(&r, 0, rule, sizeof rule), "shared");
        int picked = 0, not_picked = 0;
        for (uint32_t k = 0; k < r.d.n_verdicts; k++) {
            picked += r.d.verdicts[k].why == WHY_PICKED;
            not_picked += r.d.verdicts[k].why == WHY_NOT_PICKED;
        }
        cr_assert_eq(picked, 3);
        cr_assert_eq(not_picked, 1);
        for (uint32_t k = 0; k < 3; k++)
            seen[r.d.picked[k]]++;
    }
    /* Everyone in the territory gets some; e (NE only) none. How many each
     * is the repeated smooth WRR of SPEC section 5, not an even split. */
    cr_assert(seen[rt_dealer(&r, "a")] > 0 && seen[rt_dealer(&r, "b")] > 0);
    cr_assert(seen[rt_dealer(&r, "c")] > 0 && seen[rt_dealer(&r, "d")] > 0);
    cr_assert_eq(seen[rt_dealer(&r, "a")] + seen[rt_dealer(&r, "b")] + seen[rt_dealer(&r, "c")] +
                     seen[rt_dealer(&r, "d")],
                 120);
    cr_assert_eq(seen[rt_dealer(&r, "e")], 0);
    rt_close(&r);
}

Test(max_buyers, fewer_eligible_than_max_buyers)
{
    struct rt r;
    rt_open(&r, buyers_conf);
    struct lead l = lead_mk("mb", "m3", "NE", NULL);
    cr_assert_eq(rt_route(&r, &l), 2);
    rt_assert_reason(&r, REASON_ASSIGNED);
    cr_assert_neq(r.d.picked[0], r.d.picked[1]);
    rt_assert_why(&r, "a", WHY_PICKED);
    rt_assert_why(&r, "e", WHY_PICKED);
    /* And one when only one is left. */
    r.paused[rt_dealer(&r, "e")] = 1;
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "a");
    rt_close(&r);
}

/* ---------------------------------------------------------------- hours -- */

static const char hours_conf[] =
    "defaults = { timezone = \"UTC\"; };\n"
    "niches = ( { name = \"roof\"; max_buyers = 4; } );\n"
    "dealers = (\n"
    "  { id = \"chi\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; };\n"
    "    contract = { hours = { timezone = \"America/Chicago\"; days = " ALL_DAYS ";\n"
    "                           from = \"08:00\"; to = \"18:00\"; }; }; },\n"
    "  { id = \"night\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; };\n"
    "    contract = { hours = { timezone = \"America/Chicago\"; days = [ \"fri\" ];\n"
    "                           from = \"20:00\"; to = \"02:00\"; }; }; },\n"
    "  { id = \"utc\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; };\n"
    "    contract = { hours = { days = [ \"wed\" ]; from = \"09:00\"; to = \"24:00\"; }; }; },\n"
    "  { id = \"always\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; }; }\n"
    ");\n";

/* Checks rules_dealer_open and the verdict of a decision at the same
 * instant, for dealer id. */
static void expect_open(struct rt *r, const char *id, int64_t at, bool open, const char *what)
{
    uint32_t di = rt_dealer(r, id);
    cr_assert_eq(rules_dealer_open(r->t, di, at), open, "%s: rules_dealer_open(%s) = %d", what, id, !open);
    rt_at(r, at);
    struct lead l = lead_mk("h", "roof", "IL", NULL);
    rt_decide(r, &l);
    int why = rt_why(r, id);
    if (open)
        cr_assert_eq(why, WHY_CANDIDATE, "%s: %s is %s, expected open", what, id, rt_why_name(why));
    else
        cr_assert_eq(why, WHY_CLOSED, "%s: %s is %s, expected closed", what, id, rt_why_name(why));
    rt_assert_why(r, "always", WHY_CANDIDATE);
}

Test(hours, chicago_spring_forward)
{
    struct rt r;
    rt_open(&r, hours_conf);
    /* 2026-03-08: CST (UTC-6) until 02:00, CDT (UTC-5) after. */
    expect_open(&r, "chi", rt_utc(2026, 3, 7, 13, 30), false, "Sat 03-07 07:30 CST");
    expect_open(&r, "chi", rt_utc(2026, 3, 7, 14, 30), true, "Sat 03-07 08:30 CST");
    expect_open(&r, "chi", rt_utc(2026, 3, 7, 23, 59), true, "Sat 03-07 17:59 CST");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 0, 0), false, "Sat 03-07 18:00 CST");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 12, 30), false, "Sun 03-08 07:30 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 13, 30), true, "Sun 03-08 08:30 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 13, 0), true, "Sun 03-08 08:00 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 22, 59), true, "Sun 03-08 17:59 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 8, 23, 0), false, "Sun 03-08 18:00 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 9, 12, 30), false, "Mon 03-09 07:30 CDT");
    expect_open(&r, "chi", rt_utc(2026, 3, 9, 13, 30), true, "Mon 03-09 08:30 CDT");
    rt_close(&r);
}

Test(hours, chicago_fall_back)
{
    struct rt r;
    rt_open(&r, hours_conf);
    /* 2026-11-01: CDT (UTC-5) until 02:00, CST (UTC-6) after. */
    expect_open(&r, "chi", rt_utc(2026, 10, 31, 12, 30), false, "Sat 10-31 07:30 CDT");
    expect_open(&r, "chi", rt_utc(2026, 10, 31, 13, 30), true, "Sat 10-31 08:30 CDT");
    expect_open(&r, "chi", rt_utc(2026, 10, 31, 23, 0), false, "Sat 10-31 18:00 CDT");
    expect_open(&r, "chi", rt_utc(2026, 11, 1, 13, 30), false, "Sun 11-01 07:30 CST");
    expect_open(&r, "chi", rt_utc(2026, 11, 1, 14, 30), true, "Sun 11-01 08:30 CST");
    expect_open(&r, "chi", rt_utc(2026, 11, 1, 23, 59), true, "Sun 11-01 17:59 CST");
    expect_open(&r, "chi", rt_utc(2026, 11, 2, 0, 0), false, "Sun 11-01 18:00 CST");
    expect_open(&r, "chi", rt_utc(2026, 11, 2, 13, 30), false, "Mon 11-02 07:30 CST");
    expect_open(&r, "chi", rt_utc(2026, 11, 2, 14, 30), true, "Mon 11-02 08:30 CST");
    rt_close(&r);
}

Test(hours, window_over_midnight_belongs_to_the_opening_day)
{
    struct rt r;
    rt_open(&r, hours_conf);
    /* June 2026, CDT (UTC-5); 2026-06-05 is a Friday. */
    expect_open(&r, "night", rt_utc(2026, 6, 6, 0, 59), false, "Fri 19:59");
    expect_open(&r, "night", rt_utc(2026, 6, 6, 1, 0), true, "Fri 20:00");
    expect_open(&r, "night", rt_utc(2026, 6, 6, 4, 0), true, "Fri 23:00");
    expect_open(&r, "night", rt_utc(2026, 6, 6, 6, 0), true, "Sat 01:00");
    expect_open(&r, "night", rt_utc(2026, 6, 6, 6, 59), true, "Sat 01:59");
    expect_open(&r, "night", rt_utc(2026, 6, 6, 7, 0), false, "Sat 02:00");
    expect_open(&r, "night", rt_utc(2026, 6, 7, 2, 0), false, "Sat 21:00 (sat not listed)");
    expect_open(&r, "night", rt_utc(2026, 6, 4, 6, 0), false, "Thu 01:00");
    expect_open(&r, "night", rt_utc(2026, 6, 5, 6, 0), false, "Fri 01:00 (thu not listed)");
    expect_open(&r, "night", rt_utc(2026, 6, 5, 4, 0), false, "Thu 23:00");
    rt_close(&r);
}

Test(hours, until_midnight_and_default_zone)
{
    struct rt r;
    rt_open(&r, hours_conf);
    /* "utc": Wednesdays 09:00-24:00 in defaults.timezone (UTC). */
    expect_open(&r, "utc", rt_utc(2026, 3, 4, 8, 59), false, "Wed 08:59 UTC");
    expect_open(&r, "utc", rt_utc(2026, 3, 4, 9, 0), true, "Wed 09:00 UTC");
    expect_open(&r, "utc", rt_utc(2026, 3, 4, 23, 59), true, "Wed 23:59 UTC");
    expect_open(&r, "utc", rt_utc(2026, 3, 5, 0, 0), false, "Thu 00:00 UTC");
    cr_assert(rules_dealer_open(r.t, rt_dealer(&r, "always"), rt_utc(2026, 3, 8, 3, 0)));
    rt_close(&r);
}

Test(hours, all_closed_reason)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"roof\"; } );\n"
                "dealers = (\n"
                "  { id = \"chi\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; };\n"
                "    contract = { hours = { timezone = \"America/Chicago\"; days = " ALL_DAYS ";\n"
                "                           from = \"08:00\"; to = \"18:00\"; }; }; }\n"
                ");\n");
    struct lead l = lead_mk("h", "roof", "IL", NULL);
    rt_at(&r, rt_utc(2026, 3, 8, 12, 30));
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_ALL_CLOSED);
    rt_at(&r, rt_utc(2026, 3, 8, 13, 30));
    cr_assert_eq(rt_route(&r, &l), 1);
    /* Milliseconds count: one ms before 08:00 CDT is still closed. */
    r.in.now_ms = rt_utc(2026, 3, 8, 13, 0) * 1000 - 1;
    cr_assert_eq(rt_route(&r, &l), 0);
    r.in.now_ms = rt_utc(2026, 3, 8, 13, 0) * 1000;
    cr_assert_eq(rt_route(&r, &l), 1);
    rt_close(&r);
}

/* -------------------------------------------------------------- filters -- */

static const char filter_conf[] =
    "niches = ( { name = \"f\"; max_buyers = 16; } );\n"
    "dealers = (\n"
    "  { id = \"eq-bool\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.home_owner\"; eq = true; } ); }; },\n"
    "  { id = \"eq-str\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.color\"; eq = \"red\"; } ); }; },\n"
    "  { id = \"eq-int\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.size\"; eq = 2; } ); }; },\n"
    "  { id = \"ne\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.color\"; ne = \"blue\"; } ); }; },\n"
    "  { id = \"in-int\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.size\"; in = [ 1, 2, 3 ]; } ); }; },\n"
    "  { id = \"in-str\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.color\"; in = [ \"red\", \"green\" ]; } ); }; },\n"
    "  { id = \"min\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.budget\"; min = 1000; } ); }; },\n"
    "  { id = \"max\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.budget\"; max = 5000.5; } ); }; },\n"
    "  { id = \"exists-t\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.home_owner\"; exists = true; } ); }; },\n"
    "  { id = \"exists-f\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.pets\"; exists = false; } ); }; },\n"
    "  { id = \"src\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"source\"; eq = \"roofs.example\"; } ); }; },\n"
    "  { id = \"state-in\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"state\"; in = [ \"IA\", \"NE\" ]; } ); }; },\n"
    "  { id = \"score-min\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"score\"; min = 50; } ); }; },\n"
    "  { id = \"score-max\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"score\"; max = 90; } ); }; },\n"
    "  { id = \"multi\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.a\"; eq = 1; }, { field = \"fields.b\"; eq = 2; },\n"
    "                             { field = \"fields.c\"; eq = 3; } ); }; }\n"
    ");\n";

/* clang-format off */
/* Initializers of custom field values. */
#define FV_BOOL(x) {.type = LEAD_V_BOOL, .b = (x)}
#define FV_INT(x) {.type = LEAD_V_INT, .i = (x)}
#define FV_FLOAT(x) {.type = LEAD_V_FLOAT, .f = (x)}
#define FV_STR(x) {.type = LEAD_V_STR, .s = S(x)}
/* clang-format on */

struct expect {
    const char *id;
    bool pass;
};

static void expect_filters(struct rt *r, const struct lead *l, const struct expect *e, size_t n)
{
    rt_decide(r, l);
    for (size_t i = 0; i < n; i++) {
        int why = rt_why(r, e[i].id);
        if (e[i].pass)
            cr_assert_eq(why, WHY_CANDIDATE, "lead %.*s, dealer %s: %s, expected to pass", (int)l->id.len,
                         l->id.p, e[i].id, rt_why_name(why));
        else
            cr_assert_eq(why, WHY_FILTER, "lead %.*s, dealer %s: %s, expected filtered", (int)l->id.len,
                         l->id.p, e[i].id, rt_why_name(why));
    }
}

Test(filters, all_pass)
{
    struct rt r;
    rt_open(&r, filter_conf);
    const struct lead_field fields[] = {
        {S("home_owner"), FV_BOOL(true)}, {S("color"), FV_STR("red")}, {S("size"), FV_INT(2)},
        {S("budget"), FV_INT(3000)},      {S("a"), FV_INT(1)},         {S("b"), FV_INT(2)},
        {S("c"), FV_FLOAT(3.0)},
    };
    struct lead l = lead_mk("all", "f", "IA", NULL);
    l.source = rt_str("roofs.example");
    lead_score(&l, 70);
    l.fields = fields;
    l.n_fields = sizeof fields / sizeof fields[0];
    static const struct expect e[] = {
        {"eq-bool", true}, {"eq-str", true},   {"eq-int", true},    {"ne", true},        {"in-int", true},
        {"in-str", true},  {"min", true},      {"max", true},       {"exists-t", true},  {"exists-f", true},
        {"src", true},     {"state-in", true}, {"score-min", true}, {"score-max", true}, {"multi", true},
    };
    expect_filters(&r, &l, e, sizeof e / sizeof e[0]);
    cr_assert_eq(rules_pick(r.t, &r.d, &r.in, &l, r.rr), 15);
    rt_close(&r);
}

Test(filters, missing_field_passes_only_ne_and_exists_false)
{
    struct rt r;
    rt_open(&r, filter_conf);
    struct lead l = lead_mk("missing", "f", "IA", NULL);
    lead_score(&l, 95);
    static const struct expect e[] = {
        {"eq-bool", false}, {"eq-str", false},  {"eq-int", false},   {"ne", true},         {"in-int", false},
        {"in-str", false},  {"min", false},     {"max", false},      {"exists-t", false},  {"exists-f", true},
        {"src", false},     {"state-in", true}, {"score-min", true}, {"score-max", false}, {"multi", false},
    };
    expect_filters(&r, &l, e, sizeof e / sizeof e[0]);
    cr_assert_eq(rt_verdict(&r, "multi")->detail, 0);
    rt_close(&r);
}

/* SPEC 5: a field whose value is nil is absent, for every operator. */
Test(filters, nil_field_is_absent)
{
    struct rt r;
    rt_open(&r, filter_conf);
    const struct lead_field fields[] = {
        {S("home_owner"), {.type = LEAD_V_NIL}}, {S("color"), {.type = LEAD_V_NIL}},
        {S("size"), {.type = LEAD_V_NIL}},       {S("budget"), {.type = LEAD_V_NIL}},
        {S("pets"), {.type = LEAD_V_NIL}},       {S("a"), {.type = LEAD_V_NIL}},
    };
    struct lead l = lead_mk("nil", "f", "IA", NULL);
    lead_score(&l, 95);
    l.fields = fields;
    l.n_fields = sizeof fields / sizeof fields[0];
    static const struct expect e[] = {
        {"eq-bool", false}, {"eq-str", false}, {"eq-int", false}, {"ne", true},      {"in-int", false},
        {"in-str", false},  {"min", false},    {"max", false},    {"exists-t", false}, {"exists-f", true},
    };
    expect_filters(&r, &l, e, sizeof e / sizeof e[0]);
    rt_close(&r);
}

Test(filters, present_values_that_fail)
{
    struct rt r;
    rt_open(&r, filter_conf);
    const struct lead_field fields[] = {
        {S("home_owner"), FV_BOOL(false)},
        {S("color"), FV_STR("blue")},
        {S("size"), FV_INT(9)},
        {S("budget"), FV_FLOAT(500.0)},
        {S("pets"), FV_STR("yes")},
        {S("a"), FV_INT(1)},
        {S("b"), FV_INT(2)},
        {S("c"), FV_INT(9)},
    };
    struct lead l = lead_mk("fail", "f", "IA", NULL);
    l.source = rt_str("other.example");
    lead_score(&l, 40);
    l.fields = fields;
    l.n_fields = sizeof fields / sizeof fields[0];
    static const struct expect e[] = {
        {"eq-bool", false},   {"eq-str", false},   {"eq-int", false}, {"ne", false},
        {"in-int", false},    {"in-str", false},   {"min", false},    {"max", true},
        {"exists-t", true},   {"exists-f", false}, {"src", false},    {"state-in", true},
        {"score-min", false}, {"score-max", true}, {"multi", false},
    };
    expect_filters(&r, &l, e, sizeof e / sizeof e[0]);
    cr_assert_eq(rt_verdict(&r, "multi")->detail, 2, "detail %u", rt_verdict(&r, "multi")->detail);
    rt_close(&r);
}

Test(filters, boundaries_types_and_detail)
{
    struct rt r;
    rt_open(&r, filter_conf);
    /* min and max are inclusive; an int equals the same float; a string
     * "2" is not the number 2; a number is not a string. */
    const struct lead_field fields[] = {
        {S("budget"), FV_INT(1000)}, {S("size"), FV_FLOAT(2.0)}, {S("color"), FV_INT(5)},
        {S("a"), FV_INT(1)},         {S("b"), FV_STR("2")},      {S("c"), FV_INT(3)},
    };
    struct lead l = lead_mk("edge", "f", "IA", NULL);
    lead_score(&l, 50);
    l.fields = fields;
    l.n_fields = sizeof fields / sizeof fields[0];
    static const struct expect e[] = {
        {"min", true},     {"max", true}, {"eq-int", true}, {"in-int", true},    {"eq-str", false},
        {"in-str", false}, {"ne", true},  {"multi", false}, {"score-min", true},
    };
    expect_filters(&r, &l, e, sizeof e / sizeof e[0]);
    cr_assert_eq(rt_verdict(&r, "multi")->detail, 1);

    const struct lead_field over[] = {{S("budget"), FV_FLOAT(5000.6)}};
    l.fields = over;
    l.n_fields = 1;
    static const struct expect e2[] = {{"min", true}, {"max", false}};
    expect_filters(&r, &l, e2, 2);
    lead_score(&l, 49);
    static const struct expect e3[] = {{"score-min", false}, {"score-max", true}};
    expect_filters(&r, &l, e3, 2);
    rt_close(&r);
}

Test(filters, computed_score_feeds_score_filter)
{
    struct rt r;
    rt_open(&r, filter_conf);
    const struct lead_signal sig[] = {{S("web"), 1}}; /* no weights: score 0 */
    struct lead l = lead_mk("cs", "f", "IA", NULL);
    l.signals = sig;
    l.n_signals = 1;
    static const struct expect e[] = {{"score-min", false}, {"score-max", true}};
    expect_filters(&r, &l, e, 2);
    rt_close(&r);
}

Test(filters, country_defaults_from_config)
{
    struct rt r;
    rt_open(&r, "defaults = { country = \"ca\"; };\n"
                "niches = ( { name = \"f\"; max_buyers = 2; } );\n"
                "dealers = (\n"
                "  { id = \"ca-only\"; niches = [ \"f\" ]; territory = { states = [ \"ON\" ]; };\n"
                "    contract = { filters = ( { field = \"country\"; eq = \"CA\"; } ); }; },\n"
                "  { id = \"not-us\"; niches = [ \"f\" ]; territory = { states = [ \"ON\" ]; };\n"
                "    contract = { filters = ( { field = \"country\"; ne = \"US\"; } ); }; }\n"
                ");\n");
    /* No country in the lead: defaults.country (stored upper-case). */
    struct lead l = lead_mk("co", "f", "ON", NULL);
    static const struct expect e[] = {{"ca-only", true}, {"not-us", true}};
    expect_filters(&r, &l, e, 2);
    l.country = rt_str("US");
    static const struct expect e2[] = {{"ca-only", false}, {"not-us", false}};
    expect_filters(&r, &l, e2, 2);
    l.country = rt_str("CA");
    expect_filters(&r, &l, e, 2);
    rt_close(&r);
}

Test(filters, min_score_and_grades)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"f\"; max_buyers = 3; } );\n"
                "dealers = (\n"
                "  { id = \"ms60\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { min_score = 60; }; },\n"
                "  { id = \"gA\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { grades = [ \"A\" ]; }; },\n"
                "  { id = \"gBC\"; niches = [ \"f\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { grades = [ \"B\", \"C\" ]; }; }\n"
                ");\n");
    struct lead l = lead_mk("ms", "f", "IA", NULL);
    lead_score(&l, 59);
    rt_decide(&r, &l);
    rt_assert_why(&r, "ms60", WHY_MIN_SCORE);
    rt_assert_why(&r, "gA", WHY_GRADE);
    rt_assert_why(&r, "gBC", WHY_CANDIDATE);
    lead_score(&l, 60);
    rt_decide(&r, &l);
    rt_assert_why(&r, "ms60", WHY_CANDIDATE);
    lead_score(&l, 80);
    rt_decide(&r, &l);
    rt_assert_why(&r, "ms60", WHY_CANDIDATE);
    rt_assert_why(&r, "gA", WHY_CANDIDATE);
    rt_assert_why(&r, "gBC", WHY_GRADE);
    lead_score(&l, 10);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "gBC");
    rt_close(&r);
}

/* ------------------------------------------------------- pause, returns -- */

static const char three_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"a\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"b\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"c\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; }; }\n"
    ");\n";

Test(pause, paused_dealer_gets_nothing)
{
    struct rt r;
    rt_open(&r, three_conf);
    r.paused[rt_dealer(&r, "a")] = 1;
    struct lead l = lead_mk("p", "roof", "IA", NULL);
    int nb = 0, nc = 0;
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        rt_assert_why(&r, "a", WHY_PAUSED);
        nb += strcmp(rt_picked(&r, 0), "b") == 0;
        nc += strcmp(rt_picked(&r, 0), "c") == 0;
    }
    cr_assert_eq(nb, 10);
    cr_assert_eq(nc, 10);
    rt_close(&r);
}

Test(pause, returned_lead_never_goes_back)
{
    struct rt r;
    rt_open(&r, three_conf);
    uint32_t ex[2] = {rt_dealer(&r, "b")};
    r.in.exclude = ex;
    r.in.n_exclude = 1;
    struct lead l = lead_mk("ret", "roof", "IA", NULL);
    for (int i = 0; i < 20; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        cr_assert_str_neq(rt_picked(&r, 0), "b");
        rt_assert_why(&r, "b", WHY_ALREADY_HAD);
    }
    ex[1] = rt_dealer(&r, "a");
    r.in.n_exclude = 2;
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(rt_route(&r, &l), 1);
        cr_assert_str_eq(rt_picked(&r, 0), "c");
        rt_assert_why(&r, "a", WHY_ALREADY_HAD);
    }
    rt_close(&r);
}

Test(pause, everyone_had_it)
{
    struct rt r;
    rt_open(&r, three_conf);
    const uint32_t ex[3] = {rt_dealer(&r, "c"), rt_dealer(&r, "a"), rt_dealer(&r, "b")};
    r.in.exclude = ex;
    r.in.n_exclude = 3;
    struct lead l = lead_mk("ret", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 0);
    cr_assert_neq(r.d.reason, REASON_ASSIGNED);
    rt_assert_why(&r, "a", WHY_ALREADY_HAD);
    rt_assert_why(&r, "b", WHY_ALREADY_HAD);
    rt_assert_why(&r, "c", WHY_ALREADY_HAD);
    rt_close(&r);
}

Test(pause, exclusive_owner_that_had_it_releases)
{
    struct rt r;
    rt_openf(&r, excl_conf, "release");
    const uint32_t ex[1] = {rt_dealer(&r, "ex")};
    r.in.exclude = ex;
    r.in.n_exclude = 1;
    struct lead l = lead_mk("ret", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_neq(rt_picked(&r, 0), "ex");
    rt_assert_why(&r, "ex", WHY_ALREADY_HAD);
    rt_close(&r);
}

/* ------------------------------------------------------- most telling ---- */

static const char telling_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"capd\"; niches = [ \"roof\" ]; territory = { zips = [ \"10001\" ]; };\n"
    "    contract = { caps = { day = 1; }; }; },\n"
    "  { id = \"qful\"; niches = [ \"roof\" ]; territory = { zips = [ \"10002\" ]; };\n"
    "    contract = { max_pending = 2; }; },\n"
    "  { id = \"clsd\"; niches = [ \"roof\" ]; territory = { zips = [ \"10001\", \"10002\", \"10003\" ]; };\n"
    "    contract = { hours = { days = [ \"mon\" ]; from = \"08:00\"; to = \"09:00\"; }; }; },\n"
    "  { id = \"fild\"; niches = [ \"roof\" ];\n"
    "    territory = { zips = [ \"10001\", \"10002\", \"10003\", \"10004\", \"10005\" ]; };\n"
    "    contract = { min_score = 90; }; },\n"
    "  { id = \"paus\"; niches = [ \"roof\" ]; territory = { zips = [ \"10005\" ]; }; },\n"
    "  { id = \"grd\"; niches = [ \"roof\" ]; territory = { zips = [ \"10006\" ]; };\n"
    "    contract = { grades = [ \"A\" ]; }; },\n"
    "  { id = \"fld\"; niches = [ \"roof\" ]; territory = { zips = [ \"10006\" ]; };\n"
    "    contract = { filters = ( { field = \"fields.x\"; exists = true; } ); }; },\n"
    "  { id = \"far\"; niches = [ \"roof\" ]; territory = { zips = [ \"20000\" ]; }; }\n"
    ");\n";

static void route_zip(struct rt *r, const char *zip)
{
    struct lead l = lead_mk("mt", "roof", NULL, zip);
    lead_score(&l, 50);
    cr_assert_eq(rt_route(r, &l), 0, "zip %s was assigned to %s", zip, rt_picked(r, 0));
}

Test(telling, capped_beats_closed_and_filtered)
{
    struct rt r;
    rt_open(&r, telling_conf);
    r.usage[rt_dealer(&r, "capd")].used[PERIOD_DAY] = 1;
    route_zip(&r, "10001");
    rt_assert_reason(&r, REASON_ALL_CAPPED);
    rt_assert_why(&r, "capd", WHY_CAPPED_DAY);
    rt_assert_why(&r, "clsd", WHY_CLOSED);
    rt_assert_why(&r, "fild", WHY_MIN_SCORE);
    rt_close(&r);
}

Test(telling, full_queue_counts_as_capped)
{
    struct rt r;
    rt_open(&r, telling_conf);
    uint32_t q = rt_dealer(&r, "qful");
    r.usage[q].pending = 2;
    route_zip(&r, "10002");
    rt_assert_reason(&r, REASON_ALL_CAPPED);
    rt_assert_why(&r, "qful", WHY_QUEUE_FULL);
    rt_assert_why(&r, "clsd", WHY_CLOSED);
    r.usage[q].pending = 1;
    struct lead l = lead_mk("mt", "roof", NULL, "10002");
    cr_assert_eq(rt_route(&r, &l), 1);
    cr_assert_str_eq(rt_picked(&r, 0), "qful");
    rt_close(&r);
}

Test(telling, closed_beats_filtered)
{
    struct rt r;
    rt_open(&r, telling_conf);
    route_zip(&r, "10003");
    rt_assert_reason(&r, REASON_ALL_CLOSED);
    rt_assert_why(&r, "clsd", WHY_CLOSED);
    rt_assert_why(&r, "fild", WHY_MIN_SCORE);
    rt_close(&r);
}

Test(telling, paused_counts_as_closed)
{
    struct rt r;
    rt_open(&r, telling_conf);
    r.paused[rt_dealer(&r, "paus")] = 1;
    route_zip(&r, "10005");
    rt_assert_reason(&r, REASON_ALL_CLOSED);
    rt_assert_why(&r, "paus", WHY_PAUSED);
    rt_assert_why(&r, "fild", WHY_MIN_SCORE);
    rt_close(&r);
}

Test(telling, filtered_beats_no_territory)
{
    struct rt r;
    rt_open(&r, telling_conf);
    route_zip(&r, "10004");
    rt_assert_reason(&r, REASON_FILTERED);
    route_zip(&r, "10006");
    rt_assert_reason(&r, REASON_FILTERED);
    rt_assert_why(&r, "grd", WHY_GRADE);
    rt_assert_why(&r, "fld", WHY_FILTER);
    route_zip(&r, "30000");
    rt_assert_reason(&r, REASON_NO_DEALER_IN_TERRITORY);
    rt_close(&r);
}

Test(telling, capped_in_a_lower_tier_still_counts)
{
    struct rt r;
    rt_open(&r, "niches = ( { name = \"roof\"; } );\n"
                "dealers = (\n"
                "  { id = \"t1\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { tier = 1; hours = { days = [ \"sun\" ]; from = \"08:00\"; to = \"09:00\"; "
                "}; }; },\n"
                "  { id = \"t2\"; niches = [ \"roof\" ]; territory = { states = [ \"IA\" ]; };\n"
                "    contract = { tier = 2; caps = { month = 1; }; }; }\n"
                ");\n");
    r.usage[rt_dealer(&r, "t2")].used[PERIOD_MONTH] = 1;
    struct lead l = lead_mk("mt", "roof", "IA", NULL);
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_ALL_CAPPED);
    rt_assert_why(&r, "t1", WHY_CLOSED);
    rt_assert_why(&r, "t2", WHY_CAPPED_MONTH);
    rt_close(&r);
}

/* -------------------------------------------------------- determinism ---- */

/* A small deterministic generator (64-bit LCG, high bits). */
static uint32_t rnd(uint64_t *st)
{
    *st = *st * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*st >> 33);
}

struct run {
    uint64_t digest[2000];
    int reasons[REASON_N];
    uint32_t picks;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

/* Routes 2000 pseudo-random leads; each decision's digest covers the
 * reason, niche, score, grade, picks and every verdict. */
static void run_leads(struct rt *r, uint64_t seed, struct run *out)
{
    static const char *const states[] = {"IA", "NE", "KS", "MO", "MN", "IL", "TX", "ia"};
    static const char *const zips[] = {"50309", "50310", "68102", "66204",  "64105",
                                       "55401", "60606", "99999", "503 12", ""};
    static const char *const sources[] = {"fixmyhome.example", "SunQuote.example", "ratecheck.example",
                                          "x.example", ""};
    static const char *const niches[] = {"", "", "", "solar", "mortgage", "nope"};
    static const struct lr_str kws[] = {S("roof"), S("solar"), S("refi"), S("pool")};
    static const char *const colors[] = {"good", "excellent", "fair", "poor"};
    memset(out, 0, sizeof *out);
    uint64_t st = seed;
    int64_t now = rt_utc(2026, 3, 2, 0, 0);
    uint32_t ex[2];
    for (int i = 0; i < 2000; i++) {
        /* One draw per statement: argument and initializer evaluation
         * order is unspecified in C. */
        const char *niche = niches[rnd(&st) % 6];
        const char *state = states[rnd(&st) % 8];
        const char *zip = zips[rnd(&st) % 10];
        struct lead l = lead_mk("det", niche, state, zip);
        l.source = rt_str(sources[rnd(&st) % 5]);
        uint32_t k = rnd(&st) % 5;
        l.keywords = k < 4 ? &kws[k] : NULL;
        l.n_keywords = k < 4;
        if (rnd(&st) % 2)
            lead_score(&l, (int)(rnd(&st) % 101));
        struct lead_signal sig[2] = {{S("web"), 0}, {S("demo"), 0}};
        sig[0].v = rnd(&st) % 4;
        sig[1].v = (double)(rnd(&st) % 100) / 3.0;
        l.signals = sig;
        l.n_signals = 2;
        if (rnd(&st) % 3 == 0) {
            double lat = 38.0 + (rnd(&st) % 800) / 100.0;
            double lon = -97.0 + (rnd(&st) % 900) / 100.0;
            lead_geo(&l, lat, lon);
        }
        struct lead_field f[2] = {{S("home_owner"), FV_BOOL(false)}, {S("credit"), FV_STR("")}};
        f[0].v.b = rnd(&st) % 3 != 0;
        f[1].v.s = rt_str(colors[rnd(&st) % 4]);
        l.fields = f;
        l.n_fields = rnd(&st) % 3;
        now += 60 * (int64_t)(rnd(&st) % 90);
        rt_at(r, now);
        /* Day rolls over: the caps start again. */
        if (i % 150 == 0)
            memset(r->usage, 0, r->t->n_dealers * sizeof *r->usage);
        r->paused[i % r->t->n_dealers] = (uint8_t)(rnd(&st) % 4 == 0);
        r->in.n_exclude = rnd(&st) % 3;
        for (uint32_t x = 0; x < r->in.n_exclude; x++)
            ex[x] = rnd(&st) % r->t->n_dealers;
        r->in.exclude = ex;
        rt_route(r, &l);
        rt_commit(r);
        for (uint32_t p = 0; p < r->d.n_picked; p++)
            r->usage[r->d.picked[p]].pending++;
        uint64_t h = 0xcbf29ce484222325ULL;
        int hdr[6] = {r->d.reason, r->d.niche, r->d.score, r->d.grade, r->d.hot, (int)r->d.n_picked};
        h = fnv(h, hdr, sizeof hdr);
        h = fnv(h, r->d.picked, r->d.n_picked * sizeof r->d.picked[0]);
        for (uint32_t v = 0; v < r->d.n_verdicts; v++) {
            const struct rules_verdict *vd = &r->d.verdicts[v];
            uint32_t vv[5] = {vd->dealer, vd->why, vd->match, vd->stage,
                              vd->why == WHY_FILTER ? vd->detail : 0};
            h = fnv(h, vv, sizeof vv);
        }
        out->digest[i] = h;
        out->reasons[r->d.reason]++;
        out->picks += r->d.n_picked;
    }
}

Test(determinism, same_leads_same_decisions)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/rules/mixed.conf", LR_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;

    struct rt a, b;
    rt_open(&a, text);
    rt_open(&b, text);
    /* b's scratch has routed other leads before: no state may leak. */
    struct run *warm = malloc(sizeof *warm);
    struct run *ra = malloc(sizeof *ra), *rb = malloc(sizeof *rb);
    cr_assert(warm && ra && rb);
    run_leads(&b, 12345, warm);
    memset(b.rr, 0, b.t->n_rr_slots * sizeof *b.rr);
    memset(b.usage, 0, b.t->n_dealers * sizeof *b.usage);
    memset(b.paused, 0, b.t->n_dealers);

    memset(a.paused, 0, a.t->n_dealers);
    run_leads(&a, 42, ra);
    run_leads(&b, 42, rb);
    for (int i = 0; i < 2000; i++)
        cr_assert_eq(ra->digest[i], rb->digest[i], "decision %d differs", i);
    for (uint32_t i = 0; i < a.t->n_rr_slots; i++)
        cr_assert_eq(a.rr[i], b.rr[i], "rotation slot %u differs", i);
    /* The mix is worth the name: several outcomes occur. */
    cr_assert(ra->reasons[REASON_ASSIGNED] > 200, "assigned %d", ra->reasons[REASON_ASSIGNED]);
    int kinds = 0;
    for (int i = 0; i < REASON_N; i++)
        kinds += ra->reasons[i] > 0;
    cr_assert_eq(kinds, REASON_N, "only %d distinct reasons", kinds);
    cr_assert(ra->picks > (uint32_t)ra->reasons[REASON_ASSIGNED], "no lead had several buyers");
    free(warm);
    free(ra);
    free(rb);
    rt_close(&a);
    rt_close(&b);
}

/* ---------------------------------------------------------- cap bucket --- */

static const char bucket_conf[] =
    "niches = ( { name = \"roof\"; } );\n"
    "dealers = (\n"
    "  { id = \"chi\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; };\n"
    "    contract = { hours = { timezone = \"America/Chicago\"; days = " ALL_DAYS ";\n"
    "                           from = \"00:00\"; to = \"24:00\"; }; }; },\n"
    "  { id = \"utc\"; niches = [ \"roof\" ]; territory = { states = [ \"IL\" ]; }; }\n"
    ");\n";

static void expect_bucket(const struct rt *r, const char *id, enum rules_period p, int64_t at,
                          const char *want)
{
    char buf[32];
    memset(buf, 'x', sizeof buf);
    rules_cap_bucket(r->t, rt_dealer(r, id), p, at, buf, sizeof buf);
    cr_assert_str_eq(buf, want, "dealer %s, period %d, at %lld", id, p, (long long)at);
}

Test(cap_bucket, periods_in_the_dealer_zone)
{
    struct rt r;
    rt_open(&r, bucket_conf);
    /* 2026-03-01 03:00 UTC is still Saturday 2026-02-28 21:00 in Chicago. */
    int64_t t = rt_utc(2026, 3, 1, 3, 0);
    expect_bucket(&r, "chi", PERIOD_HOUR, t, "2026022821");
    expect_bucket(&r, "chi", PERIOD_DAY, t, "20260228");
    expect_bucket(&r, "chi", PERIOD_WEEK, t, "2026W09");
    expect_bucket(&r, "chi", PERIOD_MONTH, t, "202602");
    expect_bucket(&r, "utc", PERIOD_HOUR, t, "2026030103");
    expect_bucket(&r, "utc", PERIOD_DAY, t, "20260301");
    expect_bucket(&r, "utc", PERIOD_WEEK, t, "2026W09");
    expect_bucket(&r, "utc", PERIOD_MONTH, t, "202603");
    rt_close(&r);
}

Test(cap_bucket, iso_weeks_at_year_ends)
{
    struct rt r;
    rt_open(&r, bucket_conf);
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2027, 1, 1, 12, 0), "2026W53");
    expect_bucket(&r, "utc", PERIOD_DAY, rt_utc(2027, 1, 1, 12, 0), "20270101");
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2027, 1, 3, 23, 59), "2026W53");
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2027, 1, 4, 0, 0), "2027W01");
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2024, 12, 30, 0, 0), "2025W01");
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2024, 12, 29, 23, 0), "2024W52");
    expect_bucket(&r, "utc", PERIOD_WEEK, rt_utc(2026, 1, 1, 0, 0), "2026W01");
    /* Monday 2027-01-04 00:30 UTC is still Sunday in Chicago: week 53. */
    expect_bucket(&r, "chi", PERIOD_WEEK, rt_utc(2027, 1, 4, 0, 30), "2026W53");
    expect_bucket(&r, "chi", PERIOD_WEEK, rt_utc(2027, 1, 4, 6, 0), "2027W01");
    rt_close(&r);
}

Test(cap_bucket, hours_across_dst)
{
    struct rt r;
    rt_open(&r, bucket_conf);
    expect_bucket(&r, "chi", PERIOD_HOUR, rt_utc(2026, 3, 8, 7, 59), "2026030801"); /* 01:59 CST */
    expect_bucket(&r, "chi", PERIOD_HOUR, rt_utc(2026, 3, 8, 8, 0), "2026030803");  /* 03:00 CDT */
    expect_bucket(&r, "chi", PERIOD_HOUR, rt_utc(2026, 3, 8, 13, 30), "2026030808");
    expect_bucket(&r, "chi", PERIOD_HOUR, rt_utc(2026, 11, 1, 6, 30), "2026110101"); /* 01:30 CDT */
    expect_bucket(&r, "chi", PERIOD_HOUR, rt_utc(2026, 11, 1, 7, 30), "2026110101"); /* 01:30 CST */
    expect_bucket(&r, "chi", PERIOD_DAY, rt_utc(2026, 11, 2, 5, 59), "20261101");    /* 23:59 CST */
    expect_bucket(&r, "chi", PERIOD_DAY, rt_utc(2026, 11, 2, 6, 0), "20261102");
    rt_close(&r);
}

Test(cap_bucket, truncates_safely)
{
    struct rt r;
    rt_open(&r, bucket_conf);
    char buf[5];
    rules_cap_bucket(r.t, rt_dealer(&r, "utc"), PERIOD_HOUR, rt_utc(2026, 3, 1, 3, 0), buf, sizeof buf);
    cr_assert_str_eq(buf, "2026");
    rt_close(&r);
}

/* ------------------------------------------------------------- explain --- */

static const char explain_conf[] =
    "niches = ( { name = \"home_improvement\"; sources = [ \"fixmyhome.example\" ]; } );\n"
    "dealers = (\n"
    "  { id = \"alpha-dealer\"; niches = [ \"home_improvement\" ]; territory = { states = [ \"IA\" ]; }; },\n"
    "  { id = \"bravo-dealer\"; niches = [ \"home_improvement\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { min_score = 90; }; },\n"
    "  { id = \"charlie-dealer\"; niches = [ \"home_improvement\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { hours = { days = [ \"sun\" ]; from = \"08:00\"; to = \"09:00\"; }; }; },\n"
    "  { id = \"delta-dealer\"; niches = [ \"home_improvement\" ]; territory = { states = [ \"IA\" ]; };\n"
    "    contract = { caps = { day = 1; }; }; },\n"
    "  { id = \"echo-dealer\"; niches = [ \"home_improvement\" ]; territory = { states = [ \"TX\" ]; }; }\n"
    ");\n";

/* Is there a line of text containing both a and b? */
static bool line_has(const char *text, const char *a, const char *b)
{
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char buf[1024];
        if (len >= sizeof buf)
            len = sizeof buf - 1;
        memcpy(buf, line, len);
        buf[len] = 0;
        if (strstr(buf, a) && strstr(buf, b))
            return true;
        if (!end)
            break;
        line = end + 1;
    }
    return false;
}

Test(explain, mentions_niche_score_dealers_and_pick)
{
    struct rt r;
    rt_open(&r, explain_conf);
    r.usage[rt_dealer(&r, "delta-dealer")].used[PERIOD_DAY] = 1;
    struct lead l = lead_mk("lead-77", NULL, "IA", NULL);
    l.source = rt_str("fixmyhome.example");
    lead_score(&l, 73);
    cr_assert_eq(rt_route(&r, &l), 1);
    static char buf[8192];
    size_t n = rules_explain(r.t, &l, &r.d, buf, sizeof buf);
    cr_assert_eq(n, strlen(buf));
    cr_assert(strstr(buf, "lead-77"), "no lead id:\n%s", buf);
    cr_assert(strstr(buf, "home_improvement"), "no niche:\n%s", buf);
    cr_assert(strstr(buf, "73"), "no score:\n%s", buf);
    cr_assert(line_has(buf, "alpha-dealer", rules_why_str(WHY_PICKED)), "alpha not picked:\n%s", buf);
    cr_assert(line_has(buf, "bravo-dealer", rules_why_str(WHY_MIN_SCORE)), "bravo:\n%s", buf);
    cr_assert(line_has(buf, "charlie-dealer", rules_why_str(WHY_CLOSED)), "charlie:\n%s", buf);
    cr_assert(line_has(buf, "delta-dealer", rules_why_str(WHY_CAPPED_DAY)), "delta:\n%s", buf);
    cr_assert_eq(strstr(buf, "echo-dealer"), NULL, "a dealer outside the territory is listed:\n%s", buf);
    /* The pick is stated apart from the verdict lines, with its rule. */
    cr_assert(line_has(buf, "alpha-dealer", "tier:1"), "pick and rule:\n%s", buf);

    /* Truncation behaves like snprintf. */
    char small[16];
    size_t m = rules_explain(r.t, &l, &r.d, small, sizeof small);
    cr_assert_eq(m, n);
    cr_assert_eq(strlen(small), sizeof small - 1);
    cr_assert(strncmp(small, buf, sizeof small - 1) == 0);
    cr_assert_eq(rules_explain(r.t, &l, &r.d, NULL, 0), n);
    rt_close(&r);
}

Test(explain, unassigned_states_the_reason)
{
    struct rt r;
    rt_open(&r, explain_conf);
    struct lead l = lead_mk("lead-78", "home_improvement", "IA", NULL);
    lead_score(&l, 95);
    r.paused[rt_dealer(&r, "alpha-dealer")] = 1;
    r.paused[rt_dealer(&r, "bravo-dealer")] = 1;
    r.usage[rt_dealer(&r, "delta-dealer")].used[PERIOD_DAY] = 1;
    cr_assert_eq(rt_route(&r, &l), 0);
    rt_assert_reason(&r, REASON_ALL_CAPPED);
    static char buf[8192];
    rules_explain(r.t, &l, &r.d, buf, sizeof buf);
    cr_assert(strstr(buf, "all_capped"), "no reason:\n%s", buf);
    cr_assert(strstr(buf, "95"), "no score:\n%s", buf);
    cr_assert(line_has(buf, "alpha-dealer", rules_why_str(WHY_PAUSED)), "alpha:\n%s", buf);

    struct lead u = lead_mk("lead-79", NULL, "IA", NULL);
    cr_assert_eq(rt_route(&r, &u), 0);
    rules_explain(r.t, &u, &r.d, buf, sizeof buf);
    cr_assert(strstr(buf, "unknown_niche"), "no reason:\n%s", buf);
    rt_close(&r);
}

Test(explain, code_names_are_stable)
{
    /* The audit stream and `leadctl why` carry these strings. */
    cr_assert_str_eq(rules_why_str(WHY_CAPPED_DAY), "capped:day");
    cr_assert_str_eq(rules_why_str(WHY_MIN_SCORE), "filtered:min_score");
    cr_assert_str_eq(rules_reason_str(REASON_ALL_CAPPED), "all_capped");
    cr_assert_str_eq(rules_reason_str(REASON_ALL_CLOSED), "all_closed");
    cr_assert_str_eq(rules_reason_str(REASON_FILTERED), "filtered");
    cr_assert_str_eq(rules_reason_str(REASON_UNKNOWN_NICHE), "unknown_niche");
    cr_assert_str_eq(rules_reason_str(REASON_NO_DEALER_IN_TERRITORY), "no_dealer_in_territory");
    cr_assert_str_eq(rules_reason_str(REASON_EXCLUSIVE_OWNER_UNAVAILABLE), "exclusive_owner_unavailable");
    for (int w = 0; w < WHY_N; w++) {
        const char *s = rules_why_str((enum rules_why)w);
        cr_assert(s && *s && strcmp(s, "?") != 0, "why %d has no name", w);
        for (int v = 0; v < w; v++)
            cr_assert_str_neq(s, rules_why_str((enum rules_why)v), "whys %d and %d share a name", v, w);
    }
}

/* The radius test runs on floats first and on doubles near the edge: it
 * must agree with the great-circle distance for points just inside and
 * just outside, at every bearing, for a small and a large radius. */
static const char *edge_conf = "niches = ( { name = \"roof\"; } );\n"
                               "dealers = (\n"
                               "  { id = \"small\"; niches = [ \"roof\" ];\n"
                               "    territory = { radius = { lat = 41.59; lon = -93.62; km = 20.0; }; }; },\n"
                               "  { id = \"large\"; niches = [ \"roof\" ];\n"
                               "    territory = { radius = { lat = -33.9; lon = 151.2; km = 1500.0; }; }; } );\n";

static void destination(double lat, double lon, double km, double bearing, double *olat, double *olon)
{
    double r = M_PI / 180.0, d = km / 6371.0, la = lat * r, lo = lon * r, b = bearing * r;
    double la2 = asin(sin(la) * cos(d) + cos(la) * sin(d) * cos(b));
    double lo2 = lo + atan2(sin(b) * sin(d) * cos(la), cos(d) - sin(la) * sin(la2));
    *olat = la2 / r;
    *olon = remainder(lo2 / r, 360.0);
}

/* The radius grid's cells shrink with the dealers' radii (here a median of
 * 5 km: 1/16 degree): every point near a circle, on either side of it and
 * of the antimeridian, the prime meridian and the equator, must be covered
 * exactly when the great-circle distance says so. A circle close to the
 * pole goes to the niche's wide list and must be found too. */
static const char *fine_conf =
    "niches = ( { name = \"roof\"; max_buyers = 8; } );\n"
    "dealers = (\n"
    "  { id = \"dsm\"; niches = [ \"roof\" ]; territory = { radius = { lat = 41.59; lon = -93.62; km = 5.0; }; }; },\n"
    "  { id = \"dsm2\"; niches = [ \"roof\" ]; territory = { radius = { lat = 41.615; lon = -93.58; km = 4.0; }; }; },\n"
    "  { id = \"fiji\"; niches = [ \"roof\" ]; territory = { radius = { lat = -16.5; lon = 179.99; km = 6.0; }; }; },\n"
    "  { id = \"gmt\"; niches = [ \"roof\" ]; territory = { radius = { lat = 51.48; lon = -0.01; km = 3.0; }; }; },\n"
    "  { id = \"quito\"; niches = [ \"roof\" ]; territory = { radius = { lat = 0.01; lon = -78.5; km = 5.0; }; }; },\n"
    "  { id = \"north\"; niches = [ \"roof\" ]; territory = { radius = { lat = 88.98; lon = 20.0; km = 7.0; }; }; },\n"
    "  { id = \"wide\"; niches = [ \"roof\" ]; territory = { radius = { lat = 41.0; lon = -93.0; km = 120.0; }; }; } );\n";

Test(territory, radius_fine_grid_agrees_with_great_circle)
{
    struct rt r;
    rt_open(&r, fine_conf);
    uint64_t seed = 99;
    int inside = 0, outside = 0;
    for (int i = 0; i < 30000; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        const struct rules_dealer *c = &r.t->dealers[(seed >> 33) % (r.t->n_dealers - 1)]; /* not "wide" */
        double bearing = (double)((seed >> 8) % 36000) / 100.0;
        double km = c->km * (double)((seed >> 20) % 2000) / 1000.0; /* 0 to 2 radii out */
        double lat, lon;
        destination(c->lat, c->lon, km, bearing, &lat, &lon);
        struct lead l = lead_mk("fine", "roof", NULL, NULL);
        lead_geo(&l, lat, lon);
        rt_decide(&r, &l);
        for (uint32_t d = 0; d < r.t->n_dealers; d++) {
            const struct rules_dealer *dl = &r.t->dealers[d];
            bool want = rules_distance_km(dl->lat, dl->lon, lat, lon) <= dl->km;
            bool got = rt_match(&r, dl->id) == MATCH_RADIUS;
            cr_assert_eq(got, want, "(%.5f, %.5f): dealer %s %s, %.9f km from its centre (radius %.1f)", lat, lon,
                         dl->id, got ? "covers" : "misses", rules_distance_km(dl->lat, dl->lon, lat, lon), dl->km);
        }
        km <= c->km ? inside++ : outside++;
    }
    cr_expect_gt(inside, 10000);
    cr_expect_gt(outside, 10000);
    rt_close(&r);
}

Test(territory, radius_edge_agrees_with_great_circle)
{
    struct rt r;
    rt_open(&r, edge_conf);
    static const struct {
        double lat, lon, km;
        const char *id;
    } c[] = {{41.59, -93.62, 20.0, "small"}, {-33.9, 151.2, 1500.0, "large"}};
    uint64_t seed = 12345;
    int inside = 0, outside = 0;
    for (int i = 0; i < 20000; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        int k = (int)(seed >> 63);
        double bearing = (double)((seed >> 20) % 36000) / 100.0;
        /* 5 cm to 3 m from the edge, inside or outside: within float
         * error, so the exact path must decide. */
        double off = (0.05 + (double)((seed >> 8) % 300) / 100.0) / 1000.0 * ((seed >> 40) & 1 ? 1 : -1);
        double lat, lon;
        destination(c[k].lat, c[k].lon, c[k].km + off, bearing, &lat, &lon);
        bool expect = rules_distance_km(c[k].lat, c[k].lon, lat, lon) <= c[k].km;
        struct lead l = lead_mk("edge", "roof", NULL, NULL);
        lead_geo(&l, lat, lon);
        rt_decide(&r, &l);
        bool got = rt_verdict(&r, c[k].id) != NULL;
        cr_assert_eq(got, expect, "%s: %.4f km off the edge at bearing %.2f: got %d", c[k].id, off, bearing, got);
        expect ? inside++ : outside++;
    }
    cr_expect_gt(inside, 5000);
    cr_expect_gt(outside, 5000);
    rt_close(&r);
}

/* rules_prefetch keeps work in the scratch for rules_decide to reuse: the
 * pipelined path must decide exactly as the plain one, including leads
 * prefetched at stage 0 only, leads never prefetched, and a lead whose
 * memory is reused for another lead after its decision. */
Test(determinism, prefetch_pipeline_changes_nothing)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/rules/mixed.conf", LR_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot open %s", path);
    static char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    static const char *const st[] = {"IA", "NE", "MO", "IL", "KS", "WI", "MN", "TX"};
    static const char *const zp[] = {"50309", "50311", "68102", "63101", "60601", "52240", "66101", "55401"};
    static const char *const src[] = {"fixmyhome.example", "sunquote.example", "ratecheck.example", "x.example"};
    enum { N = 600 };
    static struct lead leads[N];
    uint64_t seed = 7;
    for (int i = 0; i < N; i++) {
        leads[i] = lead_mk("pf", NULL, st[rnd(&seed) % 8], zp[rnd(&seed) % 8]);
        leads[i].source = rt_str(src[rnd(&seed) % 4]);
        lead_score(&leads[i], (int)(rnd(&seed) % 101));
        if (rnd(&seed) % 2)
            lead_geo(&leads[i], 38.0 + (rnd(&seed) % 800) / 100.0, -97.0 + (rnd(&seed) % 900) / 100.0);
    }
    struct rt a, b;
    rt_open(&a, text);
    rt_open(&b, text);
    int assigned = 0;
    for (int i = 0; i < N; i++) {
        rt_route(&a, &leads[i]);
        if (i + 8 < N && i % 7 != 0)
            rules_prefetch(b.t, b.s, &leads[i + 8], 0, i % 2 ? b.rr : NULL);
        if (i + 4 < N && i % 5 != 0)
            rules_prefetch(b.t, b.s, &leads[i + 4], 1, b.rr);
        if (i + 2 < N && i % 3 != 0)
            rules_prefetch(b.t, b.s, &leads[i + 2], 2, b.rr);
        rt_route(&b, &leads[i]);
        cr_assert_eq(a.d.reason, b.d.reason, "lead %d: reason differs", i);
        cr_assert_eq(a.d.niche, b.d.niche, "lead %d: niche differs", i);
        cr_assert_eq(a.d.n_verdicts, b.d.n_verdicts, "lead %d: verdicts differ", i);
        for (uint32_t v = 0; v < a.d.n_verdicts; v++) {
            cr_assert_eq(a.d.verdicts[v].dealer, b.d.verdicts[v].dealer, "lead %d", i);
            cr_assert_eq(a.d.verdicts[v].why, b.d.verdicts[v].why, "lead %d", i);
            cr_assert_eq(a.d.verdicts[v].match, b.d.verdicts[v].match, "lead %d", i);
        }
        cr_assert_eq(a.d.n_picked, b.d.n_picked, "lead %d: picks differ", i);
        for (uint32_t p = 0; p < a.d.n_picked; p++)
            cr_assert_eq(a.d.picked[p], b.d.picked[p], "lead %d: pick %u differs", i, p);
        assigned += a.d.reason == REASON_ASSIGNED;
    }
    cr_expect_gt(assigned, 100);
    /* A lead prefetched but never decided, whose memory then holds another
     * lead: the ring must not hand the old work to the new content. */
    static struct lead slot;
    slot = lead_mk("old", "solar", "NE", "68102");
    lead_geo(&slot, 41.6, -93.6);
    rules_prefetch(b.t, b.s, &slot, 0, b.rr);
    rules_prefetch(b.t, b.s, &slot, 1, b.rr);
    rules_prefetch(b.t, b.s, &slot, 2, b.rr);
    slot = lead_mk("new", "mortgage", "IA", "50309");
    rt_route(&a, &slot);
    rt_route(&b, &slot);
    cr_assert_eq(b.d.niche, a.d.niche, "stale prefetch reused: niche %d, want %d", b.d.niche, a.d.niche);
    cr_assert_eq(b.d.n_verdicts, a.d.n_verdicts);
    rt_close(&a);
    rt_close(&b);
}

/* Stage 2 of the pipeline runs the radius checks ahead and keeps up to 32
 * dealers inside; a lead inside more of them (here 40 circles around one
 * point, and 10 for a second lead) must be decided exactly as without the
 * pipeline, and so must a lead that stage 2 sees before stage 1. */
Test(determinism, prefetch_radius_hits_past_the_ring_capacity)
{
    char text[16384];
    int o = snprintf(text, sizeof text, "niches = ( { name = \"roof\"; max_buyers = 3; } );\ndealers = (\n");
    for (int i = 0; i < 40; i++)
        o += snprintf(text + o, sizeof text - (size_t)o,
                      "  { id = \"r%02d\"; niches = [ \"roof\" ]; contract = { weight = %d; };\n"
                      "    territory = { radius = { lat = %.3f; lon = -93.62; km = %d.0; }; }; }%s\n",
                      i, 1 + i % 3, 41.5 + 0.001 * i, i < 10 ? 30 : 10, i < 39 ? "," : "");
    snprintf(text + o, sizeof text - (size_t)o, ");\n");
    struct rt a, b;
    rt_open(&a, text);
    rt_open(&b, text);
    static const double pts[][2] = {{41.52, -93.62}, {41.75, -93.62}, {41.52, -93.62}, {45.0, -93.0}};
    static struct lead leads[4];
    for (int i = 0; i < 4; i++) {
        leads[i] = lead_mk("many", "roof", NULL, NULL);
        lead_geo(&leads[i], pts[i][0], pts[i][1]);
    }
    rules_prefetch(b.t, b.s, &leads[0], 0, b.rr);
    rules_prefetch(b.t, b.s, &leads[1], 0, b.rr);
    rules_prefetch(b.t, b.s, &leads[0], 1, b.rr);
    rules_prefetch(b.t, b.s, &leads[1], 1, b.rr);
    rules_prefetch(b.t, b.s, &leads[0], 2, b.rr);
    rules_prefetch(b.t, b.s, &leads[1], 2, b.rr);
    rules_prefetch(b.t, b.s, &leads[2], 2, b.rr); /* no stage 0 before: starts there */
    rules_prefetch(b.t, b.s, &leads[3], 0, b.rr);
    rules_prefetch(b.t, b.s, &leads[3], 2, b.rr); /* stage 1 skipped: does stage 1 */
    uint32_t want[] = {40, 10, 40, 0};
    for (int i = 0; i < 4; i++) {
        rt_route(&a, &leads[i]);
        rt_route(&b, &leads[i]);
        cr_assert_eq(a.d.n_verdicts, want[i], "lead %d: %u dealers hold it, expected %u", i, a.d.n_verdicts,
                     want[i]);
        cr_assert_eq(b.d.n_verdicts, a.d.n_verdicts, "lead %d", i);
        for (uint32_t v = 0; v < a.d.n_verdicts; v++) {
            cr_assert_eq(b.d.verdicts[v].dealer, a.d.verdicts[v].dealer, "lead %d verdict %u", i, v);
            cr_assert_eq(b.d.verdicts[v].match, MATCH_RADIUS, "lead %d verdict %u", i, v);
        }
        cr_assert_eq(b.d.n_picked, a.d.n_picked, "lead %d", i);
        for (uint32_t p = 0; p < a.d.n_picked; p++)
            cr_assert_eq(b.d.picked[p], a.d.picked[p], "lead %d: pick %u differs", i, p);
    }
    rt_close(&a);
    rt_close(&b);
}
