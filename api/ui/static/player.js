/* The recording player: one waveform lane per channel, drawn from the peak data the server
   computed while recording (never by decoding the audio here), pauses shaded, key presses
   marked, a playhead, click or arrow keys to seek, speed, and a volume per channel through
   the Web Audio API (splitter -> one gain per channel -> merger). */
"use strict";

(() => {
  const dataEl = document.getElementById("player-data");
  const audio = document.getElementById("audio");
  if (!dataEl || !audio) return;
  const data = JSON.parse(dataEl.textContent);
  const lanes = Array.from(document.querySelectorAll(".lane"));
  const status = document.getElementById("waveform-status");
  const clock = document.getElementById("clock");
  let duration = data.duration_s || 0;
  let peaks = null;

  const fmt = (s) => {
    s = Math.max(0, Math.floor(s || 0));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  };

  function place() {
    // Overlays are positioned through the CSSOM (allowed by the CSP, unlike style attributes).
    for (const lane of lanes) {
      const body = lane.querySelector(".lane-body");
      for (const pause of body.querySelectorAll(".pause")) {
        const start = parseFloat(pause.dataset.start) || 0;
        const end = parseFloat(pause.dataset.end);
        const stop = isNaN(end) ? duration : end;
        if (!duration) { pause.hidden = true; continue; }
        pause.style.left = `${(100 * start) / duration}%`;
        pause.style.width = `${Math.max(0.3, (100 * (stop - start)) / duration)}%`;
      }
    }
  }

  function draw() {
    for (const lane of lanes) {
      const channel = parseInt(lane.dataset.channel, 10);
      const canvas = lane.querySelector("canvas");
      const width = Math.max(100, Math.floor(canvas.parentNode.clientWidth));
      const ratio = window.devicePixelRatio || 1;
      canvas.width = width * ratio;
      canvas.height = 64 * ratio;
      canvas.style.width = `${width}px`;
      canvas.style.height = "64px";
      const g = canvas.getContext("2d");
      g.scale(ratio, ratio);
      g.clearRect(0, 0, width, 64);
      g.fillStyle = "#d0d7de";
      g.fillRect(0, 31.5, width, 1);
      const lanePeaks = peaks && peaks.channels.find((c) => c.index === channel);
      if (!lanePeaks || !duration) continue;
      const levels = lanePeaks.levels;
      const perSecond = 1000 / peaks.interval_ms;
      g.fillStyle = "#0b5cad";
      for (let x = 0; x < width; x++) {
        const from = Math.floor(((x / width) * duration) * perSecond);
        const to = Math.max(from + 1, Math.floor((((x + 1) / width) * duration) * perSecond));
        let peak = 0;
        for (let i = from; i < to && i < levels.length; i++) if (levels[i] > peak) peak = levels[i];
        // Speech lives in the lower levels: a square root makes it visible next to shouts.
        const h = Math.sqrt(peak / 255) * 30;
        if (h > 0) g.fillRect(x, 32 - h, 1, 2 * h);
      }
      g.fillStyle = "#b3261e";
      for (const press of peaks.key_presses.filter((p) => p.channel === channel)) {
        const x = (press.start_s / duration) * width;
        g.beginPath();
        g.moveTo(x - 4, 0); g.lineTo(x + 4, 0); g.lineTo(x, 8); g.closePath(); g.fill();
        g.fillRect(x - 0.5, 0, 1, 64);
      }
    }
  }

  function listKeyPresses() {
    const list = document.getElementById("keypress-list");
    if (!list || !peaks) return;
    list.replaceChildren();
    for (const press of peaks.key_presses) {
      const li = document.createElement("li");
      li.className = "keypress-item";
      li.textContent = `Key press on channel ${press.channel + 1} at ${fmt(press.start_s)}`;
      list.appendChild(li);
    }
  }

  function playhead() {
    const t = audio.currentTime;
    clock.textContent = `${fmt(t)} / ${fmt(duration)}`;
    for (const lane of lanes) {
      const head = lane.querySelector(".playhead");
      const body = lane.querySelector(".lane-body");
      body.setAttribute("aria-valuenow", t.toFixed(1));
      body.setAttribute("aria-valuetext", `${fmt(t)} of ${fmt(duration)}`);
      if (!duration) continue;
      head.hidden = false;
      head.style.left = `${(100 * Math.min(t, duration)) / duration}%`;
    }
  }

  function seek(seconds) {
    if (!duration) return;
    audio.currentTime = Math.min(Math.max(0, seconds), duration);
    playhead();
  }

  for (const lane of lanes) {
    const body = lane.querySelector(".lane-body");
    body.addEventListener("click", (event) => {
      const box = body.getBoundingClientRect();
      seek(((event.clientX - box.left) / box.width) * duration);
    });
    body.addEventListener("keydown", (event) => {
      const step = event.shiftKey ? 15 : 5;
      if (event.key === "ArrowRight") seek(audio.currentTime + step);
      else if (event.key === "ArrowLeft") seek(audio.currentTime - step);
      else if (event.key === "Home") seek(0);
      else if (event.key === "End") seek(duration);
      else if (event.key === " ") { if (audio.paused) audio.play(); else audio.pause(); }
      else return;
      event.preventDefault();
    });
  }

  // Per-channel volume: built on first use, so that playback never depends on Web Audio.
  let gains = null;
  function audioGraph() {
    if (gains !== null) return gains;
    gains = [];
    try {
      const Context = window.AudioContext || window.webkitAudioContext;
      const context = new Context();
      const source = context.createMediaElementSource(audio);
      const count = Math.max(1, lanes.length);
      const splitter = context.createChannelSplitter(count);
      const merger = context.createChannelMerger(2);
      source.connect(splitter);
      for (let i = 0; i < count; i++) {
        const gain = context.createGain();
        splitter.connect(gain, i);
        // Every party is heard on both ears: the file's channels are parties, not sides.
        gain.connect(merger, 0, 0);
        gain.connect(merger, 0, 1);
        gains.push(gain);
      }
      merger.connect(context.destination);
      audio.addEventListener("play", () => context.resume());
      context.resume();
    } catch (e) {
      status.textContent = "Per-channel volume is not available in this browser.";
    }
    return gains;
  }
  for (const slider of document.querySelectorAll("input[data-gain]")) {
    slider.addEventListener("input", () => {
      const gain = audioGraph()[parseInt(slider.dataset.gain, 10)];
      if (gain) gain.gain.value = parseFloat(slider.value);
    });
  }

  document.getElementById("speed").addEventListener("change", (event) => {
    audio.playbackRate = parseFloat(event.target.value);
  });
  audio.addEventListener("timeupdate", playhead);
  audio.addEventListener("seeked", playhead);
  audio.addEventListener("loadedmetadata", () => {
    if (!duration && isFinite(audio.duration)) { duration = audio.duration; place(); draw(); }
    playhead();
  });
  audio.addEventListener("error", () => {
    status.textContent = "This browser cannot play the recording (Ogg Opus); download it instead.";
  });
  window.addEventListener("resize", draw);

  place();
  draw();
  playhead();
  Ui.api("GET", data.peaks).then((answer) => {
    if (answer.status !== 200) {
      status.textContent = `No waveform: ${Ui.words(answer)}`;
      return;
    }
    if (!answer.body.available) {
      status.textContent = "No waveform for this recording (made before waveforms were stored).";
      document.body.dataset.waveform = "none";
      return;
    }
    peaks = answer.body;
    draw();
    listKeyPresses();
    document.body.dataset.waveform = "ready";
  });
})();
