"use strict";
// The job page: draws the waveform from its peaks (BBC audiowaveform JSON); follows progress.
(function () {
  const section = document.getElementById("job");
  const canvas = document.getElementById("waveform");

  function draw(peaks) {
    const ctx = canvas.getContext("2d");
    const { width, height } = canvas;
    const pairs = peaks.data.length / 2;
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = "#2563eb";
    for (let x = 0; x < width; x++) {
      const start = Math.floor((x * pairs) / width);
      const end = Math.max(Math.floor(((x + 1) * pairs) / width), start + 1);
      let low = 0, high = 0;
      for (let i = start; i < end && i < pairs; i++) {
        low = Math.min(low, peaks.data[2 * i]);
        high = Math.max(high, peaks.data[2 * i + 1]);
      }
      const top = height / 2 - (high / 128) * (height / 2);
      const bottom = height / 2 - (low / 128) * (height / 2);
      ctx.fillRect(x, top, 1, Math.max(bottom - top, 1));
    }
    canvas.dataset.drawn = String(pairs);
  }

  if (canvas) {
    fetch(canvas.dataset.peaks, { credentials: "same-origin" }).then((r) => r.json()).then(draw);
  }

  if (["queued", "processing"].includes(section.dataset.status)) {
    const timer = setInterval(() => {
      fetch(section.dataset.api, { credentials: "same-origin" })
        .then((r) => r.json())
        .then((job) => {
          document.getElementById("job-status").textContent = job.status + (job.phase ? ` · ${job.phase}` : "");
          document.getElementById("job-progress").value = job.progress;
          if (!["queued", "processing"].includes(job.status)) {
            clearInterval(timer);
            window.location.reload();
          }
        });
    }, 1500);
  }
})();
