/* gen-contract.c - prints include/leadrouter/commit_contract.h as the Lua
 * constants that open the embedded commit script (a build step). */
#include <stdio.h>

#include "leadrouter/commit_contract.h"

int main(void)
{
    printf("-- generated from include/leadrouter/commit_contract.h - do not edit\n");
#define LR_X(name, what) printf("local %s = %d -- %s\n", #name, LR_ARG_##name, what);
    LR_COMMIT_HEAD(LR_X)
#undef LR_X
    printf("local ARG_END = %d\n", LR_ARG_END_);
#define LR_X(name, n) printf("local %s = %d\n", #name, n);
    LR_COMMIT_WIDTHS(LR_X)
#undef LR_X
#define LR_X(name, ch, what) printf("local %s = '%c' -- %s\n", #name, ch, what);
    LR_COMMIT_CODES(LR_X)
#undef LR_X
    return 0;
}
