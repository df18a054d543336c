# shellcheck shell=bash
# Shared by deploy/kind/up.sh and deploy/k3d/up.sh: two clusters, one image,
# a shared root CA with one intermediate per cluster, Isthmus installed in
# both (each install creates its cluster's MeshFederation `mesh`), linked with
# `isthmus link --context`, the demo deployed, a failover check.
#
# Needs: docker, kubectl, kind or k3d, a Rust toolchain (for the host's
# `isthmus` binary); helm only with ISTHMUS_INSTALLER=helm.
#
# The provider script defines create_cluster, load_image, and how the other
# cluster reaches this one (addresses on the clusters' shared Docker network):
# gateway_address <c> and federation_address <c>, each printing host:port once
# Isthmus is installed, and own_gateway_address <c>, the gateway's address as
# known before the install (for the MeshFederation's spec.local).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${ISTHMUS_WORK:-$ROOT/target/isthmus-$PROVIDER}"
IMAGE="${ISTHMUS_IMAGE:-isthmus:dev}"
INSTALLER="${ISTHMUS_INSTALLER:-isthmus}"   # isthmus | helm
CLUSTERS=(east west)
declare -A NETWORK=([east]=network-east [west]=network-west)
declare -A LOCALITY=([east]=eu-west/eu-west-1a [west]=us-east/us-east-1a)
declare -A VERSION=([east]=v1 [west]=v2)

step() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; exit 1; }; }
ctx() { echo "$CTX_PREFIX-$1"; }
k() { local c=$1; shift; kubectl --context "$(ctx "$c")" "$@"; }

build_host_binary() {
  step "host binary (isthmus ca / install)"
  (cd "$ROOT" && cargo build --release --locked -p isthmus-cli)
  ISTHMUS="$ROOT/target/release/isthmus"
}

build_image() {
  step "image $IMAGE"
  docker build -t "$IMAGE" "$ROOT"
}

make_cas() {
  step "shared root and per-cluster intermediates in $WORK"
  mkdir -p "$WORK"
  [ -f "$WORK/root/root-cert.pem" ] || "$ISTHMUS" ca root --out "$WORK/root"
  for c in "${CLUSTERS[@]}"; do
    [ -f "$WORK/$c/ca-cert.pem" ] || "$ISTHMUS" ca intermediate --root "$WORK/root" \
      --cluster "$c" --trust-domain "$c.isthmus.local" --out "$WORK/$c"
  done
}

install_isthmus() {
  local c=$1
  step "install Isthmus in $c ($INSTALLER)"
  local sets=(
    --set "network=${NETWORK[$c]}" --set "locality=${LOCALITY[$c]}"
    --set "image.repository=${IMAGE%:*}" --set "image.tag=${IMAGE##*:}"
    --set "image.pullPolicy=Never"
    --set "gateway.serviceType=$GATEWAY_SERVICE_TYPE" --set "gateway.nodePort=$GATEWAY_NODE_PORT"
    # The federation controller and the MeshFederation `mesh` it reads; the
    # trust domain must be the one of the intermediate in cacerts (make_cas).
    --set "federation.enabled=true" --set "trustDomain=$c.isthmus.local"
  )
  # The MeshFederation's spec.local.gatewayAddresses (Isthmus rejects a
  # MeshFederation without one; --set cannot give a list, a values file can).
  local values="$WORK/$c-values.yaml" gateway
  gateway=$(own_gateway_address "$c")
  printf 'federation:\n  gatewayAddresses: ["%s"]\n' "$gateway" > "$values"
  sets+=(--values "$values")
  if [ "$INSTALLER" = helm ]; then
    need helm "https://helm.sh"
    k "$c" create namespace isthmus-system --dry-run=client -o yaml | k "$c" apply -f -
    k "$c" -n isthmus-system create secret generic cacerts --from-file="$WORK/$c" \
      --dry-run=client -o yaml | k "$c" apply -f -
    # The webhook's serving certificate (what `isthmus install` generates itself).
    local dir="$WORK/$c-webhook"; mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=isthmus webhook CA" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=isthmus-control-plane.isthmus-system.svc" \
      -addext "subjectAltName=DNS:isthmus-control-plane.isthmus-system.svc" \
      -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 3650 -copy_extensions copy -out "$dir/tls.crt" 2>/dev/null
    k "$c" -n isthmus-system create secret tls isthmus-webhook-tls --cert "$dir/tls.crt" \
      --key "$dir/tls.key" --dry-run=client -o yaml | k "$c" apply -f -
    helm --kube-context "$(ctx "$c")" upgrade --install isthmus "$ROOT/deploy/helm/isthmus" \
      -n isthmus-system --set "cluster=$c" "${sets[@]}" \
      --set "webhook.caBundle=$(base64 -w0 < "$dir/ca.crt")"
  else
    "$ISTHMUS" install --cluster "$c" --context "$(ctx "$c")" --ca-dir "$WORK/$c" "${sets[@]}"
  fi
  k "$c" -n isthmus-system rollout status deploy/isthmus-control-plane --timeout=180s
  k "$c" -n isthmus-system rollout status deploy/isthmus-eastwestgateway --timeout=180s
  k "$c" -n isthmus-system rollout status deploy/isthmus-dns --timeout=180s
  k "$c" -n isthmus-system rollout status deploy/isthmus-federation --timeout=180s
}

coredns_delegate() {
  local c=$1
  step "CoreDNS in $c delegates .global and clusterset.local"
  local ip; ip=$(k "$c" -n isthmus-system get svc isthmus-dns -o jsonpath='{.spec.clusterIP}')
  local corefile; corefile=$(k "$c" -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
  if ! grep -q 'grpc global' <<<"$corefile"; then
    local snippet; snippet=$(k "$c" -n isthmus-system get configmap isthmus-coredns \
      -o jsonpath='{.data.Corefile\.snippet}' | sed "s/ISTHMUS_DNS_IP/$ip/g")
    k "$c" -n kube-system create configmap coredns --from-literal=Corefile="$corefile
$snippet" --dry-run=client -o yaml | k "$c" apply -f -
    k "$c" -n kube-system rollout restart deploy/coredns
  fi
}

link_clusters() {
  step "link east <-> west (isthmus link --context)"
  # `isthmus link` reads each cluster's MeshFederation, the root of its cacerts
  # Secret and, unless told, its gateway/federation Services; the addresses are
  # given here because what this host sees of a node is not necessarily what
  # the other cluster dials. It writes each cluster's peer entry into the
  # other's MeshFederation (a second run changes nothing).
  local gw_east gw_west fed_east fed_west   # separate assignments: set -e sees failures
  gw_east=$(gateway_address east); gw_west=$(gateway_address west)
  fed_east=$(federation_address east); fed_west=$(federation_address west)
  "$ISTHMUS" link --context "$(ctx east)" --context "$(ctx west)" \
    --gateway-address "$(ctx east)=$gw_east" --gateway-address "$(ctx west)=$gw_west" \
    --federation-endpoint "$(ctx east)=$fed_east" --federation-endpoint "$(ctx west)=$fed_west"
  for c in "${CLUSTERS[@]}"; do
    k "$c" -n isthmus-system get meshfederation mesh \
      -o jsonpath='{.spec.local.cluster}: peers {.spec.peers[*].name}{"\n"}'
  done
}

deploy_demo() {
  for c in "${CLUSTERS[@]}"; do
    step "demo apps in $c (helloworld ${VERSION[$c]}, sleep)"
    sed "s/VERSION/${VERSION[$c]}/g" "$ROOT/deploy/demo/helloworld.yaml" | k "$c" apply -f -
    k "$c" -n sample rollout status deploy/helloworld-"${VERSION[$c]}" --timeout=180s
    k "$c" -n sample rollout status deploy/sleep --timeout=180s
    k "$c" -n sample get pod -l app=helloworld \
      -o jsonpath='{range .items[*]}{.metadata.name}: {.spec.containers[*].name}{"\n"}{end}'
  done
}

calls() {
  local ok=0 n=$1
  for _ in $(seq "$n"); do
    if k east -n sample exec deploy/sleep -c sleep -- \
        curl -sf -m 2 http://helloworld.sample.global:5000/hello >/dev/null 2>&1; then
      ok=$((ok + 1))
    fi
  done
  echo "$ok/$n"
}

failover_check() {
  step "failover: helloworld from east's sleep, east's helloworld scaled to 0 and back"
  # `isthmus drill failover` drives the local lab today; against Kubernetes
  # this is the same experiment by hand.
  echo "before:  $(calls 20) calls answered"
  k east -n sample scale deploy/helloworld-v1 --replicas=0
  k east -n sample wait --for=delete pod -l app=helloworld --timeout=60s || true
  echo "east down: $(calls 20) calls answered (west's v2 over the gateways)"
  k east -n sample scale deploy/helloworld-v1 --replicas=1
  k east -n sample rollout status deploy/helloworld-v1 --timeout=120s
  echo "restored: $(calls 20) calls answered"
}

up() {
  need docker "https://docs.docker.com/engine/install/"
  need kubectl "https://kubernetes.io/docs/tasks/tools/"
  need openssl "apt-get install openssl"
  build_host_binary
  build_image
  for c in "${CLUSTERS[@]}"; do create_cluster "$c"; load_image "$c"; done
  make_cas
  for c in "${CLUSTERS[@]}"; do install_isthmus "$c"; coredns_delegate "$c"; done
  link_clusters
  deploy_demo
  failover_check
  step "done: kubectl --context $(ctx east) -n sample exec deploy/sleep -- curl -s helloworld.sample.global:5000/hello"
}
