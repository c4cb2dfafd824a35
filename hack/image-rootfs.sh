#!/bin/sh
# Runs inside the image build (Dockerfile, stage `rootfs`), on the base image with /opt/wslb
# already in place: cuts the base down to what the wslb programs use, for the one-layer final
# image. Works on both bases the Dockerfile takes (the official python:3.11-slim, Python in
# /usr/local; and Debian's python3 in /usr), since it asks Python where its files are.
set -eu

# A fixed non-root identity, so Pod securityContexts can name it (runAsUser: 10001).
groupadd --gid 10001 wslb
useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin wslb

# Debian: the package manager and what only it needs (apt, gpgv and their TLS and crypto
# libraries), and the ext2 tools: nothing installs packages or formats disks in a pod that runs
# as 10001 on a read-only root. Purged with dpkg, so its database still tells scanners the truth;
# every package here is a leaf once the others go (dpkg refuses otherwise), and one the base
# lacks is skipped with a warning.
dpkg --purge --force-remove-essential --force-remove-protected apt gpgv libapt-pkg6.0 \
  libgnutls30 libhogweed6 libnettle8 libp11-kit0 libtasn1-6 libunistring2 libidn2-0 \
  libseccomp2 libxxhash0 e2fsprogs libext2fs2 libss2 logsave >/tmp/purge.log 2>&1 \
  || { cat /tmp/purge.log >&2; echo "image-rootfs.sh: dpkg --purge failed (above)" >&2; exit 1; }
rm /tmp/purge.log

# Debian: documentation (the copyright files stay: they are the licences), manuals,
# translations, package-manager caches and logs. dpkg's database stays, so image scanners still
# see which packages (and versions) are inside.
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian \
  /usr/share/python-wheels /var/cache/apt/* /var/lib/apt/lists/* /var/cache/debconf/*-old \
  /var/log/*

# glibc's iconv modules: Python converts text with its own codecs, and glibc handles UTF-8 (the
# image's C.UTF-8 locale) and ASCII without them.
rm -rf /usr/lib/*-linux-gnu*/gconv

# Python: the parts of the standard library no program here imports (tests, GUI, IDE, 2to3,
# help text), and everything that installs packages (pip, ensurepip, venv, setuptools): nothing
# in the image can fetch or build code at run time.
stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
rm -rf "$stdlib"/test "$stdlib"/idlelib "$stdlib"/tkinter "$stdlib"/turtledemo \
  "$stdlib"/turtle.py "$stdlib"/lib2to3 "$stdlib"/pydoc_data "$stdlib"/ensurepip \
  "$stdlib"/venv "$stdlib"/distutils "$stdlib"/lib-dynload/_test* \
  "$stdlib"/lib-dynload/_ctypes_test* "$stdlib"/lib-dynload/xxlimited* \
  "$stdlib"/lib-dynload/_tkinter* "$purelib"/* /usr/lib/python3/dist-packages/* \
  /usr/local/include/python3* /usr/local/bin/pip* /usr/local/bin/idle* \
  /usr/local/bin/pydoc* /usr/local/bin/2to3* /usr/local/bin/wheel /usr/bin/pydoc3* \
  /usr/bin/pygettext3*

# Bytecode of the standard library: only for the modules our three programs import at start
# (the root filesystem is read-only at run time, so anything else compiles in memory on first
# import, as it would without bytecode).
find "$stdlib" -name __pycache__ -type d -prune -exec rm -rf {} +
PYTHONDONTWRITEBYTECODE=1 /opt/wslb/bin/python -c '
import importlib, sys, sysconfig
for name in ("dataplane.cli", "dataplane.echo", "controller.main"):
    importlib.import_module(name)
stdlib = sysconfig.get_path("stdlib") + "/"
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith(stdlib) and path.endswith(".py") and "-packages/" not in path:
        print(path)
' >/tmp/stdlib-used.txt
python3 -m compileall -q -i - </tmp/stdlib-used.txt >/dev/null
rm /tmp/stdlib-used.txt

# Every compiled module still finds its shared libraries (the imports above load most of them).
find /opt/wslb "$stdlib"/lib-dynload -name '*.so' -exec sh -c \
  'for so; do ! ldd "$so" | grep "not found" || { echo "  needed by $so" >&2; exit 1; }; done' \
  sh {} + || { echo "image-rootfs.sh: a shared library is missing" >&2; exit 1; }

# No setuid/setgid programs: the pods run as 10001 with no privilege escalation anyway.
find / -xdev -type f -perm /6000 -exec chmod ug-s {} +
