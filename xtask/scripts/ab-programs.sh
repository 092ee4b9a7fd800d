#!/bin/bash
# A/B of sockq's per-program eBPF cost between builds, by hand (as root, quiet
# machine): for each round and each daemon given, in turn, start `sockq run`, switch
# the kernel's BPF statistics on, run a 3 s saturation storm (TCP, then Unix), and
# print the programs' ns per connection from `bpftool prog show` before and after.
# The builds alternate within a round, so the machine's drift hits both alike.
#
# usage: xtask/scripts/ab-programs.sh ROUNDS SOCKQ_A SOCKQ_B [...]
#   (release builds: `cargo xtask build --release`, then copy target/release/sockq)
set -eu
rounds=$1; shift
root=$(cd "$(dirname "$0")/../.." && pwd)
scenario=$root/target/release/sockq-scenario
ns=sockq-ab-$$
ip netns add "$ns"; ip -n "$ns" link set lo up
trap 'ip netns del "$ns"' EXIT
measure() { # SOCKQ KIND ADDR
  "$1" run --metrics-addr 127.0.0.1:9921 >/dev/null 2>&1 & local daemon=$!
  sleep 4
  sysctl -q -w kernel.bpf_stats_enabled=1
  bpftool prog show -j > "/tmp/$ns.before.json"
  local out; out=$(ip netns exec "$ns" "$scenario" storm "$3" 3 2 0)
  bpftool prog show -j > "/tmp/$ns.after.json"
  sysctl -q -w kernel.bpf_stats_enabled=0
  kill "$daemon"; wait "$daemon" 2>/dev/null || true
  python3 - "$(echo "$out" | grep -oE '[0-9]+' | head -1)" "$2" "$1" "/tmp/$ns" <<'PY'
import json, sys
conns, kind, daemon, base = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
before = {p["id"]: p for p in json.load(open(base + ".before.json"))}
total, rows = 0, []
for p in json.load(open(base + ".after.json")):
    name = p.get("name", "")
    if not name.startswith(("inet_sock", "sk_data", "sys_exit_acc", "sys_enter_con", "sys_exit_con")):
        continue
    q = before.get(p["id"], {})
    dt = p.get("run_time_ns", 0) - q.get("run_time_ns", 0)
    dc = p.get("run_cnt", 0) - q.get("run_cnt", 0)
    if dc:
        total += dt
        rows.append(f"{name} {dt / dc:.0f} ns x{dc / conns:.2f}")
print(f"{daemon} {kind}: {conns} conns, {total / conns:.0f} ns/conn | " + " | ".join(rows))
PY
}
for _ in $(seq 1 "$rounds"); do
  for sockq in "$@"; do
    measure "$sockq" tcp 127.0.0.1:7100
    measure "$sockq" unix @sockq-ab-storm
  done
done
rm -f "/tmp/$ns".*.json
