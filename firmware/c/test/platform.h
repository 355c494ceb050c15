/* Where the vector runner's text goes: stdout on the host, semihosting on the emulated target. */
#ifndef RUNNER_PLATFORM_H
#define RUNNER_PLATFORM_H

void platform_write(const char *text);

#endif
