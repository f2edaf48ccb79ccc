// Drag points editor inside ReadoutDragTarget: click a source, then its target; drag a point to move it;
// right-click a point to delete its pair. The pairs live as JSON (reference-image pixels) in the `points` widget.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const HIT_RADIUS = 8; // canvas px
const POINT_RADIUS = 5;
const BLANK_SIZE = 512; // image px shown without a reference image
const SOURCE_COLOR = "#e33";
const TARGET_COLOR = "#39f";
const USAGE = "click: source, then target | drag: move | right-click: delete";

const isPoint = (p) => Array.isArray(p) && p.length === 2 && p.every(Number.isFinite);

// Pairs from the widget's JSON ({source, target} objects or [source, target] arrays); null if it is not that.
function parsePairs(text) {
  let data;
  try {
    data = JSON.parse(String(text ?? "").trim() || "[]");
  } catch {
    return null;
  }
  if (!Array.isArray(data)) return null;
  const pairs = data.map((item) => (Array.isArray(item) ? { source: item[0], target: item[1] } : item ?? {}));
  return pairs.every((pair) => isPoint(pair.source) && isPoint(pair.target)) ? pairs : null;
}

function viewUrl({ filename, subfolder = "", type = "input" }) {
  const query = new URLSearchParams({ filename, subfolder, type });
  return api.apiURL(`/view?${query}`);
}

// "sub/name.png [output]" -> /view of that file
function loadImageUrl(value) {
  const [, path, type] = String(value).match(/^(.*?)(?: \[(input|output|temp)\])?$/);
  const slash = path.lastIndexOf("/");
  return viewUrl({ filename: path.slice(slash + 1), subfolder: path.slice(0, Math.max(slash, 0)), type });
}

class PointsEditor {
  constructor(node) {
    this.node = node;
    this.widget = node.widgets.find((w) => w.name === "points");
    this.canvas = document.createElement("canvas");
    // Its layout size comes from the node, never from its pixel buffer (which draw() sizes to the zoom).
    Object.assign(this.canvas.style, { display: "block", width: "100%", height: "100%", minHeight: "0" });
    this.preview = null; // latest reference_preview of this node's run
    this.image = null;
    this.imageUrl = null;
    this.pending = null; // a source waiting for its target
    this.dragged = null;
    const clear = () => {
      this.pending = null;
      this.write([]);
    };
    const editor = node.addDOMWidget("points_editor", "points_editor", this.canvas, {
      serialize: false, // options.serialize: not sent to the backend; widget.serialize: not saved in the workflow
      getMinHeight: () => 220,
      hideInPanel: true, // the new frontend's side panel would otherwise take the canvas out of the node
    });
    const button = node.addWidget("button", "clear points", null, clear, { serialize: false });
    editor.serialize = button.serialize = false;

    this.canvas.addEventListener("pointerdown", (e) => this.onPointerDown(e));
    this.canvas.addEventListener("pointermove", (e) => this.onPointerMove(e));
    this.canvas.addEventListener("lostpointercapture", () => (this.dragged = null));
    this.canvas.addEventListener("contextmenu", (e) => this.onContextMenu(e));
    this.resizeObserver = new ResizeObserver(() => this.draw());
    this.resizeObserver.observe(this.canvas);
    const follow = () => {
      if (this.removed) return;
      this.refresh();
      requestAnimationFrame(follow);
    };
    requestAnimationFrame(follow);
  }

  // What the drawing depends on: the points (typed, loaded with a workflow), the links, the reference image
  // (LoadImage choice or run preview) and the on-screen size (zoom).
  state() {
    const rect = this.canvas.getBoundingClientRect();
    const links = ["points_json", "reference_image"].map((name) => !!this.linkedNode(name));
    return JSON.stringify([this.widget.value, this.imageUrl, !!this.image, links, rect.width, rect.height]);
  }

  // Called every frame (Nodes 2.0 does not call the node's onDrawForeground): redraws only on a change.
  refresh() {
    this.updateImage();
    if (this.state() !== this.drawn) this.draw();
  }

  pairs() {
    return parsePairs(this.widget.value);
  }

  write(pairs) {
    this.widget.value = JSON.stringify(pairs);
    this.node.setDirtyCanvas(true, true);
    this.draw();
  }

  linkedNode(inputName) {
    return this.node.graph ? this.node.getInputNode(this.node.findInputSlot(inputName)) : null;
  }

  referenceUrl() {
    if (this.preview) return viewUrl(this.preview);
    const origin = this.linkedNode("reference_image");
    const image = origin?.comfyClass === "LoadImage" && origin.widgets?.find((w) => w.name === "image")?.value;
    return image ? loadImageUrl(image) : null;
  }

  updateImage() {
    const url = this.referenceUrl();
    if (url === this.imageUrl) return;
    this.imageUrl = url;
    this.image = null;
    if (!url) return;
    const image = new Image();
    image.onload = () => {
      if (this.imageUrl === url) this.image = image;
      this.draw();
    };
    image.src = url;
  }

  // Image-pixel size shown: the image's, else the points' extent (at least BLANK_SIZE).
  imageSize(pairs) {
    if (this.image) return [this.image.naturalWidth, this.image.naturalHeight];
    const points = (pairs ?? []).flatMap((p) => [p.source, p.target]);
    return [0, 1].map((axis) => Math.max(BLANK_SIZE, ...points.map((p) => Math.ceil(p[axis] + 1))));
  }

  // Letterbox the image into the canvas: canvas px = offset + image px * scale.
  view(pairs) {
    const [width, height] = this.imageSize(pairs);
    const [cw, ch] = [this.canvas.clientWidth, this.canvas.clientHeight];
    const scale = Math.min(cw / width, ch / height);
    return { width, height, scale, x: (cw - width * scale) / 2, y: (ch - height * scale) / 2 };
  }

  // The event's position in canvas px (the frontend may scale the element with a CSS transform).
  eventPosition(e) {
    const rect = this.canvas.getBoundingClientRect();
    return [
      ((e.clientX - rect.left) * this.canvas.clientWidth) / rect.width,
      ((e.clientY - rect.top) * this.canvas.clientHeight) / rect.height,
    ];
  }

  toImage([cx, cy], view) {
    const clamp = (v, max) => Math.round(Math.min(Math.max(v, 0), max) * 10) / 10;
    return [clamp((cx - view.x) / view.scale, view.width - 0.1), clamp((cy - view.y) / view.scale, view.height - 0.1)];
  }

  toCanvas([x, y], view) {
    return [view.x + x * view.scale, view.y + y * view.scale];
  }

  // The point nearest to the event within HIT_RADIUS: {index, key} (index -1: the pending source).
  hit(e, pairs) {
    const view = this.view(pairs);
    const [ex, ey] = this.eventPosition(e);
    const handles = pairs.flatMap((pair, index) => ["source", "target"].map((key) => ({ index, key, point: pair[key] })));
    if (this.pending) handles.push({ index: -1, key: "source", point: this.pending });
    let best = null;
    let bestDistance = HIT_RADIUS;
    for (const handle of handles) {
      const [x, y] = this.toCanvas(handle.point, view);
      const distance = Math.hypot(x - ex, y - ey);
      if (distance <= bestDistance) [best, bestDistance] = [handle, distance];
    }
    return best;
  }

  onPointerDown(e) {
    const pairs = this.pairs();
    if (e.button !== 0 || !pairs) return;
    this.dragged = this.hit(e, pairs);
    if (this.dragged) {
      this.canvas.setPointerCapture(e.pointerId);
      return;
    }
    const view = this.view(pairs);
    const [cx, cy] = this.eventPosition(e);
    const outside = cx < view.x || cy < view.y || cx > view.x + view.width * view.scale || cy > view.y + view.height * view.scale;
    if (outside) return;
    const point = this.toImage([cx, cy], view);
    if (this.pending) {
      pairs.push({ source: this.pending, target: point });
      this.pending = null;
      this.write(pairs);
    } else {
      this.pending = point;
      this.draw();
    }
  }

  onPointerMove(e) {
    if (!this.dragged) return;
    const pairs = this.pairs();
    const point = this.toImage(this.eventPosition(e), this.view(pairs));
    if (this.dragged.index < 0) {
      this.pending = point;
      this.draw();
    } else {
      pairs[this.dragged.index][this.dragged.key] = point;
      this.write(pairs);
    }
  }

  onContextMenu(e) {
    const pairs = this.pairs();
    const handle = pairs && this.hit(e, pairs);
    if (!handle) return;
    e.preventDefault();
    e.stopPropagation(); // "Nodes 2.0" would open the node's menu over the editor
    if (handle.index < 0) {
      this.pending = null;
      this.draw();
    } else {
      pairs.splice(handle.index, 1);
      this.write(pairs);
    }
  }

  draw() {
    const canvas = this.canvas;
    const rect = canvas.getBoundingClientRect();
    if (!canvas.clientWidth || !canvas.clientHeight) return;
    this.drawn = this.state();
    const ratio = (rect.width / canvas.clientWidth) * (window.devicePixelRatio || 1);
    const [w, h] = [Math.round(canvas.clientWidth * ratio), Math.round(canvas.clientHeight * ratio)];
    if (canvas.width !== w || canvas.height !== h) [canvas.width, canvas.height] = [w, h];
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);

    const pairs = this.pairs();
    const view = this.view(pairs);
    if (this.image) ctx.drawImage(this.image, view.x, view.y, view.width * view.scale, view.height * view.scale);
    else {
      ctx.fillStyle = "#555";
      ctx.fillRect(view.x, view.y, view.width * view.scale, view.height * view.scale);
    }
    const notes = [];
    if (!pairs) notes.push('points: expected [{"source": [x, y], "target": [x, y]}, ...]: fix it or clear points');
    if (this.linkedNode("points_json")) notes.push("points_json connected: overrides these points");
    if (!this.image) {
      const hint = this.linkedNode("reference_image") ? "run once to see the reference image" : "connect reference_image";
      notes.push(hint, USAGE);
    }
    ctx.save();
    Object.assign(ctx, { font: "12px sans-serif", fillStyle: "#ff4", shadowColor: "#000", shadowBlur: 3 });
    notes.forEach((text, i) => ctx.fillText(text, view.x + 6, view.y + 16 + 16 * i, view.width * view.scale - 12));
    ctx.restore();

    for (const pair of pairs ?? []) {
      const [s, t] = [this.toCanvas(pair.source, view), this.toCanvas(pair.target, view)];
      drawArrow(ctx, s, t);
      drawPoint(ctx, s, SOURCE_COLOR);
      drawPoint(ctx, t, TARGET_COLOR);
    }
    if (this.pending) drawPoint(ctx, this.toCanvas(this.pending, view), SOURCE_COLOR, true);
  }
}

function drawPoint(ctx, [x, y], color, ring = false) {
  ctx.beginPath();
  ctx.arc(x, y, POINT_RADIUS, 0, 2 * Math.PI);
  ctx.fillStyle = color;
  ctx.fill();
  ctx.lineWidth = ring ? 3 : 1.5;
  ctx.strokeStyle = "#fff";
  ctx.stroke();
}

function drawArrow(ctx, [sx, sy], [tx, ty]) {
  const angle = Math.atan2(ty - sy, tx - sx);
  const back = (da) => [tx - 12 * Math.cos(angle + da), ty - 12 * Math.sin(angle + da)];
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(sx, sy);
  ctx.lineTo(tx, ty);
  ctx.moveTo(...back(0.4));
  ctx.lineTo(tx, ty);
  ctx.lineTo(...back(-0.4));
  ctx.stroke();
}

app.registerExtension({
  name: "readout_guidance.PointsEditor",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "ReadoutDragTarget") return;
    const { onNodeCreated, onExecuted, onConnectionsChange, onRemoved } = nodeType.prototype;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.pointsEditor = new PointsEditor(this);
      return result;
    };
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      this.pointsEditor.preview = message?.reference_preview?.[0] ?? null;
      this.setDirtyCanvas(true, true);
    };
    nodeType.prototype.onConnectionsChange = function (type, index) {
      onConnectionsChange?.apply(this, arguments);
      // a preview of an image that is no longer connected would be misleading
      if (type === LiteGraph.INPUT && this.inputs[index]?.name === "reference_image") this.pointsEditor.preview = null;
    };
    nodeType.prototype.onRemoved = function () {
      onRemoved?.apply(this, arguments);
      this.pointsEditor.removed = true;
      this.pointsEditor.resizeObserver.disconnect();
    };
  },
});
