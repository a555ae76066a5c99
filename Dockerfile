# syntax=docker/dockerfile:1
# eplb images. The build steps are deploy/scripts/install-deps.sh and deploy/scripts/build.sh,
# the same scripts the README's commands and CI run.
#
#   docker build -t eplb-planner .                        # the planner (the default target)
#   docker build --target worker -t eplb-worker .         # runtime: worker example, CUDA, NCCL
#   docker build --target worker-build -t eplb-worker-build .  # to compile an engine against
#                                                         # /opt/eplb (headers, static libraries)
#
# The planner image runs eplb-planner as user 10001 with /etc/eplb/planner.flags
# (deploy/config/planner.flags); gRPC on 50051, Prometheus metrics on 9464, state in the volume
# /var/lib/eplb. See deploy/kubernetes/ for manifests.

ARG DEBIAN=debian:12

# ---- build: the planner and eplbctl ---------------------------------------------------------------
FROM ${DEBIAN} AS build
WORKDIR /src
COPY deploy/scripts/install-deps.sh deploy/scripts/
RUN deploy/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY CMakeLists.txt ./
COPY proto proto
COPY core core
COPY transfer transfer
COPY server server
COPY client client
COPY agent agent
COPY cli cli
COPY examples examples
COPY deploy/scripts deploy/scripts
RUN deploy/scripts/build.sh --image --dir build-image

# ---- worker-build: the agent libraries and the worker example against CUDA and NCCL ---------------
FROM build AS worker-build
RUN deploy/scripts/install-cuda.sh && rm -rf /var/lib/apt/lists/*
RUN deploy/scripts/build.sh --worker --dir build-worker \
 && deploy/scripts/stage-sdk.sh build-worker /opt/eplb

# ---- worker: the runtime a serving image runs on (FROM eplb-worker; compile in worker-build) -----
FROM ${DEBIAN}-slim AS worker
COPY deploy/scripts/install-deps.sh deploy/scripts/install-cuda.sh /tmp/eplb/
RUN /tmp/eplb/install-deps.sh --runtime && /tmp/eplb/install-cuda.sh --runtime \
 && rm -rf /var/lib/apt/lists/* /tmp/eplb
COPY --from=worker-build /opt/eplb /opt/eplb
COPY --from=worker-build /src/build-worker/bin/eplb-worker-example /src/build-worker/bin/eplbctl \
     /src/build-worker/bin/eplbctl-rpc /usr/local/bin/
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin eplb
USER 10001
ENV EPLB_PLANNER=eplb-planner:50051
ENTRYPOINT ["/usr/local/bin/eplb-worker-example"]

# ---- planner: the runtime image (default target) --------------------------------------------------
FROM ${DEBIAN}-slim AS planner
COPY deploy/scripts/install-deps.sh /tmp/eplb/
RUN /tmp/eplb/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/eplb
RUN useradd --system --uid 10001 --home-dir /var/lib/eplb --shell /usr/sbin/nologin eplb \
 && mkdir -p /var/lib/eplb /etc/eplb && chown 10001:10001 /var/lib/eplb
COPY --from=build /src/build-image/bin/eplb-planner /src/build-image/bin/eplbctl \
     /src/build-image/bin/eplbctl-rpc /usr/local/bin/
COPY deploy/config/planner.flags /etc/eplb/planner.flags
USER 10001
WORKDIR /var/lib/eplb
VOLUME /var/lib/eplb
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/eplb-planner"]
CMD ["--flagfile=/etc/eplb/planner.flags"]
