// The console's shell: sign-in state, the navigation the key's scopes allow, and hash routing
// (#/models, #/jobs/<id>, #/predictions?model=...). The key never enters a URL.

import {apiKey, scopes, signOut} from "./api.js";
import {errorBox} from "./feedback.js";
import {fill, h} from "./dom.js";
import {showSignIn} from "./signin.js";
import {showModels, showModel} from "./models.js";
import {showJobs, showJob} from "./jobs.js";
import {showPredictions, showPrediction} from "./predictions.js";
import {showStats} from "./stats.js";
import {showKeys} from "./keys.js";

/** Pages in the navigation, with the scopes that may see them (admin sees all). */
const PAGES = [
  {path: "models", title: "Models", scopes: ["read"], show: showModels},
  {path: "jobs", title: "Jobs", scopes: ["jobs", "read"], show: showJobs},
  {path: "predictions", title: "Predictions", scopes: ["read"], show: showPredictions},
  {path: "stats", title: "Stats", scopes: ["read"], show: showStats},
  {path: "keys", title: "Keys", scopes: ["admin"], show: showKeys},
];
const DETAILS = {models: showModel, jobs: showJob, predictions: showPrediction};

let leaving = new AbortController();

function allowedPages() {
  const have = scopes();
  return PAGES.filter((page) => have.has("admin") || page.scopes.some((scope) => have.has(scope)));
}

function renderNav(current) {
  const nav = document.getElementById("nav");
  if (!apiKey() || !current) return fill(nav);
  const links = allowedPages().map((page) =>
    h("a", {href: `#/${page.path}`, "aria-current": page.path === current ? "page" : null}, page.title));
  const out = h("button", {type: "button", class: "link", onclick: () => { signOut(); location.hash = "#/signin"; }},
    "Sign out");
  fill(nav, links, h("span", {class: "scopes", title: "this key's scopes"}, [...scopes()].join(" · ")), out);
}

/** Shows the page the hash names. Each page gets the main element, its parameters and an
 * AbortSignal that fires when the user leaves it (it ends streams such as WatchJob). */
async function route() {
  leaving.abort();
  leaving = new AbortController();
  const main = document.getElementById("main");
  const [path, search] = location.hash.replace(/^#\/?/, "").split("?");
  const [page, ...rest] = path.split("/");
  const id = rest.map(decodeURIComponent).join("/");
  const params = new URLSearchParams(search || "");
  if (!apiKey() || page === "signin") {
    renderNav("");
    return showSignIn(main);
  }
  const pages = allowedPages();
  const known = pages.find((p) => p.path === page) || pages[0];
  if (known.path !== page) {
    location.replace(`#/${known.path}`);
    return;
  }
  renderNav(known.path);
  const show = id && DETAILS[page] ? (m, p, s) => DETAILS[page](m, id, p, s) : known.show;
  // Each visit renders into a view of its own: a page the user already left may still finish
  // loading, and then fills a view that is no longer on screen.
  const view = h("div", {class: "view"}, h("p", {class: "muted"}, "Loading…"));
  fill(main, view);
  try {
    await show(view, params, leaving.signal);
  } catch (error) {
    if (error.name === "AbortError") return;
    fill(view, errorBox(error));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
if (document.readyState !== "loading") route();
