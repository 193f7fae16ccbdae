/* test_phone.c - the one phone normalization behind do-not-call and dedup
 * (commit_norm_phone): the forms of one number give one E.164 digit
 * string, whatever the producer or the DNC import wrote. */
#include <criterion/criterion.h>
#include <string.h>

#include "leadrouter/commit.h"

static const char *norm(const char *phone, const char *country)
{
    static char out[64];
    commit_norm_phone((struct lr_str){phone, (uint32_t)strlen(phone)}, country, out, sizeof out);
    return out;
}

Test(phone, north_american_forms_are_one_number)
{
    static const char *const forms[] = {"515-555-9999", "+1 515-555-9999", "(515) 555 9999", "15155559999",
                                        "011 1 515 555 9999", "+1 (515) 555-9999 "};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        cr_expect_str_eq(norm(forms[i], "US"), "15155559999", "%s", forms[i]);
        cr_expect_str_eq(norm(forms[i], "CA"), "15155559999", "%s (CA)", forms[i]);
    }
}

Test(phone, national_forms_take_the_default_country)
{
    cr_expect_str_eq(norm("07700 900123", "GB"), "447700900123");
    cr_expect_str_eq(norm("+44 7700 900123", "GB"), "447700900123");
    cr_expect_str_eq(norm("0044 7700 900123", "GB"), "447700900123");
    cr_expect_str_eq(norm("+44 7700 900123", "US"), "447700900123", "international stays, whatever the default");
    cr_expect_str_eq(norm("01 23 45 67 89", "FR"), "33123456789");
    cr_expect_str_eq(norm("030 1234567", "DE"), "49301234567");
    cr_expect_str_eq(norm("06 1234 5678", "IT"), "390612345678", "Italy keeps its 0");
    cr_expect_str_eq(norm("0412 345 678", "au"), "61412345678", "the country in any case");
}

Test(phone, unknown_countries_keep_their_digits)
{
    cr_expect_str_eq(norm("0801-234-5678", "XK"), "08012345678");
    cr_expect_str_eq(norm("n/a", "US"), "");
    cr_expect_str_eq(norm("", "GB"), "");
}
