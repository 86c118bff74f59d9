// Building the page from data without ever parsing data as HTML: every value from the API (a label,
// a model's JSON output, an error message) becomes a text node, so `<script>` shows as text.

/** An element: h("a", {href: "#/jobs", class: "x"}, "text", child, [more]). Strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces a node's children (text for strings). */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** The last part of a resource name: "jobs/0191..." -> "0191...". */
export function shortName(name) {
  return String(name || "").split("/").pop();
}

/** An enum value without its type prefix: "JOB_STATE_RUNNING" -> "running". */
export function enumText(value, prefix) {
  const text = String(value || "").replace(prefix, "");
  return text.toLowerCase().replaceAll("_", " ");
}

export function fmtTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function fmtMs(ms) {
  return `${Number(ms || 0).toFixed(1)} ms`;
}

/** A labelled form field: the label wraps the control, so a click or a screen reader finds it. */
export function field(label, control, hint) {
  return h("label", {class: "field"}, h("span", {class: "field-label"}, label), control,
    hint ? h("small", {class: "hint"}, hint) : null);
}

/** A table whose rows are built by `row(item)`; `headers` are the column titles. */
export function table(headers, items, row, caption) {
  return h("div", {class: "table-wrap"},
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((title) => h("th", {scope: "col"}, title)))),
      h("tbody", {}, items.map(row))));
}

/** Saves bytes or text as a file the user downloads (a blob: URL, no server round trip). */
export function download(filename, parts, type) {
  const url = URL.createObjectURL(new Blob(parts, {type}));
  const link = h("a", {href: url, download: filename, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
