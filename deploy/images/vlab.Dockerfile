# The VLab image: API (`vlab serve`), web (JupyterLab, Voila) and the pipeline that runs
# benchmarks on target hosts (`python -m vlab_backend.pipeline.remote`).
# Build from the repository root:  docker build -f deploy/images/vlab.Dockerfile -t vlab .
FROM python:3.11-slim
RUN useradd --create-home vlab
WORKDIR /opt/vlab
COPY . /opt/vlab
RUN pip install --no-cache-dir "/opt/vlab[server]"
USER vlab
EXPOSE 8765
CMD ["vlab", "serve", "--host", "0.0.0.0", "--port", "8765", "--runner", "nomad"]
