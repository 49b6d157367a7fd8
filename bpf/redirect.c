//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Connect-time redirection of metadata traffic to the proxy agent.
//
// cgroup/connect4 and cgroup/connect6 rewrite the destination of a TCP
// connect() whose (address, port) is in policy_map to the listener stored as
// the entry's value, and record who connected (conn_record) in the socket's
// local storage. At BPF_SOCK_OPS_TCP_CONNECT_CB the ephemeral port is known,
// so the sockops program moves the record into conn_records, keyed by the
// client's local address and port: exactly what the listener sees as the
// peer of the accepted connection. User space deletes the entry at accept;
// a counted socket's entry also goes when its connect fails or its peer
// closes the connection before that (release).
//
// Sockets whose SO_MARK equals agent_mark, made by root in the agent's
// network namespace (the agent's own connections to the host), are never
// redirected.
//
// Listener guard: cgroup/bind4 and cgroup/bind6 refuse (EPERM) a TCP bind
// by a non-root process in the agent's network namespace to the agent's
// listener or container listener port on their addresses, the wildcard
// address or (IPv6) their v4-mapped forms and ::. While the agent is down
// the pinned programs keep redirecting to those addresses; without the
// guard any local user could listen there and answer root's metadata
// requests in the host's name.
//
// Listener check: a redirect to, or a connect straight to, a listener of
// the agent's namespace is refused (EPERM) unless the socket listening
// there carries the agent's mark (listener()): a user's socket that got
// the listener's port past the bind guard never gets a connection. While
// nobody listens (the agent down) the connect fails with ECONNREFUSED
// (Linux 6.1; EPERM before), as one to a closed port does.
//
// Connection limits: a caller (a user in a network namespace; root in the
// agent's namespace is exempt) holds at most max_caller_conns redirected
// connections at once, and the callers in the agent's namespace together
// max_limited_conns; a connect beyond either is refused (EPERM) here,
// before a SYN is sent, so a flood costs the agent nothing. A connection is
// counted from its SYN (BPF_SOCK_OPS_TCP_CONNECT_CB) until the agent
// closed it (CLOSE_WAIT) or the socket is done (CLOSE: reset, failed
// connect, or the client's close completed). A socket whose SYN finds its
// caller over a limit although connect() passed (a TCP Fast Open connect
// sends its SYN at the first write; connects racing on other CPUs) gets no
// record, so the agent serves nothing on it. Connections of other
// namespaces are not in the total: a user's own namespace can hold its
// connections itself (a listener on the container listener's address),
// and they must not lock out everyone else. Connects straight to a
// listener (not redirected: azure-proxy-agent --status, the local
// endpoints) are recorded too, with no original destination, and counted
// and limited the same way: a flood of them costs the agent nothing
// either, and the agent knows whose they are. The counts are not
// pinned: a reloaded set of programs counts afresh (the connections open
// before it are not counted), so counts can never drift upwards across
// versions and lock callers out.
//
// Containers: a socket in another network namespace than the agent's
// (agent_netns, a netns cookie) cannot reach 127.0.0.1 of the agent's
// namespace, so it goes to the policy entry's container-facing listener
// (an address the agent owns in its namespace and containers reach through
// their default route). With no container listener configured (address
// 0.0.0.0) such a connect is refused (EPERM), never let through. The record
// carries the socket's netns cookie; a record whose key (client address and
// port, listener) is already taken by a pending record of another namespace marks
// that record as a collision, and the agent then trusts neither.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1

// USER_HZ is 100 on every Linux architecture the agent supports, so one
// clock tick of /proc/<pid>/stat field 22 is 10 ms.
#define NSEC_PER_TICK 10000000ULL

// Minimal CO-RE views of the kernel's structures: field offsets are
// relocated against the running kernel's BTF at load time.
struct inode {
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct vfsmount {
	void *mnt_root;
} __attribute__((preserve_access_index));

// mount embeds the vfsmount that struct path points at.
struct mount {
	struct vfsmount mnt;
	int mnt_id;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file; // the executable the process image runs
} __attribute__((preserve_access_index));

struct task_struct {
	struct task_struct *group_leader;
	struct mm_struct *mm;
	__u64 start_boottime; // ns since boot, including suspend (Linux >= 5.5)
	__u64 self_exec_id;   // incremented by every execve (u64 since Linux 5.7)
} __attribute__((preserve_access_index));

// policy_key is a redirected destination.
struct policy_key {
	__u8 addr[4]; // IPv4 address, network byte order
	__u16 port;   // host byte order
	__u16 pad;    // zero
};

// policy_value is where connections to a policy_key go instead: the
// agent's listener for sockets in its own network namespace, the
// container-facing listener for sockets in any other (0.0.0.0: refuse).
struct policy_value {
	__u8 addr[4];    // IPv4 address, network byte order
	__u16 port;      // host byte order
	__u16 pad;       // zero
	__u8 ns_addr[4]; // container-facing listener, IPv4 network byte order
	__u16 ns_port;   // host byte order
	__u16 pad2;      // zero
};

// conn_key identifies a redirected connection as the listener sees it: the
// client's local (source) address and port, and the address and port it
// connected to (the listener: the accepted socket's local address). A
// source address and port alone are not unique: one port can be bound to
// several destinations at once (the agent's two listeners).
struct conn_key {
	__u8 addr[4];     // client IPv4 address, network byte order
	__u16 port;       // client port, host byte order
	__u16 pad;        // zero
	__u8 dst_addr[4]; // listener IPv4 address, network byte order
	__u16 dst_port;   // listener port, host byte order
	__u16 pad2;       // zero
};

// conn_record is what the kernel knows about the connecting process at
// connect() time.
struct conn_record {
	__u64 cgroup_id;   // cgroup v2 id (inode number of the cgroup directory)
	__u64 netns;       // network namespace cookie of the socket
	__u64 start_time;  // process start, clock ticks since boot (/proc/<pid>/stat field 22)
	__u64 exec_id;     // the process's execve count (group leader's self_exec_id)
	__u64 exe_ino;     // inode number of the executable the process runs (0: unknown)
	__u64 exe_mnt;     // id of the mount it was run from (statx stx_mnt_id) | 1 << 32; 0: unknown
	__u64 cookie;      // socket cookie of the connection that published it (release deletes only its own)
	__u32 pid;         // thread-group id
	__u32 tid;         // id of the thread that called connect()
	__u32 uid;         // real uid
	__u32 gid;         // real gid
	__u8 orig_addr[4]; // original destination, IPv4 network byte order (0: a connect straight to a listener)
	__u16 orig_port;   // original destination port, host byte order (0: a connect straight to a listener)
	__u8 family;       // AF_INET or AF_INET6 (v4-mapped) socket
	__u8 collision;    // 1: another namespace's connect wrote the same key
	__u8 comm[16];     // task comm, NUL padded
};

// agent_mark is the SO_MARK of the agent's own sockets; set at load time.
// 0 disables the exemption (no socket is exempt).
volatile const __u32 agent_mark = 0;

// agent_netns is the agent's network namespace cookie; set at load time.
// 0 (unknown) treats every socket as in the agent's namespace.
volatile const __u64 agent_netns = 0;

// listen_addr and listen_port are the agent's listener; ns_listen_addr
// and ns_listen_port its container listener (0: none). Set at load time,
// addresses in network byte order, ports in host byte order. A zero
// listen_port disables the bind guard.
volatile const __u32 listen_addr = 0;
volatile const __u16 listen_port = 0;
volatile const __u32 ns_listen_addr = 0;
volatile const __u16 ns_listen_port = 0;

// max_caller_conns is the per-caller limit (maxConnectionsPerCaller) and
// max_limited_conns the limit of all limited callers together (the
// agent's maxConnections less the slots it keeps for root); set at load
// time. 0: no such limit.
volatile const __u32 max_caller_conns = 0;
volatile const __u32 max_limited_conns = 0;

// agent_pidns_dev and agent_pidns_ino identify the agent's PID namespace
// (the device, in the kernel's encoding, and inode of /proc/self/ns/pid);
// set at load time when the agent runs in a PID namespace other than the
// initial one (a container, systemd-nspawn). The record then carries the
// caller's pid as the agent's /proc shows it, and pid 0 (unknown) for a
// caller outside that namespace. 0: record initial-namespace pids.
volatile const __u64 agent_pidns_dev = 0;
volatile const __u64 agent_pidns_ino = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sk_records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct conn_key);
	__type(value, struct conn_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conn_records SEC(".maps");

// caller_key is whose connections the per-caller limit counts.
struct caller_key {
	__u64 netns; // network namespace cookie of the socket
	__u32 uid;   // real uid
	__u32 pad;   // zero
};

// caller_conns counts each caller's open redirected connections. An LRU
// map: callers (containers) come and go. Eviction needs more callers than
// entries; one evicted while it holds connections gets a more lenient
// limit, and a count racing with an eviction may land on the entry's next
// owner (until the next load).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct caller_key);
	__type(value, __s64);
} caller_conns SEC(".maps");

// limited_conns[0] counts the open redirected connections of all limited
// callers in the agent's namespace together.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} limited_conns SEC(".maps");

// sk_callers marks a counted socket with the key it is counted under,
// until sockops releases it (also in limited_conns if the key's namespace
// is the agent's).
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct caller_key);
} sk_callers SEC(".maps");

// limit_refusals counts the connects refused since the programs were
// loaded (the agent's metrics read it): [REFUSED_CALLER] for the
// per-caller limit, [REFUSED_ALL] for the limit of all callers.
#define REFUSED_CALLER 0
#define REFUSED_ALL 1
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} limit_refusals SEC(".maps");

// is_agent reports whether the socket is one of the agent's own: it
// carries agent_mark, was made by root and is in the agent's network
// namespace. A mark alone is not enough: since Linux 5.17 CAP_NET_RAW
// (which container runtimes grant by default) may set any SO_MARK.
static __always_inline int is_agent(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (!sk || agent_mark == 0 || sk->mark != agent_mark)
		return 0;
	if ((__u32)bpf_get_current_uid_gid() != 0)
		return 0;
	return agent_netns == 0 || bpf_get_netns_cookie(ctx) == agent_netns;
}

// record stores the caller's identity in the socket's local storage. A
// failure leaves the socket without a record: the connection is still
// redirected and the listener treats it as having no identity.
static __always_inline void record(struct bpf_sock_addr *ctx, __u32 dst_ip4, __u16 dst_port, __u8 family, __u64 netns)
{
	struct conn_record *rec;
	struct task_struct *task;
	struct vfsmount *vfsmnt;
	__u64 id;

	rec = bpf_sk_storage_get(&sk_records, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rec)
		return;

	id = bpf_get_current_pid_tgid();
	rec->pid = id >> 32;
	rec->tid = (__u32)id;
	if (agent_pidns_ino != 0) {
		struct bpf_pidns_info ns = {};

		if (bpf_get_ns_current_pid_tgid(agent_pidns_dev, agent_pidns_ino, &ns, sizeof(ns)) == 0) {
			rec->pid = ns.tgid;
			rec->tid = ns.pid;
		} else {
			rec->pid = 0;
			rec->tid = 0;
		}
	}
	id = bpf_get_current_uid_gid();
	rec->uid = (__u32)id;
	rec->gid = id >> 32;
	rec->cgroup_id = bpf_get_current_cgroup_id();
	task = (struct task_struct *)bpf_get_current_task();
	rec->start_time = BPF_CORE_READ(task, group_leader, start_boottime) / NSEC_PER_TICK;
	// Every thread of a process image has the leader's value (threads copy
	// it at clone; execve ends all other threads and increments it in the
	// thread that becomes the leader), so pid, start time and exec_id name
	// one process image.
	rec->exec_id = BPF_CORE_READ(task, group_leader, self_exec_id);
	// The executable at connect(): the agent compares it with the one
	// /proc shows when it reads the caller, so an execve in between is
	// not judged as the program it became.
	rec->exe_ino = BPF_CORE_READ(task, mm, exe_file, f_inode, i_ino);
	// An inode number alone names a file only within one filesystem (a
	// memfd or a FUSE mount can have any number): the mount goes with it.
	vfsmnt = BPF_CORE_READ(task, mm, exe_file, f_path.mnt);
	rec->exe_mnt = 0;
	if (vfsmnt) {
		struct mount *m = (void *)vfsmnt - bpf_core_field_offset(struct mount, mnt);

		// Bit 32 says the id was read: a memfd's mount has id 0.
		rec->exe_mnt = (__u64)(__u32)BPF_CORE_READ(m, mnt_id) | (1ULL << 32);
	}
	__builtin_memcpy(rec->orig_addr, &dst_ip4, 4);
	rec->orig_port = dst_port;
	rec->family = family;
	rec->collision = 0;
	rec->cookie = 0;
	rec->netns = netns;
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
}

// in_agent_netns reports whether netns is the agent's network namespace
// (always, when that is unknown).
static __always_inline int in_agent_netns(__u64 netns)
{
	return agent_netns == 0 || netns == agent_netns;
}

// limited reports whether the connection limits apply to uid in netns: a
// limit is on, and the caller is not root in the agent's namespace.
static __always_inline int limited(__u32 uid, __u64 netns)
{
	if (max_caller_conns == 0 && max_limited_conns == 0)
		return 0;
	return uid != 0 || !in_agent_netns(netns);
}

// at_limit reports (and counts as a refusal) that a new connection of the
// caller uid in netns would exceed a connection limit.
static __always_inline int at_limit(__u32 uid, __u64 netns)
{
	struct caller_key key = {};
	__u32 zero = 0, why;
	__u64 *refused;
	__s64 *n;

	if (!limited(uid, netns))
		return 0;
	n = bpf_map_lookup_elem(&limited_conns, &zero);
	if (max_limited_conns != 0 && in_agent_netns(netns) && n && *n >= (__s64)max_limited_conns) {
		why = REFUSED_ALL;
		goto refuse;
	}
	key.netns = netns;
	key.uid = uid;
	n = bpf_map_lookup_elem(&caller_conns, &key);
	if (max_caller_conns != 0 && n && *n >= (__s64)max_caller_conns) {
		why = REFUSED_CALLER;
		goto refuse;
	}
	return 0;
refuse:
	refused = bpf_map_lookup_elem(&limit_refusals, &why);
	if (refused)
		__sync_fetch_and_add(refused, 1);
	return 1;
}

#define ECONNREFUSED 111

// Who listens on a listener address (listener()).
#define LISTENER_AGENT 1    // the agent
#define LISTENER_NOBODY 0   // nobody: the agent is down
#define LISTENER_STRANGER 2 // a socket without the agent's mark

// listener reports who listens on ip4:port (a listener address of the
// agent's namespace, port in host byte order; 0.0.0.0 is loopback to a
// connect): the agent if the socket carries the agent's mark, which only a
// process with CAP_NET_ADMIN (or CAP_NET_RAW, Linux 5.17) in the agent's
// namespace can set. The bind guard keeps others from binding a
// listener's address, but not a socket bound before the guard was first
// loaded (with SO_REUSEADDR, beside the agent's), which can listen once
// the agent's listener closes: its connections are refused here, as while
// nobody listens, never handed to it. (The check is made at connect(); a
// SYN retried after a drop meets whoever listens then.)
static __always_inline int listener(struct bpf_sock_addr *ctx, __u32 ip4, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	int who;

	t.ipv4.daddr = ip4 ? ip4 : bpf_htonl(0x7f000001);
	t.ipv4.dport = bpf_htons(port);
	sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return LISTENER_NOBODY;
	who = agent_mark == 0 || sk->mark == agent_mark ? LISTENER_AGENT : LISTENER_STRANGER;
	bpf_sk_release(sk);
	return who;
}

// can_set_retval is 1 when the kernel lets cgroup sock_addr programs call
// bpf_set_retval (Linux 6.1; the helper exists since 5.18, for other
// cgroup hooks only); set at load time from a probe. At 0 the verifier
// drops the call, so the same object loads on older kernels.
volatile const __u8 can_set_retval = 0;

// refuse_unserved is the verdict for a connect the agent is not there to
// serve (who: listener()'s answer, not LISTENER_AGENT). It is refused
// before any packet is sent; with nobody listening (the agent down) with
// ECONNREFUSED, as a connect to a port nobody listens on fails, where the
// kernel lets the program choose the error (can_set_retval), and
// otherwise, and for a stranger's listener, with EPERM.
static __always_inline int refuse_unserved(int who)
{
	if (who == LISTENER_NOBODY && can_set_retval)
		bpf_set_retval(-ECONNREFUSED);
	return 0;
}

// redirect records the caller and rewrites the destination of a connect to
// ip4:port, a policy entry: to the listener in the agent's namespace, to the
// container-facing listener elsewhere. It returns the program's verdict: 0
// refuses the connect (the caller is at its limit, another namespace and
// no container listener, or the agent is not listening: refuse_unserved).
static __always_inline int redirect(struct bpf_sock_addr *ctx, struct policy_value *to, __u32 ip4, __u16 port,
				    __u8 family, __u32 *new_ip4, __u16 *new_port)
{
	__u64 netns = bpf_get_netns_cookie(ctx);

	if (at_limit((__u32)bpf_get_current_uid_gid(), netns))
		return 0;
	if (agent_netns != 0 && netns != agent_netns) {
		__builtin_memcpy(new_ip4, to->ns_addr, 4);
		if (*new_ip4 == 0)
			return 0;
		*new_port = to->ns_port;
	} else {
		int who;

		__builtin_memcpy(new_ip4, to->addr, 4);
		*new_port = to->port;
		who = listener(ctx, *new_ip4, *new_port);
		if (who != LISTENER_AGENT)
			return refuse_unserved(who);
	}
	record(ctx, ip4, port, family, netns);
	return 1;
}

// forget drops a record an earlier connect of this socket left behind
// (one that failed before its SYN), so a later connect of the socket never
// publishes it: only this connect may record.
static __always_inline void forget(struct bpf_sock_addr *ctx)
{
	if (bpf_sk_storage_get(&sk_records, ctx->sk, 0, 0))
		bpf_sk_storage_delete(&sk_records, ctx->sk);
}

// is_listener reports whether ip4:port (port in host byte order) is one of
// the agent's listeners: its address, or 0.0.0.0 on its port (a connect to
// it reaches a local address; a bind to it takes the listener's
// connections).
static __always_inline int is_listener(__u32 ip4, __u16 port)
{
	if (listen_port != 0 && port == listen_port && (ip4 == listen_addr || ip4 == 0))
		return 1;
	return ns_listen_port != 0 && port == ns_listen_port && (ip4 == ns_listen_addr || ip4 == 0);
}

// direct is the verdict for a connect to ip4:port, a listener address
// (is_listener): one that reaches the agent — in the agent's network
// namespace, or the container listener's address from any — is refused
// when the caller is at a limit, else recorded without an original
// destination (so the agent knows the caller) and counted like a
// redirected one. In another namespace the listener's address is that
// namespace's own (a container's 127.0.0.1:3080): left alone.
static __always_inline int direct(struct bpf_sock_addr *ctx, __u32 ip4, __u16 port, __u8 family)
{
	__u64 netns = bpf_get_netns_cookie(ctx);

	if (!in_agent_netns(netns) && !(ns_listen_port != 0 && ip4 == ns_listen_addr && port == ns_listen_port))
		return 1;
	if (is_agent(ctx))
		return 1;
	if (at_limit((__u32)bpf_get_current_uid_gid(), netns))
		return 0;
	// Only where the agent's namespace is known: without it (before Linux
	// 5.14) every socket counts as the agent's, and a container's connect
	// to its own 127.0.0.1:3080 must not be refused.
	if (agent_netns != 0 && netns == agent_netns) {
		int who = listener(ctx, ip4, port);

		if (who != LISTENER_AGENT)
			return refuse_unserved(who);
	}
	record(ctx, 0, 0, family, netns);
	return 1;
}

// lookup returns the redirect target for ip:port, or NULL.
static __always_inline struct policy_value *lookup(__u32 ip4, __u16 port)
{
	struct policy_key key = {};

	__builtin_memcpy(key.addr, &ip4, 4);
	key.port = port;
	return bpf_map_lookup_elem(&policy_map, &key);
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct policy_value *to;
	__u32 ip4, new_ip4 = 0;
	__u16 port, new_port = 0;

	if (ctx->type != SOCK_STREAM)
		return 1;
	forget(ctx);
	ip4 = ctx->user_ip4;
	port = bpf_ntohs((__u16)ctx->user_port);
	to = lookup(ip4, port);
	if (!to)
		return is_listener(ip4, port) ? direct(ctx, ip4, port, AF_INET) : 1;
	if (is_agent(ctx))
		return 1;

	if (!redirect(ctx, to, ip4, port, AF_INET, &new_ip4, &new_port))
		return 0;
	ctx->user_ip4 = new_ip4;
	ctx->user_port = bpf_htons(new_port);
	return 1;
}

// connect6 handles IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) on AF_INET6
// sockets, which the kernel connects over IPv4 without running connect4.
SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct policy_value *to;
	__u32 ip4, new_ip4 = 0;
	__u16 port, new_port = 0;

	if (ctx->type != SOCK_STREAM)
		return 1;
	forget(ctx);
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 ||
	    ctx->user_ip6[2] != bpf_htonl(0x0000ffff))
		return 1;
	ip4 = ctx->user_ip6[3];
	port = bpf_ntohs((__u16)ctx->user_port);
	to = lookup(ip4, port);
	if (!to)
		return is_listener(ip4, port) ? direct(ctx, ip4, port, AF_INET6) : 1;
	if (is_agent(ctx))
		return 1;

	if (!redirect(ctx, to, ip4, port, AF_INET6, &new_ip4, &new_port))
		return 0;
	ctx->user_ip6[3] = new_ip4;
	ctx->user_port = bpf_htons(new_port);
	return 1;
}

// may_bind is the guard's verdict for a bind to a guarded address: root,
// and any socket outside the agent's network namespace (whose addresses
// are its own), may.
static __always_inline int may_bind(struct bpf_sock_addr *ctx)
{
	if ((__u32)bpf_get_current_uid_gid() == 0)
		return 1;
	return agent_netns != 0 && bpf_get_netns_cookie(ctx) != agent_netns;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || !is_listener(ctx->user_ip4, bpf_ntohs((__u16)ctx->user_port)))
		return 1;
	return may_bind(ctx);
}

// bind6 guards the v4-mapped forms of the listener addresses and the
// IPv6 wildcard, which (dual-stack) also takes IPv4 connections.
SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	__u16 port = bpf_ntohs((__u16)ctx->user_port);

	if (ctx->type != SOCK_STREAM || ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0)
		return 1;
	if (ctx->user_ip6[2] == bpf_htonl(0x0000ffff)) {
		if (!is_listener(ctx->user_ip6[3], port))
			return 1;
	} else if (ctx->user_ip6[2] != 0 || ctx->user_ip6[3] != 0 || !is_listener(0, port)) {
		return 1;
	}
	return may_bind(ctx);
}

// count counts a redirected socket under its caller (rec) and, in the
// agent's namespace, among all limited callers, and asks for its state
// changes, so release can count it out. It returns 0 when the caller is
// over a limit (the socket is not counted and must not be served); a
// socket that cannot be marked is served but not counted.
static __always_inline int count(struct bpf_sock_ops *ctx, struct bpf_sock *sk, struct conn_record *rec)
{
	struct caller_key key = {};
	struct caller_key *held;
	__s64 zero = 0, *n, *all = 0;
	__u32 first = 0;

	if (!limited(rec->uid, rec->netns))
		return 1;
	if (at_limit(rec->uid, rec->netns))
		return 0;
	if (in_agent_netns(rec->netns)) {
		all = bpf_map_lookup_elem(&limited_conns, &first);
		if (!all)
			return 1;
	}
	key.netns = rec->netns;
	key.uid = rec->uid;
	n = bpf_map_lookup_elem(&caller_conns, &key);
	if (!n) {
		bpf_map_update_elem(&caller_conns, &key, &zero, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&caller_conns, &key);
		if (!n)
			return 1;
	}
	held = bpf_sk_storage_get(&sk_callers, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!held)
		return 1;
	*held = key;
	if (bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG) != 0) {
		bpf_sk_storage_delete(&sk_callers, sk);
		return 1;
	}
	__sync_fetch_and_add(n, 1);
	if (all)
		__sync_fetch_and_add(all, 1);
	return 1;
}

// key_of fills key with the connection's client address and port (the
// socket's own) and its listener (the socket's peer once redirected).
static __always_inline void key_of(struct bpf_sock_ops *ctx, struct conn_key *key)
{
	__u32 ip4 = ctx->local_ip4, dst4 = ctx->remote_ip4;

	__builtin_memcpy(key->addr, &ip4, 4);
	key->port = (__u16)ctx->local_port;
	__builtin_memcpy(key->dst_addr, &dst4, 4);
	// remote_port holds the port in network byte order in its upper half
	// (host byte order after the swap).
	key->dst_port = (__u16)bpf_ntohl(ctx->remote_port);
}

// release counts a counted socket out, once. When the agent can no
// longer take the record the socket published, it drops it: the connect
// failed (SYN_SENT to CLOSE: refused, unreachable, timed out), the peer
// closed the connection first (CLOSE_WAIT; the agent takes a record before
// it closes a connection it serves, and one it closes unserved needs
// none), or a reset ended it (ESTABLISHED to CLOSE). Such records would
// otherwise wait in the LRU for an accept that cannot come. A connection
// its client closed in order (FIN) keeps its record: the agent may still
// accept and serve it, as upstream forwards such a request. Only the
// socket's own record goes (its cookie), and never one marked as a
// collision: a marked record stays until the agent takes it or the LRU
// evicts it, or either side could clear the mark by failing and then
// publish a clean record in its place, which the other connection would be
// handed. (Between the lookup and the delete the agent may take the record
// and another namespace publish one under the key; deleting that costs its
// connection a 421, never a wrong identity.)
static __always_inline void release(struct bpf_sock_ops *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct caller_key *held;
	struct conn_record *rec;
	struct conn_key key = {};
	__u32 first = 0;
	__s64 *n;

	if (!sk)
		return;
	held = bpf_sk_storage_get(&sk_callers, sk, 0, 0);
	if (!held)
		return;
	if (ctx->args[1] == BPF_TCP_CLOSE_WAIT || ctx->args[0] == BPF_TCP_SYN_SENT || ctx->args[0] == BPF_TCP_ESTABLISHED) {
		key_of(ctx, &key);
		rec = bpf_map_lookup_elem(&conn_records, &key);
		if (rec && !rec->collision && rec->cookie == bpf_get_socket_cookie(ctx))
			bpf_map_delete_elem(&conn_records, &key);
	}
	n = bpf_map_lookup_elem(&caller_conns, held);
	if (n)
		__sync_fetch_and_add(n, -1);
	if (in_agent_netns(held->netns)) {
		n = bpf_map_lookup_elem(&limited_conns, &first);
		if (n)
			__sync_fetch_and_add(n, -1);
	}
	// The state callbacks stay on (another sockops program may want them);
	// later ones find no mark.
	bpf_sk_storage_delete(&sk_callers, sk);
}

// sockops_connect runs right before the SYN of every TCP connect in the cgroup. A
// redirected socket carries a record: publish it under the now-known local
// address and port and its destination. Any other socket clears a stale
// entry for its 4-tuple, so a record that was never consumed (listener
// down) can never be claimed by a later, unredirected connection that
// reuses it.
//
// Two namespaces can use the same client address and port (containers on
// separate networks with the same address). A key can hold only one record:
// when a pending record of another namespace holds it, that record is
// marked as a collision and this one is dropped, so the agent refuses both
// connections instead of handing one namespace's identity to the other. A
// pending record of the same namespace and 4-tuple is stale (the kernel
// keeps a namespace's 4-tuples unique) and is replaced, unless it is
// marked: a mark stays until the agent takes the record (or the LRU evicts
// it), or the namespace that collided could clear it by reconnecting. The socket is counted
// under its caller for the per-caller limit; its later state changes
// (BPF_SOCK_OPS_STATE_CB, asked for by count) count it out.
SEC("sockops")
int sockops_connect(struct bpf_sock_ops *ctx)
{
	struct conn_record *rec;
	struct conn_key key = {};
	struct bpf_sock *sk;

	if (ctx->op == BPF_SOCK_OPS_STATE_CB) {
		// args[1] is the new state. A client's half-close (FIN_WAIT1/2)
		// still holds the agent's connection; its close completes in
		// CLOSE (TIME_WAIT sockets are separate and pass through it).
		if (ctx->args[1] == BPF_TCP_CLOSE_WAIT || ctx->args[1] == BPF_TCP_CLOSE)
			release(ctx);
		return 1;
	}
	if (ctx->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	sk = ctx->sk;
	if (!sk)
		return 1;

	key_of(ctx, &key);

	rec = bpf_sk_storage_get(&sk_records, sk, 0, 0);
	if (!rec) {
		bpf_map_delete_elem(&conn_records, &key);
		return 1;
	}
	if (!in_agent_netns(rec->netns) && (bpf_ntohl(ctx->local_ip4) >> 24) == 127) {
		// From a loopback address of another namespace the connection
		// stays there (a user's own namespace listening on the container
		// listener's address): it never reaches the agent, and its record
		// must not take a key the agent's namespace uses.
		bpf_sk_storage_delete(&sk_records, sk);
		return 1;
	}
	if (!count(ctx, sk, rec)) {
		// Over a limit: no record of its own, yet the socket may still
		// reach the listener (TCP Fast Open, racing connects). A stale
		// record of its namespace under its key goes; another
		// namespace's is marked, so the agent hands that identity to
		// neither connection.
		struct conn_record *old = bpf_map_lookup_elem(&conn_records, &key);

		if (old && old->netns != rec->netns)
			old->collision = 1;
		else if (old && !old->collision)
			bpf_map_delete_elem(&conn_records, &key);
		bpf_sk_storage_delete(&sk_records, sk);
		return 1;
	}
	rec->cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&conn_records, &key, rec, BPF_NOEXIST) != 0) {
		struct conn_record *old = bpf_map_lookup_elem(&conn_records, &key);

		if (old && old->netns != rec->netns)
			old->collision = 1;
		else if (!old || !old->collision)
			bpf_map_update_elem(&conn_records, &key, rec, BPF_ANY);
	}
	bpf_sk_storage_delete(&sk_records, sk);
	return 1;
}

char __license[] SEC("license") = "Dual MIT/GPL";
