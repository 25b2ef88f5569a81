package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/levee-dev/levee/limiter"
	"github.com/levee-dev/levee/limiter/client"
)

// BenchmarkSidecarCheck is one levee.v1 check by the Go client against a
// real `levee serve --standalone`, over a Unix socket and over loopback
// TCP, in the same run: ns/op is the caller's latency (one caller; with
// /parallel, 8 callers a core), levee-cpu-ns/op the CPU the levee process
// spent per check (from /proc/<pid>/task/*/schedstat), client-cpu-ns/op
// the CPU of this process per check. Run it several times (-count 1, in a
// loop) so that the two networks interleave on a busy machine.
func BenchmarkSidecarCheck(b *testing.B) {
	if _, err := os.Stat("/proc/self/task"); err != nil {
		b.Skip("needs /proc")
	}
	bin := buildLeveeB(b)
	dir := b.TempDir()
	for _, tc := range []struct{ name, addr string }{
		{"unix", "unix://" + filepath.Join(dir, "levee.sock")},
		{"tcp", "127.0.0.1:0"},
	} {
		target, pid := startSidecar(b, bin, tc.addr)
		c, err := client.New(client.Config{Target: target, Budget: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		it := client.Inline("bench", limiter.Limit{Rate: 1 << 30, Period: time.Second})
		for range 1000 { // connect and warm up
			if d := c.Check(b.Context(), it); d.Err != nil {
				b.Fatal(d.Err)
			}
		}
		b.Run(tc.name, func(b *testing.B) {
			levee0, self0 := procCPU(b, pid), selfCPU(b)
			for b.Loop() {
				if d := c.Check(b.Context(), it); !d.Allowed || d.Err != nil {
					b.Fatal(d)
				}
			}
			b.ReportMetric(float64(procCPU(b, pid)-levee0)/float64(b.N), "levee-cpu-ns/op")
			b.ReportMetric(float64(selfCPU(b)-self0)/float64(b.N), "client-cpu-ns/op")
		})
		// Many callers at once, as a busy service makes them: CPU per check
		// with the connection's reads and writes shared.
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.SetParallelism(8)
			levee0, self0 := procCPU(b, pid), selfCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if d := c.Check(b.Context(), it); !d.Allowed || d.Err != nil {
						b.Error(d)
						return
					}
				}
			})
			b.ReportMetric(float64(procCPU(b, pid)-levee0)/float64(b.N), "levee-cpu-ns/op")
			b.ReportMetric(float64(selfCPU(b)-self0)/float64(b.N), "client-cpu-ns/op")
		})
		c.Close()
	}
}

func buildLeveeB(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "levee")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startSidecar runs a standalone levee on grpcAddr and returns the target
// it reports and its pid; it is killed when the benchmark ends.
func startSidecar(b *testing.B, bin, grpcAddr string) (string, int) {
	b.Helper()
	cmd := exec.Command(bin, "serve", "--standalone", "--grpc-addr", grpcAddr, "--metrics-addr=", "--admin-addr=",
		"--log-format", "json") // --procs auto, the default
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec struct{ Msg, GRPC string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "levee serving" {
				ready <- rec.GRPC
			}
		}
	}()
	select {
	case addr := <-ready:
		if !strings.HasPrefix(addr, "unix:") && strings.HasPrefix(grpcAddr, "unix:") {
			addr = grpcAddr
		}
		return addr, cmd.Process.Pid
	case <-time.After(30 * time.Second):
		b.Fatal("levee did not start")
	}
	return "", 0
}

// procCPU returns the CPU time, in nanoseconds, that process pid's threads
// have run.
func procCPU(b *testing.B, pid int) int64 {
	b.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("schedstat of %d: %v", pid, err)
	}
	var total int64
	for _, p := range tasks {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that exited
		}
		f := strings.Fields(string(data))
		if len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			total += n
		}
	}
	return total
}

func selfCPU(b *testing.B) int64 { return procCPU(b, os.Getpid()) }
