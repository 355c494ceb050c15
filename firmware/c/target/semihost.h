/* ARM semihosting for the emulated tests: text to the host's console, and the exit status.
 * Hand-written support (not generated). Under qemu-system-arm it needs -semihosting-config enable=on. */
#ifndef SEMIHOST_H
#define SEMIHOST_H

void semihost_write(const char *text);
void semihost_exit(int status) __attribute__((noreturn));

#endif
