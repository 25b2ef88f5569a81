package middleware_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"google.golang.org/grpc"

	"github.com/levee-dev/levee/limiter/client"
	"github.com/levee-dev/levee/limiter/client/sidecartest"
	"github.com/levee-dev/levee/limiter/middleware"
	"github.com/levee-dev/levee/shed"
	shedmw "github.com/levee-dev/levee/shed/middleware"
)

// An HTTP service limits each user to two posts a minute. Shedding (the
// guard) comes first, quotas second.
func ExampleLimiter_HTTP() {
	sc, err := sidecartest.Start(`
domain: web
descriptors:
  - key: user
    descriptors:
      - key: route
        rate_limit: {name: posts, unit: minute, requests_per_unit: 2}
`, sidecartest.Unix)
	if err != nil {
		log.Fatal(err)
	}
	defer sc.Close()
	c, err := client.New(client.Config{Target: sc.Target, Budget: time.Second, Now: sc.Clock.Now})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	quotas := middleware.New(c, middleware.Descriptor("web",
		middleware.Header("user", "X-User"), // set by the authentication in front
		middleware.Route("route"),
	), middleware.Options{})
	res, err := shed.New("web", shed.Config{})
	if err != nil {
		log.Fatal(err)
	}
	guard := shedmw.NewGuard(res, shedmw.GuardOptions{})

	mux := http.NewServeMux()
	mux.Handle("POST /posts", guard.HTTP(quotas.HTTP(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "posted\n")
	}))))

	for range 3 {
		req := httptest.NewRequest("POST", "/posts", nil)
		req.Header.Set("X-User", "alice")
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		fmt.Printf("%d RateLimit: %s Retry-After: %q\n", w.Code, w.Header().Get("RateLimit"), w.Header().Get("Retry-After"))
	}
	// Output:
	// 200 RateLimit: "posts";r=1;t=30 Retry-After: ""
	// 200 RateLimit: "posts";r=0;t=60 Retry-After: ""
	// 429 RateLimit: "posts";r=0;t=30 Retry-After: "30"
}

// A gRPC server limits calls per client address and method.
func ExampleLimiter_Unary() {
	c, err := client.New(client.Config{Target: "unix:///run/levee/levee.sock", Budget: 5 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	quotas := middleware.New(c, middleware.Descriptor("api",
		middleware.ClientIP("remote_address"),
		middleware.Route("method"),
	), middleware.Options{})
	// With a shed guard g: grpc.ChainUnaryInterceptor(g.Unary, quotas.Unary).
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(quotas.Unary), grpc.ChainStreamInterceptor(quotas.Stream))
	defer srv.Stop()
	// Register services on srv and Serve as usual.
}
