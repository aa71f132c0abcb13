// TransEdit frontend extension: small, framework-free and feature-detected, so it never breaks the canvas.
import { app } from "../../scripts/app.js";

const HELP_URL = "https://github.com/transedit/ComfyUI-TransEdit#node-reference";

app.registerExtension({
  name: "TransEdit.NodeHelp",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.category?.startsWith?.("TransEdit")) return;
    // Tint TransEdit nodes so they are easy to spot in large graphs.
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      if (!this.color) this.color = "#2a3b4d";
      if (!this.bgcolor) this.bgcolor = "#1e2a36";
      return result;
    };
    // "TransEdit help" in the node's context menu opens the node reference.
    const getExtraMenuOptions = nodeType.prototype.getExtraMenuOptions;
    nodeType.prototype.getExtraMenuOptions = function (_, options) {
      const result = getExtraMenuOptions?.apply(this, arguments);
      if (Array.isArray(options)) {
        options.push({
          content: "TransEdit help",
          callback: () => window.open(`${HELP_URL}-${nodeData.name.toLowerCase()}`, "_blank", "noopener"),
        });
      }
      return result;
    };
  },
});
