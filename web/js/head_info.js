// Shows a node's text report after a run: a loaded head's kind and layers, a score node's numbers.
import { app } from "../../scripts/app.js";

const REPORT_WIDGETS = { LoadReadoutHead: "head_info", ReadoutScore: "report", WordAttentionMap: "report" };

app.registerExtension({
  name: "readout_guidance.HeadInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const widgetName = REPORT_WIDGETS[nodeData.name];
    if (!widgetName) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === widgetName);
      if (!widget) {
        widget = this.addWidget("text", widgetName, "", () => {}, { serialize: false });
        widget.disabled = true;
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
