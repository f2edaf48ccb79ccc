// Shows a node's text report after a run: a loaded head's kind, model family and layers; a score node's numbers;
// what the guided sampler's guidance did, with its warnings; a dataset's example count; what a training run did.
import { app } from "../../scripts/app.js";

const REPORT_WIDGETS = {
  LoadReadoutHead: "head_info",
  ReadoutScore: "report",
  WordAttentionMap: "report",
  ReadoutGuidedKSampler: "guidance_report",
  ReadoutSpatialDataset: "dataset_info",
  ReadoutCorrespondenceDataset: "dataset_info",
  ReadoutTripletDataset: "dataset_info",
  LoadReadoutDataset: "dataset_info",
  TrainReadoutHead: "training_report",
};

// A read-only text box (a DOM widget: public on both frontends): not sent to the backend, not saved in the
// workflow, not listed as a parameter in the new frontend's side panel.
function reportWidget(node, name) {
  const existing = node.widgets?.find((w) => w.name === name);
  if (existing) return existing;
  const box = document.createElement("textarea");
  box.className = "comfy-multiline-input";
  box.readOnly = true;
  box.style.opacity = 0.8;
  const widget = node.addDOMWidget(name, name, box, {
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
    const name = REPORT_WIDGETS[nodeData.name];
    if (!name) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      reportWidget(this, name).value = (message?.text ?? []).join("\n");
      this.setDirtyCanvas(true, true);
    };
  },
});
