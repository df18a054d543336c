#!/usr/bin/env bash
# Two k3d clusters (isthmus-east, isthmus-west) with Isthmus installed,
# linked, the demo deployed and a failover check. See README "Kubernetes".
PROVIDER=k3d
CTX_PREFIX=k3d-isthmus
GATEWAY_SERVICE_TYPE=LoadBalancer   # k3s's servicelb answers on the node address
GATEWAY_NODE_PORT=0
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

create_cluster() {
  need k3d "https://k3d.io"
  k3d cluster list -o json 2>/dev/null | grep -q "\"name\":\"isthmus-$1\"" && return
  step "k3d cluster isthmus-$1"
  k3d cluster create --config "$ROOT/deploy/k3d/$1.yaml" --wait
}

load_image() { k3d image import "$IMAGE" -c "isthmus-$1"; }

gateway_address() {
  local ip=""
  for _ in $(seq 60); do
    ip=$(k "$1" -n isthmus-system get svc isthmus-eastwestgateway \
      -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
    [ -n "$ip" ] && break
    sleep 2
  done
  echo "$ip:15443"
}

up
