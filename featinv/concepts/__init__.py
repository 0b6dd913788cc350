"""Concept decompositions of feature maps: the Decomposer contract, fitting, activation maps."""
