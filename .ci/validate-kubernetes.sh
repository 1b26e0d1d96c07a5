#!/usr/bin/env bash
# Validates packaging/kubernetes/ offline: every manifest (secret.example.yaml too) against the
# OpenAPI schemas of Kubernetes $K8S, which kubernetes-validate (PyPI) bundles, in strict mode
# (an unknown or misspelt field is an error); a kind or apiVersion it has no schema for (a typo,
# or an API removed by $K8S) fails too, as does any other warning. kustomization.yaml has no
# such schema: its resources must exist, every manifest but secret.example.yaml must be listed,
# and, where kubectl is installed, `kubectl kustomize` must render a base that validates.
# Installs the pinned validator if it is missing (pip, quietly); a second run costs seconds.
#   bash .ci/validate-kubernetes.sh [DIR]     (DIR: default packaging/kubernetes)
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATOR=1.37.0
# The oldest Kubernetes the manifests are for (1.29+); its schemas are in the package.
K8S=1.29.0
DIR=${1:-packaging/kubernetes}

if ! python3 -c "import importlib.metadata as m; assert m.version('kubernetes-validate') == '$VALIDATOR'" 2>/dev/null; then
    # Debian's own python3 refuses a global pip install (PEP 668) unless told.
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATOR" 2>/dev/null ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "kubernetes-validate==$VALIDATOR"
fi

shopt -s nullglob
manifests=()
for f in "$DIR"/*.yaml "$DIR"/*.yml; do
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
if [ ! -f "$DIR/kustomization.yaml" ] || [ ${#manifests[@]} -eq 0 ]; then
    echo "validate-kubernetes: no kustomization.yaml or no manifests in $DIR" >&2
    exit 1
fi

failed=0
# Prints an INFO line per resource that passed, ERROR or WARN otherwise; it exits non-zero on
# errors only, so warnings are caught here.
validate() { # label file...
    local label=$1 out status=0
    shift
    out=$(python3 -m kubernetes_validate --strict --kubernetes-version "$K8S" "$@" 2>&1) || status=$?
    printf '%s\n' "$out" | sed "s|^|$label: |"
    if [ "$status" -ne 0 ] || grep -qv '^INFO ' <<<"$out"; then
        failed=1
    fi
}
validate manifests "${manifests[@]}"

# kustomization.yaml: what kubernetes-validate cannot check.
if ! python3 - "$DIR" "${manifests[@]}" <<'PY'; then
import os, sys, yaml
d, files = sys.argv[1], [os.path.basename(f) for f in sys.argv[2:]]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
errors = []
if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
    errors.append("not a kustomize.config.k8s.io/v1beta1 Kustomization")
listed = k.get("resources") or []
for r in listed:
    if not os.path.isfile(os.path.join(d, r)):
        errors.append(f"resource {r} does not exist")
for f in files:
    example = ".example." in f
    if example and f in listed:
        errors.append(f"{f} is an example and must not be a resource")
    if not example and f not in listed:
        errors.append(f"{f} is not listed in resources")
for e in errors:
    print(f"kustomization: ERROR {e}")
if not errors:
    print(f"kustomization: INFO {len(listed)} resources, all present")
sys.exit(1 if errors else 0)
PY
    failed=1
fi
if command -v kubectl >/dev/null; then
    rendered=$(mktemp --suffix=.yaml)
    trap 'rm -f "$rendered"' EXIT
    if kubectl kustomize "$DIR" >"$rendered"; then
        validate "kubectl kustomize" "$rendered"
    else
        echo "kubectl kustomize: ERROR $DIR does not build" >&2
        failed=1
    fi
else
    echo "kubectl kustomize: skipped (no kubectl)"
fi

if [ "$failed" -ne 0 ]; then
    echo "validate-kubernetes: FAILED ($DIR against Kubernetes $K8S)" >&2
    exit 1
fi
echo "validate-kubernetes: OK ($DIR against Kubernetes $K8S, kubernetes-validate $VALIDATOR)"
