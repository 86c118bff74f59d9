// Sign in by pasting an API key: its scopes are found with side-effect-free probes (api.js), and
// the key is kept in this tab's sessionStorage (gone when the tab closes; never in a URL or cookie).

import {probeScopes, signIn} from "./api.js";
import {fill, field, h} from "./dom.js";
import {errorBox} from "./feedback.js";

export function showSignIn(main) {
  const key = h("input", {id: "api-key", type: "password", name: "api-key", autocomplete: "off", required: true,
    spellcheck: "false", placeholder: "fy_… or the dev key from .ferry/dev-api-key"});
  const status = h("div", {"aria-live": "polite"});
  const form = h("form", {class: "card narrow", id: "signin-form"},
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key. ", h("code", {}, "ferry up"), " prints the development key (also in ",
      h("code", {}, ".ferry/dev-api-key"), "). The key stays in this browser tab only."),
    field("API key", key),
    h("button", {type: "submit"}, "Sign in"),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(status, h("p", {class: "muted"}, "Checking the key…"));
    try {
      const value = key.value.trim();
      signIn(value, await probeScopes(value));
      location.hash = "#/models";
    } catch (error) {
      fill(status, errorBox(error));
    }
  });
  fill(main, form);
  key.focus();
}
