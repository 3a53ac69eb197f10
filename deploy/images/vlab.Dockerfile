# syntax=docker/dockerfile:1
# The VLab image: API (`vlab serve`), web (JupyterLab, Voila) and the pipeline that runs
# benchmarks on target hosts (`python -m vlab_backend.pipeline.remote`).
#
# Build from the repository root (.dockerignore keeps .venv, caches and test artifacts out):
#   docker build -f deploy/images/vlab.Dockerfile -t registry.lab/vlab/vlab:0.1.0 .
# Both architectures of a lab (x86-64 servers, arm64 boards such as the Raspberry Pi 5 or a
# Jetson) from one machine, with BuildKit and QEMU:
#   docker buildx create --use --name vlab-builder
#   docker buildx build --platform linux/amd64,linux/arm64 -f deploy/images/vlab.Dockerfile \
#       -t registry.lab/vlab/vlab:0.1.0 --push .
ARG PYTHON_VERSION=3.11.10
ARG DEBIAN_RELEASE=bookworm
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}

# The user the services run as; a fixed uid so that host volumes can be prepared for it.
ARG VLAB_UID=10001
# The pip extras installed: `server` (API, engines) is what every service needs.
ARG VLAB_EXTRAS=server

RUN useradd --create-home --uid "${VLAB_UID}" --user-group vlab \
    && mkdir -p /data && chown vlab:vlab /data
WORKDIR /opt/vlab
COPY . /opt/vlab
# notebooks/ and targets/ are installed with the package (<prefix>/share/vlab).
RUN pip install --no-cache-dir "/opt/vlab[${VLAB_EXTRAS}]"
COPY deploy/images/entrypoint.sh /usr/local/bin/vlab-entrypoint
RUN chmod 0755 /usr/local/bin/vlab-entrypoint

ENV VLAB_DATA_DIR=/data
EXPOSE 8765
# Starts as root, gives the data volume (a Nomad host volume is root's) to vlab, then runs the
# command as vlab.
ENTRYPOINT ["vlab-entrypoint"]
CMD ["vlab", "serve", "--host", "0.0.0.0", "--port", "8765", "--runner", "nomad"]
