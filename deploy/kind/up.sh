#!/usr/bin/env bash
# Two kind clusters (isthmus-east, isthmus-west) with Isthmus installed,
# linked, the demo deployed and a failover check. See README "Kubernetes".
PROVIDER=kind
CTX_PREFIX=kind-isthmus
GATEWAY_SERVICE_TYPE=NodePort   # kind has no LoadBalancer; peers dial node:31443
GATEWAY_NODE_PORT=31443
# shellcheck source=../lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

create_cluster() {
  need kind "https://kind.sigs.k8s.io"
  kind get clusters 2>/dev/null | grep -qx "isthmus-$1" && return
  step "kind cluster isthmus-$1"
  kind create cluster --config "$ROOT/deploy/kind/$1.yaml" --wait 120s
}

load_image() { kind load docker-image "$IMAGE" --name "isthmus-$1"; }

# Both clusters' nodes share Docker's "kind" network: the other cluster dials
# this one's node address there, on the Services' node ports.
node_address() {
  local ip
  ip=$(docker inspect -f '{{.NetworkSettings.Networks.kind.IPAddress}}' "isthmus-$1-control-plane")
  [ -n "$ip" ] || { echo "isthmus-$1-control-plane has no address on the kind network" >&2; return 1; }
  echo "$ip"
}

gateway_address() { echo "$(node_address "$1"):$GATEWAY_NODE_PORT"; }
own_gateway_address() { gateway_address "$1"; }

# The federation Service is a NodePort too (it follows gateway.serviceType);
# Kubernetes picked its node port.
federation_address() {
  local port
  port=$(k "$1" -n isthmus-system get svc isthmus-federation \
    -o jsonpath='{.spec.ports[?(@.port==15021)].nodePort}')
  [ -n "$port" ] || { echo "$1: Service isthmus-federation has no node port for 15021" >&2; return 1; }
  echo "$(node_address "$1"):$port"
}

up
