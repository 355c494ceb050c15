/* ARM semihosting calls (BKPT 0xAB on M-profile). Hand-written support, not generated. */
#include "semihost.h"

#define SYS_WRITE0 0x04u
#define SYS_EXIT 0x18u
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define ADP_STOPPED_RUN_TIME_ERROR 0x20023u

static unsigned long semihost_call(unsigned long operation, const void *argument)
{
    register unsigned long r0 __asm__("r0") = operation;
    register const void *r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void semihost_write(const char *text)
{
    (void)semihost_call(SYS_WRITE0, text);
}

void semihost_exit(int status)
{
    /* On 32-bit ARM, SYS_EXIT takes the reason itself: qemu exits 0 for ApplicationExit, 1 otherwise. */
    unsigned long reason = status == 0 ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUN_TIME_ERROR;
    (void)semihost_call(SYS_EXIT, (const void *)reason);
    for (;;) {
    }
}
