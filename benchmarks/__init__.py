"""The project's benchmarks: scripts run by path (`python benchmarks/X.py`) and the device check package
(`python -m benchmarks.device_check`). A regular package, so `-m` finds this checkout's, never another
distribution's `benchmarks`."""
