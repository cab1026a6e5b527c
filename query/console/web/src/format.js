// Formatting shared by every page. Times are always UTC; the exact instant, to the
// millisecond, is in the element's title (shown on hover).

export const int = (v) => (v === undefined || v === null || v === "" ? "0" : Number(v).toLocaleString("en-US"));

// money turns exact micro-units (an int64, a string in JSON) into a decimal string without
// going through a float: "16890000" -> "16.89".
export function money(micros) {
  let s = String(micros ?? "0");
  const neg = s.startsWith("-");
  if (neg) s = s.slice(1);
  s = s.padStart(7, "0");
  const whole = s.slice(0, -6).replace(/^0+(?=\d)/, "");
  let frac = s.slice(-6).replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return (neg ? "-" : "") + Number(whole).toLocaleString("en-US") + "." + frac;
}

export const pct = (x, digits = 1) => (Number(x) * 100).toFixed(digits) + "%";

// exact is an RFC 3339 time with at least millisecond digits, as given by the API (which may
// carry more).
export function exact(iso) {
  if (!iso) return "";
  const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/.exec(iso);
  if (!m) return iso;
  const frac = (m[2] || ".").slice(1).padEnd(3, "0");
  return m[1] + "." + frac + m[3];
}

// utc is the shown form: "2026-11-22 10:31:05".
export function utc(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  return d.toISOString().slice(0, 19).replace("T", " ");
}

// dur shows a protojson duration ("900s", "3725.5s") as "15m", "1h2m6s" (to the second).
export const dur = (s) => {
  let secs = Math.round(parseFloat(String(s || "0")));
  if (!secs) return "0s";
  let out = "";
  for (const [unit, n] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (secs >= n) {
      out += Math.floor(secs / n) + unit;
      secs %= n;
    }
  }
  return out;
};

// toProtoDuration reads "15m", "1h30m", "7d" (Go's units and d) into the seconds form
// protojson expects ("900s"); anything else is passed as typed for the server to refuse
// with a message naming the field.
export function toProtoDuration(s) {
  const text = s.trim();
  const units = { s: 1, m: 60, h: 3600, d: 86400 };
  let secs = 0;
  let rest = text;
  while (rest) {
    const m = /^(\d+(?:\.\d+)?)(s|m|h|d)/.exec(rest);
    if (!m) return text;
    secs += Number(m[1]) * units[m[2]];
    rest = rest.slice(m[0].length);
  }
  return text ? secs + "s" : "";
}

export const enumLabel = (v, prefix) => String(v || "").replace(prefix, "").toLowerCase().replace(/_/g, " ");

// Ranges the pages offer: the last N before now.
export const RANGES = {
  "30m": [30 * 60e3, "last 30 minutes"],
  "1h": [3600e3, "last hour"],
  "6h": [6 * 3600e3, "last 6 hours"],
  "24h": [24 * 3600e3, "last 24 hours"],
  "7d": [7 * 86400e3, "last 7 days"],
  "30d": [30 * 86400e3, "last 30 days"],
  "90d": [90 * 86400e3, "last 90 days"],
  "365d": [365 * 86400e3, "last 365 days"],
};

// rangeOptions are the named ranges as a Select's options.
export const rangeOptions = (...names) => names.map((n) => [n, RANGES[n][1]]);

export function lastRange(name, now = Date.now()) {
  const [ms] = RANGES[name] ?? RANGES["24h"];
  return { start: new Date(now - ms).toISOString(), end: new Date(now).toISOString() };
}

// chosenRange is from..to (RFC 3339) when from is given: pinned exactly, for a link that must
// show the same buckets later; otherwise the named range before now.
export const chosenRange = (name, from, to) => (from ? { start: from, end: to || new Date().toISOString() } : lastRange(name));

// parseUTC reads what a person types for an instant: RFC 3339, or "2026-11-22 10:31[:05[.123]]"
// taken as UTC. It returns an RFC 3339 string, "" for empty input, or null when unreadable.
export function parseUTC(v) {
  const s = (v || "").trim();
  if (!s) return "";
  const m = /^(\d{4}-\d\d-\d\d)(?:[T ](\d\d:\d\d(?::\d\d(?:\.\d+)?)?))?(Z|[+-]\d\d:\d\d)?$/i.exec(s);
  if (!m) return null;
  const d = new Date(m[1] + "T" + (m[2] || "00:00") + (m[2] && m[2].length === 5 ? ":00" : "") + (m[3] || "Z"));
  return isNaN(d) ? null : d.toISOString();
}

// shownUTC is an instant in the form parseUTC reads back, to the millisecond when it has any.
export function shownUTC(iso) {
  if (!iso) return "";
  const s = new Date(iso).toISOString().replace("T", " ").replace("Z", "");
  return s.endsWith(".000") ? s.slice(0, 19) : s;
}
