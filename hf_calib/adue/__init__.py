"""AdUE uncertainty heads for frozen (LoRA) classifiers."""
