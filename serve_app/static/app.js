// imgverify web page: plain JavaScript, no dependencies, no build step.
//
// Safety rule for this file: everything that comes from the user or the service (file names, reasons,
// EXIF text, C2PA signers, error details) reaches the page through textContent or attribute values set
// by the el() helper below, never through innerHTML. The page's Content-Security-Policy forbids inline
// scripts and styles; positions on the probability bar are set through the CSSOM (element.style), which
// that policy allows.
"use strict";

(() => {
  // The service's root, derived from this script's own address (".../static/app.js"), so that the page
  // also works when the application is mounted under a route prefix such as /faulty/.
  const ROOT = new URL("../", document.currentScript.src);
  const api = (path) => new URL(path, ROOT).toString();

  // Used until GET /v1/config answers (and if it never does): the server's defaults.
  const state = {
    config: {
      input: { max_bytes: 32 * 1024 * 1024, max_pixels: 50000000, max_batch_files: 16, allow_url: false },
      fusion: { threshold: null, uncertain_range: null },
      heatmaps: [],
    },
    specs: {}, // feature name -> {detector, low, high, direction, description, fusion_input}
    current: null, // {body, file, url, objectUrl} of the result on screen
    rows: [], // batch rows: {file, objectUrl, result}
    sort: { key: null, ascending: true },
  };

  const $ = (id) => document.getElementById(id);

  // ---- API key (only when GET /v1/config says auth_required) ------------------------------------------------
  // Kept in this tab's sessionStorage, never in the page or the URL; sent as "Authorization: Bearer <key>".
  const KEY_STORAGE = "imgverify-api-key";
  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (err) {
      return "";
    }
  }
  let apiKey = storedKey();
  const authHeaders = () => (apiKey ? { Authorization: `Bearer ${apiKey}` } : {});

  function askForKey(message) {
    $("key-form").hidden = false;
    $("key-label").textContent = message;
  }

  // ---- small DOM helpers ------------------------------------------------------------------------------
  /** Create an element; attrs are set as properties or attributes, children are nodes or plain text. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A <dl> of label/value pairs; pairs whose value is null or "" are left out. */
  function keyValues(pairs) {
    const list = el("dl", { className: "kv" });
    for (const [label, value] of pairs) {
      if (value === null || value === undefined || value === "") continue;
      list.append(el("dt", { text: label }), el("dd", {}, value instanceof Node ? value : String(value)));
    }
    return list;
  }

  function formatProb(p) {
    return typeof p === "number" ? p.toFixed(3) : "n/a";
  }

  function formatBytes(n) {
    if (typeof n !== "number") return "";
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ---- errors -------------------------------------------------------------------------------------------
  /** Show a service error body {error, detail} (or a client-side one) as a readable message. */
  function showError(code, detail, httpStatus) {
    $("error-code").textContent = code;
    $("error-status").textContent = httpStatus ? `(HTTP ${httpStatus})` : "";
    $("error-detail").textContent = typeof detail === "string" ? detail : JSON.stringify(detail);
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  // ---- talking to the service ---------------------------------------------------------------------------
  /** POST and parse the JSON answer; a body that is not JSON becomes an error of its own. */
  async function postForJson(path, options) {
    let response;
    try {
      response = await fetch(api(path), {
        method: "POST",
        ...options,
        headers: { ...(options.headers || {}), ...authHeaders() },
      });
    } catch (err) {
      return { status: 0, body: { error: "network_error", detail: `the service did not answer: ${err.message}` } };
    }
    let body;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: "invalid_response", detail: `HTTP ${response.status} without a JSON body` };
    }
    if (response.status === 401) askForKey("This service needs a valid API key");
    return { status: response.status, body };
  }

  async function loadConfig() {
    try {
      const response = await fetch(api("v1/config"));
      if (response.ok) state.config = await response.json();
    } catch (err) {
      // Keep the defaults: the server checks every limit again anyway.
    }
    const input = state.config.input;
    $("limits-hint").textContent =
      `JPEG, PNG, WebP, GIF, BMP or TIFF; up to ${formatBytes(input.max_bytes)} and ` +
      `${(input.max_pixels / 1e6).toFixed(0)} megapixels each, ${input.max_batch_files} files at a time.`;
    $("url-form").hidden = !input.allow_url;
    if (state.config.auth_required) askForKey(apiKey ? "API key (one is set for this tab)" : "This service needs an API key");
  }

  /** Feature meanings and directions, for the detector rows; the page works without them. */
  async function loadDetectorSpecs() {
    try {
      const response = await fetch(api("v1/detectors"), { headers: authHeaders() });
      if (!response.ok) return;
      const body = await response.json();
      for (const [detector, info] of Object.entries(body.detectors || {})) {
        for (const spec of info.features || []) state.specs[spec.name] = { detector, ...spec };
      }
      if (!state.config.fusion.threshold && body.fusion) state.config.fusion = { ...state.config.fusion, ...body.fusion };
    } catch (err) {
      // Rows then show values without their meaning.
    }
  }

  // ---- input ---------------------------------------------------------------------------------------------
  /** The client-side mirror of the server's limits that can be checked without decoding. */
  function checkFile(file) {
    if (file.size === 0) return { error: "empty_input", detail: `${file.name} is empty` };
    const max = state.config.input.max_bytes;
    if (file.size > max) {
      return { error: "too_large", detail: `${file.name} is ${formatBytes(file.size)}, the limit is ${formatBytes(max)}` };
    }
    return null;
  }

  async function handleFiles(fileList) {
    const files = Array.from(fileList || []);
    if (files.length === 0) return;
    clearError();
    if (files.length === 1) {
      const problem = checkFile(files[0]);
      if (problem) {
        showError(problem.error, problem.detail);
        return;
      }
      await scoreOne({ file: files[0] });
    } else {
      await scoreBatch(files);
    }
  }

  async function scoreOne(source) {
    $("batch").hidden = true;
    setStatus(`Checking ${source.file ? source.file.name : source.url} ...`);
    const { status, body } = await request(source, false);
    setStatus("");
    // A verdict comes back with 200, or 503 when no detector answered (label UNKNOWN): both are shown.
    if (body && body.label) {
      showResult(body, source);
      setStatus(`Done: ${body.label}${body.uncertain ? " (uncertain)" : ""}.`);
    } else {
      $("result").hidden = true;
      showError(body.error || "error", body.detail || "", status);
    }
  }

  /** One image to /v1/detect: a file as multipart, or an address as JSON. */
  function request(source, artifacts) {
    const path = artifacts ? "v1/detect?artifacts=true" : "v1/detect";
    if (source.file) {
      const form = new FormData();
      form.append("file", source.file, source.file.name);
      return postForJson(path, { body: form });
    }
    return postForJson(path, { headers: { "content-type": "application/json" }, body: JSON.stringify({ url: source.url }) });
  }

  // ---- batch ---------------------------------------------------------------------------------------------
  async function scoreBatch(files) {
    $("result").hidden = true;
    revokeRows();
    state.rows = files.map((file) => ({ file, objectUrl: URL.createObjectURL(file), result: null }));
    state.sort = { key: null, ascending: true };
    // Files that fail a client-side check get their error here and are not sent.
    const toSend = [];
    for (const row of state.rows) {
      const problem = checkFile(row.file);
      if (problem) row.result = { ...problem, filename: row.file.name };
      else toSend.push(row);
    }
    renderBatch();
    const chunk = state.config.input.max_batch_files;
    for (let start = 0; start < toSend.length; start += chunk) {
      const part = toSend.slice(start, start + chunk);
      setStatus(`Checking files ${start + 1}-${start + part.length} of ${toSend.length} ...`);
      const form = new FormData();
      for (const row of part) form.append("files", row.file, row.file.name);
      const { status, body } = await postForJson("v1/detect/batch", { body: form });
      if (Array.isArray(body.results)) {
        part.forEach((row, i) => (row.result = body.results[i]));
      } else {
        // The whole request was refused (too large, malformed): every file of it shows why.
        part.forEach((row) => (row.result = { error: body.error || "error", detail: body.detail, filename: row.file.name }));
        showError(body.error || "error", body.detail || "", status);
      }
      renderBatch();
    }
    const failed = state.rows.filter((row) => row.result && row.result.error).length;
    setStatus(`Done: ${state.rows.length} files, ${failed} with an error.`);
  }

  function revokeRows() {
    for (const row of state.rows) URL.revokeObjectURL(row.objectUrl);
  }

  /** The value a column sorts by. */
  function sortValue(row, key) {
    const result = row.result || {};
    if (key === "filename") return row.file.name.toLowerCase();
    if (key === "fusion_prob") return typeof result.fusion_prob === "number" ? result.fusion_prob : -1;
    if (key === "uncertain") return result.uncertain ? 1 : 0;
    if (key === "label") return result.label || "";
    if (key === "error") return result.error || "";
    return "";
  }

  function sortedRows() {
    const { key, ascending } = state.sort;
    const rows = state.rows.slice();
    if (!key) return rows;
    rows.sort((a, b) => {
      const x = sortValue(a, key);
      const y = sortValue(b, key);
      const order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    return rows;
  }

  function renderBatch() {
    $("batch").hidden = false;
    const tbody = $("batch-body");
    tbody.replaceChildren();
    for (const row of sortedRows()) {
      const result = row.result;
      const thumb = el("img", { className: "thumb", src: row.objectUrl, alt: row.file.name, width: 64, height: 64 });
      // A thumbnail of a file the browser cannot decode shows nothing rather than a broken-image icon.
      thumb.addEventListener("error", () => thumb.classList.add("broken"));
      const tr = el("tr", { "data-filename": row.file.name });
      let verdict = "checking ...";
      let prob = "";
      let uncertain = "";
      let error = "";
      if (result && result.error) {
        verdict = "";
        error = el("span", {}, el("code", { text: result.error }), " ", result.detail ? String(result.detail) : "");
      } else if (result) {
        verdict = result.label;
        prob = formatProb(result.fusion_prob);
        uncertain = result.uncertain ? "yes" : "no";
      }
      const details = el("button", { type: "button", className: "button small", text: "Details" });
      details.disabled = !(result && result.label);
      details.addEventListener("click", () => {
        showResult(result, { file: row.file });
        $("result").scrollIntoView({ behavior: "smooth", block: "start" });
        $("verdict-label").focus();
      });
      tr.append(
        el("td", {}, thumb),
        el("td", { className: "filename", text: row.file.name }),
        el("td", { className: `label ${labelClass(verdict)}`, text: verdict }),
        el("td", { className: "prob", text: prob }),
        el("td", { className: "uncertain", text: uncertain }),
        el("td", { className: "row-error" }, error),
        el("td", {}, details),
      );
      tbody.append(tr);
    }
    for (const button of document.querySelectorAll("#batch-table button.sort")) {
      const th = button.closest("th");
      const active = button.dataset.key === state.sort.key;
      th.setAttribute("aria-sort", active ? (state.sort.ascending ? "ascending" : "descending") : "none");
    }
  }

  function onSort(event) {
    const key = event.currentTarget.dataset.key;
    state.sort = { key, ascending: state.sort.key === key ? !state.sort.ascending : true };
    renderBatch();
  }

  /** One flat record per file: what the CSV and the JSON download hold. */
  function exportRecords() {
    return state.rows.map((row) => {
      const r = row.result || {};
      return {
        filename: row.file.name,
        label: r.label ?? "",
        fusion_prob: r.fusion_prob ?? "",
        uncertain: r.uncertain ?? "",
        decided_by: r.decided_by ?? "",
        threshold: r.threshold ?? "",
        sha256: (r.image && r.image.sha256) || "",
        error: r.error ?? "",
        detail: r.error ? (typeof r.detail === "string" ? r.detail : JSON.stringify(r.detail ?? "")) : "",
      };
    });
  }

  function csvCell(value) {
    const text = String(value);
    // Quote always; a leading = + - @ is neutralised so that a spreadsheet never runs a file name as a formula.
    const safe = /^[=+\-@]/.test(text) ? `'${text}` : text;
    return `"${safe.replace(/"/g, '""')}"`;
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const link = el("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  function downloadCsv() {
    const records = exportRecords();
    const columns = Object.keys(records[0] || { filename: "" });
    const lines = [columns.join(","), ...records.map((r) => columns.map((c) => csvCell(r[c])).join(","))];
    download("imgverify-results.csv", "text/csv", lines.join("\r\n") + "\r\n");
  }

  function downloadJson() {
    // The full answers, as the API gave them (heatmaps are never part of a batch answer here).
    const results = state.rows.map((row) => ({ filename: row.file.name, ...(row.result || {}) }));
    download("imgverify-results.json", "application/json", JSON.stringify(results, null, 2));
  }

  // ---- one result ---------------------------------------------------------------------------------------
  function labelClass(label) {
    return { AI: "is-ai", "NON-AI": "is-real", UNKNOWN: "is-unknown" }[label] || "";
  }

  function showResult(body, source) {
    if (state.current && state.current.ownUrl) URL.revokeObjectURL(state.current.objectUrl);
    // Batch rows own their thumbnails' object URLs; a single file gets its own.
    const rowUrl = state.rows.find((row) => row.file === source.file);
    const objectUrl = source.file ? (rowUrl ? rowUrl.objectUrl : URL.createObjectURL(source.file)) : null;
    state.current = { body, ...source, objectUrl, ownUrl: Boolean(source.file && !rowUrl) };

    $("result-source").textContent = source.file ? source.file.name : source.url;
    renderVerdict(body);
    renderImage(body, objectUrl);
    renderProvenance(body);
    renderDetectors(body);
    $("result").hidden = false;
  }

  function renderVerdict(body) {
    const label = $("verdict-label");
    label.textContent = body.label;
    label.className = `verdict-label ${labelClass(body.label)}`;
    label.setAttribute("tabindex", "-1"); // focus target after "Details" in the batch table
    $("verdict-uncertain").hidden = !body.uncertain;
    $("verdict-prob").textContent = formatProb(body.fusion_prob);
    $("verdict-prob").dataset.value = body.fusion_prob ?? "";
    $("verdict-threshold").textContent = formatProb(body.threshold);
    renderBar(body);
    $("decided-by").textContent = decidedBy(body);
    $("hard-note").hidden = !["hard_evidence", "provenance"].includes(body.decided_by);
    // The first reason is the plain sentence, shown first and large; "Why" lists the rest.
    const [summary = "", ...reasons] = body.reasoning || [];
    $("verdict-summary").textContent = summary;
    $("verdict-summary").className = `verdict-summary ${labelClass(body.label)}`;
    $("reasoning").replaceChildren(...reasons.map((reason) => el("li", { text: reason })));
  }

  /** fusion_prob on a 0-1 bar, with the threshold and the uncertain range marked. */
  function renderBar(body) {
    const percent = (p) => `${(Math.min(Math.max(p, 0), 1) * 100).toFixed(2)}%`;
    const range = state.config.fusion.uncertain_range;
    const band = $("prob-uncertain");
    band.hidden = !Array.isArray(range);
    if (Array.isArray(range)) {
      band.style.left = percent(range[0]);
      band.style.width = percent(range[1] - range[0]);
    }
    const threshold = $("prob-threshold");
    threshold.hidden = typeof body.threshold !== "number";
    if (!threshold.hidden) threshold.style.left = percent(body.threshold);
    const marker = $("prob-marker");
    marker.hidden = typeof body.fusion_prob !== "number";
    if (!marker.hidden) marker.style.left = percent(body.fusion_prob);
    const rangeText = Array.isArray(range) ? `, uncertain from ${formatProb(range[0])} to ${formatProb(range[1])}` : "";
    $("prob-bar").setAttribute(
      "aria-label",
      `P(AI) ${formatProb(body.fusion_prob)} on a scale from 0 (camera) to 1 (AI); ` +
        `threshold ${formatProb(body.threshold)}${rangeText}`,
    );
  }

  const KIND_TEXT = {
    generated: "AI generation",
    ai_edited: "an AI edit",
    captured: "a camera capture",
    edited: "an edited camera capture",
  };

  /** One sentence on what settled the label. */
  function decidedBy(body) {
    // "hard_evidence" settles AI, "provenance" a trusted camera capture (NON-AI): both are provenance.
    if (body.decided_by === "hard_evidence" || body.decided_by === "provenance") return `Decided by ${provenanceSource(body)}.`;
    if (body.decided_by === "fusion") return `Decided by the fusion model (${body.fusion_model || "fusion"}).`;
    // "rule": the service was configured for the plain mean of the detectors' probabilities (fusion.model: rule).
    if (body.decided_by === "rule") return "Decided by an uncalibrated average of the detectors' probabilities (fusion.model: rule), not a trained fusion model.";
    return "No detector that the fusion model reads answered: no verdict.";
  }

  /** "Content Credentials signed by X (...)", or the generator metadata or watermark that decided the label. */
  function provenanceSource(body) {
    // The verdict's own provenance summary first (tolerated when absent), then the provenance detector's details.
    const summary = body.provenance || {};
    const details = provenanceDetails(body);
    const c2pa = details.c2pa || {};
    const signer = summary.signer || (c2pa.ai_claim ? c2pa.signer : null);
    if (signer && (summary.source === "c2pa" || !summary.source)) {
      const trusted = typeof summary.trusted === "boolean" ? summary.trusted : c2pa.trusted;
      const trust = trusted === true ? "trusted signer" : trusted === false ? "signer not on the trust list" : "";
      const kind = KIND_TEXT[summary.kind] ? `, declaring ${KIND_TEXT[summary.kind]}` : "";
      return `Content Credentials signed by ${signer}${trust ? ` (${trust}${kind})` : kind}`;
    }
    const watermark = details.watermark || {};
    if (watermark.detected) return `an invisible ${watermark.generator || watermark.detected} watermark`;
    const generator = summary.generator || details.generator;
    if (generator) return `generator metadata (${generator})`;
    return summary.source ? `provenance evidence (${summary.source})` : "provenance evidence";
  }

  /** The provenance detector's structured details, or {} (it failed, or is not enabled). */
  function provenanceDetails(body) {
    return (body.details && body.details.provenance && body.details.provenance.provenance) || {};
  }

  // ---- image, heatmaps ----------------------------------------------------------------------------------
  function renderImage(body, objectUrl) {
    const base = $("image-base");
    base.hidden = !objectUrl;
    if (objectUrl) base.src = objectUrl;
    else base.removeAttribute("src");
    const overlay = $("image-overlay");
    overlay.hidden = true;
    overlay.removeAttribute("src");
    // Without a local copy (URL input) the overlay image is shown on its own, not over anything.
    overlay.classList.toggle("standalone", !objectUrl);
    $("heatmap-choices").hidden = true;
    $("heatmap-opacity-row").hidden = true;
    $("heatmap-options").replaceChildren();
    const load = $("heatmap-load");
    load.hidden = (state.config.heatmaps || []).length === 0;
    load.disabled = false;
    load.textContent = "Show heatmaps";

    const img = body.image || {};
    $("image-caption").textContent = img.width ? `${img.width} x ${img.height} px, ${img.format}` : "";
    $("image-info").replaceWith(
      Object.assign(
        keyValues([
          ["Size", img.width ? `${img.width} x ${img.height} px` : null],
          ["Format", img.format],
          ["Colour mode", img.mode],
          ["Frames", img.frames > 1 ? img.frames : null],
          ["File size", formatBytes(img.bytes)],
          ["SHA-256", img.sha256 ? el("code", { className: "hash", text: img.sha256 }) : null],
          ["Request id", body.request_id ? el("code", { text: body.request_id }) : null],
        ]),
        { id: "image-info" },
      ),
    );
  }

  /** Heatmaps are computed only on request: the image is sent again with ?artifacts=true. */
  async function loadHeatmaps() {
    const current = state.current;
    if (!current) return;
    const button = $("heatmap-load");
    button.disabled = true;
    button.textContent = "Computing heatmaps ...";
    const { status, body } = await request(current, true);
    if (state.current !== current) return; // another image was chosen meanwhile
    if (!body || !body.artifacts) {
      button.disabled = false;
      button.textContent = "Show heatmaps";
      showError(body.error || "no_heatmaps", body.detail || "the service returned no heatmaps", status);
      return;
    }
    current.artifacts = body.artifacts;
    const names = Object.keys(body.artifacts);
    button.hidden = true;
    const options = $("heatmap-options");
    options.replaceChildren();
    if (names.length === 0) {
      options.append(el("p", { className: "hint", text: "No detector produced a heatmap for this image." }));
    }
    for (const choice of ["none", ...names]) {
      const id = `heatmap-${choice}`;
      const radio = el("input", { type: "radio", name: "heatmap", id, value: choice });
      radio.addEventListener("change", () => showHeatmap(choice));
      options.append(el("span", { className: "choice" }, radio, el("label", { for: id, text: heatmapTitle(choice) })));
    }
    $("heatmap-choices").hidden = false;
    if (names.length) {
      $(`heatmap-${names[0]}`).checked = true;
      showHeatmap(names[0]);
    }
  }

  function heatmapTitle(name) {
    return { none: "Off", ela_heatmap: "ELA (error level)", mantra_heatmap: "ManTra-Net (tampering)" }[name] || name;
  }

  function showHeatmap(name) {
    const overlay = $("image-overlay");
    const artifact = state.current && state.current.artifacts ? state.current.artifacts[name] : null;
    $("heatmap-opacity-row").hidden = !artifact;
    if (!artifact) {
      overlay.hidden = true;
      return;
    }
    overlay.src = `data:image/png;base64,${artifact.overlay_png_base64}`;
    overlay.alt = `${heatmapTitle(name)} heatmap from ${artifact.detector}: red marks the regions it flags`;
    overlay.dataset.heatmap = name;
    overlay.hidden = false;
    applyOpacity();
  }

  function applyOpacity() {
    const overlay = $("image-overlay");
    // Shown alone (no local image under it), the overlay stays fully visible.
    overlay.style.opacity = overlay.classList.contains("standalone") ? "1" : String($("heatmap-opacity").value / 100);
  }

  // ---- provenance ----------------------------------------------------------------------------------------
  function yesNo(value) {
    return value === true ? "yes" : value === false ? "no" : null;
  }

  function renderProvenance(body) {
    const root = $("provenance");
    root.replaceChildren();
    // The verdict's summary object, when the service sends one; kind "none" means no provenance claim.
    const summary = body.provenance;
    if (summary && typeof summary === "object" && summary.kind && summary.kind !== "none") {
      root.append(
        el("h4", { text: "Summary" }),
        keyValues([
          ["Declares", KIND_TEXT[summary.kind] || summary.kind],
          ["Signer", summary.signer],
          ["Trusted", summary.signer ? yesNo(summary.trusted) : null],
          ["Generator", summary.generator],
          ["Device", summary.device],
          ["Source", summary.source],
          ["Conflicts", Array.isArray(summary.conflicts) ? summary.conflicts.join("; ") : null],
        ]),
      );
    } else if (summary && summary.kind === "none") {
      root.append(el("p", { className: "hint", text: "No provenance claim either way." }));
    }
    const details = body.details && body.details.provenance && body.details.provenance.provenance;
    if (!details) {
      if (!summary) root.append(el("p", { className: "hint", text: "No provenance information in this answer." }));
      return;
    }
    root.append(c2paSection(details.c2pa), generatorSection(details), exifSection(details.exif));
    const evidence = details.evidence || [];
    if (evidence.length) {
      root.append(
        el("h4", { text: "Evidence" }),
        el(
          "ul",
          { className: "evidence" },
          ...evidence.map((e) =>
            el("li", {}, el("span", { className: `badge points-${e.points_to}`, text: `${e.strength}, ${e.points_to}` }), " ", e.what),
          ),
        ),
      );
    }
  }

  function c2paSection(c2pa) {
    const section = el("div", {}, el("h4", { text: "Content Credentials (C2PA)" }));
    if (!c2pa || !c2pa.present) {
      section.append(el("p", { className: "hint", text: "None in this file." }));
      return section;
    }
    const issues = c2pa.signer_issues || [];
    const trusted = typeof c2pa.trusted === "boolean" ? c2pa.trusted && issues.length === 0 : issues.length === 0;
    const trustText = trusted ? "yes" : issues.length ? `no (${issues.join(", ")})` : "no";
    const actions = (c2pa.ai_claims || []).map(
      (claim) => `${claim.action || "?"} by ${claim.software_agent || claim.claim_generator || "?"} (${claim.reason || ""})`,
    );
    section.append(
      keyValues([
        ["Validation", c2pa.validation],
        ["Signer", c2pa.signer],
        ["Organisation", c2pa.signer_org !== c2pa.signer ? c2pa.signer_org : null],
        ["Signer trusted", trustText],
        ["Declares", KIND_TEXT[c2pa.kind] || null],
        ["Signed at", c2pa.signed_at],
        ["Claim generator", c2pa.claim_generator],
        ["AI generation declared", yesNo(c2pa.ai_claim)],
        ["AI actions", actions.length ? actions.join("; ") : null],
        ["Edits", (c2pa.edits || []).join(", ")],
        ["Integrity failures", (c2pa.integrity_failures || []).join(", ")],
      ]),
    );
    return section;
  }

  function generatorSection(details) {
    const section = el("div", {}, el("h4", { text: "Generator metadata" }));
    const findings = details.generator_metadata || [];
    const software = (details.software || []).map((s) => `${s.value} (${s.where}, ${s["class"]})`);
    const watermark = details.watermark || {};
    const pairs = [
      ["Generator", details.generator],
      ["Model", details.model],
      ["Found", findings.map((f) => `${f.tool || "?"} in ${f.where || "?"}`).join("; ")],
      ["Software", software.join("; ")],
      ["Invisible watermark", watermark.checked ? (watermark.detected ? `yes: ${watermark.detected}` : "none found") : null],
    ];
    if (pairs.every(([, v]) => v === null || v === undefined || v === "" || v === "none found")) {
      section.append(el("p", { className: "hint", text: "No generator metadata or watermark found." }));
    } else {
      section.append(keyValues(pairs));
    }
    return section;
  }

  function exifSection(exif) {
    const section = el("div", {}, el("h4", { text: "Camera EXIF" }));
    if (!exif || !exif.present) {
      section.append(el("p", { className: "hint", text: "No EXIF metadata." }));
      return section;
    }
    const dates = exif.dates && exif.dates.values ? exif.dates.values : {};
    section.append(
      keyValues([
        ["Camera", [exif.make, exif.model].filter(Boolean).join(" ") || null],
        ["Taken", dates.DateTimeOriginal || dates.DateTime],
        ["Exposure fields", (exif.exposure_fields || []).join(", ")],
        ["GPS", exif.gps ? yesNo(exif.gps.present) : null],
        ["EXIF score", typeof exif.exif_score === "number" ? exif.exif_score.toFixed(2) : null],
        ["Problems", (exif.problems || []).join("; ")],
      ]),
    );
    return section;
  }

  // ---- detectors -----------------------------------------------------------------------------------------
  function directionText(direction) {
    return { ai_high: "higher = more AI", real_high: "higher = more camera", neutral: "context" }[direction] || direction || "";
  }

  function renderDetectors(body) {
    const root = $("detectors");
    root.replaceChildren();
    for (const [name, report] of Object.entries(body.detectors || {})) {
      const features = Object.entries(state.specs)
        .filter(([, spec]) => spec.detector === name)
        .map(([feature, spec]) => ({ feature, spec, value: body[feature] }));
      // Without /v1/detectors, no spec is known: the row still shows status and latency.
      const summary = el(
        "summary",
        {},
        el("span", { className: "det-name", text: name }),
        " ",
        el("span", { className: `badge status-${report.status}`, text: report.status }),
        " ",
        // A detector the fusion model does not read is reported, but cannot move P(AI).
        report.role === "context" ? el("span", { className: "role-context", text: "context, not read by the fusion" }) : null,
        report.role === "context" ? " " : null,
        el("span", { className: "hint", text: typeof report.latency_ms === "number" ? `${report.latency_ms.toFixed(0)} ms` : "" }),
      );
      const rows = features.map(({ feature, spec, value }) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, el("code", { text: feature })),
          el("td", { className: "num", text: typeof value === "number" ? value.toFixed(3) : "-" }),
          el("td", { text: directionText(spec.direction) + (spec.fusion_input === false ? " (not a fusion input)" : "") }),
          el("td", { text: spec.description || "" }),
        ),
      );
      const table = rows.length
        ? el(
            "div",
            { className: "table-scroll" },
            el(
              "table",
              { className: "features" },
              el("thead", {}, el("tr", {}, ...["Feature", "Value", "Direction", "Meaning"].map((t) => el("th", { scope: "col", text: t })))),
              el("tbody", {}, ...rows),
            ),
          )
        : null;
      const extra = keyValues([
        ["Version", report.version],
        ["Error", report.error],
      ]);
      root.append(el("details", { className: "detector", "data-detector": name }, summary, extra, table));
    }
    const t = body.timings || {};
    $("timings").textContent =
      typeof t.total_ms === "number"
        ? `Service time ${t.total_ms.toFixed(0)} ms (decode ${t.decode_ms} ms, detectors ${t.detectors_ms} ms, fusion ${t.fusion_ms} ms).`
        : "";
  }

  // ---- wiring --------------------------------------------------------------------------------------------
  function wire() {
    const input = $("file-input");
    $("choose-files").addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      handleFiles(input.files);
      input.value = ""; // choosing the same file again fires "change" again
    });

    const zone = $("dropzone");
    zone.addEventListener("dragover", (event) => {
      event.preventDefault(); // allows the drop
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("dragging");
      handleFiles(event.dataTransfer.files);
    });
    // A file dropped beside the zone must not make the browser navigate away to it.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());

    document.addEventListener("paste", (event) => {
      const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
      if (files.length) {
        event.preventDefault();
        handleFiles(files);
      }
    });

    $("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      clearError();
      scoreOne({ url: $("url-input").value.trim() });
    });

    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      apiKey = $("key-input").value.trim();
      $("key-input").value = "";
      try {
        sessionStorage.setItem(KEY_STORAGE, apiKey);
      } catch (err) {
        // Private mode: the key lives until the page is closed.
      }
      clearError();
      askForKey(apiKey ? "API key (one is set for this tab)" : "This service needs an API key");
      loadDetectorSpecs();
    });

    $("heatmap-load").addEventListener("click", loadHeatmaps);
    $("heatmap-opacity").addEventListener("input", applyOpacity);
    for (const button of document.querySelectorAll("#batch-table button.sort")) button.addEventListener("click", onSort);
    $("download-csv").addEventListener("click", downloadCsv);
    $("download-json").addEventListener("click", downloadJson);
  }

  wire();
  // The page is usable at once; limits and feature meanings fill in when they arrive.
  loadConfig().then(() => document.body.setAttribute("data-ready", "true"));
  loadDetectorSpecs().then(() => {
    // A result shown before the meanings arrived gets its feature tables now.
    if (state.current) renderDetectors(state.current.body);
    document.body.setAttribute("data-specs", "true");
  });
})();
