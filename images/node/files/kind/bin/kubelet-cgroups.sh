#!/bin/sh
# Creates the kubelet's cgroups in every cgroup v1 hierarchy of this node (see 11-wslb.conf).
# On a cgroup v2 node there is nothing to do: systemd creates kubelet.slice itself.
set -eu
[ -f /sys/fs/cgroup/cgroup.controllers ] && exit 0
for h in /sys/fs/cgroup/*/; do
  [ -f "${h}cgroup.procs" ] || continue          # not a hierarchy (e.g. a symlink like cpu,cpuacct)
  [ -f "${h}cgroup.controllers" ] && continue    # the v2 "unified" mount of a hybrid host
  mkdir -p "${h}kubelet" "${h}kubelet.slice"
done
