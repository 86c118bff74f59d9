// Charts as inline SVG built node by node (no library, no innerHTML): labels are text nodes, so a
// label such as `<img onerror=...>` is drawn as those characters.

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Horizontal bars, one row per item: label on the left, bar, value text on the right.
 * items: [{label, value, text}] with value in [0, max]. */
export function barChart(items, {max = 1, title = "", width = 560, className = ""} = {}) {
  const row = 26;
  const labelWidth = Math.min(220, width * 0.4);
  const valueWidth = 80;
  const barSpace = width - labelWidth - valueWidth - 8;
  const height = Math.max(row * items.length, row);
  const svg = s("svg", {viewBox: `0 0 ${width} ${height}`, class: `chart bars ${className}`, role: "img",
    "aria-label": title, preserveAspectRatio: "xMinYMin meet"}, s("title", {}, title));
  items.forEach((item, i) => {
    const y = i * row;
    const share = max > 0 ? Math.max(0, Math.min(1, item.value / max)) : 0;
    const label = s("text", {x: labelWidth - 6, y: y + row * 0.65, "text-anchor": "end", class: "bar-label"}, item.label);
    label.append(s("title", {}, item.label));
    svg.append(
      label,
      s("rect", {x: labelWidth, y: y + 4, width: barSpace, height: row - 8, rx: 3, class: "bar-track"}),
      s("rect", {x: labelWidth, y: y + 4, width: Math.max(1, share * barSpace), height: row - 8, rx: 3, class: "bar"}),
      s("text", {x: labelWidth + barSpace + 6, y: y + row * 0.65, class: "bar-value"}, item.text ?? String(item.value)));
  });
  if (!items.length) svg.append(s("text", {x: 8, y: row * 0.65, class: "muted"}, "no data"));
  return svg;
}

/** A line over time: points [{t: Date, v: number}], drawn with markers and min/max labels. */
export function lineChart(points, {title = "", unit = "", width = 560, height = 180, yMax} = {}) {
  const pad = {left: 48, right: 12, top: 12, bottom: 28};
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const top = yMax ?? (Math.max(...points.map((p) => p.v), 0) * 1.1 || 1);
  const t0 = points.length ? points[0].t.getTime() : 0;
  const t1 = points.length ? points[points.length - 1].t.getTime() : 1;
  const x = (t) => pad.left + (t1 > t0 ? ((t.getTime() - t0) / (t1 - t0)) * plotW : plotW / 2);
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  const svg = s("svg", {viewBox: `0 0 ${width} ${height}`, class: "chart line", role: "img", "aria-label": title},
    s("title", {}, title),
    s("line", {x1: pad.left, y1: pad.top + plotH, x2: pad.left + plotW, y2: pad.top + plotH, class: "axis"}),
    s("line", {x1: pad.left, y1: pad.top, x2: pad.left, y2: pad.top + plotH, class: "axis"}),
    s("text", {x: pad.left - 4, y: pad.top + 8, "text-anchor": "end", class: "tick"}, `${formatNumber(top)}${unit}`),
    s("text", {x: pad.left - 4, y: pad.top + plotH, "text-anchor": "end", class: "tick"}, `0${unit}`));
  if (points.length) {
    svg.append(
      s("text", {x: pad.left, y: height - 8, class: "tick"}, points[0].t.toLocaleTimeString()),
      s("text", {x: pad.left + plotW, y: height - 8, "text-anchor": "end", class: "tick"},
        points[points.length - 1].t.toLocaleTimeString()),
      s("polyline", {points: points.map((p) => `${x(p.t)},${y(p.v)}`).join(" "), class: "series"}));
    for (const p of points) {
      svg.append(s("circle", {cx: x(p.t), cy: y(p.v), r: 3, class: "marker"},
        s("title", {}, `${p.t.toLocaleTimeString()}: ${formatNumber(p.v)}${unit}`)));
    }
  }
  return svg;
}

function formatNumber(value) {
  return Math.abs(value) >= 100 ? value.toFixed(0) : Math.abs(value) >= 10 ? value.toFixed(1) : value.toFixed(2);
}
