// Arena page: one pair at a time; click or press keys to answer each question; the next pair follows.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const study = document.getElementById("arena").dataset.study;
  const status = document.getElementById("status");
  const questions = Array.from(document.querySelectorAll(".question"));
  let pair = null, current = 0, busy = false;

  function highlight() {
    questions.forEach((q, i) => q.classList.toggle("current", i === current));
  }
  async function next() {
    const r = await fetch("/api/humaneval/" + encodeURIComponent(study) + "/next", { credentials: "same-origin" });
    if (r.status === 204) {
      document.getElementById("arena").hidden = true; document.getElementById("done").hidden = false; pair = null; return;
    }
    if (!r.ok) { status.textContent = (await r.json()).error; status.className = "status error"; return; }
    pair = await r.json();
    document.getElementById("prompt").textContent = pair.prompt;   // text, never HTML
    document.getElementById("left").src = pair.left_url;
    document.getElementById("right").src = pair.right_url;
    questions.forEach(q => { q.classList.remove("answered"); q.querySelectorAll("button").forEach(b => b.classList.remove("chosen")); });
    current = 0; highlight();
    status.textContent = "";
    document.getElementById("arena").dataset.pair = pair.pair_id;
  }
  async function vote(index, choice) {
    if (!pair || busy) return;
    busy = true;
    const q = questions[index];
    try {
      const r = await fetch("/api/humaneval/" + encodeURIComponent(study) + "/votes", {
        method: "POST", credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf },
        body: JSON.stringify({ pair_id: pair.pair_id, question: q.dataset.question, choice: choice }),
      });
      if (!r.ok) { status.textContent = (await r.json()).error; status.className = "status error"; return; }
      q.classList.add("answered");
      q.querySelectorAll("button").forEach(b => b.classList.toggle("chosen", b.dataset.choice === choice));
      const open = questions.findIndex(x => !x.classList.contains("answered"));
      if (open === -1) { await next(); } else { current = open; highlight(); }
    } finally { busy = false; }
  }
  questions.forEach((q, i) => q.querySelectorAll("button").forEach(b => b.addEventListener("click", () => vote(i, b.dataset.choice))));
  document.addEventListener("keydown", (ev) => {
    const key = ev.key.toLowerCase();
    const choice = { arrowleft: "left", a: "left", arrowright: "right", l: "right", arrowdown: "tie", t: "tie" }[key];
    if (choice) { ev.preventDefault(); vote(current, choice); }
  });
  next();
})();
