# levee's image: one static binary on scratch. No registry is needed: the
# binary and the small root file system are made on the host by
# deploy/docker/build.sh, which builds this file with them as its context.
FROM scratch

ARG VERSION=dev
LABEL org.opencontainers.image.title="levee" \
      org.opencontainers.image.description="Distributed rate limiter and load shedder (gRPC sidecar)" \
      org.opencontainers.image.version="${VERSION}"

# /etc/passwd and /etc/group name the unprivileged user; /tmp is there for
# anything that asks os.TempDir.
COPY rootfs/ /
# The data volume: the embedded etcd of a development node keeps its data
# here (--data-dir). A node using an external etcd writes nothing.
COPY --chown=65532:65532 data/ /var/lib/levee/
COPY levee /levee

USER 65532:65532
WORKDIR /var/lib/levee
VOLUME /var/lib/levee

# Inside a container the node listens on every address; the admin API stays
# on loopback unless it is given authentication (see levee serve --help).
# The probe below reads the same variables, so set levee's configuration
# through LEVEE_* variables rather than flags and the health check follows.
ENV LEVEE_GRPC_ADDR=0.0.0.0:8081 \
    LEVEE_METRICS_ADDR=0.0.0.0:9090 \
    LEVEE_DATA_DIR=/var/lib/levee \
    TMPDIR=/tmp
EXPOSE 8081 9090

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["/levee", "probe"]
# With no arguments the container is one standalone node; a clustered node
# is given `serve` and its etcd endpoints and advertise address (a node
# listening on every address cannot guess which one its peers reach).
ENTRYPOINT ["/levee"]
CMD ["serve", "--standalone"]
