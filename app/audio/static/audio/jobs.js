"use strict";
// Upload with a progress bar; the job list follows server-sent events, or polls if they fail.
(function () {
  const form = document.getElementById("upload");
  const table = document.getElementById("jobs");
  const csrf = () => form.querySelector("[name=csrfmiddlewaretoken]").value;

  function text(tag, value, className) {
    const el = document.createElement(tag);
    el.textContent = value;
    if (className) el.className = className;
    return el;
  }

  function render(job) {
    let row = table.querySelector(`tr[data-job="${job.id}"]`);
    if (job.deleted) {
      if (row) row.remove();
      return;
    }
    if (!row) {
      const empty = table.querySelector("tr.empty");
      if (empty) empty.remove();
      row = document.createElement("tr");
      row.dataset.job = job.id;
      const link = text("a", job.original_name);
      link.href = `/jobs/${job.id}/`;
      const name = document.createElement("td");
      name.append(link);
      const bar = document.createElement("progress");
      bar.max = 100;
      const progress = document.createElement("td");
      progress.append(bar);
      row.append(name, text("td", job.preset), text("td", ""), progress,
                 text("td", (job.created_at || "").replace("T", " ").slice(0, 16)));
      table.tBodies[0].prepend(row);
    }
    const status = row.children[2];
    status.textContent = job.status + (job.phase ? ` · ${job.phase}` : "");
    status.className = `status status-${job.status}`;
    row.querySelector("progress").value = job.progress;
  }

  let pollTimer = null;
  function poll() {
    fetch(table.dataset.api, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((page) => page.results.forEach(render))
      .catch(() => {});
  }
  // How the list is kept live ("sse" or "polling"), for the reader and the browser test.
  function startPolling() {
    table.dataset.live = "polling";
    if (!pollTimer) pollTimer = setInterval(poll, 3000);
  }

  // A refused stream (429 beyond the per-user cap, 503) closes for good: poll instead.
  if (window.EventSource) {
    const events = new EventSource(table.dataset.events);
    events.addEventListener("open", () => { table.dataset.live = "sse"; });
    events.addEventListener("job", (e) => {
      table.dataset.sseEvents = String(Number(table.dataset.sseEvents || 0) + 1);
      render(JSON.parse(e.data));
    });
    events.onerror = () => {
      if (events.readyState === EventSource.CLOSED) startPolling();
    };
  } else {
    startPolling();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = document.getElementById("file").files[0];
    const message = document.getElementById("upload-message");
    if (!file) return;
    if (file.size > Number(form.dataset.maxBytes)) {
      message.textContent = "The file is larger than the upload limit.";
      return;
    }
    const data = new FormData();
    data.append("file", file);
    data.append("preset", document.getElementById("preset").value);
    const bar = document.getElementById("upload-progress");
    bar.hidden = false;
    bar.value = 0;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.api);
    xhr.setRequestHeader("X-CSRFToken", csrf());
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    xhr.onload = () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 202) {
        message.textContent = "Uploaded: processing.";
        render(body);
        form.reset();
      } else {
        message.textContent = body.detail || Object.values(body).flat().join(" ") || `Upload failed (${xhr.status}).`;
      }
    };
    xhr.onerror = () => { message.textContent = "Upload failed: network error."; };
    xhr.send(data);
  });
})();
