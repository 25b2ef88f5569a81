package statuspage

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/levee-dev/levee/shed"
)

//go:embed assets
var assets embed.FS

// Source builds the document for one request.
type Source func(ctx context.Context) Status

// Register serves /status, its assets under /status/ and /status.json on
// mux.
func Register(mux *http.ServeMux, src Source) error {
	for _, a := range []struct{ pattern, file, ctype string }{
		{"GET /status", "index.html", "text/html; charset=utf-8"},
		{"GET /status/style.css", "style.css", "text/css; charset=utf-8"},
		{"GET /status/app.js", "app.js", "text/javascript; charset=utf-8"},
	} {
		data, err := assets.ReadFile("assets/" + a.file)
		if err != nil {
			return fmt.Errorf("status page: %w", err)
		}
		mux.HandleFunc(a.pattern, func(w http.ResponseWriter, _ *http.Request) {
			h := w.Header()
			h.Set("Content-Type", a.ctype)
			// Nothing but the node itself: the page works offline and
			// cannot be made to load anything else.
			h.Set("Content-Security-Policy", csp)
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Cache-Control", "no-cache")
			_, _ = w.Write(data)
		})
	}
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		st := src(ctx)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(st)
	})
	return nil
}

const csp = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// LevelOf describes a threshold level.
func LevelOf(l shed.Level) Level {
	out := Level{Level: int(l), Text: l.String()}
	switch {
	case l == 0:
		out.Text = "all"
		out.Priority, out.Cohort = shed.Sheddable.String(), 0
	case l > shed.MaxLevel:
		out.Priority, out.Cohort = "none", 0
	default:
		out.Priority, out.Cohort = l.Priority().String(), int(l.Cohort())
	}
	return out
}

// Hist converts points for the document.
func Hist(ps []Point) []HistPoint {
	out := make([]HistPoint, len(ps))
	for i, p := range ps {
		out[i] = HistPoint{T: p.At, ThresholdLevel: int(p.Threshold), AdmittedPerSecond: p.AdmittedPerSecond, RefusedPerSecond: p.RefusedPerSecond}
	}
	return out
}
