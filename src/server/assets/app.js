// diffedit serve: the page. Plain ES2020, no framework, no build step; it talks to the JSON API under /api/
// (see the README's API table) and nothing else.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN = new URLSearchParams(location.search).get("token");
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  const MASK_RGB = [255, 48, 96]; // the mask's tint in the editor (shown at partial opacity)
  const THRESHOLD_DEBOUNCE_MS = 60; // gathers a burst of slider moves into one request

  // The edit parameters, by their API names (the CLI flags' long names with underscores).
  const PARAMS = [
    { key: "steps", kind: "int", label: "Steps" },
    { key: "encode_ratio", kind: "float", label: "Encode ratio" },
    { key: "guidance", kind: "float", label: "Guidance" },
    { key: "inversion_guidance", kind: "float", label: "Inversion guidance" },
    { key: "mask_samples", kind: "int", label: "Mask samples" },
    { key: "mask_noise_level", kind: "float", label: "Mask noise level" },
    { key: "seed", kind: "seed", label: "Seed" },
    { key: "alignment", kind: "choice", label: "Alignment" },
  ];

  // The parameters the mask depends on (the others only shape the edit).
  const MASK_INPUTS = ["steps", "mask_samples", "mask_noise_level", "seed", "alignment"];

  const state = {
    health: null,
    image: null, // {id, width, height, name}
    found: null, // the mask on show: {key, threshold, job}
    active: null, // the Find mask / Edit job the progress area follows: {id, kind, status, cancelling}
    uploading: false,
    history: [],
    currentResult: null,
  };

  // ------------------------------------------------------------------ small helpers

  /** Appends ?token=T to a URL the browser fetches by itself (img src, EventSource, download links). */
  function withToken(url) {
    if (!url) return url;
    if (!TOKEN) return url;
    const u = new URL(url, location.href);
    u.searchParams.set("token", TOKEN);
    return u.origin === location.origin ? u.pathname + u.search : u.href;
  }

  function fmtSeconds(s) {
    if (s == null || !isFinite(s)) return "";
    if (s < 1) return "under 1 s";
    if (s < 60) return `${Math.round(s)} s`;
    const m = Math.floor(s / 60);
    return `${m} min ${String(Math.round(s - m * 60)).padStart(2, "0")} s`;
  }

  function fmtPercent(fraction) {
    return `${(fraction * 100).toFixed(1)}%`;
  }

  function slug(text) {
    return (text || "edit").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 48) || "edit";
  }

  let busyCount = 0;
  /** data-busy on <body> is "true" while the page waits for anything: an upload, a job, a pending re-threshold. */
  function busy(delta) {
    busyCount = Math.max(0, busyCount + delta);
    document.body.dataset.busy = busyCount > 0 ? "true" : "false";
    updateButtons();
  }

  // ------------------------------------------------------------------ errors

  function showError(message, kind) {
    $("error").textContent = message;
    $("error").dataset.kind = kind || "";
    $("error-bar").hidden = false;
  }

  function clearError() {
    $("error").textContent = "";
    $("error-bar").hidden = true;
  }

  window.addEventListener("error", (e) => showError(`The page hit a bug: ${e.message}. Reloading the page may help.`));
  window.addEventListener("unhandledrejection", (e) => {
    const r = e.reason;
    showError(r instanceof ApiError ? r.message : `The page hit a bug: ${(r && r.message) || r}`);
  });

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(message, status, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  /**
   * One API call. `body` is a Blob (sent as is), a string (sent as JSON text) or an object (JSON-encoded).
   * Failures become ApiError with a message in words: the server's "error", or what went wrong on the way.
   */
  async function api(method, path, body, contentType) {
    const headers = {};
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    let payload = body;
    if (body !== undefined && !(body instanceof Blob) && typeof body !== "string") {
      payload = JSON.stringify(body);
    }
    if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
    let res;
    try {
      res = await fetch(path, { method, headers, body: payload, cache: "no-store" });
    } catch (e) {
      throw new ApiError("Cannot reach the server (the connection failed). Is “diffedit serve” still running?", 0);
    }
    const text = await res.text().catch(() => "");
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      let message = data && typeof data.error === "string" ? data.error : text.trim().slice(0, 300) || res.statusText;
      const retryAfter = res.headers.get("Retry-After");
      if (res.status === 429) {
        const wait = retryAfter && isFinite(Number(retryAfter)) ? fmtSeconds(Number(retryAfter)) : retryAfter;
        message = `${message.replace(/[.\s]*$/, ".")}` + (wait ? ` The server asks to retry in ${wait}.` : "");
      } else if (res.status === 401) {
        message = TOKEN
          ? `The server refused this page's token (${message}). Open the address that “diffedit serve” printed.`
          : `The server needs its access token (${message}). Open the address that “diffedit serve” printed: it ends in ?token=…`;
      } else if (res.status >= 500) {
        message = `The server failed (${res.status}): ${message}`;
      }
      throw new ApiError(message, res.status, retryAfter);
    }
    if (data === null && text) throw new ApiError(`The server answered ${method} ${path} with something that is not JSON.`, res.status);
    return data;
  }

  /**
   * Follows a job until it ends: its current state first (a re-threshold is finished before its POST returns),
   * then its event stream; if EventSource fails, polling GET /api/jobs/JOB. `onUpdate` gets every job JSON.
   */
  function follow(jobId, onUpdate) {
    return new Promise((resolve, reject) => {
      const path = `/api/jobs/${encodeURIComponent(jobId)}`;
      let settled = false;
      let source = null;
      let pollTimer = null;
      let watchdog = null;
      let failures = 0;
      const cleanup = () => {
        if (source) source.close();
        source = null;
        clearTimeout(pollTimer);
        clearTimeout(watchdog);
      };
      const handle = (job) => {
        if (settled || !job || typeof job.status !== "string") return;
        onUpdate(job);
        if (TERMINAL.has(job.status)) {
          settled = true;
          cleanup();
          resolve(job);
        }
      };
      const fail = (e) => {
        if (settled) return;
        settled = true;
        cleanup();
        reject(e);
      };
      const poll = (delay) => {
        clearTimeout(pollTimer);
        pollTimer = setTimeout(async () => {
          try {
            handle(await api("GET", path));
            failures = 0;
            if (!settled) poll(500);
          } catch (e) {
            if (e.status === 404 || ++failures >= 6) fail(e);
            else poll(1000);
          }
        }, delay);
      };
      // A stream that goes quiet for long (it should not) is checked by one GET, in case an event was missed.
      const armWatchdog = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(async () => {
          try {
            handle(await api("GET", path));
          } catch (_) {
            /* the stream's own error handler decides */
          }
          if (!settled && source) armWatchdog();
        }, 8000);
      };
      const stream = () => {
        if (settled) return;
        if (typeof EventSource === "undefined") return poll(0);
        try {
          source = new EventSource(withToken(`${path}/events`));
        } catch (_) {
          return poll(0);
        }
        source.onmessage = (ev) => {
          armWatchdog();
          let job = null;
          try {
            job = JSON.parse(ev.data);
          } catch (_) {
            return;
          }
          handle(job);
        };
        source.onerror = () => {
          if (settled) return;
          if (source) source.close();
          source = null;
          clearTimeout(watchdog);
          poll(0);
        };
        armWatchdog();
      };
      api("GET", path)
        .then((job) => {
          handle(job);
          stream();
        })
        .catch((e) => (e.status === 404 ? fail(e) : stream()));
    });
  }

  // ------------------------------------------------------------------ the model (GET /api/health)

  async function loadHealth(first) {
    if (first) busy(1);
    try {
      const h = await api("GET", "/api/health");
      state.health = h;
      const name = h.model_name || (h.model && h.model.unet) || "unknown model";
      $("model-name").textContent = name;
      if (h.model && typeof h.model === "object") {
        $("model-name").title = Object.entries(h.model)
          .map(([k, v]) => `${k}: ${v}`)
          .join("\n");
      }
      $("native-size").textContent = h.native_size ? `${h.native_size} px` : "—";
      applyDefaults(h.defaults || {}, false);
      if ($("error").dataset.kind === "health") clearError();
    } catch (e) {
      $("model-name").textContent = "not connected";
      if (e.status === 401) return showError(e.message, "health"); // retrying cannot help
      showError(`Could not load the model's details: ${e.message} Retrying every 5 s.`, "health");
      setTimeout(loadHealth, 5000);
    } finally {
      if (first) busy(-1);
    }
  }

  /** Fills the parameter fields with the model's defaults (all of them, or only the empty ones). */
  function applyDefaults(defaults, overwrite) {
    for (const p of PARAMS) {
      const el = $(p.key);
      if (defaults[p.key] === undefined) continue;
      if (overwrite || el.value === "" || !el.dataset.touched) el.value = String(defaults[p.key]);
    }
    if (defaults.mask_threshold !== undefined && (overwrite || !$("mask_threshold").dataset.touched)) {
      $("mask_threshold").value = String(defaults.mask_threshold);
      updateThresholdLabel();
    }
    refreshMaskNote();
  }

  // ------------------------------------------------------------------ the request from the form

  /** Reads and checks the form; returns {body, seedRaw, key, threshold} or shows what is wrong and returns null. */
  function buildRequest(opts = {}) {
    if (!state.image) {
      if (!opts.quiet) showError("Open a picture first: “Open…”, drop one on the page, or paste it.");
      return null;
    }
    // quiet: a check in passing (is the mask on show still current?), which must not complain or move the focus
    const fail = (id, message, inAdvanced) => (opts.quiet ? null : formError(id, message, inAdvanced));
    const source = $("source").value.trim();
    const target = $("target").value.trim();
    if (!opts.quiet) {
      if (!source) return fail("source", "Type the source prompt: what the picture shows.");
      if (!target) return fail("target", "Type the target prompt: what the picture should become.");
    }
    const params = {};
    let seedRaw = null;
    for (const p of PARAMS) {
      const el = $(p.key);
      const v = el.value.trim();
      if (el.validity && el.validity.badInput) return fail(p.key, `${p.label} is not a number.`, true);
      if (v === "") continue;
      if (p.kind === "int") {
        if (!/^-?\d+$/.test(v)) return fail(p.key, `${p.label} must be a whole number, got “${v}”.`, true);
        params[p.key] = Number(v);
      } else if (p.kind === "float") {
        const n = Number(v);
        if (!isFinite(n)) return fail(p.key, `${p.label} must be a number, got “${v}”.`, true);
        params[p.key] = n;
      } else if (p.kind === "seed") {
        if (!/^\d+$/.test(v)) return fail(p.key, `${p.label} must be a whole number ≥ 0, got “${v}”.`, true);
        seedRaw = v.replace(/^0+(?=\d)/, ""); // sent as written: seeds may exceed 2^53
      } else {
        params[p.key] = v;
      }
    }
    const threshold = opts.threshold !== undefined ? opts.threshold : thresholdValue();
    // What the normalised difference depends on: when only the rest changes, the mask on show still holds.
    const maskParams = MASK_INPUTS.map((k) => (k === "seed" ? seedRaw : params[k]));
    const key = JSON.stringify([state.image.id, source, target, maskParams]);
    const body = { image: state.image.id, source, target, ...params, mask_threshold: threshold };
    return { body, seedRaw, key, threshold, source, target };
  }

  function formError(id, message, inAdvanced) {
    showError(message);
    if (inAdvanced) $("advanced").open = true;
    $(id).focus();
    return null;
  }

  /** The JSON text of a request, the seed written with all its digits. */
  function requestJson(req, extra = {}) {
    const obj = { ...req.body, ...extra };
    if (req.seedRaw === null) return JSON.stringify(obj);
    obj.seed = "__SEED__";
    return JSON.stringify(obj).replace('"__SEED__"', req.seedRaw);
  }

  function thresholdValue() {
    return Math.round(Number($("mask_threshold").value) * 100) / 100;
  }

  function updateThresholdLabel() {
    $("threshold-value").textContent = thresholdValue().toFixed(2);
  }

  // ------------------------------------------------------------------ the progress area

  const STAGES = {
    queued: "Waiting in the queue",
    encode: "Encoding the picture",
    mask: "Finding the mask",
    inversion: "Inverting (DDIM)",
    decoding: "Decoding (masked DDIM)",
    vae: "Decoding the latent (VAE)",
    done: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
  };

  function setStatus(status) {
    $("status").textContent = status;
    $("status").dataset.status = status;
  }

  function showJobEvals(job) {
    const n = Number(job.unet_evaluations) || 0;
    let text = `${job.kind || "job"}: ${n} UNet evaluations`;
    if (job.status === "done") {
      if (n === 0) text += " (reused)";
      if (typeof job.seconds === "number") text += ` · ${job.seconds.toFixed(1)} s`;
    }
    $("job-evals").textContent = text;
  }

  /** Shows a job's state in the progress area. */
  function showJob(job, cancelling) {
    setStatus(job.status);
    const p = job.status === "done" ? 1 : Math.max(0, Math.min(1, Number(job.progress) || 0));
    $("progress").value = p;
    let stage = job.status === "done" || job.status === "failed" || job.status === "cancelled" ? job.status : job.stage || job.status;
    let text = STAGES[stage] || String(stage);
    if (job.status === "done") text = job.kind === "mask" ? "Mask found" : job.kind === "edit" ? "Edit done" : text;
    if (job.status === "queued" && job.queue_position) text += ` (position ${job.queue_position})`;
    if (cancelling && !TERMINAL.has(job.status)) text = "Cancelling…";
    $("stage").textContent = text;
    $("stage").dataset.stage = stage;
    const running = job.status === "running";
    const eta = running && job.eta_s != null ? ` · ${fmtSeconds(job.eta_s)} left` : "";
    $("eta").textContent = running ? `${Math.round(p * 100)}%${eta}` : "";
    showJobEvals(job);
  }

  function updateButtons() {
    const running = !!state.active && !TERMINAL.has(state.active.status);
    const blocked = running || state.uploading || !state.image;
    $("find-mask").disabled = blocked;
    $("edit").disabled = blocked;
    $("cancel").disabled = !running || !!(state.active && state.active.cancelling);
  }

  // ------------------------------------------------------------------ pictures

  async function openPicture(file, name) {
    if (!file) return;
    clearError();
    const limits = (state.health && state.health.limits) || {};
    if (limits.max_upload_mb && file.size > limits.max_upload_mb * 1024 * 1024) {
      showError(`The picture is ${(file.size / 1048576).toFixed(1)} MB; this server takes at most ${limits.max_upload_mb} MB (diffedit serve --max-upload-mb).`);
      return;
    }
    state.uploading = true;
    busy(1);
    $("picture-info").textContent = `Uploading ${name || file.name || "the picture"}…`;
    try {
      const uploadName = name || file.name || "picture.png";
      const info = await api("POST", `/api/images?name=${encodeURIComponent(uploadName)}`, file, file.type || "application/octet-stream");
      await setPicture({ id: info.id, width: info.width, height: info.height, name: name || file.name || "picture" });
    } catch (e) {
      $("picture-info").textContent = state.image ? pictureInfo(state.image) : "None yet: open one, drop it on the page or paste it (Ctrl+V).";
      showError(`Could not open ${name || file.name || "the picture"}: ${e.message}`);
    } finally {
      state.uploading = false;
      busy(-1);
    }
  }

  function pictureInfo(img) {
    return `${img.name} · ${img.width} × ${img.height} px`;
  }

  async function setPicture(img) {
    state.image = img;
    state.found = null;
    $("picture-info").textContent = pictureInfo(img);
    $("picture-info").title = pictureInfo(img);
    $("coverage").textContent = "coverage —";
    $("heat-thumb-img").removeAttribute("src");
    $("heat-thumb").disabled = true;
    $("toggle-heat").disabled = true;
    editor.setHeat(false);
    clearResultView();
    $("before").src = withToken(`/api/images/${img.id}`);
    await editor.load(img.width, img.height, withToken(`/api/images/${img.id}`));
    refreshMaskNote();
    updateButtons();
  }

  // ------------------------------------------------------------------ mask: find, re-threshold, show

  /** Shows a finished job's mask, heat map and coverage; it becomes the editor's automatic mask. */
  async function applyMask(job, req) {
    if (!state.image || req.body.image !== state.image.id) return; // another picture was opened meanwhile
    state.found = { key: req.key, threshold: job.params && typeof job.params.mask_threshold === "number" ? job.params.mask_threshold : req.threshold, job };
    if (job.heatmap) {
      $("heat-thumb-img").src = withToken(job.heatmap);
      $("heat-thumb").disabled = false;
      $("toggle-heat").disabled = false;
      editor.setHeatmap(withToken(job.heatmap));
    }
    if (job.mask) {
      try {
        await editor.setAutoMask(withToken(job.mask));
      } catch (e) {
        showError(`Could not load the mask picture: ${e.message}`);
      }
    }
    editor.onChange();
    refreshMaskNote();
  }

  function showCoverage() {
    const el = $("coverage");
    if (editor.painted) {
      el.textContent = `${fmtPercent(editor.coverage())} of the picture (painted)`;
    } else if (state.found && typeof state.found.job.coverage === "number") {
      el.textContent = `${fmtPercent(state.found.job.coverage)} of the picture`;
    } else if (state.found && editor.loaded) {
      el.textContent = `${fmtPercent(editor.coverage())} of the picture`;
    } else {
      el.textContent = "coverage —";
    }
  }

  /** A warning under the threshold when the mask on show no longer matches the prompts or parameters. */
  function refreshMaskNote() {
    const note = $("mask-note");
    if (!state.found || !state.image) {
      note.hidden = true;
      return;
    }
    const req = buildRequest({ quiet: true });
    if (req && req.key !== state.found.key) {
      note.textContent = editor.painted
        ? "The prompts or parameters changed since this mask was found. Edit uses the painted mask as shown; Find mask again to paint on the new one."
        : "The prompts or parameters changed since this mask was found: Find mask again to see the new one (Edit finds its own).";
      note.hidden = false;
    } else {
      note.hidden = true;
    }
  }

  async function findMask() {
    clearError();
    const req = buildRequest();
    if (!req) return;
    await runJob("mask", "/api/masks", req, async (final) => {
      await applyMask(final, req);
      if (Math.abs(thresholdValue() - state.found.threshold) > 1e-9) scheduleRethreshold(0);
    });
  }

  // The threshold slider: a short debounce, then one request at a time for as long as the slider moves (so the
  // mask follows a drag live), always ending on the slider's last value.
  let thresholdTimer = null;
  let thresholdRunning = false;
  let thresholdBusy = false;

  function canRethreshold() {
    if (!state.found || !state.image) return false;
    const req = buildRequest({ quiet: true });
    return !!req && req.key === state.found.key;
  }

  function onThresholdInput() {
    $("mask_threshold").dataset.touched = "1";
    updateThresholdLabel();
    if (canRethreshold()) scheduleRethreshold(THRESHOLD_DEBOUNCE_MS);
    else refreshMaskNote();
  }

  function scheduleRethreshold(delay) {
    if (!thresholdBusy) {
      thresholdBusy = true;
      busy(1);
    }
    if (thresholdTimer || thresholdRunning) return; // the pending or running loop reads the slider's latest value
    thresholdTimer = setTimeout(rethresholdLoop, delay);
  }

  async function rethresholdLoop() {
    thresholdTimer = null;
    thresholdRunning = true;
    try {
      while (canRethreshold() && Math.abs(thresholdValue() - state.found.threshold) > 1e-9) {
        await rethreshold(thresholdValue());
      }
    } catch (e) {
      showError(`Could not re-threshold the mask: ${e.message}`);
    } finally {
      thresholdRunning = false;
      if (!thresholdTimer && thresholdBusy) {
        thresholdBusy = false;
        busy(-1);
      }
    }
  }

  async function rethreshold(threshold) {
    const req = buildRequest({ quiet: true, threshold });
    const { job } = await api("POST", "/api/masks", requestJson(req));
    const quietJob = () => !state.active || TERMINAL.has(state.active.status);
    const final = await follow(job, (j) => {
      if (quietJob()) showJob(j);
    });
    if (final.status !== "done") throw new ApiError(final.error || `the job was ${final.status}`, 0);
    if (quietJob()) showJob(final);
    await applyMask(final, req);
  }

  // ------------------------------------------------------------------ jobs: Find mask and Edit

  /** Runs one Find mask / Edit job with the progress area, Cancel and errors; `onDone` gets the finished job. */
  async function runJob(kind, path, req, onDone, prepare) {
    if (state.active && !TERMINAL.has(state.active.status)) return;
    state.active = { id: null, kind, status: "queued", cancelling: false };
    busy(1);
    setStatus("queued");
    $("progress").value = 0;
    $("eta").textContent = "";
    $("job-evals").textContent = "";
    try {
      const extra = prepare ? await prepare() : {};
      $("stage").textContent = "Sending…";
      const { job } = await api("POST", path, requestJson(req, extra));
      state.active.id = job;
      updateButtons();
      const final = await follow(job, (j) => {
        state.active.status = j.status;
        showJob(j, state.active.cancelling);
        updateButtons();
      });
      state.active.status = final.status;
      if (final.status === "done") await onDone(final);
      else if (final.status === "failed") {
        const what = kind === "edit" ? "The edit" : "Finding the mask";
        showError(`${what} failed: ${final.error || "the server gave no reason"}`);
      }
    } catch (e) {
      state.active.status = "failed";
      setStatus("failed");
      $("stage").textContent = STAGES.failed;
      $("stage").dataset.stage = "failed";
      $("eta").textContent = "";
      const what = kind === "edit" ? "Could not run the edit" : "Could not find the mask";
      showError(`${what}: ${e.message}`);
    } finally {
      busy(-1);
      updateButtons();
    }
  }

  async function runEdit() {
    clearError();
    const req = buildRequest();
    if (!req) return;
    const painted = editor.painted;
    await runJob(
      "edit",
      "/api/edits",
      req,
      async (final) => {
        if (!painted && final.mask && (!state.found || state.found.key !== req.key || Math.abs(state.found.threshold - req.threshold) > 1e-9)) {
          await applyMask(final, req); // the edit found the mask itself: show it
        }
        showResult(final);
        addHistory(final, painted);
      },
      async () => {
        if (!painted) return {};
        $("stage").textContent = "Uploading the painted mask…";
        const blob = await editor.exportBlob();
        const stem = ((state.image && state.image.name) || "picture").replace(/\.[^.]*$/, "");
        const up = await api("POST", `/api/images?name=${encodeURIComponent(`mask-${stem}.png`)}`, blob, "image/png");
        return { mask: up.id };
      },
    );
  }

  async function cancelJob() {
    const a = state.active;
    if (!a || !a.id || TERMINAL.has(a.status)) return;
    a.cancelling = true;
    updateButtons();
    $("stage").textContent = "Cancelling…";
    try {
      const job = await api("DELETE", `/api/jobs/${encodeURIComponent(a.id)}`);
      if (job && job.status && state.active === a) {
        a.status = job.status;
        showJob(job, true);
      }
    } catch (e) {
      a.cancelling = false;
      showError(`Could not cancel the job: ${e.message}`);
    }
    updateButtons();
  }

  // ------------------------------------------------------------------ result and before/after

  function clearResultView() {
    const c = $("compare");
    c.classList.remove("has-result");
    $("compare").closest(".panel").classList.remove("has-result");
    $("result").removeAttribute("src");
    $("result-empty").hidden = false;
    const dl = $("download");
    dl.removeAttribute("href");
    dl.setAttribute("aria-disabled", "true");
    $("result-info").textContent = "\u00a0";
    state.currentResult = null;
    for (const li of $("history").children) li.classList.remove("current");
  }

  function showResult(job) {
    const c = $("compare");
    state.currentResult = job.id;
    $("before").src = withToken(`/api/images/${job.image}`);
    $("result").src = withToken(job.result);
    $("result-empty").hidden = true;
    c.classList.add("has-result");
    c.closest(".panel").classList.add("has-result");
    const dl = $("download");
    dl.href = withToken(job.result);
    dl.download = `diffedit-${slug(job.target)}.png`;
    dl.removeAttribute("aria-disabled");
    $("result-info").textContent = `${job.source} → ${job.target} · ${job.unet_evaluations} UNet evaluations · ${Number(job.seconds || 0).toFixed(1)} s`;
    for (const li of $("history").children) li.classList.toggle("current", li.dataset.job === job.id);
  }

  function setSplit(percent) {
    const p = Math.max(0, Math.min(100, percent));
    $("compare").style.setProperty("--split", `${p}%`);
    $("compare-slider").value = String(p);
  }

  function setupCompare() {
    const c = $("compare");
    let dragging = false;
    const at = (e) => {
      const r = c.getBoundingClientRect();
      setSplit(((e.clientX - r.left) / r.width) * 100);
    };
    c.addEventListener("pointerdown", (e) => {
      if (!c.classList.contains("has-result") || e.button !== 0) return;
      dragging = true;
      c.setPointerCapture(e.pointerId);
      at(e);
      $("compare-slider").focus({ preventScroll: true });
      e.preventDefault();
    });
    c.addEventListener("pointermove", (e) => dragging && at(e));
    const stop = () => (dragging = false);
    c.addEventListener("pointerup", stop);
    c.addEventListener("pointercancel", stop);
    $("compare-slider").addEventListener("input", (e) => setSplit(Number(e.target.value)));
    // Small pictures are shown with their pixels, not blurred.
    $("result").addEventListener("load", () => {
      const img = $("result");
      c.classList.toggle("pixelated", img.naturalWidth > 0 && c.clientHeight / img.naturalHeight >= 2 && c.clientWidth / img.naturalWidth >= 2);
    });
    $("result").addEventListener("error", () => {
      if ($("result").getAttribute("src")) showError("Could not load the result picture (it may have expired on the server).");
    });
  }

  // ------------------------------------------------------------------ history

  function fmtParams(p) {
    if (!p) return "";
    const parts = [];
    const add = (k, label) => p[k] !== undefined && p[k] !== null && parts.push(`${label} ${p[k]}`);
    add("steps", "steps");
    add("encode_ratio", "encode ratio");
    add("guidance", "guidance");
    add("inversion_guidance", "inversion guidance");
    add("mask_samples", "mask samples");
    add("mask_noise_level", "noise level");
    add("mask_threshold", "threshold");
    add("seed", "seed");
    if (p.alignment) parts.push(p.alignment);
    return parts.join(" · ");
  }

  function el(tag, props = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function addHistory(job, painted) {
    state.history.push(job);
    $("history-empty").hidden = true;
    const command = el("code", { class: "command", text: job.command || "(the server gave no command)" });
    const copyBtn = el("button", { type: "button", class: "btn small copy", title: "Copy the command", onclick: () => copyCommand(command, copyBtn) });
    copyBtn.innerHTML = '<svg aria-hidden="true"><use href="#i-copy"/></svg>Copy';
    const thumb = el("button", { type: "button", class: "thumb", "aria-label": `Show the result: ${job.target}`, onclick: () => showResult(job) }, el("img", { src: withToken(job.result), alt: "" }));
    const dl = el("a", { class: "btn small", href: withToken(job.result), download: `diffedit-${slug(job.target)}.png`, text: "Download" });
    const show = el("button", { type: "button", class: "btn small", text: "Show", onclick: () => showResult(job) });
    const li = el(
      "li",
      { "data-job": job.id },
      thumb,
      el(
        "div",
        { class: "body" },
        el("div", { class: "prompts" }, document.createTextNode(job.source), el("span", { class: "arrow", text: "→" }), document.createTextNode(job.target)),
        el("div", { class: "params", text: fmtParams(job.params) + (painted ? " · painted mask" : "") }),
        el("div", { class: "params", text: `${job.unet_evaluations} UNet evaluations · ${Number(job.seconds || 0).toFixed(1)} s` + (typeof job.coverage === "number" ? ` · mask ${fmtPercent(job.coverage)}` : "") }),
        el("div", { class: "cmdrow" }, command, copyBtn),
        el("div", { class: "actions" }, show, dl),
      ),
    );
    $("history").prepend(li);
    for (const other of $("history").children) other.classList.toggle("current", other === li);
  }

  async function copyCommand(codeEl, button) {
    const text = codeEl.textContent;
    const done = (label) => {
      const old = "Copy";
      button.lastChild.textContent = label;
      setTimeout(() => (button.lastChild.textContent = old), 1800);
    };
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return done("Copied");
      }
    } catch (_) {
      /* fall back to selecting */
    }
    const range = document.createRange();
    range.selectNodeContents(codeEl);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (_) {
      ok = false;
    }
    done(ok ? "Copied" : "Selected: press Ctrl+C");
  }

  // ------------------------------------------------------------------ the mask editor

  let noticeTimer = null;
  /** A short message in the editor's hint line, which comes back after a while. */
  function editorNotice(text) {
    const hint = $("editor-hint");
    if (!hint.dataset.normal) hint.dataset.normal = hint.textContent;
    hint.textContent = text;
    hint.classList.add("notice");
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => {
      hint.textContent = hint.dataset.normal;
      hint.classList.remove("notice");
    }, 8000);
  }

  // CRC-32 (PNG chunks) and a grayscale PNG writer: the mask goes out as an 8-bit gray PNG (white = edit),
  // compressed by the browser's own zlib (CompressionStream "deflate" is zlib-wrapped, as PNG wants).
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  async function grayPng(width, height, raw) {
    const z = new Uint8Array(await new Response(new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"))).arrayBuffer());
    const chunk = (type, data) => {
      const out = new Uint8Array(12 + data.length);
      const v = new DataView(out.buffer);
      v.setUint32(0, data.length);
      for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
      out.set(data, 8);
      v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
      return out;
    };
    const ihdr = new Uint8Array(13);
    const v = new DataView(ihdr.buffer);
    v.setUint32(0, width);
    v.setUint32(4, height);
    ihdr.set([8, 0, 0, 0, 0], 8); // 8 bits, grayscale, deflate, no filter, no interlace
    const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    return new Blob([signature, chunk("IHDR", ihdr), chunk("IDAT", z), chunk("IEND", new Uint8Array(0))], { type: "image/png" });
  }

  /**
   * The mask is three layers at the mask's resolution: the automatic mask (from the server, replaced on every
   * re-threshold), what the brush added and what the eraser removed. On show (#mask-canvas): (auto ∪ added) \ erased.
   * Strokes therefore survive a new threshold. Undo/redo store, per stroke, the touched rectangle of the two
   * stroke layers before and after. Pictures above 4 megapixels get a mask at a reduced resolution (the server
   * resizes masks to its latent grid, 1/8 of the picture, anyway); it is shown and exported at the picture's size.
   */
  class MaskEditor {
    constructor() {
      this.viewport = $("viewport");
      this.world = $("world");
      this.canvas = $("mask-canvas");
      this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
      this.picture = $("picture");
      this.heat = $("heatmap");
      this.cursor = $("brush-cursor");
      this.w = 0;
      this.h = 0;
      this.scale = 1; // mask pixels per picture pixel
      this.zoom = 1;
      this.panX = 0;
      this.panY = 0;
      this.autoFit = true;
      this.tool = "brush";
      this.size = 12;
      this.showMask = true;
      this.heatOn = false;
      this.painted = false;
      this.undoStack = [];
      this.redoStack = [];
      this.stroke = null;
      this.pan = null;
      this.space = false;
      this.autoSeq = 0;
      this.onChange = () => {};
      this.bind();
    }

    get loaded() {
      return this.w > 0;
    }

    layer() {
      const c = document.createElement("canvas");
      c.width = this.mw;
      c.height = this.mh;
      c.getContext("2d", { willReadFrequently: true });
      return c;
    }

    async load(w, h, url) {
      this.w = w;
      this.h = h;
      this.scale = Math.min(1, Math.sqrt(4e6 / (w * h)), 4096 / Math.max(w, h));
      this.mw = Math.max(1, Math.round(w * this.scale));
      this.mh = Math.max(1, Math.round(h * this.scale));
      this.canvas.width = this.mw;
      this.canvas.height = this.mh;
      for (const e of [this.picture, this.heat, this.canvas]) {
        e.style.width = `${w}px`;
        e.style.height = `${h}px`;
      }
      this.auto = this.layer();
      this.add = this.layer();
      this.erase = this.layer();
      this.snapAdd = this.layer();
      this.snapErase = this.layer();
      this.undoStack = [];
      this.redoStack = [];
      this.painted = false;
      this.autoSeq++;
      this.heat.removeAttribute("src");
      const long = Math.max(w, h);
      const max = Math.max(16, Math.round(long / 4));
      const slider = $("brush-size");
      slider.max = String(max);
      this.setSize(Math.max(2, Math.round(long / 16)));
      this.viewport.classList.add("loaded");
      $("viewport-empty").hidden = true;
      this.picture.classList.add("picture-frame");
      await new Promise((resolve) => {
        this.picture.onload = resolve;
        this.picture.onerror = () => {
          showError("Could not show the uploaded picture (the browser cannot draw it); the mask and the edit still work.");
          resolve();
        };
        this.picture.src = url;
      });
      this.composite();
      this.autoFit = true;
      this.fit();
      this.changed();
    }

    // ---- layers

    composite(x = 0, y = 0, w = this.mw, h = this.mh) {
      x = Math.max(0, Math.floor(x));
      y = Math.max(0, Math.floor(y));
      w = Math.min(this.mw - x, Math.ceil(w) + 1);
      h = Math.min(this.mh - y, Math.ceil(h) + 1);
      if (w <= 0 || h <= 0) return;
      const c = this.ctx;
      c.save();
      c.clearRect(x, y, w, h);
      c.drawImage(this.auto, x, y, w, h, x, y, w, h);
      c.drawImage(this.add, x, y, w, h, x, y, w, h);
      c.globalCompositeOperation = "destination-out";
      c.drawImage(this.erase, x, y, w, h, x, y, w, h);
      c.restore();
    }

    /** Reads a mask picture (white = edit) scaled to the mask's size: a Uint8Array of 0/1. */
    async readMaskPicture(src) {
      const img = new Image();
      img.decoding = "async";
      await new Promise((resolve, reject) => {
        img.onload = resolve;
        img.onerror = () => reject(new Error("the browser could not read it as a picture"));
        img.src = src;
      });
      const tmp = this.layer();
      const t = tmp.getContext("2d");
      t.fillStyle = "#000";
      t.fillRect(0, 0, this.mw, this.mh);
      t.drawImage(img, 0, 0, this.mw, this.mh);
      const data = t.getImageData(0, 0, this.mw, this.mh).data;
      const bits = new Uint8Array(this.mw * this.mh);
      for (let i = 0, j = 0; j < bits.length; i += 4, j++) {
        bits[j] = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2] > 127.5 ? 1 : 0;
      }
      return { bits, width: img.naturalWidth, height: img.naturalHeight };
    }

    paintBits(canvas, bits, on) {
      const ctx = canvas.getContext("2d");
      const im = ctx.createImageData(this.mw, this.mh);
      const d = im.data;
      for (let j = 0, i = 0; j < bits.length; j++, i += 4) {
        if (bits[j] === on) {
          d[i] = MASK_RGB[0];
          d[i + 1] = MASK_RGB[1];
          d[i + 2] = MASK_RGB[2];
          d[i + 3] = 255;
        }
      }
      ctx.putImageData(im, 0, 0);
    }

    /** The server's mask for the current threshold: replaces the automatic layer, strokes stay. */
    async setAutoMask(url) {
      if (!this.loaded) return;
      const seq = ++this.autoSeq;
      const { bits } = await this.readMaskPicture(url);
      if (seq !== this.autoSeq) return; // a newer mask arrived meanwhile
      this.paintBits(this.auto, bits, 1);
      this.composite();
      this.changed();
    }

    setHeatmap(url) {
      this.heat.src = url;
    }

    setHeat(on) {
      this.heatOn = on && !!this.heat.getAttribute("src");
      this.world.classList.toggle("heat", this.heatOn);
      this.picture.hidden = this.heatOn;
      this.heat.hidden = !this.heatOn;
      $("toggle-heat").setAttribute("aria-pressed", String(this.heatOn));
      $("heat-thumb").setAttribute("aria-pressed", String(this.heatOn));
    }

    setShowMask(on) {
      this.showMask = on;
      this.canvas.classList.toggle("hidden-mask", !on);
      const b = $("toggle-mask");
      b.setAttribute("aria-pressed", String(on));
      b.setAttribute("aria-label", on ? "Hide mask" : "Show mask");
    }

    /** The fraction of the picture in the mask, as shown. */
    coverage() {
      if (!this.loaded) return 0;
      const d = this.ctx.getImageData(0, 0, this.mw, this.mh).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] >= 128) n++;
      return n / (this.mw * this.mh);
    }

    /** The mask as shown, as a PNG at the picture's size: white = edit, black = keep (8-bit gray). */
    async exportBlob() {
      if (typeof CompressionStream === "function") {
        const alpha = this.ctx.getImageData(0, 0, this.mw, this.mh).data;
        const { w, h, mw, mh } = this;
        const raw = new Uint8Array((w + 1) * h); // each row: filter byte 0, then the pixels
        const cols = new Uint32Array(w);
        for (let x = 0; x < w; x++) cols[x] = Math.min(mw - 1, Math.floor(((x + 0.5) * mw) / w));
        for (let y = 0; y < h; y++) {
          const src = Math.min(mh - 1, Math.floor(((y + 0.5) * mh) / h)) * mw;
          const row = y * (w + 1) + 1;
          for (let x = 0; x < w; x++) raw[row + x] = alpha[(src + cols[x]) * 4 + 3] >= 128 ? 255 : 0;
        }
        return grayPng(w, h, raw);
      }
      // Older browsers: the canvas's own PNG (RGBA, every pixel opaque).
      const d = this.ctx.getImageData(0, 0, this.mw, this.mh);
      const px = d.data;
      for (let i = 0; i < px.length; i += 4) {
        const v = px[i + 3] >= 128 ? 255 : 0;
        px[i] = px[i + 1] = px[i + 2] = v;
        px[i + 3] = 255;
      }
      let out = document.createElement("canvas");
      out.width = this.mw;
      out.height = this.mh;
      out.getContext("2d").putImageData(d, 0, 0);
      if (this.mw !== this.w || this.mh !== this.h) {
        const big = document.createElement("canvas");
        big.width = this.w;
        big.height = this.h;
        const b = big.getContext("2d");
        b.imageSmoothingEnabled = false;
        b.drawImage(out, 0, 0, this.w, this.h);
        out = big;
      }
      return new Promise((resolve, reject) => out.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the mask as PNG"))), "image/png"));
    }

    async importMask(file) {
      if (!this.loaded) {
        showError("Open a picture first: the mask is imported at the picture's size.");
        return;
      }
      const url = URL.createObjectURL(file);
      try {
        const { bits, width, height } = await this.readMaskPicture(url);
        this.beginEdit(0, 0, this.mw, this.mh);
        this.paintBits(this.add, bits, 1);
        const ctxE = this.erase.getContext("2d");
        ctxE.clearRect(0, 0, this.mw, this.mh);
        this.paintBits(this.erase, bits, 0);
        this.endEdit(0, 0, this.mw, this.mh, true);
        const ratio = width / height / (this.w / this.h);
        editorNotice(
          Math.abs(ratio - 1) > 0.01
            ? `Imported ${file.name} (${width} × ${height}), stretched to the picture's ${this.w} × ${this.h}. Ctrl+Z undoes it.`
            : `Imported ${file.name}. Ctrl+Z undoes it.`,
        );
      } catch (e) {
        showError(`Could not import the mask ${file.name}: ${e.message}`);
      } finally {
        URL.revokeObjectURL(url);
      }
    }

    /** Drops every stroke: back to the automatic mask (undoable). */
    resetStrokes() {
      if (!this.loaded || !this.painted) return;
      this.beginEdit(0, 0, this.mw, this.mh);
      this.add.getContext("2d").clearRect(0, 0, this.mw, this.mh);
      this.erase.getContext("2d").clearRect(0, 0, this.mw, this.mh);
      this.endEdit(0, 0, this.mw, this.mh, false);
    }

    // ---- undo / redo: each entry holds the touched rectangle of the stroke layers before and after

    beginEdit() {
      for (const [snap, src] of [
        [this.snapAdd, this.add],
        [this.snapErase, this.erase],
      ]) {
        const s = snap.getContext("2d");
        s.clearRect(0, 0, this.mw, this.mh);
        s.drawImage(src, 0, 0);
      }
    }

    endEdit(x, y, w, h, paintedAfter) {
      x = Math.max(0, Math.floor(x));
      y = Math.max(0, Math.floor(y));
      w = Math.min(this.mw - x, Math.ceil(w));
      h = Math.min(this.mh - y, Math.ceil(h));
      this.composite();
      if (w <= 0 || h <= 0) return this.changed();
      const get = (c) => c.getContext("2d").getImageData(x, y, w, h);
      const entry = {
        x,
        y,
        addBefore: get(this.snapAdd),
        eraseBefore: get(this.snapErase),
        addAfter: get(this.add),
        eraseAfter: get(this.erase),
        paintedBefore: this.painted,
        paintedAfter: paintedAfter,
        bytes: 16 * w * h,
      };
      this.undoStack.push(entry);
      this.redoStack = [];
      this.painted = paintedAfter;
      // Bounded memory: at most 100 strokes and 256 MB of undo data.
      let total = this.undoStack.reduce((s, e) => s + e.bytes, 0);
      while (this.undoStack.length > 1 && (this.undoStack.length > 100 || total > 256e6)) total -= this.undoStack.shift().bytes;
      this.changed();
    }

    restore(entry, which) {
      const a = which === "before" ? entry.addBefore : entry.addAfter;
      const e = which === "before" ? entry.eraseBefore : entry.eraseAfter;
      this.add.getContext("2d").putImageData(a, entry.x, entry.y);
      this.erase.getContext("2d").putImageData(e, entry.x, entry.y);
      this.composite(entry.x, entry.y, a.width, a.height);
      this.painted = which === "before" ? entry.paintedBefore : entry.paintedAfter;
      this.changed();
    }

    undo() {
      if (this.stroke) return;
      const entry = this.undoStack.pop();
      if (!entry) return;
      this.redoStack.push(entry);
      this.restore(entry, "before");
    }

    redo() {
      if (this.stroke) return;
      const entry = this.redoStack.pop();
      if (!entry) return;
      this.undoStack.push(entry);
      this.restore(entry, "after");
    }

    changed() {
      this.onChange();
    }

    // ---- painting

    /** Picture coordinates of a pointer event. */
    toPicture(e) {
      const r = this.viewport.getBoundingClientRect();
      return { x: (e.clientX - r.left - this.panX) / this.zoom, y: (e.clientY - r.top - this.panY) / this.zoom };
    }

    segment(p0, p1) {
      const s = this.scale;
      const r = Math.max(0.5, (this.size * s) / 2);
      const [x0, y0, x1, y1] = [p0.x * s, p0.y * s, p1.x * s, p1.y * s];
      const onto = this.tool === "brush" ? this.add : this.erase;
      const off = this.tool === "brush" ? this.erase : this.add;
      for (const [canvas, op] of [
        [onto, "source-over"],
        [off, "destination-out"],
      ]) {
        const c = canvas.getContext("2d");
        c.save();
        c.globalCompositeOperation = op;
        c.fillStyle = c.strokeStyle = `rgb(${MASK_RGB.join(",")})`;
        c.lineWidth = 2 * r;
        c.lineCap = "round";
        c.beginPath();
        if (x0 === x1 && y0 === y1) {
          c.arc(x0, y0, r, 0, Math.PI * 2);
          c.fill();
        } else {
          c.moveTo(x0, y0);
          c.lineTo(x1, y1);
          c.stroke();
        }
        c.restore();
      }
      const bx = Math.min(x0, x1) - r - 2;
      const by = Math.min(y0, y1) - r - 2;
      const bw = Math.abs(x1 - x0) + 2 * r + 4;
      const bh = Math.abs(y1 - y0) + 2 * r + 4;
      this.composite(bx, by, bw, bh);
      const b = this.stroke.box;
      b.x0 = Math.min(b.x0, bx);
      b.y0 = Math.min(b.y0, by);
      b.x1 = Math.max(b.x1, bx + bw);
      b.y1 = Math.max(b.y1, by + bh);
    }

    startStroke(e) {
      const p = this.toPicture(e);
      this.beginEdit();
      this.stroke = { last: p, box: { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity } };
      if (!this.showMask) this.setShowMask(true); // painting blind helps nobody
      this.segment(p, p);
    }

    moveStroke(e) {
      const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
      for (const ev of events.length ? events : [e]) {
        const p = this.toPicture(ev);
        this.segment(this.stroke.last, p);
        this.stroke.last = p;
      }
    }

    endStroke() {
      const b = this.stroke.box;
      this.stroke = null;
      this.endEdit(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0, true);
    }

    // ---- size, zoom, pan

    setSize(n) {
      const slider = $("brush-size");
      const v = Math.max(1, Math.min(Number(slider.max), Math.round(n)));
      this.size = v;
      slider.value = String(v);
      $("brush-size-value").textContent = String(v);
      this.updateCursorSize();
    }

    setTool(tool) {
      this.tool = tool;
      $("brush").setAttribute("aria-pressed", String(tool === "brush"));
      $("eraser").setAttribute("aria-pressed", String(tool === "eraser"));
      this.cursor.classList.toggle("eraser", tool === "eraser");
    }

    applyTransform() {
      this.world.style.transform = `translate(${this.panX}px, ${this.panY}px) scale(${this.zoom})`;
      this.world.classList.toggle("pixelated", this.zoom >= 2);
      $("zoom-label").textContent = this.loaded ? `${Math.round(this.zoom * 100)}%` : "";
      this.updateCursorSize();
    }

    fit() {
      if (!this.loaded) return;
      const vw = this.viewport.clientWidth;
      const vh = this.viewport.clientHeight;
      this.zoom = Math.max(0.01, Math.min((vw - 24) / this.w, (vh - 24) / this.h, 32));
      this.panX = (vw - this.w * this.zoom) / 2;
      this.panY = (vh - this.h * this.zoom) / 2;
      this.autoFit = true;
      this.applyTransform();
    }

    zoomAt(factor, cx, cy) {
      if (!this.loaded) return;
      if (cx === undefined) {
        cx = this.viewport.clientWidth / 2;
        cy = this.viewport.clientHeight / 2;
      }
      const minZoom = Math.min(0.5, (0.25 * this.viewport.clientWidth) / this.w);
      const z = Math.max(minZoom, Math.min(64, this.zoom * factor));
      const wx = (cx - this.panX) / this.zoom;
      const wy = (cy - this.panY) / this.zoom;
      this.zoom = z;
      this.panX = cx - wx * z;
      this.panY = cy - wy * z;
      this.autoFit = false;
      this.applyTransform();
    }

    panBy(dx, dy) {
      this.panX += dx;
      this.panY += dy;
      this.autoFit = false;
      this.applyTransform();
    }

    updateCursorSize() {
      const d = Math.max(4, this.size * this.zoom);
      this.cursor.style.width = `${d}px`;
      this.cursor.style.height = `${d}px`;
    }

    moveCursor(e) {
      const r = this.viewport.getBoundingClientRect();
      this.cursor.style.left = `${e.clientX - r.left}px`;
      this.cursor.style.top = `${e.clientY - r.top}px`;
      this.cursor.hidden = !this.loaded || !!this.pan || this.space;
    }

    bind() {
      const vp = this.viewport;
      vp.addEventListener("pointerdown", (e) => {
        if (!this.loaded) return;
        vp.focus({ preventScroll: true });
        if (e.button === 1 || (e.button === 0 && this.space)) {
          this.pan = { x: e.clientX, y: e.clientY };
          vp.classList.add("panning");
          this.cursor.hidden = true;
        } else if (e.button === 0) {
          this.startStroke(e);
        } else return;
        vp.setPointerCapture(e.pointerId);
        e.preventDefault();
      });
      vp.addEventListener("pointermove", (e) => {
        this.moveCursor(e);
        if (this.pan) {
          this.panBy(e.clientX - this.pan.x, e.clientY - this.pan.y);
          this.pan = { x: e.clientX, y: e.clientY };
        } else if (this.stroke) {
          this.moveStroke(e);
        }
      });
      const end = () => {
        if (this.stroke) this.endStroke();
        if (this.pan) {
          this.pan = null;
          vp.classList.remove("panning");
        }
      };
      vp.addEventListener("pointerup", end);
      vp.addEventListener("pointercancel", end);
      vp.addEventListener("lostpointercapture", end);
      vp.addEventListener("pointerleave", () => (this.cursor.hidden = true));
      vp.addEventListener("auxclick", (e) => e.button === 1 && e.preventDefault());
      vp.addEventListener(
        "wheel",
        (e) => {
          if (!this.loaded) return;
          e.preventDefault();
          const dy = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
          if (e.ctrlKey || e.altKey || e.metaKey) {
            const r = vp.getBoundingClientRect();
            this.zoomAt(Math.exp(-dy * 0.002), e.clientX - r.left, e.clientY - r.top);
          } else if (dy !== 0) {
            const next = dy < 0 ? Math.max(this.size + 1, this.size * 1.15) : Math.min(this.size - 1, this.size / 1.15);
            this.setSize(next);
          }
        },
        { passive: false },
      );
      new ResizeObserver(() => {
        if (this.autoFit) this.fit();
      }).observe(vp);
    }
  }

  const editor = new MaskEditor();

  editor.onChange = () => {
    $("undo").disabled = editor.undoStack.length === 0;
    $("redo").disabled = editor.redoStack.length === 0;
    $("reset-mask").disabled = !editor.painted;
    $("export-mask").disabled = !editor.loaded;
    const badge = $("mask-source");
    const kind = editor.painted ? "painted" : state.found ? "auto" : "none";
    badge.dataset.kind = kind;
    badge.textContent = { painted: "painted: Edit uses it", auto: "found mask", none: "no mask yet" }[kind];
    badge.title = {
      painted: "Edit sends the mask as shown here (strokes on the found mask)",
      auto: "Edit uses the server's mask for the current threshold",
      none: "Find the mask, or paint one",
    }[kind];
    if (state.image) {
      showCoverage();
      refreshMaskNote();
    }
  };

  // ------------------------------------------------------------------ keyboard

  function isTextEntry(t) {
    if (!t || !t.tagName) return false;
    if (t.isContentEditable) return true;
    if (t.tagName === "TEXTAREA" || t.tagName === "SELECT") return true;
    if (t.tagName === "INPUT") return !["range", "checkbox", "radio", "button", "file"].includes(t.type);
    return false;
  }

  function spaceTarget(t) {
    return !t || t === document.body || t === editor.viewport || t === document.documentElement;
  }

  document.addEventListener("keydown", (e) => {
    if (isTextEntry(e.target)) return;
    const mod = e.ctrlKey || e.metaKey;
    const k = e.key;
    if (mod && !e.altKey) {
      if ((k === "z" || k === "Z") && !e.shiftKey) {
        editor.undo();
        e.preventDefault();
      } else if (((k === "z" || k === "Z") && e.shiftKey) || k === "y" || k === "Y") {
        editor.redo();
        e.preventDefault();
      }
      return;
    }
    if (e.altKey) return;
    if (k === " " && spaceTarget(e.target)) {
      if (!editor.space) {
        editor.space = true;
        editor.viewport.classList.add("pan-ready");
        editor.cursor.hidden = true;
      }
      e.preventDefault();
      return;
    }
    const inViewport = e.target === editor.viewport;
    const step = 40;
    switch (k) {
      case "b":
      case "B":
        editor.setTool("brush");
        break;
      case "e":
      case "E":
        editor.setTool("eraser");
        break;
      case "[":
        editor.setSize(Math.min(editor.size - 1, editor.size / 1.15));
        break;
      case "]":
        editor.setSize(Math.max(editor.size + 1, editor.size * 1.15));
        break;
      case "h":
      case "H":
        editor.setShowMask(!editor.showMask);
        break;
      case "m":
      case "M":
        if (!$("toggle-heat").disabled) editor.setHeat(!editor.heatOn);
        break;
      case "+":
      case "=":
        editor.zoomAt(1.25);
        break;
      case "-":
      case "_":
        editor.zoomAt(0.8);
        break;
      case "0":
        editor.fit();
        break;
      case "ArrowLeft":
      case "ArrowRight":
      case "ArrowUp":
      case "ArrowDown":
        if (!inViewport) return;
        editor.panBy(k === "ArrowLeft" ? step : k === "ArrowRight" ? -step : 0, k === "ArrowUp" ? step : k === "ArrowDown" ? -step : 0);
        break;
      default:
        return;
    }
    e.preventDefault();
  });

  document.addEventListener("keyup", (e) => {
    if (e.key === " " && editor.space) {
      editor.space = false;
      editor.viewport.classList.remove("pan-ready");
    }
  });
  window.addEventListener("blur", () => {
    editor.space = false;
    editor.viewport.classList.remove("pan-ready");
  });

  // ------------------------------------------------------------------ drop and paste

  function firstPicture(files) {
    const list = Array.from(files || []);
    return list.find((f) => f.type.startsWith("image/")) || list[0] || null;
  }

  function setupDropAndPaste() {
    const overlay = $("drop-overlay");
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    window.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      depth++;
      overlay.hidden = false;
      e.preventDefault();
    });
    window.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) overlay.hidden = true;
    });
    window.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      overlay.hidden = true;
      const file = firstPicture(e.dataTransfer.files);
      if (file) openPicture(file);
    });
    window.addEventListener("paste", (e) => {
      const items = Array.from((e.clipboardData && e.clipboardData.items) || []);
      const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
      if (!item) return; // text pastes into the prompts as usual
      e.preventDefault();
      const file = item.getAsFile();
      if (file) openPicture(file, `pasted picture (${file.type.replace("image/", "")})`);
    });
  }

  // ------------------------------------------------------------------ wiring

  function init() {
    $("file").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      e.target.value = ""; // choosing the same file again still uploads it
      if (file) openPicture(file);
    });
    $("error-close").addEventListener("click", clearError);
    $("find-mask").addEventListener("click", findMask);
    $("edit").addEventListener("click", runEdit);
    $("cancel").addEventListener("click", cancelJob);
    $("mask_threshold").addEventListener("input", onThresholdInput);
    $("mask_threshold").addEventListener("change", onThresholdInput);
    $("reset-params").addEventListener("click", () => {
      if (state.health && state.health.defaults) {
        for (const p of PARAMS) delete $(p.key).dataset.touched;
        applyDefaults(state.health.defaults, true);
        onThresholdInput();
      }
    });
    for (const id of ["source", "target", ...PARAMS.map((p) => p.key)]) {
      $(id).addEventListener("input", () => {
        $(id).dataset.touched = "1";
        refreshMaskNote();
      });
    }
    $("source").addEventListener("keydown", submitOnCtrlEnter);
    $("target").addEventListener("keydown", submitOnCtrlEnter);

    $("brush").addEventListener("click", () => editor.setTool("brush"));
    $("eraser").addEventListener("click", () => editor.setTool("eraser"));
    $("brush-size").addEventListener("input", (e) => editor.setSize(Number(e.target.value)));
    $("undo").addEventListener("click", () => editor.undo());
    $("redo").addEventListener("click", () => editor.redo());
    $("reset-mask").addEventListener("click", () => editor.resetStrokes());
    $("toggle-mask").addEventListener("click", () => editor.setShowMask(!editor.showMask));
    $("toggle-heat").addEventListener("click", () => editor.setHeat(!editor.heatOn));
    $("heat-thumb").addEventListener("click", () => editor.setHeat(!editor.heatOn));
    $("zoom-in").addEventListener("click", () => editor.zoomAt(1.25));
    $("zoom-out").addEventListener("click", () => editor.zoomAt(0.8));
    $("zoom-fit").addEventListener("click", () => editor.fit());
    $("import-mask").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      e.target.value = "";
      if (file) editor.importMask(file);
    });
    $("export-mask").addEventListener("click", async () => {
      try {
        const blob = await editor.exportBlob();
        const url = URL.createObjectURL(blob);
        const a = el("a", { href: url, download: `mask-${slug(state.image ? state.image.name.replace(/\.[^.]*$/, "") : "picture")}.png` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (e) {
        showError(`Could not export the mask: ${e.message}`);
      }
    });
    $("download").addEventListener("click", (e) => {
      if (!$("download").getAttribute("href")) e.preventDefault();
    });

    setupCompare();
    setupDropAndPaste();
    updateThresholdLabel();
    editor.setTool("brush");
    editor.onChange();
    updateButtons();
    loadHealth(true);
  }

  function submitOnCtrlEnter(e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (!$("edit").disabled) runEdit();
    }
  }

  init();
})();
