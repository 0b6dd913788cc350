"""Stage 2 of the pipeline: frozen diffusion bases, feature encoders, the ControlNet, the FeatInv model and its sampler."""
