"""Stage 1 of the pipeline: a classifier's layer as an NCHW feature map (backbones, layouts, hooks)."""
