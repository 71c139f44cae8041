#!/usr/bin/env bash
# Creates the mesh CA (once) and one workload certificate per service with
# `tally certs`, and stores each as the Secret <service>-mesh-cert in
# namespace tally (keys: bundle.pem, <service>.pem, <service>-key.pem).
#
#   deploy/k8s/certs.sh [DIR] [VALIDITY]     # default DIR .tally-k8s-ca, VALIDITY 720h
#
# Run again before the certificates expire: kubectl replaces the Secrets, the
# kubelet updates the mounted files, and each tally-proxy reloads them without
# dropping calls. Keep DIR (it holds the CA key) out of the cluster.
set -euo pipefail
dir="${1:-.tally-k8s-ca}"
validity="${2:-720h}"
services=(user polling notification analytics billing payment)

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
