// The stream page's crystallography: the merger's statistics (GET /v1/streams/{id}/merging) and the structure
// stage's updates (GET /v1/streams/{id}/structure), polled; the cards stay hidden until something was published.
(() => {
  "use strict";
  if (document.body.dataset.page !== "stream") return;
  const $ = (id) => document.getElementById(id);
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const base = `/v1/streams/${encodeURIComponent(id)}`;
  const EVERY_MS = 3000;
  const Chart = window.PhotonstreamChart;
  const curves = new Chart($("chart-merging"), { time: false, xLabel: "indexed frames", yLabel: "fraction" });
  const rFactors = new Chart($("chart-rfree"), { time: false, xLabel: "seconds since the first update", yLabel: "R" });
  let shownMerging = 0;
  let shownStructure = 0;

  const fixed = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const percent = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)}%`);

  async function get(path) {
    const response = await fetch(base + path, { credentials: "same-origin" }).catch(() => null);
    if (!response || !response.ok) return null;
    return response.json().catch(() => null);
  }

  function row(cells, className) {
    const tr = document.createElement("tr");
    if (className) tr.className = className;
    for (const text of cells) {
      const td = document.createElement("td");
      td.className = "num";
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }

  function shellCells(shell, label) {
    return [label ?? `${fixed(shell.d_max, 2)}–${fixed(shell.d_min, 2)}`, shell.observations, shell.unique,
      percent(shell.completeness), fixed(shell.multiplicity, 2), fixed(shell.i_over_sigma, 2), fixed(shell.cc_half),
      fixed(shell.cc_star), fixed(shell.r_split)];
  }

  function showMerging(result) {
    const stats = result.data;
    $("xtal-card").hidden = false;
    $("xtal-caption").textContent = `${stats.indexed} of ${stats.frames} frames indexed`;
    const body = $("shells").querySelector("tbody");
    body.replaceChildren(...stats.shells.map((shell) => row(shellCells(shell))),
      row(shellCells(stats.overall, "overall"), "total"));
    const resolution = stats.resolution || {};
    const parts = [`resolution ${fixed(resolution.cc_half, 2)} Å (${resolution.criteria || "CC½ ≥ 0.3"})`,
      `completeness to it ${percent(resolution.completeness)}`];
    const enough = stats.data_enough;
    if (enough) {
      const targets = enough.targets || {};
      parts.push(enough.enough
        ? `data enough: the targets (completeness ${percent(targets.completeness)}, outer CC½ ${fixed(targets.outer_cc_half, 2)}) are reached`
        : `data enough? about ${enough.more_indexed_frames} more indexed frames`
          + (enough.more_seconds !== null ? ` (~${Math.round(enough.more_seconds)} s at the current rate)` : "")
          + `, limited by ${enough.limited_by}`);
    } else {
      parts.push("data enough? not yet estimable");
    }
    $("xtal-readout").textContent = parts.join(" · ");
    const points = stats.curves || [];
    if (points.length) {
      $("xtal-curves-card").hidden = false;
      const pick = (key) => points.map((p) => (p[key] === undefined ? null : p[key]));
      curves.set(pick("indexed"), { "CC½": pick("cc_half"), completeness: pick("completeness"),
        "outer CC½": pick("outer_cc_half"), "outer completeness": pick("outer_completeness") });
    }
  }

  function showStructure(result) {
    const data = result.data;
    const history = result.history || [];
    $("structure-card").hidden = false;
    $("structure-caption").textContent = `${data.model}: R-work ${fixed(data.r_work)}, R-free ${fixed(data.r_free)}`
      + ` · update ${data.update}${data.final ? " (final)" : ""} · ${data.reflections} reflections to ${fixed(data.d_min, 2)} Å`;
    if (history.length) {
      rFactors.set(history.map((p) => p.at_s), { "R-work": history.map((p) => p.r_work),
        "R-free": history.map((p) => p.r_free) });
    }
    const peaks = (data.peaks || []).slice(0, 5)
      .map((p) => `${p.sign}${fixed(p.height_sigma, 1)}σ ${p.atom} (${fixed(p.distance_a, 1)} Å)`);
    const files = (result.files || []).map((f) => f.name).join(", ");
    $("structure-peaks").textContent = `${data.peak_map} peaks: ${peaks.join(" · ") || "none"}`
      + (files ? ` · files: ${files}` : "");
    if (data.section) drawSection(data.section);
  }

  // density in grey (0 to 3σ), the difference map's ±3σ on top in green and red; rows run from low y
  function drawSection(section) {
    const canvas = $("map-section");
    const context = canvas.getContext("2d");
    const n = section.size;
    const cell = canvas.width / n;
    for (let j = 0; j < n; j++) {
      for (let i = 0; i < n; i++) {
        const density = Math.max(0, Math.min(1, section.density[j][i] / 3));
        const difference = section.values[j][i];
        const grey = Math.round(255 * (1 - density));
        let colour = `rgb(${grey},${grey},${grey})`;
        if (difference >= 3) colour = "rgb(0,160,0)";
        else if (difference <= -3) colour = "rgb(200,0,0)";
        context.fillStyle = colour;
        context.fillRect(i * cell, canvas.height - (j + 1) * cell, cell + 0.5, cell + 0.5);
      }
    }
    $("section-card").hidden = false;
    const centre = section.centre.map((v) => v.toFixed(1)).join(", ");
    $("section-caption").textContent = `${section.map} · z plane through (${centre}) Å · ${fixed(section.step_a, 2)} Å steps`;
    canvas.dataset.drawn = String(n);
  }

  async function tick() {
    const merging = await get("/merging");
    if (merging && merging.result_id !== shownMerging) {
      shownMerging = merging.result_id;
      showMerging(merging);
    }
    const structure = await get("/structure");
    if (structure && structure.result_id !== shownStructure) {
      shownStructure = structure.result_id;
      showStructure(structure);
    }
  }

  tick();
  setInterval(tick, EVERY_MS);
})();
