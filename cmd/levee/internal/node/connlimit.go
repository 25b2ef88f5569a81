package node

import (
	"net"
	"sync"
	"sync/atomic"
)

// limitListener bounds the connections a node holds open at once. A
// connection past the bound is accepted and closed at once rather than
// left in the kernel's backlog: its client sees the refusal and can go to
// another node, instead of hanging until its own deadline. Each open
// connection costs a file descriptor and, in gRPC, a few goroutines, so
// the bound is what keeps clients that connect and never close from
// exhausting the process.
type limitListener struct {
	net.Listener
	max     int64 // <= 0: unbounded
	open    atomic.Int64
	refused atomic.Uint64
}

// limitConns wraps lis so that at most max connections are open at once;
// max <= 0 leaves it unbounded (the connections are still counted, for
// the metrics).
func limitConns(lis net.Listener, max int) *limitListener {
	return &limitListener{Listener: lis, max: int64(max)}
}

// Open is the number of connections accepted and not yet closed.
func (l *limitListener) Open() int64 { return l.open.Load() }

// Refused is the number of connections closed at once because the bound
// was reached.
func (l *limitListener) Refused() uint64 { return l.refused.Load() }

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); l.max <= 0 || n <= l.max {
			return &limitedConn{Conn: c, release: func() { l.open.Add(-1) }}, nil
		}
		l.open.Add(-1)
		l.refused.Add(1)
		_ = c.Close()
	}
}

// limitedConn gives its slot back once, however often it is closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
