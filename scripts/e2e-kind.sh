#!/usr/bin/env bash
# End-to-end check on a real cluster: a kind cluster with Flannel (which
# ignores NetworkPolicy) plus Palisade, probed with the upstream e2e model:
# namespaces x, y, z, each with pods a, b, c serving TCP 80 and 81. For each
# policy case the script prints the observed reachability matrix, compares
# it with what NetworkPolicy semantics require, and exits 1 on a mismatch.
#
# Needs: docker, kind, kubectl, cargo; the reference CNI plugins in
# /usr/lib/cni (`cargo xtask setup` installs them): kind's node image lacks
# the `bridge` plugin Flannel delegates to. Internet access for the node and
# test images and the Flannel manifest. Not part of CI (no Docker there).
#
# Usage: scripts/e2e-kind.sh [--keep]   (--keep: leave the cluster running)
# Env:   CLUSTER (default palisade), FLANNEL_MANIFEST (URL or file),
#        AGNHOST (test image), CNI_PLUGINS_DIR (default /usr/lib/cni).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${CLUSTER:-palisade}"
FLANNEL_MANIFEST="${FLANNEL_MANIFEST:-https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml}"
AGNHOST="${AGNHOST:-registry.k8s.io/e2e-test-images/agnhost:2.53}"
CNI_PLUGINS_DIR="${CNI_PLUGINS_DIR:-/usr/lib/cni}"
IMAGE=palisade:dev
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

NAMESPACES=(x y z)
PODS=(a b c)
PORTS=(80 81)

log() { printf '\n== %s\n' "$*"; }
die() { printf 'e2e-kind: %s\n' "$*" >&2; exit 2; }

for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x "$CNI_PLUGINS_DIR/bridge" ]] || die "no bridge plugin in $CNI_PLUGINS_DIR (run cargo xtask setup)"

cleanup() {
  if [[ "$KEEP" == 0 ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "building binaries and the $IMAGE image"
BIN_DIR="$(cd "$ROOT" && cargo xtask build --release | tail -n 1)"
[[ -x "$BIN_DIR/policy-agent" && -x "$BIN_DIR/palisade-cni" ]] || die "build did not produce binaries in $BIN_DIR"
CTX="$(mktemp -d)"
cp "$BIN_DIR/policy-agent" "$BIN_DIR/palisade-cni" "$CTX/"
cat >"$CTX/Dockerfile" <<'DOCKERFILE'
FROM debian:12-slim
COPY policy-agent palisade-cni /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/policy-agent"]
DOCKERFILE
docker build -q -t "$IMAGE" "$CTX"
rm -rf "$CTX"

log "creating kind cluster $CLUSTER (no default CNI)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$ROOT/manifests/kind/kind-config.yaml"
fi
for node in $(kind get nodes --name "$CLUSTER"); do
  for plugin in bridge host-local portmap loopback; do
    docker cp "$CNI_PLUGINS_DIR/$plugin" "$node:/opt/cni/bin/$plugin"
  done
done

log "installing Flannel"
kubectl apply -f "$FLANNEL_MANIFEST"
kubectl -n kube-flannel rollout status ds/kube-flannel-ds --timeout=180s

log "installing Palisade"
kind load docker-image "$IMAGE" --name "$CLUSTER"
kubectl apply -f "$ROOT/manifests/"
kubectl -n palisade-system rollout status ds/palisade-agent --timeout=180s
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" sh -c 'cat /etc/cni/net.d/*.conflist' | grep -q '"palisade-cni"' \
    || die "palisade-cni is not chained on $node"
done

log "creating the x/y/z x a/b/c model"
for ns in "${NAMESPACES[@]}"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  for pod in "${PODS[@]}"; do
    kubectl apply -f - <<POD
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: $ns
  labels:
    pod: $pod
spec:
  terminationGracePeriodSeconds: 1
  containers:
$(for port in "${PORTS[@]}"; do cat <<CONTAINER
    - name: cont-$port
      image: $AGNHOST
      args: ["serve-hostname", "--tcp", "--http=false", "--port", "$port"]
      ports:
        - containerPort: $port
          name: serve-$port
          protocol: TCP
CONTAINER
done)
POD
  done
done
for ns in "${NAMESPACES[@]}"; do
  kubectl -n "$ns" wait --for=condition=Ready pod --all --timeout=180s
done

declare -A IP
for ns in "${NAMESPACES[@]}"; do
  for pod in "${PODS[@]}"; do
    IP["$ns/$pod"]="$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.status.podIP}')"
  done
done

# expected CASE FROM_NS FROM_POD TO_NS TO_POD PORT -> prints 1 (allowed) or 0
expected() {
  local case=$1 fns=$2 _fpod=$3 tns=$4 tpod=$5 port=$6
  case "$case" in
    no-policy) echo 1 ;;
    deny-ingress-x)
      [[ "$tns" == x ]] && echo 0 || echo 1 ;;
    allow-y-to-xa-80)
      if [[ "$tns" != x ]]; then echo 1
      elif [[ "$tpod" == a && "$fns" == y && "$port" == 80 ]]; then echo 1
      else echo 0; fi ;;
    deny-egress-z)
      [[ "$fns" == z ]] && echo 0 || echo 1 ;;
    *) die "unknown case $case" ;;
  esac
}

apply_case() {
  local case=$1
  for ns in "${NAMESPACES[@]}"; do kubectl -n "$ns" delete networkpolicy --all >/dev/null; done
  case "$case" in
    no-policy) ;;
    deny-ingress-x)
      kubectl apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
YAML
      ;;
    allow-y-to-xa-80)
      kubectl apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-y-to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}
      ports:
        - {port: 80, protocol: TCP}
YAML
      ;;
    deny-egress-z)
      kubectl apply -f - <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: z}
spec: {podSelector: {}, policyTypes: [Egress]}
YAML
      ;;
  esac
  # Policies take effect within a bounded delay (design rule 14).
  sleep 3
}

FAILED=0
probe_case() {
  local case=$1 mismatches=0
  log "case $case"
  apply_case "$case"
  for port in "${PORTS[@]}"; do
    printf '\nport %s/TCP (observed; * = differs from expected)\n%-6s' "$port" ""
    for tns in "${NAMESPACES[@]}"; do for tpod in "${PODS[@]}"; do printf '%-6s' "$tns/$tpod"; done; done
    printf '\n'
    for fns in "${NAMESPACES[@]}"; do
      for fpod in "${PODS[@]}"; do
        printf '%-6s' "$fns/$fpod"
        for tns in "${NAMESPACES[@]}"; do
          for tpod in "${PODS[@]}"; do
            local got=0 want mark=" "
            if kubectl -n "$fns" exec "$fpod" -c cont-80 -- /agnhost connect \
                "${IP[$tns/$tpod]}:$port" --timeout=1s --protocol=tcp >/dev/null 2>&1; then
              got=1
            fi
            want="$(expected "$case" "$fns" "$fpod" "$tns" "$tpod" "$port")"
            if [[ "$got" != "$want" ]]; then mark="*"; mismatches=$((mismatches + 1)); fi
            printf '%-6s' "$([[ $got == 1 ]] && echo "." || echo "X")$mark"
          done
        done
        printf '\n'
      done
    done
  done
  printf '%s: %d mismatches\n' "$case" "$mismatches"
  [[ "$mismatches" == 0 ]] || FAILED=1
}

for case in no-policy deny-ingress-x allow-y-to-xa-80 deny-egress-z; do
  probe_case "$case"
done

if [[ "$FAILED" == 0 ]]; then
  log "all cases match NetworkPolicy semantics"
else
  log "MISMATCHES found (see * above)"
  exit 1
fi
