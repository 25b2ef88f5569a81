package node

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// readsEOF reports whether the server closed c: a read returns EOF (or a
// reset) rather than timing out. A read that times out means the
// connection is still held open.
func readsEOF(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

// TestLimitConnsClosesPastTheBound: with a bound of two, a third
// connection is closed when accepted, and a slot freed by a closed
// connection is taken by the next.
func TestLimitConnsClosesPastTheBound(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := limitConns(inner, 2)
	defer lis.Close()
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	a, b := dial(), dial()
	sa, sb := <-accepted, <-accepted
	c := dial()
	if !readsEOF(t, c, 30*time.Second) {
		t.Fatal("third connection past a bound of two was not closed")
	}
	if readsEOF(t, a, 50*time.Millisecond) || readsEOF(t, b, 50*time.Millisecond) {
		t.Fatal("a connection within the bound was closed")
	}
	// Closing twice gives back one slot, not two.
	_ = sa.Close()
	_ = sa.Close()
	d := dial()
	select {
	case sd := <-accepted:
		defer sd.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the slot of a closed connection was not given back")
	}
	if readsEOF(t, d, 50*time.Millisecond) {
		t.Fatal("a connection taking a freed slot was closed")
	}
	e := dial()
	if !readsEOF(t, e, 30*time.Second) {
		t.Fatal("a connection past the bound after one close was not closed: a double close gave back two slots")
	}
	_ = sb
}

// TestNodeClosesIdleAndExcessConnections runs a node with a short
// MaxConnectionIdle and a bound of two connections: an HTTP/2 client that
// opens a connection and sends nothing more gets GOAWAY and then EOF, and
// while two connections are open a third is closed at once, and counted
// in /metrics.
func TestNodeClosesIdleAndExcessConnections(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			GRPCAddr:          "127.0.0.1:0",
			MetricsAddr:       "127.0.0.1:0",
			MaxConnections:    2,
			MaxConnectionIdle: 200 * time.Millisecond,
		}, func(a Addrs) { ready <- a })
	}()
	var addrs Addrs
	select {
	case addrs = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run returned before it was ready: %v", err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// An idle HTTP/2 connection: the preface and empty settings, then
	// nothing. The server must send GOAWAY and close it.
	idle, err := net.Dial("tcp", addrs.GRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(idle, bufio.NewReader(idle))
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(30 * time.Second))
	goaway := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("idle connection still open (GOAWAY seen: %v)", goaway)
			}
			break // closed by the server
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			goaway = true
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				_ = fr.WritePing(true, f.Data)
			}
		}
	}
	if !goaway {
		t.Error("idle connection closed without GOAWAY")
	}

	// Two raw connections that never send the preface hold both slots
	// (gRPC waits far longer than this test for it); a third is refused.
	for range 2 {
		c, err := net.Dial("tcp", addrs.GRPC)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	var third net.Conn
	// The first idle connection's slot is given back when gRPC closes it,
	// which may lag the client's EOF slightly: retry until a third is
	// refused.
	for i := 0; ; i++ {
		if third, err = net.Dial("tcp", addrs.GRPC); err != nil {
			t.Fatal(err)
		}
		if readsEOF(t, third, time.Second) {
			break
		}
		_ = third.Close()
		if i == 30 {
			t.Fatal("a connection past --max-connections 2 was held open")
		}
	}
	_ = third.Close()
	if got := labelled(t, addrs.Metrics, "levee_grpc_connections_refused_total"); got < 1 {
		t.Errorf("levee_grpc_connections_refused_total = %v after a refused connection, want >= 1", got)
	}
	if got := labelled(t, addrs.Metrics, "levee_grpc_connections "); got != 2 {
		t.Errorf("levee_grpc_connections = %v while two connections hold both slots, want 2", got)
	}
}
