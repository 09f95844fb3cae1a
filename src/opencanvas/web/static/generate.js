// Generate page: submit a job, poll its progress, show the image, its metadata and its nearest training images.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const form = document.getElementById("generate-form");
  const progress = document.getElementById("progress");
  const status = document.getElementById("status");
  const params = new URLSearchParams(location.search);
  if (params.get("run")) document.getElementById("run").value = params.get("run");

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined && text !== null) e.textContent = String(text);  // text, never HTML
    return e;
  }
  function safeHref(url) {
    try { const u = new URL(url); return (u.protocol === "http:" || u.protocol === "https:") ? u.href : null; }
    catch (e) { return null; }
  }
  function link(text, url) {
    const href = url && safeHref(url);
    if (!href) return el("span", {}, text);
    return el("a", { href: href, rel: "noopener noreferrer nofollow", target: "_blank" }, text);
  }
  function neighbour(n, score) {
    const a = n.attribution || {};
    const card = el("div", { class: "neighbour" });
    card.append(el("img", { src: n.thumb_url, alt: "training image " + n.key }));
    card.append(el("div", { class: "score" }, score));
    const title = el("div", { class: "title" }); title.append(link(a.title || n.key, a.landing_url)); card.append(title);
    const who = el("div", { class: "author" }, "by "); who.append(link(a.creator || "unknown", a.creator_url)); card.append(who);
    const lic = el("div", { class: "license" });
    lic.append(link((a.license_id || "?") + (a.license_version ? " " + a.license_version : ""), a.license_url));
    card.append(lic);
    return card;
  }
  function show(job) {
    document.getElementById("result").hidden = false;
    document.getElementById("image").src = job.image_url;
    const meta = document.getElementById("meta"); meta.replaceChildren();
    for (const k of ["prompt", "seed", "sampler", "steps", "guidance", "size", "model", "weights_hash", "license_policy", "catalog_hash"]) {
      meta.append(el("dt", {}, k), el("dd", {}, job.metadata[k]));
    }
    const nb = job.neighbours || {};
    document.getElementById("neighbour-note").textContent =
      "Searched " + nb.index_size + " training images" + (nb.clip_model ? " (CLIP " + nb.clip_model + ")" : "") + (nb.note ? ". " + nb.note : "");
    document.getElementById("by-clip").replaceChildren(...(nb.clip || []).map(n => neighbour(n, "cosine " + n.cosine.toFixed(3))));
    document.getElementById("by-phash").replaceChildren(...(nb.phash || []).map(n => neighbour(n, "pHash distance " + n.distance + " bits")));
  }
  async function poll(id) {
    const r = await fetch("/api/generate/" + encodeURIComponent(id), { credentials: "same-origin" });
    const job = await r.json();
    progress.value = job.progress;
    if (job.status === "done") { progress.value = 1; status.textContent = "Done."; show(job); return finish(); }
    if (job.status === "failed") { status.textContent = "Failed: " + job.error; status.className = "status error"; return finish(); }
    status.textContent = job.status === "queued" ? "Waiting for the worker..." : "Generating... " + Math.round(100 * job.progress) + "%";
    setTimeout(() => poll(id), 150);
  }
  function finish() { document.getElementById("go").disabled = false; }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    document.getElementById("go").disabled = true;
    status.className = "status"; status.textContent = "Submitting...";
    progress.hidden = false; progress.value = 0;
    const body = {
      run: form.run.value, prompt: form.prompt.value, guidance: parseFloat(form.guidance.value),
      steps: parseInt(form.steps.value, 10), sampler: form.sampler.value, seed: parseInt(form.seed.value, 10),
    };
    const r = await fetch("/api/generate", {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrf }, body: JSON.stringify(body),
    });
    const job = await r.json();
    if (!r.ok) { status.textContent = job.error; status.className = "status error"; return finish(); }
    poll(job.id);
  });
})();
