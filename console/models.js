// Models: every served model with what it takes and how it runs; a model's page tries it.

import {call, get, recordedError, scopes} from "./api.js";
import {barChart} from "./charts.js";
import {enumText, field, fill, fmtMs, h, shortName, table} from "./dom.js";
import {errorBox} from "./feedback.js";

function tensors(list) {
  return (list || []).map((t) => `${t.name} ${t.datatype} [${(t.shape || []).join(", ")}]`).join("; ");
}

function stateBadge(model) {
  const state = enumText(model.state, "MODEL_STATE_") || (model.ready ? "ready" : "loading");
  return h("span", {class: `badge state-${state.replaceAll(" ", "-")}`, title: model.state_message || null}, state);
}

export async function showModels(main) {
  const {models} = await get("/v1/models", {page_size: 1000});
  fill(main,
    h("h1", {}, "Models"),
    table(["Model", "State", "Task", "Inputs", "Outputs", "Device", "Instances", "Batch size"], models, (m) =>
      h("tr", {},
        h("td", {}, h("a", {href: `#/models/${encodeURIComponent(shortName(m.name))}`}, shortName(m.name)),
          h("div", {class: "muted small"}, m.display_name)),
        h("td", {}, stateBadge(m), m.state_message ? h("div", {class: "small"}, m.state_message) : null),
        h("td", {}, m.task),
        h("td", {}, tensors(m.inputs)),
        h("td", {}, tensors(m.outputs)),
        h("td", {}, m.device),
        h("td", {class: "num"}, m.instances),
        h("td", {class: "num"}, m.max_batch_size, m.batch_size_source ? h("div", {class: "muted small"}, m.batch_size_source) : null)),
    "Served models"));
}

export async function showModel(main, id) {
  const {model: m} = await get(`/v1/models/${encodeURIComponent(id)}`);
  const facts = [
    ["State", stateBadge(m)], ["Task", m.task], ["Version", m.version], ["Device", m.device],
    ["Inputs", tensors(m.inputs)], ["Outputs", tensors(m.outputs)], ["Labels", m.labels_count],
    ["Batch size", `${m.max_batch_size} (${m.batch_size_source || "configured"})`],
    ["Batch delay", fmtMs(m.max_batch_delay_ms)], ["Instances", m.instances], ["Queue bound", m.max_queue],
    ["Graph", m.graph || "—"],
    ["Members", (m.members || []).join(", ") || "—"],
  ];
  fill(main,
    h("p", {}, h("a", {href: "#/models"}, "← Models")),
    h("h1", {}, shortName(m.name)),
    h("p", {class: "muted"}, m.display_name, " — ", m.description),
    scopes().has("predict") || scopes().has("admin") ? tryIt(m) : h("p", {class: "muted"}, "This key has no predict scope: trying the model is off."),
    h("h2", {}, "How it is served"),
    h("dl", {class: "facts"}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("p", {}, h("a", {href: `#/stats?model=${encodeURIComponent(shortName(m.name))}`}, "Stats of this model"), " · ",
      h("a", {href: `#/predictions?model=${encodeURIComponent(shortName(m.name))}`}, "Its predictions")));
}

/** What kind of input the model takes, from its first input's name (image, text or payload). */
function inputKind(model) {
  const name = (model.inputs && model.inputs[0] && model.inputs[0].name) || "";
  return ["image", "text", "payload"].includes(name) ? name : model.task === "json" ? "payload" : "image";
}

async function base64Of(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function tryIt(model) {
  const kind = inputKind(model);
  const result = h("div", {id: "try-result", "aria-live": "polite"});
  const topK = h("input", {id: "try-top-k", type: "number", min: 1, max: 100, value: 5});
  const form = h("form", {class: "card", id: "try-form"}, h("h2", {}, "Try it"));
  let read;
  if (kind === "image") {
    const picker = h("input", {id: "try-image", type: "file", accept: "image/*,.heic,.heif,.avif", required: true});
    const preview = h("img", {class: "preview", alt: "", hidden: true});
    const drop = h("div", {class: "drop", id: "try-drop"}, "Drop an image here, or pick one: ", picker, preview);
    const show = (file) => {
      preview.src = URL.createObjectURL(file);
      preview.alt = `the picture to classify: ${file.name}`;
      preview.hidden = false;
    };
    picker.addEventListener("change", () => picker.files[0] && show(picker.files[0]));
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files.length) { picker.files = e.dataTransfer.files; show(picker.files[0]); }
    });
    form.append(field("Image", drop, "JPEG, PNG, WebP, AVIF, HEIC, BMP or GIF"));
    read = async () => ({image: {content: await base64Of(picker.files[0])}});
  } else if (kind === "text") {
    const text = h("textarea", {id: "try-text", rows: 3, required: true});
    const labels = h("input", {id: "try-labels", type: "text", placeholder: "positive, negative"});
    form.append(field("Text", text), field("Candidate labels", labels, "comma-separated; optional (without: the embedding)"));
    read = async () => {
      const candidates = labels.value.split(",").map((l) => l.trim()).filter(Boolean);
      return {text: {content: text.value, candidate_labels: candidates}};
    };
  } else {
    const json = h("textarea", {id: "try-json", rows: 6, required: true, spellcheck: "false", class: "mono"}, "{}");
    form.append(field("JSON payload", json, "a JSON object"));
    read = async () => ({payload: JSON.parse(json.value)});
  }
  form.append(field("Top k", topK), h("button", {type: "submit", id: "try-submit"}, "Predict"), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(result, h("p", {class: "muted"}, "Predicting…"));
    try {
      const body = {...(await read()), top_k: Number(topK.value) || 0};
      const {prediction} = await call("POST", `/v1/models/${encodeURIComponent(shortName(model.name))}:predict`, {body});
      fill(result, predictionView(prediction));
    } catch (error) {
      fill(result, errorBox(error));
    }
  });
  return form;
}

/** A prediction's answer: classes as bars, output JSON, embedding size, timing, trace id, link. */
export function predictionView(p) {
  const parts = [];
  if (p.error) parts.push(errorBox(recordedError(p.error)));
  if ((p.classes || []).length) {
    parts.push(barChart(p.classes.map((c) => ({label: c.label, value: c.score, text: c.score.toFixed(3)})),
      {title: "classes and scores", className: "classes"}));
    parts.push(h("ol", {class: "sr-list", id: "classes-list"}, p.classes.map((c) => h("li", {}, h("span", {class: "label"}, c.label), " ", c.score.toFixed(3)))));
  }
  if (p.output !== undefined) parts.push(h("h3", {}, "Output"), h("pre", {class: "json", id: "output-json"}, JSON.stringify(p.output, null, 2)));
  if ((p.embedding || []).length) parts.push(h("p", {}, `Embedding of ${p.embedding.length} numbers: `, h("code", {}, p.embedding.slice(0, 6).map((v) => v.toFixed(3)).join(", "), " …")));
  const t = p.timing || {};
  parts.push(h("dl", {class: "facts timing"},
    [["Decode", fmtMs(t.decode_ms)], ["Queue", fmtMs(t.queue_ms)], ["Inference", fmtMs(t.inference_ms)],
      ["Total", fmtMs(t.total_ms)], ["Batch size", t.batch_size], ["Trace id", h("code", {id: "trace-id"}, p.trace_id)],
      ["Prediction", h("a", {id: "prediction-link", href: `#/predictions/${encodeURIComponent(shortName(p.name))}`}, shortName(p.name))]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  return h("div", {class: "prediction"}, parts);
}
