#!/usr/bin/env bash
# Removes both kind clusters and the generated CAs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
for c in east west; do kind delete cluster --name "isthmus-$c" || true; done
rm -rf "${ISTHMUS_WORK:-$ROOT/target/isthmus-kind}"
