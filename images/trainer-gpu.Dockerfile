# carmesh trainer-gpu: training jobs and their workers (TensorFlow with CUDA).
# Build from the repository root; `make images` passes VERSION (docs/deploy.md):
#   docker build -f images/trainer-gpu.Dockerfile --build-arg VERSION=0.2.0 -t carmesh/trainer:0.2.0-gpu .
ARG BASE=python:3.11-slim-bookworm

# Dependencies only: this stage changes only with pyproject.toml, so code changes reuse it.
FROM ${BASE} AS deps
ARG VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY pyproject.toml images/requirements.py /src/
# The version the tag and labels carry must be the one being built.
RUN test "$(python3 /src/requirements.py --version /src/pyproject.toml)" = "${VERSION}" \
    || { echo "VERSION=${VERSION} is not pyproject.toml's version" >&2; exit 1; }
# A wheelhouse in a build cache: a changed pyproject.toml downloads only what is new.
RUN --mount=type=cache,target=/root/.cache/carmesh-wheels \
    python3 -m venv /opt/carmesh \
    && python3 /src/requirements.py /src/pyproject.toml trainer trainer-gpu > /src/requirements.txt \
    && /opt/carmesh/bin/pip wheel -q -w /root/.cache/carmesh-wheels -r /src/requirements.txt \
    && /opt/carmesh/bin/pip install -q --no-index -f /root/.cache/carmesh-wheels -r /src/requirements.txt \
    && echo /opt/carmesh-app > "$(/opt/carmesh/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/carmesh-app.pth"
# tensorflow-cpu and tensorflow are one Python module: exactly one may be installed.
RUN /opt/carmesh/bin/python -c "import importlib.metadata as m, sys; \
names = {d.metadata['Name'].lower() for d in m.distributions()}; \
sys.exit('tensorflow-cpu beside tensorflow' if 'tensorflow-cpu' in names else 0)"

# carmesh itself, into a folder of its own (on the venv's path through the .pth above), so
# the final image adds a small layer per code change instead of a new copy of the venv.
FROM deps AS build
RUN --mount=type=cache,target=/root/.cache/carmesh-wheels \
    /opt/carmesh/bin/pip wheel -q -w /root/.cache/carmesh-wheels "setuptools>=77" \
    && /opt/carmesh/bin/pip install -q --no-index -f /root/.cache/carmesh-wheels "setuptools>=77"
COPY README.md /src/
COPY carmesh /src/carmesh
COPY kit /src/kit
COPY trainer /src/trainer
COPY trainer_worker /src/trainer_worker
RUN /opt/carmesh/bin/pip install -q --no-deps --no-build-isolation --no-cache-dir --target /opt/carmesh-app /src

FROM ${BASE}
ARG VERSION
ARG REVISION=unknown
LABEL org.opencontainers.image.title="carmesh-trainer" \
      org.opencontainers.image.description="carmesh trainer-gpu: training jobs and their workers (TensorFlow with CUDA)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/carmesh/carmesh"
# uid/gid 10001: not root, and clear of the users a node or base image defines.
RUN groupadd --gid 10001 carmesh \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/carmesh --shell /usr/sbin/nologin carmesh \
    && mkdir -p /var/lib/carmesh && chown 10001:10001 /var/lib/carmesh
COPY --from=deps /opt/carmesh /opt/carmesh
COPY --from=build /opt/carmesh-app /opt/carmesh-app
# CUDA and cuDNN come from pip (nvidia-* wheels); the loader learns their folders here, so the
# base stays a plain Python image and the node's driver is all the host provides.
RUN find /opt/carmesh -type d -path "*/site-packages/nvidia/*" -name lib > /etc/ld.so.conf.d/carmesh-nvidia.conf \
    && ldconfig
# Read-only root filesystem: the daemon writes only to /tmp (HOME: library caches) and to the
# data volume, its working directory, where relative paths such as the jobs' folders land.
ENV PATH=/opt/carmesh/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CARMESH_TRAINER_HOST=0.0.0.0 \
    CARMESH_TRAINER_WORK_DIR=/var/lib/carmesh/trainer \
    MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/var/lib/carmesh"]
WORKDIR /var/lib/carmesh
USER 10001:10001
EXPOSE 50065 9465
ENTRYPOINT ["python", "-m", "trainer"]
