#!/usr/bin/env bash
# Creates the mesh CA (once) and one workload certificate per service and the
# gateway with `tally certs`, and stores each as the Secret <service>-mesh-cert in
# namespace tally (keys: bundle.pem, <service>.pem, <service>-key.pem).
# Also creates, once, the Secret tally-proxy-admin-token (key admin-token): a
# random bearer token every sidecar's admin API requires for changes.
#
#   deploy/k8s/certs.sh [DIR] [VALIDITY]     # default DIR .tally-k8s-ca, VALIDITY 720h
#
# Run again before the certificates expire: kubectl replaces the Secrets, the
# kubelet updates the mounted files, and each tally-proxy reloads them without
# dropping calls. Keep DIR (it holds the CA key) out of the cluster.
set -euo pipefail
dir="${1:-.tally-k8s-ca}"
validity="${2:-720h}"
services=(user polling notification analytics billing payment gateway)

if [ ! -f "$dir/ca.pem" ]; then
  tally certs init --dir "$dir"
fi
for s in "${services[@]}"; do
  tally certs issue --dir "$dir" --namespace tally --service "$s" --validity "$validity" --out "$dir/issued"
  kubectl -n tally create secret generic "$s-mesh-cert" \
    --from-file=bundle.pem="$dir/bundle.pem" \
    --from-file="$s.pem"="$dir/issued/$s.pem" \
    --from-file="$s-key.pem"="$dir/issued/$s-key.pem" \
    --dry-run=client -o yaml | kubectl apply -f -
done

# The sidecars' admin token: created once, kept across runs (delete the Secret
# and run again to rotate it, then restart the pods).
if ! kubectl -n tally get secret tally-proxy-admin-token >/dev/null 2>&1; then
  token="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
  kubectl -n tally create secret generic tally-proxy-admin-token \
    --from-literal=admin-token="$token"
fi
