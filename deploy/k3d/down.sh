#!/usr/bin/env bash
# Removes both k3d clusters, their network and the generated CAs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
for c in east west; do k3d cluster delete "isthmus-$c" || true; done
docker network rm isthmus-k3d 2>/dev/null || true
rm -rf "${ISTHMUS_WORK:-$ROOT/target/isthmus-k3d}"
