// Package console serves keytrail's web console: a small single-page app (Preact and uPlot,
// bundled by esbuild from web/src into web/dist, which is committed) embedded in the binary.
//
// Guarantee: the console is static files only. It holds no credentials and reads no data of
// its own: the page calls the same REST API scripts call (/v1/...), with the token the user
// pastes (kept in the tab's sessionStorage) or the browser's verified client certificate, so
// every view is authenticated, scoped to the caller's projects and recorded in the query
// audit log like any other call. Nothing is loaded from outside the server at run time, and
// the Content-Security-Policy on every file keeps it that way.
package console
