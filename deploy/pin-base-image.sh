#!/bin/sh
# Pins deploy/Dockerfile's base image by digest: rewrites `ARG PYTHON_IMAGE=<tag>[@sha256:...]` to
# `<tag>@sha256:<digest>`, the digest the tag points at in its registry now (the multi-platform index).
#
#   deploy/pin-base-image.sh                      # the tag already in the Dockerfile
#   deploy/pin-base-image.sh python:3.11-slim-bookworm
#   deploy/pin-base-image.sh --digest sha256:<64 hex> [TAG]   # a digest looked up elsewhere
#
# Looks the digest up with `crane digest` or `docker buildx imagetools inspect`, whichever is installed.
# DOCKERFILE=path overrides the file to rewrite.
set -eu

dockerfile=${DOCKERFILE:-$(dirname "$0")/Dockerfile}
digest=
if [ "${1:-}" = "--digest" ]; then
  digest=${2:?--digest needs sha256:<64 hex digits>}
  shift 2
fi

current=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$dockerfile")
if [ -z "$current" ]; then
  echo "no 'ARG PYTHON_IMAGE=' line in $dockerfile" >&2
  exit 1
fi
tag=${1:-${current%%@*}}

if [ -z "$digest" ]; then
  if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$tag")
  elif docker buildx version >/dev/null 2>&1; then
    digest=$(docker buildx imagetools inspect "$tag" | awk '$1 == "Digest:" { print $2; exit }')
  else
    echo "neither crane nor docker buildx is installed: install one, or pass --digest" >&2
    exit 1
  fi
fi

if ! printf '%s\n' "$digest" | grep -Eq '^sha256:[0-9a-f]{64}$'; then
  echo "not a sha256 digest: '$digest'" >&2
  exit 1
fi

tmp="$dockerfile.tmp.$$"
sed "s|^ARG PYTHON_IMAGE=.*\$|ARG PYTHON_IMAGE=$tag@$digest|" "$dockerfile" > "$tmp"
mv "$tmp" "$dockerfile"
echo "$dockerfile: FROM $tag@$digest"
