#!/usr/bin/env bash
# Makes a throwaway certificate authority and one certificate for the demo's
# hosts, with openssl:
#   make-certs.sh OUT_DIR [PARENT]
# writes OUT_DIR/ca.pem, ca-key.pem, cert.pem (leaf + CA), key.pem. PARENT
# (default cors.localhost) names the hosts: *.PARENT plus app., api., api2.,
# other. and authenticate.PARENT by name. Existing files are kept, so the CA
# a browser was told to trust stays the same across runs.
set -euo pipefail
out=${1:?usage: make-certs.sh OUT_DIR [PARENT]}
parent=${2:-cors.localhost}
mkdir -p "$out"
cd "$out"
if [ -s cert.pem ] && [ -s key.pem ] && [ -s ca.pem ] && grep -q "$parent" names.txt 2>/dev/null; then
  exit 0
fi
umask 077
if [ ! -s ca.pem ] || [ ! -s ca-key.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -keyout ca-key.pem -out ca.pem -subj "/CN=Postern cross-origin demo CA (throwaway)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
names="DNS:*.$parent,DNS:app.$parent,DNS:api.$parent,DNS:api2.$parent,DNS:other.$parent,DNS:authenticate.$parent"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem -out leaf.csr \
  -subj "/CN=*.$parent" 2>/dev/null
cat > leaf.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$names
EXT
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
  -extfile leaf.ext -out leaf.pem 2>/dev/null
cat leaf.pem ca.pem > cert.pem
echo "$names" > names.txt
rm -f leaf.csr leaf.ext leaf.pem ca.srl
chmod 644 ca.pem cert.pem
