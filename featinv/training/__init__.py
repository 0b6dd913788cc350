"""Training FeatInv ControlNets and pixel bases: configs, tasks, the loop, data and checkpoints."""
