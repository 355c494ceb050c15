/* Minimal start-up for the emulated Cortex-M4 (MPS2-AN386): vector table, .data/.bss set-up, main, exit
 * through semihosting; and the memcpy/memset GCC may emit for struct copies (there is no C library).
 * Hand-written support for the emulated tests, not generated. */
#include <stddef.h>
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);

void reset_handler(void);
void default_handler(void);
void uart0_rx_handler(void) __attribute__((weak, alias("default_handler")));
void systick_handler(void) __attribute__((weak, alias("default_handler")));
void *memcpy(void *to, const void *from, size_t n);
void *memset(void *to, int value, size_t n);

void reset_handler(void)
{
    uint32_t *from = &_sidata;
    uint32_t *to = &_sdata;
    while (to < &_edata) {
        *to++ = *from++;
    }
    for (to = &_sbss; to < &_ebss;) {
        *to++ = 0u;
    }
    semihost_exit(main());
}

void default_handler(void)
{
    semihost_write("unexpected exception or interrupt\n");
    semihost_exit(3);
}

/* Cortex-M vector table: initial stack, 15 system exceptions, then the board's interrupts (UART0 RX is
 * interrupt 0 on the MPS2 AN385/AN386 images). */
__attribute__((section(".vectors"), used)) static void (*const vectors[17])(void) = {
    (void (*)(void))(uintptr_t)&_estack,
    reset_handler,
    default_handler, /* NMI */
    default_handler, /* HardFault */
    default_handler, /* MemManage */
    default_handler, /* BusFault */
    default_handler, /* UsageFault */
    0,
    0,
    0,
    0,
    default_handler, /* SVCall */
    default_handler, /* DebugMonitor */
    0,
    default_handler, /* PendSV */
    systick_handler, /* SysTick */
    uart0_rx_handler, /* IRQ 0: UART0 receive */
};

void *memcpy(void *to, const void *from, size_t n)
{
    unsigned char *t = to;
    const unsigned char *f = from;
    while (n-- > 0u) {
        *t++ = *f++;
    }
    return to;
}

void *memset(void *to, int value, size_t n)
{
    unsigned char *t = to;
    while (n-- > 0u) {
        *t++ = (unsigned char)value;
    }
    return to;
}
