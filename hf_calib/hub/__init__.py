"""Calibrated adapter bundles: save, load and push to the Hugging Face Hub."""
