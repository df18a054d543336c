#!/usr/bin/env bash
# Two kind clusters (isthmus-east, isthmus-west) with Isthmus installed,
# linked, the demo deployed and a failover check. See README "Kubernetes".
PROVIDER=kind
CTX_PREFIX=kind-isthmus
GATEWAY_SERVICE_TYPE=NodePort   # kind has no LoadBalancer; peers dial node:31443
GATEWAY_NODE_PORT=31443
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

create_cluster() {
  need kind "https://kind.sigs.k8s.io"
  kind get clusters 2>/dev/null | grep -qx "isthmus-$1" && return
  step "kind cluster isthmus-$1"
  kind create cluster --config "$ROOT/deploy/kind/$1.yaml" --wait 120s
}

load_image() { kind load docker-image "$IMAGE" --name "isthmus-$1"; }

# Both clusters' nodes share Docker's "kind" network.
gateway_address() {
  echo "$(docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "isthmus-$1-control-plane"):$GATEWAY_NODE_PORT"
}

up
