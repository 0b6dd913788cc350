"""Training FeatInv ControlNets and pixel bases: config, tasks, the loop and the run folder it writes, data, checkpoints."""
