#!/usr/bin/env bash
# One Ray node of the one-machine check cluster (cluster/loopback.yaml), run by
# `ray up` over SSH on 127.0.0.x. Several nodes share this machine and this
# user, so `ray stop` (which stops every Ray process of the user) cannot be a
# node's own stop: each node's `ray start` runs in a process group of its own,
# whose id is kept in a file; `stop` ends that group, which holds every
# process of the node (GCS, raylet, agents, workers).
#
#   loopback_node.sh start RAY_START_ARGS...   start this node (head or worker)
#   loopback_node.sh stop                      stop this node only
#
# The node is told apart by the address SSH connected to (SSH_CONNECTION's
# third field): its temp dir, log and ports are derived from it, so the nodes
# of one machine never share a port or a session directory. Every node
# advertises 127.0.0.1 to Ray: Ray 2.60 binds its gRPC servers to loopback only
# for that address (any other, 127.0.0.2 included, binds every interface).
# cluster/runtime/loopback_ray.py keeps `ray start` from replacing it with the
# machine's routable address (docs/cluster.md, "One machine").
set -euo pipefail

ip=$(echo "${SSH_CONNECTION:-}" | cut -d' ' -f3)
case "$ip" in
  127.*) ;;
  *) echo "loopback_node.sh: not reached over SSH on a 127.0.0.0/8 address (SSH_CONNECTION='${SSH_CONNECTION:-}')" >&2
     exit 2 ;;
esac
octet=${ip##*.}
nodes="$HOME/ray-nodes"
mkdir -p -m 700 "$nodes"
dir="$nodes/$ip"
pgidfile="$dir.pgid"

stop_node() {
  [ -f "$pgidfile" ] || return 0
  local pgid
  pgid=$(cat "$pgidfile")
  if kill -0 -- "-$pgid" 2>/dev/null; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$pgidfile"
}

case "${1:-}" in
  stop)
    stop_node
    ;;
  start)
    shift
    stop_node
    # Ports from the node's address: 20000 + 1000 * last octet, so 127.0.0.2 takes 22001-22999.
    base=$((20000 + octet * 1000))
    log="$dir.log"
    # setsid: a new process group (its id is the PID of this `ray start`), which Ray's processes keep.
    setsid ray start --node-ip-address=127.0.0.1 --node-name="node-$ip" --temp-dir="$dir" \
      --node-manager-port=$((base + 1)) --object-manager-port=$((base + 2)) \
      --metrics-export-port=$((base + 3)) --dashboard-agent-grpc-port=$((base + 4)) \
      --dashboard-agent-listen-port=$((base + 5)) --runtime-env-agent-port=$((base + 6)) \
      --min-worker-port=$((base + 100)) --max-worker-port=$((base + 999)) \
      "$@" >"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pgidfile"
    if wait "$pid" && grep -q "Ray runtime started" "$log"; then
      echo "node $ip started (process group $pid)"
      exit 0
    fi
    echo "node $ip did not start; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
    ;;
  *)
    echo "usage: loopback_node.sh start RAY_START_ARGS... | stop" >&2
    exit 2
    ;;
esac
