#!/usr/bin/env bash
# The guest images of the libvirt_lxc target, made with umoci from the shared busybox layout:
#   LAYOUT:v1, v2, v3     Cmd a long-running shell loop, Env IMAGE_VAR and SHARED, WorkingDir /srv,
#                         User nobody (noted, not applied), and a
#                         top layer with /etc/vb-version saying v1, v2 or v3 (v2 and v3 each on v1)
# Usage: make-images.sh BUSYBOX_LAYOUT:TAG LAYOUT
set -euo pipefail
source_image=$1 layout=$2
bundle=$(mktemp -d "${layout%/*}/bundle.XXXXXX")
trap 'rm -rf "$bundle"' EXIT
rm -rf "$layout"
skopeo copy -q "oci:$source_image" "oci:$layout:v1"
# shellcheck disable=SC2016  # $IMAGE_VAR is for the guest's shell to expand
umoci config --image "$layout:v1" --config.entrypoint /bin/sh --config.cmd -c \
  --config.cmd 'echo "$IMAGE_VAR" > /run-started; while true; do sleep 1; done' \
  --config.env IMAGE_VAR=from-image --config.env SHARED=from-image --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir /srv --config.user nobody
for version in v1 v2 v3; do
  rm -rf "$bundle/b"
  umoci unpack --image "$layout:v1" "$bundle/b" >/dev/null
  mkdir -p "$bundle/b/rootfs/srv"
  echo "$version" > "$bundle/b/rootfs/etc/vb-version"
  umoci repack --image "$layout:$version" "$bundle/b" >/dev/null
done
umoci gc --layout "$layout"
