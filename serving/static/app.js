// The gateway's upload page: POST the image to score?probe=true&perturbation=true (same origin) and
// show the score, the probe's delta, linearity and flag, and the amplified FGSM perturbation.
"use strict";

const DIGITS = 2; // the precision every score on the page is shown with

const $ = (id) => document.getElementById(id);
let current = null; // the File last chosen
let previewUrl = null;

function setError(text) {
  const box = $("error");
  box.textContent = text || "";
  box.hidden = !text;
}

function showPreview(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("preview").alt = `The uploaded image, ${file.name}`;
  $("file-name").textContent = file.name;
}

// The gateway's error shape is {"error": {"code", "message"}}; FastAPI's default is {"detail": ...}.
function errorText(status, statusText, body) {
  let message = statusText || "request failed";
  if (body && body.error && body.error.message) {
    message = body.error.message;
  } else if (body && typeof body.detail === "string") {
    message = body.detail;
  } else if (body && Array.isArray(body.detail)) {
    message = body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  }
  const code = body && body.error && body.error.code ? ` ${body.error.code}` : "";
  return `Error ${status}${code}: ${message}`;
}

async function post(file, probe) {
  const headers = { "Content-Type": file.type || "application/octet-stream" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const query = probe ? "?probe=true&perturbation=true" : "";
  const response = await fetch(`score${query}`, { method: "POST", headers, body: file });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { response, body };
}

function showProbe(probe, note) {
  const details = $("probe-details");
  const figure = $("perturbation-figure");
  if (!probe) {
    $("probe-state").textContent = note || "probe unavailable on this gateway";
    details.hidden = true;
    figure.hidden = true;
    $("perturbation").removeAttribute("src");
    return;
  }
  const by = (probe.flagged_by || []).join(" and ");
  $("probe-state").textContent = probe.flagged
    ? `FLAGGED by ${by || "the probe"}: one FGSM step moves the score more than the gateway's threshold allows (may be adversarial)`
    : "not flagged: one FGSM step moves the score within the gateway's thresholds";
  const delta = Number(probe.delta);
  $("delta").textContent = (delta >= 0 ? "+" : "") + delta.toFixed(DIGITS);
  $("adv-score").textContent = Number(probe.adv_score).toFixed(DIGITS);
  $("linearity").textContent = probe.linearity == null ? "n/a" : Number(probe.linearity).toFixed(DIGITS);
  const eps = Number(probe.epsilon);
  $("epsilon").textContent = `${eps.toPrecision(3)} (${(eps * 255).toFixed(1)}/255)`;
  details.hidden = false;
  if (probe.perturbation_png) {
    $("perturbation").src = `data:image/png;base64,${probe.perturbation_png}`;
    figure.hidden = false;
  } else {
    $("perturbation").removeAttribute("src");
    figure.hidden = true;
  }
}

async function score(file) {
  if (!file) {
    setError("Choose an image first.");
    return;
  }
  setError("");
  $("result").hidden = true;
  $("status").textContent = `Scoring ${file.name}…`;
  $("submit").disabled = true;
  try {
    let { response, body } = await post(file, true);
    let note = null;
    // A gateway without a probe model may refuse the probe; score without it rather than fail.
    const code = body && body.error && body.error.code ? String(body.error.code) : "";
    if (!response.ok && code.includes("probe")) {
      note = `probe unavailable: ${body.error.message}`;
      ({ response, body } = await post(file, false));
    }
    if (!response.ok || !body || typeof body.score !== "number") {
      $("status").textContent = "";
      setError(errorText(response.status, response.statusText, body));
      return;
    }
    showPreview(file);
    $("score").textContent = body.score.toFixed(DIGITS);
    $("model").textContent = `${body.model} version ${body.version} (${body.crops} crops)`;
    showProbe(body.probe, note);
    $("result").hidden = false;
    $("status").textContent = `Scored ${file.name}.`;
  } catch (err) {
    $("status").textContent = "";
    setError(`Could not reach the gateway: ${err.message}`);
  } finally {
    $("submit").disabled = false;
  }
}

function choose(file) {
  current = file;
  score(file);
}

document.addEventListener("DOMContentLoaded", () => {
  const input = $("file");
  const zone = $("drop-zone");
  input.addEventListener("change", () => choose(input.files[0]));
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    score(current);
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) choose(file);
  });
});
