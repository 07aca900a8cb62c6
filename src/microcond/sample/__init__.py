"""Using a trained run: samplers, the run read back (EMA weights, queries), sample grids, the
fixed SDXL pipeline and the export of diffusers folders."""
