/* The binary of simulated pods that have a root of their own (podsim.build_probe_root), for uprobes.
 *
 *   /bin/target sleep     waits forever: the pod's container process
 *   /bin/target call N    calls bpfleet_probe_target N times and prints the sum of its results
 *
 * Statically linked, so the root needs nothing else.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* noinline and the empty asm: the calls stay real calls, each one a hit of the probe. */
__attribute__((noinline)) int bpfleet_probe_target(int value)
{
    __asm__ volatile("" ::: "memory");
    return value + 1;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "sleep") == 0) {
        for (;;)
            pause();
    }
    if (argc == 3 && strcmp(argv[1], "call") == 0) {
        long sum = 0;
        for (int i = atoi(argv[2]); i > 0; i--)
            sum += bpfleet_probe_target(i);
        printf("%ld\n", sum);
        return 0;
    }
    fprintf(stderr, "usage: %s sleep | call N\n", argv[0]);
    return 2;
}
