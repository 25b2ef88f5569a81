# etcd for levee's compose example and failure tests: the etcd server and
# etcdctl built by deploy/docker/build.sh from etcd's Go modules at the
# version levee's go.mod pins, on scratch. Not a production etcd image.
FROM scratch

ARG VERSION=dev
LABEL org.opencontainers.image.title="levee-etcd" \
      org.opencontainers.image.description="etcd server and etcdctl built from go.etcd.io/etcd for levee's tests" \
      org.opencontainers.image.version="${VERSION}"

COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/etcd/
COPY etcd etcdctl /usr/local/bin/

USER 65532:65532
WORKDIR /var/lib/etcd
VOLUME /var/lib/etcd
ENV ETCD_DATA_DIR=/var/lib/etcd \
    TMPDIR=/tmp
EXPOSE 2379 2380

# etcdctl's default endpoint is 127.0.0.1:2379: it answers when etcd
# listens on every address or on loopback.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["/usr/local/bin/etcdctl", "endpoint", "health", "--command-timeout=2s"]
ENTRYPOINT ["/usr/local/bin/etcd"]
