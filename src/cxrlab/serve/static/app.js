// The reader's page: upload one image, show what the model saw, a bar per pathology with its
// threshold, and a Grad-CAM toggle per pathology. Talks only to this origin.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, token: null, preview: null, cams: {} };

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function call(path, file) {
  const form = new FormData();
  if (file) form.append(path === "/v1/predict" ? "files" : "file", file, file.name);
  const response = await fetch(path, {
    method: file ? "POST" : "GET",
    body: file ? form : undefined,
    headers: headers(),
  });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new Error("this service needs an access token");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadModel() {
  try {
    const card = await (await call("/v1/model")).json();
    $("model-line").textContent =
      `Model ${card.name} (${card.architecture}, version ${card.version}), ` +
      `${card.targets.length} pathologies at ${card.image_size} px; thresholds: ${card.threshold_rule}.`;
    $("intended-use").textContent = card.intended_use;
    document.body.dataset.state = "ready";
  } catch (error) {
    status(error.message, true);
    document.body.dataset.state = "needs-token";
  }
}

function bar(p) {
  const li = document.createElement("li");
  li.dataset.pathology = p.name;
  li.className = p.finding ? "finding" : "";
  const name = document.createElement("span");
  name.textContent = p.name;
  const track = document.createElement("span");
  track.className = "track";
  track.title = `probability ${p.probability.toFixed(3)}, threshold ${p.threshold.toFixed(3)}`;
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = (100 * p.probability).toFixed(2) + "%";
  const mark = document.createElement("span");
  mark.className = "threshold";
  mark.style.left = (100 * p.threshold).toFixed(2) + "%";
  track.append(fill, mark);
  const value = document.createElement("span");
  value.textContent = p.probability.toFixed(3);
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "cam";
  toggle.textContent = "Grad-CAM";
  toggle.setAttribute("aria-pressed", "false");
  toggle.addEventListener("click", () => showCam(p.name, toggle));
  li.append(name, track, value, toggle);
  return li;
}

async function showCam(pathology, toggle) {
  const on = toggle.getAttribute("aria-pressed") !== "true";
  for (const other of document.querySelectorAll("button.cam")) other.setAttribute("aria-pressed", "false");
  if (!on) {
    $("picture").src = state.preview;
    $("picture").dataset.showing = "image";
    $("caption").textContent = "The image as the model sees it.";
    return;
  }
  toggle.setAttribute("aria-pressed", "true");
  try {
    if (!state.cams[pathology]) {
      const query = "/v1/cam?pathology=" + encodeURIComponent(pathology);
      state.cams[pathology] = URL.createObjectURL(await (await call(query, state.file)).blob());
    }
    $("picture").src = state.cams[pathology];
    $("picture").dataset.showing = "cam:" + pathology;
    $("caption").textContent = `Grad-CAM for ${pathology}: where the evidence for it lies (red: most).`;
  } catch (error) {
    status(error.message, true);
  }
}

async function analyse(file) {
  state.file = file;
  state.cams = {};
  status(`Reading ${file.name}…`);
  document.body.dataset.state = "working";
  try {
    const [result, picture] = await Promise.all([
      call("/v1/predict", file).then((r) => r.json()),
      call("/v1/preview", file).then((r) => r.blob()),
    ]);
    state.preview = URL.createObjectURL(picture);
    $("picture").src = state.preview;
    $("picture").dataset.showing = "image";
    const image = result.results[0];
    $("bars").replaceChildren(...image.pathologies.map(bar));
    $("rule").textContent = result.model.threshold_rule;
    $("timing").textContent = `${result.timing.total_ms.toFixed(0)} ms on the server.`;
    $("result").hidden = false;
    const found = image.findings.length ? image.findings.join(", ") : "none";
    status(`${file.name}: findings at threshold: ${found}.`);
    document.body.dataset.state = "done";
  } catch (error) {
    status(error.message, true);
    document.body.dataset.state = "error";
  }
}

function setup() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && analyse(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) analyse(e.dataTransfer.files[0]);
  });
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value || null;
    $("token-box").hidden = true;
    status("");
    loadModel();
  });
  loadModel();
}

setup();
