# kvferry server image. Build: docker build -t kvferry .
# The default installs torch from PyPI (a CUDA build, for --device cuda:N). For a smaller CPU-only
# image, point pip at a CPU wheel index: --build-arg PIP_TORCH_ARGS="--index-url <CPU wheel index>".
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_SPEC="torch==2.13.0"
ARG PIP_TORCH_ARGS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kvferry
# torch first and pinned: the package's own range would otherwise pick the newest release.
RUN /opt/kvferry/bin/pip install ${PIP_TORCH_ARGS} "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY statemachine/ statemachine/
COPY server/ server/
COPY client/ client/
COPY testing/ testing/
RUN /opt/kvferry/bin/pip install ".[server,console,cuda]"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kvferry && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kvferry
COPY --from=build /opt/kvferry /opt/kvferry
ENV PATH=/opt/kvferry/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
# gRPC, then /metrics (the chart's server.grpcPort and server.metricsPort).
EXPOSE 50051 9400
ENTRYPOINT ["kvferry"]
CMD ["serve", "--host=0.0.0.0"]
