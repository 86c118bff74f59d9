// How the console tells the user what happened: API errors as message + reason (+ when to retry).

import {ApiError} from "./api.js";
import {fill, h} from "./dom.js";

/** An API error as its message and reason, and when to retry if the API said so. */
export function errorBox(error) {
  if (!(error instanceof ApiError)) {
    return h("div", {class: "error", role: "alert"}, h("strong", {}, "Error: "), String(error.message || error));
  }
  const retry = error.retryAfterS !== null && !Number.isNaN(error.retryAfterS)
    ? h("p", {class: "retry"}, `Retry after ${error.retryAfterS} s (at ${new Date(Date.now() + error.retryAfterS * 1000).toLocaleTimeString()}).`)
    : null;
  return h("div", {class: "error", role: "alert"},
    h("p", {}, h("strong", {}, `${error.status} `), h("span", {class: "reason"}, error.reason || "ERROR")),
    h("p", {class: "message"}, error.message), retry);
}

/** A short message in the corner for screen readers and eyes alike. */
export function toast(message) {
  const box = document.getElementById("toast");
  fill(box, message);
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => fill(box), 5000);
}

