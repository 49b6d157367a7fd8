// Package bpf holds the agent's eBPF programs (redirect.c) and the Go
// bindings bpf2go generates from them (redirect_bpfel.go and the compiled
// redirect_bpfel.o, both committed so a build needs no clang).
//
// The programs redirect TCP connects to the metadata endpoints to the
// proxy listener and record the connecting process; package
// proxyagent/redirector loads, attaches and pins them. Types shared
// between C and Go (RedirectPolicyKey, RedirectPolicyValue,
// RedirectConnKey, RedirectConnRecord) are defined once, in redirect.c.
//
// Regenerate with `make generate` (needs clang and llvm-strip); the
// include/asm shims let the bpf target use <linux/bpf.h> from
// linux-libc-dev on any host architecture.
package bpf

//go:generate go tool bpf2go -tags linux -target bpfel -type policy_key -type policy_value -type conn_key -type conn_record Redirect redirect.c -- -O2 -g -Wall -Werror -I./include
