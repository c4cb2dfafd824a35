#!/usr/bin/env bash
# Prepares this machine to run kind nodes with podman: Debian packages and the few host
# settings that were each seen failing here without them. Idempotent; needs root.
# Skipped on machines that use an official node image (WSLB_KIND_NODE_IMAGE set).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

# install_packages: podman (with its recommends: netavark, aardvark-dns, buildah, ... as
# verified here) and iptables, which netavark needs to publish ports but podman only suggests;
# debootstrap for the base image; runc because crun refuses this machine's hybrid cgroup
# layout ("cgroups in hybrid mode not supported").
install_packages() {
  local pkgs=(podman iptables debootstrap runc) missing=() p
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq
  apt_get install -y -qq "${missing[@]}" >/dev/null
}

# configure_podman: root here lacks CAP_SYS_RESOURCE and cannot raise rlimits, so podman's
# default (raise nofile to 1M) fails every container with "error setting rlimit"; pin the
# container limits to the hard nofile limit instead. nproc gets the same number: the shell's
# hard nproc (96365) was refused by runc here while 20000 worked. And use runc (see above).
configure_podman() {
  local conf=/etc/containers/containers.conf.d/50-wslb.conf nofile nproc
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$nofile
  mkdir -p "$(dirname "$conf")"
  cat > "$conf.tmp" <<CONF
# Written by wslb hack/host-prep.sh: root cannot raise rlimits on this machine.
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
runtime = "runc"
CONF
  mv "$conf.tmp" "$conf"
}

# kernel_modules_dir: kind bind-mounts /lib/modules into every node; it does not exist here.
kernel_modules_dir() {
  mkdir -p /lib/modules
}

install_packages
configure_podman
kernel_modules_dir
log "host ready: $(podman --version), runtime $(podman info --format '{{.Host.OCIRuntime.Name}}')"
