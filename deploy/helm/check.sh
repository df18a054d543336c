#!/usr/bin/env bash
# Optional offline checks of the chart beyond the Rust tests
# (cargo test -p isthmus-cli install): the rendered manifests against the
# Kubernetes OpenAPI schemas with kubernetes-validate (PyPI), strict mode.
#
#   python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate
#   KUBERNETES_VALIDATE=/tmp/kv/bin/kubernetes-validate deploy/helm/check.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KV="${KUBERNETES_VALIDATE:-kubernetes-validate}"
command -v "$KV" >/dev/null || {
  echo "kubernetes-validate not found: python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate" >&2
  exit 1
}
ISTHMUS="${ISTHMUS:-$ROOT/target/debug/isthmus}"
[ -x "$ISTHMUS" ] || (cd "$ROOT" && cargo build -q -p isthmus-cli)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$ISTHMUS" install --cluster east --dry-run > "$out/defaults.yaml"
"$ISTHMUS" install --cluster west --dry-run --set gateway.serviceType=NodePort \
  --set gateway.nodePort=31443 --set federation.enabled=true --set locality=us-east/us-east-1a \
  > "$out/kind.yaml"
"$ISTHMUS" install --cluster lab --dry-run --set gateway.enabled=false --set dns.enabled=false \
  --set webhook.enabled=false --set ca.secretName= > "$out/off.yaml"
for f in "$out"/*.yaml; do
  echo "== $(basename "$f")"
  "$KV" --strict --quiet "$f"
done
echo "all rendered manifests valid (strict)"
