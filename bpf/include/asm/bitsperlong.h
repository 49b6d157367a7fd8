/* Architecture-neutral shim so <linux/bpf.h> from linux-libc-dev compiles
 * for the bpf target without the host multiarch include directory. */
#include <asm-generic/bitsperlong.h>
