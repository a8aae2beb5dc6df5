# syntax=docker/dockerfile:1
# GPU image: `docker build -t imagine .` then
# `docker run --gpus all -e IMAGINE_DISCORD__TOKEN=... -v imagine-data:/data imagine`.
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

FROM ${CUDA_BASE} AS build
ARG TORCH_INDEX
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY cli cli
COPY bot bot
COPY backend backend
COPY storage storage
COPY config config
COPY migrations migrations
# The CUDA build of the pinned torch comes from PyTorch's index; the rest from PyPI.
RUN /opt/venv/bin/pip install --extra-index-url ${TORCH_INDEX} -c constraints.txt .

FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 imagine \
 && mkdir -p /data && chown imagine:imagine /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    IMAGINE_DATA_DIR=/data \
    HF_HOME=/data/hf \
    PYTHONUNBUFFERED=1
USER imagine
VOLUME ["/data"]
WORKDIR /data
ENTRYPOINT ["imagine"]
CMD ["bot"]
