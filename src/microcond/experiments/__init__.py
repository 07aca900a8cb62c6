"""The experiments behind docs/: the paper's tables and figures, the recipe ablation, upscaled
fakes, micro-condition guidance, the demo, their training launcher and pages."""
