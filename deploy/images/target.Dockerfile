# Template for a target image: a dAIEdge target repository (scripts under app/) on top of the
# VLab pipeline. Build from the target repository:
#   docker build -f target.Dockerfile --build-arg VLAB_IMAGE=registry.lab/vlab/vlab:1 -t IMAGE .
ARG VLAB_IMAGE=registry.lab/vlab/vlab:latest
FROM ${VLAB_IMAGE}
USER root
# The target's toolchain goes here (cross compilers, board SDKs, flashing tools, ...).
COPY app/ /app/
RUN find /app -name "*.sh" -exec chmod +x {} +
USER vlab
ENV VLAB_REPOSITORY=/app
ENTRYPOINT ["python", "-m", "vlab_backend.pipeline.remote"]
