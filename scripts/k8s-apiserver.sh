#!/usr/bin/env bash
# Starts or stops a standalone CRD API server (k8s.io/apiextensions-apiserver, Kubernetes'
# own code) on etcd, both on free loopback ports, with state under DIR.
#   K8S_APISERVER=1 bash scripts/install-k8s-code.sh   # builds/fetches the two binaries
#   scripts/k8s-apiserver.sh start DIR
#   scripts/k8s-apiserver.sh stop DIR
# start writes into DIR: ca.crt, admin.crt/admin.key (client certificate in group
# system:masters), kubeconfig, and env (K8S_URL, K8S_CA, K8S_CERT, K8S_KEY), and returns once
# /apis/apiextensions.k8s.io/v1 answers. There is no /api (core group), and /apis itself is
# 404 (kube-apiserver's aggregator serves it, not this server), so talk to it with an HTTP
# client and the certificate rather than kubectl, e.g.
#   . DIR/env; curl --cacert "$K8S_CA" --cert "$K8S_CERT" --key "$K8S_KEY" \
#     "$K8S_URL/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# /readyz stays red (informers of the absent core API never sync) but requests are served.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$repo/.tools/k8s/bin"
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# = 2 ] || usage
cmd="$1"
mkdir -p "$2"
dir="$(cd "$2" && pwd)"

# stop_pid FILE: stops the process whose id FILE holds, if it still runs
stop_pid() {
  local pid
  [ -f "$1" ] || return 0
  pid="$(cat "$1")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$1"
}

case "$cmd" in
stop)
  stop_pid "$dir/apiserver.pid"
  stop_pid "$dir/etcd.pid"
  exit 0
  ;;
start) ;;
*) usage ;;
esac

for b in apiextensions-apiserver etcd; do
  [ -x "$bin/$b" ] || { echo "$bin/$b missing: run K8S_APISERVER=1 bash scripts/install-k8s-code.sh" >&2; exit 1; }
done
[ -f "$dir/apiserver.pid" ] && kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null && {
  echo "already running (stop it first: $0 stop $dir)" >&2; exit 1; }

# --- certificates: a CA, the serving certificate for 127.0.0.1, an admin client ----------
openssl_q() { openssl "$@" 2>/dev/null; }
openssl_q req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=crd-apiserver-ca" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt"
# cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA
cert() {
  openssl_q req -newkey rsa:2048 -nodes -subj "$2" -keyout "$dir/$1.key" -out "$dir/$1.csr"
  printf '%s\n' "$3" >"$dir/$1.ext"
  openssl_q x509 -req -in "$dir/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/$1.ext" -out "$dir/$1.crt"
  rm -f "$dir/$1.csr" "$dir/$1.ext"
}
cert serving "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
cert admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"

# --- free loopback ports -----------------------------------------------------------------
read -r etcd_port peer_port api_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')

# --- etcd ----------------------------------------------------------------------------------
rm -rf "$dir/etcd-data"
"$bin/etcd" --name default --data-dir "$dir/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port" --listen-metrics-urls "" \
  >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"

# --- the apiserver, with a kubeconfig pointing at itself for delegated authn/authz ---------
url="https://127.0.0.1:$api_port"
cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: crd-apiserver
  cluster: {server: "$url", certificate-authority: "$dir/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$dir/admin.crt", client-key: "$dir/admin.key"}
contexts:
- name: crd-apiserver
  context: {cluster: crd-apiserver, user: admin}
current-context: crd-apiserver
EOF
cat >"$dir/env" <<EOF
K8S_URL=$url
K8S_CA=$dir/ca.crt
K8S_CERT=$dir/admin.crt
K8S_KEY=$dir/admin.key
EOF
"$bin/apiextensions-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" \
  --tls-cert-file "$dir/serving.crt" --tls-private-key-file "$dir/serving.key" \
  --client-ca-file "$dir/ca.crt" \
  --kubeconfig "$dir/kubeconfig" \
  --authentication-kubeconfig "$dir/kubeconfig" --authorization-kubeconfig "$dir/kubeconfig" \
  --authentication-skip-lookup \
  --enable-priority-and-fairness=false \
  --disable-admission-plugins NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook \
  --cert-dir "$dir/cert-dir" \
  >"$dir/apiserver.log" 2>&1 &
echo $! >"$dir/apiserver.pid"

deadline=$((SECONDS + 60))
while [ "$SECONDS" -lt "$deadline" ]; do
  if curl -sf --max-time 2 --cacert "$dir/ca.crt" --cert "$dir/admin.crt" --key "$dir/admin.key" "$url/apis/apiextensions.k8s.io/v1" >/dev/null 2>&1; then
    echo "apiextensions-apiserver: $url (etcd 127.0.0.1:$etcd_port); kubeconfig $dir/kubeconfig, env $dir/env"
    exit 0
  fi
  for p in apiserver etcd; do
    kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null || {
      echo "$p exited; last lines of $dir/$p.log:" >&2; tail -n 20 "$dir/$p.log" >&2
      "$0" stop "$dir"; exit 1; }
  done
  sleep 0.2
done
echo "apiextensions-apiserver did not answer $url/apis/apiextensions.k8s.io/v1 within 60 s; see $dir/apiserver.log" >&2
"$0" stop "$dir"
exit 1
