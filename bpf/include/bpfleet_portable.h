/* bpfleet_portable.h — lets one builtin source build both ways: with BCC (its dialect, the node
 * compiles the C text) and with clang -target bpf into CO-RE bytecode (`make bytecode`, which
 * defines BPFLEET_BYTECODE and puts the vmlinux.h dumped from BTF on the include path).
 *
 * What it covers: map declarations, parameters, program sections and the license. What it cannot
 * cover is a map *call*: BCC rewrites `map.lookup(&key)` only where it is written in the source,
 * and refuses one that a macro produced ("cannot use map function inside a macro"), while
 * `map.lookup()` is not C for clang. So each source writes its few map calls both ways, next to
 * each other, in one small accessor per map.
 *
 * Parameters: with BCC, -D defines (the agent passes spec.parameters); in bytecode, `const
 * volatile __u32` globals of the same name in .rodata, which the loader sets before loading. */
#ifndef BPFLEET_PORTABLE_H
#define BPFLEET_PORTABLE_H

#include <bpfleet.h>

#ifdef BPFLEET_BYTECODE

#define BPFLEET_MAP(kind, name, key_type, value_type, entries) \
    struct {                                                   \
        __uint(type, kind);                                    \
        __uint(max_entries, entries);                          \
        __type(key, key_type);                                 \
        __type(value, value_type);                             \
    } name SEC(".maps")
#define BPFLEET_HASH(name, key_type, value_type, entries) \
    BPFLEET_MAP(BPF_MAP_TYPE_HASH, name, key_type, value_type, entries)
#define BPFLEET_ARRAY(name, value_type, entries) BPFLEET_MAP(BPF_MAP_TYPE_ARRAY, name, __u32, value_type, entries)
/* An integer parameter: set by the loader (0 until then). */
#define BPFLEET_PARAM(name) const volatile __u32 name = 0
/* The ELF section libbpf reads the program type from; BCC places functions itself. */
#define BPFLEET_PROGRAM(section) SEC(section)

/* BCC's map.increment(key): add one, creating the entry at zero first. */
static __always_inline void bpfleet_increment(void *map, const void *key)
{
    __u64 zero = 0;
    __u64 *value = bpf_map_lookup_elem(map, key);

    if (!value) {
        bpf_map_update_elem(map, key, &zero, BPF_NOEXIST);
        value = bpf_map_lookup_elem(map, key);
    }
    if (value)
        __sync_fetch_and_add(value, 1);
}

/* The pod filter of tracing programs is the agent's entry program (bpfleet_entry.bpf.c), which
 * tail-calls this one for the selected pods' tasks only: here every task is a selected one. */
static __always_inline int bpfleet_pod_selected(void)
{
    return 1;
}

char LICENSE[] SEC("license") = "GPL";

#else /* BCC */

#define BPFLEET_HASH(name, key_type, value_type, entries) BPF_HASH(name, key_type, value_type, entries)
#define BPFLEET_ARRAY(name, value_type, entries) BPF_ARRAY(name, value_type, entries)
#define BPFLEET_PARAM(name)
#define BPFLEET_PROGRAM(section)

#endif /* BPFLEET_BYTECODE */

#endif /* BPFLEET_PORTABLE_H */
