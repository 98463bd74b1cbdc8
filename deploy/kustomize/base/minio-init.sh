#!/bin/sh
# One-shot MinIO setup for synthaug, safe to run again: creates the bucket named by
# $SYNTHAUG_STORE (s3://BUCKET?endpoint=HOST:PORT&secure=0|1) and a least-privilege user
# (read/write on that bucket only) whose keys the services use. MinIO's root credentials
# stay with MinIO and this script.
#
# Environment: SYNTHAUG_STORE; MINIO_ROOT_USER, MINIO_ROOT_PASSWORD and the service user's
# keys SYNTHAUG_S3_ACCESS_KEY / SYNTHAUG_S3_SECRET_KEY, each also as a *_FILE variant naming a
# mounted secret file.
# Plain POSIX sh and mc only: the minio/mc image has no sed, grep or mktemp to rely on.
set -eu
set -f

secret() {  # secret NAME: the value of $NAME, else the first line of the file named by $NAME_FILE
    eval "value=\${$1:-}"
    eval "file=\${$1_FILE:-}"
    if [ -z "$value" ] && [ -n "$file" ]; then
        IFS= read -r value < "$file" || true
    fi
    if [ -z "$value" ]; then echo "minio-init: set $1 or $1_FILE" >&2; exit 2; fi
    printf '%s' "$value"
}

store=${SYNTHAUG_STORE:-}
case "$store" in
    s3://*) ;;
    *) echo "minio-init: SYNTHAUG_STORE must be s3://BUCKET?endpoint=HOST:PORT, got '$store'" >&2; exit 2 ;;
esac
rest=${store#s3://}
bucket=${rest%%\?*}
query=
case "$rest" in *\?*) query=${rest#*\?} ;; esac
endpoint=
secure=0
old_ifs=$IFS
IFS='&'
for part in $query; do
    case "$part" in
        endpoint=*) endpoint=${part#endpoint=} ;;
        secure=*) secure=${part#secure=} ;;
    esac
done
IFS=$old_ifs
if [ -z "$bucket" ] || [ -z "$endpoint" ]; then
    echo "minio-init: SYNTHAUG_STORE '$store' needs a bucket and endpoint=HOST:PORT" >&2; exit 2
fi
scheme=http
case "$secure" in 1|true) scheme=https ;; esac
access_key=$(secret SYNTHAUG_S3_ACCESS_KEY)
secret_key=$(secret SYNTHAUG_S3_SECRET_KEY)
root_user=$(secret MINIO_ROOT_USER)
root_password=$(secret MINIO_ROOT_PASSWORD)

work="${TMPDIR:-/tmp}/minio-init.$$"
mkdir -p "$work"
export HOME="$work"
mc() { command mc --config-dir "$work/mc" "$@"; }

tries=0
until mc alias set store "$scheme://$endpoint" "$root_user" "$root_password" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 90 ]; then echo "minio-init: MinIO at $endpoint not reachable" >&2; exit 1; fi
    sleep 2
done

mc mb --ignore-existing "store/$bucket"
printf '%s\n' \
    '{"Version": "2012-10-17", "Statement": [' \
    "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetBucketLocation\", \"s3:ListBucket\", \"s3:ListBucketMultipartUploads\"], \"Resource\": [\"arn:aws:s3:::$bucket\"]}," \
    "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\", \"s3:AbortMultipartUpload\", \"s3:ListMultipartUploadParts\"], \"Resource\": [\"arn:aws:s3:::$bucket/*\"]}" \
    ']}' > "$work/synthaug-rw.json"
mc admin policy create store synthaug-rw "$work/synthaug-rw.json"
mc admin user add store "$access_key" "$secret_key"
attached=$(mc admin policy entities store --user "$access_key" 2>/dev/null || true)
case "$attached" in
    *synthaug-rw*) ;;
    *) mc admin policy attach store synthaug-rw --user "$access_key" ;;
esac
echo "minio-init: bucket $bucket ready; user $access_key has read/write on it"
