#!/usr/bin/env bash
# Two k3d clusters (isthmus-east, isthmus-west) with Isthmus installed,
# linked, the demo deployed and a failover check. See README "Kubernetes".
PROVIDER=k3d
CTX_PREFIX=k3d-isthmus
GATEWAY_SERVICE_TYPE=LoadBalancer   # k3s's servicelb answers on the node address
GATEWAY_NODE_PORT=0
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

create_cluster() {
  need k3d "https://k3d.io"
  k3d cluster list -o json 2>/dev/null | grep -q "\"name\":\"isthmus-$1\"" && return
  step "k3d cluster isthmus-$1"
  k3d cluster create --config "$ROOT/deploy/k3d/$1.yaml" --wait
}

load_image() { k3d image import "$IMAGE" -c "isthmus-$1"; }

# servicelb gives a LoadBalancer Service the node's address on the shared
# "isthmus-k3d" network, which the other cluster dials. Waits up to 2 minutes.
lb_address() {
  local c=$1 svc=$2 port=$3 ip=""
  for _ in $(seq 60); do
    ip=$(k "$c" -n isthmus-system get svc "$svc" \
      -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
    [ -n "$ip" ] && break
    sleep 2
  done
  [ -n "$ip" ] || { echo "$c: Service $svc has no load balancer address after 2 minutes" >&2; return 1; }
  echo "$ip:$port"
}

gateway_address() { lb_address "$1" isthmus-eastwestgateway 15443; }
# Before the install: servicelb will answer on the (only) server node's address.
own_gateway_address() {
  local ip
  ip=$(docker inspect -f '{{(index .NetworkSettings.Networks "isthmus-k3d").IPAddress}}' \
    "k3d-isthmus-$1-server-0")
  [ -n "$ip" ] || { echo "k3d-isthmus-$1-server-0 has no address on isthmus-k3d" >&2; return 1; }
  echo "$ip:15443"
}
federation_address() { lb_address "$1" isthmus-federation 15021; }

up
