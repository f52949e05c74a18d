// SPDX-License-Identifier: GPL-2.0
//
// The eBPF connection source of the network collector: TCP connects,
// accepts, listens and closes, and UDP sends to peers a process has not
// sent to before, as records in one ring buffer.
//
// Built by scripts/build-bpf.sh into conn.bpf.o (committed; a test holds
// the object equal to a fresh build). CO-RE: the kernel structs below are
// declared with only the fields read, and `preserve_access_index` makes
// the loader relocate every access against the running kernel's BTF
// (/sys/kernel/btf/vmlinux), so one object runs on any kernel with BTF.
//
// Hooks, and why these (no kprobe, fentry or fexit: kernels are built
// without kprobes, and this one refuses BPF trampolines; tracepoints and
// cgroup hooks are what every kernel with BPF has):
// - tp_btf/inet_sock_set_state: every TCP state change. The kernel runs
//   the transition to SYN_SENT (connect) and to LISTEN (listen) in the
//   calling process, so the owner is read there and kept per socket in
//   `owners`. The transition to ESTABLISHED usually runs in softirq, where
//   the current task is whoever was interrupted: the owner comes from the
//   map, never from the current task. The ports are only assigned after
//   SYN_SENT, hence the connect is reported at ESTABLISHED (or at CLOSE
//   for a refused attempt).
// - Accepts: a server's new connection reaches ESTABLISHED (from
//   SYN_RECV) in softirq, before accept(2). It belongs to its listener's
//   owner (`listeners`, by port, filled at LISTEN), as the polling source
//   attributes queued connections; a listener opened before the agent is
//   left to user space, which knows it from the inventory scan.
// - cgroup/sendmsg4, cgroup/sendmsg6 (a UDP send with an address) and
//   cgroup/connect4, cgroup/connect6 (a UDP socket given a fixed peer):
//   run in the sending process, attached to the root of the cgroup v2
//   hierarchy, so they see every process. They always allow the call.
//   `udp_peers`, an LRU keyed by process and peer, lets through one record
//   per new peer.
//
// Needs Linux 5.8 (ring buffers; tp_btf 5.5).

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

// include/net/tcp_states.h
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

// Record kinds (network/ebpf.rs matches these).
#define KIND_CONNECT 1
#define KIND_ACCEPT 2
#define KIND_CLOSE 3
#define KIND_LISTEN 4
#define KIND_UDP 5

#define DIR_OUTBOUND 1
#define DIR_INBOUND 2
#define DIR_LISTEN 3

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

typedef struct {
	__u32 val;
} kuid_t;

struct cred {
	kuid_t euid;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	__u64 start_boottime;
	struct task_struct *group_leader;
	const struct cred *cred;
} __attribute__((preserve_access_index));

// One record. Addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d.
struct event {
	__u64 ts_ns;         // CLOCK_BOOTTIME at the event
	__u64 opened_ns;     // CLOCK_BOOTTIME when the connection opened; 0 unknown
	__u64 proc_start_ns; // the owner's start (group leader); 0: no owner known
	__u32 tgid;
	__u32 uid;           // effective
	__u8 kind;
	__u8 oldstate;       // on CLOSE: the state it left
	__u8 family;         // the socket's: 4 or 6
	__u8 direction;      // DIR_*; 0 unknown
	__u16 sport;         // host order
	__u16 dport;         // host order
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
};

struct owner {
	__u64 opened_ns;
	__u64 proc_start_ns;
	__u32 tgid;
	__u32 uid;
	char comm[16];
	__u8 direction;
	__u8 pad[7];
};

struct udp_peer {
	__u64 proc_start_ns;
	__u32 tgid;
	__u16 dport;
	__u16 pad;
	__u8 daddr[16];
};

// 256 KiB: about 2,700 records. The reader maps its pages twice (so a
// record can wrap), all of them from the start, so the ring costs twice
// its size in RSS; in a loopback flood the queue behind the reader fills
// long before this does (docs/PERFORMANCE.md, "A flood of connections").
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} events SEC(".maps");

// Records the ring buffer had no room for.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

// The owner of each connecting, listening or accepted socket, until it
// closes. LRU: a close never seen (the agent started mid-connection) only
// costs a slot until it is evicted.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

// Listening sockets' owners by local port, for the connections they
// accept.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct owner);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct udp_peer);
	__type(value, __u8);
} udp_peers SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

static __always_inline void v4_mapped(__u8 out[16], __be32 addr)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr, 4);
}

// The calling process as a socket's owner.
static __always_inline void current_owner(struct owner *o, __u8 direction)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	o->opened_ns = bpf_ktime_get_boot_ns();
	o->proc_start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	o->tgid = bpf_get_current_pid_tgid() >> 32;
	o->uid = BPF_CORE_READ(task, cred, euid.val);
	bpf_get_current_comm(o->comm, sizeof(o->comm));
	o->direction = direction;
}

static __always_inline void fill_addrs(struct event *e, struct sock *sk)
{
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET6) {
		e->family = 6;
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		e->family = 4;
		v4_mapped(e->saddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		v4_mapped(e->daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
}

static __always_inline void fill_owner(struct event *e, const struct owner *o)
{
	e->opened_ns = o->opened_ns;
	e->proc_start_ns = o->proc_start_ns;
	e->tgid = o->tgid;
	e->uid = o->uid;
	e->direction = o->direction;
	__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
}

// Sends one record about `sk`, owned by `o` (may be NULL).
static __always_inline void emit(struct sock *sk, __u8 kind, __u8 oldstate, const struct owner *o)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->kind = kind;
	e->oldstate = oldstate;
	fill_addrs(e, sk);
	if (o)
		fill_owner(e, o);
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_set_state, struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u64 key = (__u64)sk;
	struct owner o = {};
	struct owner *known;
	__u32 port;

	switch (newstate) {
	case TCP_SYN_SENT:
		current_owner(&o, DIR_OUTBOUND);
		bpf_map_update_elem(&owners, &key, &o, BPF_ANY);
		break;
	case TCP_LISTEN:
		current_owner(&o, DIR_LISTEN);
		bpf_map_update_elem(&owners, &key, &o, BPF_ANY);
		port = BPF_CORE_READ(sk, __sk_common.skc_num);
		bpf_map_update_elem(&listeners, &port, &o, BPF_ANY);
		emit(sk, KIND_LISTEN, oldstate, &o);
		break;
	case TCP_ESTABLISHED:
		if (oldstate == TCP_SYN_RECV) {
			port = BPF_CORE_READ(sk, __sk_common.skc_num);
			known = bpf_map_lookup_elem(&listeners, &port);
			if (known) {
				o = *known;
			} else {
				// tgid 0: user space names the owner from its
				// inventory of listeners.
				__builtin_memset(&o, 0, sizeof(o));
			}
			o.direction = DIR_INBOUND;
			o.opened_ns = bpf_ktime_get_boot_ns();
			bpf_map_update_elem(&owners, &key, &o, BPF_ANY);
			emit(sk, KIND_ACCEPT, oldstate, &o);
			break;
		}
		if (oldstate != TCP_SYN_SENT)
			break;
		known = bpf_map_lookup_elem(&owners, &key);
		if (known) {
			// The connection's life starts now, not at the SYN.
			known->opened_ns = bpf_ktime_get_boot_ns();
			o = *known;
		}
		emit(sk, KIND_CONNECT, oldstate, known ? &o : 0);
		break;
	case TCP_CLOSE:
		known = bpf_map_lookup_elem(&owners, &key);
		if (known) {
			o = *known;
			bpf_map_delete_elem(&owners, &key);
			if (o.direction == DIR_LISTEN) {
				port = BPF_CORE_READ(sk, __sk_common.skc_num);
				bpf_map_delete_elem(&listeners, &port);
			}
		}
		emit(sk, KIND_CLOSE, oldstate, known ? &o : 0);
		break;
	}
	return 0;
}

// A UDP datagram or fixed peer, from a cgroup sock_addr hook. `ip` is the
// peer as 16 bytes (IPv4 mapped), `port` in network order.
static __always_inline void udp_peer_seen(struct bpf_sock_addr *ctx, const __u8 ip[16], __u32 port)
{
	if (ctx->protocol != IPPROTO_UDP)
		return;
	struct udp_peer peer = {};
	__builtin_memcpy(peer.daddr, ip, 16);
	peer.dport = bpf_ntohs((__u16)port);
	if (peer.dport == 0)
		return;
	struct owner o = {};
	current_owner(&o, DIR_OUTBOUND);
	peer.proc_start_ns = o.proc_start_ns;
	peer.tgid = o.tgid;
	if (bpf_map_lookup_elem(&udp_peers, &peer))
		return;
	__u8 one = 1;
	bpf_map_update_elem(&udp_peers, &peer, &one, BPF_ANY);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		// Not seen, so the next send to this peer tries again.
		bpf_map_delete_elem(&udp_peers, &peer);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = o.opened_ns;
	e->kind = KIND_UDP;
	struct bpf_sock *sk = ctx->sk;
	if (sk) {
		e->sport = sk->src_port;
		if (sk->family == AF_INET6) {
			e->family = 6;
			__builtin_memcpy(e->saddr, sk->src_ip6, 16);
		} else {
			e->family = 4;
			v4_mapped(e->saddr, sk->src_ip4);
		}
	}
	__builtin_memcpy(e->daddr, peer.daddr, 16);
	e->dport = peer.dport;
	fill_owner(e, &o);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void udp4(struct bpf_sock_addr *ctx)
{
	__u8 ip[16];
	v4_mapped(ip, ctx->user_ip4);
	udp_peer_seen(ctx, ip, ctx->user_port);
}

static __always_inline void udp6(struct bpf_sock_addr *ctx)
{
	__u32 ip[4];
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	udp_peer_seen(ctx, (const __u8 *)ip, ctx->user_port);
}

SEC("cgroup/sendmsg4")
int on_sendmsg4(struct bpf_sock_addr *ctx)
{
	udp4(ctx);
	return 1;
}

SEC("cgroup/sendmsg6")
int on_sendmsg6(struct bpf_sock_addr *ctx)
{
	udp6(ctx);
	return 1;
}

SEC("cgroup/connect4")
int on_connect4(struct bpf_sock_addr *ctx)
{
	udp4(ctx);
	return 1;
}

SEC("cgroup/connect6")
int on_connect6(struct bpf_sock_addr *ctx)
{
	udp6(ctx);
	return 1;
}
