#!/usr/bin/env bash
# The libvirt_lxc role against a real libvirtd: each case is check mode, a run, an unchanged rerun
# and an unchanged check-mode rerun, judged from ansible-playbook's own recap (converge.py), with
# what the guest sees checked by verify.yml. Everything it starts is stopped at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tests_dir=$(cd "$here/../../.." && pwd)
work=$OUTPUT_DIR/libvirt_lxc
export ANSIBLE_ROLES_PATH=$here/..
export ANSIBLE_FORKS=2

guests_of_this_test() { virsh -q -c lxc:///system list --all --name | grep '^vbtest-' || true; }

cleanup() {
  local guest
  for guest in $(guests_of_this_test); do
    virsh -q -c lxc:///system destroy "$guest" >/dev/null 2>&1 || true
    virsh -q -c lxc:///system undefine "$guest" >/dev/null 2>&1 || true
  done
  "$tests_dir/libvirt/libvirtd.sh" stop "$work/libvirtd"
  python3 "$tests_dir/registry/registry.py" stop "$work/registry" >/dev/null
  # libvirt leaves each stopped guest's empty mount directories and socket behind
  find /run/libvirt/lxc -maxdepth 1 -name 'vbtest-*' \( -type d -empty -delete -o -type s -delete \)
}

# converge changed|unchanged PLAYBOOK ARGS...: run it; fail unless its recap says so for every host.
converge() {
  python3 "$here/converge.py" "$@" -i "$here/inventory" -e "@$work/env.yml"
}
verify() {  # verify CHECK [ARGS]: the checks of tasks/verify_CHECK.yml
  ansible-playbook -i "$here/inventory" "$here/verify.yml" -e "@$work/env.yml" -e "check=$1" "${@:2}"
}

# What an earlier run left: its processes stopped, its files gone.
python3 "$tests_dir/registry/registry.py" stop "$work/registry" >/dev/null
"$tests_dir/libvirt/libvirtd.sh" stop "$work/libvirtd"
rm -rf "$work"
mkdir -p "$work"
trap cleanup EXIT
"$tests_dir/libvirt/libvirtd.sh" start "$work/libvirtd"
ansible-playbook -i "$here/inventory" "$here/setup.yml" -e "work=$work" -e "tests_dir=$tests_dir"

# What the guests below cannot show here (qcow2, bridges, networks, the host's network): the XML.
ansible-playbook -i "$here/inventory" "$here/render.yml"

busybox=(-e @"$here/cases/busybox.yml")
converge changed "$here/guest.yml" "${busybox[@]}" --check
verify absent -e guest_name=vbtest-busybox
converge changed "$here/guest.yml" "${busybox[@]}"
verify busybox -e version=v1 -e pid_label=first
converge unchanged "$here/guest.yml" "${busybox[@]}"
converge unchanged "$here/guest.yml" "${busybox[@]}" --check
verify same_init -e guest_name=vbtest-busybox -e pid_label=first

# The tag moves to a new image: rebuilt and restarted, the bind-mounted data kept.
python3 "$tests_dir/registry/push.py" copy "$work/registry" "oci:$work/layout:v2" loop:latest >/dev/null
converge changed "$here/guest.yml" "${busybox[@]}" --check
verify same_init -e guest_name=vbtest-busybox -e pid_label=first
converge changed "$here/guest.yml" "${busybox[@]}"
verify busybox -e version=v2 -e pid_label=second -e previous_pid_label=first -e '{"data_before": "written by v1"}'
converge unchanged "$here/guest.yml" "${busybox[@]}"
converge unchanged "$here/guest.yml" "${busybox[@]}" --check

# A changed definition restarts the guest; the rootfs stays.
converge changed "$here/guest.yml" "${busybox[@]}" -e libvirt_lxc_memory=256 --check
converge changed "$here/guest.yml" "${busybox[@]}" -e libvirt_lxc_memory=256
verify busybox -e version=v2 -e pid_label=third -e previous_pid_label=second -e memory_mib=256 \
  -e '{"data_before": "written by v2"}'
converge unchanged "$here/guest.yml" "${busybox[@]}" -e libvirt_lxc_memory=256

# Bad input fails clearly and leaves the running guest alone.
ansible-playbook -i "$here/inventory" "$here/bad_input.yml" -e "@$work/env.yml" -e libvirt_lxc_memory=256
verify same_init -e guest_name=vbtest-busybox -e pid_label=third

# A rebuild whose download fails after the guest was stopped: the guest runs again, on the old rootfs.
python3 "$tests_dir/registry/push.py" copy "$work/registry" "oci:$work/layout:v3" loop:latest >/dev/null
lost_layer=$(python3 "$here/files/drop-top-layer.py" "$work/layout" v3 "$work/registry/storage")
ansible-playbook -i "$here/inventory" "$here/broken_build.yml" -e "@$work/env.yml" -e libvirt_lxc_memory=256 \
  -e "lost_layer=$lost_layer"
verify busybox -e version=v2 -e pid_label=fourth -e previous_pid_label=third -e memory_mib=256 \
  -e '{"data_before": "written by v2"}'
python3 "$tests_dir/registry/push.py" copy "$work/registry" "oci:$work/layout:v2" loop:latest >/dev/null
converge unchanged "$here/guest.yml" "${busybox[@]}" -e libvirt_lxc_memory=256

# A user namespace: the rootfs shifted, init root inside and host uid 100000 outside.
userns=(-e @"$here/cases/userns.yml")
converge changed "$here/guest.yml" "${userns[@]}" --check
converge changed "$here/guest.yml" "${userns[@]}"
verify userns -e guest_name=vbtest-userns
converge unchanged "$here/guest.yml" "${userns[@]}"
converge unchanged "$here/guest.yml" "${userns[@]}" --check

# The debootstrap image with its own command; stopped; absent.
# The case file holds a root password, which must not show in the output, verbose or not.
debian=(-e @"$here/cases/debian.yml")
secret=(--secret vbtest-root-pw-6c1f)
converge changed "${secret[@]}" "$here/guest.yml" "${debian[@]}" --check -v
converge changed "${secret[@]}" "$here/guest.yml" "${debian[@]}" -v
verify debian -e guest_name=vbtest-debian
converge unchanged "${secret[@]}" "$here/guest.yml" "${debian[@]}" -v
converge changed "$here/guest.yml" "${debian[@]}" -e libvirt_lxc_state=stopped
verify stopped -e guest_name=vbtest-debian
converge unchanged "$here/guest.yml" "${debian[@]}" -e libvirt_lxc_state=stopped
converge unchanged "$here/guest.yml" "${debian[@]}" -e libvirt_lxc_state=stopped --check

# Several hosts at once (forks), each with its own guest from the same image and cache.
converge changed "$here/guest.yml" -e @"$here/cases/many.yml" -e target=guests
verify many -e target=guests
converge unchanged "$here/guest.yml" -e @"$here/cases/many.yml" -e target=guests

# qcow2 guests need the nbd kernel module.
if [[ -e /sys/module/nbd || -e /dev/nbd0 ]]; then
  converge changed "$here/guest.yml" -e @"$here/cases/qcow2.yml"
  verify busybox -e guest_name=vbtest-qcow2 -e version=v2 -e pid_label=qcow2 -e mounts=false -e autostart=false
  converge unchanged "$here/guest.yml" -e @"$here/cases/qcow2.yml"
  converge changed "$here/guest.yml" -e @"$here/cases/qcow2.yml" -e libvirt_lxc_state=absent
else
  echo "libvirt_lxc: SKIPPED the qcow2 guest: no nbd kernel module here (/sys/module/nbd, /dev/nbd0)" >&2
fi

# absent: the domain, the rootfs and its record gone; a second time, nothing to do.
for case in busybox userns debian; do
  converge changed "$here/guest.yml" -e @"$here/cases/$case.yml" -e libvirt_lxc_state=absent --check
  converge changed "$here/guest.yml" -e @"$here/cases/$case.yml" -e libvirt_lxc_state=absent
  verify absent -e "guest_name=vbtest-$case"
  converge unchanged "$here/guest.yml" -e @"$here/cases/$case.yml" -e libvirt_lxc_state=absent
done
converge changed "$here/guest.yml" -e @"$here/cases/many.yml" -e target=guests -e libvirt_lxc_state=absent
verify absent -e guest_name=vbtest-many-host_a
verify absent -e guest_name=vbtest-many-host_b
