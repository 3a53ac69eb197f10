# syntax=docker/dockerfile:1
# Template for a target image: a dAIEdge target repository (scripts under app/) on top of the
# VLab pipeline. Build from the target repository:
#   docker build -f target.Dockerfile --build-arg VLAB_IMAGE=registry.lab/vlab/vlab:0.1.0 \
#       -t registry.lab/vlab/rpi5-tflite:1.0.0 .
# For a board of another architecture (arm64 for a Raspberry Pi 5 or a Jetson) build on it,
# or cross-build with `docker buildx build --platform linux/arm64 ... --push` from a
# multi-arch VLAB_IMAGE.
ARG VLAB_IMAGE=registry.lab/vlab/vlab:0.1.0
FROM ${VLAB_IMAGE}
USER root
# The target's toolchain goes here (cross compilers, board SDKs, flashing tools, ...).
COPY app/ /app/
RUN find /app -name "*.sh" -exec chmod +x {} + && chown -R vlab:vlab /app
USER vlab
ENV VLAB_REPOSITORY=/app
# Nomad runs the job's command (`python -m vlab_backend.pipeline.remote`) as it is: no
# entry point in front of it (the job's task directory is the vlab user's already).
ENTRYPOINT []
CMD ["python", "-m", "vlab_backend.pipeline.remote"]
