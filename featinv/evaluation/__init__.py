"""How faithful reconstructions are: metrics, evaluation over image folders, sweeps, baselines, tables."""
