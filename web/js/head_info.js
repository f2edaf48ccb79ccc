// Shows a loaded readout head's kind, model family and layers on the LoadReadoutHead node, after a run.
import { app } from "../../scripts/app.js";

const NAME = "head_info";

// A read-only text box (a DOM widget: public on both frontends): not sent to the backend, not saved in the
// workflow, not listed as a parameter in the new frontend's side panel.
function headInfoWidget(node) {
  const existing = node.widgets?.find((w) => w.name === NAME);
  if (existing) return existing;
  const box = document.createElement("textarea");
  box.className = "comfy-multiline-input";
  box.readOnly = true;
  box.style.opacity = 0.8;
  const widget = node.addDOMWidget(NAME, NAME, box, {
    serialize: false,
    hideInPanel: true,
    getValue: () => box.value,
    setValue: (text) => (box.value = text),
    getMinHeight: () => 54,
  });
  widget.serialize = false;
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  return widget;
}

app.registerExtension({
  name: "readout_guidance.HeadInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "LoadReadoutHead") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      headInfoWidget(this).value = (message?.text ?? []).join("\n");
      this.setDirtyCanvas(true, true);
    };
  },
});
