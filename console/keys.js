// Keys (admin scope): create (the key is shown once), list, revoke.

import {get, post} from "./api.js";
import {field, fill, fmtTime, h, shortName, table} from "./dom.js";
import {errorBox, toast} from "./feedback.js";

const SCOPES = ["predict", "jobs", "read", "admin"];

export async function showKeys(main, params) {
  const showRevoked = params.get("revoked") === "1";
  const tenant = params.get("tenant") || "";
  const {keys, next_page_token: next} = await get("/v1/keys",
    {tenant, show_revoked: showRevoked, page_size: 100, page_token: params.get("page") || ""});
  const created = h("div", {id: "key-created", "aria-live": "polite"});
  const list = table(["Key", "Tenant", "Name", "Scopes", "Rate", "Hint", "Created", ""], keys, (key) =>
    h("tr", {class: "key-row", dataset: {key: shortName(key.name)}},
      h("td", {}, h("code", {}, shortName(key.name))), h("td", {}, key.tenant), h("td", {}, key.display_name),
      h("td", {}, (key.scopes || []).join(", ")),
      h("td", {}, key.rate_per_s ? `${key.rate_per_s}/s, burst ${key.burst}` : "default"),
      h("td", {}, h("code", {}, key.hint)), h("td", {}, fmtTime(key.create_time)),
      h("td", {}, key.revoke_time ? `revoked ${fmtTime(key.revoke_time)}` : h("button", {type: "button", class: "danger",
        "aria-label": `Revoke key ${shortName(key.name)}`, onclick: async (event) => {
          if (!confirm(`Revoke ${key.name} (${key.tenant})? Calls with it stop working.`)) return;
          try {
            await post(`/v1/${key.name}:revoke`, {});
            toast(`revoked ${key.name}`);
            event.target.replaceWith(document.createTextNode("revoked"));
          } catch (error) { fill(created, errorBox(error)); }
        }}, "Revoke"))), "API keys");
  const filter = h("form", {class: "row", id: "keys-filter"},
    field("Tenant", h("input", {id: "keys-tenant", name: "tenant", value: tenant})),
    field("Show revoked", h("input", {id: "keys-revoked", name: "revoked", type: "checkbox", value: "1", checked: showRevoked})),
    h("button", {type: "submit"}, "List"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/keys?${new URLSearchParams(new FormData(filter))}`;
  });
  fill(main, h("h1", {}, "API keys"), createForm(created), created, filter, list,
    next ? h("nav", {class: "pager"}, h("a", {href: `#/keys?tenant=${encodeURIComponent(tenant)}&page=${encodeURIComponent(next)}`}, "More →")) : null);
}

function createForm(created) {
  const tenant = h("input", {id: "key-tenant", type: "text", required: true, placeholder: "acme"});
  const name = h("input", {id: "key-name", type: "text", placeholder: "ci pipeline"});
  const rate = h("input", {id: "key-rate", type: "number", min: 0, step: "any", placeholder: "default"});
  const burst = h("input", {id: "key-burst", type: "number", min: 0, placeholder: "twice the rate"});
  const boxes = SCOPES.map((scope) => h("input", {type: "checkbox", id: `key-scope-${scope}`, value: scope, checked: scope !== "admin"}));
  const form = h("form", {class: "card", id: "key-form"},
    h("h2", {}, "Create a key"),
    h("div", {class: "row"}, field("Tenant", tenant), field("Name", name), field("Rate per second", rate), field("Burst", burst)),
    h("fieldset", {}, h("legend", {}, "Scopes"), boxes.map((box) => h("label", {class: "check"}, box, ` ${box.value}`))),
    h("button", {type: "submit", id: "key-create"}, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await post("/v1/keys", {
        tenant: tenant.value.trim(), display_name: name.value.trim(),
        scopes: boxes.filter((b) => b.checked).map((b) => b.value),
        rate_per_s: Number(rate.value) || 0, burst: Number(burst.value) || 0,
      });
      const secret = h("code", {id: "new-api-key", class: "secret"}, answer.api_key);
      fill(created, h("div", {class: "card notice", role: "alert"},
        h("p", {}, h("strong", {}, `Key ${answer.key.name} for ${answer.key.tenant}: `), "copy it now, it is shown only once."),
        h("p", {}, secret, " ", h("button", {type: "button", onclick: () => navigator.clipboard.writeText(answer.api_key).then(() => toast("copied"))}, "Copy")),
        h("p", {}, h("a", {href: "#/keys", onclick: () => fill(created)}, "Done: list the keys"))));
      form.reset();
    } catch (error) {
      fill(created, errorBox(error));
    }
  });
  return form;
}
