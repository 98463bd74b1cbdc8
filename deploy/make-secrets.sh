#!/bin/sh
# Writes the secrets a synthaug deployment needs (Kubernetes and Docker Compose read the
# same files) into deploy/kustomize/base/secrets/, with random values. Files that exist are
# kept, so running it again changes nothing; delete a file to regenerate it. The folder is
# readable by you alone; the files are 0644 inside it, because Compose bind-mounts them into
# containers that run as uid 1000.
#   deploy/make-secrets.sh [DIR]
set -eu
dir=${1:-$(dirname "$0")/kustomize/base/secrets}
mkdir -p "$dir"
chmod 0700 "$dir"

random() {  # random LENGTH: letters and digits from the kernel's CSPRNG
    LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c "$1"
}

write() {  # write NAME VALUE, unless NAME exists
    if [ -e "$dir/$1" ]; then echo "kept      $dir/$1"; return; fi
    printf '%s' "$2" > "$dir/$1"
    chmod 0644 "$dir/$1"
    echo "generated $dir/$1"
}

write minio-root-user "synthaug-admin"
write minio-root-password "$(random 40)"
write s3-access-key "synthaug"
write s3-secret-key "$(random 40)"
write auth-token "$(random 48)"
write grafana-admin-password "$(random 24)"
