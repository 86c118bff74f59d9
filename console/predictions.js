// Predictions: the API's filters, keyset paging (the API's page tokens), a record's detail, export.

import {get} from "./api.js";
import {download, enumText, field, fill, fmtTime, h, shortName, table} from "./dom.js";
import {errorBox, toast} from "./feedback.js";
import {predictionView} from "./models.js";

const PAGE_SIZE = 25;
const EXPORT_PAGE = 1000;
/** Export stops here: a browser tab holds the file in memory (`ferry export` streams any size). */
const EXPORT_MAX = 50000;
const FILTERS = ["model", "label", "min_score", "source", "state", "job", "start_time", "end_time"];

function query(params) {
  const out = {};
  for (const name of FILTERS) {
    const value = params.get(name);
    if (!value) continue;
    if (name === "job") out.job = value.startsWith("jobs/") ? value : `jobs/${value}`;
    else if (name.endsWith("_time")) out[name] = new Date(value).toISOString();
    else out[name] = value;
  }
  return out;
}

function filterForm(params, models) {
  const input = (name, attrs) => h("input", {id: `filter-${name}`, name, value: params.get(name) || "", ...attrs});
  const select = (name, options) => h("select", {id: `filter-${name}`, name},
    h("option", {value: ""}, "any"),
    options.map(([value, label]) => h("option", {value, selected: params.get(name) === value}, label)));
  const form = h("form", {class: "card filters", id: "filter-form"},
    h("div", {class: "row"},
      field("Model", select("model", models.map((m) => [shortName(m.name), shortName(m.name)]))),
      field("Label", input("label", {type: "text"}), "exact top label"),
      field("Min score", input("min_score", {type: "number", min: 0, max: 1, step: "0.01"})),
      field("Source", select("source", ["SYNC", "JOB_ITEM", "OIP"].map((s) => [`PREDICTION_SOURCE_${s}`, enumText(s)]))),
      field("State", select("state", ["SUCCEEDED", "FAILED"].map((s) => [`PREDICTION_STATE_${s}`, enumText(s)]))),
      field("Job", input("job", {type: "text", placeholder: "job id"})),
      field("From", input("start_time", {type: "datetime-local"})),
      field("To", input("end_time", {type: "datetime-local"}))),
    h("button", {type: "submit", id: "filter-apply"}, "Filter"), " ",
    h("a", {href: "#/predictions"}, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) chosen.set(name, value);
    location.hash = `#/predictions?${chosen}`;
  });
  return form;
}

export async function showPredictions(main, params) {
  const [{models}, page] = await Promise.all([
    get("/v1/models", {page_size: 1000}).catch(() => ({models: []})),
    get("/v1/predictions", {...query(params), page_size: PAGE_SIZE, page_token: params.get("page") || ""}),
  ]);
  const exportStatus = h("span", {"aria-live": "polite"});
  const exporter = (format) => h("button", {type: "button", id: `export-${format}`, onclick: async () => {
    try {
      await exportAll(query(params), format, exportStatus);
    } catch (error) {
      fill(exportStatus, errorBox(error));
    }
  }}, `Export ${format.toUpperCase()}`);
  const older = new URLSearchParams(params);
  older.set("page", page.next_page_token);
  const newest = new URLSearchParams(params);
  newest.delete("page");
  fill(main,
    h("h1", {}, "Predictions"),
    filterForm(params, models),
    h("div", {class: "actions"}, exporter("csv"), exporter("jsonl"), exportStatus),
    page.predictions.length ? table(["Prediction", "Model", "State", "Top label", "Score", "Source", "Job", "Created"],
      page.predictions, (p) => {
        const top = (p.classes || [])[0];
        return h("tr", {class: "prediction-row"},
          h("td", {}, h("a", {href: `#/predictions/${shortName(p.name)}`}, shortName(p.name).slice(0, 13), "…")),
          h("td", {}, shortName(p.model)),
          h("td", {}, enumText(p.state, "PREDICTION_STATE_")),
          h("td", {class: "label"}, top ? top.label : ""),
          h("td", {class: "num"}, top ? top.score.toFixed(3) : ""),
          h("td", {}, enumText(p.source, "PREDICTION_SOURCE_")),
          h("td", {}, p.job ? h("a", {href: `#/jobs/${shortName(p.job)}`}, `${shortName(p.job).slice(0, 8)}… #${p.item_index}`) : ""),
          h("td", {}, fmtTime(p.create_time)));
      }, "Predictions, newest first") : h("p", {class: "muted", id: "no-predictions"}, "No prediction matches."),
    h("nav", {class: "pager", "aria-label": "Pages of predictions"},
      params.get("page") ? h("a", {href: `#/predictions?${newest}`}, "← Newest") : null,
      page.next_page_token ? h("a", {id: "predictions-next", href: `#/predictions?${older}`}, "Older →") : null));
}

/** The record is written a moment after Predict answers: a link followed at once may need a
 * few tries (bounded; the page says it is waiting). */
async function recorded(main, id, signal) {
  for (let attempt = 0; ; attempt++) {
    try {
      return (await get(`/v1/predictions/${encodeURIComponent(id)}`)).prediction;
    } catch (error) {
      if (error.reason !== "PREDICTION_NOT_FOUND" || attempt >= RECORD_TRIES || signal.aborted) throw error;
      fill(main, h("p", {class: "muted"}, "Waiting for the record to land…"));
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}
const RECORD_TRIES = 10;

export async function showPrediction(main, id, _params, signal) {
  const p = await recorded(main, id, signal);
  fill(main,
    h("p", {}, h("a", {href: "#/predictions"}, "← Predictions")),
    h("h1", {}, `Prediction ${id}`),
    h("dl", {class: "facts"}, [
      ["Model", h("a", {href: `#/models/${shortName(p.model)}`}, shortName(p.model))],
      ["State", enumText(p.state, "PREDICTION_STATE_")], ["Source", enumText(p.source, "PREDICTION_SOURCE_")],
      ["Job", p.job ? h("a", {href: `#/jobs/${shortName(p.job)}`}, `${shortName(p.job)} item ${p.item_index}`) : "—"],
      ["Input", p.input_name || "—"],
      ["Created", fmtTime(p.create_time)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    predictionView(p),
    h("details", {}, h("summary", {}, "The record as JSON"), h("pre", {class: "json"}, JSON.stringify(p, null, 2))));
}

/** A CSV cell: quoted, and a leading =, +, - or @ defused so a spreadsheet never runs it. */
function csvCell(value) {
  let text = value === undefined || value === null ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const CSV_COLUMNS = ["name", "model", "state", "label", "score", "source", "job", "item_index", "input_name", "create_time", "total_ms", "error_reason", "trace_id"];

function csvRow(p) {
  const top = (p.classes || [])[0] || {};
  const reason = ((p.error && p.error.details) || []).map((d) => d.reason).filter(Boolean)[0] || "";
  const row = {...p, label: top.label, score: top.score, total_ms: p.timing && p.timing.total_ms, error_reason: reason};
  return CSV_COLUMNS.map((c) => csvCell(row[c])).join(",");
}

async function exportAll(filters, format, status) {
  const lines = format === "csv" ? [CSV_COLUMNS.join(",")] : [];
  let token = "";
  let count = 0;
  do {
    const page = await get("/v1/predictions", {...filters, page_size: EXPORT_PAGE, page_token: token});
    for (const p of page.predictions) lines.push(format === "csv" ? csvRow(p) : JSON.stringify(p));
    count += page.predictions.length;
    token = page.next_page_token;
    fill(status, `${count} records…`);
  } while (token && count < EXPORT_MAX);
  download(`predictions.${format}`, [lines.join("\n"), "\n"], format === "csv" ? "text/csv" : "application/x-ndjson");
  fill(status, `${count} records exported${token ? ` (stopped at ${EXPORT_MAX}: use \`ferry export\` for more)` : ""}.`);
  toast(`exported ${count} predictions`);
}
