# The VPN service image: `vlab vpn sync` with wireguard-tools, run on every node.
ARG VLAB_IMAGE=registry.lab/vlab/vlab:latest
FROM ${VLAB_IMAGE}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends wireguard-tools iproute2 \
    && rm -rf /var/lib/apt/lists/*
