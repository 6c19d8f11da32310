#!/usr/bin/env bash
# Makes a private CA and one certificate per node for Ray's TLS (RAY_USE_TLS).
#
#   cluster/make-certs.sh [-d DIR] [-days N] NODE[=IP[,IP...]] ...
#
#   cluster/make-certs.sh -d site-certs gateway=192.168.10.2 jetson-1=192.168.10.11 pi-1=192.168.10.21
#
# Writes DIR/ca.crt and DIR/ca.key (the CA: keep ca.key on this admin machine,
# never copy it to a node), and for each NODE a folder DIR/NODE/ holding
# ca.crt, node.crt and node.key: copy that folder to the node and start it
# with `lis node head|join --tls-dir <folder>`. Running the script again
# reuses the CA, so nodes can be added later; an existing node's files are
# kept unless -force is given.
#
# Ray uses each node's certificate both as a server (its gRPC ports) and as a
# client (mutual TLS), so certificates carry both purposes. Peers check the
# node's address against the certificate: list every IP the node is reached
# at (the one `ray start` reports as "Local node IP"); its name, localhost
# and 127.0.0.1 are always included.
set -euo pipefail

dir=certs
days=825   # the longest validity some TLS clients accept for a leaf
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dir=$2; shift 2 ;;
    -days) days=$2; shift 2 ;;
    -force) force=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1 (see $0 -h)" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [-d DIR] [-days N] [-force] NODE[=IP[,IP...]] ..." >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }

umask 077   # keys are created readable by their owner only
mkdir -p "$dir"

# P-256 keys: small and fast on a Raspberry Pi, and supported by gRPC.
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$dir/ca.key" ]; then
  new_key "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 \
    -subj "/CN=lis cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt"
  echo "made CA $dir/ca.crt"
fi

for spec in "$@"; do
  name=${spec%%=*}
  ips=""
  [ "$spec" != "$name" ] && ips=${spec#*=}
  case "$name" in
    ''|*/*|.*) echo "bad node name '$name'" >&2; exit 2 ;;
  esac
  out="$dir/$name"
  if [ -f "$out/node.crt" ] && [ "$force" != 1 ]; then
    echo "kept $out (exists; -force to remake)"
    continue
  fi
  mkdir -p "$out"
  san="DNS:$name,DNS:localhost,IP:127.0.0.1"
  IFS=',' read -r -a addresses <<< "$ips"
  for ip in "${addresses[@]}"; do
    [ -n "$ip" ] && san="$san,IP:$ip"
  done
  ext=$(mktemp)
  trap 'rm -f "$ext"' EXIT
  printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=$san" > "$ext"
  new_key "$out/node.key"
  openssl req -new -key "$out/node.key" -subj "/CN=$name" -out "$out/node.csr"
  openssl x509 -req -in "$out/node.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -sha256 -days "$days" -extfile "$ext" -out "$out/node.crt" 2>/dev/null
  rm -f "$out/node.csr" "$ext"
  cp "$dir/ca.crt" "$out/ca.crt"
  chmod 600 "$out/node.key"
  chmod 644 "$out/node.crt" "$out/ca.crt"
  echo "made $out/ (node.crt for $san)"
done
