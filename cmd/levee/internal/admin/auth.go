package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/levee-dev/levee/cmd/levee/internal/tlsfiles"
	leveev1 "github.com/levee-dev/levee/proto/levee/v1"
)

// MinTokenLen is the shortest bearer token a token file may hold.
const MinTokenLen = 16

// Anonymous is the author recorded for changes made without credentials,
// which only a loopback listener with no authentication configured allows.
const Anonymous = "anonymous"

// token is one entry of a token file. Only the token's hash is kept, so
// that comparisons take the same time whatever the token's length.
type token struct {
	name string
	hash [sha256.Size]byte
}

// loadTokens reads a token file: one "name:token" per line; blank lines and
// lines starting with '#' are ignored. The name is the identity recorded as
// the author of changes made with the token. Names must be unique and
// tokens at least MinTokenLen characters long.
func loadTokens(path string) ([]token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("admin: token file: %w", err)
	}
	return parseTokens(path, data)
}

func parseTokens(path string, data []byte) ([]token, error) {
	var out []token
	names := map[string]int{}
	hashes := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, tok, ok := strings.Cut(line, ":")
		name, tok = strings.TrimSpace(name), strings.TrimSpace(tok)
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("admin: token file %s:%d: want \"name:token\"", path, n)
		case strings.ContainsAny(name, " \t"):
			return nil, fmt.Errorf("admin: token file %s:%d: name %q contains a space", path, n, name)
		case len(tok) < MinTokenLen:
			return nil, fmt.Errorf("admin: token file %s:%d: the token of %q is shorter than %d characters (generate one with: head -c 32 /dev/urandom | base64)", path, n, name, MinTokenLen)
		}
		if prev, dup := names[name]; dup {
			return nil, fmt.Errorf("admin: token file %s:%d: name %q already used on line %d", path, n, name, prev)
		}
		h := sha256.Sum256([]byte(tok))
		if prev, dup := hashes[h]; dup {
			return nil, fmt.Errorf("admin: token file %s:%d: the token of %q is the same as line %d's", path, n, name, prev)
		}
		names[name], hashes[h] = n, n
		out = append(out, token{name: name, hash: h})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("admin: token file %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("admin: token file %s holds no tokens", path)
	}
	return out, nil
}

// authenticator decides who a caller is and whether it may call a method.
//
// The rules: a caller is identified by a verified client certificate whose
// common name or DNS name is on the allowed list, or by a bearer token from
// the token file. Writes always need an identity, unless no authentication
// is configured at all, which New allows only on a loopback listener. Reads
// need one too, except on a loopback listener.
type authenticator struct {
	tokens   []token
	allowed  map[string]bool // client certificate names; nil without mTLS
	loopback bool
}

// configured reports whether any authentication is configured.
func (a *authenticator) configured() bool { return len(a.tokens) > 0 || a.allowed != nil }

// readMethods may be called without credentials on a loopback listener.
var readMethods = map[string]bool{
	leveev1.AdminService_GetConfig_FullMethodName:     true,
	leveev1.AdminService_DiffConfig_FullMethodName:    true,
	leveev1.AdminService_History_FullMethodName:       true,
	leveev1.AdminService_ListOverrides_FullMethodName: true,
	leveev1.AdminService_Status_FullMethodName:        true,
	leveev1.AdminService_Explain_FullMethodName:       true,
}

// identityKey carries the caller's identity in a request context.
type identityKey struct{}

// Identity returns the caller's identity set by the authenticator: a token
// name, a client certificate name, or Anonymous.
func Identity(ctx context.Context) string {
	id, _ := ctx.Value(identityKey{}).(string)
	return id
}

// identify returns the caller's identity, "" if it gave no credentials, or
// an error for credentials that are wrong.
func (a *authenticator) identify(ctx context.Context) (string, error) {
	if a.allowed != nil {
		if leaf := tlsfiles.VerifiedClient(ctx); leaf != nil {
			for _, n := range tlsfiles.Names(leaf) {
				if a.allowed[n] {
					return n, nil
				}
			}
			return "", status.Errorf(codes.PermissionDenied,
				"client certificate %q is not on the allowed client list (--admin-allowed-clients)", leaf.Subject.CommonName)
		}
	}
	if len(a.tokens) > 0 {
		md, _ := metadata.FromIncomingContext(ctx)
		vals := md.Get("authorization")
		if len(vals) == 0 {
			return "", nil
		}
		scheme, tok, ok := strings.Cut(vals[0], " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			return "", status.Error(codes.Unauthenticated, `malformed authorization header: want "Bearer <token>"`)
		}
		h := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		match := -1
		for i := range a.tokens {
			// No early exit: the time taken does not depend on which
			// token, if any, matched.
			if subtle.ConstantTimeCompare(h[:], a.tokens[i].hash[:]) == 1 {
				match = i
			}
		}
		if match < 0 {
			return "", status.Error(codes.Unauthenticated, "invalid bearer token")
		}
		return a.tokens[match].name, nil
	}
	return "", nil
}

// authorize returns ctx with the caller's identity, or the error to answer
// with.
func (a *authenticator) authorize(ctx context.Context, method string) (context.Context, error) {
	id, err := a.identify(ctx)
	if err != nil {
		return nil, err
	}
	if id == "" {
		if a.configured() && (!readMethods[method] || !a.loopback) {
			return nil, status.Error(codes.Unauthenticated,
				"authentication required: give a bearer token (levee ctl --token-file) or a client certificate")
		}
		id = Anonymous
	}
	return context.WithValue(ctx, identityKey{}, id), nil
}

func (a *authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// stream guards any streaming method as a write; the admin service has
// none today, so that one added later is not left open by mistake.
func (a *authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := a.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
