package console

import (
	"embed"
	"io/fs"
	"net/http"
)

// Path is where the console is mounted.
const Path = "/ui/"

//go:embed web/dist
var dist embed.FS

// csp allows only this server's own scripts, styles and API: no inline script, no third-party
// origin, no framing. uPlot sizes its elements through the style attribute, hence
// 'unsafe-inline' for styles only.
const csp = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the console's files under Path. The files are public (they hold no data);
// the API calls the page makes carry the credentials.
func Handler() http.Handler {
	files, err := fs.Sub(dist, "web/dist")
	if err != nil {
		panic("console: embedded web/dist missing: " + err.Error()) // a build problem, caught by every test
	}
	fileServer := http.StripPrefix(Path, http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// The file names carry no version: revalidate each time so an upgrade is seen at once.
		h.Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	})
}

// Mount serves the console under Path on mux and sends / there.
func Mount(mux *http.ServeMux) {
	mux.Handle(Path, Handler())
	mux.Handle("GET /{$}", http.RedirectHandler(Path, http.StatusFound))
}
