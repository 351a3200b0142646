/* bpfleet_net.h — the packet headers and constants of the packet builtins, both ways: the kernel's
 * uapi headers with BCC; in CO-RE bytecode the structs come from vmlinux.h, which has no #define,
 * so the few constants used are spelled here (their values are kernel ABI). */
#ifndef BPFLEET_NET_H
#define BPFLEET_NET_H

#ifdef BPFLEET_BYTECODE
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#else
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#endif

#endif /* BPFLEET_NET_H */
