#!/bin/bash
# A/B of two sluice binaries on small keep-alive requests (wrk, 32
# connections), alternating rounds: req/s, proxy CPU per request (from
# /proc/PID/stat) and upstream dials (the machine's TcpActiveOpens during
# the run, less wrk's 32). Needs wrk, nstat (iproute2) and taskset; run
# from the repository root after `make build consul` and
# `go build -C e2e/bench -o ../../bin/bench .`:
#
#   ROUNDS=8 DUR=4s e2e/bench/ab.sh /path/to/sluice-old bin/sluice
#
# WRK_HEADER="Connection: close" measures a new client connection per
# request instead.
#
# It starts its own Consul dev agent on 127.0.0.1:18500 and three
# backends; nothing else should be loading the machine.
set -e
A=${1:?old binary}; B=${2:?new binary}
ROUNDS=${ROUNDS:-4}; DUR=${DUR:-5s}
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
bin/consul agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port 18500 -grpc-port -1 -dns-port -1 \
  -serf-lan-port 18301 -serf-wan-port 18302 -server-port 18300 -log-level error > "$work/consul.log" 2>&1 &
for i in 1 2 3; do taskset -c 1 bin/bench backend -name b$i -http 127.0.0.1:1910$i > /dev/null 2>&1 & done
until curl -sf 127.0.0.1:18500/v1/status/leader | grep -q 18300; do sleep 0.2; done
for i in 1 2 3; do
  curl -sf -X PUT 127.0.0.1:18500/v1/agent/service/register \
    -d "{\"ID\":\"web-$i\",\"Name\":\"web\",\"Address\":\"127.0.0.1\",\"Port\":1910$i}"
done
cat > "$work/sluice.hcl" <<HCL
consul {
  address = "127.0.0.1:18500"
}
admin {
  address = "127.0.0.1:19901"
}
listener "public" {
  address = "127.0.0.1:18080"
  route "/" {
    service = "web"
  }
}
HCL
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
opens() { nstat -az TcpActiveOpens | awk '/TcpActiveOpens/{print $2}'; }
hz=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
  for v in A B; do
    bin=$A; [ $v = B ] && bin=$B
    taskset -c 0 "$bin" run -config "$work/sluice.hcl" > "$work/sluice-$v.log" 2>&1 &
    s=$!
    until curl -sf 127.0.0.1:19901/healthz > /dev/null; do sleep 0.1; done
    curl -s 127.0.0.1:18080/ > /dev/null
    o0=$(opens); t0=$(ticks $s)
    out=$(taskset -c 1 wrk -t1 -c32 -d"$DUR" ${WRK_HEADER:+-H "$WRK_HEADER"} http://127.0.0.1:18080/ 2>&1)
    t1=$(ticks $s); o1=$(opens)
    n=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    echo "$v round $round: $rps req/s, $(awk -v t=$((t1-t0)) -v n=$n -v hz=$hz 'BEGIN{printf "%.1f", t*1e6/hz/n}') us CPU/req, upstream dials $((o1-o0-32))"
    kill $s; wait $s 2>/dev/null || true
  done
done
