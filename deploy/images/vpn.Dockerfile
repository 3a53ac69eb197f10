# syntax=docker/dockerfile:1
# The VPN service image: `vlab vpn sync` with wireguard-tools, run on every node (vlab-vpn).
# It runs as root (it reads the host's WireGuard key and manages the interface, with
# NET_ADMIN), so the VLab image's entry point, which drops to the vlab user, is reset.
# `vlab host init` creates wg-vlab on the host before Nomad starts (kernel WireGuard, else
# wireguard-go); this task, in the host's network namespace, reads the live interface
# (`wg show`) and applies only the differences. A userspace (wireguard-go) interface is
# reached through its control socket in /run/wireguard, which vlab-vpn mounts.
#   docker build -f deploy/images/vpn.Dockerfile \
#       --build-arg VLAB_IMAGE=registry.lab/vlab/vlab:0.1.0 -t registry.lab/vlab/vpn:0.1.0 .
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... --push (as for
# vlab.Dockerfile; VLAB_IMAGE must then be a multi-arch image too).
ARG VLAB_IMAGE=registry.lab/vlab/vlab:0.1.0
FROM ${VLAB_IMAGE}
USER root
RUN apt-get update && apt-get install -y --no-install-recommends wireguard-tools iproute2 \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT []
CMD ["vlab", "vpn", "sync", "--host-dir", "/etc/vlab"]
