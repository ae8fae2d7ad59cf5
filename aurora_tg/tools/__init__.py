"""Around training: neuron-death diagnostics, metrics logs, loss plots and evaluation (HellaSwag, bits per byte)."""
