package node

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"time"
)

// unixPrefix marks a gRPC address that is a Unix domain socket, as gRPC's
// own targets do: "unix:///run/levee/levee.sock" (an absolute path) or
// "unix:levee.sock" (relative to the working directory).
const unixPrefix = "unix:"

// SocketMode is the permission of the Unix socket a node listens on: its
// owner and group may connect, others may not. Connecting to a socket needs
// write permission on it. The directory holding the socket should be no
// more open than this (levee does not create it), since the mode is set
// just after the socket is bound.
const SocketMode fs.FileMode = 0o660

// unixPath returns the socket path of a "unix:" address, and whether addr
// is one.
func unixPath(addr string) (string, bool) {
	rest, ok := strings.CutPrefix(addr, unixPrefix)
	if !ok {
		return "", false
	}
	if p, ok := strings.CutPrefix(rest, "//"); ok {
		return p, true
	}
	return rest, true
}

// listen opens the gRPC listener: TCP for "host:port", or a Unix domain
// socket for "unix:…". A socket file left by a node that died is removed
// first, but never a file that is not a socket or a socket something still
// answers on; the socket gets SocketMode, and closing the listener (as
// stopping the gRPC server does) removes it.
func listen(addr string) (net.Listener, error) {
	path, ok := unixPath(addr)
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, fmt.Errorf("listen on %q: the Unix socket path is empty (want unix:///path/to/levee.sock)", addr)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("socket %s: setting its mode: %w", path, err)
	}
	return lis, nil
}

// removeStaleSocket removes a socket file at path that nothing answers on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("socket %s: a file that is not a socket is in the way; levee will not remove it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("socket %s: another process is serving on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// checkGRPCAddr refuses a clustered node on a Unix socket that does not
// say how its peers reach it: the peer API is dialled over TCP, so the
// advertised address must be a TCP host:port.
func checkGRPCAddr(cfg Config) error {
	_, sock := unixPath(cfg.GRPCAddr)
	if cfg.Cluster == nil {
		return nil
	}
	if _, adv := unixPath(cfg.Cluster.AdvertiseAddr); adv {
		return fmt.Errorf("--advertise-addr %s: peers dial each other over TCP; give a host:port", cfg.Cluster.AdvertiseAddr)
	}
	if sock && cfg.Cluster.AdvertiseAddr == "" {
		return fmt.Errorf("--grpc-addr %s is a Unix socket, which other nodes cannot dial: give --advertise-addr, the TCP host:port at which peers reach this node's gRPC server, or run with --standalone", cfg.GRPCAddr)
	}
	return nil
}

// dialTarget is the gRPC target that reaches a listener: "unix://" and the
// path for a Unix socket, the host:port otherwise.
func dialTarget(a net.Addr) string {
	switch {
	case a.Network() != "unix":
		return a.String()
	case strings.HasPrefix(a.String(), "/"):
		return unixPrefix + "//" + a.String()
	}
	return unixPrefix + a.String()
}
