"""Developer tools that measure the toolkit: benchmarks and the demo's calibration sweep."""
