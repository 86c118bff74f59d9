// Stats per model over a window, as charts: throughput and success rate over time, latency
// percentiles, top labels. The API answers one summary per window ending now, so the series are
// differences of nested windows (the count of the last 2/12 of the window less the last 1/12, ...).

import {get} from "./api.js";
import {barChart, lineChart} from "./charts.js";
import {field, fill, h, shortName} from "./dom.js";

const WINDOWS = [["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400], ["7d", 604800]];
const BUCKETS = 12;

export async function showStats(main, params) {
  const {models} = await get("/v1/models", {page_size: 1000});
  const model = params.get("model") || shortName(models[0] && models[0].name);
  const windowName = params.get("window") || "1h";
  const seconds = (WINDOWS.find(([w]) => w === windowName) || WINDOWS[1])[1];
  const modelSelect = h("select", {id: "stats-model", name: "model"}, models.map((m) =>
    h("option", {value: shortName(m.name), selected: shortName(m.name) === model}, shortName(m.name))));
  const windowSelect = h("select", {id: "stats-window", name: "window"}, WINDOWS.map(([w]) =>
    h("option", {value: w, selected: w === windowName}, w)));
  const form = h("form", {class: "card row", id: "stats-form"}, field("Model", modelSelect), field("Window", windowSelect),
    h("button", {type: "submit"}, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/stats?model=${encodeURIComponent(modelSelect.value)}&window=${windowSelect.value}`;
  });
  // Nested windows, smallest first: window k covers the last k/BUCKETS of the whole window.
  const step = seconds / BUCKETS;
  const nested = await Promise.all(Array.from({length: BUCKETS}, (_, k) =>
    get(`/v1/models/${encodeURIComponent(model)}/stats`, {window: `${Math.round(step * (k + 1))}s`}).then((a) => a.stats)));
  const whole = nested[BUCKETS - 1];
  const end = new Date(whole.end_time);
  const series = nested.map((stats, k) => {
    const inner = k ? nested[k - 1] : {request_count: 0, error_count: 0};
    const requests = Number(stats.request_count) - Number(inner.request_count);
    const errors = Number(stats.error_count) - Number(inner.error_count);
    return {t: new Date(end.getTime() - (k + 0.5) * step * 1000), requests: Math.max(0, requests), errors: Math.max(0, errors)};
  }).reverse();
  const total = Number(whole.request_count);
  const errors = Number(whole.error_count);
  const latency = (name, l) => [
    {label: `${name} p50`, value: l.p50_ms, text: `${l.p50_ms.toFixed(1)} ms`},
    {label: `${name} p95`, value: l.p95_ms, text: `${l.p95_ms.toFixed(1)} ms`},
    {label: `${name} p99`, value: l.p99_ms, text: `${l.p99_ms.toFixed(1)} ms`}];
  const latencies = [...latency("total", whole.total_latency), ...latency("inference", whole.inference_latency)];
  const topLabels = whole.top_labels || [];
  const maxCount = Math.max(1, ...topLabels.map((l) => Number(l.count)));
  fill(main,
    h("h1", {}, `Stats: ${model}`),
    form,
    h("dl", {class: "facts", id: "stats-summary"}, [
      ["Predictions", total], ["Failed", errors],
      ["Success rate", total ? `${(100 * (1 - errors / total)).toFixed(1)} %` : "—"],
      ["Throughput", `${(total / seconds).toFixed(3)} /s`], ["Mean batch", whole.batch_size_mean.toFixed(2)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("div", {class: "grid"},
      h("section", {class: "card"}, h("h2", {}, "Throughput (predictions/s)"),
        lineChart(series.map((b) => ({t: b.t, v: b.requests / step})), {title: "throughput over the window", unit: "/s"})),
      h("section", {class: "card"}, h("h2", {}, "Success rate"),
        lineChart(series.map((b) => ({t: b.t, v: b.requests ? 100 * (1 - b.errors / b.requests) : 100})),
          {title: "success rate over the window", unit: "%", yMax: 100})),
      h("section", {class: "card"}, h("h2", {}, "Latency percentiles"),
        barChart(latencies, {max: Math.max(1, ...latencies.map((l) => l.value)), title: "latency percentiles"})),
      h("section", {class: "card"}, h("h2", {}, "Top labels"),
        barChart(topLabels.map((l) => ({label: l.label, value: Number(l.count), text: String(l.count)})),
          {max: maxCount, title: "top labels", className: "top-labels"}))));
}
