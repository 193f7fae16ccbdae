/* main.c - leadrouterd entry point (stub until the loader lands). */
#include <stdio.h>
int main(void)
{
    fprintf(stderr, "leadrouterd: not built yet\n");
    return 70;
}
