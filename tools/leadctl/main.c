/* main.c - leadctl: placeholder until the admin client lands. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "leadctl: not built yet\n");
    return 70;
}
