// Shows a loaded readout head's kind, model family and layers on the LoadReadoutHead node.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "readout_guidance.HeadInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "LoadReadoutHead") return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = (message?.text ?? []).join("\n");
      let widget = this.widgets?.find((w) => w.name === "head_info");
      if (!widget) {
        widget = this.addWidget("text", "head_info", "", () => {}, { serialize: false });
        widget.disabled = true;
      }
      widget.value = text;
      this.setDirtyCanvas(true, true);
    };
  },
});
