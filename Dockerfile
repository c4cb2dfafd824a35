# wslb: one image with every entry point — the data plane (default), the controller and the
# demo echo backend (`wslb-echo`). Build it with `make image` (hack/image.sh), which first
# builds the Python wheels on the host into build/wheels: they are installed here with
# --no-index, so the build needs no package index and no index address or certificate ever
# enters the image.
#
# BASE_IMAGE: any image with Python 3.11+ and venv. The default is the official slim image for
# machines with a registry; hack/image.sh passes a local Debian base where there is none.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
COPY build/wheels/ /tmp/wheels/
# The venv lives in /opt/wslb and is copied whole into the final stage; pip and setuptools are
# removed from it so that nothing in the final image can fetch or build packages.
RUN python3 -m venv /opt/wslb \
 && /opt/wslb/bin/pip install --no-index --no-cache-dir --find-links /tmp/wheels wslb \
 && /opt/wslb/bin/pip uninstall -y -q pip setuptools \
 && /opt/wslb/bin/python -m compileall -q /opt/wslb/lib \
 && /opt/wslb/bin/wslb-echo --help >/dev/null

FROM ${BASE_IMAGE}
ARG WSLB_UID=10001
# A fixed non-root identity, so Pod securityContexts can name it (runAsUser: 10001).
RUN groupadd --gid "${WSLB_UID}" wslb \
 && useradd --uid "${WSLB_UID}" --gid "${WSLB_UID}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin wslb
COPY --from=build /opt/wslb /opt/wslb
# Read-only root filesystem: bytecode is compiled at build time and never written at run time;
# output is unbuffered so logs reach the kubelet at once.
ENV PATH=/opt/wslb/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ${WSLB_UID}:${WSLB_UID}
WORKDIR /nonexistent
# Our entry points install SIGTERM handlers and run as PID 1 (exec form, no shell), so
# `kubectl delete pod` drains them instead of waiting for SIGKILL.
STOPSIGNAL SIGTERM
EXPOSE 8080
CMD ["wslb-dataplane"]
