"""The probe of a diffusers SDXL pipeline: size and crop sweeps of its micro-conditions, measured
and written as a page."""
