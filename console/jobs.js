// Jobs: the tenant's jobs newest first with live progress (WatchJob, streamed), a job's page, and
// submitting a job from a zip of images or a JSONL manifest.

import {call, get, post, recordedError, scopes, stream, text} from "./api.js";
import {download, enumText, field, fill, fmtTime, h, shortName, table} from "./dom.js";
import {errorBox, toast} from "./feedback.js";

const PAGE_SIZE = 20;
const FINISHED = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_PARTIALLY_SUCCEEDED"]);
/** A browser opens at most six HTTP/1.1 connections to a host: the list watches a few jobs live
 * and leaves connections for the page's own calls. A job's page always watches its job. */
const LIVE_ON_LIST = 3;

const jobId = (job) => shortName(job.name);
const done = (job) => job.items_succeeded + job.items_failed;

function progress(job) {
  // EXPANDING: the jobs service is still reading the manifest, so the item count is not known yet.
  if (job.state === "JOB_STATE_EXPANDING") return h("span", {class: "progress"}, `reading the manifest… ${done(job)} done`);
  return h("span", {class: "progress"},
    h("progress", {max: job.items_total || 1, value: done(job), "aria-label": `${done(job)} of ${job.items_total} items done`}),
    ` ${done(job)} / ${job.items_total}`, job.items_failed ? h("span", {class: "failed"}, ` (${job.items_failed} failed)`) : null);
}

function stateBadge(job) {
  const state = enumText(job.state, "JOB_STATE_");
  return h("span", {class: `badge state-${state.replaceAll(" ", "-")}`}, state);
}

/** Follows a job with WatchJob until it finishes or the page is left; `update` gets each message. */
function watch(job, update, signal) {
  stream(`/v1/jobs/${jobId(job)}:watch`, update, signal).catch((error) => {
    if (error.name !== "AbortError") toast(`watching ${jobId(job)} stopped: ${error.message}`);
  });
}

export async function showJobs(main, params, signal) {
  const token = params.get("page") || "";
  const {jobs, next_page_token: next} = await get("/v1/jobs", {page_size: PAGE_SIZE, page_token: token});
  const canWrite = scopes().has("jobs") || scopes().has("admin");
  const rows = jobs.map((job) => {
    const cells = {state: h("td", {}, stateBadge(job)), progress: h("td", {}, progress(job))};
    const row = h("tr", {dataset: {job: jobId(job)}},
      h("td", {}, h("a", {href: `#/jobs/${jobId(job)}`}, jobId(job))),
      h("td", {}, shortName(job.model)), cells.state, cells.progress,
      h("td", {}, enumText(job.priority, "PRIORITY_")), h("td", {}, fmtTime(job.create_time)));
    return {job, row, cells};
  });
  rows.filter(({job}) => !FINISHED.has(job.state)).slice(0, LIVE_ON_LIST).forEach(({job, cells}) =>
    watch(job, (message) => {
      fill(cells.state, stateBadge(message.job));
      fill(cells.progress, progress(message.job));
    }, signal));
  const pager = h("nav", {class: "pager", "aria-label": "Pages of jobs"},
    token ? h("a", {href: "#/jobs"}, "← Newest") : null,
    next ? h("a", {href: `#/jobs?page=${encodeURIComponent(next)}`, id: "jobs-next"}, "Older →") : null);
  fill(main,
    h("h1", {}, "Jobs"),
    canWrite ? await submitForm() : null,
    jobs.length ? table(["Job", "Model", "State", "Progress", "Priority", "Created"], rows, ({row}) => row, "Jobs, newest first")
      : h("p", {class: "muted"}, "No jobs yet."),
    pager);
}

async function submitForm() {
  const {models} = await get("/v1/models", {page_size: 1000}).catch(() => ({models: []}));
  const file = h("input", {id: "job-file", type: "file", accept: ".zip,.jsonl,.ndjson,application/zip", required: true});
  const model = h("select", {id: "job-model"}, models.map((m) => h("option", {value: shortName(m.name)}, shortName(m.name))));
  const priority = h("select", {id: "job-priority"}, ["NORMAL", "HIGH", "LOW"].map((p) => h("option", {value: `PRIORITY_${p}`}, p.toLowerCase())));
  const topK = h("input", {id: "job-top-k", type: "number", min: 1, max: 100, value: 5});
  const status = h("div", {"aria-live": "polite"});
  const form = h("form", {class: "card", id: "job-form"},
    h("h2", {}, "Submit a job"),
    field("Zip of images or JSONL manifest", file, "a zip makes one item per file; a JSONL manifest one per line (docs/jobs.md)"),
    h("div", {class: "row"}, field("Model", model), field("Priority", priority), field("Top k", topK)),
    h("button", {type: "submit", id: "job-submit"}, "Upload and submit"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    try {
      fill(status, h("p", {class: "muted"}, `Uploading ${chosen.name} (${chosen.size} bytes)…`));
      const zip = /\.zip$/i.test(chosen.name);
      const {upload} = await call("POST", "/v1/uploads", {body: chosen, contentType: zip ? "application/zip" : "application/x-ndjson"});
      const skipped = upload.skipped_entries ? `, ${upload.skipped_entries} system files such as __MACOSX/ left out` : "";
      fill(status, h("p", {class: "muted"}, `Uploaded ${upload.name} (${upload.entries} entries${skipped}); creating the job…`));
      const {job} = await post("/v1/jobs", {model: model.value, manifest: upload.name, priority: priority.value, top_k: Number(topK.value) || 0});
      location.hash = `#/jobs/${jobId(job)}`;
    } catch (error) {
      fill(status, errorBox(error));
    }
  });
  return form;
}

export async function showJob(main, id, _params, signal) {
  const {job} = await get(`/v1/jobs/${encodeURIComponent(id)}`);
  const summary = h("div", {id: "job-summary"});
  const actions = h("div", {class: "actions"});
  const failures = h("section", {id: "job-failures"});
  const status = h("div", {"aria-live": "polite"});
  let rate = null;
  const render = (current) => {
    fill(summary, h("dl", {class: "facts"}, [
      ["State", stateBadge(current)], ["Model", shortName(current.model)], ["Progress", progress(current)],
      ["Succeeded", h("span", {id: "job-succeeded"}, current.items_succeeded)],
      ["Failed", h("span", {id: "job-failed"}, current.items_failed)], ["Total", current.items_total],
      ["Items per second", rate === null ? "—" : rate.items_per_second.toFixed(1)],
      ["Time left", rate === null || !rate.eta_seconds ? "—" : `${Math.round(rate.eta_seconds)} s`],
      ["Priority", enumText(current.priority, "PRIORITY_")], ["Retries", current.retry_count],
      ["Created", fmtTime(current.create_time)], ["Updated", fmtTime(current.update_time)],
      ["Trace id", h("code", {}, current.trace_id)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    current.error ? errorBox(recordedError(current.error)) : null);
    renderActions(current);
  };
  const renderActions = (current) => {
    const writable = scopes().has("jobs") || scopes().has("admin");
    const act = (label, verb) => h("button", {type: "button", id: `job-${verb}`, onclick: async () => {
      try {
        const answer = await post(`/v1/jobs/${id}:${verb}`, {});
        toast(`${label}: ${enumText(answer.job.state, "JOB_STATE_")}`);
        render(answer.job);
        if (verb === "retry") watch(answer.job, onMessage, signal);
      } catch (error) { fill(status, errorBox(error)); }
    }}, label);
    fill(actions,
      writable && !FINISHED.has(current.state) ? act("Cancel", "cancel") : null,
      writable && FINISHED.has(current.state) && current.items_failed && current.state !== "JOB_STATE_CANCELLED" ? act("Retry failed items", "retry") : null,
      FINISHED.has(current.state) ? h("button", {type: "button", id: "job-results", onclick: async () => {
        try {
          download(`${id}.results.jsonl`, [await text(`/v1/jobs/${id}/results`)], "application/x-ndjson");
        } catch (error) { fill(status, errorBox(error)); }
      }}, "Download results (JSONL)") : null,
      h("a", {href: `#/predictions?job=${encodeURIComponent(id)}`}, "Its predictions"));
  };
  const onMessage = (message) => {
    rate = message;
    render(message.job);
    if (FINISHED.has(message.job.state)) showFailures(failures, id, "");
  };
  render(job);
  fill(main, h("p", {}, h("a", {href: "#/jobs"}, "← Jobs")), h("h1", {}, `Job ${id}`), summary, actions, status, failures);
  if (FINISHED.has(job.state)) await showFailures(failures, id, "");
  else watch(job, onMessage, signal);
}

/** The job's failed items (and dead letters) with their reasons, a page at a time. */
async function showFailures(section, id, token) {
  const {items, next_page_token: next} = await get(`/v1/jobs/${id}/items`,
    {state: "PREDICTION_STATE_FAILED", page_size: 50, page_token: token});
  fill(section, h("h2", {}, "Failed items"),
    items.length ? table(["Item", "Input", "Reason", "Message", "Dead letter", "Prediction"], items, (item) => {
      const error = item.prediction.error || {};
      const reason = ((error.details || []).find((d) => String(d["@type"]).endsWith("ErrorInfo")) || {}).reason || "";
      return h("tr", {class: "failed-item"},
        h("td", {class: "num"}, item.index),
        // Which photo or manifest line (a zip's file name; escaped by the jobs service, shown as text).
        h("td", {class: "input-name"}, item.prediction.input_name || `inputs[${item.index}]`),
        h("td", {}, h("span", {class: "reason"}, reason)),
        h("td", {}, h("details", {}, h("summary", {}, "why"), h("p", {class: "message"}, error.message))),
        h("td", {}, item.dead_lettered ? `yes: ${item.dead_letter_reason}` : "no"),
        h("td", {}, h("a", {href: `#/predictions/${shortName(item.prediction.name)}`}, shortName(item.prediction.name))));
    }, "Failed items") : h("p", {class: "muted"}, "No failed items."),
    next ? h("button", {type: "button", onclick: () => showFailures(section, id, next)}, "More failed items") : null);
}
