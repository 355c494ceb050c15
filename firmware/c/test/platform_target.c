/* Target side of platform.h: the runner's text through semihosting. */
#include "platform.h"
#include "semihost.h"

void platform_write(const char *text)
{
    semihost_write(text);
}
