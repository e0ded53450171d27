// The self-service page: a reference client of the public API, nothing more.
// Tokens live in this closure only (no localStorage, no cookies); the refresh token keeps the
// tab signed in, and closing the tab signs it out. Every text from the API is set with
// textContent, never parsed as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ACTIVE = new Set(["queued", "in_progress"]);
  const POLL_MS = 1000;
  // Refresh this long before the access token expires (it lives 5 minutes by default).
  const REFRESH_EARLY_S = 60;

  const session = { access: null, refresh: null, email: "", timer: null, refreshing: null };
  let tracked = null; // the export being watched (its id)
  let pollTimer = null;
  let lastAnnounced = "";

  class ApiError extends Error {
    constructor(status, problem, retryAfter) {
      super((problem && problem.detail) || `HTTP ${status}`);
      this.status = status;
      this.code = (problem && problem.code) || "";
      this.errors = (problem && problem.errors) || [];
      this.retryAfter = retryAfter ? parseInt(retryAfter, 10) : null;
    }
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function call(method, path, options = {}) {
    const { body, auth = true, retried = false, headers = {} } = options;
    const sent = { Accept: "application/json", ...headers };
    if (body !== undefined) sent["Content-Type"] = "application/json";
    if (auth && session.access) sent.Authorization = `Bearer ${session.access}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "omit",
      });
    } catch (e) {
      throw new ApiError(0, { detail: "The service cannot be reached." });
    }
    if (response.status === 401 && auth && !retried && session.refresh) {
      // The access token expired (a sleeping laptop): refresh once, then try again.
      if (await refresh()) return call(method, path, { ...options, retried: true });
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const error = new ApiError(response.status, data, response.headers.get("Retry-After"));
      if (response.status === 401 && auth) signedOut("Your session has ended. Please sign in again.");
      throw error;
    }
    return { status: response.status, data };
  }

  // --- session ---------------------------------------------------------------------------

  function keep(pair) {
    session.access = pair.access_token;
    session.refresh = pair.refresh_token;
    clearTimeout(session.timer);
    const inS = Math.max(5, (pair.expires_in || 300) - REFRESH_EARLY_S);
    session.timer = setTimeout(refresh, inS * 1000);
  }

  function refresh() {
    if (!session.refresh) return Promise.resolve(false);
    if (session.refreshing) return session.refreshing;
    session.refreshing = (async () => {
      try {
        const { data } = await call("POST", "/v1/auth/refresh", {
          body: { refresh_token: session.refresh },
          auth: false,
        });
        keep(data);
        return true;
      } catch (e) {
        if (e.status === 401) signedOut("Your session has ended. Please sign in again.");
        return false;
      } finally {
        session.refreshing = null;
      }
    })();
    return session.refreshing;
  }

  function forget() {
    clearTimeout(session.timer);
    clearTimeout(pollTimer);
    session.access = session.refresh = null;
    session.email = "";
    tracked = null;
  }

  function signedOut(message) {
    forget();
    $("exporter").hidden = true;
    $("current").hidden = true;
    $("who").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("password").value = "";
    announce(message || "");
    $("email").focus();
  }

  function announce(text) {
    $("status").textContent = text;
    lastAnnounced = text;
  }

  function wait(seconds) {
    if (seconds === null || Number.isNaN(seconds)) return "a while";
    if (seconds < 90) return `${seconds} seconds`;
    const minutes = Math.round(seconds / 60);
    if (minutes < 90) return `${minutes} minutes`;
    const hours = Math.floor(minutes / 60);
    const rest = minutes % 60;
    return rest ? `${hours} hours ${rest} minutes` : `${hours} hours`;
  }

  function unavailable(error) {
    if (error.status === 0) return "The service cannot be reached. Check your connection and try again.";
    if (error.status === 503) {
      return `The service is busy or partly down. Please try again in ${wait(error.retryAfter || 5)}.`;
    }
    return null;
  }

  async function signIn(event) {
    event.preventDefault();
    const email = $("email").value.trim();
    const password = $("password").value;
    const out = $("sign-in-error");
    out.textContent = "";
    if (!email || !password) {
      out.textContent = "Enter your e-mail address and your password.";
      return;
    }
    const button = $("sign-in-button");
    button.disabled = true;
    try {
      const { data } = await call("POST", "/v1/auth/token", {
        body: { email, password },
        auth: false,
      });
      keep(data);
      session.email = email;
      $("password").value = "";
      $("sign-in").hidden = true;
      $("exporter").hidden = false;
      $("who").textContent = email;
      $("who").hidden = false;
      $("sign-out").hidden = false;
      announce("You are signed in.");
      await loadChoices();
      fillExportForm();
      $("new-export-button").focus();
      await loadList(true);
      await loadSchedules();
    } catch (e) {
      if (e.status === 401) out.textContent = "Wrong e-mail or password.";
      else if (e.status === 429) {
        out.textContent = `Too many sign-in attempts. Please try again in ${wait(e.retryAfter)}.`;
      } else if (e.status === 422) out.textContent = "Enter a valid e-mail address.";
      else out.textContent = unavailable(e) || `Sign-in failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function signOut() {
    const token = session.refresh;
    signedOut("You are signed out.");
    if (token) {
      try {
        await call("POST", "/v1/auth/logout", { body: { refresh_token: token }, auth: false });
      } catch (e) {
        // Signed out here either way; the token expires on its own.
      }
    }
  }

  // --- exports ---------------------------------------------------------------------------

  // --- export options: read from the API's own OpenAPI document, so the page offers exactly
  // the formats, columns, statuses, plans and time zones the server accepts today.

  const SPEC_PATH = "/api/docs/openapi.json";
  const DEFAULT_ZONE = "UTC";
  // What a person reads beside each format: [label, one-line hint, short name for the list].
  // A format the server adds later is still offered, under its own name.
  const FORMAT_WORDS = {
    csv: ["CSV (.csv)", "Opens in any spreadsheet or text editor", "CSV"],
    "csv.gz": ["Compressed CSV (.csv.gz)", "Smaller to download; unzip it before opening", "CSV, compressed"],
    jsonl: ["JSON Lines (.jsonl)", "One JSON object per line, for scripts and jq", "JSON Lines"],
    parquet: ["Parquet (.parquet)", "Typed columns for pandas, polars or DuckDB", "Parquet"],
    xlsx: ["Excel workbook (.xlsx)", "Dates and numbers stay dates and numbers in Excel", "Excel"],
  };
  // Where each request field's 422 message goes, and what the field is called on the page.
  const FIELDS = {
    format: { error: "format-error", label: "Format", controls: [] },
    bom: { error: "bom-error", label: "Byte order mark", controls: ["bom"] },
    columns: { error: "columns-error", label: "Columns", controls: [] },
    status: { error: "status-error", label: "Status", controls: [] },
    plan: { error: "plan-error", label: "Plan", controls: ["plan"] },
    started_between: { error: "started-error", label: "Started between", controls: ["started-from", "started-to"] },
    updated_since: { error: "updated-error", label: "Updated since", controls: ["updated-since"] },
    time_zone: { error: "time-zone-error", label: "Time zone", controls: ["time-zone"] },
  };
  const PART_WORDS = { from: "from", to: "to" };

  const choices = {
    loaded: false,
    filled: false,
    formats: ["csv", "csv.gz"], // until the document says otherwise
    columns: [],
    statuses: [],
    plans: [],
    zones: [DEFAULT_ZONE],
    scheduleFormats: ["csv", "csv.gz"],
  };

  function enumOf(property) {
    if (!property) return [];
    const values = property.enum || (property.items && property.items.enum) || [];
    return values.filter((v) => typeof v === "string");
  }

  async function loadChoices() {
    if (choices.loaded) return;
    try {
      const { data } = await call("GET", SPEC_PATH, { auth: false });
      const schemas = data.components.schemas;
      const props = schemas.CreateExportRequest.properties;
      choices.formats = enumOf(props.format);
      choices.columns = enumOf(props.columns);
      choices.statuses = enumOf(props.status);
      choices.plans = enumOf(props.plan);
      const zones = enumOf(props.time_zone);
      choices.zones = zones.length ? zones : [DEFAULT_ZONE];
      const schedule = schemas.CreateScheduleRequest;
      if (schedule) choices.scheduleFormats = enumOf(schedule.properties.format);
      choices.loaded = choices.formats.length > 0;
    } catch (e) {
      // The page still asks for a plain export; only the choices beyond it are missing.
      choices.loaded = false;
    }
    if (!choices.loaded) choices.formats = ["csv", "csv.gz"];
  }

  function isCsv(format) {
    return format === "csv" || format.startsWith("csv.");
  }

  function words(text) {
    return text.replace(/_/g, " ");
  }

  function formatWords(format) {
    return FORMAT_WORDS[format] || [format, "", format];
  }

  function browserZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || DEFAULT_ZONE;
    } catch (e) {
      return DEFAULT_ZONE;
    }
  }

  function checkbox(container, name, value, text, checked) {
    const p = document.createElement("p");
    p.className = "choice";
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = name;
    input.value = value;
    input.id = `${name}-${container.children.length}`;
    input.checked = checked;
    const label = document.createElement("label");
    label.htmlFor = input.id;
    label.textContent = text;
    p.append(input, " ", label);
    container.appendChild(p);
  }

  function fillExportForm() {
    if (choices.filled) return;
    choices.filled = true;
    const formats = $("format-choices");
    formats.replaceChildren();
    choices.formats.forEach((format, i) => {
      const [label, hint] = formatWords(format);
      const p = document.createElement("p");
      p.className = "choice";
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "format";
      input.value = format;
      input.id = `format-${i}`;
      input.checked = i === 0;
      input.addEventListener("change", showBom);
      const text = document.createElement("label");
      text.htmlFor = input.id;
      text.textContent = label;
      p.append(input, " ", text);
      if (hint) {
        const span = document.createElement("span");
        span.id = `format-${i}-hint`;
        span.className = "hint";
        span.textContent = hint;
        input.setAttribute("aria-describedby", span.id);
        p.append(" ", span);
      }
      formats.appendChild(p);
    });
    const columns = $("column-choices");
    for (const name of choices.columns) checkbox(columns, "column", name, name, true);
    const statuses = $("status-choices");
    for (const status of choices.statuses) checkbox(statuses, "status", status, words(status), false);
    const plan = $("plan");
    for (const name of choices.plans) plan.add(new Option(words(name), name));
    const zone = $("time-zone");
    zone.replaceChildren();
    for (const name of choices.zones) zone.add(new Option(name, name));
    const mine = browserZone();
    zone.value = choices.zones.includes(mine) ? mine : DEFAULT_ZONE;
    // Without the document there is nothing to choose from: the export is of everything.
    $("options").hidden = !choices.loaded;
    const scheduleFormat = $("schedule-format");
    scheduleFormat.replaceChildren();
    for (const format of choices.scheduleFormats) {
      scheduleFormat.add(new Option(formatWords(format)[0], format));
    }
    showBom();
  }

  function chosenFormat() {
    const checked = document.querySelector('input[name="format"]:checked');
    return checked ? checked.value : "csv";
  }

  // The byte order mark is a CSV matter: the box is offered for CSV formats only.
  function showBom() {
    $("bom-field").hidden = !isCsv(chosenFormat());
  }

  function ticked(name) {
    return Array.from(document.querySelectorAll(`input[name="${name}"]:checked`), (i) => i.value);
  }

  function clearFieldErrors() {
    $("new-export-error").textContent = "";
    for (const field of Object.values(FIELDS)) {
      $(field.error).textContent = "";
      for (const id of field.controls) $(id).removeAttribute("aria-invalid");
    }
  }

  // Put each message next to the field it names; true if every one found its field.
  function showFieldErrors(errors) {
    let first = null;
    let placed = true;
    for (const error of errors) {
      const [name, part] = String(error.field || "").split(".");
      const field = FIELDS[name];
      if (!field) {
        placed = false;
        continue;
      }
      // "Started between (to): Missing data…", but not "(from): from must not be after to."
      const named = part && PART_WORDS[part] && !error.message.startsWith(`${PART_WORDS[part]} `);
      const label = named ? `${field.label} (${PART_WORDS[part]})` : field.label;
      const out = $(field.error);
      const text = `${label}: ${error.message}`;
      out.textContent = out.textContent ? `${out.textContent} ${text}` : text;
      for (const id of field.controls) $(id).setAttribute("aria-invalid", "true");
      if (!first) first = field;
    }
    if (first) {
      const error = $(first.error);
      if ($("options").contains(error)) $("options").open = true;
      const control = first.controls.length ? $(first.controls[0]) : null;
      if (control) control.focus();
    }
    return placed;
  }

  // The request body: only what differs from the API's defaults, so a plain export stays
  // `{}`. Returns null (with a message by the field) when the form cannot be sent as it is.
  function exportRequest() {
    const body = {};
    const format = chosenFormat();
    if (format !== "csv") body.format = format;
    if (isCsv(format) && $("bom").checked) body.bom = true;
    if (!choices.loaded) return body;
    const columns = ticked("column");
    if (columns.length === 0) {
      showFieldErrors([{ field: "columns", message: "Tick at least one column." }]);
      return null;
    }
    if (columns.length !== choices.columns.length) body.columns = columns;
    const statuses = ticked("status");
    if (statuses.length) body.status = statuses;
    if ($("plan").value) body.plan = $("plan").value;
    const from = $("started-from").value;
    const to = $("started-to").value;
    if (from || to) {
      if (!(from && to)) {
        showFieldErrors([{ field: "started_between", message: "Give both days, or neither." }]);
        return null;
      }
      body.started_between = { from, to };
    }
    if ($("updated-since").value) body.updated_since = $("updated-since").value;
    if ($("time-zone").value !== DEFAULT_ZONE) body.time_zone = $("time-zone").value;
    return body;
  }

  async function createExport(event) {
    event.preventDefault();
    clearFieldErrors();
    const out = $("new-export-error");
    const body = exportRequest();
    if (body === null) {
      out.textContent = "Some choices need a change: see the message next to them.";
      return;
    }
    const button = $("new-export-button");
    button.disabled = true;
    try {
      const { status, data } = await call("POST", "/v1/exports", {
        body,
        headers: { "Idempotency-Key": newKey() },
      });
      announce(
        status === 202
          ? "Your export has been asked for. You can follow it below."
          : "You already have an export under way; here it is."
      );
      track(data);
      await loadList(false);
    } catch (e) {
      if (e.status === 429) {
        out.textContent =
          "You have reached the daily limit of exports. " +
          `You can ask for the next one in ${wait(e.retryAfter)}.`;
      } else if (e.status === 422 && e.errors.length) {
        const placed = showFieldErrors(e.errors);
        out.textContent = placed
          ? "Some choices need a change: see the messages next to them."
          : `The export could not be started: ${e.errors.map((x) => x.message).join(" ")}`;
      } else {
        out.textContent = unavailable(e) || `The export could not be started: ${e.message}`;
      }
    } finally {
      button.disabled = false;
    }
  }

  // What an export holds beyond "everything", in words: "2 columns (…); status active; …".
  function contents(job) {
    const source = job.manifest || job;
    const parts = [];
    const columns = Array.isArray(source.columns) ? source.columns : null;
    // Unknown without the document: then the columns go unmentioned.
    const all =
      !columns ||
      !choices.columns.length ||
      (columns.length === choices.columns.length && columns.every((c, i) => c === choices.columns[i]));
    if (!all) {
      parts.push(`${columns.length} column${columns.length === 1 ? "" : "s"} (${columns.join(", ")})`);
    }
    const filters = source.filters || {};
    if (Array.isArray(filters.status)) parts.push(`status ${filters.status.map(words).join(" or ")}`);
    if (filters.plan) parts.push(`plan ${words(filters.plan)}`);
    if (filters.started_between) {
      parts.push(`started ${filters.started_between.from} to ${filters.started_between.to}`);
    }
    if (filters.updated_since) parts.push(`updated since ${filters.updated_since}`);
    if (source.time_zone && source.time_zone !== DEFAULT_ZONE) parts.push(`times in ${source.time_zone}`);
    return parts.length ? parts.join("; ") : "All columns, every row";
  }

  function number(n) {
    return typeof n === "number" ? n.toLocaleString() : "";
  }

  function size(bytes) {
    if (typeof bytes !== "number") return "";
    const units = ["bytes", "KB", "MB", "GB"];
    let value = bytes;
    let i = 0;
    while (value >= 1024 && i < units.length - 1) {
      value /= 1024;
      i += 1;
    }
    return i === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[i]}`;
  }

  // "14:05" in the reader's own time zone, from an ISO 8601 timestamp; "" without one.
  function clockTime(iso) {
    if (typeof iso !== "string") return "";
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return "";
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  }

  function describe(job) {
    switch (job.status) {
      case "queued": {
        const place = typeof job.queue_position === "number"
          ? `Waiting to start (number ${job.queue_position} in the queue)`
          : "Waiting to start";
        const start = clockTime(job.estimated_start_at);
        return start ? `${place}, expected to start around ${start}` : place;
      }
      case "in_progress":
        return job.last_error ? `Delayed: ${job.last_error}` : "Being made";
      case "succeeded":
        if (job.delivery_error) {
          return `Ready to download here: the e-mail could not be delivered (${job.delivery_error.message})`;
        }
        if (job.links && job.links.download) {
          return job.delivery === "email_attachment"
            ? "Sent to your e-mail as an attachment, and ready to download"
            : "Ready to download";
        }
        if (job.delivery === "email_attachment") return "Sent to your e-mail as an attachment";
        return "Done";
      case "failed":
        return `Failed${job.error && job.error.message ? `: ${job.error.message}` : ""}`;
      case "cancelled":
        return "Cancelled";
      case "expired":
        return "Expired: the file was deleted";
      default:
        return job.status;
    }
  }

  function track(job) {
    tracked = job.id;
    showCurrent(job);
    clearTimeout(pollTimer);
    if (ACTIVE.has(job.status)) pollTimer = setTimeout(poll, POLL_MS);
  }

  async function poll() {
    if (!tracked) return;
    const id = tracked;
    try {
      const { data } = await call("GET", `/v1/exports/${id}`);
      if (tracked !== id) return;
      showCurrent(data);
      if (ACTIVE.has(data.status)) {
        pollTimer = setTimeout(poll, POLL_MS);
      } else {
        await loadList(false);
      }
    } catch (e) {
      if (session.access) pollTimer = setTimeout(poll, POLL_MS * 3);
    }
  }

  function showCurrent(job) {
    $("current").hidden = false;
    $("current").dataset.status = job.status;
    const state = describe(job);
    $("current-state").textContent = state;
    const bar = $("progress");
    const text = $("progress-text");
    if (job.status === "succeeded") {
      bar.value = 1;
      text.textContent = `${number(job.row_count)} rows, ${size(job.byte_size)}`;
    } else if (typeof job.progress === "number") {
      bar.value = job.progress;
      text.textContent =
        `${number(job.rows_exported)} of ${number(job.total_rows)} rows ` +
        `(${Math.floor(job.progress * 100)}%)`;
    } else if (ACTIVE.has(job.status)) {
      bar.removeAttribute("value"); // indeterminate: the total is not counted yet
      text.textContent = job.status === "queued" ? "Starting soon." : "Counting rows…";
    } else {
      bar.value = 0;
      text.textContent = "";
    }
    $("current-selection").textContent = `${formatWords(job.format)[2]}: ${contents(job)}`;
    const manifest = $("current-manifest");
    manifest.hidden = !job.manifest;
    manifest.textContent = job.manifest
      ? `${job.manifest.file_name}: ${job.manifest.columns.length} columns, times in ` +
        `${job.manifest.time_zone}. SHA-256 ${job.manifest.sha256} (check with sha256sum).`
      : "";
    $("current-download").hidden = !(job.links && job.links.download);
    $("current-download").dataset.id = job.id;
    $("current-cancel").hidden = !ACTIVE.has(job.status);
    $("current-cancel").dataset.id = job.id;
    // Announce changes of state, not every progress tick.
    const spoken = `Your export: ${state}.`;
    if (spoken !== lastAnnounced && job.status !== "queued") announce(spoken);
  }

  async function download(id, button) {
    if (button) button.disabled = true;
    try {
      const { data } = await call("POST", `/v1/exports/${id}/download-link`);
      announce("Your download is starting.");
      window.location.assign(data.url);
    } catch (e) {
      if (e.status === 410) announce("This export has expired or was cancelled; ask for a new one.");
      else if (e.status === 409) announce(e.message);
      else announce(unavailable(e) || `The download could not start: ${e.message}`);
    } finally {
      if (button) button.disabled = false;
    }
  }

  async function cancel(id, button) {
    if (button) button.disabled = true;
    try {
      const { data } = await call("DELETE", `/v1/exports/${id}`);
      announce("The export was cancelled.");
      if (tracked === id) showCurrent(data);
    } catch (e) {
      if (e.status === 409) announce("That export had already finished; it was not cancelled.");
      else announce(unavailable(e) || `The export could not be cancelled: ${e.message}`);
    } finally {
      if (button) button.disabled = false;
      await loadList(false);
    }
  }

  function cell(row, label, text) {
    const td = document.createElement("td");
    td.dataset.label = label;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function actionButton(td, label, aria, handler) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary";
    button.textContent = label;
    button.setAttribute("aria-label", aria);
    button.addEventListener("click", () => handler(button));
    td.appendChild(button);
  }

  async function loadList(pickActive) {
    let items;
    try {
      const { data } = await call("GET", "/v1/exports?limit=10");
      items = data.items;
    } catch (e) {
      announce(unavailable(e) || `Your exports could not be listed: ${e.message}`);
      return;
    }
    const body = $("history-rows");
    body.replaceChildren();
    for (const job of items) {
      const row = document.createElement("tr");
      row.dataset.id = job.id;
      const asked = new Date(job.created_at).toLocaleString();
      cell(row, "Asked at", asked);
      cell(row, "Format", formatWords(job.format)[2] + (job.bom ? " with BOM" : ""));
      cell(row, "Contents", contents(job));
      const status = cell(row, "Status", describe(job));
      status.className = `badge ${job.status}`;
      cell(row, "Rows", number(job.row_count ?? job.rows_exported));
      cell(row, "Size", size(job.byte_size));
      const actions = cell(row, "Actions", "");
      if (job.links && job.links.download) {
        actionButton(actions, "Download", `Download the export of ${asked}`, (b) => download(job.id, b));
      }
      if (ACTIVE.has(job.status)) {
        actionButton(actions, "Cancel", `Cancel the export of ${asked}`, (b) => cancel(job.id, b));
      }
      body.appendChild(row);
    }
    $("history").hidden = items.length === 0;
    $("history-empty").hidden = items.length !== 0;
    if (pickActive) {
      const active = items.find((j) => ACTIVE.has(j.status));
      if (active) track(active);
    }
  }

  // --- monthly schedules -----------------------------------------------------------------

  const RUN_WORDS = {
    created: "export made",
    skipped_active: "waited for your running export",
    skipped_quota: "waited for your daily quota",
    failed: "will try again",
    stopped: "stopped",
  };

  function dayText(day) {
    return day === "last" ? "Last day" : `Day ${day}`;
  }

  function fillScheduleForm() {
    const select = $("schedule-day");
    if (select.options.length) return;
    for (let d = 1; d <= 28; d += 1) select.add(new Option(String(d), String(d)));
    select.add(new Option("Last day of the month", "last"));
    let zone = "UTC";
    try {
      zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    } catch (e) {
      zone = "UTC";
    }
    $("schedule-zone").value = zone;
  }

  async function createSchedule(event) {
    event.preventDefault();
    const out = $("new-schedule-error");
    out.textContent = "";
    const raw = $("schedule-day").value;
    const body = {
      day_of_month: raw === "last" ? "last" : parseInt(raw, 10),
      time_zone: $("schedule-zone").value.trim(),
      format: $("schedule-format").value || "csv",
    };
    const button = $("new-schedule-button");
    button.disabled = true;
    try {
      const { data } = await call("POST", "/v1/export-schedules", { body });
      announce(`Monthly export set up; the next one is on ${new Date(data.next_run_at).toLocaleString()}.`);
      await loadSchedules();
    } catch (e) {
      if (e.status === 422 && e.errors && e.errors.length) out.textContent = e.errors[0].message;
      else if (e.status === 409) out.textContent = e.message;
      else out.textContent = unavailable(e) || `The schedule could not be set up: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function changeSchedule(id, button, change) {
    button.disabled = true;
    try {
      if (change === "delete") {
        await call("DELETE", `/v1/export-schedules/${id}`);
        announce("The monthly export was deleted.");
      } else {
        await call("PATCH", `/v1/export-schedules/${id}`, { body: { paused: change === "pause" } });
        announce(change === "pause" ? "The monthly export is paused." : "The monthly export is on again.");
      }
    } catch (e) {
      announce(unavailable(e) || `The schedule could not be changed: ${e.message}`);
    } finally {
      button.disabled = false;
      await loadSchedules();
    }
  }

  async function loadSchedules() {
    fillScheduleForm();
    let items;
    try {
      const { data } = await call("GET", "/v1/export-schedules");
      items = data.items;
    } catch (e) {
      announce(unavailable(e) || `Your monthly exports could not be listed: ${e.message}`);
      return;
    }
    const body = $("schedule-rows");
    body.replaceChildren();
    for (const s of items) {
      const row = document.createElement("tr");
      row.dataset.id = s.id;
      cell(row, "Day", dayText(s.day_of_month));
      cell(row, "Time zone", s.time_zone);
      cell(row, "Next export", s.paused ? "Paused" : new Date(s.next_run_at).toLocaleString());
      const last = s.runs.length ? s.runs[s.runs.length - 1] : null;
      cell(row, "Last run", last ? `${new Date(last.ran_at).toLocaleDateString()}: ${RUN_WORDS[last.outcome] || last.outcome}` : "None yet");
      const actions = cell(row, "Actions", "");
      const what = `the monthly export on ${dayText(s.day_of_month).toLowerCase()}`;
      if (s.paused) actionButton(actions, "Resume", `Resume ${what}`, (b) => changeSchedule(s.id, b, "resume"));
      else actionButton(actions, "Pause", `Pause ${what}`, (b) => changeSchedule(s.id, b, "pause"));
      actionButton(actions, "Delete", `Delete ${what}`, (b) => changeSchedule(s.id, b, "delete"));
      body.appendChild(row);
    }
    $("schedule-list").hidden = items.length === 0;
    $("schedules-empty").hidden = items.length !== 0;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("new-schedule-form").addEventListener("submit", createSchedule);
    $("sign-in-form").addEventListener("submit", signIn);
    $("new-export-form").addEventListener("submit", createExport);
    $("sign-out").addEventListener("click", signOut);
    $("refresh-list").addEventListener("click", () => loadList(false));
    $("current-download").addEventListener("click", (e) =>
      download(e.currentTarget.dataset.id, e.currentTarget)
    );
    $("current-cancel").addEventListener("click", (e) =>
      cancel(e.currentTarget.dataset.id, e.currentTarget)
    );
    $("email").focus();
  });
})();
