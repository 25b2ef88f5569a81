// Package compose holds levee's compose cluster (docker-compose.yaml: three
// levee nodes and a three-member etcd) and, behind the docker build tag, the
// failure suite that runs faults against it: partitions, a hung node, kills,
// a rolling restart, the etcd leader killed and etcd's quorum lost, and a
// memory-limited node under a flood of distinct keys.
//
//	deploy/docker/build.sh && go test -tags docker -count=1 -v -timeout 20m ./deploy/compose/
//
// README.md here says what the suite measures, the bounds it holds each fault
// to and why; ci.sh is the step .ci/run runs.
package compose
