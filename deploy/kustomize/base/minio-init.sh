#!/bin/sh
# One-shot MinIO setup for synthaug, safe to run again: creates the bucket named by
# $SYNTHAUG_STORE (s3://BUCKET?endpoint=HOST:PORT&secure=0|1) and a least-privilege user
# (read/write on that bucket only) whose keys the services use. MinIO's root credentials
# stay with MinIO and this script.
#
# Environment: SYNTHAUG_STORE, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, and the service user's
# keys as SYNTHAUG_S3_ACCESS_KEY / SYNTHAUG_S3_SECRET_KEY or their *_FILE variants.
set -eu

secret() {  # secret NAME: the value of $NAME, else the content of the file named by $NAME_FILE
    eval "value=\${$1:-}"
    eval "file=\${$1_FILE:-}"
    if [ -z "$value" ] && [ -n "$file" ]; then value=$(cat "$file"); fi
    if [ -z "$value" ]; then echo "minio-init: set $1 or $1_FILE" >&2; exit 2; fi
    printf '%s' "$value"
}

case "$SYNTHAUG_STORE" in
    s3://*) ;;
    *) echo "minio-init: SYNTHAUG_STORE must be s3://BUCKET?endpoint=HOST:PORT, got $SYNTHAUG_STORE" >&2; exit 2 ;;
esac
rest=${SYNTHAUG_STORE#s3://}
bucket=${rest%%\?*}
endpoint=$(printf '%s' "$rest" | sed -n 's/.*[?&]endpoint=\([^&]*\).*/\1/p')
secure=$(printf '%s' "$rest" | sed -n 's/.*[?&]secure=\([^&]*\).*/\1/p')
scheme=http
case "$secure" in 1|true) scheme=https ;; esac
access_key=$(secret SYNTHAUG_S3_ACCESS_KEY)
secret_key=$(secret SYNTHAUG_S3_SECRET_KEY)

export HOME=/tmp
tries=0
until mc --config-dir /tmp/.mc alias set store "$scheme://$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 90 ]; then echo "minio-init: MinIO at $endpoint not reachable" >&2; exit 1; fi
    sleep 2
done
mc() { command mc --config-dir /tmp/.mc "$@"; }

mc mb --ignore-existing "store/$bucket"
cat > /tmp/synthaug-rw.json <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$bucket"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$bucket/*"]}
  ]
}
POLICY
mc admin policy create store synthaug-rw /tmp/synthaug-rw.json
mc admin user add store "$access_key" "$secret_key"
if ! mc admin policy entities store --user "$access_key" | grep -q synthaug-rw; then
    mc admin policy attach store synthaug-rw --user "$access_key"
fi
echo "minio-init: bucket $bucket ready; user $access_key has read/write on it"
