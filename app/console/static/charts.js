// A line chart as inline SVG: enough for a KPI trend, with no charting library to ship.

const SVG = "http://www.w3.org/2000/svg";
const W = 380, H = 160, PAD = { left: 42, right: 10, top: 10, bottom: 22 };

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function timeLabel(date) {
  return date.toISOString().slice(5, 16).replace("T", " ");
}

// points: [{t: Date, y: number|null}]; y null points are skipped (nothing measured there).
// format: number -> label; yMax: fixed top of the axis (e.g. 1 for a share) or undefined.
export function lineChart(title, points, format, yMax) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.chart = title;
  const heading = document.createElement("h4");
  heading.textContent = title;
  const measured = points.filter((p) => p.y !== null && p.y !== undefined);
  const latest = document.createElement("span");
  latest.className = "latest";
  latest.textContent = measured.length ? ` latest ${format(measured[measured.length - 1].y)}` : " no data";
  heading.append(latest);
  box.append(heading);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  box.append(root);
  if (!measured.length) return box;

  const t0 = measured[0].t.getTime(), t1 = measured[measured.length - 1].t.getTime();
  const top = yMax ?? (Math.max(...measured.map((p) => p.y)) * 1.1 || 1);
  const x = (t) => PAD.left + (t1 === t0 ? (W - PAD.left - PAD.right) / 2 : ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right));
  const y = (v) => H - PAD.bottom - (Math.min(v, top) / top) * (H - PAD.top - PAD.bottom);
  root.append(svg("line", { class: "axis", x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom }));
  root.append(svg("line", { class: "axis", x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: H - PAD.bottom }));
  root.append(svg("text", { x: 2, y: PAD.top + 8 }, format(top)));
  root.append(svg("text", { x: 2, y: H - PAD.bottom }, format(0)));
  root.append(svg("text", { x: PAD.left, y: H - 6 }, timeLabel(measured[0].t)));
  if (t1 !== t0) root.append(svg("text", { x: W - PAD.right - 62, y: H - 6 }, timeLabel(measured[measured.length - 1].t)));
  const coords = measured.map((p) => `${x(p.t.getTime()).toFixed(1)},${y(p.y).toFixed(1)}`);
  root.append(svg("polyline", { points: coords.join(" ") }));
  for (const p of measured) {
    const dot = svg("circle", { cx: x(p.t.getTime()).toFixed(1), cy: y(p.y).toFixed(1), r: 3 });
    dot.append(svg("title", {}, `${timeLabel(p.t)}: ${format(p.y)}`));
    root.append(dot);
  }
  return box;
}
