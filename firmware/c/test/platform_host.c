/* Host side of platform.h: the runner's text to stdout. */
#include <stdio.h>

#include "platform.h"

void platform_write(const char *text)
{
    (void)fputs(text, stdout);
}
