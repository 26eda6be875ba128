"""Post-hoc calibration: temperature scaling and Thermometer."""
