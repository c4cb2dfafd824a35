# wslb: one image with every entry point — the data plane (default), the controller and the
# demo echo backend (`wslb-echo`). From a clone, `docker build .` or `podman build .` is enough
# where the base image and the Python package index can be reached; `make image`
# (hack/image.sh) builds this same file where there is no registry, or behind a
# TLS-intercepting package proxy.
#
# Stages:
#   build   installs the locked dependencies (requirements/runtime.txt: every version pinned,
#           every file hashed) and our own wheel, built here from the source, into the venv
#           /opt/wslb, for the builder's own platform: `--platform linux/arm64` gets arm64
#           wheels. The connection core (dataplane/relay.py, frames.py, deadlines.py) is
#           compiled with mypyc here (WSLB_MYPYC=1, setup.py), so this stage has a C compiler
#           and Python's headers; the build fails if the installed core is not the compiled
#           one. Debug symbols are stripped from the compiled extensions.
#   rootfs  the base cut down to what the programs use (hack/image-rootfs.sh), plus the venv.
#   final   that tree as one layer, run as a fixed non-root user.
#
# Reaching the index: pip in the build stage reads two optional BUILD SECRETS. They are mounted
# only for the one RUN that downloads and never written to a layer (tests/e2e/test_image.py):
#   --secret id=cacert,src=ca-bundle.pem   CA bundle to trust (a TLS-intercepting proxy)
#   --secret id=pipconf,src=pip.conf       pip settings: index-url, extra-index-url, ...
#
# BASE_IMAGE: Debian bookworm with CPython 3.11 and its venv module. The default is the
# official slim image; hack/image.sh passes a local one (debootstrap) where none can be pulled.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# strip(1) and a C compiler for mypyc, for this stage only (they never reach the final image),
# plus Python's headers where the base lacks them (Debian's python3; the official image has
# them). Unpinned: Debian stable takes only fixes, and a pinned version disappears from the
# mirror with the next one.
# hadolint ignore=DL3008
RUN set -eu; \
    headers=""; \
    include=$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))'); \
    [ -e "$include/Python.h" ] || headers=python3-dev; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      binutils gcc libc6-dev $headers; \
    rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1 PIP_ROOT_USER_ACTION=ignore
# Dependencies first (from the lock alone), so a code change reuses this layer where the
# builder caches layers. /opt/tools holds pip and setuptools (requirements/build.txt) and is
# left behind with this stage; /opt/wslb gets no pip at all.
COPY requirements/ /src/requirements/
RUN --mount=type=secret,id=cacert --mount=type=secret,id=pipconf \
    --mount=type=cache,id=wslb-pip,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    if [ -s /run/secrets/pipconf ]; then export PIP_CONFIG_FILE=/run/secrets/pipconf; fi; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    python3 -m venv /opt/tools; \
    /opt/tools/bin/pip install -q --require-hashes -r /src/requirements/build.txt; \
    python3 -m venv --without-pip /opt/wslb; \
    /opt/tools/bin/pip --python /opt/wslb/bin/python install -q --require-hashes \
      -r /src/requirements/runtime.txt
COPY pyproject.toml setup.py README.md LICENSE /src/
COPY lbwire/ /src/lbwire/
COPY dataplane/ /src/dataplane/
COPY controller/ /src/controller/
RUN set -eu; \
    WSLB_MYPYC=1 WSLB_MYPYC_PYTHON=/opt/wslb/bin/python \
      /opt/tools/bin/pip wheel -q --no-deps --no-build-isolation --wheel-dir /tmp/dist /src; \
    /opt/tools/bin/pip --python /opt/wslb/bin/python install -q --no-deps --no-index \
      /tmp/dist/wslb-*.whl; \
    /opt/wslb/bin/python -c 'import importlib; \
      from importlib.machinery import ExtensionFileLoader as E; \
      names = ("relay", "frames", "tunnel", "listener", "counts", "handshake", "log_lines", \
        "http1", "http_proxy", "tls_stream"); \
      loose = [n for n in names if not isinstance( \
        importlib.import_module("dataplane." + n).__loader__, E)]; \
      assert not loose, f"not compiled: {loose}"'; \
    find /opt/wslb -name '*.so' -exec strip --strip-unneeded {} +; \
    find /opt/wslb -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.c' \
      -o -name '*.h' \) -delete; \
    /opt/wslb/bin/wslb-echo --help >/dev/null

FROM ${BASE_IMAGE} AS rootfs
COPY --from=build /opt/wslb /opt/wslb
RUN --mount=type=bind,source=hack/image-rootfs.sh,target=/tmp/image-rootfs.sh \
    sh /tmp/image-rootfs.sh

# One layer from the trimmed tree: what `rootfs` deleted would otherwise still ship in the
# base image's layers.
FROM scratch
# hadolint ignore=DL3067
COPY --from=rootfs / /
# Read-only root filesystem: bytecode is compiled at build time and never written at run time;
# output is unbuffered so logs reach the kubelet at once.
ENV PATH=/opt/wslb/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="wslb" \
      org.opencontainers.image.description="Kubernetes-native WebSocket (WS/WSS) load balancer" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /nonexistent
# Our entry points install SIGTERM handlers and run as PID 1 (exec form, no shell), so
# `kubectl delete pod` drains them instead of waiting for SIGKILL.
STOPSIGNAL SIGTERM
EXPOSE 8080
CMD ["wslb-dataplane"]
