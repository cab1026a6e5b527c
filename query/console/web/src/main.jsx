// The keytrail console: a small single-page app over the REST API. Pages are addressed by
// the URL's hash (#/key/key_acme_0007), so every view can be bookmarked and shared, and the
// server only ever serves the same few static files.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { api, getToken, onUnauthenticated, setToken } from "./api.js";
import { ErrorBox, href, Loading, useRoute } from "./ui.jsx";
import { SearchPage } from "./pages/search.jsx";
import { KeyPage } from "./pages/key.jsx";
import { RotationPage } from "./pages/rotation.jsx";
import { SpendPage } from "./pages/spend.jsx";
import { AnomaliesPage } from "./pages/anomalies.jsx";
import { AuditPage } from "./pages/audit.jsx";

const NAV = [
  ["search", "Search"],
  ["spend", "Spend & budgets"],
  ["anomalies", "Anomalies"],
  ["audit", "Audit trail"],
];

function SignIn({ failure, onSignIn }) {
  const [value, setValue] = useState("");
  return (
    <main class="signin">
      <h1>keytrail console</h1>
      {failure ? <ErrorBox error={failure} /> : null}
      <form
        data-test="signin"
        onSubmit={(e) => {
          e.preventDefault();
          if (value.trim()) onSignIn(value.trim());
        }}
      >
        <label class="field wide">
          <span>API token (the same bearer token scripts use)</span>
          <input type="password" autocomplete="off" data-test="token" value={value} onInput={(e) => setValue(e.currentTarget.value)} />
        </label>
        <button type="submit">Sign in</button>
      </form>
      <p class="muted">
        The token is kept in this tab only (sessionStorage) and sent as <code>Authorization: Bearer</code> to this server's
        API; closing the tab forgets it. With a client certificate the server verifies, no token is needed. Every view is
        recorded in the query audit log.
      </p>
    </main>
  );
}

function App() {
  const route = useRoute();
  // auth: "checking" | "token" | "cert" | "signed-out"
  const [auth, setAuth] = useState(getToken() ? "token" : "checking");
  const [failure, setFailure] = useState(null);

  useEffect(() => {
    onUnauthenticated((err) => {
      setToken("");
      setFailure(err);
      setAuth("signed-out");
    });
  }, []);

  useEffect(() => {
    if (auth !== "checking") return;
    // No token: the browser may hold a client certificate the server verifies. One cheap
    // call tells; a 401 means a token is needed.
    api("/v1/keys", { page_size: 1 }).then(
      () => setAuth("cert"),
      (err) => {
        if (err.kind !== "auth") setFailure(err);
        setAuth("signed-out");
      },
    );
  }, [auth]);

  if (auth === "checking") return <Loading what="the console (checking for a client certificate)" />;
  if (auth === "signed-out")
    return (
      <SignIn
        failure={failure}
        onSignIn={(token) => {
          setToken(token);
          setFailure(null);
          setAuth("token");
        }}
      />
    );

  const signOut = () => {
    setToken("");
    setFailure(null);
    setAuth("signed-out");
  };
  const current = route.page === "key" || route.page === "rotation" ? "search" : route.page;
  let page;
  switch (route.page) {
    case "key":
      page = <KeyPage id={route.arg} params={route.params} />;
      break;
    case "rotation":
      page = <RotationPage id={route.arg} params={route.params} />;
      break;
    case "spend":
      page = <SpendPage params={route.params} />;
      break;
    case "anomalies":
      page = <AnomaliesPage params={route.params} />;
      break;
    case "audit":
      page = <AuditPage params={route.params} />;
      break;
    default:
      page = <SearchPage params={route.params} />;
  }
  return (
    <>
      <header class="top">
        <a class="brand" href={href("search")}>keytrail</a>
        <nav>
          {NAV.map(([p, text]) => (
            <a href={href(p)} class={p === current ? "active" : ""} data-test={"nav-" + p}>
              {text}
            </a>
          ))}
        </nav>
        <span class="who">
          {auth === "cert" ? "client certificate" : "token"} ·{" "}
          <button class="link" onClick={signOut} data-test="signout">
            sign out
          </button>
        </span>
      </header>
      <main key={route.page + "/" + route.arg}>{page}</main>
      <footer class="muted">All times UTC; hover a time for the exact millisecond. Data from this server's REST API (/v1/…).</footer>
    </>
  );
}

// The static "Loading…" placeholder goes: render adds to what the container holds.
const root = document.getElementById("app");
root.textContent = "";
render(<App />, root);
