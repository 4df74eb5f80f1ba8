// mlox-iac ui: reveal and copy a secret, load a log tail, follow a job's events.
// Plain JavaScript, no library: every state-changing request carries the CSRF token.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;

async function reveal(button) {
  const target = document.getElementById(button.dataset.target);
  const response = await fetch(`/stacks/${encodeURIComponent(button.dataset.stack)}/reveal`, {
    method: "POST", credentials: "same-origin", cache: "no-store",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify({secret: button.dataset.secret}),
  });
  const answer = await response.json();
  if (!response.ok) { target.textContent = answer.error || `refused (${response.status})`; target.classList.add("error"); return; }
  target.textContent = answer.value;
  target.classList.add("revealed");
  button.disabled = true;
  const copy = button.parentElement.querySelector("button.copy");
  if (copy) copy.disabled = false;
}

async function copy(button) {
  const text = document.getElementById(button.dataset.target).textContent;
  try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; }
  catch (e) { button.textContent = "Select and copy by hand"; }
}

async function loadLogs(details) {
  if (!details.open || details.dataset.loaded) return;
  details.dataset.loaded = "1";
  const response = await fetch(details.dataset.url, {credentials: "same-origin"});
  details.querySelector("pre").textContent = await response.text();
}

function followJob(box) {
  const log = document.getElementById("job-log"), diff = document.getElementById("job-diff");
  const bar = document.getElementById("job-progress"), line = document.getElementById("job-line");
  const state = document.getElementById("job-state");
  const source = new EventSource(box.dataset.events);
  source.onmessage = (message) => {
    const item = JSON.parse(message.data);
    if (item.kind === "line") log.textContent += item.text + "\n";
    else if (item.kind === "progress") { bar.max = Math.max(item.total, 1); bar.value = item.done; line.textContent = item.line; }
    else if (item.kind === "diff") {
      const block = document.createElement("div");
      block.className = "diff-resource";
      block.dataset.resource = item.name;
      const head = document.createElement("div");
      head.className = "diff-head";
      head.textContent = `${item.op} ${item.name} (${item.type})`;
      block.appendChild(head);
      for (const [sign, key, value] of item.rows) {
        const row = document.createElement("div");
        row.className = sign === "-" ? "del" : sign === "+" ? "add" : "chg";
        row.textContent = `${sign} ${key}: ${value}`;
        block.appendChild(row);
      }
      diff.appendChild(block);
    } else if (item.kind === "end") {
      state.textContent = item.error ? `${item.state}: ${item.error}` : item.state;
      state.className = `pill ${item.state}`;
      box.dataset.state = item.state;
      if (item.error) { state.setAttribute("role", "alert"); }
      source.close();
    }
  };
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("reveal")) reveal(button);
  else if (button.classList.contains("copy")) copy(button);
});
document.querySelectorAll("details.logs").forEach((d) => d.addEventListener("toggle", () => loadLogs(d)));
const job = document.getElementById("job");
if (job) followJob(job);
